"""Sample detections drawn on a few validation images: what a run's model predicts, at a glance.

A grid of images, each enlarged to ``tile_size`` pixels, with the ground truth (green; ignore regions
grey) and the model's detections at the validation's operating point (red, labelled with their
score: what precision and recall count), and a legend under it. A collapsed model shows no red box,
a diverged one nothing sensible: the picture says in a second what the curves say in a minute.
Drawn with torchvision's ``draw_bounding_boxes`` and ``make_grid`` and Pillow for the legend (about
20 ms for four small images), so a search trial can write one every epoch into its checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.io import write_png
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, make_grid

__all__ = ["DETECTIONS_FILE", "draw_sample_detections", "save_sample_detections"]

#: File name of the picture in a run's output folder or a trial's checkpoint.
DETECTIONS_FILE = "detections.png"

_GT, _IGNORED, _PRED = "#2ca02c", "#9e9e9e", "#d62728"


@torch.no_grad()
def draw_sample_detections(
    model: Any,
    dataset: Any,
    device: torch.device | str = "cpu",
    *,
    num_images: int = 4,
    max_boxes: int = 10,
    min_score: float = 0.5,
    tile_size: int = 320,
    postprocess: dict[str, Any] | None = None,
) -> Tensor:
    """A ``(3, H, W)`` uint8 grid of the first ``num_images`` images of ``dataset`` with boxes.

    Args:
        model: a :class:`model.ssd.FaceSSD` (anything with its ``predict``).
        dataset: a validation dataset whose items are ``(image in [0, 1], {"boxes", "ignore", ...})``.
        device: where the model is.
        num_images: how many images (fewer if the dataset is smaller).
        max_boxes: at most this many detections per image, the highest-scoring ones.
        min_score: detections below this face score are not drawn (pass the validation's
            operating point, ``cfg.eval.score_threshold``, so the red boxes are what it counts).
        tile_size: each image is resized so its longer side has this many pixels (boxes with it).
        postprocess: keyword arguments of ``model.predict`` (``PostprocessConfig.model_dump()``).
    """
    count = min(num_images, len(dataset))
    if count == 0:
        raise ValueError("the dataset has no image to draw")
    samples = [dataset[i] for i in range(count)]
    images = torch.stack([image for image, _ in samples])
    detections = model.predict(images.to(device), **(postprocess or {}))
    tiles = []
    for (image, target), found in zip(samples, detections):
        scale = tile_size / max(image.shape[-2:])
        size = [round(image.shape[-2] * scale), round(image.shape[-1] * scale)]
        tile = (F.resize(image.clamp(0, 1), size, antialias=True).clamp(0, 1) * 255).to(torch.uint8)
        ignore = target["ignore"].bool()
        tile = _boxes(tile, target["boxes"][~ignore] * scale, _GT)
        tile = _boxes(tile, target["boxes"][ignore] * scale, _IGNORED)
        scores, boxes = found["scores"].float().cpu(), found["boxes"].float().cpu()
        keep = (scores >= min_score) & torch.isfinite(boxes).all(dim=1)
        scores, boxes = scores[keep], boxes[keep]
        order = scores.argsort(descending=True)[:max_boxes]
        tile = _boxes(tile, boxes[order] * scale, _PRED, [f"{s:.2f}" for s in scores[order].tolist()])
        tiles.append(tile)
    grid = cast(Tensor, make_grid(tiles, nrow=min(count, 2), padding=4, pad_value=255))  # torchvision is untyped
    return _with_legend(grid, min_score)


def save_sample_detections(model: Any, dataset: Any, path: str | Path, device: torch.device | str = "cpu", **kwargs: Any) -> Path:
    """Draw :func:`draw_sample_detections` and write it as a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(draw_sample_detections(model, dataset, device, **kwargs), str(path))
    return path


def _with_legend(grid: Tensor, min_score: float) -> Tensor:
    """``grid`` with a white strip under it naming the three box colours."""
    font = ImageFont.load_default(size=14)
    picture = Image.new("RGB", (grid.shape[-1], grid.shape[-2] + 26), "white")
    picture.paste(F.to_pil_image(grid), (0, 0))
    draw = ImageDraw.Draw(picture)
    x, y = 6, grid.shape[-2] + 6
    for color, text in ((_GT, "face (ground truth)"), (_IGNORED, "ignored"), (_PRED, f"detection, score >= {min_score:.2f}")):
        draw.rectangle((x, y + 2, x + 12, y + 14), outline=color, width=2)
        draw.text((x + 18, y), text, fill="black", font=font)
        x += 18 + round(draw.textlength(text, font=font)) + 16
    return cast(Tensor, F.pil_to_tensor(picture))


def _boxes(image: Tensor, boxes: Tensor, color: str, labels: Sequence[str] | None = None) -> Tensor:
    if len(boxes) == 0:
        return image
    height, width = image.shape[-2:]
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height - 1)
    return cast(Tensor, draw_bounding_boxes(image, boxes, labels=list(labels) if labels else None, colors=color, width=2))
