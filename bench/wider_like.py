"""WIDER-like images for benchmarks of the input pipeline: WIDER FACE's image and face sizes, generated.

The mini set (``model.data.mini``) has 256-480 px images with up to 10 faces: right for CPU
training, wrong for timing a loader, whose cost grows with the pixels decoded, resized and
augmented. This writes a set at WIDER FACE's sizes, from the mini generator's own pieces (its
scikit-image face and non-face patches, photo backgrounds, clutter, occluders, attribute columns,
annotation writer, directory handling), nothing downloaded:

* images: JPEGs 1024 px wide; heights 600-1400 px, three in four 680-800 px (WIDER's 4:3 and 3:2
  landscape photos), one in eight taller (portrait-like, 800-1400 px);
* faces per image: heavy-tailed like WIDER's (mean ~13, median 5): three in five images show a
  few people (1-5 faces, 20-250 px wide), a third a group (6-24 faces, 14-90 px), one in twenty a
  crowd (25-250 faces, 8-32 px); one in a hundred has none. The median face is ~23 px wide;
* per face the WIDER attribute columns (blur, expression, illumination, invalid ~3 %, occlusion,
  pose), drawn as the mini set draws them.

Layout (the official one, what ``model.data.widerface`` reads)::

    <root>/WIDER_{train,val}/images/<event>/<name>.jpg
    <root>/wider_face_split/wider_face_{train,val}_bbx_gt.txt
    <root>/.mini_complete.json     # written last: parameters (generator "wider-like") and a summary

Deterministic: image ``i`` of a split depends only on ``(seed, split, i)``, so the same parameters
give byte-identical files with any number of worker processes. Idempotent like ``ensure_mini``: a
complete set generated with the same parameters is reused; a different or incomplete generated
set at ``root`` is replaced; any other non-empty directory is refused.

Usage::

    python bench/wider_like.py --out data/wider-like --train 400 --val 100
    # then train or benchmark on it with data.source: wider, data.root: data/wider-like
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script (bench/ is not an installed package)
    sys.path.insert(0, str(REPO))
from model.data import mini  # noqa: E402
from model.data.mini import (  # noqa: E402
    EVENTS,
    MARKER_NAME,
    SPLITS,
    SplitSummary,
    _blur_radius,
    _Face,
    _log_uniform,
    _place_widths,
    _random_blur_level,
    _render_patch,
)

__all__ = ["FORMAT_VERSION", "GENERATOR", "WIDTH", "make_wider_like", "sample_layout", "summary"]

GENERATOR = "wider-like"
#: Bumped whenever the output changes, so an older set at ``root`` is regenerated.
FORMAT_VERSION = 1
#: Every WIDER FACE image is (about) this wide.
WIDTH = 1024
MIN_FACE = 6
_JPEG_QUALITY = 90


# --------------------------------------------------------------------------------------------
# Layout: image size and faces (no pixels)
# --------------------------------------------------------------------------------------------


def _height(rng: np.random.Generator) -> int:
    r = rng.random()
    if r < 0.125:
        return int(rng.integers(600, 680))
    if r < 0.875:
        return int(rng.integers(680, 801))
    return int(rng.integers(801, 1401))


def _face_widths(rng: np.random.Generator, max_face: int) -> list[int]:
    """How many faces and how wide: a few people, a group or a crowd (widths sorted, largest first)."""
    r = rng.random()
    if r < 0.01:
        return []
    if r < 0.61:  # a few people, close up
        count, low, high = int(rng.integers(1, 6)), 20, 250
    elif r < 0.95:  # a group
        count, low, high = int(rng.integers(6, 25)), 14, 90
    else:  # a crowd
        count, low, high = _log_uniform(rng, 25, 250), 8, 32
    base = _log_uniform(rng, low, high)  # one scene, one distance: faces of an image are alike
    widths = np.clip(np.round(base * np.exp(rng.normal(0.0, 0.3, count))), MIN_FACE, max_face)
    return sorted((int(w) for w in widths), reverse=True)


def sample_layout(rng: np.random.Generator) -> tuple[int, int, list[_Face]]:
    """``(width, height, faces)`` of one image: faces inside it, overlapping each other by little.

    A face that finds no free spot in 20 tries is dropped (crowds lose a few).
    """
    width, height = WIDTH, _height(rng)
    faces = _place_widths(rng, _face_widths(rng, min(width, height) // 2), width, height, MIN_FACE)
    return width, height, faces


# --------------------------------------------------------------------------------------------
# Pixels
# --------------------------------------------------------------------------------------------


def _render(rng: np.random.Generator, split: str) -> tuple[np.ndarray, list[_Face], int]:
    """One image as the mini set draws one (background, clutter, distractors, faces, occluders,
    sensor noise), at the layout's size. Returns uint8 HxWx3, the faces, the distractor count."""
    assets = mini._load_assets()
    face_pool, nonface_pool = mini._crop_pools(assets, split)
    width, height, faces = sample_layout(rng)
    canvas_img = mini._background(rng, assets, width, height)
    mini._draw_shapes(rng, canvas_img)
    canvas = np.asarray(canvas_img, dtype=np.float32) / 255.0
    max_face = min(width, height) // 2
    n_distractors = int(rng.integers(0, 10))
    for _ in range(n_distractors):  # non-faces treated exactly like faces, drawn first
        gray = nonface_pool[int(rng.integers(len(nonface_pool)))]
        w = _log_uniform(rng, MIN_FACE, max_face // 2)
        h = min(height, round(w * rng.uniform(0.95, 1.35)))
        patch, alpha = _render_patch(rng, gray, w, h, blur_radius=_blur_radius(_random_blur_level(rng, w), w))
        mini._paste(canvas, patch, alpha, int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)))
    for _ in range(int(rng.integers(0, 5))):
        mini._paste_photo_patch(rng, assets, canvas, max_side=max_face)
    for face in faces:
        gray = face_pool[int(rng.integers(len(face_pool)))]
        radius, light = _blur_radius(face.blur, face.w), bool(face.illumination)
        patch, alpha = _render_patch(rng, gray, face.w, face.h, blur_radius=radius, extreme_light=light)
        if face.invalid:
            patch = patch.mean() + 0.35 * (patch - patch.mean())
        mini._paste(canvas, patch, alpha, face.x, face.y)
        if face.occlusion:
            mini._occlude(rng, assets, canvas, face)
    # Sensor noise as the mini set's (std up to 0.025), but uniform from raw bytes: at 1024 px a
    # Gaussian draw would be a third of an image's time.
    noise = np.frombuffer(rng.bytes(canvas.size), dtype=np.uint8).reshape(canvas.shape).astype(np.float32)
    noise -= np.float32(127.5)
    noise *= np.float32(rng.uniform(0.0, 0.025) / 73.9)  # uniform bytes have std 73.9
    canvas += noise
    np.clip(canvas, 0.0, 1.0, out=canvas)
    canvas *= np.float32(255.0)
    canvas += np.float32(0.5)
    image = Image.fromarray(canvas.astype(np.uint8))
    if rng.random() < 0.15:
        image = image.filter(ImageFilter.GaussianBlur(0.6))
    return np.asarray(image), faces, n_distractors


