"""Official WIDER FACE predictions (model/predict.py) and the mini set's official-format ground truth."""

from __future__ import annotations

import json
import shutil
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch
from scipy.io import loadmat
from torchvision.ops import box_iou

from model.config import PostprocessConfig, load_config
from model.data.mini import GROUND_TRUTH_FILES, MARKER_NAME, SETTING_MIN_HEIGHT, ensure_mini, face_settings
from model.data.transforms import build_eval_transforms
from model.data.widerface import WiderFaceDataset, parse_annotations
from model.predict import list_split_images, main, merge_detections, model_from_checkpoint, predict_images, predict_split
from model.widerface_eval import SETTINGS, evaluate_widerface, load_ground_truth, read_predictions, to_wider_predictions
from model.widerface_eval import main as eval_main
from tests.support import one_epoch_run

SIZE = 128
#: The official val ground truth lives in the shared folder beside the repository (``../shared``).
OFFICIAL_GT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "widerface_val_gt"


@pytest.fixture(scope="module")
def run_dir(mini_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder as ``model.train`` leaves it: config.yaml and last.pt of a one-epoch tiny SSD."""
    return one_epoch_run(mini_root, tmp_path_factory.mktemp("run"), SIZE)


def _gt_dir(root: Path) -> Path:
    return root / "wider_face_split"


def test_predict_writes_the_official_layout_that_the_evaluator_scores(
    run_dir: Path, mini_root: Path, tmp_path: Path, capsys, one_thread
) -> None:
    out = tmp_path / "pred"
    assert main(["--config", str(run_dir / "config.yaml"), "--data", str(mini_root), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 0 unreadable images" in printed and "WIDER FACE AP" in printed

    relpaths = list_split_images(mini_root, "val")
    files = sorted(p.relative_to(out).with_suffix(".jpg").as_posix() for p in out.glob("*/*.txt"))
    assert files == sorted(relpaths), "one prediction file per val image, in its event folder"
    sample = (out / relpaths[0]).with_suffix(".txt").read_text().splitlines()
    assert sample[0] == Path(relpaths[0]).stem and int(sample[1]) == len(sample) - 2
    assert all(len(line.split()) == 5 for line in sample[2:])

    # The files hold exactly the in-memory detections (float32 values survive the 9 digits).
    model, cfg = model_from_checkpoint(run_dir / "last.pt")
    predictions = predict_images(model, cfg, mini_root / "WIDER_val" / "images", relpaths, progress=False)
    expected = to_wider_predictions(predictions.image_ids, predictions.detections)
    written = read_predictions(out)
    assert written.keys() == expected.keys()
    assert sum(len(rows) for rows in written.values()) > 0
    for key, rows in expected.items():
        np.testing.assert_allclose(written[key], rows, rtol=1e-8, atol=1e-6, err_msg=str(key))

    report = tmp_path / "aps.json"
    assert eval_main(["--pred", str(out), "--gt", str(_gt_dir(mini_root)), "--json", str(report)]) == 0
    aps = json.loads(report.read_text())
    assert all(0.0 <= aps[s] <= 1.0 for s in SETTINGS)
    assert max(aps[s] for s in SETTINGS) > 0.0, "boxes in the wrong frame would match no face"
    assert f"easy {aps['easy']:.4f}  medium {aps['medium']:.4f}  hard {aps['hard']:.4f}" in printed


def test_single_scale_predictions_are_the_validation_detections(run_dir: Path, mini_root: Path, one_thread) -> None:
    model, cfg = model_from_checkpoint(run_dir / "last.pt")
    val = WiderFaceDataset(mini_root, "val", transform=build_eval_transforms(SIZE), max_images=6)
    relpaths = [record.relpath for record in val.records]
    predicted = predict_images(model, cfg, val.images_dir, relpaths, batch_size=4, progress=False)
    assert predicted.image_ids == [t["image_id"] for _, t in (val[i] for i in range(len(val)))]
    assert sum(len(d["scores"]) for d in predicted.detections) > 0
    for i, detections in enumerate(predicted.detections):
        image, target = val[i]
        reference = model.predict(image[None], **cfg.postprocess.model_dump())[0]
        height, width = target["orig_size"].tolist()
        scale = torch.tensor([width / SIZE, height / SIZE] * 2)
        torch.testing.assert_close(detections["boxes"], reference["boxes"] * scale)
        torch.testing.assert_close(detections["scores"], reference["scores"])


def test_multi_scale_and_flip_are_merged_by_nms(run_dir: Path, mini_root: Path, one_thread) -> None:
    model, cfg = model_from_checkpoint(run_dir / "last.pt")
    relpaths = list_split_images(mini_root, "val")[:4]
    images_dir = mini_root / "WIDER_val" / "images"
    single = predict_images(model, cfg, images_dir, relpaths, progress=False)
    merged = predict_images(model, cfg, images_dir, relpaths, scales=(1.0, 1.5), flip=True, progress=False)
    assert merged.image_ids == single.image_ids
    post = cfg.postprocess
    for one, many in zip(single.detections, merged.detections):
        assert 0 < len(many["scores"]) <= post.max_detections
        assert (many["scores"][:-1] >= many["scores"][1:]).all()
        iou = box_iou(many["boxes"], many["boxes"]).fill_diagonal_(0.0)
        assert iou.max() <= post.nms_iou + 1e-6, "merged detections overlap: NMS not applied"
        # The union holds the single-scale pass, and hard NMS keeps the best box of the union.
        assert many["scores"][0] >= one["scores"][0]


def test_merging_uses_the_configs_nms() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0], [0.0, 0.0, 10.0, 8.0]])
    scores = torch.tensor([0.9, 0.5, 0.8])  # the third box overlaps the first with IoU 0.8
    hard = merge_detections(boxes, scores, PostprocessConfig(nms="nms", nms_iou=0.45))
    torch.testing.assert_close(hard["scores"], torch.tensor([0.9, 0.5]))
    soft = merge_detections(boxes, scores, PostprocessConfig(nms="soft_linear", nms_iou=0.45, max_detections=2))
    torch.testing.assert_close(soft["scores"], torch.tensor([0.9, 0.5]))  # 0.8 * (1 - 0.8) = 0.16, cut by the limit
    soft = merge_detections(boxes, scores, PostprocessConfig(nms="soft_linear", nms_iou=0.45))
    torch.testing.assert_close(soft["scores"], torch.tensor([0.9, 0.5, 0.16]))
    torch.testing.assert_close(soft["boxes"], boxes[[0, 1, 2]])


def test_an_unreadable_image_is_skipped_and_counted(run_dir: Path, mini_root: Path, tmp_path: Path, one_thread) -> None:
    root = tmp_path / "data"
    shutil.copytree(mini_root / "WIDER_val", root / "WIDER_val")
    shutil.copytree(mini_root / "wider_face_split", root / "wider_face_split")
    relpaths = list_split_images(root, "val")
    broken = relpaths[3]
    (root / "WIDER_val" / "images" / broken).write_bytes(b"not a JPEG at all")
    model, cfg = model_from_checkpoint(run_dir / "last.pt")
    summary = predict_split(model, cfg, root, "val", tmp_path / "pred", gt_dir=_gt_dir(root), progress=False)
    assert summary.unreadable == (broken,)
    assert summary.images == len(relpaths) - 1
    assert not (tmp_path / "pred" / broken).with_suffix(".txt").exists()
    assert len(read_predictions(tmp_path / "pred")) == len(relpaths) - 1
    assert f"skipped 1 unreadable images ({broken})" in summary.format()
    assert all(0.0 <= summary.aps[s] <= 1.0 for s in SETTINGS)  # the skipped image counts as no detections
    with pytest.raises(FileExistsError, match="--overwrite"):  # stale predictions never mix in
        predict_split(model, cfg, root, "val", tmp_path / "pred", progress=False)


def test_bad_input_gets_a_one_line_error(run_dir: Path, mini_root: Path, tmp_path: Path, capsys) -> None:
    load_config(run_dir / "config.yaml").with_overrides({"model.backbone": "mobilenet_v3"}).to_yaml(tmp_path / "other.yaml")
    checkpoint = ["--checkpoint", str(run_dir / "last.pt")]
    torch.save({"model": {}, "note": PurePosixPath("any object")}, tmp_path / "foreign.pt")  # not weights-only
    cases = {
        "foreign.pt is not a checkpoint this project can load safely": ["--checkpoint", str(tmp_path / "foreign.pt")],
        "model.backbone 'tiny' (config: 'mobilenet_v3')": [*checkpoint, "--config", str(tmp_path / "other.yaml")],
        "no images for split 'test'": [*checkpoint, "--data", str(mini_root), "--split", "test"],
        "lacks wider_face_val.mat": [*checkpoint, "--data", str(mini_root), "--gt", str(tmp_path)],
        "does not exist": ["--checkpoint", str(tmp_path / "nope.pt")],
    }
    for expected, argv in cases.items():
        assert main([*argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2, expected
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err and "Traceback" not in err, err


def test_mini_ground_truth_loads_and_its_settings_nest(mini_root: Path) -> None:
    gt = load_ground_truth(_gt_dir(mini_root))
    records, _ = parse_annotations(mini_root / "wider_face_split" / "wider_face_val_bbx_gt.txt")
    assert [image.image_id for image in gt.images] == [record.image_id for record in records]
    for image, record in zip(gt.images, records):
        if len(record.boxes) == 0:  # as in the official files: one all-zero box, in no setting
            assert image.boxes.tolist() == [[0.0, 0.0, 0.0, 0.0]] and not image.keep.any()
            continue
        xywh = np.column_stack([record.boxes[:, :2], record.boxes[:, 2:] - record.boxes[:, :2]])
        np.testing.assert_array_equal(image.boxes, xywh)
        easy, medium, hard = image.keep.T
        assert (easy <= medium).all() and (medium <= hard).all(), image.image_id
        # The documented rule: valid faces taller than 50 / 30 / 10 pixels.
        expected = np.column_stack([~record.invalid & (xywh[:, 3] > limit) for limit in (50, 30, 10)])
        np.testing.assert_array_equal(image.keep, expected, err_msg=image.image_id)
    counts = gt.face_counts()
    assert 0 < counts["easy"] < counts["medium"] < counts["hard"]
    perfect = {(im.event, im.name): np.column_stack([im.boxes[im.keep[:, 2]], np.ones(im.keep[:, 2].sum())]) for im in gt.images}
    assert evaluate_widerface(perfect, gt) == {"easy": 1.0, "medium": 1.0, "hard": 1.0}


def test_an_existing_mini_set_gets_its_mat_files_without_regeneration(tmp_path: Path) -> None:
    root = ensure_mini(tmp_path / "mini", seed=0, num_train=2, num_val=3)
    paths = [root / "wider_face_split" / name for name in GROUND_TRUTH_FILES]
    originals = [p.read_bytes() for p in paths]
    stamp = (root / MARKER_NAME).stat().st_mtime_ns
    for p in paths:  # as a set generated before the .mat files existed
        p.unlink()
    ensure_mini(root, seed=0, num_train=2, num_val=3)
    assert [p.read_bytes() for p in paths] == originals, "not written again, or not deterministically"
    assert (root / MARKER_NAME).stat().st_mtime_ns == stamp, "the set was regenerated"


@pytest.mark.skipif(not OFFICIAL_GT.is_dir(), reason="the official val ground truth is not in ../shared")
def test_the_difficulty_rule_reproduces_the_official_settings() -> None:
    folder = OFFICIAL_GT
    gt = load_ground_truth(folder)
    heights = np.concatenate([image.boxes[:, 3] for image in gt.images])
    official = np.concatenate([image.keep for image in gt.images])
    labels = loadmat(folder / "wider_face_val.mat")["invalid_label_list"]  # same event and file order
    invalid = np.concatenate([np.asarray(f[0]).ravel() for event in labels.ravel() for f in event]) != 0
    rule = face_settings(heights, invalid)
    at_threshold = np.isin(heights, list(SETTING_MIN_HEIGHT.values()))
    # Measured: the rule never takes a face the official files leave out; they hold 84 / 236 / 810
    # more, all but 4 / 11 / 3 of exactly the threshold height.
    assert not (rule & ~official).any()
    assert (official & ~rule).sum(axis=0).tolist() == [84, 236, 810]
    assert (official & ~rule & ~at_threshold[:, None]).sum(axis=0).tolist() == [4, 11, 3]
