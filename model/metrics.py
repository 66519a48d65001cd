"""Detection metrics for the one face class: VOC all-point AP and one operating point.

Matching rule, per image, predictions taken in descending score order (stable on ties):

1. **TP** when some not-yet-matched, non-ignored face has IoU >= ``iou_threshold`` with the
   prediction; it takes the one with the highest IoU (the first in target order on an exact tie).
2. Otherwise **ignored** when it has IoU >= ``iou_threshold`` with an ignore region: neither TP
   nor FP, and left out of the ranking AP is computed on. An ignore region may absorb any number
   of predictions and is never a miss. These are COCO's crowd semantics (with IoU, not COCO's
   intersection-over-detection). Unlike VOC's "difficult" argmax rule, an ignore region never
   hides a real face: a face that qualifies always wins, so a detection is not thrown away because
   a neighbouring ignore box happens to overlap it a little more.
3. Otherwise **FP**, duplicates of an already matched face included.

Matching is done once over every prediction; because it is greedy in score order, restricting the
result to predictions with score >= ``score_threshold`` is exactly what matching only those would
give, so AP (all scores) and the operating point (one score threshold) share one pass.

Conventions (no NaN, no division by zero): with no non-ignored faces at all, ``ap`` and
``recall`` are 0.0; ``precision`` is 0.0 when no counted prediction reaches the score threshold;
``mean_iou`` is 0.0 without true positives; per-image rates are 0.0 over zero images.
IoU is :func:`torchvision.ops.box_iou` (continuous coordinates, no +1), as in COCO; the official
WIDER FACE protocol, with its own rules, is :mod:`model.widerface_eval`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from model.widerface_eval import voc_ap  # torch-free, shared with the official protocol

__all__ = ["Matches", "evaluate", "match_predictions", "precision_recall_curve", "voc_ap"]


@dataclass(frozen=True)
class Matches:
    """Outcome of matching every prediction of a dataset, grouped by image, each image's
    predictions in descending score order.

    Attributes:
        scores: (P,) prediction scores.
        image_index: (P,) index of the image each prediction belongs to.
        tp: (P,) True where the prediction matched a face.
        ignored: (P,) True where it matched only an ignore region (never also ``tp``).
        iou: (P,) IoU with the matched face where ``tp``, else 0.
        num_gt: number of non-ignored faces.
        num_images: number of images.
    """

    scores: np.ndarray
    image_index: np.ndarray
    tp: np.ndarray
    ignored: np.ndarray
    iou: np.ndarray
    num_gt: int
    num_images: int


def _to_numpy(value: Any, what: str, index: int) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"image {index}: {what} is not array-like ({type(value).__name__})") from exc


def _boxes(value: Any, what: str, index: int) -> np.ndarray:
    arr = _to_numpy(value, what, index)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"image {index}: {what} must have shape (N, 4), got {tuple(arr.shape)}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"image {index}: {what} contain NaN or inf")
    return arr


def _field(item: Any, key: str, kind: str, index: int) -> Any:
    if not isinstance(item, Mapping):
        raise ValueError(f"image {index}: {kind} must be a dict, got {type(item).__name__}")
    if key not in item:
        raise ValueError(f"image {index}: {kind} has no '{key}' (keys: {sorted(item)})")
    return item[key]


def _validated(prediction: Any, target: Any, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    boxes = _boxes(_field(prediction, "boxes", "prediction", index), "prediction boxes", index)
    scores = _to_numpy(_field(prediction, "scores", "prediction", index), "prediction scores", index)
    if scores.size == 0:
        scores = scores.reshape(0)
    if scores.ndim != 1 or len(scores) != len(boxes):
        raise ValueError(
            f"image {index}: prediction scores must have shape ({len(boxes)},) to match the boxes, got {tuple(scores.shape)}"
        )
    scores = scores.astype(np.float64)
    if not np.isfinite(scores).all():
        raise ValueError(f"image {index}: prediction scores contain NaN or inf")
    gt = _boxes(_field(target, "boxes", "target", index), "target boxes", index)
    if target.get("ignore") is None:
        ignore = np.zeros(len(gt), dtype=bool)
    else:
        ignore = _to_numpy(target["ignore"], "target ignore", index)
        if ignore.size == 0 and len(gt) == 0:
            ignore = np.zeros(0, dtype=bool)
        if ignore.shape != (len(gt),):
            raise ValueError(
                f"image {index}: target ignore must have shape ({len(gt)},) to match the boxes, got {tuple(ignore.shape)}"
            )
        ignore = ignore.astype(bool)
    return boxes, scores, gt, ignore


def _match_image(
    boxes: np.ndarray, scores: np.ndarray, gt: np.ndarray, ignore: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Greedy matching of one image; returns (order, tp, ignored, tp_iou) in ``order``."""
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    tp = np.zeros(n, dtype=bool)
    tp_iou = np.zeros(n, dtype=np.float64)
    if n == 0 or len(gt) == 0:
        return order, tp, np.zeros(n, dtype=bool), tp_iou
    iou = box_iou(torch.from_numpy(boxes[order]), torch.from_numpy(gt)).numpy()
    real = np.where(~ignore[None, :] & (iou >= iou_threshold), iou, -1.0)
    candidates = np.flatnonzero((real >= 0).any(axis=1))
    if candidates.size and ((real >= 0).sum(axis=0) <= 1).all():
        # No face is wanted by two predictions: every candidate simply takes its best face.
        tp[candidates] = True
        tp_iou[candidates] = real[candidates].max(axis=1)
    else:
        taken = np.zeros(len(gt), dtype=bool)
        for i in candidates:
            row = np.where(taken, -1.0, real[i])
            j = int(row.argmax())
            if row[j] >= 0:
                taken[j] = True
                tp[i] = True
                tp_iou[i] = row[j]
    on_ignore = (iou[:, ignore] >= iou_threshold).any(axis=1) if ignore.any() else np.zeros(n, dtype=bool)
    return order, tp, on_ignore & ~tp, tp_iou


