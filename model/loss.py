"""The multibox loss: anchor matching, hard-negative mining, and the two loss parts.

The loss returns its parts unweighted; the trainer minimises :func:`weighted_loss`,
``class_weight * loss_cls + box_weight * loss_box`` (DETR's ``weight_dict`` style: the weights
live in one place, the config, and may change per step under the ramp). The weights, the neg:pos
ratio and the loss variants are the hyperparameters the search explores. Everything is batched and
free of host synchronisation (no ``.item()``, no boolean indexing), so the trainer decides when
to read the counters.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import (
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
    sigmoid_focal_loss,
)

from model.config import BoxLoss, ClsLoss

if TYPE_CHECKING:
    from collections.abc import Callable

    from model.ssd import HeadOutputs

CLS_LOSSES: tuple[str, ...] = get_args(ClsLoss)
BOX_LOSSES: tuple[str, ...] = get_args(BoxLoss)
_IOU_LOSSES: dict[str, Callable[..., Tensor]] = {
    "giou": generalized_box_iou_loss,
    "diou": distance_box_iou_loss,
    "ciou": complete_box_iou_loss,
}


class AnchorMatch(NamedTuple):
    """Per-anchor training targets for a batch."""

    positive: Tensor
    """(B, A) bool: the anchor is a face."""
    ignored: Tensor
    """(B, A) bool: neither positive nor negative (overlaps an ignore region)."""
    matched_boxes: Tensor
    """(B, A, 4) the face box of each positive anchor; the anchor itself elsewhere (finite targets)."""


def match_anchors(
    anchors: Tensor, targets: list[dict[str, Tensor]], match_iou: float = 0.5, ignore_iou: float = 0.5
) -> AnchorMatch:
    """Assign anchors to faces for a whole batch at once (faces padded to the batch maximum).

    An anchor is positive when its best IoU with a face is ``>= match_iou``. Every face is also
    force-matched to its best anchor (as torchvision's ``SSDMatcher``), so tiny faces still train;
    when several faces claim the same anchor, the one overlapping it most wins (ties: the later
    face), a fixed rule so an anchor never flips between faces. Anchors left non-positive that
    overlap an ignore region by ``>= ignore_iou`` are ignored.

    Args:
        anchors: (A, 4) xyxy default boxes.
        targets: per image, ``boxes`` (M, 4) xyxy and optionally ``ignore`` (M,) bool.
        match_iou: IoU for a positive.
        ignore_iou: IoU with an ignore region that takes an anchor out of the loss.
    """
    device, dtype = anchors.device, anchors.dtype
    batch, num_anchors = len(targets), anchors.shape[0]
    boxes = [t["boxes"].to(device=device, dtype=dtype).reshape(-1, 4) for t in targets]
    counts = [b.shape[0] for b in boxes]
    if max(counts, default=0) == 0:
        nothing = torch.zeros(batch, num_anchors, dtype=torch.bool, device=device)
        return AnchorMatch(nothing, nothing.clone(), anchors.expand(batch, -1, -1))

    flags = [_ignore_flags(t, n, device) for t, n in zip(targets, counts)]
    padded = pad_sequence(boxes, batch_first=True)  # (B, M, 4); padding rows are all zero
    is_ignore = pad_sequence(flags, batch_first=True)
    valid = pad_sequence([torch.ones(n, dtype=torch.bool, device=device) for n in counts], batch_first=True)
    is_face = valid & ~is_ignore
    num_slots = padded.shape[1]

    iou = _box_iou(padded.view(-1, 4), anchors).view(batch, num_slots, num_anchors)
    face_iou = iou.masked_fill(~is_face.unsqueeze(-1), -1.0)
    best_iou, matched = face_iou.max(dim=1)  # (B, A)
    positive = best_iou >= match_iou

    # Force-match each face to its best anchor; an IoU of 0 (a degenerate box) matches nothing.
    face_best_iou, face_best_anchor = face_iou.max(dim=2)  # (B, M)
    eligible = is_face & (face_best_iou > 0)
    claim_iou = torch.full((batch, num_anchors), -1.0, dtype=dtype, device=device)
    claim_iou.scatter_reduce_(1, face_best_anchor, face_best_iou.masked_fill(~eligible, -1.0), "amax")
    wins = eligible & (face_best_iou >= claim_iou.gather(1, face_best_anchor))
    face_index = torch.arange(num_slots, device=device).expand(batch, -1)
    owner = torch.full((batch, num_anchors), -1, dtype=torch.long, device=device)
    owner.scatter_reduce_(1, face_best_anchor, face_index.masked_fill(~wins, -1), "amax")
    forced = owner >= 0
    matched = torch.where(forced, owner, matched)
    positive |= forced

    ignore_overlap = iou.masked_fill(~(valid & is_ignore).unsqueeze(-1), -1.0).amax(dim=1)
    ignored = ~positive & (ignore_overlap >= ignore_iou)

    matched_boxes = padded.gather(1, matched.unsqueeze(-1).expand(-1, -1, 4))
    matched_boxes = torch.where(positive.unsqueeze(-1), matched_boxes, anchors.expand(batch, -1, -1))
    return AnchorMatch(positive, ignored, matched_boxes)


def weighted_loss(losses: dict[str, Tensor], class_weight: float, box_weight: float) -> Tensor:
    """The loss the optimiser minimises: ``class_weight * loss_cls + box_weight * loss_box``."""
    return class_weight * losses["loss_cls"] + box_weight * losses["loss_box"]


class MultiBoxLoss(nn.Module):
    """SSD's multibox loss, its classification and box parts returned apart (see :func:`weighted_loss`).

    Args:
        neg_pos_ratio: ``ce`` only: hard negatives mined per positive anchor, per image (may be
            fractional; the count is rounded up).
        box_loss: ``smooth_l1`` on encoded offsets, or ``giou``/``diou``/``ciou`` on decoded boxes.
        smooth_l1_beta: the smooth-L1 transition point.
        cls_loss: ``ce`` (softmax cross-entropy with hard-negative mining) or ``focal``
            (sigmoid focal loss on ``logit_face - logit_background`` over every non-ignored anchor).
        focal_alpha: focal loss weight of positives.
        focal_gamma: focal loss focusing exponent.
        match_iou: IoU for a positive anchor.
        ignore_iou: IoU with an ignore region that excludes an anchor from the loss.
        empty_image_negatives: ``ce`` only: negatives mined in an image without positives, so
            images without faces still teach "background" (torchvision's SSD mines none there).
        box_coder: the model's box coder; default torchvision SSD's weights (10, 10, 5, 5).
    """

    def __init__(
        self,
        neg_pos_ratio: float = 3.0,
        box_loss: str = "smooth_l1",
        smooth_l1_beta: float = 1.0,
        cls_loss: str = "ce",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        match_iou: float = 0.5,
        ignore_iou: float = 0.5,
        empty_image_negatives: int = 16,
        box_coder: BoxCoder | None = None,
    ) -> None:
        super().__init__()
        if cls_loss not in CLS_LOSSES:
            raise ValueError(f"unknown cls_loss {cls_loss!r}; allowed: {', '.join(CLS_LOSSES)}")
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"unknown box_loss {box_loss!r}; allowed: {', '.join(BOX_LOSSES)}")
        for name, value in (("neg_pos_ratio", neg_pos_ratio), ("smooth_l1_beta", smooth_l1_beta)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if not 0 <= focal_alpha <= 1:
            raise ValueError(f"focal_alpha must be in [0, 1], got {focal_alpha}")
        if focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma}")
        for name, value in (("match_iou", match_iou), ("ignore_iou", ignore_iou)):
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if isinstance(empty_image_negatives, bool) or not isinstance(empty_image_negatives, int):
            raise ValueError(f"empty_image_negatives must be an integer, got {empty_image_negatives!r}")
        if empty_image_negatives < 0:
            raise ValueError(f"empty_image_negatives must be >= 0, got {empty_image_negatives}")

        self.neg_pos_ratio = float(neg_pos_ratio)
        self.box_loss = box_loss
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.cls_loss = cls_loss
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.match_iou = float(match_iou)
        self.ignore_iou = float(ignore_iou)
        self.empty_image_negatives = empty_image_negatives
        self.box_coder = box_coder if box_coder is not None else BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))

    def forward(self, head_outputs: HeadOutputs, anchors: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Loss and counters for a batch: ``loss_fn(model(images), model.anchors(device), targets)``.

        Args:
            head_outputs: the model's ``HeadOutputs`` (or any pair): ``cls_logits`` (B, A, 2)
                logits (background, face) and ``bbox_regression`` (B, A, 4) offsets from ``anchors``.
            anchors: (A, 4) xyxy default boxes, shared by every image.
            targets: B dicts with ``boxes`` (M, 4) xyxy and optionally ``ignore`` (M,) bool.

        Returns:
            ``loss_cls``, ``loss_box`` (unweighted: :func:`weighted_loss` combines them), the counters ``num_pos``,
            ``num_neg`` (negatives in the loss) and ``images_without_positives``; all tensors.
            Sums are divided by ``max(1, num_pos)``.
        """
        cls_logits, bbox_regression = head_outputs
        batch, num_anchors = _check_shapes(cls_logits, bbox_regression, anchors, targets)
        anchors = anchors.float()
        match = match_anchors(anchors, targets, self.match_iou, self.ignore_iou)
        positive = match.positive
        negative = ~positive & ~match.ignored
        pos_per_image = positive.sum(dim=1)
        num_pos = pos_per_image.sum()
        normaliser = num_pos.clamp(min=1).to(torch.float32)

        logits = cls_logits.float()  # losses in fp32 even under autocast
        if self.cls_loss == "ce":
            per_anchor = F.cross_entropy(logits.reshape(-1, 2), positive.reshape(-1).long(), reduction="none").view(
                batch, num_anchors
            )
            negative = self._mine(per_anchor.detach(), negative, pos_per_image)
        else:
            per_anchor = sigmoid_focal_loss(
                logits[..., 1] - logits[..., 0],
                positive.to(logits.dtype),
                alpha=self.focal_alpha,
                gamma=self.focal_gamma,
                reduction="none",
            )
        loss_cls = torch.where(positive | negative, per_anchor, 0.0).sum() / normaliser

        box_per_anchor = self._box_loss(bbox_regression.float(), anchors, match.matched_boxes)
        loss_box = torch.where(positive, box_per_anchor, 0.0).sum() / normaliser

        return {
            "loss_cls": loss_cls,
            "loss_box": loss_box,
            "num_pos": num_pos,
            "num_neg": negative.sum(),
            "images_without_positives": (pos_per_image == 0).sum(),
        }

    def _mine(self, loss: Tensor, negative: Tensor, pos_per_image: Tensor) -> Tensor:
        """The hardest negatives per image: ``neg_pos_ratio`` per positive, or a fixed number."""
        quota = torch.where(
            pos_per_image > 0,
            pos_per_image.to(torch.float32) * self.neg_pos_ratio,
            float(self.empty_image_negatives),
        )
        # Rank of each anchor by loss within its image (torchvision SSD's sort-of-sort).
        ranking = loss.masked_fill(~negative, -math.inf)
        rank = ranking.argsort(dim=1, descending=True).argsort(dim=1)
        return negative & (rank < quota.unsqueeze(1))

    def _box_loss(self, codes: Tensor, anchors: Tensor, matched_boxes: Tensor) -> Tensor:
        """(B, A) box loss of every anchor (finite everywhere; only positives are summed)."""
        batch, num_anchors, _ = codes.shape
        flat_anchors = anchors.expand(batch, -1, -1).reshape(-1, 4)
        flat_targets = matched_boxes.reshape(-1, 4)
        if self.box_loss == "smooth_l1":
            target_codes = self.box_coder.encode_single(flat_targets, flat_anchors)
            per_coord = F.smooth_l1_loss(codes.reshape(-1, 4), target_codes, beta=self.smooth_l1_beta, reduction="none")
            return per_coord.sum(dim=-1).view(batch, num_anchors)
        predicted = self.box_coder.decode_single(codes.reshape(-1, 4), flat_anchors)
        return _IOU_LOSSES[self.box_loss](predicted, flat_targets, reduction="none").view(batch, num_anchors)


def _box_iou(boxes: Tensor, anchors: Tensor) -> Tensor:
    """torchvision's ``box_iou`` (N, A), the same arithmetic in the same order, so bit-identical.

    Each operation runs on contiguous (N, A) planes, one per coordinate, rather than on (N, A, 2)
    broadcasts, and the temporaries are reused in place: on one CPU thread (tiny SSD, batch 16)
    this took the loss from 22.3 to 17.8 ms a step, forward and backward (bench/README.md).
    """
    ax1, ay1, ax2, ay2 = anchors.t().contiguous()
    w = torch.minimum(boxes[:, 2:3], ax2).sub_(torch.maximum(boxes[:, 0:1], ax1)).clamp_(min=0)
    h = torch.minimum(boxes[:, 3:4], ay2).sub_(torch.maximum(boxes[:, 1:2], ay1)).clamp_(min=0)
    inter = w.mul_(h)
    area_boxes = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_anchors = (ax2 - ax1) * (ay2 - ay1)
    union = (area_boxes[:, None] + area_anchors).sub_(inter)
    return inter.div_(union)


def _ignore_flags(target: dict[str, Tensor], count: int, device: torch.device) -> Tensor:
    flags = target.get("ignore")
    if flags is None:
        return torch.zeros(count, dtype=torch.bool, device=device)
    flags = flags.to(device=device, dtype=torch.bool).reshape(-1)
    if flags.shape[0] != count:
        raise ValueError(f"target has {count} boxes but {flags.shape[0]} ignore flags")
    return flags


def _check_shapes(
    cls_logits: Tensor, bbox_regression: Tensor, anchors: Tensor, targets: list[dict[str, Tensor]]
) -> tuple[int, int]:
    if cls_logits.dim() != 3 or cls_logits.shape[-1] != 2:
        raise ValueError(f"cls_logits must be (B, A, 2), got {tuple(cls_logits.shape)}")
    batch, num_anchors, _ = cls_logits.shape
    if bbox_regression.shape != (batch, num_anchors, 4):
        raise ValueError(f"bbox_regression must be (B, A, 4) = ({batch}, {num_anchors}, 4), got {tuple(bbox_regression.shape)}")
    if anchors.shape != (num_anchors, 4):
        raise ValueError(f"anchors must be (A, 4) = ({num_anchors}, 4), got {tuple(anchors.shape)}")
    if len(targets) != batch:
        raise ValueError(f"got {len(targets)} targets for a batch of {batch} images")
    return batch, num_anchors
