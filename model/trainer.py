"""One training run that knows when it is failing: the loop, validation, health checks, checkpoints.

The same :class:`Trainer` serves production training (``python -m model.train``) and a search
trial (``hpo/``): each epoch yields one flat report of metrics plus the health monitor's
diagnosis, and ``state_dict``/``load_state_dict`` resume a run exactly where it stopped.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model.config import TrainConfig
from model.engine import (
    batched_augmentation,
    build_datasets,
    build_loaders,
    build_loss,
    build_model,
    build_optimizer,
    build_scheduler,
    evaluate_model,
    loss_weights_at,
    resolve_device,
    seed_everything,
)
from model.data.batch_augment import RENDER_KEYS, render_batch
from model.health import LABELS, HealthMonitor, Verdict, constant_predictor_cls_loss

#: Validation metrics every report carries (zeros when a run stopped before it could validate).
VAL_KEYS = (
    "val/ap",
    "val/precision",
    "val/recall",
    "val/tp",
    "val/fp",
    "val/fn",
    "val/mean_iou",
    "val/num_gt",
    "val/num_images",
    "val/detections_per_image",
    "val/top_score",
    "val/top_score_spread",
)
_TRAIN_SUMS = ("train/loss", "train/loss_cls", "train/loss_box", "train/grad_norm", "train/pos_anchors", "empty")


class Trainer:
    """Trains one SSD face detector from a :class:`TrainConfig`.

    Args:
        cfg: the run's configuration.
        log: where progress lines go (``print`` for the CLI; a no-op in a trial).
        progress: show a progress bar per epoch.
    """

    def __init__(self, cfg: TrainConfig, *, log: Callable[[str], None] = print, progress: bool = False) -> None:
        self.cfg = cfg
        self.log = log
        self.progress = progress
        seed_everything(cfg.seed)
        self.device = resolve_device(cfg.device)
        self.train_set, self.val_set = build_datasets(cfg)
        self.train_loader, self.val_loader = build_loaders(cfg, self.train_set, self.val_set)
        self.iters_per_epoch = len(self.train_loader)

        cuda = self.device.type == "cuda"
        self.model = build_model(cfg).to(self.device)
        self.memory_format = torch.channels_last if cfg.optim.channels_last else torch.contiguous_format
        self.batched_augmentation = batched_augmentation(cfg)
        self.model = self.model.to(memory_format=self.memory_format)
        self.loss_fn = build_loss(cfg, self.model)
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_scheduler(cfg, self.optimizer, self.iters_per_epoch)
        self.amp_dtype: torch.dtype | None = None
        if cuda and cfg.optim.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # Only fp16 needs loss scaling; bf16 has float32's range.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.monitor = HealthMonitor(
            cfg.health,
            warmup_iters=cfg.schedule.warmup_length(self.iters_per_epoch),
            iters_per_epoch=self.iters_per_epoch,
            eval_score_threshold=cfg.eval.score_threshold,
            prior_cls_loss=constant_predictor_cls_loss(cfg.loss.neg_pos_ratio) if cfg.loss.cls_loss == "ce" else None,
        )
        self.epoch = 0
        self.global_step = 0
        self.best_ap = -math.inf

    # -- the loop -------------------------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        """The health monitor asked to stop."""
        return self.monitor.verdict.stop

    @property
    def finished(self) -> bool:
        return self.stopped or self.epoch >= self.cfg.epochs

    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch, validate, ask the health monitor; return the epoch's flat report."""
        self.epoch += 1
        start = time.perf_counter()
        train = self._train_epoch()
        if self.stopped:
            # A diverged model's boxes are NaN: nothing to validate, and it detects nothing.
            val = dict.fromkeys(VAL_KEYS, 0.0)
        else:
            val = evaluate_model(self.model, self.val_loader, self.device, self.cfg)
            self.monitor.check_epoch(self.epoch, {**train, **val})
        report: dict[str, Any] = {"epoch": self.epoch, "step": self.global_step, **train, **val}
        report["time/epoch_s"] = time.perf_counter() - start
        report.update(health_fields(self.monitor.verdict))
        return report

    def fit(self, checkpoint_dir: Path | None = None, on_report: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Run until the last epoch or a stopping diagnosis, saving ``last.pt``/``best.pt`` if asked."""
        reports = []
        while not self.finished:
            report = self.run_epoch()
            self.log(format_report(report, self.cfg.epochs))
            if checkpoint_dir is not None:
                self.save_checkpoint(checkpoint_dir / "last.pt")
                if not self.stopped and report["val/ap"] > self.best_ap:
                    self.best_ap = report["val/ap"]
                    self.save_checkpoint(checkpoint_dir / "best.pt")
            if on_report is not None:
                on_report(report)
            reports.append(report)
        return reports

    def _train_epoch(self) -> dict[str, float]:
        cfg, device, model = self.cfg, self.device, self.model
        model.train()
        check_every = cfg.health.check_every_steps if cfg.health.enabled else 0
        anchors = model.anchors(device, torch.float32)
        autocast = torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        max_norm = cfg.optim.grad_clip_norm or math.inf
        # Running sums stay on the device: the host syncs once per health check, not per step.
        sums = torch.zeros(len(_TRAIN_SUMS), device=device)
        steps = images = 0
        start = time.perf_counter()
        bar = self._progress_bar()
        for batch_images, targets in self._batches(bar):
            class_weight, box_weight = loss_weights_at(cfg, self.global_step, self.iters_per_epoch)
            self.loss_fn.class_weight, self.loss_fn.box_weight = class_weight, box_weight
            with autocast:
                outputs = model(batch_images)
            losses = self.loss_fn(outputs, anchors, targets)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(losses["loss"]).backward()
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            if self.scaler.is_enabled():
                # fp16 overflows are routine (the scaler skips that step); they are not divergence.
                grad_norm = torch.nan_to_num(grad_norm, nan=0.0, posinf=0.0)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.global_step += 1
            steps += 1
            images += batch_images.shape[0]
            num_pos = losses["num_pos"].float()
            current = torch.stack(
                [losses["loss"].detach(), losses["loss_cls"].detach(), losses["loss_box"].detach(), grad_norm.detach().float(), num_pos]
            )
            sums += torch.cat([current, (num_pos == 0).float().view(1)])
            # Step 1 too: its loss is the untrained network's, the one clean reference when the
            # loss has already exploded by the first regular check (lr 1: x56 at step 5).
            if check_every and (self.global_step % check_every == 0 or self.global_step == 1):
                loss, loss_cls, loss_box, gnorm, pos = current.tolist()
                verdict = self.monitor.check_step(
                    self.global_step, self.epoch, loss=loss, loss_cls=loss_cls, loss_box=loss_box, grad_norm=gnorm, num_pos=pos
                )
                bar.set_postfix(loss=f"{loss:.4g}", cls=f"{loss_cls:.3g}", box=f"{loss_box:.3g}", refresh=False)
                if verdict.stop:
                    break
        bar.close()
        if steps == 0:
            raise RuntimeError("the training loader yielded no batches: is the training split empty?")
        totals = dict(zip(_TRAIN_SUMS, sums.tolist()))
        train = {key: totals[key] / steps for key in _TRAIN_SUMS[:4]}
        train["train/pos_anchors_per_image"] = totals["train/pos_anchors"] / images
        # Training alone (validation excluded), after the sums' sync: the trial's throughput.
        train["train/images"] = images
        train["train/images_per_s"] = images / (time.perf_counter() - start)
        train["train/batches_without_positives"] = totals["empty"]
        train["train/lr"] = self.optimizer.param_groups[0]["lr"]
        train["train/class_weight"], train["train/box_weight"] = self.loss_fn.class_weight, self.loss_fn.box_weight
        exploded = not all(map(math.isfinite, train.values())) or train["train/loss"] > cfg.health.max_loss
        if check_every and not self.stopped and exploded:
            # Steps after the last check still count: a non-finite or exploded epoch mean is
            # labelled before validation, which a diverged model's NaN boxes would only crash.
            self.monitor.check_step(
                self.global_step,
                self.epoch,
                loss=train["train/loss"],
                loss_cls=train["train/loss_cls"],
                loss_box=train["train/loss_box"],
                grad_norm=train["train/grad_norm"],
                num_pos=totals["train/pos_anchors"] / steps,
            )
        return train

    def _progress_bar(self) -> tqdm:
        return tqdm(
            total=self.iters_per_epoch,
            desc=f"epoch {self.epoch}/{self.cfg.epochs}",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )

    def _batches(self, bar: tqdm) -> Iterator[tuple[torch.Tensor, list[dict[str, Any]]]]:
        for batch_images, targets in self.train_loader:
            batch_images = batch_images.to(self.device, non_blocking=True)
            if self.batched_augmentation:
                batch_images = render_batch(batch_images, targets, self.cfg.model.input_size)
            batch_images = batch_images.contiguous(memory_format=self.memory_format)
            yield batch_images, [{k: _to(v, self.device) for k, v in t.items() if k not in RENDER_KEYS} for t in targets]
            bar.update()

    # -- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly as an uninterrupted one."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_ap": self.best_ap,
            "health": self.monitor.state_dict(),
            "config": self.cfg.model_dump(mode="json"),
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "loader": self.train_loader.generator.get_state(),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.global_step = state["global_step"]
        self.best_ap = state["best_ap"]
        self.monitor.load_state_dict(state["health"])
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.train_loader.generator.set_state(rng["loader"])

    def save_checkpoint(self, path: Path) -> None:
        """Write atomically: an interruption mid-write never leaves a truncated checkpoint."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: Path) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=False))


def health_fields(verdict: Verdict) -> dict[str, Any]:
    """The report's health part: the label, a numeric code for metric stores, stop flag, reason."""
    return {
        "health/diagnosis": verdict.diagnosis,
        "health/code": float(LABELS.index(verdict.diagnosis)),
        "health/stop": float(verdict.stop),
        "health/message": verdict.message() if verdict.diagnosis != "healthy" else "",
    }


def format_report(report: dict[str, Any], epochs: int) -> str:
    """One log line per epoch."""
    line = (
        f"epoch {report['epoch']:3d}/{epochs}  loss {report['train/loss']:.4f}"
        f" (cls {report['train/loss_cls']:.4f}, box {report['train/loss_box']:.4f})"
        f"  lr {report['train/lr']:.2e}  val AP {report['val/ap']:.4f}  P {report['val/precision']:.3f}"
        f"  R {report['val/recall']:.3f}  top {report['val/top_score']:.3f}  {report['time/epoch_s']:.1f}s"
    )
    if report["health/diagnosis"] != "healthy":
        line += f"  [{report['health/message']}]"
    return line


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
