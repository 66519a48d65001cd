"""Post-processing: decoding, thresholds, hard NMS and Soft-NMS on hand-made boxes."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from model.postprocess import postprocess, soft_nms

CODER = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))


def _logits(probs: list[float]) -> torch.Tensor:
    """(A, 2) logits whose softmax face probability is ``probs``."""
    p = torch.tensor(probs, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=-1).float()


def _run(anchors: list[list[float]], probs: list[float], codes: torch.Tensor | None = None, **kwargs):
    """Postprocess one image whose predicted boxes are the anchors themselves (zero offsets)."""
    a = torch.tensor(anchors, dtype=torch.float32)
    reg = torch.zeros(1, len(anchors), 4) if codes is None else codes.unsqueeze(0)
    kwargs.setdefault("score_threshold", 0.05)
    return postprocess(_logits(probs).unsqueeze(0), reg, a, CODER, 100, **kwargs)[0]


# A and B overlap with IoU 0.5 (B is A's top half); C stands alone.
BOX_A, BOX_B, BOX_C = [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [50.0, 50.0, 60.0, 60.0]


def test_hard_nms_suppresses_the_overlapping_box():
    out = _run([BOX_A, BOX_B, BOX_C], [0.9, 0.8, 0.7], nms="nms", nms_iou=0.45)
    assert out["boxes"].tolist() == [BOX_A, BOX_C]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7], abs=1e-6)


def test_soft_nms_linear_keeps_the_overlapping_box_with_a_decayed_score():
    out = _run([BOX_A, BOX_B, BOX_C], [0.9, 0.8, 0.7], nms="soft_linear", nms_iou=0.45)
    # B: IoU 0.5 with A > 0.45, so 0.8 * (1 - 0.5) = 0.4, now ranked below C.
    assert out["boxes"].tolist() == [BOX_A, BOX_C, BOX_B]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7, 0.4], abs=1e-6)


def test_soft_nms_linear_leaves_boxes_below_the_threshold_alone():
    out = _run([BOX_A, BOX_B, BOX_C], [0.9, 0.8, 0.7], nms="soft_linear", nms_iou=0.6)
    assert out["boxes"].tolist() == [BOX_A, BOX_B, BOX_C]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.8, 0.7], abs=1e-6)


def test_soft_nms_gaussian_decays_by_exp_of_squared_iou():
    out = _run([BOX_A, BOX_B, BOX_C], [0.9, 0.8, 0.7], nms="soft_gaussian", soft_nms_sigma=0.5)
    # B: 0.8 * exp(-0.5**2 / 0.5) = 0.485, whatever nms_iou says (the Gaussian has no threshold).
    assert out["boxes"].tolist() == [BOX_A, BOX_C, BOX_B]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7, 0.8 * math.exp(-0.25 / 0.5)], abs=1e-6)
    # A wider Gaussian decays less: B (0.8 * exp(-0.125) = 0.706) stays ahead of C, where the
    # linear method at the same overlap would give 0.4.
    wide = _run([BOX_A, BOX_B, BOX_C], [0.9, 0.8, 0.7], nms="soft_gaussian", soft_nms_sigma=2.0, nms_iou=0.9)
    assert wide["boxes"].tolist() == [BOX_A, BOX_B, BOX_C]
    assert wide["scores"].tolist() == pytest.approx([0.9, 0.8 * math.exp(-0.25 / 2.0), 0.7], abs=1e-6)


def test_soft_nms_decays_sequentially():
    # A-B and A-C overlap with IoU 0.6, B-C with IoU 0.2.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 6.0], [0.0, 4.0, 10.0, 10.0]])
    scores = torch.tensor([0.9, 0.85, 0.8])

    keep, new = soft_nms(boxes, scores, "linear", iou_threshold=0.3, score_threshold=0.01)
    assert keep.tolist() == [0, 1, 2]
    # After A: B = 0.85 * 0.4, C = 0.8 * 0.4; after B: C untouched (IoU 0.2 < 0.3).
    assert new.tolist() == pytest.approx([0.9, 0.34, 0.32], abs=1e-6)

    keep, new = soft_nms(boxes, scores, "gaussian", sigma=0.5, score_threshold=0.01)
    b = 0.85 * math.exp(-0.36 / 0.5)
    c = 0.8 * math.exp(-0.36 / 0.5) * math.exp(-0.04 / 0.5)
    assert keep.tolist() == [0, 1, 2]
    assert new.tolist() == pytest.approx([0.9, b, c], abs=1e-6)

    # Decayed scores below the threshold are dropped.
    keep, new = soft_nms(boxes, scores, "linear", iou_threshold=0.3, score_threshold=0.35)
    assert keep.tolist() == [0]


def test_soft_nms_empty_and_bad_method():
    keep, new = soft_nms(torch.zeros(0, 4), torch.zeros(0), "linear")
    assert keep.shape == (0,) and new.shape == (0,)
    with pytest.raises(ValueError, match="linear, gaussian"):
        soft_nms(torch.zeros(1, 4), torch.ones(1), "box")  # type: ignore[arg-type]


@pytest.mark.parametrize("nms", ["nms", "soft_linear", "soft_gaussian"])
def test_score_threshold_max_detections_and_order(nms: str):
    # 30 disjoint boxes inside the image with shuffled scores 0.01 .. 0.30.
    anchors = [[10.0 * (i % 10), 10.0 * (i // 10), 10.0 * (i % 10) + 8, 10.0 * (i // 10) + 8] for i in range(30)]
    order = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    probs = [0.01 * (int(i) + 1) for i in order]
    out = _run(anchors, probs, nms=nms, score_threshold=0.095)
    scores = out["scores"]
    assert len(scores) == 21  # 0.10 .. 0.30
    assert torch.all(scores >= 0.095)
    assert torch.all(scores[:-1] >= scores[1:])
    assert out["boxes"].dtype == torch.float32 and scores.dtype == torch.float32

    capped = _run(anchors, probs, nms=nms, score_threshold=0.095, max_detections=5)
    assert capped["scores"].tolist() == pytest.approx([0.30, 0.29, 0.28, 0.27, 0.26], abs=1e-6)

    few = _run(anchors, probs, nms=nms, score_threshold=0.0, topk_candidates=3)
    assert len(few["scores"]) == 3


@pytest.mark.parametrize("nms", ["nms", "soft_gaussian"])
def test_boxes_are_decoded_and_clipped(nms: str):
    anchors = [[-5.0, -5.0, 15.0, 15.0], [40.0, 40.0, 60.0, 60.0], [90.0, 20.0, 110.0, 40.0]]
    # Move the second box right by 10 px: dx = 10 * (10 / 20 px anchor width) = 5.
    codes = torch.tensor([[0.0, 0.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    out = _run(anchors, [0.9, 0.8, 0.7], codes=codes, nms=nms)
    expected = torch.tensor([[0.0, 0.0, 15.0, 15.0], [50.0, 40.0, 70.0, 60.0], [90.0, 20.0, 100.0, 40.0]])
    torch.testing.assert_close(out["boxes"], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("nms", ["nms", "soft_linear", "soft_gaussian"])
def test_boxes_clipped_to_nothing_are_dropped(nms: str):
    # Two boxes entirely outside the image clip to zero area (their IoU would be 0 / 0).
    out = _run([[120.0, 0.0, 130.0, 10.0], [140.0, 0.0, 150.0, 10.0], BOX_A], [0.9, 0.8, 0.7], nms=nms)
    assert out["boxes"].tolist() == [BOX_A]
    assert torch.isfinite(out["scores"]).all()


def test_images_in_a_batch_do_not_suppress_each_other():
    anchors = torch.tensor([BOX_A, BOX_C])
    logits = torch.stack([_logits([0.9, 0.02]), _logits([0.8, 0.6])])
    out = postprocess(logits, torch.zeros(2, 2, 4), anchors, CODER, 100, nms="nms")
    assert out[0]["boxes"].tolist() == [BOX_A]
    assert out[1]["boxes"].tolist() == [BOX_A, BOX_C]
    assert out[1]["scores"].tolist() == pytest.approx([0.8, 0.6], abs=1e-6)


def test_nothing_above_threshold_gives_empty_tensors():
    out = _run([BOX_A, BOX_C], [0.01, 0.02], score_threshold=0.5)
    assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,)


def test_bad_arguments():
    with pytest.raises(ValueError, match="soft_linear"):
        _run([BOX_A], [0.9], nms="greedy")
    with pytest.raises(ValueError, match="shapes disagree"):
        postprocess(torch.zeros(1, 2, 2), torch.zeros(1, 3, 4), torch.zeros(2, 4), CODER, 100)