def match_predictions(
    predictions: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]], iou_threshold: float = 0.5
) -> Matches:
    """Match every prediction to the faces of its image (rule in the module docstring).

    Args:
        predictions: one ``{"boxes": (N, 4) xyxy, "scores": (N,)}`` per image (tensors or arrays).
        targets: one ``{"boxes": (M, 4) xyxy, "ignore": (M,) bool (optional)}`` per image.
        iou_threshold: minimum IoU for a match, in (0, 1].
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if len(predictions) != len(targets):
        raise ValueError(f"got {len(predictions)} predictions but {len(targets)} targets: one of each per image")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("scores", "image_index", "tp", "ignored", "iou")}
    num_gt = 0
    for index, (prediction, target) in enumerate(zip(predictions, targets, strict=True)):
        boxes, scores, gt, ignore = _validated(prediction, target, index)
        order, tp, ignored, tp_iou = _match_image(boxes, scores, gt, ignore, iou_threshold)
        num_gt += int((~ignore).sum())
        parts["scores"].append(scores[order])
        parts["image_index"].append(np.full(len(order), index, dtype=np.int64))
        parts["tp"].append(tp)
        parts["ignored"].append(ignored)
        parts["iou"].append(tp_iou)
    empty = {"scores": np.float64, "image_index": np.int64, "tp": bool, "ignored": bool, "iou": np.float64}
    arrays = {k: np.concatenate(v) if v else np.zeros(0, dtype=empty[k]) for k, v in parts.items()}
    return Matches(**arrays, num_gt=num_gt, num_images=len(predictions))


def precision_recall_curve(matches: Matches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall after each counted (non-ignored) prediction, ranked by score.

    Returns:
        ``(precision, recall, scores)``, each (K,), in descending score order (stable on ties);
        recall is all zeros when there are no faces.
    """
    keep = ~matches.ignored
    order = np.argsort(-matches.scores[keep], kind="stable")
    hits = matches.tp[keep][order]
    cum_tp = np.cumsum(hits, dtype=np.float64)
    precision = cum_tp / np.arange(1, len(hits) + 1, dtype=np.float64)
    recall = cum_tp / matches.num_gt if matches.num_gt > 0 else np.zeros_like(cum_tp)
    return precision, recall, matches.scores[keep][order]


def evaluate(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    iou_threshold: float = 0.5,
    score_threshold: float = 0.5,
) -> dict[str, float | int]:
    """AP over every prediction plus precision/recall/TP/FP/FN/mean IoU at ``score_threshold``.

    Args:
        predictions: one ``{"boxes": (N, 4) xyxy, "scores": (N,)}`` per image (tensors or arrays).
        targets: one ``{"boxes": (M, 4) xyxy, "ignore": (M,) bool (optional)}`` per image.
        iou_threshold: minimum IoU for a match.
        score_threshold: the operating point for the thresholded counts.

    Returns:
        ``ap``, ``precision``, ``recall``, ``tp``, ``fp``, ``fn``, ``mean_iou``, ``num_gt``,
        ``num_images``, ``detections_per_image`` (predictions >= score_threshold, ignored ones
        included, per image) and ``top_score`` (0.0 without predictions).
    """
    matches = match_predictions(predictions, targets, iou_threshold)
    precision_curve, recall_curve, _ = precision_recall_curve(matches)
    ap = voc_ap(recall_curve, precision_curve) if matches.num_gt > 0 else 0.0
    above = matches.scores >= score_threshold
    counted = above & ~matches.ignored
    tp = int((counted & matches.tp).sum())
    fp = int((counted & ~matches.tp).sum())
    return {
        "ap": ap,
        "precision": tp / (tp + fp) if tp + fp > 0 else 0.0,
        "recall": tp / matches.num_gt if matches.num_gt > 0 else 0.0,
        "tp": tp,
        "fp": fp,
        "fn": matches.num_gt - tp,
        "mean_iou": float(matches.iou[above & matches.tp].mean()) if tp > 0 else 0.0,
        "num_gt": matches.num_gt,
        "num_images": matches.num_images,
        "detections_per_image": float(above.sum()) / matches.num_images if matches.num_images else 0.0,
        "top_score": float(matches.scores.max()) if matches.scores.size else 0.0,
    }
