"""The SSD augmentation split in two: random draws per sample in the loader, pixels per batch on the device.

The per-sample pipeline (:func:`model.data.transforms.build_train_transforms`) zooms out, crops,
flips, resizes and colour-distorts every image on the loader's CPU workers: ~8 ms a sample at
320 px, which starved a GPU that trains at several hundred images a second (``bench/README.md``).
Here the loader only *draws*: :class:`DrawSSDAugmentation` asks torchvision's own transforms for
their random parameters, in the same order and with the same random calls as the per-sample
pipeline, applies them to the boxes (torchvision's box kernels, a few microseconds) and returns the
decoded image untouched with its sampling window, flip and colour parameters. :func:`render_batch`
then does the pixel work for the whole batch on the training device: one ``roi_align`` resamples
every image's window (zoom-out canvas and crop together; outside the image it reads the mean
colour) to the network input, averaging ``ceil(window / output)`` samples per output pixel and
axis (antialiased like ``Resize(antialias=True)``); flips and the photometric distortion follow as
batched tensor operations with per-image factors.

With the same random state both pipelines draw the same parameters, so the boxes are identical and
the images differ only by the resampling filter (tested). Exact resume is unchanged: every random
number is still drawn in the loader, from the generators the DataLoader seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.ops import roi_align
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from model.data.colour import adjust_hue
from model.data.transforms import IMAGENET_MEAN_UINT8, FaceIoUCrop, build_train_transforms

#: Target entries the loader adds for :func:`render_batch`.
WINDOW_KEY, FLIP_KEY, COLOUR_KEY = "window", "flip", "photometric"
RENDER_KEYS = (WINDOW_KEY, FLIP_KEY, COLOUR_KEY)

# Colour parameters as one float row per image: brightness, contrast, contrast-before flag,
# saturation, hue, then the channel order. "Not drawn" is the identity (factor 1, hue 0, 0 1 2).
_IDENTITY_COLOUR = (1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 2.0)


class DrawSSDAugmentation:
    """Loader half: draw the SSD augmentation's parameters for one sample and move its boxes.

    Returns ``(image, target)``: the image as it came (uint8 ``(3, H, W)``), the target's boxes in
    the ``input_size`` network frame (faces cropped away dropped with their per-box entries, as the
    per-sample pipeline does) and three new entries: ``window`` (float64 ``(4,)``, the region of
    the image, in its pixels, that becomes the network input: it reaches outside the image where
    the zoom-out canvas does), ``flip`` (bool) and ``photometric`` (float32 ``(8,)``).

    Args: as :func:`model.data.transforms.build_train_transforms`, whose transforms it uses.
    """

    def __init__(self, input_size: int, **parts: Any) -> None:
        # The per-sample recipe itself (its checks, probabilities and ranges): only its transforms'
        # make_params and box kernels run here, never their pixel work.
        recipe = build_train_transforms(input_size, **parts).transforms
        self.input_size = input_size
        self.zoom_out = _find(recipe, v2.RandomZoomOut)
        self.crop = _find(recipe, FaceIoUCrop)
        self.sanitize = _find(recipe, v2.SanitizeBoundingBoxes)
        self.hflip = _find(recipe, v2.RandomHorizontalFlip)
        self.photometric = _find(recipe, v2.RandomPhotometricDistort)

    def __call__(self, image: Tensor, target: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        boxes: tv_tensors.BoundingBoxes = target["boxes"]
        height, width = boxes.canvas_size
        left, top, right, bottom = 0.0, 0.0, float(width), float(height)
        # Each step draws exactly as the per-sample transform would (see _RandomApplyTransform.forward).
        if self.zoom_out is not None and torch.rand(1) < self.zoom_out.p:
            pad = self.zoom_out.make_params([boxes])["padding"]
            boxes = F.pad(boxes, padding=pad)
            left, top, right, bottom = -pad[0], -pad[1], width + pad[2], height + pad[3]
        if self.crop is not None:
            params = self.crop.make_params([boxes])
            if params:
                boxes = self.crop.transform(boxes, params)
                left, top = left + params["left"], top + params["top"]
                right, bottom = left + params["width"], top + params["height"]
            target = self.sanitize({**target, "boxes": boxes})
            boxes = target["boxes"]
        flip = self.hflip is not None and bool(torch.rand(1) < self.hflip.p)
        if flip:
            boxes = F.horizontal_flip(boxes)
        boxes = F.resize(boxes, [self.input_size, self.input_size])
        colour = self._draw_colour(image)
        window = torch.tensor([left, top, right, bottom], dtype=torch.float64)
        return image, {**target, "boxes": boxes, WINDOW_KEY: window, FLIP_KEY: flip, COLOUR_KEY: colour}

    def _draw_colour(self, image: Tensor) -> Tensor:
        if self.photometric is None:
            return torch.tensor(_IDENTITY_COLOUR)
        p = self.photometric.make_params([image])
        perm = p["channel_permutation"]
        return torch.tensor(
            [
                _or(p["brightness_factor"], 1.0),
                _or(p["contrast_factor"], 1.0),
                float(p["contrast_before"]),
                _or(p["saturation_factor"], 1.0),
                _or(p["hue_factor"], 0.0),
                *(perm.tolist() if perm is not None else (0, 1, 2)),
            ]
        )


def _find(transforms: Sequence[v2.Transform], kind: type) -> Any:
    """The recipe's transform of this kind, or None where the recipe switched it off."""
    return next((t for t in transforms if isinstance(t, kind)), None)


