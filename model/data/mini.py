"""A small generated face dataset in the official WIDER FACE layout and annotation format.

Real 25x25 face crops from scikit-image's LFW subset are pasted onto random crops of real
photographs shipped with scikit-image, together with real non-face crops from the same subset
treated exactly like the faces (same skin tint, same soft elliptical mask), skin-coloured blobs
and photo patches as distractors. A detector therefore has to learn facial structure, not
"tinted pasted ellipse". Faces range from 8 px to half the image, some are blurred, badly lit or
occluded (the attribute columns say so), about 3 % are marked invalid (ignore regions), about
5 % of the images have no face. Train and validation images use disjoint face crops.

Layout written under ``out`` (what ``model.data.widerface`` reads)::

    WIDER_{train,val}/images/<event>/<name>.jpg
    wider_face_split/wider_face_{train,val}_bbx_gt.txt
    wider_face_split/wider_face_val.mat, wider_{easy,medium,hard}_val.mat   # official-format val GT
    .mini_complete.json        # written last: generation parameters, format version, summary

Generation is deterministic: the same parameters give byte-identical files. Image ``i`` of a split
depends only on ``(seed, split, i)``, so a larger set extends a smaller one.

The ``.mat`` files are the official evaluation ground truth's cell layout (``event_list``,
``file_list``, ``face_bbx_list``, the six ``*_label_list`` and, per setting, ``gt_list``: 1-based
indices of the faces that count), so ``python -m model.widerface_eval --gt <root>/wider_face_split``
runs on the mini set as on the real one. They are derived from the val annotation file by
:func:`write_ground_truth`; :func:`ensure_mini` writes them into a set generated before they existed.

Which setting a face counts in (:func:`face_settings`). The official rule is not published; the
WIDER FACE paper only says the settings go from large, clear faces (easy) to everything,
including small, heavily occluded and blurred faces (hard), each containing the one before. Measured
on the official val ground truth (39,708 faces): an invalid face counts in no setting, and a valid
face counts in easy, medium, hard when its height exceeds 50, 30, 10 pixels. That rule never
takes a face the official files leave out; the files hold 84 / 236 / 810 faces more (of 7,211 /
13,319 / 31,958), all but 4 / 11 / 3 of them of exactly the threshold height, which the files
include in part. Blur, occlusion, pose and illumination play no part: every valid face taller than
50 pixels, however blurred or occluded, is easy (blurred and occluded faces are mostly small,
hence the paper's wording). The mini set applies this measured rule, so its settings mean what
the official ones do (``tests/test_predict.py`` checks the figures against the official files).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter


#: Bumped whenever the generator's output changes, so ``ensure_mini`` regenerates old sets.
FORMAT_VERSION = 1
#: Written last into a finished set; its presence (with matching parameters) means "complete".
MARKER_NAME = ".mini_complete.json"
SPLITS = ("train", "val")
#: A handful of the official event folders.
EVENTS = (
    "0--Parade",
    "1--Handshaking",
    "2--Demonstration",
    "3--Riot",
    "4--Dancing",
    "5--Car_Accident",
    "6--Funeral",
    "7--Cheering",
)
#: Face-height histogram bins (pixels, lower edges) used in the summary.
SIZE_BINS = (0, 8, 16, 32, 64, 128)
#: A valid face counts in a setting when its height exceeds this (pixels); see the module docstring.
SETTING_MIN_HEIGHT = {"easy": 50, "medium": 30, "hard": 10}
#: The official-format val ground truth, in ``wider_face_split`` (``model.widerface_eval`` reads it).
GROUND_TRUTH_FILES = ("wider_face_val.mat", *(f"wider_{s}_val.mat" for s in SETTING_MIN_HEIGHT))
_LABEL_LISTS = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")  # annotation columns 4..9
# The MAT header's 116-byte text holds a creation time; a fixed one keeps generation byte-identical.
_MAT_DESCRIPTION = b"MATLAB 5.0 MAT-file, written by model.data.mini (WIDER FACE mini set ground truth)"

_MIN_SIDE, _MAX_SIDE = 256, 480
_MIN_FACE = 8
_MAX_FACES = 10
_JPEG_QUALITY = 90

# Photographs from skimage.data that load offline and contain no human face (astronaut and
# camera do: they would be unlabelled faces). The coins show small relief profiles, not faces.
_BACKGROUNDS = (
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "brick",
    "grass",
    "gravel",
    "coins",
    "moon",
    "stereo_motorcycle",
    "clock",
    "text",
    "page",
    "cell",
    "retina",
)
# lfw_subset "non-faces" that nevertheless show a face (125) or an eye or mouth: excluded so that
# no distractor is an unlabelled face.
_NONFACE_WITH_FACE_PARTS = frozenset({114, 124, 125, 126, 130, 180})
# Skin tones (sRGB) from light to dark; they set hue and overall darkness of a tinted patch.
_SKIN_TONES = (
    np.array(
        [
            [255, 224, 196],
            [241, 194, 150],
            [234, 192, 134],
            [224, 172, 105],
            [198, 134, 66],
            [161, 102, 64],
            [141, 85, 36],
            [92, 56, 37],
        ],
        dtype=np.float32,
    )
    / 255.0
)


@dataclass(frozen=True)
class SplitSummary:
    """Counts for one split of a generated set."""

    images: int = 0
    faces: int = 0
    zero_face_images: int = 0
    invalid_faces: int = 0
    distractors: int = 0
    #: Face heights per bin of ``SIZE_BINS``, keyed ``"8-15"``, ..., ``"128+"``.
    size_histogram: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class MiniSummary:
    """What ``make_mini`` wrote."""

    root: Path
    seed: int
    train: SplitSummary
    val: SplitSummary
    seconds: float

    def format(self) -> str:
        """A short human-readable report."""
        lines = [f"mini WIDER FACE at {self.root} (seed {self.seed}, {self.seconds:.1f} s)"]
        for name in SPLITS:
            s: SplitSummary = getattr(self, name)
            hist = ", ".join(f"{k}: {v}" for k, v in s.size_histogram.items())
            lines.append(
                f"  {name}: {s.images} images, {s.faces} faces ({s.invalid_faces} invalid), "
                f"{s.zero_face_images} without faces, {s.distractors} non-face distractors"
            )
            lines.append(f"    face heights (px): {hist}")
        return "\n".join(lines)


@dataclass
class _Face:
    """One annotated face: box in pixels and the WIDER attribute columns."""

    x: int
    y: int
    w: int
    h: int
    blur: int
    expression: int
    illumination: int
    invalid: int
    occlusion: int
    pose: int

    def line(self) -> str:
        return (
            f"{self.x} {self.y} {self.w} {self.h} {self.blur} {self.expression} "
            f"{self.illumination} {self.invalid} {self.occlusion} {self.pose}"
        )


@dataclass(frozen=True)
class _Assets:
    faces: np.ndarray  # (100, 25, 25) float32 in [0, 1]
    nonfaces: tuple[np.ndarray, ...]  # crops with the black out-of-image padding removed
    backgrounds: tuple[Image.Image, ...]  # RGB photographs


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def make_mini(out: Path | str, *, seed: int = 0, num_train: int = 400, num_val: int = 100) -> MiniSummary:
    """Generate the mini set at ``out``, replacing a previously generated set there.

    The set is written into a hidden sibling directory and renamed into place once complete, so
    an interrupted run never leaves a partial set at ``out``.

    Args:
        out: Dataset root to create.
        seed: Generation seed; the same seed gives byte-identical files.
        num_train: Number of training images (>= 1).
        num_val: Number of validation images (>= 1).

    Raises:
        ValueError: A count below 1 or a negative seed.
        FileExistsError: ``out`` is a non-empty directory that is not a generated mini set.
    """
    out = Path(out)
    params = _params(seed, num_train, num_val)
    with _lock(out):
        return _make_locked(out, params)


def ensure_mini(out: Path | str, *, seed: int = 0, num_train: int = 400, num_val: int = 100) -> Path:
    """Make sure a complete mini set generated with these parameters exists at ``out``.

    Does nothing when ``out`` holds a complete set with the same parameters and format version;
    (re)generates it when ``out`` is missing, empty, incomplete or was generated differently. A
    complete set without the ``.mat`` val ground truth (generated before it existed) gets it
    written from its annotation file, nothing else touched.
    Concurrent callers (e.g. several trials on one node) wait for the first one's set.

    Args:
        out: Dataset root.
        seed, num_train, num_val: As for :func:`make_mini`.

    Returns:
        ``out`` as a ``Path``.

    Raises:
        FileExistsError: ``out`` is a non-empty directory that is not a generated mini set.
    """
    out = Path(out)
    params = _params(seed, num_train, num_val)
    if _is_complete(out, params) and _has_ground_truth(out):
        return out
    with _lock(out):
        if not _is_complete(out, params):  # another process may have finished it meanwhile
            _make_locked(out, params)
        elif not _has_ground_truth(out):  # a set generated before the .mat ground truth existed
            write_ground_truth(out)
    return out


def generated_params(out: Path | str) -> dict[str, int]:
    """``seed``/``num_train``/``num_val`` of the mini set at ``out``, or ``{}`` if there is none.

    Lets a caller that only needs *a* mini set (``ensure_mini(out, **generated_params(out))``)
    reuse one generated with other sizes instead of regenerating it with the defaults.
    """
    marker = _read_marker(Path(out))
    params = marker.get("params") if isinstance(marker, dict) else None
    if not isinstance(params, dict):
        return {}
    return {k: params[k] for k in ("seed", "num_train", "num_val") if isinstance(params.get(k), int)}


# --------------------------------------------------------------------------------------------
# Directory handling
# --------------------------------------------------------------------------------------------


def _params(seed: int, num_train: int, num_val: int) -> dict[str, int]:
    for name, value in (("num_train", num_train), ("num_val", num_val)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return {"format_version": FORMAT_VERSION, "seed": int(seed), "num_train": int(num_train), "num_val": int(num_val)}


def _read_marker(out: Path) -> object:
    try:
        return json.loads((out / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(out: Path, params: dict[str, int]) -> bool:
    marker = _read_marker(out)
    if not isinstance(marker, dict) or marker.get("params") != params:
        return False
    # Cheap guard against files deleted after generation.
    for split in SPLITS:
        if not (out / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt").is_file():
            return False
        on_disk = sum(1 for _ in (out / f"WIDER_{split}" / "images").glob("*/*.jpg"))
        if on_disk != params[f"num_{split}"]:
            return False
    return True


def _check_replaceable(out: Path) -> None:
    """Refuse to replace anything but a generated set or an empty directory."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; choose another output path")
    if (out / MARKER_NAME).is_file() or not any(out.iterdir()):
        return
    raise FileExistsError(
        f"{out} is a non-empty directory without {MARKER_NAME}, so it is not a generated mini set; "
        "refusing to overwrite it (remove it or choose another output path)"
    )


