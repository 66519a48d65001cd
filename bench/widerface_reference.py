"""The reference WIDER FACE evaluation, written plainly: per image, per prediction, per threshold.

A straightforward port of the widely used Python port of the official MATLAB code
(``WiderFace-Evaluation/evaluation.py``: ``norm_score``, ``image_eval``, ``img_pr_info``,
``dataset_pr_info``, ``voc_ap``, ``evaluation``), kept as close to it as Python allows. It is the
yardstick for :mod:`model.widerface_eval` in two places: ``tests/test_widerface_eval.py`` checks
that both give the same AP, and ``bench/eval_speed.py`` times both on the full validation set.

The reference computes IoUs with a compiled (Cython) ``bbox_overlaps``; :func:`bbox_overlaps` is
the same kernel in NumPy (comparable speed), :func:`bbox_overlaps_loop` its loops in plain Python
(what the kernel computes, line by line, but far slower). Everything else runs as the reference
does: a Python loop over images, one over each image's predictions, one over 1000 thresholds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.io import loadmat

SETTINGS = ("easy", "medium", "hard")
THRESH_NUM = 1000

Overlaps = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: ``{event: {image name: (N, 5) x y w h score}}``, each image sorted by score, descending (the
#: reference assumes its prediction files are).
NestedPredictions = dict[str, dict[str, np.ndarray]]


def bbox_overlaps_loop(boxes: np.ndarray, query_boxes: np.ndarray) -> np.ndarray:
    """The Cython kernel's loops: (N, K) IoU of xyxy boxes with the +1-pixel convention."""
    overlaps = np.zeros((len(boxes), len(query_boxes)))
    for k in range(len(query_boxes)):
        box_area = (query_boxes[k, 2] - query_boxes[k, 0] + 1) * (query_boxes[k, 3] - query_boxes[k, 1] + 1)
        for n in range(len(boxes)):
            iw = min(boxes[n, 2], query_boxes[k, 2]) - max(boxes[n, 0], query_boxes[k, 0]) + 1
            if iw > 0:
                ih = min(boxes[n, 3], query_boxes[k, 3]) - max(boxes[n, 1], query_boxes[k, 1]) + 1
                if ih > 0:
                    ua = float((boxes[n, 2] - boxes[n, 0] + 1) * (boxes[n, 3] - boxes[n, 1] + 1) + box_area - iw * ih)
                    overlaps[n, k] = iw * ih / ua
    return overlaps


def bbox_overlaps(boxes: np.ndarray, query_boxes: np.ndarray) -> np.ndarray:
    """The same kernel vectorised with NumPy: a stand-in for the compiled one."""
    b, q = boxes[:, None, :], query_boxes[None, :, :]
    iw = np.minimum(b[..., 2], q[..., 2]) - np.maximum(b[..., 0], q[..., 0]) + 1
    ih = np.minimum(b[..., 3], q[..., 3]) - np.maximum(b[..., 1], q[..., 1]) + 1
    box_area = (q[..., 2] - q[..., 0] + 1) * (q[..., 3] - q[..., 1] + 1)
    ua = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1) + box_area - iw * ih
    overlap = (iw > 0) & (ih > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap, iw * ih / np.where(overlap, ua, 1.0), 0.0)


@dataclass(frozen=True)
class ReferenceGroundTruth:
    """What the reference's ``get_gt_boxes`` returns, as read from the four ``.mat`` files."""

    facebox_list: np.ndarray
    event_list: np.ndarray
    file_list: np.ndarray
    setting_gts: tuple[np.ndarray, np.ndarray, np.ndarray]
    """``gt_list`` of easy, medium, hard."""


def load_gt(gt_dir: str | Path) -> ReferenceGroundTruth:
    gt_dir = Path(gt_dir)
    face = loadmat(gt_dir / "wider_face_val.mat")
    gts = tuple(loadmat(gt_dir / f"wider_{s}_val.mat")["gt_list"] for s in SETTINGS)
    return ReferenceGroundTruth(face["face_bbx_list"], face["event_list"], face["file_list"], gts)  # type: ignore[arg-type]


def norm_score(pred: NestedPredictions) -> None:
    """Min-max normalise every score in place, running extremes started at max 0 and min 1."""
    max_score, min_score = 0.0, 1.0
    for k in pred.values():
        for v in k.values():
            if len(v) == 0:
                continue
            max_score, min_score = max(np.max(v[:, -1]), max_score), min(np.min(v[:, -1]), min_score)
    diff = max_score - min_score
    for k in pred.values():
        for v in k.values():
            if len(v) == 0:
                continue
            v[:, -1] = (v[:, -1] - min_score) / diff


