"""Building blocks of one training run: data, model, optimiser, one epoch, one evaluation.

Each function does one thing and takes explicit arguments, so the production CLI
(``model/train.py``) and a search trial (``hpo/``) assemble the same run from the same parts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from model import report_keys as K
from model.config import ConfigError, TrainConfig
from model.data.mini import ensure_mini, generated_params
from model.data.batch_augment import DrawSSDAugmentation, collate_canvas
from model.data.transforms import build_eval_transforms, build_train_transforms
from model.data.widerface import WiderFaceDataset, collate_fn
from model.loss import MultiBoxLoss
from model.metrics import evaluate
from model.ssd import FaceSSD, build_ssd
from model.widerface_eval import (
    GROUND_TRUTH_PLACES,
    SETTINGS,
    WiderGroundTruth,
    evaluate_widerface,
    find_ground_truth,
    load_ground_truth,
    to_wider_predictions,
)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available on this machine")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def batched_augmentation(cfg: TrainConfig) -> bool:
    """Whether this run renders its augmentation per batch on the device (``augment.pipeline``)."""
    pipeline = cfg.augment.pipeline
    return pipeline == "batched" or (pipeline == "auto" and resolve_device(cfg.device).type == "cuda")


class _DatasetOptions(TypedDict):
    """The keyword arguments both :class:`WiderFaceDataset` splits share."""

    min_face_size: float
    cache_dir: Path | None
    cache_max_side: int


class _AugmentParts(TypedDict):
    """The switches of :func:`build_train_transforms` (and :class:`DrawSSDAugmentation`)."""

    photometric: bool
    zoom_out: bool
    zoom_out_max: float
    iou_crop: bool
    hflip: bool


class _LoaderOptions(TypedDict):
    """The keyword arguments both :class:`DataLoader` s share."""

    batch_size: int
    num_workers: int
    persistent_workers: bool
    pin_memory: bool


def build_datasets(cfg: TrainConfig) -> tuple[WiderFaceDataset, WiderFaceDataset]:
    """Train and validation sets; the mini set is generated at ``data.root`` on first use."""
    data = cfg.data
    if data.source == "mini":
        # Any complete mini set at root will do (the tests make smaller ones); none: the default.
        ensure_mini(data.root, **generated_params(data.root))
    cache_dir = (data.cache_dir or data.root / ".cache") if data.cache else None
    size = cfg.model.input_size
    aug = cfg.augment
    common: _DatasetOptions = dict(min_face_size=data.min_face_size, cache_dir=cache_dir, cache_max_side=data.cache_max_side)
    parts: _AugmentParts = dict(
        photometric=aug.photometric, zoom_out=aug.zoom_out, zoom_out_max=aug.zoom_out_max, iou_crop=aug.iou_crop, hflip=aug.hflip
    )
    augment = DrawSSDAugmentation(size, **parts) if batched_augmentation(cfg) else build_train_transforms(size, **parts)
    train = WiderFaceDataset(data.root, "train", transform=augment, max_images=data.max_train_images, **common)
    val = WiderFaceDataset(data.root, "val", transform=build_eval_transforms(size), max_images=data.max_val_images, **common)
    return train, val


def build_loaders(
    cfg: TrainConfig, train: WiderFaceDataset, val: WiderFaceDataset
) -> tuple[DataLoader[tuple[Tensor, dict[str, Any]]], DataLoader[tuple[Tensor, dict[str, Any]]]]:
    # A seeded generator makes the shuffling order, and so a resumed run, reproducible.
    generator = torch.Generator().manual_seed(cfg.seed)
    workers = cfg.data.num_workers
    pin = cfg.data.pin_memory if cfg.data.pin_memory is not None else resolve_device(cfg.device).type == "cuda"
    common: _LoaderOptions = dict(batch_size=cfg.batch_size, num_workers=workers, persistent_workers=workers > 0, pin_memory=pin)
    # The batched pipeline's loader hands over the decoded images on one canvas, to be rendered on the device.
    train_collate = collate_canvas if batched_augmentation(cfg) else collate_fn
    train_loader = DataLoader(
        train, shuffle=True, drop_last=len(train) > cfg.batch_size, generator=generator, collate_fn=train_collate, **common
    )
    val_loader = DataLoader(val, shuffle=False, collate_fn=collate_fn, **common)
    return train_loader, val_loader


def build_model(cfg: TrainConfig) -> FaceSSD:
    m = cfg.model
    return build_ssd(
        backbone=m.backbone,
        input_size=m.input_size,
        pretrained_backbone=m.pretrained_backbone,
        aspect_ratios=m.aspect_ratios,
        anchor_scales=m.anchor_scales,
        prior_prob=m.prior_prob,
    )


def build_loss(cfg: TrainConfig, model: FaceSSD) -> MultiBoxLoss:
    return MultiBoxLoss(box_coder=model.box_coder, **cfg.loss.model_dump(exclude={"class_weight", "box_weight"}))


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    # Weight decay on norms and biases only hurts; torchvision's references exclude them too.
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if o.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum)
    return torch.optim.AdamW(groups, lr=o.lr)


def build_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, iters_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule: linear warm-up, then cosine or step decay (or constant) to the end."""
    s = cfg.schedule
    total = max(1, cfg.epochs * iters_per_epoch)
    warmup = min(s.warmup_length(iters_per_epoch), total)
    milestones = sorted(round(f * total) for f in s.step_milestones)

    def factor(it: int) -> float:
        if it < warmup:
            return s.warmup_start_factor + (1.0 - s.warmup_start_factor) * it / warmup
        if s.decay == "cosine":
            progress = (it - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if s.decay == "step":
            return s.step_gamma ** sum(it >= m for m in milestones)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def loss_weights_at(cfg: TrainConfig, step: int, iters_per_epoch: int) -> tuple[float, float]:
    """(class_weight, box_weight) at an optimiser step under the optional loss-weight ramp."""
    s, loss = cfg.schedule, cfg.loss
    ramp = s.loss_ramp_epochs * iters_per_epoch
    t = 1.0 if ramp <= 0 else min(1.0, step / ramp)

    def blend(start_factor: float) -> float:
        return start_factor + (1.0 - start_factor) * t

    return loss.class_weight * blend(s.class_weight_start_factor), loss.box_weight * blend(s.box_weight_start_factor)


@dataclass(frozen=True, eq=False)
class WiderValidation:
    """The official WIDER FACE protocol at each validation (``eval.wider_ap``)."""

    gt: WiderGroundTruth
    """The official ground truth of the val set's images: what the last epoch is scored on."""
    subset: WiderGroundTruth
    """That of the ``eval.wider_subset`` images scored at every other epoch (``gt`` without a subset)."""

    def ground_truth(self, full: bool) -> WiderGroundTruth:
        return self.gt if full else self.subset


def build_wider_validation(cfg: TrainConfig, val: WiderFaceDataset) -> WiderValidation | None:
    """The official protocol's ground truth for ``val`` when ``eval.wider_ap`` is on, else ``None``.

    The subset is ``eval.wider_subset`` images of the val set drawn with ``eval.wider_subset_seed``
    (in the ground truth's order): a fixed choice, the same for every epoch and every run on the
    same data.

    Raises:
        ConfigError: the option is on but ``data.root`` has no official ``.mat`` ground truth, or it
            does not cover the val set's images (one line, naming ``eval.wider_ap``).
    """
    e = cfg.eval
    if not e.wider_ap:
        return None
    keys = ", ".join(K.WIDER_AP.values())
    folder = find_ground_truth(cfg.data.root)
    if folder is None:
        places = ", ".join(GROUND_TRUTH_PLACES)
        raise ConfigError(
            f"eval.wider_ap: {keys} need the official WIDER FACE ground truth (wider_face_val.mat and "
            f"wider_{{easy,medium,hard}}_val.mat) in {places} under {cfg.data.root}, and there is none; "
            "add it or set eval.wider_ap: false"
        )
    try:
        gt = load_ground_truth(folder).select(record.image_id for record in val.records)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"eval.wider_ap: {keys} cannot be computed on {folder}: {' '.join(str(exc).split())}") from None
    if e.wider_subset is None or e.wider_subset >= len(gt):
        return WiderValidation(gt=gt, subset=gt)
    chosen = np.sort(np.random.default_rng(e.wider_subset_seed).choice(len(gt), size=e.wider_subset, replace=False))
    return WiderValidation(gt=gt, subset=WiderGroundTruth(images=tuple(gt.images[i] for i in chosen)))


