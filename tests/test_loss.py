"""The weighted multibox loss: weights, mining, empty images, ignore regions, loss variants."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import box_iou

from model.loss import MultiBoxLoss, match_anchors, weighted_loss
from model.ssd import HeadOutputs, build_ssd

SIZE = 128
CODER = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def anchors() -> torch.Tensor:
    return build_ssd("tiny", input_size=SIZE).anchors()


def _target(boxes: list[list[float]], ignore: list[bool] | None = None) -> dict[str, torch.Tensor]:
    t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    flags = torch.tensor(ignore if ignore is not None else [False] * len(t), dtype=torch.bool)
    return {"boxes": t, "labels": torch.ones(len(t), dtype=torch.int64), "ignore": flags}


def _reference_positives(anchors: torch.Tensor, faces: list[list[float]]) -> torch.Tensor:
    """Positives for faces far apart: IoU >= 0.5, plus each face's best anchor."""
    iou = box_iou(torch.tensor(faces), anchors)
    positive = iou.max(dim=0).values >= 0.5
    positive[iou.argmax(dim=1)] = True
    return positive


def _outputs(num_images: int, num_anchors: int, seed: int = 0, requires_grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    cls = torch.randn(num_images, num_anchors, 2, generator=g).requires_grad_(requires_grad)
    reg = (0.5 * torch.randn(num_images, num_anchors, 4, generator=g)).requires_grad_(requires_grad)
    return cls, reg


FACES_A = [[10.0, 10.0, 42.0, 42.0], [70.0, 60.0, 120.0, 118.0]]
FACES_B = [[40.0, 30.0, 56.0, 48.0]]


def test_the_loss_returns_its_parts_unweighted_and_weighted_loss_combines_them(anchors):
    cls, reg = _outputs(2, len(anchors))
    targets = [_target(FACES_A), _target(FACES_B)]
    base = MultiBoxLoss()(HeadOutputs(cls, reg), anchors, targets)
    assert base["loss_cls"] > 0 and base["loss_box"] > 0 and "loss" not in base
    for cw, bw in [(1.0, 1.0), (0.5, 2.0), (2.0, 0.0), (0.0, 0.1)]:
        torch.testing.assert_close(weighted_loss(base, cw, bw), cw * base["loss_cls"] + bw * base["loss_box"])
    torch.testing.assert_close(weighted_loss(base, 1.0, 2.0) - weighted_loss(base, 1.0, 1.0), base["loss_box"])


def test_gradients_scale_with_the_weights(anchors):
    targets = [_target(FACES_A), _target(FACES_B)]

    def grads(cw: float, bw: float) -> tuple[torch.Tensor, torch.Tensor]:
        cls, reg = _outputs(2, len(anchors), requires_grad=True)
        weighted_loss(MultiBoxLoss()(HeadOutputs(cls, reg), anchors, targets), cw, bw).backward()
        return cls.grad, reg.grad

    cls_1, reg_1 = grads(1.0, 1.0)
    cls_2, reg_2 = grads(1.0, 3.0)
    cls_3, reg_3 = grads(0.25, 3.0)
    assert reg_1.abs().sum() > 0 and cls_1.abs().sum() > 0
    torch.testing.assert_close(reg_2, 3.0 * reg_1)
    torch.testing.assert_close(cls_2, cls_1)
    torch.testing.assert_close(cls_3, 0.25 * cls_1)
    torch.testing.assert_close(reg_3, reg_2)


def test_matching_follows_iou_and_force_matches_small_faces(anchors):
    faces = FACES_A + [[100.0, 8.0, 106.0, 14.0]]  # a 6 px face: no anchor reaches IoU 0.5
    match = match_anchors(anchors, [_target(faces)])
    expected = _reference_positives(anchors, faces)
    assert torch.equal(match.positive[0], expected)
    assert box_iou(torch.tensor(faces[2:]), anchors).max() < 0.5
    tiny_positive = (match.matched_boxes[0] == torch.tensor(faces[2])).all(dim=1) & match.positive[0]
    assert tiny_positive.sum() == 1
    # Every positive anchor carries a real face box; the others carry their own anchor.
    is_face = (match.matched_boxes[0].unsqueeze(1) == torch.tensor(faces)).all(dim=2).any(dim=1)
    assert torch.equal(is_face, match.positive[0])


def test_force_matching_conflicts_are_resolved_by_iou(anchors):
    a = anchors[5].tolist()  # a 32 px anchor
    near = [a[0] + 1, a[1] + 1, a[2] + 1, a[3] + 1]  # best anchor is also anchors[5], lower IoU
    for faces in ([a, near], [near, a]):
        match = match_anchors(anchors, [_target(faces)], match_iou=0.99)
        assert match.positive[0, 5]
        assert match.matched_boxes[0, 5].tolist() == a
    # Duplicate faces: one owner, the same on every call.
    first = match_anchors(anchors, [_target([near, near])], match_iou=0.99)
    again = match_anchors(anchors, [_target([near, near])], match_iou=0.99)
    assert first.positive.sum() == 1
    assert torch.equal(first.matched_boxes, again.matched_boxes)


@pytest.mark.parametrize("ratio", [0.5, 1.0, 3.0, 7.5])
def test_neg_pos_ratio_sets_the_number_of_mined_negatives(anchors, ratio: float):
    cls, reg = _outputs(2, len(anchors))
    targets = [_target(FACES_A), _target(FACES_B)]
    out = MultiBoxLoss(neg_pos_ratio=ratio)(HeadOutputs(cls, reg), anchors, targets)
    pos = [int(_reference_positives(anchors, f).sum()) for f in (FACES_A, FACES_B)]
    assert out["num_pos"] == sum(pos)
    assert out["num_neg"] == sum(math.ceil(ratio * p) for p in pos)


def test_mining_takes_the_hardest_negatives(anchors):
    faces = [anchors[40].tolist()]  # exactly an anchor
    positive = _reference_positives(anchors, faces)
    num_pos = int(positive.sum())
    cls = torch.zeros(1, len(anchors), 2)  # every anchor costs log 2 ...
    negatives = torch.nonzero(~positive).squeeze(1)
    hard = negatives[torch.randperm(len(negatives), generator=torch.Generator().manual_seed(1))[: 5 * num_pos]]
    cls[0, hard, 1] = 4.0  # ... except these confident false positives
    hard_ce = F.cross_entropy(torch.tensor([[0.0, 4.0]]), torch.tensor([0])).item()
    out = MultiBoxLoss(neg_pos_ratio=3.0)(HeadOutputs(cls, torch.zeros(1, len(anchors), 4)), anchors, [_target(faces)])
    # 3 * num_pos negatives, all of them from the hard set.
    expected = (num_pos * LN2 + 3 * num_pos * hard_ce) / num_pos
    assert out["loss_cls"].item() == pytest.approx(expected, rel=1e-5)


def test_images_without_faces_contribute_mined_negatives(anchors):
    cls, reg = _outputs(2, len(anchors))
    targets = [_target(FACES_B), _target([])]
    out = MultiBoxLoss(neg_pos_ratio=3.0, empty_image_negatives=16)(HeadOutputs(cls, reg), anchors, targets)
    pos = int(_reference_positives(anchors, FACES_B).sum())
    assert out["num_pos"] == pos
    assert out["num_neg"] == 3 * pos + 16
    assert out["images_without_positives"] == 1
    assert torch.isfinite(out["loss_cls"]) and torch.isfinite(out["loss_box"])
    # The empty image adds loss: more than the same batch with it mining nothing.
    without = MultiBoxLoss(empty_image_negatives=0)(HeadOutputs(cls, reg), anchors, targets)
    assert out["loss_cls"] > without["loss_cls"]
    torch.testing.assert_close(out["loss_box"], without["loss_box"])


def test_a_batch_without_faces_is_finite_and_teaches_background(anchors):
    cls = torch.zeros(3, len(anchors), 2, requires_grad=True)
    reg = torch.randn(3, len(anchors), 4, requires_grad=True)
    out = MultiBoxLoss(empty_image_negatives=16)(HeadOutputs(cls, reg), anchors, [_target([])] * 3)
    assert out["num_pos"] == 0 and out["num_neg"] == 48 and out["images_without_positives"] == 3
    assert out["loss_box"] == 0
    assert out["loss_cls"].item() == pytest.approx(48 * LN2, rel=1e-5)  # normalised by max(1, 0)
    weighted_loss(out, 1.0, 1.0).backward()
    assert torch.isfinite(cls.grad).all() and torch.isfinite(reg.grad).all()
    assert (cls.grad[..., 1] > 0).sum() == 48  # pushes the mined anchors towards background
    none = MultiBoxLoss(empty_image_negatives=0)(HeadOutputs(cls, reg), anchors, [_target([])] * 3)
    assert weighted_loss(none, 1.0, 1.0) == 0


def test_ignore_regions_give_no_positives_and_no_mined_negatives(anchors):
    region = [20.0, 20.0, 84.0, 84.0]
    overlapping = box_iou(torch.tensor([region]), anchors)[0] >= 0.5
    assert overlapping.sum() > 0
    cls = torch.zeros(1, len(anchors), 2)
    cls[0, overlapping, 1] = 20.0  # would be the hardest negatives by far if they were negatives
    reg = torch.zeros(1, len(anchors), 4)
    loss_fn = MultiBoxLoss(empty_image_negatives=16)

    out = loss_fn(HeadOutputs(cls, reg), anchors, [_target([region], ignore=[True])])
    assert out["num_pos"] == 0 and out["images_without_positives"] == 1
    assert out["loss_cls"].item() == pytest.approx(16 * LN2, rel=1e-5)  # only log-2 anchors mined
    match = match_anchors(anchors, [_target([region], ignore=[True])])
    assert torch.equal(match.ignored[0], overlapping)

    # Beside a real face, an ignore region still removes its anchors from the negatives.
    face = [96.0, 4.0, 124.0, 32.0]
    mixed = loss_fn(HeadOutputs(cls, reg), anchors, [_target([face, region], ignore=[False, True])])
    assert mixed["num_pos"] == _reference_positives(anchors, [face]).sum()
    assert mixed["loss_cls"] < 5.0
    # Without the ignore flag the region is a face and its anchors are positives.
    as_face = loss_fn(HeadOutputs(cls, reg), anchors, [_target([face, region])])
    assert as_face["num_pos"] > mixed["num_pos"]


@pytest.mark.parametrize("box_loss", ["smooth_l1", "giou", "diou", "ciou"])
def test_box_losses_decrease_towards_the_target(anchors, box_loss: str):
    faces = [[30.0, 24.0, 70.0, 70.0]]
    positive = _reference_positives(anchors, faces)
    exact = torch.zeros(1, len(anchors), 4)
    exact[0, positive] = CODER.encode_single(torch.tensor(faces).expand(int(positive.sum()), 4), anchors[positive])
    cls = torch.zeros(1, len(anchors), 2)
    loss_fn = MultiBoxLoss(box_loss=box_loss)
    values = [loss_fn(HeadOutputs(cls, t * exact), anchors, [_target(faces)])["loss_box"].item() for t in (0.0, 0.5, 0.9, 1.0)]
    assert all(math.isfinite(v) for v in values)
    assert values[0] > values[1] > values[2] > values[3]
    assert values[3] == pytest.approx(0.0, abs=1e-4)


def test_smooth_l1_beta_changes_the_box_loss(anchors):
    cls, reg = _outputs(1, len(anchors))
    targets = [_target(FACES_A)]
    small = MultiBoxLoss(smooth_l1_beta=0.1)(HeadOutputs(cls, reg), anchors, targets)["loss_box"]
    large = MultiBoxLoss(smooth_l1_beta=1.0)(HeadOutputs(cls, reg), anchors, targets)["loss_box"]
    assert small > large  # a smaller beta is closer to L1, which is above smooth-L1 everywhere


def test_focal_loss_uses_every_non_ignored_anchor(anchors):
    faces = FACES_A
    region = [0.0, 80.0, 40.0, 128.0]
    targets = [_target(faces + [region], ignore=[False, False, True])]
    cls, reg = _outputs(1, len(anchors))
    positive = _reference_positives(anchors, faces)
    ignored = ~positive & (box_iou(torch.tensor([region]), anchors)[0] >= 0.5)
    used = ~ignored

    out = MultiBoxLoss(cls_loss="focal", focal_alpha=0.5, focal_gamma=0.0)(HeadOutputs(cls, reg), anchors, targets)
    assert out["num_pos"] == positive.sum()
    assert out["num_neg"] == (used & ~positive).sum()
    # With gamma 0 and alpha 0.5 the focal loss is half the binary cross-entropy of the face logit.
    logit = cls[0, :, 1] - cls[0, :, 0]
    bce = F.binary_cross_entropy_with_logits(logit[used], positive[used].float(), reduction="sum")
    assert out["loss_cls"].item() == pytest.approx(0.5 * bce.item() / positive.sum().item(), rel=1e-5)

    focal = MultiBoxLoss(cls_loss="focal")
    before = focal(HeadOutputs(cls, reg), anchors, targets)["loss_cls"]
    better = cls.clone()
    better[0, positive, 1] += 3.0
    assert torch.isfinite(before)
    assert focal(HeadOutputs(better, reg), anchors, targets)["loss_cls"] < before
    empty = focal(HeadOutputs(cls, reg), anchors, [_target([])])
    assert torch.isfinite(empty["loss_cls"]) and empty["num_pos"] == 0


def test_a_few_steps_lower_the_loss_of_the_tiny_ssd():
    torch.manual_seed(0)
    model = build_ssd("tiny", input_size=SIZE)
    anchors = model.anchors()
    images = 0.3 * torch.rand(4, 3, SIZE, SIZE)
    targets = []
    for i, (x, y, side) in enumerate([(10, 12, 40), (60, 50, 30), (20, 70, 50), (80, 16, 24)]):
        images[i, :, y : y + side, x : x + side] = 1.0  # a white square on noise
        targets.append(_target([[x, y, x + side, y + side]]))
    loss_fn = MultiBoxLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = weighted_loss(loss_fn(model(images), anchors, targets), 1.0, 1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]


def test_constructor_validates_its_arguments():
    with pytest.raises(ValueError, match="ce, focal"):
        MultiBoxLoss(cls_loss="bce")
    with pytest.raises(ValueError, match="smooth_l1, giou, diou, ciou"):
        MultiBoxLoss(box_loss="l2")
    with pytest.raises(ValueError, match="neg_pos_ratio"):
        MultiBoxLoss(neg_pos_ratio=0.0)
    with pytest.raises(ValueError, match="match_iou"):
        MultiBoxLoss(match_iou=1.5)
    with pytest.raises(ValueError, match="empty_image_negatives"):
        MultiBoxLoss(empty_image_negatives=-1)


def test_forward_checks_shapes(anchors):
    loss_fn = MultiBoxLoss()
    cls, reg = _outputs(2, len(anchors))
    with pytest.raises(ValueError, match="targets for a batch of 2"):
        loss_fn(HeadOutputs(cls, reg), anchors, [_target(FACES_B)])
    with pytest.raises(ValueError, match="anchors must be"):
        loss_fn(HeadOutputs(cls, reg), anchors[:-1], [_target(FACES_B)] * 2)
    with pytest.raises(ValueError, match="ignore flags"):
        loss_fn(HeadOutputs(cls, reg), anchors, [_target(FACES_B), {"boxes": torch.zeros(2, 4), "ignore": torch.zeros(1)}])
