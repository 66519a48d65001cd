"""model.metrics: agreement with COCO (pycocotools via torchmetrics) and hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.detection import MeanAveragePrecision

from model.metrics import evaluate, match_predictions, precision_recall_curve, voc_ap


def _pred(boxes: list[list[float]], scores: list[float]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(scores)}


def _target(boxes: list[list[float]], ignore: list[bool] | None = None) -> dict[str, torch.Tensor]:
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)}
    if ignore is not None:
        target["ignore"] = torch.tensor(ignore, dtype=torch.bool)
    return target


def _random_dataset(seed: int, images: int = 24) -> tuple[list[dict], list[dict]]:
    """Faces in overlapping clusters; predictions: jittered faces, duplicates and background boxes."""
    rng = np.random.default_rng(seed)
    predictions, targets = [], []
    for _ in range(images):
        n_faces = int(rng.integers(0, 7))
        centres = rng.uniform(40, 260, size=(1, 2)) + rng.normal(0, 25, size=(n_faces, 2))
        sizes = rng.uniform(12, 60, size=(n_faces, 2))
        faces = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
        picks = rng.integers(0, max(n_faces, 1), size=int(rng.integers(0, 2 * n_faces + 1))) if n_faces else []
        jitter = [faces[i] + rng.normal(0, 0.15, 4) * np.tile(sizes[i], 2) for i in picks]
        corners = rng.uniform(0, 300, (int(rng.integers(0, 5)), 2))
        background = [np.r_[xy, xy + rng.uniform(10, 60, 2)] for xy in corners]
        boxes = np.array(jitter + background, dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        scores = rng.random(len(boxes)).astype(np.float32)
        predictions.append({"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores)})
        faces_t = torch.from_numpy(faces.astype(np.float32))
        targets.append({"boxes": faces_t, "ignore": torch.zeros(n_faces, dtype=torch.bool)})
    return predictions, targets


def _coco_101_point(precision: np.ndarray, recall: np.ndarray) -> float:
    """COCO's interpolation (pycocotools ``accumulate``) applied to our own PR curve."""
    envelope = np.maximum.accumulate(np.r_[precision, 0.0][::-1])[::-1]  # trailing 0: beyond max recall
    index = np.searchsorted(recall, np.linspace(0.0, 1.0, 101), side="left")
    return float(envelope[index].mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_pycocotools_at_iou_05(seed: int) -> None:
    predictions, targets = _random_dataset(seed)
    coco = MeanAveragePrecision(iou_type="bbox", iou_thresholds=[0.5], backend="pycocotools")
    coco.update(
        [{**p, "labels": torch.ones(len(p["scores"]), dtype=torch.int64)} for p in predictions],
        [{"boxes": t["boxes"], "labels": torch.ones(len(t["boxes"]), dtype=torch.int64)} for t in targets],
    )
    reference = coco.compute()
    matches = match_predictions(predictions, targets, iou_threshold=0.5)
    precision, recall, _ = precision_recall_curve(matches)
    assert matches.tp.sum() > 5 and (~matches.tp).sum() > 5  # a non-trivial ranking
    # Same matching and ranking => COCO's 101-point value computed from our curve is COCO's, exactly.
    assert _coco_101_point(precision, recall) == pytest.approx(float(reference["map_50"]), abs=1e-6)
    result = evaluate(predictions, targets, iou_threshold=0.5, score_threshold=0.0)
    assert result["recall"] == pytest.approx(float(reference["mar_100"]), abs=1e-6)
    # All-point AP and the 101-point sample of one non-increasing envelope both lie between its
    # left and right Riemann sums on the 1/100 recall grid, which differ by at most 1/100.
    assert abs(result["ap"] - float(reference["map_50"])) <= 0.01 + 1e-9


def test_perfect_predictions() -> None:
    faces = [[10, 10, 50, 60], [100, 100, 140, 150], [200, 20, 230, 60]]
    result = evaluate([_pred(faces, [0.9, 0.8, 0.7])], [_target(faces)])
    assert result["ap"] == pytest.approx(1.0)
    assert (result["precision"], result["recall"], result["mean_iou"]) == (1.0, 1.0, pytest.approx(1.0))
    assert (result["tp"], result["fp"], result["fn"], result["num_gt"]) == (3, 0, 0, 3)
    assert result["top_score"] == pytest.approx(0.9)
    assert result["detections_per_image"] == 3.0


def test_duplicate_prediction_is_a_false_positive() -> None:
    face = [[10, 10, 50, 50]]
    result = evaluate([_pred(face * 2, [0.9, 0.8])], [_target(face)])
    assert (result["tp"], result["fp"], result["fn"]) == (1, 1, 0)
    assert result["precision"] == 0.5
    assert result["ap"] == pytest.approx(1.0)  # the face is found at precision 1 before the duplicate


def test_prediction_on_ignore_region_is_neither_tp_nor_fp() -> None:
    target = _target([[10, 10, 50, 50], [200, 200, 240, 240]], ignore=[False, True])
    boxes = [[10, 10, 50, 50], [200, 200, 240, 240], [201, 201, 240, 240]]
    result = evaluate([_pred(boxes, [0.6, 0.95, 0.9])], [target])
    assert (result["tp"], result["fp"], result["fn"], result["num_gt"]) == (1, 0, 0, 1)
    assert result["precision"] == 1.0 and result["ap"] == pytest.approx(1.0)
    assert result["detections_per_image"] == 3.0  # ignored predictions are still detections


def test_real_face_wins_over_a_better_overlapping_ignore_region() -> None:
    # IoU 0.64 with the face, 0.8 with the ignore box: it is a TP, and the face is not missed.
    target = _target([[0, 0, 10, 10], [0, 0, 10, 8]], ignore=[False, True])
    prediction = _pred([[0, 0, 10, 6.4]], [0.9])
    matches = match_predictions([prediction], [target])
    assert matches.tp.tolist() == [True] and matches.ignored.tolist() == [False]
    assert matches.iou[0] == pytest.approx(0.64)


def test_greedy_takes_the_best_unmatched_face() -> None:
    # The second prediction overlaps the already matched face A more than face B: it takes B.
    faces = [[0, 0, 10, 10], [2, 0, 12, 10]]
    # IoU 95/105 with A, 85/115 with B. (VOC's argmax-over-all rule would call it a duplicate.)
    result = evaluate([_pred([[0, 0, 10, 10], [0.5, 0, 10.5, 10]], [0.9, 0.8])], [_target(faces)])
    assert (result["tp"], result["fp"]) == (2, 0)
    assert result["mean_iou"] == pytest.approx((1.0 + 85 / 115) / 2)


def test_iou_threshold_is_inclusive_and_mean_iou_averages_tp_pairs() -> None:
    faces = [[0, 0, 10, 10], [100, 0, 110, 10], [200, 0, 210, 10]]
    # IoU 0.5 (counts), 0.8, and 0.49 (a miss and a false positive).
    boxes = [[0, 0, 10, 5], [100, 0, 110, 8], [200, 0, 210, 4.9]]
    result = evaluate([_pred(boxes, [0.9, 0.8, 0.7])], [_target(faces)])
    assert (result["tp"], result["fp"], result["fn"]) == (2, 1, 1)
    assert result["mean_iou"] == pytest.approx(0.65)


def test_score_threshold_sets_the_operating_point() -> None:
    faces = [[0, 0, 10, 10], [50, 50, 60, 60]]
    # Ranked: TP 0.9, FP 0.7, TP 0.4, FP 0.2.
    boxes = [[0, 0, 10, 10], [200, 200, 210, 210], [50, 50, 60, 60], [300, 300, 310, 310]]
    predictions, targets = [_pred(boxes, [0.9, 0.7, 0.4, 0.2])], [_target(faces)]
    at_05 = evaluate(predictions, targets, score_threshold=0.5)
    assert (at_05["tp"], at_05["fp"], at_05["fn"]) == (1, 1, 1)
    assert (at_05["precision"], at_05["recall"], at_05["detections_per_image"]) == (0.5, 0.5, 2.0)
    at_03 = evaluate(predictions, targets, score_threshold=0.3)
    assert (at_03["tp"], at_03["fp"], at_03["fn"]) == (2, 1, 0)
    assert (at_03["precision"], at_03["recall"]) == (pytest.approx(2 / 3), 1.0)
    above_all = evaluate(predictions, targets, score_threshold=0.95)
    assert (above_all["tp"], above_all["fp"], above_all["fn"], above_all["precision"]) == (0, 0, 2, 0.0)
    # AP ignores the score threshold: recall 1/2 at precision 1, then 1 at precision 2/3.
    assert at_05["ap"] == at_03["ap"] == above_all["ap"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def _no_nan(result: dict) -> None:
    assert all(math.isfinite(v) for v in result.values()), result


def test_empty_cases() -> None:
    faces = [[0, 0, 10, 10]]
    empty_pred = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)}
    no_detections = evaluate([empty_pred], [_target(faces)])
    _no_nan(no_detections)
    assert [no_detections[k] for k in ("ap", "recall", "fn", "top_score")] == [0.0, 0.0, 1, 0.0]

    no_faces = evaluate([_pred(faces, [0.9])], [_target([])])
    _no_nan(no_faces)
    assert (no_faces["ap"], no_faces["recall"], no_faces["fp"], no_faces["num_gt"]) == (0.0, 0.0, 1, 0)

    only_ignore = evaluate([_pred([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8])], [_target(faces, ignore=[True])])
    _no_nan(only_ignore)
    assert (only_ignore["num_gt"], only_ignore["tp"], only_ignore["fp"], only_ignore["ap"]) == (0, 0, 1, 0.0)

    nothing = evaluate([empty_pred, empty_pred], [_target([]), _target([])])
    _no_nan(nothing)
    assert [nothing[k] for k in ("num_images", "num_gt", "precision", "detections_per_image")] == [2, 0, 0.0, 0.0]

    no_images = evaluate([], [])
    _no_nan(no_images)
    assert no_images["num_images"] == 0 and no_images["ap"] == 0.0


