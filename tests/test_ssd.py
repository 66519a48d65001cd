"""The SSD model: shapes, anchors, argument checks, prior initialisation, predict."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from model.backbones import TinyBackbone, probe_feature_maps
from model.ssd import FaceSSD, HeadOutputs, build_ssd


@pytest.fixture(scope="module")
def tiny() -> FaceSSD:
    torch.manual_seed(0)
    return build_ssd("tiny", input_size=256)


def test_tiny_output_shapes_and_anchor_count(tiny: FaceSSD):
    out = tiny(torch.rand(2, 3, 256, 256))
    assert isinstance(out, HeadOutputs)
    num_anchors = 2 * (32 * 32 + 16 * 16 + 8 * 8 + 4 * 4)  # strides 8..64, 2 square anchors each
    assert tiny.num_anchors == num_anchors
    assert out.cls_logits.shape == (2, num_anchors, 2)
    assert out.bbox_regression.shape == (2, num_anchors, 4)
    anchors = tiny.anchors()
    assert anchors.shape == (num_anchors, 4) and anchors.dtype == torch.float32
    assert tiny.input_size == 256
    assert sum(p.numel() for p in tiny.backbone.parameters()) < 500_000


def test_tiny_backbone_strides():
    shapes = probe_feature_maps(TinyBackbone(), 256)
    assert [(s.height, s.width) for s in shapes] == [(32, 32), (16, 16), (8, 8), (4, 4)]
    real = TinyBackbone().eval()(torch.zeros(1, 3, 256, 256))
    assert [tuple(f.shape[1:]) for f in real.values()] == [tuple(s) for s in shapes]


def test_anchors_cover_small_to_large_faces(tiny: FaceSSD):
    anchors = tiny.anchors()
    sides = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    assert torch.allclose(sides, heights)  # square face anchors by default
    assert sides.min() == pytest.approx(32.0)  # 4 x the finest stride (8)
    assert sides.max() == pytest.approx(256.0)
    assert len(torch.unique(sides.round())) >= 6
    # Any face from 24 px to the full image has an anchor with IoU >= 0.5 near the centre.
    for side in (24.0, 40.0, 64.0, 100.0, 180.0, 250.0):
        c = 128.0
        face = torch.tensor([[c - side / 2, c - side / 2, c + side / 2, c + side / 2]])
        assert box_iou(face, anchors).max() >= 0.5, side
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert centres.min() > 0 and centres.max() < 256


def test_anchors_are_cached_per_device_and_dtype(tiny: FaceSSD):
    first = tiny.anchors()
    assert tiny.anchors() is first
    assert tiny.anchors("cpu", torch.float32) is first
    double = tiny.anchors(dtype=torch.float64)
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), first)


def test_anchor_arguments_override_the_defaults():
    wide = build_ssd("tiny", input_size=128, aspect_ratios=[[2.0]] * 4)
    square = build_ssd("tiny", input_size=128)
    assert wide.num_anchors == 2 * square.num_anchors
    a = wide.anchors()
    ratios = (a[:, 2] - a[:, 0]) / (a[:, 3] - a[:, 1])
    assert torch.isclose(ratios, torch.tensor(2.0), rtol=1e-3).any()
    assert wide(torch.rand(1, 3, 128, 128)).cls_logits.shape[1] == wide.num_anchors

    scaled = build_ssd("tiny", input_size=128, anchor_scales=[0.1, 0.2, 0.3, 0.4, 0.5])
    sides = scaled.anchors()[:, 2] - scaled.anchors()[:, 0]
    assert sides.min() == pytest.approx(12.8, rel=1e-4)


def test_other_backbones_build_and_agree_with_their_anchors():
    # Smallest inputs these backbones accept (cheap forward passes), no pretrained weights.
    for name, size in (("mobilenet_v3", 288), ("vgg16", 268)):
        model = build_ssd(name, input_size=size).eval()
        with torch.no_grad():
            out = model(torch.rand(1, 3, size, size))
        anchors = model.anchors()
        assert out.cls_logits.shape == (1, anchors.shape[0], 2), name
        assert out.bbox_regression.shape == (1, anchors.shape[0], 4), name
        assert anchors.shape[0] == model.num_anchors
        assert torch.isfinite(out.cls_logits).all()


def test_initial_face_probability_is_the_prior():
    images = torch.rand(2, 3, 128, 128)
    for prior in (0.01, 0.1):
        torch.manual_seed(0)
        model = build_ssd("tiny", input_size=128, prior_prob=prior)
        with torch.no_grad():
            face = model(images).cls_logits.softmax(dim=-1)[..., 1]
        assert face.mean().item() == pytest.approx(prior, rel=0.5)
        assert face.median().item() == pytest.approx(prior, rel=0.5)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown backbone 'resnet'; allowed: tiny, mobilenet_v3, vgg16"):
        build_ssd("resnet")
    with pytest.raises(ValueError, match=r"input_size=32 is too small .*'tiny'.* use input_size >= 33"):
        build_ssd("tiny", input_size=32)
    with pytest.raises(ValueError, match=r"too small for backbone 'vgg16'.* use input_size >= 268"):
        build_ssd("vgg16", input_size=256)
    with pytest.raises(ValueError, match="aspect_ratios has 3 lists but backbone 'tiny' has 4 feature levels"):
        build_ssd("tiny", aspect_ratios=[[], [], []])
    with pytest.raises(ValueError, match="anchor_scales needs 5 values"):
        build_ssd("tiny", anchor_scales=[0.1, 0.2, 0.4, 0.8])
    with pytest.raises(ValueError, match="anchor_scales must all be > 0"):
        build_ssd("tiny", anchor_scales=[0.1, 0.2, 0.4, 0.8, -1.0])
    with pytest.raises(ValueError, match="prior_prob"):
        build_ssd("tiny", prior_prob=0.0)
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_ssd("tiny", pretrained_backbone=True)


def test_forward_rejects_wrong_image_sizes(tiny: FaceSSD):
    with pytest.raises(ValueError, match=r"\(B, 3, 256, 256\), got \(1, 3, 300, 300\)"):
        tiny(torch.rand(1, 3, 300, 300))


def test_predict_returns_detections_and_keeps_the_mode(tiny: FaceSSD):
    tiny.train()
    results = tiny.predict(torch.rand(2, 3, 256, 256), score_threshold=0.0, max_detections=7)
    assert tiny.training
    assert len(results) == 2
    for r in results:
        assert r["boxes"].shape == (7, 4) and r["scores"].shape == (7,)
        assert (r["boxes"] >= 0).all() and (r["boxes"] <= 256).all()
        assert torch.all(r["scores"][:-1] >= r["scores"][1:])
    # With the prior at 0.01 nothing clears the default threshold at initialisation.
    assert all(len(r["scores"]) == 0 for r in tiny.predict(torch.rand(1, 3, 256, 256)))


def test_normalisation_uses_imagenet_statistics(tiny: FaceSSD):
    torch.testing.assert_close(tiny.image_mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    torch.testing.assert_close(tiny.image_std.flatten(), torch.tensor([0.229, 0.224, 0.225]))
    assert "image_mean" in dict(tiny.named_buffers())
