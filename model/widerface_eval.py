"""The official WIDER FACE evaluation protocol (easy / medium / hard AP), vectorised.

A faithful port of the widely used Python port of the official MATLAB code
(``WiderFace-Evaluation/evaluation.py``), giving the same numbers:

* Ground truth: ``wider_face_val.mat`` (``event_list``, ``file_list``, ``face_bbx_list``, boxes
  ``x y w h``) and ``wider_{easy,medium,hard}_val.mat`` (``gt_list``: 1-based indices of the faces
  that count in that setting). Every other face of the image is an ignore region in that setting.
* Predictions: one file per image, ``<pred>/<event>/<name>.txt``: the image name, the count, then
  one ``x y w h score`` line per detection.
* Scores are min-max normalised over the whole prediction set, with the reference's running
  extremes started at min 1 and max 0 (identical to plain min-max for scores in [0, 1]); when every
  score is equal (the reference divides by zero there) every normalised score is 1.
* Per image, predictions in descending score order (the reference silently assumes its input is
  sorted; this module sorts): each prediction takes the face with the highest IoU (+1-pixel
  convention, ``x2 = x + w``). If that IoU >= the threshold and the face is ignored, the prediction
  is not counted; if the face counts, it is recalled (the first time). Everything else counts as a
  proposal, so duplicates are false positives and the argmax is over *all* faces, matched or not.
* 1000 score thresholds ``1 - (t + 1) / 1000``; precision = recalled / proposals, recall = recalled
  / faces of the setting; VOC all-point AP.
* Also as in the reference: an image without faces contributes nothing, not even its false
  positives; predictions for images not in the ground truth are ignored (but take part in the
  score normalisation). A missing prediction file means no detections (with a warning).

Known consequences of the protocol, kept for comparability with published numbers: a face whose
box duplicates an earlier box of the same image can never be recalled (the argmax always picks the
first), nor can a face with negative width (IoU 0 even with itself). The validation set has one of
each, both hard faces, so the best possible hard AP is 31956/31958 (each valid box predicted once);
the raw ground truth fed back as predictions also scores below 1 in easy and medium, because its
negative-width box (no detector can emit one) is a false positive in every setting.

Vectorisation: a prediction's outcome depends only on its own argmax face, and the count of
distinct faces recalled by a score-sorted prefix is a cumulative sum of first-occurrence flags. So
one IoU matrix per image serves all three settings, and the 1000 thresholds become one histogram
of threshold indices (``searchsorted``) and a cumulative sum over the whole set.

The module is NumPy and SciPy only: it never imports torch, so ``python -m model.widerface_eval``
does not pay torch's import (seconds on a small machine: ``bench/eval_process.py``), yet it
accepts torch tensors wherever it takes arrays.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.io import loadmat

__all__ = [
    "GROUND_TRUTH_PLACES",
    "SETTINGS",
    "THRESHOLD_COUNT",
    "WiderGroundTruth",
    "WiderImage",
    "evaluate_widerface",
    "find_ground_truth",
    "load_ground_truth",
    "main",
    "read_predictions",
    "to_wider_predictions",
    "widerface_pr_curves",
    "write_all_predictions",
    "write_predictions",
]

SETTINGS: tuple[str, ...] = ("easy", "medium", "hard")
THRESHOLD_COUNT = 1000
_GT_FILES = ("wider_face_val.mat", *(f"wider_{s}_val.mat" for s in SETTINGS))
#: Where the official ``.mat`` files are looked for under a data root: the generated mini set keeps
#: them in ``wider_face_split``; the official download has them in ``eval_tools/ground_truth``.
GROUND_TRUTH_PLACES = ("wider_face_split", "eval_tools/ground_truth", "ground_truth")

PredictionSet = Mapping[tuple[str, str], np.ndarray]


@dataclass(frozen=True, eq=False)
class WiderImage:
    """One validation image.

    Attributes:
        event: event folder, e.g. ``0--Parade``.
        name: image name without ``.jpg``.
        boxes: (M, 4) float64 faces as ``x y w h``.
        keep: (M, 3) bool, column ``k`` True where the face counts in ``SETTINGS[k]``.
    """

    event: str
    name: str
    boxes: np.ndarray
    keep: np.ndarray

    @property
    def image_id(self) -> str:
        return f"{self.event}/{self.name}"


@dataclass(frozen=True, eq=False)
class WiderGroundTruth:
    """The official validation ground truth, images in the order of ``wider_face_val.mat``."""

    images: tuple[WiderImage, ...]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_faces(self) -> int:
        return sum(len(image.boxes) for image in self.images)

    def face_counts(self) -> dict[str, int]:
        """Faces that count in each setting."""
        total = sum((image.keep.sum(axis=0) for image in self.images), np.zeros(len(SETTINGS), dtype=np.int64))
        return {setting: int(n) for setting, n in zip(SETTINGS, total, strict=True)}

    def select(self, image_ids: Iterable[str]) -> WiderGroundTruth:
        """The ground truth of these images only (``<event>/<name>``), in this set's order: the
        protocol on a subset of val (its face counts, hence its recall, are the subset's).

        Raises:
            ValueError: an id is not an image of this ground truth (naming the first).
        """
        wanted = set(image_ids)
        known = {image.image_id for image in self.images}
        unknown = sorted(wanted - known)
        if unknown:
            raise ValueError(f"{len(unknown)} images are not in the ground truth (first: {', '.join(unknown[:3])})")
        return WiderGroundTruth(images=tuple(image for image in self.images if image.image_id in wanted))


def find_ground_truth(data_root: str | Path) -> Path | None:
    """The folder under ``data_root`` holding the four official ``.mat`` files, or ``None``
    (looked for in :data:`GROUND_TRUTH_PLACES`, in order)."""
    for place in GROUND_TRUTH_PLACES:
        folder = Path(data_root) / place
        if all((folder / name).is_file() for name in _GT_FILES):
            return folder
    return None


def _mat_string(cell: Any) -> str:
    return str(np.asarray(cell).ravel()[0])


def _cells(mat: Mapping[str, Any], key: str, path: Path) -> np.ndarray:
    if key not in mat:
        raise ValueError(f"{path} has no '{key}' (keys: {sorted(k for k in mat if not k.startswith('__'))})")
    return np.asarray(mat[key]).ravel()


def load_ground_truth(gt_dir: str | Path) -> WiderGroundTruth:
    """Read the official ``.mat`` ground truth from ``gt_dir``.

    Raises:
        FileNotFoundError: ``gt_dir`` lacks one of the four ``.mat`` files.
        ValueError: the files are inconsistent (different events or image counts, bad indices).
    """
    gt_dir = Path(gt_dir)
    missing = [name for name in _GT_FILES if not (gt_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"WIDER FACE ground-truth directory {gt_dir} lacks {', '.join(missing)} (the official eval_tools ground truth)"
        )
    face_path = gt_dir / _GT_FILES[0]
    face_mat = loadmat(face_path)
    events = _cells(face_mat, "event_list", face_path)
    files = _cells(face_mat, "file_list", face_path)
    boxes = _cells(face_mat, "face_bbx_list", face_path)
    if not len(events) == len(files) == len(boxes):
        raise ValueError(f"{face_path}: event_list, file_list and face_bbx_list differ in length")
    setting_lists = []
    for setting in SETTINGS:
        path = gt_dir / f"wider_{setting}_val.mat"
        gt_list = _cells(loadmat(path), "gt_list", path)
        if len(gt_list) != len(events):
            raise ValueError(f"{path}: gt_list has {len(gt_list)} events, {face_path} has {len(events)}")
        setting_lists.append((path, gt_list))

    images: list[WiderImage] = []
    for e, event_cell in enumerate(events):
        event = _mat_string(event_cell)
        names = np.asarray(files[e]).ravel()
        event_boxes = np.asarray(boxes[e]).ravel()
        if len(event_boxes) != len(names):
            raise ValueError(f"{face_path}: event {event} has {len(names)} files but {len(event_boxes)} box lists")
        for i, name_cell in enumerate(names):
            name = _mat_string(name_cell)
            xywh = np.asarray(event_boxes[i], dtype=np.float64)
            xywh = xywh.reshape(0, 4) if xywh.size == 0 else xywh
            if xywh.ndim != 2 or xywh.shape[1] != 4:
                raise ValueError(f"{face_path}: {event}/{name} boxes have shape {xywh.shape}, expected (M, 4)")
            keep = np.zeros((len(xywh), len(SETTINGS)), dtype=bool)
            for k, (path, gt_list) in enumerate(setting_lists):
                per_image = np.asarray(gt_list[e]).ravel()
                if len(per_image) != len(names):
                    raise ValueError(f"{path}: event {event} has {len(per_image)} images, expected {len(names)}")
                index = np.asarray(per_image[i]).ravel().astype(np.int64) - 1
                if index.size and (index.min() < 0 or index.max() >= len(xywh)):
                    raise ValueError(f"{path}: {event}/{name} has face indices outside 1..{len(xywh)}")
                keep[index, k] = True
            images.append(WiderImage(event=event, name=name, boxes=xywh, keep=keep))
    return WiderGroundTruth(images=tuple(images))


def _parse_prediction_file(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(f"{path}, line 1: empty file, expected the image name")
    if len(lines) == 1:
        raise ValueError(f"{path}, line 2: missing the detection count")
    stated = Path(lines[0].strip().replace("\\", "/")).name
    if stated != path.stem and stated.removesuffix(".jpg") != path.stem:
        raise ValueError(f"{path}, line 1: image name '{lines[0].strip()}' does not match the file name")
    try:
        count = int(lines[1].strip())
    except ValueError:
        raise ValueError(f"{path}, line 2: expected the detection count, got '{lines[1].strip()}'") from None
    body = lines[2:]
    if count != len(body):
        raise ValueError(f"{path}, line 2: states {count} detections but the file has {len(body)} box lines")
    if count == 0:
        return np.zeros((0, 5), dtype=np.float64)
    try:  # fast path for the common well-formed file
        values = np.array(" ".join(body).split(), dtype=np.float64)
        if values.size == 5 * count and np.isfinite(values).all():
            return values.reshape(count, 5)
    except ValueError:
        pass
    rows = []  # line by line, to name the faulty line
    for number, line in enumerate(body, start=3):
        try:
            row = [float(field) for field in line.split()]
        except ValueError:
            row = []
        if len(row) != 5 or not all(math.isfinite(v) for v in row):
            raise ValueError(f"{path}, line {number}: expected 5 finite numbers 'x y w h score', got '{line.strip()}'")
        rows.append(row)
    return np.array(rows, dtype=np.float64)


def read_predictions(pred_dir: str | Path) -> dict[tuple[str, str], np.ndarray]:
    """Read ``<pred_dir>/<event>/<name>.txt`` files into ``{(event, name): (N, 5) x y w h score}``.

    Raw scores are returned; :func:`evaluate_widerface` normalises them. Images without a file are
    simply absent (the evaluation counts them as no detections and warns).

    Raises:
        FileNotFoundError: ``pred_dir`` is not a directory.
        ValueError: a malformed file, naming the file and the line.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction directory {pred_dir} does not exist")
    predictions: dict[tuple[str, str], np.ndarray] = {}
    for event_dir in sorted(p for p in pred_dir.iterdir() if p.is_dir()):
        for path in sorted(event_dir.glob("*.txt")):
            predictions[(event_dir.name, path.stem)] = _parse_prediction_file(path)
    return predictions


def _split_image_id(image_id: str) -> tuple[str, str]:
    event, sep, name = image_id.partition("/")
    if not sep or not event or not name or "/" in name or ".." in (event, name):
        raise ValueError(f"image_id must be '<event>/<name>', got '{image_id}'")
    return event, name.removesuffix(".jpg")


def _as_array(value: Any) -> np.ndarray:
    """An array from an array-like or a torch tensor, without importing torch: a tensor can only
    exist once its caller has imported torch, so ``sys.modules`` is asked, not the import system."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        value = value.detach().cpu()
    return np.asarray(value)


def _xyxy_to_xywh_scores(boxes_xyxy: Any, scores: Any, what: str) -> np.ndarray:
    boxes = _as_array(boxes_xyxy)
    score = _as_array(scores)
    boxes = boxes.reshape(0, 4) if boxes.size == 0 else boxes
    score = score.reshape(0) if score.size == 0 else score
    if boxes.ndim != 2 or boxes.shape[1] != 4 or score.shape != (len(boxes),):
        raise ValueError(f"{what}: expected boxes (N, 4) and scores (N,), got {boxes.shape} and {score.shape}")
    out = np.empty((len(boxes), 5), dtype=np.float64)
    out[:, :2] = boxes[:, :2]
    out[:, 2:4] = boxes[:, 2:] - boxes[:, :2]
    out[:, 4] = score
    return out


def write_predictions(out_dir: str | Path, image_id: str, boxes_xyxy: Any, scores: Any) -> Path:
    """Write one image's detections as ``<out_dir>/<event>/<name>.txt`` in the official format.

    Args:
        out_dir: root of the prediction directory.
        image_id: ``<event>/<name>`` (a trailing ``.jpg`` is dropped).
        boxes_xyxy: (N, 4) boxes in the original image's pixels (tensor or array).
        scores: (N,) detection scores.

    Returns:
        The written file. Numbers are written with 9 significant digits (float32 precision).
    """
    event, name = _split_image_id(image_id)
    rows = _xyxy_to_xywh_scores(boxes_xyxy, scores, image_id)
    path = Path(out_dir) / event / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(" ".join(f"{v:.9g}" for v in row) + "\n" for row in rows.tolist())
    path.write_text(f"{name}\n{len(rows)}\n{body}")
    return path


def write_all_predictions(out_dir: str | Path, image_ids: Sequence[str], predictions: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Write a whole prediction list (``{"boxes", "scores"}`` per image) with :func:`write_predictions`."""
    if len(image_ids) != len(predictions):
        raise ValueError(f"got {len(image_ids)} image ids but {len(predictions)} predictions")
    pairs = zip(image_ids, predictions, strict=True)
    return [write_predictions(out_dir, image_id, p["boxes"], p["scores"]) for image_id, p in pairs]


def to_wider_predictions(image_ids: Sequence[str], predictions: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], np.ndarray]:
    """The in-memory equivalent of writing then reading the files: ``{(event, name): (N, 5)}``."""
    if len(image_ids) != len(predictions):
        raise ValueError(f"got {len(image_ids)} image ids but {len(predictions)} predictions")
    if len(set(image_ids)) != len(image_ids):
        raise ValueError("image_ids contain duplicates: one prediction per image")
    return {
        _split_image_id(i): _xyxy_to_xywh_scores(p["boxes"], p["scores"], i) for i, p in zip(image_ids, predictions, strict=True)
    }


