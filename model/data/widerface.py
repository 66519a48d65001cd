"""The WIDER FACE reader: the official annotation format, a torch ``Dataset`` and its data report.

Layout (the official one; :mod:`model.data.mini` writes the same)::

    <root>/WIDER_{train,val}/images/<event>/<name>.jpg
    <root>/wider_face_split/wider_face_{train,val}_bbx_gt.txt

The annotation file is a sequence of records: an image path relative to ``images/``, a face count
``n``, then ``n`` lines ``x y w h blur expression illumination invalid occlusion pose``. A record
with ``n = 0`` is followed by one dummy line of ten zeros that is *not* a face (torchvision's
``WIDERFace`` reads it as one).

A sample is ``(image, target)``: ``image`` float32 ``(3, S, S)`` in [0, 1]; ``target`` a dict with
``boxes`` (M, 4) float32 xyxy in that image's pixels, ``labels`` int64 ones, ``ignore`` bool,
``image_id`` (``<event>/<name>``) and ``orig_size`` (H, W of the original image, for mapping
predictions back to the official frame).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors

from model.data.cache import ArrowImageCache, CachedImage, decode_and_fit, decode_error_message, fit_boxes

logger = logging.getLogger(__name__)

Split = Literal["train", "val"]
Transform = Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]]

#: Columns of a face line, in the official order.
ATTRIBUTE_NAMES = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")
_INVALID_COLUMN = 4 + ATTRIBUTE_NAMES.index("invalid")
_FACE_COLUMNS = 4 + len(ATTRIBUTE_NAMES)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file, the 1-based line and what was expected."""


@dataclass
class ImageRecord:
    """One image of the annotation file.

    Attributes:
        relpath: path relative to ``WIDER_<split>/images`` (``0--Parade/0_Parade_marchingband_1_5.jpg``).
        boxes: (M, 4) float32 xyxy in original pixels (``x, y, x + w, y + h``).
        invalid: (M,) bool, the annotators' ``invalid`` flag (always an ignore region).
        attributes: (M, 6) int32, the six attribute columns in :data:`ATTRIBUTE_NAMES` order.
        zero_size_dropped: faces of this record dropped because ``w <= 0`` or ``h <= 0``.
    """

    relpath: str
    boxes: np.ndarray
    invalid: np.ndarray
    attributes: np.ndarray
    zero_size_dropped: int = 0

    @property
    def image_id(self) -> str:
        """``<event>/<name>`` without the extension: the key of the official evaluation."""
        return _image_id(self.relpath)


def _image_id(relpath: str) -> str:
    return str(PurePosixPath(relpath).with_suffix(""))


@dataclass
class ParseStats:
    """Counts over a whole annotation file."""

    images: int = 0
    faces: int = 0
    invalid_faces: int = 0
    zero_size_boxes: int = 0
    empty_images: int = 0


