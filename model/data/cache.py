"""The fast path: decoded, downscaled images in a memory-mapped Arrow IPC file.

One build pass decodes every image once (finding the corrupt ones on the way), downscales it so
its longer side is at most ``max_side`` and writes uint8 HWC pixels with the scaled boxes. Later
epochs, later trials and DataLoader workers read it memory-mapped: no JPEG is decoded again.

The file is named by a hash of everything its content depends on (format version, annotation
file, image list and file sizes, ``max_side``), so a changed dataset gets a new file and an
unchanged one is reused. It is written to a temporary file and renamed (atomic), under a file
lock so concurrent trials on one machine build it once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from filelock import FileLock
import pyarrow as pa
import torch
import torchvision.transforms.v2.functional as F
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, read_file

if TYPE_CHECKING:
    from model.data.widerface import ImageRecord


logger = logging.getLogger(__name__)

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec (not a dependency here);
# they still work, and the warning would otherwise repeat for every decoded image.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated")

#: Bump when the layout or the decoding changes: old cache files are then ignored.
CACHE_FORMAT_VERSION = 1
_ROWS_PER_BATCH = 32

_SCHEMA = pa.schema(
    [
        ("relpath", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("orig_height", pa.int32()),
        ("orig_width", pa.int32()),
        ("pixels", pa.large_binary()),  # uint8, HWC, RGB
        ("boxes", pa.list_(pa.float32())),  # flattened (M, 4) xyxy in the cached frame
        ("invalid", pa.list_(pa.bool_())),
        ("error", pa.string()),  # null: decoded fine; else why the image is unreadable
    ]
)


@dataclass
class CachedImage:
    """One decoded image with its faces, in the (downscaled) frame of ``image``."""

    image: Tensor
    """uint8 (3, H, W), RGB."""
    boxes: Tensor
    """float32 (M, 4) xyxy, clipped to the image."""
    invalid: Tensor
    """bool (M,)."""
    relpath: str
    orig_size: tuple[int, int]
    """(H, W) of the original file."""


def decode_and_fit(path: str | Path, max_side: int | None) -> tuple[Tensor, tuple[int, int]]:
    """Decode an image file to RGB uint8 (3, H, W), downscaled so that max(H, W) <= ``max_side``.

    Returns:
        The image and the original (height, width).

    Raises:
        RuntimeError: the file cannot be read or decoded.
    """
    try:
        data = read_file(str(path))
    except OSError as err:
        raise RuntimeError(f"cannot read {path}: {err}") from err
    image = decode_image(data, mode=ImageReadMode.RGB)  # grayscale/CMYK -> 3 channels
    height, width = image.shape[-2:]
    if max_side is not None and max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = [max(1, round(height * scale)), max(1, round(width * scale))]
        image = F.resize(image, size, antialias=True)
    return image, (int(height), int(width))


def decode_error_message(err: BaseException) -> str:
    """The readable part of a decoder error (torchvision prefixes its C++ source location)."""
    message = " ".join(str(err).split())
    return re.sub(r"^\w+, \S+:\d+, ", "", message) or type(err).__name__


def fit_boxes(boxes: np.ndarray, orig_size: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Scale xyxy ``boxes`` from an ``orig_size`` (H, W) image to ``size`` and clip them to it."""
    (oh, ow), (h, w) = orig_size, size
    scaled = boxes.astype(np.float32) * np.array([w / ow, h / oh, w / ow, h / oh], dtype=np.float32)
    return np.clip(scaled, 0, np.array([w, h, w, h], dtype=np.float32))


