"""The WIDER FACE reader: the annotation format and its edge cases, missing and corrupt images,
ignore regions, the Arrow cache (round trip, reuse, rebuild) and DataLoader workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.io import ImageReadMode, decode_image

from model.data.transforms import build_eval_transforms
from model.data.widerface import AnnotationError, WiderFaceDataset, collate_fn, parse_annotations

Face = tuple[int, int, int, int, int]  # x, y, w, h, invalid

pytestmark = pytest.mark.usefixtures("one_thread")


def _face_line(x: int, y: int, w: int, h: int, invalid: int = 0) -> str:
    # x y w h blur expression illumination invalid occlusion pose
    return f"{x} {y} {w} {h} 1 0 2 {invalid} 1 0"


def _annotation_text(entries: list[tuple[str, list[Face]]]) -> str:
    lines = []
    for relpath, faces in entries:
        lines += [relpath, str(len(faces))]
        lines += [_face_line(*f) for f in faces] or ["0 0 0 0 0 0 0 0 0 0"]  # the official dummy line
    return "\n".join(lines) + "\n"


def _write_jpeg(path: Path, width: int, height: int, seed: int, gray: bool = False) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if gray else pixels).save(path, quality=92)


# name, (width, height), faces; written unless listed in MISSING, garbage if in CORRUPT.
IMAGES: list[tuple[str, tuple[int, int], list[Face]]] = [
    ("0--Parade/0_Parade_a.jpg", (160, 120), [(10, 10, 40, 40, 0), (100, 50, 20, 30, 0)]),
    ("0--Parade/0_Parade_missing.jpg", (160, 120), [(5, 5, 30, 30, 0)]),
    ("0--Parade/0_Parade_empty.jpg", (120, 160), []),
    ("1--Handshaking/1_Handshaking_corrupt.jpg", (100, 100), [(20, 20, 30, 30, 0)]),
    ("1--Handshaking/1_Handshaking_gray.jpg", (80, 60), [(10, 10, 20, 20, 1), (40, 20, 8, 8, 0)]),
    ("2--Demonstration/2_Demonstration_b.jpg", (200, 100), [(150, 40, 60, 50, 0), (0, 0, 0, 10, 0)]),
]
MISSING = {"0--Parade/0_Parade_missing.jpg"}
CORRUPT = {"1--Handshaking/1_Handshaking_corrupt.jpg"}
READABLE = [name for name, _, _ in IMAGES if name not in MISSING | CORRUPT]


def _write_dataset(root: Path, split: str = "train") -> Path:
    images = root / f"WIDER_{split}" / "images"
    for seed, (name, (w, h), _) in enumerate(IMAGES):
        if name in MISSING:
            continue
        if name in CORRUPT:
            (images / name).parent.mkdir(parents=True, exist_ok=True)
            (images / name).write_bytes(b"\xff\xd8 this is not a jpeg " * 20)
        else:
            _write_jpeg(images / name, w, h, seed, gray="gray" in name)
    ann = root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(_annotation_text([(name, faces) for name, _, faces in IMAGES]))
    return root


def _index(ds: WiderFaceDataset, relpath: str) -> int:
    return [r.relpath for r in ds.records].index(relpath)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return _write_dataset(tmp_path / "wider")


# ----------------------------------------------------------------------------- the parser


def test_parse_converts_xywh_to_xyxy_and_skips_the_zero_face_dummy_line(tmp_path: Path) -> None:
    path = tmp_path / "gt.txt"
    path.write_text(_annotation_text([("a/1.jpg", [(1, 2, 3, 4, 0)]), ("a/2.jpg", []), ("a/3.jpg", [(5, 6, 7, 8, 1)])]))
    records, stats = parse_annotations(path)
    assert [r.relpath for r in records] == ["a/1.jpg", "a/2.jpg", "a/3.jpg"]
    np.testing.assert_array_equal(records[0].boxes, [[1, 2, 4, 6]])
    assert records[0].boxes.dtype == np.float32
    assert records[1].boxes.shape == (0, 4) and records[1].invalid.shape == (0,)
    np.testing.assert_array_equal(records[2].boxes, [[5, 6, 12, 14]])
    assert records[2].invalid.tolist() == [True] and records[0].invalid.tolist() == [False]
    np.testing.assert_array_equal(records[2].attributes, [[1, 0, 2, 1, 1, 0]])
    assert (stats.images, stats.faces, stats.invalid_faces, stats.empty_images) == (3, 2, 1, 1)
    assert records[2].image_id == "a/3"


def test_zero_size_boxes_are_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "gt.txt"
    entries = [("a/1.jpg", [(1, 1, 0, 5, 0), (2, 2, 5, 5, 0), (3, 3, 5, 0, 0)]), ("a/2.jpg", [(0, 0, -1, 4, 0)])]
    path.write_text(_annotation_text(entries))
    records, stats = parse_annotations(path)
    np.testing.assert_array_equal(records[0].boxes, [[2, 2, 7, 7]])
    assert records[1].boxes.shape == (0, 4)
    assert stats.zero_size_boxes == 3 and stats.faces == 1
    assert [r.zero_size_dropped for r in records] == [2, 1]


def test_trailing_whitespace_crlf_and_missing_final_newline_are_tolerated(tmp_path: Path) -> None:
    entries = [("a/1.jpg", [(1, 2, 3, 4, 0), (9, 9, 9, 9, 1)]), ("a/2.jpg", []), ("a/3.jpg", [(5, 6, 7, 8, 0)])]
    clean, messy = tmp_path / "clean.txt", tmp_path / "messy.txt"
    clean.write_text(_annotation_text(entries))
    messy.write_bytes(("\r\n".join(line + "  \t" for line in _annotation_text(entries).splitlines())).encode())
    (a, sa), (b, sb) = parse_annotations(clean), parse_annotations(messy)
    assert sa == sb and [r.relpath for r in a] == [r.relpath for r in b]
    for ra, rb in zip(a, b):
        np.testing.assert_array_equal(ra.boxes, rb.boxes)
        np.testing.assert_array_equal(ra.invalid, rb.invalid)


FACE = _face_line(1, 2, 3, 4)


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        (f"a.jpg\nthree\n{FACE}\n", 2, "integer face count"),
        (f"a.jpg\n1.5\n{FACE}\n", 2, "integer face count"),
        (f"a.jpg\n-1\n{FACE}\n", 2, "negative face count"),
        (f"a.jpg\n1\n{FACE}\nb.jpg\n2\n{FACE}\n1 2 3 4 0 0 0 0 0\n", 7, "expected 10 values"),
        (f"a.jpg\n2\n{FACE}\n1 2 x 4 0 0 0 0 0 0\n", 4, "expected numbers"),
        ("a.jpg\n1\n1 2 3 4 0 0 0.5 0 0 0\n", 3, "expected numbers"),
        (f"a.jpg\n1\n{FACE}\nb.jpg\n3\n{FACE}\n{FACE}", 5, "declares 3 faces"),
        (f"a.jpg\n1\n{FACE}\nb.jpg", 4, "truncated"),
        (f"a.jpg\n1\n{FACE}\n{FACE}\nb.jpg\n0\n", 4, "expected an image path"),
    ],
    ids=[
        "word-count",
        "float-count",
        "negative-count",
        "columns",
        "non-numeric",
        "float-attribute",
        "truncated-faces",
        "truncated-count",
        "extra-face-line",
    ],
)
def test_malformed_annotations_name_the_file_and_line(tmp_path: Path, text: str, line: int, expected: str) -> None:
    path = tmp_path / "wider_face_train_bbx_gt.txt"
    path.write_text(text)
    with pytest.raises(AnnotationError) as info:
        parse_annotations(path)
    message = str(info.value)
    assert f"{path}:{line}:" in message and expected in message, message


# ----------------------------------------------------------------------------- the dataset


@pytest.mark.parametrize("cached", [False, True], ids=["decode", "cache"])
def test_missing_and_corrupt_images_are_skipped_counted_and_reported(root: Path, tmp_path: Path, cached: bool) -> None:
    cache_dir = tmp_path / "c" if cached else None
    ds = WiderFaceDataset(root, "train", transform=build_eval_transforms(64), cache_dir=cache_dir)
    ids = [ds[i][1]["image_id"] for i in range(len(ds))]
    # The corrupt file never shows up: the cache skips it, lazy decoding substitutes the next image.
    assert set(ids) == {name.removesuffix(".jpg") for name in READABLE}
    if not cached:
        assert ids == [
            "0--Parade/0_Parade_a",
            "0--Parade/0_Parade_empty",
            "1--Handshaking/1_Handshaking_gray",
            "1--Handshaking/1_Handshaking_gray",
            "2--Demonstration/2_Demonstration_b",
        ]
    report = ds.report()
    assert report.missing_files == sorted(MISSING) and report.corrupt_files == sorted(CORRUPT)
    assert report.images == len(READABLE) == 4
    assert report.faces == 5 and report.invalid_faces == 1 and report.zero_size_boxes == 1
    line = str(report)
    assert "\n" not in line and "0_Parade_missing.jpg" in line and "1_Handshaking_corrupt.jpg" in line
    assert "4 images" in line and "1 missing" in line and "1 corrupt" in line


def test_samples_follow_the_shared_convention(root: Path) -> None:
    ds = WiderFaceDataset(root, "train", transform=build_eval_transforms(48))
    image, target = ds[0]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["labels"].tolist() == [1, 1] and target["ignore"].dtype == torch.bool
    # 160x120 -> 48x48: x scaled by 0.3, y by 0.4.
    torch.testing.assert_close(target["boxes"], torch.tensor([[3.0, 4.0, 15.0, 20.0], [30.0, 20.0, 36.0, 32.0]]))
    assert target["image_id"] == "0--Parade/0_Parade_a" and target["orig_size"].tolist() == [120, 160]
    gray_image, _ = ds[_index(ds, "1--Handshaking/1_Handshaking_gray.jpg")]  # grayscale JPEG: 3 equal channels
    assert gray_image.shape[0] == 3 and torch.equal(gray_image[0], gray_image[1])


def test_min_face_size_is_measured_after_the_transform(root: Path) -> None:
    # 80x60 -> 160x160: the 8x8 face becomes 16x21, the invalid 20x20 face 40x53.
    for size, min_face, small_ignored in [(160, 12.0, False), (40, 12.0, True), (160, 20.0, True)]:
        ds = WiderFaceDataset(root, "train", transform=build_eval_transforms(size), min_face_size=min_face)
        _, target = ds[_index(ds, "1--Handshaking/1_Handshaking_gray.jpg")]
        assert target["ignore"].tolist() == [True, small_ignored], (size, min_face)


@pytest.mark.parametrize("max_side", [None, 90])
def test_cache_round_trip_equals_decoding_and_resizing_directly(root: Path, tmp_path: Path, max_side: int | None) -> None:
    cached = WiderFaceDataset(root, "train", cache_dir=tmp_path / "c", cache_max_side=max_side)
    direct = WiderFaceDataset(root, "train", cache_max_side=max_side)
    assert len(cached) == len(READABLE)
    for i, name in enumerate(READABLE):
        (w, h), faces = next((size, faces) for n, size, faces in IMAGES if n == name)
        scale = 1.0 if max_side is None else min(1.0, max_side / max(w, h))
        new_h, new_w = round(h * scale), round(w * scale)
        expected = decode_image(str(root / "WIDER_train" / "images" / name), mode=ImageReadMode.RGB)
        if (new_h, new_w) != (h, w):
            expected = F.resize(expected, [new_h, new_w], antialias=True)
        image, target = cached[i]
        assert torch.equal((image * 255).round().to(torch.uint8), expected)
        kept = [f for f in faces if f[2] > 0 and f[3] > 0]
        boxes = torch.tensor(
            [[x * new_w / w, y * new_h / h, min(x + fw, w) * new_w / w, min(y + fh, h) * new_h / h] for x, y, fw, fh, _ in kept]
        ).reshape(-1, 4)
        torch.testing.assert_close(target["boxes"], boxes)
        assert target["orig_size"].tolist() == [h, w]
        image2, target2 = direct[_index(direct, name)]
        assert torch.equal(image, image2) and torch.equal(target["boxes"], target2["boxes"])


def test_cache_is_reused_when_unchanged_and_rebuilt_when_annotations_change(root: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    first = WiderFaceDataset(root, "train", cache_dir=cache_dir)
    (built,) = cache_dir.glob("*.arrow")
    stamp = built.stat().st_mtime_ns
    # Same-size garbage over a JPEG: an unchanged key must serve pixels from the cache, not decode.
    jpeg = root / "WIDER_train" / "images" / READABLE[0]
    jpeg.write_bytes(b"\0" * jpeg.stat().st_size)
    again = WiderFaceDataset(root, "train", cache_dir=cache_dir)
    assert list(cache_dir.glob("*.arrow")) == [built] and built.stat().st_mtime_ns == stamp
    assert torch.equal(again[0][0], first[0][0]) and again.report().corrupt_files == sorted(CORRUPT)

    ann = root / "wider_face_split" / "wider_face_train_bbx_gt.txt"
    ann.write_text(ann.read_text().replace("150 40 60 50", "140 40 60 50", 1))
    changed = WiderFaceDataset(root, "train", cache_dir=cache_dir)
    assert len(list(cache_dir.glob("*.arrow"))) == 2, "a changed annotation file must build a new cache"
    name = "2--Demonstration/2_Demonstration_b.jpg"
    assert changed[_index(changed, name)][1]["boxes"][0, 0] == 140.0
    assert first[_index(first, name)][1]["boxes"][0, 0] == 150.0
    # The rebuild decoded again and found the overwritten JPEG.
    assert READABLE[0] in changed.report().corrupt_files
    assert not list(cache_dir.glob(".*.tmp")), "no temporary file left behind"


@pytest.mark.parametrize("cached", [False, True], ids=["decode", "cache"])
def test_dataloader_with_two_workers(root: Path, tmp_path: Path, cached: bool) -> None:
    cache_dir = tmp_path / "c" if cached else None
    ds = WiderFaceDataset(root, "train", transform=build_eval_transforms(32), cache_dir=cache_dir)
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_fn)
    ids = []
    for images, targets in loader:
        assert images.shape == (len(targets), 3, 32, 32) and images.dtype == torch.float32
        ids += [t["image_id"] for t in targets]
    assert set(ids) == {name.removesuffix(".jpg") for name in READABLE}
    # Found in a worker process, reported in this one.
    assert ds.report().corrupt_files == sorted(CORRUPT)


def test_max_images_spreads_over_the_file(root: Path) -> None:
    ds = WiderFaceDataset(root, "train", max_images=2)
    assert [r.relpath for r in ds.records] == ["0--Parade/0_Parade_a.jpg", "2--Demonstration/2_Demonstration_b.jpg"]


def test_missing_annotation_file_names_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="wider_face_val_bbx_gt.txt"):
        WiderFaceDataset(tmp_path, "val")


def test_collate_stacks_images_and_lists_targets() -> None:
    batch = [(torch.zeros(3, 8, 8), {"image_id": "a"}), (torch.ones(3, 8, 8), {"image_id": "b"})]
    images, targets = collate_fn(batch)
    assert images.shape == (2, 3, 8, 8) and [t["image_id"] for t in targets] == ["a", "b"]
