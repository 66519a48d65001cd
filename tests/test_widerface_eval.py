"""model.widerface_eval: the official protocol, against hand-worked numbers, a plain port of the
reference per-prediction loop, and the real validation ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from bench import widerface_reference
from model.widerface_eval import (
    SETTINGS,
    WiderGroundTruth,
    evaluate_widerface,
    load_ground_truth,
    main,
    read_predictions,
    to_wider_predictions,
    write_all_predictions,
    write_predictions,
)

REPO = Path(__file__).resolve().parents[1]
REAL_GT = REPO.parent / "shared" / "data" / "widerface_val_gt"


def _reference_aps(predictions: dict[tuple[str, str], np.ndarray], gt: WiderGroundTruth, gt_dir: Path) -> list[float]:
    """The plain reference loop (bench/widerface_reference.py) with the IoU kernel's loops in Python."""
    nested = widerface_reference.nest_sorted(predictions, [(im.event, im.name) for im in gt.images])
    return widerface_reference.evaluation(
        nested, widerface_reference.load_gt(gt_dir), overlaps_fn=widerface_reference.bbox_overlaps_loop
    )


# --- a tiny ground truth in the official .mat structure ---------------------------------------


def _cells(items: list) -> np.ndarray:
    out = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        out[i, 0] = item
    return out


def _write_gt(gt_dir: Path, events: dict[str, list[tuple[str, np.ndarray, dict[str, list[int]]]]]) -> Path:
    """``events``: {event: [(name, (M, 4) xywh, {setting: 1-based kept faces})]}."""
    gt_dir.mkdir(parents=True, exist_ok=True)
    names = list(events)
    event_list = _cells([np.array([e]) for e in names])
    file_list = _cells([_cells([np.array([n]) for n, _, _ in events[e]]) for e in names])
    boxes = _cells([_cells([np.asarray(b, dtype=np.int32).reshape(-1, 4) for _, b, _ in events[e]]) for e in names])
    savemat(gt_dir / "wider_face_val.mat", {"event_list": event_list, "file_list": file_list, "face_bbx_list": boxes})
    for setting in SETTINGS:
        kept = [[np.array(k.get(setting, []), dtype=np.uint16).reshape(-1, 1) for _, _, k in events[e]] for e in names]
        gt_list = _cells([_cells(per_event) for per_event in kept])
        mat = {"event_list": event_list, "file_list": file_list, "gt_list": gt_list}
        savemat(gt_dir / f"wider_{setting}_val.mat", mat)
    return gt_dir


def _hand_gt(tmp_path: Path) -> Path:
    every = {"easy": [1], "medium": [1], "hard": [1]}
    return _write_gt(
        tmp_path / "gt",
        {
            "0--Parade": [
                # F1 counts everywhere, F2 from medium, F3 only in hard, F4 never.
                (
                    "a",
                    np.array([[10, 10, 20, 20], [100, 100, 20, 20], [200, 200, 4, 4], [300, 300, 10, 10]]),
                    {"easy": [1], "medium": [1, 2], "hard": [1, 2, 3]},
                ),
            ],
            "1--Handshaking": [("b", np.array([[50, 50, 30, 30]]), every)],
        },
    )


def _hand_predictions() -> dict[tuple[str, str], np.ndarray]:
    return {
        ("0--Parade", "a"): np.array(
            [
                [10, 10, 20, 20, 0.9],  # F1
                [300, 300, 10, 10, 0.8],  # F4: never counted
                [12, 10, 20, 20, 0.7],  # a duplicate of F1 (IoU 399/483): a false positive
                [100, 100, 20, 20, 0.3],  # F2: only counted from medium
                [400, 400, 20, 20, 0.0],  # background: a false positive
            ]
        ),
        ("1--Handshaking", "b"): np.array([[50, 50, 30, 30, 1.0]]),  # G1
    }