def parse_annotations(path: str | Path) -> tuple[list[ImageRecord], ParseStats]:
    """Parse an official ``wider_face_*_bbx_gt.txt`` file.

    Faces with ``w <= 0`` or ``h <= 0`` are dropped and counted (the official train set has a few).
    Trailing whitespace, blank lines and a missing final newline are tolerated.

    Raises:
        AnnotationError: on a malformed record, naming the file and the 1-based line number.
    """
    path = Path(path)
    # Blank lines carry no information; keep the original 1-based numbers for error messages.
    lines = [(i, s) for i, raw in enumerate(path.read_text().splitlines(), start=1) if (s := raw.strip())]
    spans: list[tuple[str, int, int]] = []  # relpath, first face line in `face_lines`, count
    face_lines: list[tuple[int, str]] = []
    dummy_lines: list[tuple[int, str]] = []
    pos = 0
    while pos < len(lines):
        path_line, relpath = lines[pos]
        if not relpath.lower().endswith(_IMAGE_SUFFIXES) or len(relpath.split()) != 1:
            raise AnnotationError(
                f"{path}:{path_line}: expected an image path ending in .jpg, got {relpath!r} "
                "(does the previous record have more face lines than its count?)"
            )
        if relpath.startswith(("/", "\\")) or ".." in Path(relpath).parts:
            raise AnnotationError(f"{path}:{path_line}: image path {relpath!r} leaves the split's images folder")
        if pos + 1 >= len(lines):
            raise AnnotationError(f"{path}:{path_line}: truncated record {relpath!r}: the file ends before its face count")
        count_line, count_text = lines[pos + 1]
        try:
            count = int(count_text)
        except ValueError:
            raise AnnotationError(
                f"{path}:{count_line}: expected an integer face count for {relpath!r}, got {count_text!r}"
            ) from None
        if count < 0:
            raise AnnotationError(f"{path}:{count_line}: negative face count {count} for {relpath!r}")
        pos += 2
        if count == 0:
            # The official files follow an empty record with one dummy line of ten zeros: skip it.
            if pos < len(lines) and len(lines[pos][1].split()) == _FACE_COLUMNS:
                dummy_lines.append(lines[pos])
                pos += 1
        elif pos + count > len(lines):
            raise AnnotationError(
                f"{path}:{count_line}: truncated record {relpath!r}: it declares {count} faces "
                f"but the file ends after {len(lines) - pos} face lines"
            )
        spans.append((relpath, len(face_lines), count))
        face_lines += lines[pos : pos + count]
        pos += count

    # One vectorised conversion for the whole file (it is ~160k lines for the train split).
    _parse_face_lines(path, dummy_lines)
    values = _parse_face_lines(path, face_lines)
    records = [_make_record(relpath, values[start : start + count]) for relpath, start, count in spans]
    stats = ParseStats(
        images=len(records),
        faces=sum(len(r.boxes) for r in records),
        invalid_faces=sum(int(r.invalid.sum()) for r in records),
        zero_size_boxes=sum(r.zero_size_dropped for r in records),
        empty_images=sum(len(r.boxes) == 0 for r in records),
    )
    return records, stats


def _parse_face_lines(path: Path, face_lines: Sequence[tuple[int, str]]) -> np.ndarray:
    """(n, 10) float64 values of face lines, or an AnnotationError naming the first bad line."""
    rows = [text.split() for _, text in face_lines]
    for (number, text), row in zip(face_lines, rows):
        if len(row) != _FACE_COLUMNS:
            raise AnnotationError(
                f"{path}:{number}: expected {_FACE_COLUMNS} values "
                f"'x y w h {' '.join(ATTRIBUTE_NAMES)}', got {len(row)}: {text!r}"
            )
    try:
        values = np.array(rows, dtype=np.float64).reshape(len(rows), _FACE_COLUMNS)
        ok = bool(np.isfinite(values).all() and (values[:, 4:] == np.round(values[:, 4:])).all())
    except ValueError:
        ok = False
    if not ok:
        # The vectorised parse cannot tell which line is bad: find it.
        bad = next((i for i, row in enumerate(rows) if not _is_face_row(row)), 0)
        number, text = face_lines[bad]
        raise AnnotationError(f"{path}:{number}: expected numbers (x y w h, then six integer attributes), got {text!r}")
    return values


def _is_face_row(row: Sequence[str]) -> bool:
    try:
        values = [float(v) for v in row]
    except ValueError:
        return False
    return all(np.isfinite(values)) and all(v == round(v) for v in values[4:])


def _make_record(relpath: str, values: np.ndarray) -> ImageRecord:
    keep = (values[:, 2] > 0) & (values[:, 3] > 0)
    values = values[keep]
    xy, wh = values[:, 0:2], values[:, 2:4]
    return ImageRecord(
        relpath=relpath,
        boxes=np.concatenate([xy, xy + wh], axis=1).astype(np.float32),
        invalid=values[:, _INVALID_COLUMN] != 0,
        attributes=values[:, 4:].astype(np.int32),
        zero_size_dropped=int((~keep).sum()),
    )


@dataclass
class DataReport:
    """What a dataset holds and what it had to skip; ``str()`` is one line for a log."""

    split: str
    images: int
    """Usable images (missing and, with the cache, corrupt ones excluded)."""
    faces: int
    invalid_faces: int
    """Faces flagged invalid in the annotations: always ignore regions. Faces below
    ``min_face_size`` are ignored too, but that is decided per sample after the transform."""
    zero_size_boxes: int
    missing_files: list[str] = field(default_factory=list)
    corrupt_files: list[str] = field(default_factory=list)
    """Undecodable images. Without the cache they are found as samples are read, so this lists
    those found so far (in every DataLoader worker)."""

    def __str__(self) -> str:
        parts = [
            f"WIDER FACE {self.split}: {self.images:,} images, {self.faces:,} faces ({self.invalid_faces:,} invalid)",
            f"{self.zero_size_boxes:,} zero-size boxes dropped",
            f"{len(self.missing_files):,} missing{_examples(self.missing_files)}",
            f"{len(self.corrupt_files):,} corrupt{_examples(self.corrupt_files)}",
        ]
        return ", ".join(parts)


