"""bench/wider_like.py: WIDER-sized generated images in the official layout, seeded and reusable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.wider_like import WIDTH, main, make_wider_like, sample_layout
from model.config import config_from_dict
from model.data.mini import MARKER_NAME
from model.data.widerface import WiderFaceDataset, parse_annotations
from model.engine import build_datasets

SPLITS = ("train", "val")


def _files(root: Path) -> dict[str, bytes]:
    """Every image and annotation file, by path relative to ``root``."""
    paths = [*root.glob("WIDER_*/images/*/*.jpg"), *root.glob("wider_face_split/*.txt")]
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(paths)}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_wider_like(tmp_path_factory.mktemp("wl") / "wider-like", num_train=4, num_val=2, seed=0, workers=1)


def test_layout_parses_and_faces_lie_inside_wider_sized_images(small: Path) -> None:
    for split, count in zip(SPLITS, (4, 2)):
        records, stats = parse_annotations(small / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt")
        assert stats.images == count == len(list((small / f"WIDER_{split}" / "images").glob("*/*.jpg")))
        assert stats.zero_size_boxes == 0
        for record in records:
            with Image.open(small / f"WIDER_{split}" / "images" / record.relpath) as image:
                assert image.format == "JPEG"
                width, height = image.size
            assert width == WIDTH and 600 <= height <= 1400
            boxes = record.boxes
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
            assert (boxes[:, 2:] > boxes[:, :2]).all()
    assert sum(len(r.boxes) for r in parse_annotations(small / "wider_face_split/wider_face_train_bbx_gt.txt")[0]) > 0


def test_face_and_image_statistics_are_wider_like() -> None:
    """Over many layouts (no pixels): WIDER's width, heights mostly 680-800, ~12 faces an image
    with crowds of hundreds, a median face of 20-40 px, every face inside its image."""
    counts, widths, heights = [], [], []
    for i in range(800):
        width, height, faces = sample_layout(np.random.default_rng(np.random.SeedSequence(0, spawn_key=(0, i))))
        assert width == WIDTH and 600 <= height <= 1400
        for f in faces:
            assert 0 <= f.x and f.x + f.w <= width and 0 <= f.y and f.y + f.h <= height and f.w >= 1 and f.h >= 1
        counts.append(len(faces))
        widths += [f.w for f in faces]
        heights.append(height)
    counts_arr, heights_arr = np.array(counts), np.array(heights)
    assert 8 <= counts_arr.mean() <= 18 and 2 <= np.median(counts_arr) <= 8
    assert counts_arr.max() >= 100 and (counts_arr == 0).any()
    assert 18 <= np.median(widths) <= 40 and min(widths) >= 4 and max(widths) >= 200
    assert ((heights_arr >= 680) & (heights_arr <= 800)).mean() >= 0.6
    assert (heights_arr > 1000).any()


def test_seed_reproduces_bytes_with_any_worker_count(small: Path, tmp_path: Path) -> None:
    again = make_wider_like(tmp_path / "again", num_train=4, num_val=2, seed=0, workers=2)
    assert _files(again) == _files(small) and len(_files(small)) == 8
    other = make_wider_like(tmp_path / "other", num_train=4, num_val=2, seed=1, workers=1)
    assert _files(other).keys() == _files(small).keys()
    assert (
        _files(other)["wider_face_split/wider_face_train_bbx_gt.txt"]
        != _files(small)["wider_face_split/wider_face_train_bbx_gt.txt"]
    )


def test_a_complete_set_is_reused_and_other_parameters_regenerate(tmp_path: Path) -> None:
    root = make_wider_like(tmp_path / "wl", num_train=2, num_val=1, seed=0, workers=1)
    marker = root / MARKER_NAME
    stamp = marker.stat().st_mtime_ns
    jpg = next(root.glob("WIDER_train/images/*/*.jpg"))
    inode = jpg.stat().st_ino
    assert make_wider_like(root, num_train=2, num_val=1, seed=0, workers=1) == root
    assert marker.stat().st_mtime_ns == stamp and jpg.stat().st_ino == inode  # untouched
    make_wider_like(root, num_train=3, num_val=1, seed=0, workers=1)
    assert len(list(root.glob("WIDER_train/images/*/*.jpg"))) == 3
    params = json.loads(marker.read_text())["params"]
    assert params["generator"] == "wider-like" and params["num_train"] == 3
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not a generated set")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        make_wider_like(foreign, num_train=1, num_val=1, workers=1)
    with pytest.raises(ValueError, match="num_val"):
        make_wider_like(tmp_path / "bad", num_train=1, num_val=0)


def test_loads_as_wider_face_and_through_build_datasets(small: Path, tmp_path: Path) -> None:
    dataset = WiderFaceDataset(small, "train", cache_dir=tmp_path / "cache", cache_max_side=1024)
    assert len(dataset) == 4 and dataset.report().faces > 0
    image, target = dataset[0]
    assert image.shape[0] == 3 and image.shape[2] == WIDTH and 600 <= image.shape[1] <= 1400
    assert target["orig_size"].tolist() == [image.shape[1], WIDTH]
    cfg = config_from_dict(
        {"data": {"source": "wider", "root": str(small), "cache_dir": str(tmp_path / "c2"), "cache_max_side": 1024}}
    )
    train, val = build_datasets(cfg)
    assert (len(train), len(val)) == (4, 2)
    records, _ = parse_annotations(small / "wider_face_split" / "wider_face_val_bbx_gt.txt")
    assert val[1][1]["image_id"] == records[1].image_id and len(val[1][1]["boxes"]) == len(records[1].boxes)


def test_cli_writes_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--train", "1", "--val", "1", "--seed", "3", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "train: 1 images 1024 x" in printed and "val: 1 images" in printed
    assert len(list(out.glob("WIDER_val/images/*/*.jpg"))) == 1
