"""The SSD photometric distortion with a fast hue step.

``F.adjust_hue`` converts every pixel to HSV and back (two dozen tensor operations, a stack, an
index gather, ``aminmax`` with indices): on one CPU thread it took 5-6 ms of a 256 px image's
~6.5 ms photometric distortion, and the loader spends most of its time in that distortion
(``bench/results/augment_profile.md``). A hue shift keeps each pixel's maximum and minimum
channel (HSV's V and S), so the result follows from the hue alone with the closed form
``channel = max - (max - min) * clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6 h') mod 6``,
``n = 5, 3, 1`` for R, G, B (the "alternative" HSV-to-RGB formula): about 5x faster, equal to
torchvision's to float rounding (``tests/test_colour.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# ``n`` of the closed form per channel (R, G, B), in sextants of the hue circle.
_SEXTANT_OFFSETS = (5.0, 3.0, 1.0)


def adjust_hue(images: Tensor, hue_factor: float | Tensor) -> Tensor:
    """``F.adjust_hue`` for float RGB images in [0, 1], ``(..., 3, H, W)``.

    Args:
        images: float RGB images (any leading dimensions); not modified.
        hue_factor: the shift in turns of the hue circle, in [-0.5, 0.5]; a float, or a tensor
            broadcastable to ``images.shape[:-3] + (1, 1)`` (one factor per image).
    """
    if images.shape[-3] != 3 or not images.is_floating_point():
        raise ValueError(f"adjust_hue takes float RGB images (..., 3, H, W), got {images.dtype} {tuple(images.shape)}")
    r, g, b = images.unbind(dim=-3)
    maxc = images.amax(dim=-3)
    delta = maxc - images.amin(dim=-3)
    # torchvision's hue in sextants, with its tie rule (red first, then green):
    # (g - b) / delta where the maximum is red, (b - r) / delta + 2 where green, (r - g) / delta + 4 where blue.
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    hue = (g - b).mul_(is_r)
    hue += (b - r + 2.0 * delta).mul_(is_g)
    hue += (r - g + 4.0 * delta).mul_(~(is_r | is_g))
    hue.mul_(delta.reciprocal().nan_to_num_(0.0, 0.0, 0.0))  # a grey pixel (delta 0): hue 0, as torchvision's
    # In [-1, 5) so far; + 6 keeps the sum positive before the modulo.
    hue += 6.0 * (hue_factor.to(hue) if isinstance(hue_factor, Tensor) else float(hue_factor)) + 6.0
    offsets = torch.tensor(_SEXTANT_OFFSETS, dtype=images.dtype, device=images.device).view(3, 1, 1)
    k = (hue.unsqueeze(dim=-3) + offsets).remainder_(6.0)
    weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return maxc.unsqueeze(dim=-3) - weight.mul_(delta.unsqueeze(dim=-3))


class PhotometricDistort(v2.RandomPhotometricDistort):  # type: ignore[misc]  # torchvision is untyped
    """``v2.RandomPhotometricDistort`` with :func:`adjust_hue` for float RGB images: the same random
    draws (``make_params`` is torchvision's), the same steps in torchvision's order."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not _is_float_rgb_image(inpt):
            return super().transform(inpt, params)  # boxes, masks, uint8 images: torchvision's own
        contrast = params["contrast_factor"]
        if params["brightness_factor"] is not None:
            inpt = F.adjust_brightness(inpt, brightness_factor=params["brightness_factor"])
        if contrast is not None and params["contrast_before"]:
            inpt = F.adjust_contrast(inpt, contrast_factor=contrast)
        if params["saturation_factor"] is not None:
            inpt = F.adjust_saturation(inpt, saturation_factor=params["saturation_factor"])
        if params["hue_factor"] is not None:
            shifted = adjust_hue(inpt.as_subclass(Tensor), float(params["hue_factor"]))
            inpt = tv_tensors.wrap(shifted, like=inpt) if isinstance(inpt, tv_tensors.Image) else shifted
        if contrast is not None and not params["contrast_before"]:
            inpt = F.adjust_contrast(inpt, contrast_factor=contrast)
        if params["channel_permutation"] is not None:
            inpt = F.permute_channels(inpt, permutation=params["channel_permutation"])
        return inpt


def _is_float_rgb_image(inpt: Any) -> bool:
    # What the colour steps change: an Image, or a plain tensor (v2 treats one as the image when
    # the sample holds no Image).
    is_image = isinstance(inpt, tv_tensors.Image) or type(inpt) is torch.Tensor
    return is_image and inpt.is_floating_point() and inpt.ndim >= 3 and inpt.shape[-3] == 3
