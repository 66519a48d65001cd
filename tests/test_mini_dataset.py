"""The generated mini WIDER FACE set: layout, annotation format, content, determinism, CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.data.mini import MARKER_NAME, ensure_mini, make_mini

REPO_ROOT = Path(__file__).resolve().parents[1]
DUMMY_LINE = "0 0 0 0 0 0 0 0 0 0"
# Upper bounds of the attribute columns: blur expression illumination invalid occlusion pose.
ATTRIBUTE_MAX = np.array([2, 1, 1, 1, 2, 1])
NUM_TRAIN, NUM_VAL = 60, 15


def parse_gt(path: Path) -> list[tuple[str, np.ndarray]]:
    """Parse a ``wider_face_*_bbx_gt.txt`` file independently of the project's reader.

    Returns (relative image path, (n, 10) int array) per image; a zero-face image must carry
    exactly the official dummy line, which is checked here and not returned as a box.
    """
    lines = path.read_text().splitlines()
    entries: list[tuple[str, np.ndarray]] = []
    i = 0
    while i < len(lines):
        rel, count = lines[i], int(lines[i + 1])
        if count == 0:
            assert lines[i + 2] == DUMMY_LINE, f"{rel}: zero-face image without the dummy line"
            rows = np.zeros((0, 10), dtype=np.int64)
            i += 3
        else:
            rows = np.array([[int(v) for v in line.split()] for line in lines[i + 2 : i + 2 + count]], dtype=np.int64)
            assert rows.shape == (count, 10), f"{rel}: expected {count} lines of 10 integers"
            i += 2 + count
        entries.append((rel, rows))
    return entries


def image_files(root: Path, split: str) -> dict[str, Path]:
    images = root / f"WIDER_{split}" / "images"
    return {p.relative_to(images).as_posix(): p for p in images.rglob("*") if p.is_file()}


def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mini") / "wider-mini"
    make_mini(root, seed=0, num_train=NUM_TRAIN, num_val=NUM_VAL)
    return root


@pytest.fixture(scope="module")
def annotations(mini: Path) -> dict[str, list[tuple[str, np.ndarray, tuple[int, int]]]]:
    """Per split: (relative path, boxes/attributes, (width, height) of the JPEG)."""
    result = {}
    for split in ("train", "val"):
        images = mini / f"WIDER_{split}" / "images"
        result[split] = [
            (rel, rows, Image.open(images / rel).size)
            for rel, rows in parse_gt(mini / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt")
        ]
    return result


def test_layout_and_annotation_format(mini: Path, annotations: dict) -> None:
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        entries = annotations[split]
        listed = [rel for rel, _, _ in entries]
        assert len(listed) == count and len(set(listed)) == count
        assert set(listed) == set(image_files(mini, split)), f"{split}: annotation and image files disagree"
        for rel, rows, (width, height) in entries:
            assert re.fullmatch(r"\d+--[A-Za-z_]+/[^/]+\.jpg", rel), rel
            assert Image.open(mini / f"WIDER_{split}" / "images" / rel).format == "JPEG"
            assert 256 <= width <= 480 and 256 <= height <= 480, f"{rel}: unexpected size {width}x{height}"
            x, y, w, h = rows[:, :4].T
            assert (w > 0).all() and (h > 0).all(), rel
            assert (x >= 0).all() and (y >= 0).all(), rel
            assert (x + w <= width).all() and (y + h <= height).all(), f"{rel}: box outside the image"
            attributes = rows[:, 4:]
            assert ((attributes >= 0) & (attributes <= ATTRIBUTE_MAX)).all(), f"{rel}: attribute out of range"
    # The event folder of the path is one of the official-looking event names, several are used.
    events = {rel.split("/")[0] for rel, _, _ in annotations["train"]}
    assert len(events) >= 4


def test_face_sizes_span_tiny_to_large_with_limited_overlap(annotations: dict) -> None:
    entries = annotations["train"] + annotations["val"]
    heights = np.concatenate([rows[:, 3] for _, rows, _ in entries])
    assert heights.min() <= 12, "no tiny faces"
    relative = np.concatenate([rows[:, 2:4].max(axis=1) / min(size) for _, rows, size in entries])
    assert relative.max() >= 0.35, "no large faces"
    # Roughly log-uniform: every octave from 8 px to 128 px holds a fair share of the faces.
    octaves = np.histogram(heights, bins=[8, 16, 32, 64, 128])[0]
    assert (octaves >= 0.08 * len(heights)).all(), f"size distribution too narrow: {octaves}"
    for rel, rows, _ in entries:
        boxes = np.column_stack([rows[:, 0], rows[:, 1], rows[:, 0] + rows[:, 2], rows[:, 1] + rows[:, 3]])
        iw = np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(boxes[:, None, 0], boxes[None, :, 0])
        ih = np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(boxes[:, None, 1], boxes[None, :, 1])
        inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
        area = rows[:, 2] * rows[:, 3]
        overlap = inter / np.minimum(area[:, None], area[None, :])
        np.fill_diagonal(overlap, 0.0)
        assert overlap.max(initial=0.0) <= 0.15, f"{rel}: faces overlap too much"


def test_zero_face_images_and_invalid_faces_are_present_but_rare(annotations: dict) -> None:
    entries = annotations["train"] + annotations["val"]
    counts = np.array([len(rows) for _, rows, _ in entries])
    invalid = np.concatenate([rows[:, 7] for _, rows, _ in entries])
    assert (counts == 0).any(), "no zero-face image"
    assert (counts == 0).mean() < 0.2
    assert counts.max() <= 10 and counts.mean() >= 2
    assert invalid.sum() >= 1, "no invalid face"
    assert invalid.mean() < 0.1


def test_train_and_val_use_disjoint_face_crops() -> None:
    from model.data.mini import _crop_pools, _load_assets

    assets = _load_assets()
    train_faces, _ = _crop_pools(assets, "train")
    val_faces, _ = _crop_pools(assets, "val")
    assert len(train_faces) + len(val_faces) == 100 and len(val_faces) >= 10
    train_stack = np.stack(train_faces).reshape(len(train_faces), -1)
    for face in val_faces:
        assert not (train_stack == face.reshape(1, -1)).all(axis=1).any(), "a validation crop is also a training crop"


def test_generation_is_deterministic_and_seed_dependent(tmp_path: Path, mini: Path) -> None:
    make_mini(tmp_path / "a", seed=0, num_train=6, num_val=2)
    make_mini(tmp_path / "b", seed=0, num_train=6, num_val=2)
    make_mini(tmp_path / "c", seed=1, num_train=6, num_val=2)
    a, b, c = (all_files(tmp_path / name) for name in "abc")
    assert a == b, "same seed gave different files"
    gt = "wider_face_split/wider_face_train_bbx_gt.txt"
    assert a[gt] != c[gt]
    assert [a[k] for k in a if k.endswith(".jpg")] != [c[k] for k in c if k.endswith(".jpg")]
    # An image depends only on (seed, split, index): the small set's images are the big set's.
    big = all_files(mini)
    for key, content in a.items():
        if key.endswith(".jpg"):
            assert big[key] == content, key


def test_ensure_mini_is_idempotent_and_regenerates_when_needed(tmp_path: Path) -> None:
    root = tmp_path / "mini"
    gt = root / "wider_face_split" / "wider_face_train_bbx_gt.txt"
    assert ensure_mini(root, seed=0, num_train=5, num_val=2) == root
    first_text, first_stamp = gt.read_text(), (root / MARKER_NAME).stat().st_mtime_ns
    assert len(parse_gt(gt)) == 5

    ensure_mini(root, seed=0, num_train=5, num_val=2)
    assert (root / MARKER_NAME).stat().st_mtime_ns == first_stamp, "an up-to-date set was regenerated"

    ensure_mini(root, seed=1, num_train=5, num_val=2)
    assert gt.read_text() != first_text, "changed parameters did not regenerate"
    ensure_mini(root, seed=1, num_train=7, num_val=2)
    assert len(parse_gt(gt)) == 7

    victim = sorted(image_files(root, "val").values())[0]
    victim.unlink()
    ensure_mini(root, seed=1, num_train=7, num_val=2)
    assert victim.is_file(), "an incomplete set was not regenerated"
    # Nothing but the set and its lock file is left beside it (no staging or retired copies).
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mini.lock", "mini"]


def test_refuses_to_overwrite_a_foreign_directory(tmp_path: Path) -> None:
    foreign = tmp_path / "real-data"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a generated mini set"):
        ensure_mini(foreign, num_train=2, num_val=1)
    with pytest.raises(FileExistsError):
        make_mini(foreign, num_train=2, num_val=1)
    assert (foreign / "keep.txt").read_text() == "precious"
    with pytest.raises(ValueError, match="num_val"):
        make_mini(tmp_path / "x", num_train=2, num_val=0)


def test_cli_make_mini(tmp_path: Path) -> None:
    out = tmp_path / "cli-mini"
    command = [sys.executable, "-m", "model.data", "make-mini", "--out", str(out), "--train", "20", "--val", "5"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "train: 20 images" in done.stdout and "val: 5 images" in done.stdout
    assert len(parse_gt(out / "wider_face_split" / "wider_face_train_bbx_gt.txt")) == 20
    assert len(image_files(out, "val")) == 5

    bad = subprocess.run(command[:-1] + ["0"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "num_val" in bad.stderr