def image_eval(
    pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray, iou_thresh: float, overlaps_fn: Overlaps = bbox_overlaps
) -> tuple[np.ndarray, np.ndarray]:
    """Per prediction (score order): recalled faces so far, and whether it counts as a proposal."""
    _pred, _gt = pred.copy(), gt.copy()
    pred_recall = np.zeros(_pred.shape[0])
    recall_list = np.zeros(_gt.shape[0])
    proposal_list = np.ones(_pred.shape[0])
    _pred[:, 2] = _pred[:, 2] + _pred[:, 0]
    _pred[:, 3] = _pred[:, 3] + _pred[:, 1]
    _gt[:, 2] = _gt[:, 2] + _gt[:, 0]
    _gt[:, 3] = _gt[:, 3] + _gt[:, 1]
    overlaps = overlaps_fn(_pred[:, :4], _gt)
    for h in range(_pred.shape[0]):
        gt_overlap = overlaps[h]
        max_overlap, max_idx = gt_overlap.max(), gt_overlap.argmax()
        if max_overlap >= iou_thresh:
            if ignore[max_idx] == 0:
                recall_list[max_idx] = -1
                proposal_list[h] = -1
            elif recall_list[max_idx] == 0:
                recall_list[max_idx] = 1
        r_keep_index = np.where(recall_list == 1)[0]
        pred_recall[h] = len(r_keep_index)
    return pred_recall, proposal_list


def img_pr_info(thresh_num: int, pred_info: np.ndarray, proposal_list: np.ndarray, pred_recall: np.ndarray) -> np.ndarray:
    """(thresh_num, 2): proposals and recalled faces above each threshold, for one image."""
    pr_info = np.zeros((thresh_num, 2)).astype("float")
    for t in range(thresh_num):
        thresh = 1 - (t + 1) / thresh_num
        r_index = np.where(pred_info[:, 4] >= thresh)[0]
        if len(r_index) == 0:
            pr_info[t, 0] = 0
            pr_info[t, 1] = 0
        else:
            r_index = r_index[-1]
            p_index = np.where(proposal_list[: r_index + 1] == 1)[0]
            pr_info[t, 0] = len(p_index)
            pr_info[t, 1] = pred_recall[r_index]
    return pr_info


def dataset_pr_info(thresh_num: int, pr_curve: np.ndarray, count_face: int) -> np.ndarray:
    _pr_curve = np.zeros((thresh_num, 2))
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 at thresholds without proposals: NaN
        for i in range(thresh_num):
            _pr_curve[i, 0] = pr_curve[i, 1] / pr_curve[i, 0]
            _pr_curve[i, 1] = pr_curve[i, 1] / count_face
    return _pr_curve


def voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def evaluation(
    pred: NestedPredictions, gt: ReferenceGroundTruth, iou_thresh: float = 0.5, overlaps_fn: Overlaps = bbox_overlaps
) -> list[float]:
    """Easy, medium and hard AP. ``pred`` is copied, then normalised as the reference does.

    Every ground-truth image needs an entry in ``pred`` (an empty (0, 5) array for none).
    """
    pred = {e: {n: np.array(v, dtype=float) for n, v in d.items()} for e, d in pred.items()}
    norm_score(pred)
    aps = []
    for gt_list in gt.setting_gts:
        count_face = 0
        pr_curve = np.zeros((THRESH_NUM, 2)).astype("float")
        for i in range(len(gt.event_list)):
            event_name = str(gt.event_list[i][0][0])
            img_list = gt.file_list[i][0]
            pred_list = pred[event_name]
            sub_gt_list = gt_list[i][0]
            gt_bbx_list = gt.facebox_list[i][0]
            for j in range(len(img_list)):
                pred_info = pred_list[str(img_list[j][0][0])]
                gt_boxes = gt_bbx_list[j][0].astype("float")
                keep_index = sub_gt_list[j][0]
                count_face += len(keep_index)
                if len(gt_boxes) == 0 or len(pred_info) == 0:
                    continue
                ignore = np.zeros(gt_boxes.shape[0])
                if len(keep_index) != 0:
                    ignore[keep_index - 1] = 1
                pred_recall, proposal_list = image_eval(pred_info, gt_boxes, ignore, iou_thresh, overlaps_fn)
                pr_curve += img_pr_info(THRESH_NUM, pred_info, proposal_list, pred_recall)
        pr_curve = dataset_pr_info(THRESH_NUM, pr_curve, count_face)
        aps.append(voc_ap(pr_curve[:, 1], pr_curve[:, 0]))
    return aps


def nest_sorted(predictions: dict[tuple[str, str], np.ndarray], image_keys: Any) -> NestedPredictions:
    """``{(event, name): rows}`` to the reference's nested form, each image sorted by score
    (descending, stable), with an empty entry for every ``(event, name)`` in ``image_keys`` lacking one."""
    nested: NestedPredictions = {}
    for event, name in image_keys:
        rows = np.asarray(predictions.get((event, name), np.zeros((0, 5))), dtype=float).reshape(-1, 5)
        nested.setdefault(event, {})[name] = rows[np.argsort(-rows[:, 4], kind="stable")]
    return nested