@torch.no_grad()
def evaluate_model(
    model: FaceSSD,
    loader: DataLoader[tuple[Tensor, dict[str, Any]]],
    device: torch.device,
    cfg: TrainConfig,
    *,
    wider: WiderValidation | None = None,
    full: bool = True,
) -> dict[str, float | None]:
    """Detections on the validation loader scored with :func:`model.metrics.evaluate` and, with
    ``wider``, the same detections with the official protocol on all of val (``full``) or on its
    subset; the report's ``val/wider_*`` are ``None`` without it."""
    model.eval()
    predictions: list[dict[str, torch.Tensor]] = []
    targets: list[dict[str, torch.Tensor]] = []
    official: dict[str, dict[str, torch.Tensor]] = {}  # image id -> detections in its original pixels
    for batch_images, batch_targets in loader:
        found = model.predict(batch_images.to(device), **cfg.postprocess.model_dump())
        detections = [{k: v.cpu() for k, v in d.items()} for d in found]
        predictions.extend(detections)
        targets.extend({"boxes": t["boxes"], "ignore": t["ignore"]} for t in batch_targets)
        if wider is not None:
            input_size = tuple(batch_images.shape[-2:])
            for d, t in zip(detections, batch_targets):
                official[t["image_id"]] = in_original_frame(d, input_size, t["orig_size"])
    result = evaluate(predictions, targets, iou_threshold=cfg.eval.iou_threshold, score_threshold=cfg.eval.score_threshold)
    report: dict[str, float | None] = {f"val/{k}": float(v) for k, v in result.items()}  # metrics.evaluate's names, under val/
    report[K.VAL_TOP_SCORE_SPREAD] = top_score_spread(predictions)
    if wider is None:
        report.update(dict.fromkeys(K.VAL_WIDER_KEYS))
    else:
        report.update(wider_report(official, wider.ground_truth(full)))
    return {key: report[key] for key in K.VAL_KEYS}  # exactly the report's val keys: a renamed metric fails here


