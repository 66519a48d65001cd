"""The SSD augmentation: square float output, boxes inside the image and aligned with their flags,
exact horizontal flips, face-less images, determinism."""

from __future__ import annotations

import pickle

import pytest
import torch
from torchvision import tv_tensors

from model.data.transforms import FaceIoUCrop, build_eval_transforms, build_train_transforms

SEEDS = range(40)
pytestmark = pytest.mark.usefixtures("one_thread")


def _sample(n_faces: int, height: int = 120, width: int = 160) -> tuple[tv_tensors.Image, dict]:
    """A textured uint8 image and ``n_faces`` boxes; ``labels`` are box ids so alignment is checkable."""
    g = torch.Generator().manual_seed(n_faces * 1000 + height + width)
    image = tv_tensors.Image(torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g))
    xy = torch.rand(n_faces, 2, generator=g) * torch.tensor([width - 20, height - 20])
    wh = 4 + torch.rand(n_faces, 2, generator=g) * 30
    boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([width, height]))], dim=1)
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
        "labels": torch.arange(n_faces, dtype=torch.int64),
        "ignore": torch.arange(n_faces) % 3 == 0,
    }
    return image, target


@pytest.mark.parametrize("n_faces", [0, 1, 12])
def test_train_output_is_square_float_in_unit_range(n_faces: int) -> None:
    transform = build_train_transforms(96)
    for seed in range(10):
        torch.manual_seed(seed)
        image, target = transform(*_sample(n_faces))
        assert type(image) is torch.Tensor and image.shape == (3, 96, 96) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1:] == (4,)


def test_boxes_stay_inside_the_image_and_aligned_with_their_flags() -> None:
    transform = build_train_transforms(128)
    original_ignore = torch.arange(12) % 3 == 0
    dropped_some = False
    for seed in SEEDS:
        torch.manual_seed(seed)
        _, target = transform(*_sample(12))
        boxes, ids, ignore = target["boxes"], target["labels"], target["ignore"]
        assert len(boxes) == len(ids) == len(ignore)
        assert (boxes >= 0).all() and (boxes <= 128).all(), f"seed {seed}: box outside the image"
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        # Every surviving box carries the flag of the face it came from.
        assert torch.equal(ignore, original_ignore[ids]), f"seed {seed}: flags misaligned"
        dropped_some |= len(ids) < 12
        assert len(ids) >= 1, "an accepted IoU crop contains at least one face centre"
    assert dropped_some, "the IoU crop never dropped a face: the alignment check was vacuous"


def test_hflip_mirrors_boxes_and_pixels_exactly() -> None:
    size = 64
    transform = build_train_transforms(size, photometric=False, zoom_out=False, iou_crop=False, hflip=True)
    image, target = _sample(5, height=size, width=size)  # already at the input size: no resampling
    boxes = target["boxes"].as_subclass(torch.Tensor)
    mirrored = torch.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], dim=1)
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out_image, out = transform(image, target)
        out_pixels = (out_image * 255).round().to(torch.uint8)
        pixels = image.as_subclass(torch.Tensor)
        if torch.equal(out["boxes"], mirrored):
            assert torch.equal(out_pixels, pixels.flip(-1))
            seen.add("flipped")
        else:
            assert torch.equal(out["boxes"], boxes) and torch.equal(out_pixels, pixels)
            seen.add("kept")
        assert torch.equal(out["ignore"], target["ignore"])
    assert seen == {"flipped", "kept"}


def test_images_without_faces_pass_every_transform_and_are_cropped_too() -> None:
    image, target = _sample(0)
    full = build_train_transforms(64)
    for seed in SEEDS:
        torch.manual_seed(seed)
        out_image, out = full(image, target)
        assert out_image.shape == (3, 64, 64)
        assert out["boxes"].shape == (0, 4) and out["ignore"].shape == (0,) and out["labels"].shape == (0,)
    # torchvision's RandomIoUCrop never crops a face-less image; ours does, sometimes.
    crop_only = build_train_transforms(64, photometric=False, zoom_out=False, iou_crop=True, hflip=False)
    whole = build_eval_transforms(64)(image, target)[0]
    cropped = 0
    for seed in range(20):
        torch.manual_seed(seed)
        cropped += not torch.equal(crop_only(image, target)[0], whole)
    assert 0 < cropped < 20