def _or(value: float | None, default: float) -> float:
    return default if value is None else float(value)


def collate_canvas(batch: Sequence[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, list[dict[str, Any]]]:
    """Stack images of different sizes top-left on one uint8 canvas filled with the mean colour.

    The padding reads as zoom-out background, so :func:`render_batch` needs no per-image size.
    """
    images, targets = zip(*batch)
    height = max(int(image.shape[-2]) for image in images)
    width = max(int(image.shape[-1]) for image in images)
    fill = torch.tensor(IMAGENET_MEAN_UINT8, dtype=torch.uint8).view(3, 1, 1)
    canvas = torch.empty(len(images), 3, height, width, dtype=torch.uint8)
    for slot, image in zip(canvas, images):
        # Each byte written once: the image, then the mean colour right of it and below it.
        h, w = image.shape[-2:]
        slot[:, :h, :w].copy_(image)
        slot[:, :h, w:].copy_(fill.expand(3, h, width - w))
        slot[:, h:, :].copy_(fill.expand(3, height - h, width))
    return canvas, list(targets)


def render_batch(canvas: Tensor, targets: Sequence[dict[str, Any]], input_size: int) -> Tensor:
    """Device half: each image's window resampled to ``input_size``, flipped and colour-distorted.

    Args:
        canvas: uint8 ``(B, 3, H, W)`` from :func:`collate_canvas`, on the training device.
        targets: the batch's targets with the entries :class:`DrawSSDAugmentation` adds.
        input_size: side of the square network input.

    Returns:
        float32 ``(B, 3, input_size, input_size)`` in [0, 1] on ``canvas.device``.
    """
    device = canvas.device
    mean = torch.tensor(IMAGENET_MEAN_UINT8, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    windows = torch.stack([t[WINDOW_KEY] for t in targets]).to(device=device, dtype=torch.float32)
    rois = torch.cat([torch.arange(len(targets), device=device, dtype=torch.float32)[:, None], windows], dim=1)
    # roi_align reads 0 outside the canvas: centred on the mean, that is the zoom-out fill colour.
    # sampling_ratio 0: ceil(window / output) samples per bin and axis, an area average when shrinking.
    images = roi_align(canvas.float() - mean, rois, (input_size, input_size), 1.0, 0, aligned=True)
    images = images.add_(mean).div_(255.0).clamp_(0.0, 1.0)
    flips = torch.tensor([bool(t[FLIP_KEY]) for t in targets], device=device)
    images = torch.where(flips.view(-1, 1, 1, 1), images.flip(-1), images)
    colour = torch.stack([t[COLOUR_KEY] for t in targets]).to(device)
    return photometric_batch(images, colour)


def photometric_batch(images: Tensor, colour: Tensor) -> Tensor:
    """``RandomPhotometricDistort.transform`` on a batch, each image with its own parameters.

    Each step runs only on the images that drew it (as in the loader, each with p=0.5): on a CPU
    that halves the work, and the masks are read on the host, so a GPU never waits for them.

    Args:
        images: float ``(B, 3, H, W)`` in [0, 1]; modified in place.
        colour: ``(B, 8)`` rows as :class:`DrawSSDAugmentation` draws them (on the host).
    """
    colour = colour.cpu()
    brightness, contrast, before, saturation, hue = colour[:, :5].unbind(dim=1)
    before = before > 0.5
    order = colour[:, 5:8].long()
    steps = (
        (brightness != 1, lambda x, f: (x * f[:, 0]).clamp_(0.0, 1.0)),
        ((contrast != 1) & before, lambda x, f: _adjust_contrast(x, f[:, 1])),
        (saturation != 1, lambda x, f: _blend(x, _grayscale(x), f[:, 3])),
        (hue != 0, lambda x, f: adjust_hue(x, f[:, 4, 0])),
        ((contrast != 1) & ~before, lambda x, f: _adjust_contrast(x, f[:, 1])),
        ((order != torch.arange(3)).any(dim=1), lambda x, f: x.gather(1, f[:, 5:8, 0].long().expand_as(x))),
    )
    for drawn, step in steps:
        rows = drawn.nonzero().flatten()
        if len(rows):
            # f[:, k] of each step is (n, 1, 1, 1): one factor per image, broadcast over its pixels.
            factors = colour[rows].to(images.device, non_blocking=True)[:, :, None, None, None]
            index = rows.to(images.device, non_blocking=True)
            images.index_copy_(0, index, step(images.index_select(0, index), factors))
    return images


def _grayscale(images: Tensor) -> Tensor:
    # torchvision's _rgb_to_grayscale_image weights (ITU-R 601-2), kept as one channel.
    r, g, b = images.unbind(dim=1)
    return (r * 0.2989 + g * 0.587 + b * 0.114).unsqueeze(1)


def _adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    return _blend(images, _grayscale(images).mean(dim=(-3, -2, -1), keepdim=True), factor)


def _blend(images: Tensor, other: Tensor, ratio: Tensor) -> Tensor:
    # torchvision's _blend: ratio * image + (1 - ratio) * other, clamped; ratio 1 is the identity.
    return (ratio * images + (1.0 - ratio) * other).clamp_(0.0, 1.0)