def _overlaps(pred_xywh: np.ndarray, gt_xywh: np.ndarray) -> np.ndarray:
    """IoU with the reference's +1-pixel convention (``bbox_overlaps``); (N, M)."""
    p1, p2 = pred_xywh[:, None, :2], pred_xywh[:, None, :2] + pred_xywh[:, None, 2:4]
    g1, g2 = gt_xywh[None, :, :2], gt_xywh[None, :, :2] + gt_xywh[None, :, 2:4]
    wh = np.minimum(p2, g2) - np.maximum(p1, g1) + 1.0
    inter = np.where((wh > 0).all(axis=2), wh[..., 0] * wh[..., 1], 0.0)
    area_p = (p2[..., 0] - p1[..., 0] + 1.0) * (p2[..., 1] - p1[..., 1] + 1.0)
    area_g = (g2[..., 0] - g1[..., 0] + 1.0) * (g2[..., 1] - g1[..., 1] + 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area_p + area_g - inter)
    return np.where(inter > 0, iou, 0.0)  # the reference leaves non-overlapping pairs at 0


def _normalise(predictions: PredictionSet) -> tuple[float, float]:
    """The reference's score range as ``(min, max - min)``, running extremes started at 1 and 0."""
    lo, hi = 1.0, 0.0
    for rows in predictions.values():
        if len(rows):
            lo, hi = min(lo, float(rows[:, 4].min())), max(hi, float(rows[:, 4].max()))
    return lo, hi - lo