def _image_name(split: str, i: int) -> tuple[int, str]:
    event_index = i % len(EVENTS)
    event = EVENTS[event_index]
    return event_index, f"{event}/{event_index}_{event.split('--')[1]}_wider_like_{split}_{i}.jpg"


def _write_image(job: tuple[Path, int, str, int, int]) -> tuple[int, str, list[_Face], int, int, int]:
    """Render and save image ``i`` of ``split``; returns what the annotation file and summary need."""
    root, seed, split, split_index, i = job
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_index, i)))
    image, faces, n_distractors = _render(rng, split)
    event_index, rel = _image_name(split, i)
    path = root / f"WIDER_{split}" / "images" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=_JPEG_QUALITY)
    return event_index, rel, faces, n_distractors, image.shape[0], path.stat().st_size


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------


def _params(seed: int, num_train: int, num_val: int) -> dict[str, Any]:
    # mini's checks (counts >= 1, seed >= 0); its format version replaced by ours and the generator.
    checked = mini._params(seed, num_train, num_val)
    return {**checked, "format_version": FORMAT_VERSION, "generator": GENERATOR}


def _pool(workers: int) -> ProcessPoolExecutor | None:
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return None
    # Forked workers inherit the loaded patches and photos; they only run NumPy and PIL.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))


