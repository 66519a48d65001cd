"""The SSD augmentation recipe with ``torchvision.transforms.v2``, for face boxes with ignore flags.

The "ssd" preset of torchvision's ``references/detection/presets.py`` (RandomPhotometricDistort,
RandomZoomOut, RandomIoUCrop, RandomHorizontalFlip), resized to the square network input and
scaled to float [0, 1], with one reordering: the photometric distortion runs last, on the small
network-input image. It is per-pixel colour arithmetic, so it commutes with the geometry up to
resampling, and on a 640x480 source it cost far more than the rest of the pipeline (measured on
one CPU thread: ~50 ms with every part firing, mostly the hue conversion, against ~4 ms for
zoom-out, crop, flip and resize together; ~8 ms at 256x256). The hue step is now a closed form
(``model.data.colour``), 2.3x faster for the whole distortion at 320 px.

Input: ``(tv_tensors.Image uint8 (3, H, W), {"boxes": BoundingBoxes xyxy, "labels", "ignore"})``.
``labels`` and ``ignore`` are per-box tensors: whenever boxes are dropped they are dropped with
them. Randomness comes from torch's global generator, so ``torch.manual_seed`` (or a DataLoader
worker seed) makes it reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms import v2

from model.data.colour import PhotometricDistort

#: ImageNet mean in uint8 (torchvision's SSD preset): zoom-out padding that looks like "no signal".
IMAGENET_MEAN_UINT8 = (123, 117, 104)

#: Per-box entries of a target, kept aligned with the boxes when boxes are dropped.
PER_BOX_KEYS = ("labels", "ignore")


def build_train_transforms(
    input_size: int,
    *,
    photometric: bool = True,
    zoom_out: bool = True,
    zoom_out_max: float = 2.0,
    iou_crop: bool = True,
    hflip: bool = True,
    mean_fill: Sequence[int] = IMAGENET_MEAN_UINT8,
) -> v2.Compose:
    """The SSD training augmentation, each part switchable, ending in a square float image.

    Args:
        input_size: side of the square network input.
        photometric: random brightness, contrast, saturation, hue and channel order (each
            with p=0.5), applied after the resize.
        zoom_out: with p=0.5, place the image on a canvas up to ``zoom_out_max`` times larger
            (faces get smaller: the small-face regime WIDER FACE is about).
        iou_crop: SSD's random crop with a minimum IoU to some face; images without faces get a
            plain random crop instead of torchvision's (which never crops them).
        hflip: horizontal flip with p=0.5.
        mean_fill: uint8 RGB colour of the zoom-out canvas.
    """
    if input_size < 1:
        raise ValueError(f"input_size must be >= 1, got {input_size}")
    steps: list[v2.Transform] = []
    if zoom_out:
        if zoom_out_max < 1.0:
            raise ValueError(f"zoom_out_max must be >= 1, got {zoom_out_max}")
        fill = {tv_tensors.Image: list(mean_fill), "others": 0}
        steps.append(v2.RandomZoomOut(fill=fill, side_range=(1.0, zoom_out_max), p=0.5))
    if iou_crop:
        steps.append(FaceIoUCrop())
        # The crop marks faces whose centre fell outside as degenerate; drop them with their flags.
        steps.append(v2.SanitizeBoundingBoxes(labels_getter=per_box_entries))
    if hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    steps += _to_network_input(input_size)
    if photometric:
        # On the float [0, 1] network input: several times fewer pixels than the source image.
        steps.append(photometric_distortion())
    return v2.Compose([*steps, v2.ToPureTensor()])


def photometric_distortion() -> v2.Transform:
    """SSD's photometric distortion (brightness, contrast, saturation, hue, channel order, each with
    p=0.5) on a float [0, 1] image: the loader's last step, or the trainer's on the device
    (``augment.pipeline: batched``, as part of the batch)."""
    return PhotometricDistort(p=0.5)


def build_eval_transforms(input_size: int) -> v2.Compose:
    """Resize to the square network input and scale to float [0, 1]; every face is kept."""
    if input_size < 1:
        raise ValueError(f"input_size must be >= 1, got {input_size}")
    return v2.Compose([*_to_network_input(input_size), v2.ToPureTensor()])


def _to_network_input(input_size: int) -> list[v2.Transform]:
    # Resize while still uint8 (torchvision's fast path), then scale once.
    return [v2.Resize((input_size, input_size), antialias=True), v2.ToDtype(torch.float32, scale=True)]


def per_box_entries(inputs: Any) -> tuple[torch.Tensor, ...]:
    """``labels_getter`` for ``SanitizeBoundingBoxes``: every per-box tensor of the target.

    The installed torchvision drops, along with the boxes, each tensor the getter returns (matched
    by identity), so ``labels`` and ``ignore`` stay aligned. A module-level function, not a
    lambda, so the transform pickles into spawned DataLoader workers.
    """
    parts = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    target = next((x for x in parts if isinstance(x, dict)), None)
    if target is None:
        raise ValueError("expected an (image, target dict) sample with per-box 'labels' and 'ignore'")
    return tuple(target[k] for k in PER_BOX_KEYS if k in target)


# torchvision ships no type information: its classes are Any, so subclassing one is flagged.
class FaceIoUCrop(v2.RandomIoUCrop):  # type: ignore[misc]
    """SSD's random IoU crop: torchvision's ``RandomIoUCrop``, vectorised, and for face-less images too.

    The acceptance rule is torchvision's: draw a minimum IoU from ``sampler_options`` (1.0 = keep
    the whole image), then up to ``trials`` crops within the scale and aspect-ratio limits; accept
    the first that contains some face centre and overlaps one of those faces with at least that
    IoU. Two differences: the trials of a draw are sampled and tested as one tensor operation
    (torchvision's per-trial Python loop dominated the pipeline's time), and an image without
    faces gets a plain crop from the same range (torchvision's rejects every crop of such an
    image, so those images were never cropped).
    """

    @staticmethod
    def out_of_reach(min_iou: float, largest_face: float, crop_areas: torch.Tensor) -> bool:
        """No face can overlap any of the crops with ``min_iou``: a face's IoU with a larger crop is
        at most their areas' ratio. In a crowd of small faces most draws of a high minimum IoU fail
        every trial; this spares them the IoU matrix (the same draws either way)."""
        return largest_face < min_iou * float(crop_areas.min())

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        orig_h, orig_w = v2.query_size(flat_inputs)
        bboxes = next(x for x in flat_inputs if isinstance(x, tv_tensors.BoundingBoxes))
        boxes = v2.functional.convert_bounding_box_format(
            bboxes.as_subclass(torch.Tensor), old_format=bboxes.format, new_format=tv_tensors.BoundingBoxFormat.XYXY
        ).double()
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        largest_face = float(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).max()) if len(boxes) else 0.0
        while True:
            min_iou = self.options[int(torch.randint(low=0, high=len(self.options), size=(1,)))]
            if min_iou >= 1.0:
                return {}
            scale = self.min_scale + (self.max_scale - self.min_scale) * torch.rand(self.trials, 2, dtype=torch.float64)
            new_w, new_h = (orig_w * scale[:, 0]).floor(), (orig_h * scale[:, 1]).floor()
            offset = torch.rand(self.trials, 2, dtype=torch.float64)
            left, top = ((orig_w - new_w) * offset[:, 0]).floor(), ((orig_h - new_h) * offset[:, 1]).floor()
            right, bottom = left + new_w, top + new_h
            aspect = new_w / new_h.clamp(min=1)
            ok = (new_w > 0) & (new_h > 0) & (aspect >= self.min_aspect_ratio) & (aspect <= self.max_aspect_ratio)
            if len(boxes) and self.out_of_reach(min_iou, largest_face, new_w * new_h):
                continue
            if len(boxes):
                # (trials, faces): centre inside the crop, and IoU of those faces with the crop.
                inside = (left[:, None] < cx) & (cx < right[:, None]) & (top[:, None] < cy) & (cy < bottom[:, None])
                crops = torch.stack([left, top, right, bottom], dim=1)
                iou = torch.where(inside, box_iou(crops, boxes), -1.0)
                ok &= inside.any(dim=1) & (iou.max(dim=1).values >= min_iou)
            hits = ok.nonzero()
            if len(hits):
                t = int(hits[0])
                return dict(
                    top=int(top[t]),
                    left=int(left[t]),
                    height=int(new_h[t]),
                    width=int(new_w[t]),
                    is_within_crop_area=inside[t] if len(boxes) else torch.zeros(0, dtype=torch.bool),
                )
