"""The fast hue step and the photometric distortion built on it, against torchvision's own."""

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from model.data.colour import PhotometricDistort, adjust_hue


def _hard_pixels() -> torch.Tensor:
    """Random colours plus every tie torchvision's tie rule decides: greys, black, white, two equal
    maxima, pure and 8-bit colours."""
    torch.manual_seed(0)
    image = torch.rand(3, 24, 24)
    image[:, 0] = torch.rand(24)  # greys: the same value in every channel
    image[:, 1, :8] = 0.0
    image[:, 1, 8:16] = 1.0
    image[0, 2], image[1, 2] = image[1, 2].clone(), image[1, 2]  # red == green
    image[1, 3] = image[2, 3]  # green == blue
    image[0, 4] = image[2, 4]  # red == blue
    image[:, 5, :3] = torch.eye(3)  # pure red, green, blue
    image[:, 6:] = torch.randint(0, 256, (3, 18, 24)) / 255.0
    return image


@pytest.mark.parametrize("factor", [-0.5, -0.27, -0.05, 0.0, 0.03, 0.26, 0.5])
def test_adjust_hue_equals_torchvision(factor: float) -> None:
    image = _hard_pixels()
    expected = F.adjust_hue(image, factor)
    assert torch.allclose(adjust_hue(image, factor), expected, atol=1e-5)


def test_adjust_hue_takes_one_factor_per_image() -> None:
    images = torch.stack([_hard_pixels(), _hard_pixels().flip(-1), _hard_pixels().transpose(-1, -2)])
    factors = torch.tensor([-0.4, 0.1, 0.45])
    expected = torch.stack([F.adjust_hue(image, float(f)) for image, f in zip(images, factors)])
    assert torch.allclose(adjust_hue(images, factors.view(3, 1, 1)), expected, atol=1e-5)
    assert not torch.allclose(expected[0], images[0], atol=1e-2)  # the shift changed colours


def test_adjust_hue_rejects_what_it_does_not_handle() -> None:
    with pytest.raises(ValueError, match="float RGB"):
        adjust_hue(torch.zeros(3, 4, 4, dtype=torch.uint8), 0.1)
    with pytest.raises(ValueError, match="float RGB"):
        adjust_hue(torch.zeros(1, 4, 4), 0.1)


def test_the_distortion_draws_and_renders_as_torchvision() -> None:
    ours, theirs = PhotometricDistort(p=0.5), v2.RandomPhotometricDistort(p=0.5)
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[1.0, 2.0, 10.0, 12.0]]), format="XYXY", canvas_size=(24, 24))
    hue_drawn = 0
    for seed in range(40):
        image = tv_tensors.Image(_hard_pixels())
        torch.manual_seed(seed)
        out_image, out_boxes = ours(image, boxes)
        torch.manual_seed(seed)
        ref_image, ref_boxes = theirs(image, boxes)
        torch.manual_seed(seed)
        hue_drawn += theirs.make_params([image])["hue_factor"] is not None
        assert isinstance(out_image, tv_tensors.Image) and isinstance(out_boxes, tv_tensors.BoundingBoxes)
        assert torch.allclose(out_image, ref_image, atol=1e-5), seed
        assert torch.equal(out_boxes, ref_boxes)
    assert 10 < hue_drawn < 30


def test_uint8_images_keep_torchvision_s_path() -> None:
    image = tv_tensors.Image((_hard_pixels() * 255).to(torch.uint8))
    torch.manual_seed(3)
    out = PhotometricDistort(p=1.0)(image)
    torch.manual_seed(3)
    assert torch.equal(out, v2.RandomPhotometricDistort(p=1.0)(image))