def _examples(names: Sequence[str], limit: int = 3) -> str:
    if not names:
        return ""
    more = f", +{len(names) - limit} more" if len(names) > limit else ""
    return f" ({', '.join(names[:limit])}{more})"


class WiderFaceDataset(torch.utils.data.Dataset[tuple[Tensor, dict[str, Any]]]):
    """WIDER FACE in the official layout, as ``(image, target)`` samples.

    Images are decoded as RGB uint8 and downscaled so their longer side is at most
    ``cache_max_side`` (boxes scaled and clipped to the image), then ``transform`` (e.g.
    :func:`model.data.transforms.build_train_transforms`) gets ``(tv_tensors.Image,
    {"boxes": BoundingBoxes, "labels", "ignore"})``. The downscale applies with and without the
    cache, so both paths give identical samples.

    Missing image files are skipped at construction. Undecodable ones are skipped while the cache
    is built; without the cache they are found lazily and replaced by the next readable sample
    (deterministic), flagged in shared memory so :meth:`report` sees those found by DataLoader
    workers too.

    Args:
        root: dataset root holding ``WIDER_<split>`` and ``wider_face_split``.
        split: ``"train"`` or ``"val"``.
        transform: callable ``(image, target) -> (image, target)``; ``None`` returns the decoded
            image as float32 in [0, 1] at its (downscaled) size. A transform's image is returned as
            it comes (uint8 from :class:`model.data.batch_augment.DrawSSDAugmentation`, rendered
            later on the device), and target entries it adds are kept.
        min_face_size: faces whose shorter side is below this, measured after the transform
            (in the network input frame), are ignore regions.
        cache_dir: where the Arrow image cache lives; ``None`` decodes JPEGs every time.
        cache_max_side: the longer image side is downscaled to at most this; ``None`` keeps the
            original size.
        max_images: use this many images, evenly spaced over the annotation file so every event
            is represented (the file is sorted by event).
    """

    def __init__(
        self,
        root: str | Path,
        split: Split = "train",
        transform: Transform | None = None,
        min_face_size: float = 0.0,
        cache_dir: str | Path | None = None,
        cache_max_side: int | None = 640,
        max_images: int | None = None,
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if max_images is not None and max_images < 1:
            raise ValueError(f"max_images must be >= 1 or None, got {max_images}")
        if cache_max_side is not None and cache_max_side < 1:
            raise ValueError(f"cache_max_side must be >= 1 or None, got {cache_max_side}")
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.min_face_size = float(min_face_size)
        self.cache_max_side = cache_max_side
        self.images_dir = self.root / f"WIDER_{split}" / "images"
        self.annotation_file = self.root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"
        if not self.annotation_file.is_file():
            raise FileNotFoundError(
                f"WIDER FACE annotation file not found: {self.annotation_file} (expected the official layout "
                f"<root>/WIDER_{{train,val}}/images and <root>/wider_face_split; root={self.root})"
            )

        parsed, _ = parse_annotations(self.annotation_file)
        records, self._missing, file_sizes = self._existing(parsed)
        if max_images is not None and max_images < len(records):
            keep = np.unique(np.linspace(0, len(records) - 1, max_images).round().astype(np.int64))
            records, file_sizes = [records[i] for i in keep], [file_sizes[i] for i in keep]
        if self._missing:
            logger.warning("%s: %d image files missing, skipped (e.g. %s)", self.images_dir, len(self._missing), self._missing[0])

        self._cache: ArrowImageCache | None = None
        self._rows: np.ndarray | None = None  # cache row of each sample
        if cache_dir is not None and records:
            self._cache = ArrowImageCache.build_or_open(
                Path(cache_dir),
                split=split,
                records=records,
                images_dir=self.images_dir,
                annotation_file=self.annotation_file,
                file_sizes=file_sizes,
                max_side=cache_max_side,
            )
            self._rows = self._cache.valid_rows
            records = [records[i] for i in self._rows]
        if not records:
            raise ValueError(f"no readable images for split {split!r} under {self.images_dir}")
        self.records = records
        # Lazily found corrupt files; shared memory so flags set in DataLoader workers reach report().
        # torch leaves Tensor.share_memory_ unannotated (it returns the tensor itself).
        self._corrupt = torch.zeros(len(records), dtype=torch.bool).share_memory_()  # type: ignore[no-untyped-call]
        logger.info("%s", self.report())

    def _existing(self, records: list[ImageRecord]) -> tuple[list[ImageRecord], list[str], list[int]]:
        """Records whose image file exists, the missing relpaths, and the file sizes (cache key)."""
        present, missing, sizes = [], [], []
        for record in records:
            try:
                st = os.stat(self.images_dir / record.relpath)
            except OSError:
                missing.append(record.relpath)
                continue
            present.append(record)
            sizes.append(st.st_size)
        return present, missing, sizes

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        index = int(index)
        if not 0 <= index < len(self.records):
            raise IndexError(f"index {index} out of range for {len(self.records)} images")
        if self._cache is not None and self._rows is not None:
            return self._to_sample(self._cache.get(int(self._rows[index])))
        return self._to_sample(self._decode_or_substitute(index))

    def _decode_or_substitute(self, index: int) -> CachedImage:
        """Decode ``index``, or the next readable image when it is corrupt (same choice in every worker)."""
        n = len(self.records)
        for step in range(n):
            i = (index + step) % n
            if self._corrupt[i]:
                continue
            record = self.records[i]
            try:
                image, orig_size = decode_and_fit(self.images_dir / record.relpath, self.cache_max_side)
            except RuntimeError as err:
                self._corrupt[i] = True
                logger.warning(
                    "corrupt image %s skipped, sample %d replaced by the next readable one (%s)",
                    self.images_dir / record.relpath,
                    index,
                    decode_error_message(err),
                )
                continue
            return CachedImage(
                image=image,
                boxes=torch.from_numpy(fit_boxes(record.boxes, orig_size, cast("tuple[int, int]", tuple(image.shape[-2:])))),
                invalid=torch.from_numpy(record.invalid.copy()),
                relpath=record.relpath,
                orig_size=orig_size,
            )
        raise RuntimeError(f"every image of {self.images_dir} failed to decode; see report()")

    def _to_sample(self, loaded: CachedImage) -> tuple[Tensor, dict[str, Any]]:
        height, width = loaded.image.shape[-2:]
        boxes = tv_tensors.BoundingBoxes(loaded.boxes, format="XYXY", canvas_size=(height, width))
        target: dict[str, Any] = {
            "boxes": boxes,
            "labels": torch.ones(len(boxes), dtype=torch.int64),
            "ignore": loaded.invalid.clone(),
        }
        image: Any = tv_tensors.Image(loaded.image)
        if self.transform is not None:
            image, target = self.transform(image, target)
        image = image.as_subclass(Tensor)
        if self.transform is None:
            image = image.float().div_(255)
        boxes = target["boxes"].as_subclass(Tensor).float()
        # Ignore after the transform: what matters is the face size the anchors see.
        short_side = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        ignore = target["ignore"].bool() | (short_side < self.min_face_size) | (short_side <= 0)
        return image, {
            **{k: v for k, v in target.items() if k not in ("boxes", "labels", "ignore")},
            "boxes": boxes,
            "labels": target["labels"].as_subclass(Tensor).long(),
            "ignore": ignore,
            "image_id": _image_id(loaded.relpath),
            "orig_size": torch.tensor(loaded.orig_size, dtype=torch.int64),
        }

    def report(self) -> DataReport:
        """Counts of images and faces, and the files skipped (missing, corrupt)."""
        found = self._corrupt.numpy()
        usable = [r for r, bad in zip(self.records, found) if not bad]
        corrupt = [r.relpath for r, bad in zip(self.records, found) if bad]
        if self._cache is not None:
            corrupt = self._cache.corrupt_files + corrupt
        return DataReport(
            split=self.split,
            images=len(usable),
            faces=sum(len(r.boxes) for r in usable),
            invalid_faces=sum(int(r.invalid.sum()) for r in usable),
            zero_size_boxes=sum(r.zero_size_dropped for r in usable),
            missing_files=list(self._missing),
            corrupt_files=corrupt,
        )


def collate_fn(batch: Sequence[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, list[dict[str, Any]]]:
    """Stack the (equal-sized) images to (B, 3, S, S); keep the targets as a list of dicts."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)