def in_original_frame(
    detections: Mapping[str, torch.Tensor], input_size: tuple[int, int], orig_size: torch.Tensor | tuple[int, int]
) -> dict[str, torch.Tensor]:
    """Detections on the (squashed) network input mapped back to the original image's pixels, as
    ``model.predict`` maps them: the frame the official ground truth is in."""
    height, width = (int(v) for v in orig_size)
    boxes = detections["boxes"]
    factor = torch.tensor([width / input_size[1], height / input_size[0]] * 2, dtype=boxes.dtype)
    return {"boxes": boxes * factor, "scores": detections["scores"]}


def wider_report(detections: Mapping[str, Mapping[str, torch.Tensor]], gt: WiderGroundTruth) -> dict[str, float]:
    """The report's ``val/wider_*``: the official easy / medium / hard AP of ``detections`` (``{image
    id: {"boxes", "scores"}}`` in original pixels) on the images of ``gt``, and their count."""
    ids = [image.image_id for image in gt.images if image.image_id in detections]
    aps = evaluate_widerface(to_wider_predictions(ids, [detections[i] for i in ids]), gt)
    return {K.WIDER_AP[setting]: aps[setting] for setting in SETTINGS} | {K.VAL_WIDER_IMAGES: float(len(gt))}


def top_score_spread(predictions: list[dict[str, torch.Tensor]]) -> float:
    """Standard deviation over images of each image's highest face score (0 for an image without one).

    About 0 when the network's output no longer depends on its input: a dead network that scores
    every anchor of every image at the same prior. A network that still sees the images, however
    weak, gives each image its own top score.
    """
    tops = torch.tensor([float(p["scores"].max()) if p["scores"].numel() else 0.0 for p in predictions])
    return float(tops.std(correction=0)) if tops.numel() else 0.0
