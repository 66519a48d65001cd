"""The one training configuration: every hyperparameter is defined here, once.

A search space samples dotted keys of this model (``loss.box_weight``), a trial validates them
here, the export writes it back as YAML, and ``python -m model.train --config`` reads it. Unknown
keys and bad values fail with the dotted key and the allowed values, not a stack trace.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from model.dotted import KeyPathError, dotted_path, error_message, get_dotted, set_dotted, unknown_key
from model.health import HealthConfig

#: Where the generated mini dataset lives unless the config says otherwise (relative to the CWD).
DEFAULT_MINI_ROOT = Path("data/wider-mini")


class ConfigError(ValueError):
    """A configuration that does not validate; the message names each bad key."""


class _Section(BaseModel):
    # Typos in a config must not be silently ignored: an unknown key is an error.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the images come from and how they are read."""

    source: Literal["mini", "wider"] = "mini"
    """``mini``: the generated mini set, created at ``root`` on first use; ``wider``: the official
    WIDER FACE layout at ``root`` (``WIDER_{train,val}/images``, ``wider_face_split``)."""
    root: Path = DEFAULT_MINI_ROOT
    min_face_size: float = Field(6.0, ge=0)
    """Faces whose shorter side is below this many pixels *at the network input size* are ignore
    regions: neither positives in training nor misses in evaluation."""
    cache: bool = True
    """Keep decoded, resized images in an Arrow file so later epochs never decode a JPEG."""
    cache_dir: Path | None = None
    """Defaults to ``<root>/.cache``."""
    cache_max_side: int = Field(640, ge=32)
    num_workers: int = Field(0, ge=0)
    pin_memory: bool | None = None
    """Page-locked batches, so the copy to the GPU overlaps compute; ``None``: on when training on CUDA."""
    max_train_images: int | None = Field(None, ge=1)
    max_val_images: int | None = Field(None, ge=1)


class AugmentConfig(_Section):
    """The SSD augmentation recipe (torchvision.transforms.v2), each part switchable."""

    pipeline: Literal["auto", "batched", "per_sample"] = "auto"
    """``batched``: the loader only draws each sample's random parameters and moves its boxes; the
    pixels (zoom-out, crop, flip, resize, colour) are rendered for the whole batch on the training
    device (``model/data/batch_augment.py``). ``per_sample``: torchvision's transforms on each
    image in the loader. Same parameters from the same random state, so the same boxes; the
    images differ only by the resampling filter. ``auto``: batched when training on CUDA, where
    the loader's CPUs are the bound; per-sample on a CPU, where torchvision's uint8 kernels on
    each image cost less than the float batch (``bench/augment_pipeline.py``)."""
    photometric: bool = True
    zoom_out: bool = True
    zoom_out_max: float = Field(2.0, ge=1.0)
    iou_crop: bool = True
    hflip: bool = True


class ModelConfig(_Section):
    backbone: Literal["tiny", "mobilenet_v3", "vgg16"] = "tiny"
    input_size: int = Field(256, ge=64)
    pretrained_backbone: bool = False
    """Load ImageNet weights through torchvision's weight enums (downloads once; off by default)."""
    aspect_ratios: list[list[float]] | None = None
    """Per feature level, extra anchor aspect ratios; ``None`` = square face anchors."""
    anchor_scales: list[float] | None = None
    """Anchor sizes as fractions of the input, one per level plus one; ``None`` = 4 x stride."""
    prior_prob: float = Field(0.01, gt=0, lt=1)
    """Initial face probability of every anchor (RetinaNet's prior bias) for a stable start."""


#: The loss variants (model/loss.py derives its allowed values from these).
ClsLoss = Literal["ce", "focal"]
BoxLoss = Literal["smooth_l1", "giou", "diou", "ciou"]


class LossConfig(_Section):
    """The multibox loss and its weights: the trainer minimises ``class_weight * loss_cls + box_weight * loss_box``."""

    class_weight: float = Field(1.0, ge=0, allow_inf_nan=False)
    box_weight: float = Field(1.0, ge=0, allow_inf_nan=False)
    neg_pos_ratio: float = Field(3.0, gt=0)
    """Hard-negative mining: mined negatives per positive anchor (the study's 3:1)."""
    cls_loss: ClsLoss = "ce"
    box_loss: BoxLoss = "smooth_l1"
    smooth_l1_beta: float = Field(1.0, gt=0)
    focal_alpha: float = Field(0.25, ge=0, le=1)
    focal_gamma: float = Field(2.0, ge=0)
    match_iou: float = Field(0.5, gt=0, le=1)
    ignore_iou: float = Field(0.5, gt=0, le=1)
    empty_image_negatives: int = Field(16, ge=0)
    """Mined negatives for an image without faces, so such images still teach 'background'."""

    @model_validator(mode="after")
    def _some_weight(self) -> LossConfig:
        if self.class_weight == 0 and self.box_weight == 0:
            raise ValueError("class_weight and box_weight cannot both be 0")
        return self


#: Non-maximum suppression: hard, or Soft-NMS decaying overlapping scores linearly or by a Gaussian.
NmsMethod = Literal["nms", "soft_linear", "soft_gaussian"]


class PostprocessConfig(_Section):
    """From head outputs to detections (``model/postprocess.py``, whose defaults these are)."""

    nms: NmsMethod = "nms"
    nms_iou: float = Field(0.45, gt=0, le=1)
    soft_nms_sigma: float = Field(0.5, gt=0)
    score_threshold: float = Field(0.05, ge=0, le=1)
    """Candidates below this face score are dropped before NMS."""
    topk_candidates: int = Field(400, ge=1)
    max_detections: int = Field(200, ge=1)


