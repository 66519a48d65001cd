"""Sample detections drawn on a few validation images: what a run's model predicts, at a glance.

A grid of images with the ground truth (green; ignore regions grey) and the model's highest-scoring
detections (red, labelled with their score). A collapsed model shows no red box, a diverged one
nothing sensible: the picture says in a second what the curves say in a minute. Drawn with
torchvision's ``draw_bounding_boxes`` and ``make_grid`` (about 10 ms for four small images), so a
search trial can write one every epoch into its checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor
from torchvision.io import write_png
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
    min_score: float = 0.05,
    postprocess: dict[str, Any] | None = None,
) -> Tensor:
    """A ``(3, H, W)`` uint8 grid of the first ``num_images`` images of ``dataset`` with boxes.

    Args:
        model: a :class:`model.ssd.FaceSSD` (anything with its ``predict``).
        dataset: a validation dataset whose items are ``(image in [0, 1], {"boxes", "ignore", ...})``.
        device: where the model is.
        num_images: how many images (fewer if the dataset is smaller).
        max_boxes: at most this many detections per image, the highest-scoring ones.
        min_score: detections below this face score are not drawn.
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
        tile = (image.clamp(0, 1) * 255).to(torch.uint8)
        ignore = target["ignore"].bool()
        tile = _boxes(tile, target["boxes"][~ignore], _GT)
        tile = _boxes(tile, target["boxes"][ignore], _IGNORED)
        scores, boxes = found["scores"].float().cpu(), found["boxes"].float().cpu()
        keep = (scores >= min_score) & torch.isfinite(boxes).all(dim=1)
        scores, boxes = scores[keep], boxes[keep]
        order = scores.argsort(descending=True)[:max_boxes]
        tile = _boxes(tile, boxes[order], _PRED, [f"{s:.2f}" for s in scores[order].tolist()])
        tiles.append(tile)
    return cast(Tensor, make_grid(tiles, nrow=min(count, 2), padding=4, pad_value=255))  # torchvision is untyped


def save_sample_detections(model: Any, dataset: Any, path: str | Path, device: torch.device | str = "cpu", **kwargs: Any) -> Path:
    """Draw :func:`draw_sample_detections` and write it as a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(draw_sample_detections(model, dataset, device, **kwargs), str(path))
    return path


def _boxes(image: Tensor, boxes: Tensor, color: str, labels: Sequence[str] | None = None) -> Tensor:
    if len(boxes) == 0:
        return image
    height, width = image.shape[-2:]
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height - 1)
    return cast(Tensor, draw_bounding_boxes(image, boxes, labels=list(labels) if labels else None, colors=color, width=1))