def test_hand_worked_aps(tmp_path: Path) -> None:
    # Ranked (TP/FP/not counted):  easy  G1 F1 - fp - fp   faces 2: P=1 up to R=1           -> 1
    #                             medium G1 F1 - fp F2 fp  faces 3: P=1 to R=2/3, 3/4 to 1  -> 2/3 + 1/3 * 3/4
    #                             hard   same, faces 4 (F3 missed): P=1 to 1/2, 3/4 to 3/4 -> 1/2 + 1/4 * 3/4
    gt = load_ground_truth(_hand_gt(tmp_path))
    aps = evaluate_widerface(_hand_predictions(), gt)
    assert aps == pytest.approx({"easy": 1.0, "medium": 11 / 12, "hard": 11 / 16}, abs=1e-12)


def test_argmax_over_all_faces_lets_an_ignored_face_swallow_a_prediction(tmp_path: Path) -> None:
    # K counts in every setting, I only in hard; the prediction is I exactly, IoU 399/483 with K.
    gt_dir = _write_gt(
        tmp_path / "gt",
        {"0--Parade": [("a", np.array([[0, 0, 20, 20], [2, 0, 20, 20]]), {"easy": [1], "medium": [1], "hard": [1, 2]})]},
    )
    aps = evaluate_widerface({("0--Parade", "a"): np.array([[2, 0, 20, 20, 0.9]])}, load_ground_truth(gt_dir))
    assert aps == pytest.approx({"easy": 0.0, "medium": 0.0, "hard": 0.5}, abs=1e-12)