def _generate(root: Path, params: dict[str, Any], workers: int) -> dict[str, Any]:
    mini._load_assets()  # once, before any fork
    (root / "wider_face_split").mkdir(parents=True)
    pool = _pool(workers)
    summaries: dict[str, Any] = {}
    try:
        for split_index, split in enumerate(SPLITS):
            jobs = [(root, params["seed"], split, split_index, i) for i in range(params[f"num_{split}"])]
            results = list(pool.map(_write_image, jobs, chunksize=4) if pool else map(_write_image, jobs))
            mini._write_annotations(root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt", [r[:3] for r in results])
            faces = [f for r in results for f in r[2]]
            per_image = [len(r[2]) for r in results]
            counts = SplitSummary(
                images=len(results),
                faces=len(faces),
                zero_face_images=sum(n == 0 for n in per_image),
                invalid_faces=sum(f.invalid for f in faces),
                distractors=sum(r[3] for r in results),
                size_histogram=mini._size_histogram([f.h for f in faces]),
            )
            summaries[split] = {
                **asdict(counts),
                "median_face_width": float(np.median([f.w for f in faces])) if faces else 0.0,
                "max_faces_per_image": max(per_image),
                "heights": [int(np.min([r[4] for r in results])), int(np.max([r[4] for r in results]))],
                "median_height": float(np.median([r[4] for r in results])),
                "mean_jpeg_kib": round(float(np.mean([r[5] for r in results])) / 1024, 1),
            }
    finally:
        if pool is not None:
            pool.shutdown()
    marker = {"params": params, "summary": summaries}
    (root / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return marker


def _make_locked(out: Path, params: dict[str, Any], workers: int) -> None:
    """mini's ``_make_locked`` with this generator: staged, then renamed into place."""
    mini._check_replaceable(out)
    for pattern in (f".{out.name}.staging-*", f".{out.name}.old-*"):
        for orphan in out.parent.glob(pattern):
            shutil.rmtree(orphan, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    staging.chmod(0o755)
    try:
        _generate(staging, params, workers)
        mini._install(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def make_wider_like(
    root: Path | str,
    num_train: int = 400,
    num_val: int = 100,
    seed: int = 0,
    *,
    workers: int | None = None,
    force: bool = False,
) -> Path:
    """Make sure a complete WIDER-like set with these parameters exists at ``root``.

    Args:
        root: dataset root.
        num_train, num_val: images per split (>= 1).
        seed: generation seed (>= 0); the same seed gives byte-identical files.
        workers: processes rendering images (default: the CPU count, at most 4); 1 renders in
            this process. The files do not depend on it.
        force: regenerate even when a complete set with these parameters is there.

    Returns:
        ``root`` as a ``Path``.

    Raises:
        ValueError: a count below 1 or a negative seed.
        FileExistsError: ``root`` is a non-empty directory that is not a generated set.
    """
    root = Path(root)
    params = _params(seed, num_train, num_val)
    workers = min(os.cpu_count() or 1, 4) if workers is None else int(workers)
    if not force and mini._is_complete(root, params):
        return root
    with mini._lock(root):
        if force or not mini._is_complete(root, params):  # another process may have made it meanwhile
            _make_locked(root, params, workers)
    return root


def summary(root: Path | str) -> dict[str, Any]:
    """The marker of the set at ``root``: ``{"params": ..., "summary": {split: counts and sizes}}``."""
    return json.loads((Path(root) / MARKER_NAME).read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/wider-like"), help="dataset root (default: %(default)s)")
    parser.add_argument("--train", type=int, default=400, help="training images (default: %(default)s)")
    parser.add_argument("--val", type=int, default=100, help="validation images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="rendering processes (default: CPUs, at most 4)")
    parser.add_argument("--force", action="store_true", help="regenerate even if a complete set is there")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        make_wider_like(args.out, args.train, args.val, args.seed, workers=args.workers, force=args.force)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    elapsed = time.perf_counter() - start
    info = summary(args.out)
    print(f"WIDER-like set at {args.out} (seed {args.seed}, {elapsed:.1f} s)")
    for split in SPLITS:
        s = info["summary"][split]
        print(
            f"  {split}: {s['images']} images 1024 x {s['heights'][0]}-{s['heights'][1]} px "
            f"(median height {s['median_height']:.0f}), {s['faces']} faces ({s['faces'] / s['images']:.1f} per image, "
            f"max {s['max_faces_per_image']}, median width {s['median_face_width']:.0f} px), "
            f"{s['mean_jpeg_kib']} KiB per JPEG"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
