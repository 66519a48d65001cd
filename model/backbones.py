"""Multi-scale feature extractors for the SSD face detector.

Every backbone maps a batch ``(B, 3, S, S)`` to an ``OrderedDict[str, Tensor]`` of feature maps,
finest first. Channel counts and grid sizes are not hard-coded: :func:`probe_feature_maps` runs the
backbone on the ``meta`` device (shapes only, no arithmetic, no memory), so the SSD can size its
head and its anchors for any input size.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from functools import partial
from typing import NamedTuple, cast

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torchvision.models import MobileNet_V3_Large_Weights, VGG16_Weights, mobilenet_v3_large, vgg16
from torchvision.models.detection.ssd import _vgg_extractor
from torchvision.models.detection.ssdlite import _mobilenet_extractor, _normal_init
from torchvision.models.vgg import cfgs as _vgg_cfgs
from torchvision.models.vgg import make_layers as _vgg_make_layers
from torchvision.ops.misc import Conv2dNormActivation

#: Backbone names accepted by :func:`build_backbone`.
BACKBONES: tuple[str, ...] = ("tiny", "mobilenet_v3", "vgg16")

# Trainable stages when starting from ImageNet weights (torchvision's SSD300 / SSDlite defaults);
# a backbone trained from scratch is always fully trainable.
_MAX_TRAINABLE_LAYERS = {"mobilenet_v3": 6, "vgg16": 5}
_DEFAULT_TRAINABLE_LAYERS = {"mobilenet_v3": 6, "vgg16": 4}


class FeatureMapShape(NamedTuple):
    """Shape of one feature level for a single image."""

    channels: int
    height: int
    width: int


class TinyBackbone(nn.Module):
    """A small Conv-BN-ReLU network with feature maps at strides 8, 16, 32 and 64.

    About 0.37 M parameters (0.42 M with the SSD head): fast on a CPU at 256 px for tests, CI and demos.

    Args:
        widths: output channels of the four feature levels (strides 8, 16, 32, 64).
        stem_widths: channels of the stride-2 and stride-4 stem convolutions.
    """

    def __init__(
        self,
        widths: tuple[int, int, int, int] = (64, 96, 128, 128),
        stem_widths: tuple[int, int] = (16, 32),
    ) -> None:
        super().__init__()
        conv = partial(Conv2dNormActivation, kernel_size=3, norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU)
        s1, s2 = stem_widths
        self.stem = nn.Sequential(conv(3, s1, stride=2), conv(s1, s2, stride=2))  # stride 4
        stages = []
        in_ch = s2
        for i, out_ch in enumerate(widths):
            blocks: list[nn.Module] = [conv(in_ch, out_ch, stride=2)]
            if i == 0:
                # The finest level sees the smallest faces: give it one more layer of context.
                blocks.append(conv(out_ch, out_ch, stride=1))
            stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        self.out_channels = list(widths)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        x = self.stem(x)
        features: OrderedDict[str, Tensor] = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            features[str(i)] = x
        return features


def build_backbone(
    name: str,
    *,
    pretrained: bool = False,
    trainable_layers: int | None = None,
) -> nn.Module:
    """Build a feature extractor by name.

    Args:
        name: one of :data:`BACKBONES`.
        pretrained: load ImageNet weights through torchvision's weight enums (downloads once).
            Not available for ``tiny``.
        trainable_layers: with ``pretrained``, how many stages (from the top) stay trainable;
            ``None`` takes torchvision's default. Ignored without ``pretrained``.

    Returns:
        A module mapping ``(B, 3, S, S)`` to an ``OrderedDict`` of feature maps, finest first.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; allowed: {', '.join(BACKBONES)}")
    if name == "tiny":
        if pretrained:
            raise ValueError("backbone 'tiny' has no pretrained weights; use pretrained_backbone=False")
        if trainable_layers is not None:
            warnings.warn("trainable_layers has no effect on backbone 'tiny'", stacklevel=2)
        return TinyBackbone()
    layers = _trainable_layers(name, pretrained, trainable_layers)
    if name == "mobilenet_v3":
        return _mobilenet_v3(pretrained, layers)
    return _vgg16(pretrained, layers)


def probe_feature_maps(backbone: nn.Module, input_size: int) -> list[FeatureMapShape]:
    """Shapes of the feature maps ``backbone`` produces for one ``input_size`` x ``input_size`` image.

    Runs on the ``meta`` device: no arithmetic, no allocation, and the module's own parameters
    and buffers (BatchNorm statistics) are left untouched.

    Raises:
        ValueError: when the input is too small for the backbone to run at all.
    """
    state = {name: torch.empty_like(t, device="meta") for name, t in backbone.named_parameters()}
    state.update({name: torch.empty_like(t, device="meta") for name, t in backbone.named_buffers()})
    was_training = backbone.training
    backbone.eval()  # BatchNorm in training mode rejects the 1 x 1 maps of a single image
    try:
        with torch.no_grad():
            features = functional_call(backbone, state, (torch.empty(1, 3, input_size, input_size, device="meta"),))
    except RuntimeError as exc:
        raise ValueError(f"input_size={input_size} is too small for this backbone: {exc}") from None
    finally:
        backbone.train(was_training)
    if isinstance(features, Tensor):
        features = OrderedDict([("0", features)])
    return [FeatureMapShape(*(int(d) for d in f.shape[1:])) for f in features.values()]


def _trainable_layers(name: str, pretrained: bool, trainable_layers: int | None) -> int:
    max_layers = _MAX_TRAINABLE_LAYERS[name]
    if not pretrained:
        if trainable_layers is not None:
            warnings.warn(
                f"trainable_layers={trainable_layers} has no effect without a pretrained backbone; all layers are trained",
                stacklevel=3,
            )
        return max_layers
    layers = _DEFAULT_TRAINABLE_LAYERS[name] if trainable_layers is None else trainable_layers
    if not 0 <= layers <= max_layers:
        raise ValueError(f"trainable_layers for {name!r} must be in [0, {max_layers}], got {layers}")
    return layers


def _mobilenet_v3(pretrained: bool, trainable_layers: int) -> nn.Module:
    # As torchvision's ssdlite320_mobilenet_v3_large: its BatchNorm settings, the reduced tail
    # (MobileNetV3 paper, Table 6) when training from scratch, and its initialisation.
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    weights = MobileNet_V3_Large_Weights.IMAGENET1K_V1 if pretrained else None
    net = mobilenet_v3_large(weights=weights, norm_layer=norm_layer, reduced_tail=not pretrained)
    if not pretrained:
        _normal_init(net)
    return cast(nn.Module, _mobilenet_extractor(net, trainable_layers, norm_layer))  # torchvision is untyped


class _VGGFeatures(nn.Module):
    """Stands in for ``torchvision.models.VGG``: ``_vgg_extractor`` only reads ``.features``."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features


def _vgg16(pretrained: bool, trainable_layers: int) -> nn.Module:
    if pretrained:
        net: nn.Module = vgg16(weights=VGG16_Weights.IMAGENET1K_FEATURES)
    else:
        # Skip VGG's 120 M-parameter classifier: SSD discards it, and building it costs seconds.
        features = _vgg_make_layers(_vgg_cfgs["D"], batch_norm=False)
        for m in features.modules():
            if isinstance(m, nn.Conv2d):  # VGG's own initialisation
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(cast(Tensor, m.bias))  # make_layers' convolutions have biases
        net = _VGGFeatures(features)
    return cast(nn.Module, _vgg_extractor(net, False, trainable_layers))  # torchvision is untyped