def test_loads_the_official_structure(tmp_path: Path) -> None:
    gt = load_ground_truth(_hand_gt(tmp_path))
    assert [im.image_id for im in gt.images] == ["0--Parade/a", "1--Handshaking/b"]
    assert gt.images[0].boxes.tolist()[2] == [200, 200, 4, 4]
    assert gt.images[0].keep.astype(int).tolist() == [[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert gt.face_counts() == {"easy": 2, "medium": 3, "hard": 4} and gt.num_faces == 5


def _random_gt_and_predictions(tmp_path: Path, seed: int, squeeze: bool) -> tuple[Path, dict[tuple[str, str], np.ndarray]]:
    rng = np.random.default_rng(seed)
    events: dict[str, list] = {}
    predictions: dict[tuple[str, str], np.ndarray] = {}
    for e in range(3):
        event = f"{e}--Event{e}"
        events[event] = []
        for i in range(5):
            name = f"{e}_img_{i}"
            m = int(rng.integers(0, 10))  # some images without faces
            xy = rng.integers(0, 200, (m, 2)) + rng.integers(0, 60, (1, 2))
            boxes = np.c_[xy, rng.integers(3, 40, (m, 2))]
            if m > 2:
                boxes[1] = boxes[0]  # duplicate faces occur in the real set
            hard = np.flatnonzero(rng.random(m) < 0.8)
            medium = hard[rng.random(len(hard)) < 0.6]
            easy = medium[rng.random(len(medium)) < 0.5]
            kept = {"easy": list(easy + 1), "medium": list(medium + 1), "hard": list(hard + 1)}
            events[event].append((name, boxes, kept))
            if i == 4 and e == 0:
                continue  # a missing prediction file
            picks = rng.integers(0, max(m, 1), int(rng.integers(0, 2 * m + 1))) if m else np.zeros(0, int)
            jitter = boxes[picks] + rng.normal(0, 0.2, (len(picks), 4)) * np.tile(boxes[picks, 2:], 2)
            n_background = int(rng.integers(0, 4))
            background = np.c_[rng.uniform(0, 260, (n_background, 2)), rng.uniform(3, 40, (n_background, 2))]
            rows = np.r_[jitter, background]
            scores = np.round(rng.random(len(rows)), 2)  # ties included
            if squeeze:  # logit-like scores > 1 in a narrow band: the reference's normalisation matters
                scores = 2.0 + 5e-3 * scores
            predictions[(event, name)] = np.c_[rows, scores]
    return _write_gt(tmp_path / "gt", events), predictions


@pytest.mark.parametrize(("seed", "squeeze"), [(0, False), (1, False), (2, False), (3, True)])
def test_matches_the_reference_loop_on_random_predictions(tmp_path: Path, seed: int, squeeze: bool) -> None:
    gt_dir, predictions = _random_gt_and_predictions(tmp_path, seed, squeeze)
    gt = load_ground_truth(gt_dir)
    with pytest.warns(UserWarning, match="1 of 15 ground-truth images have no predictions"):
        ours = evaluate_widerface(predictions, gt)
    reference = _reference_aps(predictions, gt, gt_dir)
    assert [ours[s] for s in SETTINGS] == pytest.approx(reference, abs=1e-9)
    assert 0.0 < ours["hard"] < 1.0


@pytest.fixture(scope="module")
def real_gt() -> WiderGroundTruth:
    if not (REAL_GT / "wider_face_val.mat").is_file():
        pytest.skip(f"the official WIDER FACE validation ground truth is not at {REAL_GT}")
    return load_ground_truth(REAL_GT)


def test_real_ground_truth_facts(real_gt: WiderGroundTruth) -> None:
    assert len(real_gt) == 3226 and real_gt.num_faces == 39708
    counts = real_gt.face_counts()
    assert counts == {"easy": 7211, "medium": 13319, "hard": 31958}
    keep = np.concatenate([im.keep for im in real_gt.images])
    assert (keep[:, 0] <= keep[:, 1]).all() and (keep[:, 1] <= keep[:, 2]).all()  # easy ⊂ medium ⊂ hard
    assert len({im.image_id for im in real_gt.images}) == 3226


def _unrecallable_hard_faces(gt: WiderGroundTruth) -> tuple[int, int]:
    """(kept-hard faces duplicating an earlier box of their image, kept-hard faces of negative size)."""
    duplicates = negative = 0
    for im in gt.images:
        for j, box in enumerate(im.boxes):
            if im.keep[j, 2]:
                duplicates += bool((im.boxes[:j] == box).all(axis=1).any())
                negative += bool((box[2:] < 0).any())
    return duplicates, negative


def test_perfect_predictions_on_the_real_set(real_gt: WiderGroundTruth) -> None:
    rng = np.random.default_rng(0)
    assert _unrecallable_hard_faces(real_gt) == (1, 1)
    assert not any(((im.boxes[:, 2:] < 0).any(axis=1) & im.keep[:, 1]).any() for im in real_gt.images)
    # Each valid box once, any scores: every easy and medium face is found at precision 1; in hard the
    # duplicate and the negative-width face can never be recalled (module docstring).
    clean = {}
    for im in real_gt.images:
        boxes = np.unique(im.boxes[(im.boxes[:, 2:] >= 0).all(axis=1)], axis=0)
        clean[(im.event, im.name)] = np.c_[boxes, rng.random(len(boxes))]
    aps = evaluate_widerface(clean, real_gt)
    assert aps == pytest.approx({"easy": 1.0, "medium": 1.0, "hard": 31956 / 31958}, abs=1e-12)
    # The raw ground truth with equal scores (normalisation guard: all 1): one PR point per setting.
    # Its negative-width box is a false positive everywhere; in hard, the duplicate one more.
    raw = {(im.event, im.name): np.c_[im.boxes, np.ones(len(im.boxes))] for im in real_gt.images}
    aps = evaluate_widerface(raw, real_gt)
    expected = {"easy": 7211 / 7212, "medium": 13319 / 13320, "hard": (31956 / 31958) * (31956 / 31958)}
    assert aps == pytest.approx(expected, abs=1e-12)


def test_matches_the_reference_loop_on_real_events(real_gt: WiderGroundTruth, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    chosen = {"31--Waiter_Waitress", "34--Baseball", "48--Parachutist_Paratrooper"}
    subset = WiderGroundTruth(images=tuple(im for im in real_gt.images if im.event in chosen))
    events: dict[str, list] = {}
    predictions = {}
    for im in subset.images:
        kept = {s: list(np.flatnonzero(im.keep[:, k]) + 1) for k, s in enumerate(SETTINGS)}
        events.setdefault(im.event, []).append((im.name, im.boxes, kept))
        jitter = im.boxes + rng.normal(0, 0.15, im.boxes.shape) * np.tile(np.abs(im.boxes[:, 2:]) + 1, 2)
        background = np.c_[rng.uniform(0, 900, (5, 2)), rng.uniform(4, 80, (5, 2))]
        rows = np.r_[jitter[rng.random(len(jitter)) < 0.7], background]
        predictions[(im.event, im.name)] = np.c_[rows, rng.random(len(rows))]
    gt_dir = _write_gt(tmp_path / "gt", events)  # these events alone, in the official structure
    ours = evaluate_widerface(predictions, subset)
    reference = _reference_aps(predictions, subset, gt_dir)
    assert [ours[s] for s in SETTINGS] == pytest.approx(reference, abs=1e-9)
    assert all(0.0 < ap < 1.0 for ap in reference)


def test_full_validation_set_evaluates_in_seconds(real_gt: WiderGroundTruth) -> None:
    rng = np.random.default_rng(1)
    predictions = {}
    for im in real_gt.images:
        jitter = im.boxes + rng.normal(0, 0.1, im.boxes.shape) * np.tile(np.abs(im.boxes[:, 2:]) + 1, 2)
        background = np.c_[rng.uniform(0, 1000, (60, 2)), rng.uniform(4, 100, (60, 2))]
        rows = np.r_[jitter, background]
        predictions[(im.event, im.name)] = np.c_[rows, rng.random(len(rows))]
    total = sum(len(v) for v in predictions.values())
    start = time.perf_counter()
    aps = evaluate_widerface(predictions, real_gt)
    elapsed = time.perf_counter() - start
    print(f"\nfull WIDER FACE val: {len(real_gt)} images, {total} predictions, {elapsed:.2f} s, {aps}")
    assert total > 200_000
    assert elapsed < 20.0
    assert all(0.0 < ap < 1.0 for ap in aps.values())


# --- prediction files ---------------------------------------------------------------------------


def test_write_read_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 500, (6, 2)).astype(np.float32)
    boxes = torch.from_numpy(np.c_[xy, xy + rng.uniform(1, 90, (6, 2)).astype(np.float32)])
    scores = torch.from_numpy(rng.random(6).astype(np.float32))
    ids = ["0--Parade/0_Parade_marchingband_1_465", "7--Cheering/7_Cheering_Cheering_7_426.jpg"]
    predictions = [{"boxes": boxes, "scores": scores}, {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)}]
    paths = write_all_predictions(tmp_path, ids, predictions)
    assert paths[0] == tmp_path / "0--Parade" / "0_Parade_marchingband_1_465.txt"
    lines = paths[0].read_text().splitlines()
    assert lines[:2] == ["0_Parade_marchingband_1_465", "6"] and len(lines) == 8
    assert paths[1].read_text() == "7_Cheering_Cheering_7_426\n0\n"
    back = read_predictions(tmp_path)
    assert set(back) == {("0--Parade", "0_Parade_marchingband_1_465"), ("7--Cheering", "7_Cheering_Cheering_7_426")}
    rows = back[("0--Parade", "0_Parade_marchingband_1_465")]
    np.testing.assert_allclose(rows[:, :2], boxes[:, :2].numpy(), atol=1e-4)
    np.testing.assert_allclose(rows[:, :2] + rows[:, 2:4], boxes[:, 2:].numpy(), atol=1e-4)
    np.testing.assert_allclose(rows[:, 4], scores.numpy(), rtol=1e-7)
    assert back[("7--Cheering", "7_Cheering_Cheering_7_426")].shape == (0, 5)
    in_memory = to_wider_predictions(ids, predictions)
    assert set(in_memory) == set(back)
    np.testing.assert_allclose(in_memory[("0--Parade", "0_Parade_marchingband_1_465")], rows, atol=1e-4)


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ("img\n2\n1 2 3 4 0.5\n1 2 x 4 0.5\n", "line 4"),
        ("img\n2\n1 2 3 4 0.5\n", "line 2"),
        ("img\n1\n1 2 3 4\n", "line 3"),
        ("img\n1\n1 2 3 4 nan\n", "line 3"),
        ("img\nmany\n", "line 2"),
        ("other\n0\n", "line 1"),
        ("img\n", "line 2"),
        ("", "line 1"),
    ],
)
def test_malformed_prediction_file_names_file_and_line(tmp_path: Path, content: str, where: str) -> None:
    path = tmp_path / "0--Parade" / "img.txt"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(ValueError, match=rf"img\.txt.*{where}"):
        read_predictions(tmp_path)