def _make_locked(out: Path, params: dict[str, int]) -> MiniSummary:
    _check_replaceable(out)
    # Leftovers of a killed generation; holding the lock, nobody else is writing them.
    for pattern in (f".{out.name}.staging-*", f".{out.name}.old-*"):
        for orphan in out.parent.glob(pattern):
            shutil.rmtree(orphan, ignore_errors=True)
    start = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the dataset should not be
    try:
        splits = _generate(staging, params)
        _install(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return MiniSummary(out, params["seed"], splits["train"], splits["val"], time.perf_counter() - start)


def _install(staging: Path, out: Path) -> None:
    """Move a finished set into place, replacing an existing generated set."""
    if not out.exists():
        os.rename(staging, out)
        return
    _check_replaceable(out)
    retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent)) / out.name
    os.rename(out, retired)
    os.rename(staging, out)
    shutil.rmtree(retired.parent, ignore_errors=True)


def _lock(out: Path) -> FileLock:
    """Serialise generation of one dataset root across processes."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # A sibling file, not inside ``out``: ``out`` itself is replaced while the lock is held.
    return FileLock(out.parent / f".{out.name}.lock")


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def _generate(root: Path, params: dict[str, int]) -> dict[str, SplitSummary]:
    assets = _load_assets()
    (root / "wider_face_split").mkdir(parents=True)
    summaries: dict[str, SplitSummary] = {}
    for split_index, split in enumerate(SPLITS):
        face_pool, nonface_pool = _crop_pools(assets, split)
        count = params[f"num_{split}"]
        entries: list[tuple[int, str, list[_Face]]] = []  # (event index, path, faces)
        heights: list[int] = []
        zero = invalid = distractors = 0
        for i in range(count):
            event_index = i % len(EVENTS)
            event = EVENTS[event_index]
            name = f"{event_index}_{event.split('--')[1]}_mini_{split}_{i}.jpg"
            # One stream per image: image i is independent of how many images are generated.
            rng = np.random.default_rng(np.random.SeedSequence(params["seed"], spawn_key=(split_index, i)))
            image, faces, n_distractors = _render_image(rng, assets, face_pool, nonface_pool)
            folder = root / f"WIDER_{split}" / "images" / event
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / name, format="JPEG", quality=_JPEG_QUALITY)
            entries.append((event_index, f"{event}/{name}", faces))
            heights.extend(f.h for f in faces)
            zero += not faces
            invalid += sum(f.invalid for f in faces)
            distractors += n_distractors
        _write_annotations(root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt", entries)
        if split == "val":
            write_ground_truth(root)
        summaries[split] = SplitSummary(
            images=count,
            faces=len(heights),
            zero_face_images=zero,
            invalid_faces=invalid,
            distractors=distractors,
            size_histogram=_size_histogram(heights),
        )
    marker = {"params": params, "summary": {k: asdict(v) for k, v in summaries.items()}}
    (root / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return summaries


def _write_annotations(path: Path, entries: list[tuple[int, str, list[_Face]]]) -> None:
    lines: list[str] = []
    # Grouped by event folder as in the official files (a stable sort keeps index order within).
    for _, rel, faces in sorted(entries, key=lambda entry: entry[0]):
        lines.append(rel)
        lines.append(str(len(faces)))
        if faces:
            lines.extend(f.line() for f in faces)
        else:  # the official files give a zero-face image one dummy all-zero box line
            lines.append("0 0 0 0 0 0 0 0 0 0")
    path.write_text("\n".join(lines) + "\n")


def face_settings(heights: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    """(M, 3) bool: whether each face counts in easy, medium, hard (the rule in the module docstring).

    Args:
        heights: (M,) face heights in pixels.
        invalid: (M,) the annotation's ``invalid`` flag; an invalid face counts nowhere.
    """
    heights = np.asarray(heights, dtype=np.float64).reshape(-1)
    valid: np.ndarray[tuple[int], np.dtype[np.bool_]] = np.asarray(invalid).reshape(-1) == 0
    limits = np.array(list(SETTING_MIN_HEIGHT.values()), dtype=np.float64)
    return valid[:, None] & (heights[:, None] > limits[None, :])


def write_ground_truth(root: Path | str) -> list[Path]:
    """Write the val split's official-format ``.mat`` ground truth into ``<root>/wider_face_split``.

    Read from ``wider_face_val_bbx_gt.txt`` (so the files always agree with it), events in the
    official order and images in annotation order. As in the official files, a zero-face image
    keeps one all-zero box that counts in no setting, boxes are int32 ``x y w h``, labels uint8
    ``(M, 1)``, ``gt_list`` entries uint16 ``(K, 1)``. Each file is written to a temporary name
    and renamed into place, so readers never see a partial file.

    Returns:
        The four written paths, :data:`GROUND_TRUTH_FILES` order.
    """
    from scipy.io import savemat  # only needed here; keeps importing this module light

    split_dir = Path(root) / "wider_face_split"
    records = _read_annotations(split_dir / "wider_face_val_bbx_gt.txt")
    events = sorted({rel.split("/")[0] for rel, _ in records}, key=lambda e: (int(e.split("--")[0]), e))
    per_event: dict[str, list[tuple[str, np.ndarray]]] = {event: [] for event in events}
    for rel, rows in records:
        event, name = rel.split("/")
        per_event[event].append((name.removesuffix(".jpg"), rows))

    def cells(values: Sequence[object]) -> np.ndarray:  # a MATLAB cell column: (N, 1) object array
        column = np.empty((len(values), 1), dtype=object)
        for i, value in enumerate(values):
            column[i, 0] = value
        return column

    common: dict[str, np.ndarray] = {"event_list": cells(events)}
    common["file_list"] = cells([cells([name for name, _ in per_event[e]]) for e in events])
    common["face_bbx_list"] = cells([cells([rows[:, :4].astype(np.int32) for _, rows in per_event[e]]) for e in events])
    for column, label in enumerate(_LABEL_LISTS, start=4):
        common[f"{label}_label_list"] = cells(
            [cells([rows[:, column : column + 1].astype(np.uint8) for _, rows in per_event[e]]) for e in events]
        )
    contents = {GROUND_TRUTH_FILES[0]: common}
    for k, setting in enumerate(SETTING_MIN_HEIGHT):
        gt_list = []
        for event in events:
            kept = [face_settings(rows[:, 3], rows[:, 7])[:, k] for _, rows in per_event[event]]
            gt_list.append(cells([(np.flatnonzero(keep) + 1).astype(np.uint16).reshape(-1, 1) for keep in kept]))
        contents[f"wider_{setting}_val.mat"] = {**common, "gt_list": cells(gt_list)}

    written = []
    for name in GROUND_TRUTH_FILES:
        buffer = io.BytesIO()
        savemat(buffer, contents[name], do_compression=False, oned_as="column")
        data = bytearray(buffer.getvalue())
        data[:116] = _MAT_DESCRIPTION.ljust(116)  # the header's text field, see _MAT_DESCRIPTION
        path = split_dir / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_bytes(bytes(data))
        os.replace(tmp, path)
        written.append(path)
    return written


def _has_ground_truth(out: Path) -> bool:
    return all((out / "wider_face_split" / name).is_file() for name in GROUND_TRUTH_FILES)


def _read_annotations(path: Path) -> list[tuple[str, np.ndarray]]:
    """Read back an annotation file :func:`_write_annotations` wrote: ``(relpath, (M, 10) int64)``.

    Not ``model.data.widerface.parse_annotations``: that module imports torch, which generating
    the mini set (``python -m model.data make-mini``) does not need. A zero-face image gets the
    official dummy box (one row of zeros), as in the official ``.mat`` files.
    """
    lines = path.read_text().splitlines()
    records: list[tuple[str, np.ndarray]] = []
    i = 0
    while i < len(lines):
        rel, count = lines[i], int(lines[i + 1])
        rows = lines[i + 2 : i + 2 + max(count, 1)]  # a zero-face image carries one dummy line
        records.append((rel, np.array([line.split() for line in rows], dtype=np.int64).reshape(-1, 10)))
        i += 2 + max(count, 1)
    return records


def _size_histogram(heights: list[int]) -> dict[str, int]:
    edges = np.array(SIZE_BINS[1:])
    bins = np.searchsorted(edges, np.asarray(heights, dtype=np.int64), side="right")
    counts = np.bincount(bins, minlength=len(SIZE_BINS))
    labels = [f"<{SIZE_BINS[1]}"] + [f"{lo}-{hi - 1}" for lo, hi in zip(SIZE_BINS[1:-1], SIZE_BINS[2:])]
    labels.append(f"{SIZE_BINS[-1]}+")
    return dict(zip(labels, (int(c) for c in counts)))


@lru_cache(maxsize=1)
def _load_assets() -> _Assets:
    from skimage import data  # heavy import, only needed when generating

    # skimage's stubs leave data.lfw_subset unannotated.
    lfw = data.lfw_subset().astype(np.float32)  # type: ignore[no-untyped-call]  # first 100 faces, last 100 non-faces
    nonfaces = []
    for index in range(100, 200):
        if index in _NONFACE_WITH_FACE_PARTS:
            continue
        crop = _strip_padding(lfw[index])
        if crop is not None:
            nonfaces.append(crop)
    backgrounds = []
    for name in _BACKGROUNDS:
        photo = getattr(data, name)()
        if isinstance(photo, tuple):  # stereo_motorcycle: (left, right, disparity)
            photo = photo[0]
        backgrounds.append(Image.fromarray(np.asarray(photo, dtype=np.uint8)).convert("RGB"))
    return _Assets(faces=lfw[:100], nonfaces=tuple(nonfaces), backgrounds=tuple(backgrounds))


def _strip_padding(crop: np.ndarray, min_side: int = 10) -> np.ndarray | None:
    """Cut away the black out-of-image border many LFW non-face crops have (a trivial cue)."""
    rows = np.flatnonzero((crop > 0.02).mean(axis=1) > 0.5)
    cols = np.flatnonzero((crop > 0.02).mean(axis=0) > 0.5)
    if len(rows) < min_side or len(cols) < min_side:
        return None
    return crop[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _crop_pools(assets: _Assets, split: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Disjoint crops per split (every fifth one is validation) for an honest generalisation test."""
    val = split == "val"
    faces = [f for i, f in enumerate(assets.faces) if (i % 5 == 4) == val]
    nonfaces = [f for i, f in enumerate(assets.nonfaces) if (i % 5 == 4) == val]
    return faces, nonfaces