def _image_outcomes(
    rows: np.ndarray, gt: WiderImage, iou_threshold: float, lo: float, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised scores (N,), proposal flags (N, 3) and first-recall flags (N, 3), score-sorted."""
    scores = (rows[:, 4] - lo) / scale if scale > 0 else np.ones(len(rows))
    order = np.argsort(-scores, kind="stable")
    iou = _overlaps(rows[order, :4], gt.boxes)
    best = iou.argmax(axis=1)
    matched = iou[np.arange(len(order)), best] >= iou_threshold
    kept = gt.keep[best]  # (N, 3)
    proposal = ~(matched[:, None] & ~kept)
    hit = np.flatnonzero(matched)
    first = np.zeros(len(order), dtype=bool)
    first[hit[np.unique(best[hit], return_index=True)[1]]] = True
    return scores[order], proposal, first[:, None] & kept


def _validate_rows(key: Any, rows: Any) -> np.ndarray:
    arr = np.asarray(rows, dtype=np.float64)
    arr = arr.reshape(0, 5) if arr.size == 0 else arr
    if arr.ndim != 2 or arr.shape[1] != 5:
        raise ValueError(f"predictions for {key}: expected shape (N, 5) 'x y w h score', got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"predictions for {key}: contain NaN or inf")
    return arr


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point interpolated AP: area under the precision envelope of the PR curve.

    Lives here, in the torch-free protocol module; :mod:`model.metrics` uses it too.

    Args:
        recall: (K,) non-decreasing recall, one point per ranked prediction or threshold.
        precision: (K,) precision at the same points.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.shape != precision.shape or recall.ndim != 1:
        raise ValueError(f"recall and precision must be 1-D of one length, got {recall.shape} and {precision.shape}")
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def widerface_pr_curves(
    predictions: PredictionSet, gt: WiderGroundTruth, iou_threshold: float = 0.5
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per setting, ``(precision, recall)`` at the 1000 thresholds ``1 - (t + 1) / 1000``, t = 0..999.

    Precision is 0 at thresholds without counted proposals (the reference yields NaN there,
    which never reaches its AP); recall is 0 everywhere for a setting without faces.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    predictions = {key: _validate_rows(key, rows) for key, rows in predictions.items()}
    lo, scale = _normalise(predictions)
    thresholds = 1.0 - (np.arange(THRESHOLD_COUNT) + 1) / THRESHOLD_COUNT  # descending, as the reference
    scores_parts, proposal_parts, recall_parts, missing = [], [], [], []
    for image in gt.images:
        rows = predictions.get((image.event, image.name))
        if rows is None:
            missing.append(image.image_id)
            continue
        if len(rows) == 0 or len(image.boxes) == 0:
            continue
        scores, proposal, recalled = _image_outcomes(rows, image, iou_threshold, lo, scale)
        scores_parts.append(scores)
        proposal_parts.append(proposal)
        recall_parts.append(recalled)
    if missing:
        warnings.warn(
            f"{len(missing)} of {len(gt)} ground-truth images have no predictions and count as no detections "
            f"(first: {', '.join(missing[:3])})",
            stacklevel=3,
        )
    known = {(image.event, image.name) for image in gt.images}
    unknown = [f"{e}/{n}" for e, n in predictions if (e, n) not in known]
    if unknown:
        warnings.warn(
            f"{len(unknown)} prediction images are not in the ground truth and are ignored (first: {', '.join(unknown[:3])})",
            stacklevel=3,
        )
    counts = gt.face_counts()
    faces = np.array([counts[s] for s in SETTINGS], dtype=np.float64)
    if scores_parts:
        scores = np.concatenate(scores_parts)
        proposal = np.concatenate(proposal_parts)
        recalled = np.concatenate(recall_parts)
    else:
        scores, proposal, recalled = np.zeros(0), np.zeros((0, 3), bool), np.zeros((0, 3), bool)
    # A prediction is inside the prefix of threshold t iff score >= thresholds[t], i.e. for every
    # t >= entry[p]; a histogram of entry[p] and a cumulative sum give all 1000 counts at once.
    entry = THRESHOLD_COUNT - np.searchsorted(thresholds[::-1], scores, side="right")
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for k, setting in enumerate(SETTINGS):
        n_prop = np.cumsum(np.bincount(entry, weights=proposal[:, k], minlength=THRESHOLD_COUNT + 1)[:-1])
        n_rec = np.cumsum(np.bincount(entry, weights=recalled[:, k], minlength=THRESHOLD_COUNT + 1)[:-1])
        precision = np.divide(n_rec, n_prop, out=np.zeros(THRESHOLD_COUNT), where=n_prop > 0)
        recall = n_rec / faces[k] if faces[k] > 0 else np.zeros(THRESHOLD_COUNT)
        curves[setting] = (precision, recall)
    return curves


def evaluate_widerface(predictions: PredictionSet, gt: WiderGroundTruth, iou_threshold: float = 0.5) -> dict[str, float]:
    """Official easy / medium / hard AP.

    Args:
        predictions: ``{(event, name): (N, 5) x y w h score}`` with raw scores, e.g. from
            :func:`read_predictions` or :func:`to_wider_predictions`.
        gt: from :func:`load_ground_truth`.
        iou_threshold: the protocol uses 0.5.

    Returns:
        ``{"easy": ap, "medium": ap, "hard": ap}``; 0.0 for a setting without faces.
    """
    curves = widerface_pr_curves(predictions, gt, iou_threshold)
    return {setting: voc_ap(recall, precision) for setting, (precision, recall) in curves.items()}


def main(argv: Iterable[str] | None = None) -> int:
    """CLI: ``python -m model.widerface_eval --pred DIR --gt DIR [--iou 0.5] [--json OUT]``."""
    parser = argparse.ArgumentParser(prog="python -m model.widerface_eval", description=__doc__.splitlines()[0])
    parser.add_argument("--pred", required=True, type=Path, help="prediction root: <event>/<name>.txt files")
    parser.add_argument("--gt", required=True, type=Path, help="directory with wider_face_val.mat and the settings")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU threshold (default 0.5)")
    parser.add_argument("--json", type=Path, default=None, help="also write the APs to this JSON file")
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        gt = load_ground_truth(args.gt)
        predictions = read_predictions(args.pred)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            aps = evaluate_widerface(predictions, gt, iou_threshold=args.iou)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    counts = gt.face_counts()
    print(f"WIDER FACE val: {len(gt)} images, {gt.num_faces} faces, IoU {args.iou}")
    print(f"{'setting':<8} {'faces':>6} {'AP':>7}")
    for setting in SETTINGS:
        print(f"{setting:<8} {counts[setting]:>6} {aps[setting]:>7.4f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**aps, "iou_threshold": args.iou}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