class ArrowImageCache:
    """Read access to a built cache file; the memory map is opened lazily in each process.

    Use :meth:`build_or_open`. The object pickles without its open map, so DataLoader workers
    (fork or spawn) each map the file themselves.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        meta = {k.decode(): v.decode() for k, v in (reader.schema.metadata or {}).items()}
        self.key = meta.get("key", "")
        self.format_version = int(meta.get("format_version", -1))
        index = reader.read_all().select(["relpath", "error"])
        decoded = index.column("error").is_null().to_numpy(zero_copy_only=False)
        relpaths = index.column("relpath").to_pylist()
        #: Rows holding a decoded image, in annotation order.
        self.valid_rows: np.ndarray = np.flatnonzero(decoded)
        #: Images that failed to decode while the cache was built.
        self.corrupt_files: list[str] = [relpaths[i] for i in np.flatnonzero(~decoded)]
        self._pid: int | None = None
        self._batches: list[_Columns] = []
        self._starts = np.zeros(1, dtype=np.int64)

    @classmethod
    def build_or_open(
        cls,
        cache_dir: Path,
        *,
        split: str,
        records: Sequence[ImageRecord],
        images_dir: Path,
        annotation_file: Path,
        file_sizes: Sequence[int],
        max_side: int | None,
    ) -> ArrowImageCache:
        """The cache for exactly these records, built on first use and reused while unchanged.

        Args:
            records: the images to cache, in order (rows follow this order).
            file_sizes: size in bytes of each record's image file (part of the key).
            max_side: longer-side limit of the cached images; ``None`` keeps full size.
        """
        key = cache_key(annotation_file, records, file_sizes, max_side)
        path = Path(cache_dir) / f"widerface-{split}-{key[:20]}.arrow"
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(path.with_name(path.name + ".lock")):  # parallel trials build a cache once
            cache = _try_open(path, key)
            if cache is None:
                _build(path, key, records, images_dir, max_side)
                cache = cls(path)
        return cache

    def __len__(self) -> int:
        return len(self.valid_rows) + len(self.corrupt_files)

    def get(self, row: int) -> CachedImage:
        """The image and faces of cache row ``row`` (zero-copy read, one copy into the tensor)."""
        if self._pid != os.getpid():
            self._map()
        b = int(np.searchsorted(self._starts, row, side="right")) - 1
        c, j = self._batches[b], row - int(self._starts[b])
        height, width = int(c.height[j]), int(c.width[j])
        pixels = c.pixels[c.pixel_offsets[j] : c.pixel_offsets[j + 1]]
        # The map is read-only: a plain copy gives torch its own memory (HWC, as stored), seen as CHW
        # through strides. A transposing copy costs ~4x more, and the next consumer copies anyway
        # (torchvision's uint8 resize is fastest on this channels-last layout; the batch canvas).
        image = torch.from_numpy(pixels.reshape(height, width, 3).copy()).permute(2, 0, 1)
        return CachedImage(
            image=image,
            boxes=torch.from_numpy(c.boxes[c.box_offsets[j] : c.box_offsets[j + 1]].reshape(-1, 4).copy()),
            invalid=torch.from_numpy(c.invalid[c.invalid_offsets[j] : c.invalid_offsets[j + 1]].copy()),
            relpath=c.relpaths[j],
            orig_size=(int(c.orig_height[j]), int(c.orig_width[j])),
        )

    def _map(self) -> None:
        reader = pa.ipc.open_file(pa.memory_map(str(self.path), "r"))
        batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        self._batches = [_Columns.of(batch) for batch in batches]
        self._starts = np.cumsum([0] + [b.num_rows for b in batches])
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_pid=None, _batches=[], _starts=np.zeros(1, dtype=np.int64))
        return state


@dataclass
class _Columns:
    """One record batch as NumPy arrays over the memory map: per-row reads without pyarrow scalars."""

    relpaths: list[str]
    height: np.ndarray
    width: np.ndarray
    orig_height: np.ndarray
    orig_width: np.ndarray
    pixels: np.ndarray  # every row's bytes, back to back (zero-copy over the map)
    pixel_offsets: np.ndarray
    boxes: np.ndarray  # flattened xyxy of every row's faces
    box_offsets: np.ndarray  # row j's floats: box_offsets[j]:box_offsets[j + 1]
    invalid: np.ndarray
    invalid_offsets: np.ndarray

    @classmethod
    def of(cls, batch: pa.RecordBatch) -> _Columns:
        pixels = batch.column("pixels")
        _, offsets, data = pixels.buffers()
        boxes, invalid = batch.column("boxes"), batch.column("invalid")
        return cls(
            relpaths=batch.column("relpath").to_pylist(),
            height=batch.column("height").to_numpy(),
            width=batch.column("width").to_numpy(),
            orig_height=batch.column("orig_height").to_numpy(),
            orig_width=batch.column("orig_width").to_numpy(),
            pixels=np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8),
            pixel_offsets=np.frombuffer(offsets, dtype=np.int64)[pixels.offset : pixels.offset + len(pixels) + 1],
            boxes=boxes.values.to_numpy(zero_copy_only=False),
            box_offsets=boxes.offsets.to_numpy(),
            invalid=invalid.values.to_numpy(zero_copy_only=False),
            invalid_offsets=invalid.offsets.to_numpy(),
        )


def cache_key(annotation_file: Path, records: Sequence[ImageRecord], file_sizes: Sequence[int], max_side: int | None) -> str:
    """Hex digest of everything the cache content depends on."""
    h = hashlib.sha256()
    h.update(json.dumps({"format_version": CACHE_FORMAT_VERSION, "max_side": max_side}).encode())
    h.update(Path(annotation_file).read_bytes())
    for record, size in zip(records, file_sizes, strict=True):
        h.update(f"\n{record.relpath}\t{size}".encode())
    return h.hexdigest()


def _try_open(path: Path, key: str) -> ArrowImageCache | None:
    if not path.exists():
        return None
    try:
        cache = ArrowImageCache(path)
    except (pa.ArrowInvalid, OSError, KeyError) as err:
        logger.warning("unreadable image cache %s (%s): rebuilding", path, err)
        return None
    if cache.key != key or cache.format_version != CACHE_FORMAT_VERSION:
        logger.warning("image cache %s does not match its key: rebuilding", path)
        return None
    return cache


def _build(path: Path, key: str, records: Sequence[ImageRecord], images_dir: Path, max_side: int | None) -> None:
    start = time.perf_counter()
    logger.info("building image cache %s (%d images, max side %s)", path, len(records), max_side)
    schema = _SCHEMA.with_metadata({"key": key, "format_version": str(CACHE_FORMAT_VERSION), "max_side": str(max_side)})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")

    def encode(record: ImageRecord) -> dict[str, Any]:
        return _encode_row(images_dir, record, max_side)

    corrupt = 0
    try:
        # Decoding releases the GIL: threads overlap it, while batches bound the memory in flight.
        with (
            ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool,
            pa.OSFile(str(tmp), "wb") as sink,
            pa.ipc.new_file(sink, schema) as writer,
        ):
            for first in range(0, len(records), _ROWS_PER_BATCH):
                rows = list(pool.map(encode, records[first : first + _ROWS_PER_BATCH]))
                corrupt += sum(row["error"] is not None for row in rows)
                writer.write_batch(pa.RecordBatch.from_pylist(rows, schema=schema))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info(
        "built image cache %s: %d images, %d corrupt skipped, %.1f s",
        path,
        len(records) - corrupt,
        corrupt,
        time.perf_counter() - start,
    )


def _encode_row(images_dir: Path, record: ImageRecord, max_side: int | None) -> dict[str, Any]:
    try:
        image, orig_size = decode_and_fit(images_dir / record.relpath, max_side)
    except RuntimeError as err:
        message = decode_error_message(err)
        logger.warning("corrupt image %s skipped (%s)", images_dir / record.relpath, message)
        return {
            "relpath": record.relpath,
            "height": 0,
            "width": 0,
            "orig_height": 0,
            "orig_width": 0,
            "pixels": b"",
            "boxes": [],
            "invalid": [],
            "error": message,
        }
    height, width = image.shape[-2:]
    boxes = fit_boxes(record.boxes, orig_size, (height, width))
    return {
        "relpath": record.relpath,
        "height": height,
        "width": width,
        "orig_height": orig_size[0],
        "orig_width": orig_size[1],
        "pixels": image.permute(1, 2, 0).contiguous().numpy().tobytes(),
        "boxes": boxes.ravel().tolist(),
        "invalid": record.invalid.tolist(),
        "error": None,
    }
