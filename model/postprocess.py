"""From head outputs to detections: face scores, box decoding, clipping, NMS or Soft-NMS.

Soft-NMS (Bodla et al., ICCV 2017) decays the scores of overlapping boxes instead of removing
them, which helps crowded scenes, where neighbouring faces overlap.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms, box_area, box_iou, clip_boxes_to_image

from model.config import NmsMethod, PostprocessConfig

NMS_METHODS: tuple[str, ...] = get_args(NmsMethod)
SoftNmsMethod = Literal["linear", "gaussian"]
#: The defaults of :func:`postprocess`: the config's, so that they are written once.
_DEFAULT = PostprocessConfig()


def postprocess(
    cls_logits: Tensor,
    bbox_regression: Tensor,
    anchors: Tensor,
    box_coder: BoxCoder,
    image_size: int | tuple[int, int],
    *,
    score_threshold: float = _DEFAULT.score_threshold,
    topk_candidates: int = _DEFAULT.topk_candidates,
    nms: NmsMethod = _DEFAULT.nms,
    nms_iou: float = _DEFAULT.nms_iou,
    soft_nms_sigma: float = _DEFAULT.soft_nms_sigma,
    max_detections: int = _DEFAULT.max_detections,
) -> list[dict[str, Tensor]]:
    """Detections for a batch of head outputs.

    Args:
        cls_logits: (B, A, 2) logits (background, face).
        bbox_regression: (B, A, 4) offsets, encoded with ``box_coder`` relative to ``anchors``.
        anchors: (A, 4) xyxy default boxes in input pixels.
        box_coder: the coder the model was trained with.
        image_size: the input side ``S`` or ``(height, width)``; boxes are clipped to it.
        score_threshold: candidates with a face score below this are dropped (also the Soft-NMS
            pruning threshold for decayed scores).
        topk_candidates: best-scoring anchors per image considered at all (before NMS).
        nms: ``nms`` (hard), ``soft_linear`` or ``soft_gaussian``.
        nms_iou: IoU above which hard NMS suppresses, and linear Soft-NMS starts decaying.
        soft_nms_sigma: the Gaussian Soft-NMS ``sigma``.
        max_detections: detections kept per image.

    Returns:
        One ``{"boxes": (N, 4) float32 xyxy, "scores": (N,) float32}`` per image, scores descending.
    """
    if nms not in NMS_METHODS:
        raise ValueError(f"unknown nms {nms!r}; allowed: {', '.join(NMS_METHODS)}")
    if topk_candidates < 1 or max_detections < 1:
        raise ValueError(f"topk_candidates and max_detections must be >= 1, got {topk_candidates}, {max_detections}")
    if cls_logits.dim() != 3 or cls_logits.shape[-1] != 2:
        raise ValueError(f"cls_logits must be (B, A, 2), got {tuple(cls_logits.shape)}")
    batch, num_anchors, _ = cls_logits.shape
    if bbox_regression.shape != (batch, num_anchors, 4) or anchors.shape != (num_anchors, 4):
        raise ValueError(
            f"shapes disagree: cls_logits {tuple(cls_logits.shape)}, bbox_regression "
            f"{tuple(bbox_regression.shape)}, anchors {tuple(anchors.shape)}"
        )
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size

    # Top-k before the threshold selects the same candidates and keeps shapes static.
    scores = F.softmax(cls_logits.float(), dim=-1)[..., 1]
    k = min(topk_candidates, num_anchors)
    top_scores, top_idx = scores.topk(k, dim=1)
    top_codes = bbox_regression.float().gather(1, top_idx.unsqueeze(-1).expand(-1, -1, 4))
    top_anchors = anchors.float()[top_idx]
    boxes = box_coder.decode_single(top_codes.reshape(-1, 4), top_anchors.reshape(-1, 4))
    boxes = clip_boxes_to_image(boxes.view(batch, k, 4), (height, width))
    # A box clipped to nothing (predicted outside the image) is no detection; its IoU would be 0/0.
    top_scores = top_scores.masked_fill(box_area(boxes.view(-1, 4)).view(batch, k) <= 0, -1.0)

    if nms == "nms":
        return _hard_nms(boxes, top_scores, score_threshold, nms_iou, max_detections)
    method: SoftNmsMethod = "linear" if nms == "soft_linear" else "gaussian"
    results = []
    for boxes_i, scores_i in zip(boxes, top_scores):
        keep, new_scores = soft_nms(boxes_i, scores_i, method, nms_iou, soft_nms_sigma, score_threshold)
        keep, new_scores = keep[:max_detections], new_scores[:max_detections]  # already descending
        results.append({"boxes": boxes_i[keep], "scores": new_scores})
    return results


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    method: SoftNmsMethod = "linear",
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al. 2017) for one image.

    Repeatedly takes the best remaining box and decays the others by their IoU ``o`` with it:
    linear multiplies by ``1 - o`` where ``o > iou_threshold``; Gaussian by ``exp(-o**2 / sigma)``
    everywhere. Boxes whose score falls below ``score_threshold`` are dropped.

    Args:
        boxes: (N, 4) xyxy.
        scores: (N,) scores.
        method: ``linear`` or ``gaussian``.
        iou_threshold: the linear method's ``N_t``.
        sigma: the Gaussian method's ``sigma``.
        score_threshold: minimum (decayed) score to stay a candidate.

    Returns:
        ``(keep, new_scores)``: indices into ``boxes`` in selection order and their decayed
        scores, which are non-increasing.
    """
    if method not in ("linear", "gaussian"):
        raise ValueError(f"unknown Soft-NMS method {method!r}; allowed: linear, gaussian")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    scores = scores.float().clone()
    alive = scores >= score_threshold
    keep: list[Tensor] = []
    kept_scores: list[Tensor] = []
    if boxes.numel():
        # Once; each step reads one row. Zero-area boxes give 0/0: count them as no overlap.
        iou = box_iou(boxes.float(), boxes.float()).nan_to_num(0.0)
        for _ in range(boxes.shape[0]):  # sequential by nature: each pick depends on the decays before it
            best_score, best = torch.where(alive, scores, -1.0).max(dim=0)
            if not alive[best]:
                break
            keep.append(best)
            kept_scores.append(best_score)
            alive[best] = False
            overlap = iou[best]
            if method == "linear":
                decay = torch.where(overlap > iou_threshold, 1.0 - overlap, 1.0)
            else:
                decay = torch.exp(-(overlap * overlap) / sigma)
            scores = torch.where(alive, scores * decay, scores)
            alive &= scores >= score_threshold
    if not keep:
        return boxes.new_zeros(0, dtype=torch.long), scores.new_zeros(0)
    return torch.stack(keep), torch.stack(kept_scores)


def _hard_nms(
    boxes: Tensor, scores: Tensor, score_threshold: float, iou_threshold: float, max_detections: int
) -> list[dict[str, Tensor]]:
    """torchvision NMS for the whole batch at once (the image index keeps images apart)."""
    batch, k = scores.shape
    image_idx = torch.arange(batch, device=scores.device).repeat_interleave(k)
    flat_boxes, flat_scores = boxes.reshape(-1, 4), scores.reshape(-1)
    candidates = torch.nonzero(flat_scores >= score_threshold).squeeze(1)
    order = batched_nms(flat_boxes[candidates], flat_scores[candidates], image_idx[candidates], iou_threshold)
    kept = candidates[order]
    kept_image = image_idx[kept]  # kept is sorted by score, so each image's share is too
    results = []
    for b in range(batch):
        sel = kept[kept_image == b][:max_detections]
        results.append({"boxes": flat_boxes[sel], "scores": flat_scores[sel]})
    return results