def test_numpy_and_tensor_inputs_agree() -> None:
    predictions, targets = _random_dataset(5, images=6)
    as_numpy = (
        [{k: v.numpy() for k, v in p.items()} for p in predictions],
        [{"boxes": t["boxes"].numpy()} for t in targets],  # no "ignore": every face counts
    )
    assert evaluate(*as_numpy, score_threshold=0.3) == evaluate(predictions, targets, score_threshold=0.3)


@pytest.mark.parametrize(
    ("predictions", "targets", "message"),
    [
        ([_pred([[0, 0, 1, 1]], [0.5])], [], "1 predictions but 0 targets"),
        (
            [_pred([], []), {"boxes": torch.zeros(2, 3), "scores": torch.zeros(2)}],
            [_target([]), _target([])],
            r"image 1: prediction boxes must have shape \(N, 4\)",
        ),
        (
            [{"boxes": torch.zeros(2, 4), "scores": torch.zeros(3)}],
            [_target([])],
            r"image 0: prediction scores must have shape \(2,\)",
        ),
        (
            [_pred([], [])],
            [{"boxes": torch.zeros(2, 4), "ignore": torch.zeros(3, dtype=torch.bool)}],
            r"image 0: target ignore must have shape \(2,\)",
        ),
        ([_pred([[0, 0, 1, 1]], [float("nan")])], [_target([])], "image 0: prediction scores contain NaN"),
        ([{"boxes": torch.zeros(0, 4)}], [_target([])], "image 0: prediction has no 'scores'"),
    ],
)
def test_bad_input_names_the_image(predictions: list, targets: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate(predictions, targets)


def test_iou_threshold_out_of_range() -> None:
    with pytest.raises(ValueError, match="iou_threshold"):
        evaluate([], [], iou_threshold=0.0)


def test_voc_ap_hand_values() -> None:
    # Envelope: precision 1 up to recall 0.5, then 2/3 up to recall 1.
    assert voc_ap(np.array([0.5, 0.5, 1.0, 1.0]), np.array([1.0, 0.5, 2 / 3, 0.5])) == pytest.approx(5 / 6)
    assert voc_ap(np.array([]), np.array([])) == 0.0
    with pytest.raises(ValueError, match="one length"):
        voc_ap(np.array([0.5]), np.array([1.0, 0.5]))