class OptimConfig(_Section):
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    grad_clip_norm: float | None = Field(None, gt=0)
    amp: bool = True
    """Mixed precision on CUDA (bf16 where supported, else fp16 with a gradient scaler); no effect on CPU."""
    channels_last: bool = True
    """channels-last memory format for the network and its input: faster convolutions on CUDA and
    on the CPU too (oneDNN; the tiny SSD's training step ~1.2x, ``bench/throughput.py``)."""


class ScheduleConfig(_Section):
    """Learning-rate warm-up, then a decay; optionally a loss-weight ramp (the study's 'adaptive
    weight strategy': classification dominates early, the box weight rises over time)."""

    warmup_iters: int = Field(100, ge=0)
    warmup_epochs: float | None = Field(None, ge=0)
    """Warm-up length in epochs; when set it replaces ``warmup_iters``."""
    warmup_start_factor: float = Field(0.01, gt=0, le=1)
    decay: Literal["cosine", "step", "none"] = "cosine"
    step_milestones: list[float] = [0.67, 0.89]
    """``step`` decay: fractions of the run after which the learning rate is multiplied by ``step_gamma``."""
    step_gamma: float = Field(0.1, gt=0, le=1)
    loss_ramp_epochs: float = Field(0.0, ge=0)
    """Length of the loss-weight ramp; 0 disables it."""
    box_weight_start_factor: float = Field(1.0, ge=0)
    """At step 0 the box weight is ``box_weight_start_factor * loss.box_weight``, reaching ``box_weight`` at the end of the ramp."""
    class_weight_start_factor: float = Field(1.0, ge=0)
    """Same for the class weight (e.g. 2.0 to emphasise classification early)."""

    def warmup_length(self, iters_per_epoch: int) -> int:
        if self.warmup_epochs is not None:
            return round(self.warmup_epochs * iters_per_epoch)
        return self.warmup_iters


class WeightingConfig(_Section):
    """How the loss parts' weights move during training (``model/loss_weighting.py``); the ramp
    of ``schedule`` applies first, to the configured weights."""

    method: Literal["fixed", "uncertainty", "loss_ratio"] = "fixed"
    """``fixed``: ``loss.class_weight`` and ``loss.box_weight`` as they are; ``uncertainty``:
    learnt log-variances per part (Kendall et al. 2018), starting from the configured weights;
    ``loss_ratio``: the box weight is set each step so that the weighted box part is
    ``box_weight / class_weight`` times the weighted classification part."""
    ratio_momentum: float = Field(0.9, ge=0, lt=1)
    """``loss_ratio``: momentum of the running means of the two parts the controller balances."""


class EvalConfig(_Section):
    """Validation after each epoch: our VOC-style AP and counts, optionally the official WIDER FACE AP."""

    iou_threshold: float = Field(0.5, gt=0, le=1)
    score_threshold: float = Field(0.5, ge=0, le=1)
    """Operating point for precision, recall, TP/FP/FN and mean IoU (AP uses every score)."""
    wider_ap: bool = False
    """Also score each validation's detections (the same ones, no second pass) with the official
    WIDER FACE protocol (``model.widerface_eval``): the report's ``val/wider_easy``,
    ``val/wider_medium``, ``val/wider_hard`` (``None`` when off), which a search may then optimise.
    Needs the official ``.mat`` ground truth under ``data.root`` (``wider_face_split/``,
    ``eval_tools/ground_truth/`` or ``ground_truth/``; the generated mini set has it): without it the
    run fails at its start, naming this key."""
    wider_subset: int | None = Field(None, ge=1)
    """With ``wider_ap``: score this many val images per epoch, a seeded random subset, the same at
    every epoch (so epochs compare) and in every trial (``wider_subset_seed``, not ``seed``), and all
    of val at the last epoch; ``None`` (or at least the val set's size): all of val every epoch.
    Only the protocol's cost is saved: the detections of all of val are computed anyway for ``val/ap``."""
    wider_subset_seed: int = 0
    """Draws the ``wider_subset`` images; independent of the training ``seed`` on purpose."""


class TrainConfig(_Section):
    """Everything one training run needs; a search trial is one of these."""

    seed: int = 0
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    eval: EvalConfig = EvalConfig()
    weighting: WeightingConfig = WeightingConfig()
    health: HealthConfig = HealthConfig()

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        """A copy with dotted-key overrides applied, e.g. ``{"loss.box_weight": 0.1}``."""
        return config_from_dict(apply_overrides(self.model_dump(mode="json"), overrides))

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a deep copy of ``raw`` with dotted keys set; an unknown section names the key."""
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        try:
            set_dotted(out, dotted, value)
        except KeyPathError as exc:
            raise ConfigError(f"{dotted}: '{exc}' is not a config section") from None
    return out


def config_from_dict(raw: dict[str, Any], source: str = "config") -> TrainConfig:
    """Validate a nested dict; errors name the dotted key and what is allowed."""
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config file (missing sections take their defaults)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return config_from_dict(apply_overrides(raw, overrides or {}), source=str(path))


def _explain(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = err["loc"]
        message = error_message(err)
        if err["type"] == "extra_forbidden":
            try:  # the keys of the section the bad key is in: the default config has them all
                allowed = list(type(get_dotted(TrainConfig(), [str(p) for p in loc[:-1]])).model_fields)
            except AttributeError:  # in a dict of models (health.interventions)
                allowed = ["?"]
            message = unknown_key(str(loc[-1]), allowed)
        lines.append(f"{dotted_path(loc) or '<root>'}: {message}")
    return f"{source}: invalid configuration:\n  " + "\n  ".join(lines)