def test_iou_crop_accepts_only_crops_that_meet_the_minimum_iou() -> None:
    image, target = _sample(6, height=120, width=160)
    boxes = target["boxes"].as_subclass(torch.Tensor)
    crop = FaceIoUCrop(sampler_options=[0.3])
    for seed in range(30):
        torch.manual_seed(seed)
        p = crop.make_params([image, target["boxes"]])
        left, top, right, bottom = p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"]
        assert 0 <= left < right <= 160 and 0 <= top < bottom <= 120
        assert 0.5 <= p["width"] / p["height"] <= 2.0 and p["width"] >= int(0.3 * 160) and p["height"] >= int(0.3 * 120)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = (centres[:, 0] > left) & (centres[:, 0] < right) & (centres[:, 1] > top) & (centres[:, 1] < bottom)
        assert torch.equal(p["is_within_crop_area"], inside)
        # IoU of each inside face with the crop, computed here independently of torchvision.ops.
        ix = (boxes[:, 2].clamp(max=right) - boxes[:, 0].clamp(min=left)).clamp(min=0)
        iy = (boxes[:, 3].clamp(max=bottom) - boxes[:, 1].clamp(min=top)).clamp(min=0)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        iou = ix * iy / (area + p["width"] * p["height"] - ix * iy)
        assert iou[inside].max() >= 0.3 - 1e-6


def test_the_iou_shortcut_keeps_the_draws_of_the_full_check() -> None:
    class FullCheck(FaceIoUCrop):
        @staticmethod
        def out_of_reach(min_iou: float, largest_face: float, crop_areas: torch.Tensor) -> bool:
            return False

    shortcuts = 0
    for seed in range(40):
        image, target = _sample(40 + seed, height=480, width=640)  # crowds of faces
        results = []
        for crop in (FaceIoUCrop(), FullCheck()):
            torch.manual_seed(seed)
            results.append((crop.make_params([image, target["boxes"]]), torch.rand(1)))
        (ours, after), (full, after_full) = results
        assert ours.keys() == full.keys() and torch.equal(after, after_full)
        for key, value in ours.items():
            assert torch.equal(value, full[key]) if isinstance(value, torch.Tensor) else value == full[key]
        boxes = target["boxes"]
        largest = float(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).max())
        shortcuts += FaceIoUCrop.out_of_reach(0.9, largest, torch.tensor([0.3 * 0.3 * 480 * 640]))
    assert shortcuts > 20  # the samples' faces are small enough for the shortcut to matter


def test_same_seed_same_sample() -> None:
    transform = build_train_transforms(80)
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        outputs.append([transform(*_sample(6)) for _ in range(5)])
    for (im_a, t_a), (im_b, t_b) in zip(*outputs):
        assert torch.equal(im_a, im_b) and torch.equal(t_a["boxes"], t_b["boxes"])
        assert torch.equal(t_a["ignore"], t_b["ignore"])


def test_eval_keeps_every_face_and_scales_boxes_to_the_square_input() -> None:
    image, target = _sample(12, height=120, width=160)
    out_image, out = build_eval_transforms(60)(image, target)
    assert out_image.shape == (3, 60, 60) and out_image.dtype == torch.float32
    expected = target["boxes"].as_subclass(torch.Tensor) * torch.tensor([60 / 160, 60 / 120, 60 / 160, 60 / 120])
    torch.testing.assert_close(out["boxes"], expected)
    assert torch.equal(out["labels"], target["labels"]) and torch.equal(out["ignore"], target["ignore"])


def test_transforms_pickle_for_spawned_workers() -> None:
    transform = pickle.loads(pickle.dumps(build_train_transforms(64)))
    torch.manual_seed(0)
    assert transform(*_sample(3))[0].shape == (3, 64, 64)