def _render_image(
    rng: np.random.Generator, assets: _Assets, face_pool: list[np.ndarray], nonface_pool: list[np.ndarray]
) -> tuple[np.ndarray, list[_Face], int]:
    """One image: background, clutter, faces, occluders, sensor noise. Returns uint8 HxWx3."""
    width, height = (int(v) for v in rng.integers(_MIN_SIDE, _MAX_SIDE + 1, size=2))
    canvas_img = _background(rng, assets, width, height)
    _draw_shapes(rng, canvas_img)
    canvas = np.asarray(canvas_img, dtype=np.float32) / 255.0
    max_face = min(width, height) // 2

    # Distractors first, so faces are never hidden under them.
    n_distractors = int(rng.integers(0, 7))
    for _ in range(n_distractors):
        gray = nonface_pool[int(rng.integers(len(nonface_pool)))]
        w = _log_uniform(rng, _MIN_FACE, max_face)
        h = min(height, round(w * rng.uniform(0.95, 1.35)))
        # Same blur distribution as the faces, so blur says nothing about the class.
        patch, alpha = _render_patch(rng, gray, w, h, blur_radius=_blur_radius(_random_blur_level(rng, w), w))
        _paste(canvas, patch, alpha, int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)))
    for _ in range(int(rng.integers(0, 4))):
        _paste_photo_patch(rng, assets, canvas, max_side=max_face)

    faces = _place_faces(rng, width, height, max_face)
    for face in faces:
        gray = face_pool[int(rng.integers(len(face_pool)))]
        radius, light = _blur_radius(face.blur, face.w), bool(face.illumination)
        patch, alpha = _render_patch(rng, gray, face.w, face.h, blur_radius=radius, extreme_light=light)
        if face.invalid:  # ignore regions: faces too washed out to be sure of
            patch = patch.mean() + 0.35 * (patch - patch.mean())
        _paste(canvas, patch, alpha, face.x, face.y)
        if face.occlusion:
            _occlude(rng, assets, canvas, face)

    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(rng.uniform(0.0, 0.025))
    image = Image.fromarray((np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    if rng.random() < 0.15:  # a slightly soft camera
        image = image.filter(ImageFilter.GaussianBlur(0.6))
    return np.asarray(image), faces, n_distractors


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> int:
    return int(round(float(np.exp(rng.uniform(np.log(low), np.log(max(high, low)))))))


def _random_blur_level(rng: np.random.Generator, size: int) -> int:
    """WIDER blur level; small faces are blurred more often, as in WIDER."""
    return int(rng.choice(3, p=(0.2, 0.4, 0.4) if size < 16 else (0.55, 0.3, 0.15)))


def _blur_radius(level: int, size: int) -> float:
    """Gaussian radius in output pixels for a WIDER blur level (0 clear, 1 normal, 2 heavy).

    Proportional to the upscaling from the 25 px source crop (0.5 and 1.1 source pixels) so a
    heavily blurred large face is as blurred as a small one, still recognisable, not a plain blob.
    """
    return (0.0, 0.3 + 0.5 * size / 25.0, 0.6 + 1.1 * size / 25.0)[level]


def _place_faces(rng: np.random.Generator, width: int, height: int, max_face: int) -> list[_Face]:
    """Face boxes inside the image, sizes log-uniform, overlapping each other by little."""
    if rng.random() < 0.05:
        return []
    wanted = int(rng.integers(1, _MAX_FACES + 1))
    # Large faces first: they are the hardest to fit between the others.
    widths = sorted((_log_uniform(rng, _MIN_FACE, max_face) for _ in range(wanted)), reverse=True)
    return _place_widths(rng, widths, width, height, _MIN_FACE)


def _place_widths(rng: np.random.Generator, widths: Iterable[int], width: int, height: int, min_face: int) -> list[_Face]:
    """Faces of these widths (in order) inside the image, overlapping each other by little; a face
    that finds no free spot in 20 tries is dropped. Attribute columns drawn for each."""
    boxes = np.zeros((0, 4), dtype=np.float64)  # xyxy of faces placed so far
    faces: list[_Face] = []
    for w in widths:
        pose = int(rng.random() < 0.1)
        if pose:  # atypical pose: a turned head looks narrower
            w = max(min_face, round(w * rng.uniform(0.65, 0.8)))
        h = min(height, round(w * rng.uniform(1.05, 1.3)))
        for _ in range(20):
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            if _max_overlap(boxes, np.array([x, y, x + w, y + h], dtype=np.float64)) <= 0.1:
                break
        else:
            continue  # no room left for a face of this size
        boxes = np.vstack([boxes, [x, y, x + w, y + h]])
        faces.append(_face_with_attributes(rng, x, y, w, h, pose))
    return faces


def _face_with_attributes(rng: np.random.Generator, x: int, y: int, w: int, h: int, pose: int) -> _Face:
    """A placed face with WIDER's attribute columns drawn at the official set's rough rates."""
    return _Face(
        x=x,
        y=y,
        w=w,
        h=h,
        blur=_random_blur_level(rng, w),
        expression=int(rng.random() < 0.1),
        illumination=int(rng.random() < 0.12),
        invalid=int(rng.random() < 0.03),
        occlusion=int(rng.choice(3, p=(0.75, 0.17, 0.08))),
        pose=pose,
    )


def _max_overlap(boxes: np.ndarray, box: np.ndarray) -> float:
    """Largest intersection with ``box``, as a fraction of the smaller of the two boxes."""
    if len(boxes) == 0:
        return 0.0
    iw = np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
    ih = np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    smaller = np.minimum(areas, (box[2] - box[0]) * (box[3] - box[1]))
    return float((iw * ih / smaller).max())


def _background(rng: np.random.Generator, assets: _Assets, width: int, height: int) -> Image.Image:
    """A random crop of a photograph, colour-shifted, sometimes with a second photo as a panel."""
    canvas = _photo_crop(rng, assets, width, height, min_scale=0.35)
    if rng.random() < 0.5:
        pw, ph = int(rng.integers(width // 4, width)), int(rng.integers(height // 4, height))
        panel = _photo_crop(rng, assets, pw, ph, min_scale=0.2)
        canvas.paste(panel, (int(rng.integers(0, width - pw + 1)), int(rng.integers(0, height - ph + 1))))
    return canvas


def _photo_crop(rng: np.random.Generator, assets: _Assets, width: int, height: int, min_scale: float) -> Image.Image:
    photo = assets.backgrounds[int(rng.integers(len(assets.backgrounds)))]
    aspect = width / height
    full_w = min(photo.width, photo.height * aspect)
    scale = rng.uniform(min_scale, 1.0)
    cw, ch = full_w * scale, full_w * scale / aspect
    x0, y0 = rng.uniform(0, photo.width - cw), rng.uniform(0, photo.height - ch)
    crop = photo.resize((width, height), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.2:
        crop = crop.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if rng.random() < 0.3:  # towards grey
        crop = ImageEnhance.Color(crop).enhance(rng.uniform(0.0, 0.7))
    # Gamma and per-channel gain as one lookup table: far cheaper than float maths per pixel.
    levels = np.linspace(0.0, 1.0, 256)
    lut = np.clip(levels[None, :] ** rng.uniform(0.7, 1.4) * rng.uniform(0.75, 1.25, size=(3, 1)), 0.0, 1.0)
    return crop.point((lut * 255.0 + 0.5).astype(np.uint8).ravel().tolist())


def _draw_shapes(rng: np.random.Generator, image: Image.Image) -> None:
    """Flat clutter: ellipses (half of them skin-coloured, face-sized blobs), boxes and lines."""
    draw = ImageDraw.Draw(image)
    max_side = min(image.size) // 2
    for _ in range(int(rng.integers(0, 6))):
        kind = rng.random()
        w = _log_uniform(rng, _MIN_FACE, max_side)
        h = round(w * rng.uniform(0.6, 1.6))
        x, y = int(rng.integers(-w // 4, image.width - w // 2)), int(rng.integers(-h // 4, image.height - h // 2))
        if kind < 0.5:
            colour = _SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))] * rng.uniform(0.6, 1.1)
        else:
            colour = rng.uniform(0.0, 1.0, size=3)
        fill = tuple(int(c) for c in np.clip(colour * 255.0, 0, 255))
        if kind < 0.7:
            draw.ellipse((x, y, x + w, y + h), fill=fill)
        elif kind < 0.9:
            draw.rectangle((x, y, x + w, y + h), fill=fill)
        else:
            draw.line((x, y, x + w, y + h), fill=fill, width=int(rng.integers(1, 6)))


def _render_patch(
    rng: np.random.Generator,
    gray: np.ndarray,
    w: int,
    h: int,
    *,
    blur_radius: float,
    extreme_light: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Resize a grey crop to ``w`` x ``h``, jitter its exposure, tint it; return RGB and alpha.

    Faces and non-face distractors both come through here, so neither tint, mask, blur nor
    exposure tells them apart.
    """
    image = Image.fromarray((gray * 255.0 + 0.5).astype(np.uint8))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = image.resize((w, h), Image.Resampling.LANCZOS)
    if blur_radius > 0:
        image = image.filter(ImageFilter.GaussianBlur(blur_radius))
    g = np.asarray(image, dtype=np.float32) / 255.0
    mean = float(g.mean())
    g = (g - mean) * rng.uniform(0.6, 1.3) + mean + rng.uniform(-0.12, 0.12)
    g = np.clip(g, 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    if rng.random() < 0.9:
        tone = _SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))]
        hue = tone / tone.mean()
        saturation = rng.uniform(0.5, 1.0)
        darkness = np.clip(tone.mean() / 0.65, 0.55, 1.15)  # darker skin tones darken the patch
        rgb = g[..., None] * (1.0 - saturation + saturation * hue) * darkness
    else:  # a black-and-white photo
        rgb = np.repeat(g[..., None], 3, axis=2)
    if extreme_light:  # under- or overexposed, compressing contrast rather than clipping it away
        k = rng.uniform(0.3, 0.5)
        rgb = rgb * k if rng.random() < 0.5 else 1.0 - (1.0 - rgb) * k
    return np.clip(rgb, 0.0, 1.0).astype(np.float32), _soft_ellipse(w, h)


@lru_cache(maxsize=4096)
def _soft_ellipse(w: int, h: int) -> np.ndarray:
    """An alpha mask: opaque inside the inscribed ellipse, fading out at its rim and corners."""
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h * 2.0 - 1.0
    xs = (np.arange(w, dtype=np.float32) + 0.5) / w * 2.0 - 1.0
    radius = np.sqrt(xs[None, :] ** 2 + ys[:, None] ** 2)
    alpha = np.clip((1.1 - radius) / 0.25, 0.0, 1.0)
    alpha.setflags(write=False)
    return alpha


def _paste(canvas: np.ndarray, patch: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    """Alpha-blend ``patch`` into ``canvas`` in place at top-left ``(x, y)``, clipped to the canvas."""
    h, w = alpha.shape
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, canvas.shape[1]), min(y + h, canvas.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    sub_alpha = alpha[y0 - y : y1 - y, x0 - x : x1 - x, None]
    region = canvas[y0:y1, x0:x1]
    region += sub_alpha * (patch[y0 - y : y1 - y, x0 - x : x1 - x] - region)


def _paste_photo_patch(rng: np.random.Generator, assets: _Assets, canvas: np.ndarray, max_side: int) -> None:
    w = _log_uniform(rng, 12, max_side)
    h = round(w * rng.uniform(0.6, 1.6))
    patch = np.asarray(_photo_crop(rng, assets, w, h, min_scale=0.05), dtype=np.float32) / 255.0
    alpha = _soft_ellipse(w, h) if rng.random() < 0.5 else np.ones((h, w), dtype=np.float32)
    height, width = canvas.shape[:2]
    # May stick out of the image by a quarter: clutter, unlike faces, is cut by the border.
    x, y = int(rng.integers(-w // 4, width - w // 2)), int(rng.integers(-h // 4, height - h // 2))
    _paste(canvas, patch, alpha, x, y)


def _occlude(rng: np.random.Generator, assets: _Assets, canvas: np.ndarray, face: _Face) -> None:
    """Cover one side of the face box: about a quarter (occlusion 1) or half (occlusion 2)."""
    fraction = rng.uniform(0.15, 0.35) if face.occlusion == 1 else rng.uniform(0.4, 0.6)
    side = int(rng.integers(4))
    if side < 2:  # left or right
        w, h = max(1, round(face.w * fraction)), face.h
        x, y = (face.x if side == 0 else face.x + face.w - w), face.y
    else:  # top or bottom
        w, h = face.w, max(1, round(face.h * fraction))
        x, y = face.x, (face.y if side == 2 else face.y + face.h - h)
    if rng.random() < 0.5:
        patch = np.asarray(_photo_crop(rng, assets, w, h, min_scale=0.05), dtype=np.float32) / 255.0
    else:
        patch = np.broadcast_to(rng.uniform(0.0, 1.0, size=3).astype(np.float32), (h, w, 3))
    _paste(canvas, patch, np.ones((h, w), dtype=np.float32), x, y)
