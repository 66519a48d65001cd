"""The SSD face detector, composed from torchvision's detection building blocks.

``FaceSSD`` is a plain ``nn.Module``: ``forward`` returns raw head outputs for the whole batch
(the loss lives in :mod:`model.loss`, decoding and NMS in :mod:`model.postprocess`), and
``predict`` chains forward and post-processing for inference. ``build_ssd`` merges per-backbone
defaults with user arguments, as torchvision's model builders do.
"""

from __future__ import annotations

import math
from functools import partial
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSDHead
from torchvision.models.detection.ssdlite import SSDLiteHead

from model.backbones import BACKBONES, FeatureMapShape, build_backbone, probe_feature_maps
from model.postprocess import postprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Anchor side ≈ this many strides (S3FD's equal-proportion rule), so small faces get anchors.
ANCHOR_STRIDE_MULTIPLE = 4.0

# Per-backbone defaults that user arguments override (the torchvision builder style).
_BACKBONE_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"head": "ssd", "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD},
    "mobilenet_v3": {"head": "ssdlite", "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD},
    # VGG16_Weights.IMAGENET1K_FEATURES are Caffe-style weights: they expect mean-subtracted
    # 0-255 input, hence torchvision's SSD300 normalisation rather than the ImageNet std.
    "vgg16": {"head": "ssd", "image_mean": (0.48235, 0.45882, 0.40784), "image_std": (1 / 255, 1 / 255, 1 / 255)},
}


class HeadOutputs(NamedTuple):
    """Raw per-anchor outputs of the SSD head for a batch."""

    cls_logits: Tensor
    """(B, A, 2) logits: background, face."""
    bbox_regression: Tensor
    """(B, A, 4) BoxCoder offsets relative to the anchors."""


class FaceSSD(nn.Module):
    """A single-shot face detector: backbone, SSD head, default boxes and a box coder.

    Args:
        backbone: maps ``(B, 3, S, S)`` to an ``OrderedDict`` of feature maps, finest first.
        head: an ``SSDHead``/``SSDLiteHead`` with 2 classes, sized for the backbone's levels.
        anchor_generator: one aspect-ratio list per feature level.
        input_size: the side ``S`` of the square input; the data pipeline resizes to it.
        image_mean: per-channel mean subtracted from the [0, 1] input.
        image_std: per-channel std the input is divided by.
    """

    # Buffers registered in __init__, declared for the type checker only: a class annotation
    # would replace the inherited nn.Module ones that torch.jit.script reads.
    if TYPE_CHECKING:
        image_mean: Tensor
        image_std: Tensor

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        anchor_generator: DefaultBoxGenerator,
        input_size: int,
        *,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.anchor_generator = anchor_generator
        self.input_size = int(input_size)
        # torchvision SSD's weights: offsets of matched boxes have roughly unit variance.
        self.box_coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(1, 3, 1, 1))

        self.feature_map_shapes: list[FeatureMapShape] = probe_feature_maps(backbone, self.input_size)
        levels = len(self.feature_map_shapes)
        if len(anchor_generator.aspect_ratios) != levels:
            raise ValueError(
                f"the backbone has {levels} feature levels but the anchor generator has "
                f"{len(anchor_generator.aspect_ratios)} aspect-ratio lists"
            )
        per_location = anchor_generator.num_anchors_per_location()
        self.num_anchors: int = sum(f.height * f.width * n for f, n in zip(self.feature_map_shapes, per_location))
        self._anchor_cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def forward(self, images: Tensor) -> HeadOutputs:
        """Head outputs for a batch ``(B, 3, S, S)`` of float images in [0, 1]."""
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (self.input_size,) * 2:
            raise ValueError(f"expected images of shape (B, 3, {self.input_size}, {self.input_size}), got {tuple(images.shape)}")
        x = (images - self.image_mean) / self.image_std
        features = list(self.backbone(x).values())
        out = self.head(features)
        return HeadOutputs(cls_logits=out["cls_logits"], bbox_regression=out["bbox_regression"])

    def anchors(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """Default boxes ``(A, 4)``, xyxy in input pixels, in the order of the head outputs.

        Computed once per (device, dtype), then cached: they depend only on the input size.
        """
        device = torch.device(device) if device is not None else self.image_mean.device
        key = (device, dtype)
        if key not in self._anchor_cache:
            size = self.input_size
            # DefaultBoxGenerator reads only shapes, dtype and device from its inputs.
            image_list = ImageList(torch.empty(1, 3, size, size, device="meta"), [(size, size)])
            # Computed in float32 whatever the requested dtype: half precision would shift boxes.
            grids = [torch.empty(0, 0, f.height, f.width, device=device) for f in self.feature_map_shapes]
            self._anchor_cache[key] = self.anchor_generator(image_list, grids)[0].to(dtype)
        return self._anchor_cache[key]

    @torch.no_grad()
    def predict(
        self,
        images: Tensor,
        **options: Any,
    ) -> list[dict[str, Tensor]]:
        """Detections per image, ``{"boxes": (N, 4) xyxy, "scores": (N,)}``, in eval mode.

        ``options`` are the keyword arguments of :func:`model.postprocess.postprocess`, the fields
        of ``PostprocessConfig`` (its defaults where left out). The module's train/eval mode is
        restored afterwards.
        """
        was_training = self.training
        self.eval()
        try:
            cls_logits, bbox_regression = self(images)
        finally:
            self.train(was_training)
        return postprocess(
            cls_logits,
            bbox_regression,
            self.anchors(cls_logits.device, bbox_regression.dtype),
            self.box_coder,
            self.input_size,
            **options,
        )


def build_ssd(
    backbone: str = "tiny",
    input_size: int = 256,
    pretrained_backbone: bool = False,
    aspect_ratios: Sequence[Sequence[float]] | None = None,
    anchor_scales: Sequence[float] | None = None,
    prior_prob: float = 0.01,
    trainable_backbone_layers: int | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
) -> FaceSSD:
    """Build a two-class (background, face) SSD.

    Args:
        backbone: one of ``tiny``, ``mobilenet_v3`` (SSDlite head) or ``vgg16`` (SSD300 head).
        input_size: side of the square network input, in pixels.
        pretrained_backbone: load ImageNet backbone weights (downloads once); ``tiny`` has none.
        aspect_ratios: per feature level, extra anchor aspect ratios (each adds 2 boxes per
            location). ``None``: square face anchors only, 2 per location.
        anchor_scales: anchor sides as fractions of ``input_size``, one per level plus one (the
            extra one sizes the last level's in-between box, as in DefaultBoxGenerator).
            ``None``: about 4 x each level's stride (S3FD), capped at the image.
        prior_prob: initial face probability of every anchor (RetinaNet's prior bias): a start
            that predicts "background" everywhere keeps the early loss small and stable.
        trainable_backbone_layers: with a pretrained backbone, how many stages stay trainable.
        image_mean: override the backbone's default input normalisation mean.
        image_std: override the backbone's default input normalisation std.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; allowed: {', '.join(BACKBONES)}")
    if not isinstance(input_size, int) or isinstance(input_size, bool) or input_size < 16:
        raise ValueError(f"input_size must be an integer >= 16, got {input_size!r}")
    if not 0.0 < prior_prob < 1.0:
        raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
    defaults = _BACKBONE_DEFAULTS[backbone]

    body = build_backbone(backbone, pretrained=pretrained_backbone, trainable_layers=trainable_backbone_layers)
    shapes = _probe_levels(backbone, body, input_size)
    levels = len(shapes)

    if aspect_ratios is None:
        ratios: list[list[float]] = [[] for _ in range(levels)]
    else:
        ratios = [list(r) for r in aspect_ratios]
        if len(ratios) != levels:
            raise ValueError(f"aspect_ratios has {len(ratios)} lists but backbone {backbone!r} has {levels} feature levels")
        if any(r <= 0 for level in ratios for r in level):
            raise ValueError(f"aspect_ratios must all be > 0, got {ratios}")
    if anchor_scales is None:
        scales = face_anchor_scales(shapes, input_size)
    else:
        scales = [float(s) for s in anchor_scales]
        if len(scales) != levels + 1:
            raise ValueError(
                f"anchor_scales needs {levels + 1} values (one per feature level plus one) for backbone "
                f"{backbone!r}, got {len(scales)}"
            )
        if any(s <= 0 for s in scales):
            raise ValueError(f"anchor_scales must all be > 0, got {scales}")
    anchor_generator = DefaultBoxGenerator(ratios, scales=scales)

    channels = [s.channels for s in shapes]
    per_location = anchor_generator.num_anchors_per_location()
    head = _build_head(defaults["head"], channels, per_location)
    init_face_prior(head, prior_prob)
    return FaceSSD(
        body,
        head,
        anchor_generator,
        input_size,
        image_mean=defaults["image_mean"] if image_mean is None else image_mean,
        image_std=defaults["image_std"] if image_std is None else image_std,
    )


def face_anchor_scales(
    shapes: Sequence[FeatureMapShape], input_size: int, stride_multiple: float = ANCHOR_STRIDE_MULTIPLE
) -> list[float]:
    """Default anchor scales (fractions of the input): ``stride_multiple`` x each level's stride.

    Strides are measured (input size / grid size), so odd sizes and VGG's unpadded last levels
    are handled. Scales are capped at 1 (the whole image), as DefaultBoxGenerator clips anyway.
    """
    strides = [input_size / s.height for s in shapes]
    sides = [stride_multiple * s for s in strides] + [2 * stride_multiple * strides[-1]]
    return [min(side / input_size, 1.0) for side in sides]


def _probe_levels(name: str, body: nn.Module, input_size: int) -> list[FeatureMapShape]:
    """Feature-map shapes at ``input_size``; too small an input (a level that cannot be computed,
    or one no coarser than the level before) fails with the smallest size that works."""
    try:
        shapes = probe_feature_maps(body, input_size)
    except ValueError:
        problem = "a feature map would be empty"
    else:
        heights = [s.height for s in shapes]
        if all(a > b for a, b in zip(heights, heights[1:])):
            return shapes
        problem = f"grid sizes {heights} repeat a scale"
    minimum = _smallest_distinct_size(body, input_size)
    hint = f"; use input_size >= {minimum}" if minimum is not None else ""
    raise ValueError(f"input_size={input_size} is too small for backbone {name!r}: {problem}{hint}")


def _levels_distinct(body: nn.Module, size: int) -> bool:
    try:
        heights = [s.height for s in probe_feature_maps(body, size)]
    except ValueError:
        return False
    return all(a > b for a, b in zip(heights, heights[1:]))


def _smallest_distinct_size(body: nn.Module, too_small: int, limit: int = 4096) -> int | None:
    """Smallest input size above ``too_small`` whose levels all differ (for the error message)."""
    lo, hi = too_small, too_small
    while not _levels_distinct(body, hi):  # doubling, then bisection: a handful of meta probes
        lo, hi = hi, hi * 2
        if hi > limit:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _levels_distinct(body, mid) else (mid, hi)
    return hi


def _build_head(kind: Literal["ssd", "ssdlite"], channels: list[int], per_location: list[int]) -> nn.Module:
    if kind == "ssd":
        return cast(nn.Module, SSDHead(channels, per_location, num_classes=2))
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    return cast(nn.Module, SSDLiteHead(channels, per_location, num_classes=2, norm_layer=norm_layer))


@torch.no_grad()
def init_face_prior(head: nn.Module, prior_prob: float, generator: torch.Generator | None = None) -> list[nn.Parameter]:
    """Start every anchor at face probability ``prior_prob`` (RetinaNet, Lin et al. 2017); return
    the parameters set (the classification head's output layers).

    Small weights make the logits nearly input-independent at first; the biases set the
    softmax over (background, face) to ``(1 - p, p)``. A recovery calls it again on a trained
    model (``health.interventions.*.reset_class_head``), with its own ``generator``.
    """
    bias_face = math.log(prior_prob / (1.0 - prior_prob))
    params: list[nn.Parameter] = []
    for block in head.classification_head.module_list:  # type: ignore[union-attr]
        last_conv = [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1]
        nn.init.normal_(last_conv.weight, std=0.01, generator=generator)
        params += [cast(nn.Parameter, last_conv.weight), cast(nn.Parameter, last_conv.bias)]
        # Output channels are laid out (anchor, class): see SSDScoringHead's reshape.
        bias = cast(Tensor, last_conv.bias).view(-1, 2)  # the heads' convolutions have biases
        bias[:, 0] = 0.0
        bias[:, 1] = bias_face
    return params