def test_bad_image_id_and_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="<event>/<name>"):
        write_predictions(tmp_path, "no_event", np.zeros((1, 4)), np.zeros(1))
    with pytest.raises(ValueError, match=r"boxes \(N, 4\) and scores \(N,\)"):
        write_predictions(tmp_path, "0--Parade/a", np.zeros((2, 4)), np.zeros(3))
    with pytest.raises(ValueError, match=r"predictions for .*shape \(N, 5\)"):
        evaluate_widerface({("0--Parade", "a"): np.zeros((2, 4))}, WiderGroundTruth(images=()))


def test_cli_prints_the_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt_dir = _hand_gt(tmp_path)
    for (event, name), rows in _hand_predictions().items():
        xyxy = np.c_[rows[:, :2], rows[:, :2] + rows[:, 2:4]]
        write_predictions(tmp_path / "pred", f"{event}/{name}", xyxy, rows[:, 4])
    out_json = tmp_path / "aps.json"
    assert main(["--pred", str(tmp_path / "pred"), "--gt", str(gt_dir), "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "medium        3  0.9167" in printed and "hard          4  0.6875" in printed
    expected = {"easy": 1.0, "medium": 11 / 12, "hard": 11 / 16, "iou_threshold": 0.5}
    assert json.loads(out_json.read_text()) == pytest.approx(expected)


def test_cli_reports_missing_ground_truth_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pred").mkdir()
    assert main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "lacks wider_face_val.mat" in err and "wider_hard_val.mat" in err


def test_predictions_for_unknown_images_are_ignored_with_a_warning(tmp_path: Path) -> None:
    gt = load_ground_truth(_hand_gt(tmp_path))
    predictions = {**_hand_predictions(), ("0--Parade", "not_in_gt"): np.array([[1, 1, 5, 5, 0.5]])}
    with pytest.warns(UserWarning, match="1 prediction images are not in the ground truth"):
        aps = evaluate_widerface(predictions, gt)
    assert aps == pytest.approx({"easy": 1.0, "medium": 11 / 12, "hard": 11 / 16}, abs=1e-12)


# --- no torch: the evaluation is NumPy ----------------------------------------------------------


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_importing_the_module_imports_no_torch() -> None:
    done = _python("-c", "import model.widerface_eval, sys; assert 'torch' not in sys.modules, 'torch was imported'")
    assert done.returncode == 0, done.stderr


def test_cli_help_and_a_whole_evaluation_import_no_torch(tmp_path: Path) -> None:
    done = _python("-m", "model.widerface_eval", "--help")
    assert done.returncode == 0 and "--pred" in done.stdout and "--gt" in done.stdout, done.stderr
    gt_dir = _hand_gt(tmp_path)
    for (event, name), rows in _hand_predictions().items():
        xyxy = np.c_[rows[:, :2], rows[:, :2] + rows[:, 2:4]]
        write_predictions(tmp_path / "pred", f"{event}/{name}", xyxy, rows[:, 4])
    code = (
        "import sys; from model.widerface_eval import main; rc = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)"
    )
    done = _python("-c", code, "--pred", str(tmp_path / "pred"), "--gt", str(gt_dir))
    assert done.returncode == 0, done.stderr
    assert "hard          4  0.6875" in done.stdout


def test_voc_ap_is_one_function_for_both_protocols() -> None:
    """The torch-free protocol module owns VOC AP; our own metric uses the same function."""
    from model import metrics, widerface_eval

    assert metrics.voc_ap is widerface_eval.voc_ap
    with pytest.raises(ValueError, match="1-D of one length"):
        widerface_eval.voc_ap(np.zeros(2), np.zeros(3))
