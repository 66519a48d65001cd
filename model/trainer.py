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
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model import report_keys as K
from model.callbacks import Callback, EpochLog, HealthCheck, StepResult, TrainStatistics
from model.checkpoint import load_checkpoint
from model.config import TrainConfig
from model.data.batch_augment import RENDER_KEYS, render_batch
from model.engine import (
    batched_augmentation,
    build_datasets,
    build_loaders,
    build_loss,
    build_model,
    build_optimizer,
    build_scheduler,
    build_wider_validation,
    evaluate_model,
    loss_weights_at,
    resolve_device,
    seed_everything,
)
from model.health import HealthMonitor
from model.loss import weighted_loss
from model.loss_weighting import build_loss_weighting
from model.recovery import Recovery


class Trainer:
    """Trains one SSD face detector from a :class:`TrainConfig`.

    The loop steps the optimiser and validates; the rest is callbacks (``model.callbacks``): the
    defaults (training statistics, the health monitor, a log line per epoch) and the caller's
    (checkpoints, history, MLflow, a search's reporting), called in that order.

    Args:
        cfg: the run's configuration.
        log: where progress lines go (``print`` for the CLI; a no-op in a trial).
        progress: show a progress bar per epoch.
        callbacks: the caller's callbacks, after the defaults.
    """

    def __init__(
        self, cfg: TrainConfig, *, log: Callable[[str], None] = print, progress: bool = False, callbacks: Sequence[Callback] = ()
    ) -> None:
        self.cfg = cfg
        """The configuration in force: ``start_cfg`` with the changes of any recovery."""
        self.start_cfg = cfg
        """The configuration the run was started with (checkpoints carry it: a resume passes it again)."""
        self.log = log
        self.progress = progress
        seed_everything(cfg.seed)
        self.device = resolve_device(cfg.device)
        self.train_set, self.val_set = build_datasets(cfg)
        self.wider = build_wider_validation(cfg, self.val_set)
        """The official WIDER FACE protocol's ground truth (``eval.wider_ap``), or ``None``."""
        self.train_loader, self.val_loader = build_loaders(cfg, self.train_set, self.val_set)
        self.iters_per_epoch = len(self.train_loader)

        cuda = self.device.type == "cuda"
        self.model = build_model(cfg).to(self.device)
        self.memory_format = torch.channels_last if cfg.optim.channels_last else torch.contiguous_format
        self.batched_augmentation = batched_augmentation(cfg)
        self.model = self.model.to(memory_format=self.memory_format)
        self.loss_fn = build_loss(cfg, self.model)
        self.optimizer = build_optimizer(cfg, self.model)
        self.loss_weighting = build_loss_weighting(cfg.weighting.method, cfg.weighting.ratio_momentum).to(self.device)
        if (group := self.loss_weighting.param_group()) is not None:
            self.optimizer.add_param_group(group)  # before the scheduler: it schedules every group
        self.scheduler = build_scheduler(cfg, self.optimizer, self.iters_per_epoch)
        self.amp_dtype: torch.dtype | None = None
        if cuda and cfg.optim.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # Only fp16 needs loss scaling; bf16 has float32's range.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.epoch = 0
        self.global_step = 0
        self.steps_this_epoch = 0
        self.batch_index = -1
        """Position in the epoch's data order of the batch just trained (skipped batches count)."""
        self.best_ap = -math.inf
        self.improved = False
        """The last epoch raised ``best_ap``."""
        self.should_stop = False
        """Set by a callback (the health monitor) to end the run."""
        self.health = HealthCheck(self)
        self.callbacks: list[Callback] = [TrainStatistics(), self.health, EpochLog(), *callbacks]
        self._bar: tqdm | None = None

    # -- the loop -------------------------------------------------------------------------------

    @property
    def monitor(self) -> HealthMonitor:
        return self.health.monitor

    @property
    def recovery(self) -> Recovery:
        return self.health.recovery

    def effective_config(self) -> TrainConfig:
        """The configuration in force now: the start's with every recovery's changes."""
        return self.cfg

    def recovery_events(self) -> list[dict[str, Any]]:
        """The run's recoveries so far (``model.recovery``), oldest first."""
        return list(self.recovery.events)

    @property
    def stopped(self) -> bool:
        """A callback (the health monitor) asked to stop."""
        return self.should_stop

    @property
    def finished(self) -> bool:
        return self.stopped or self.epoch >= self.cfg.epochs

    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch, validate, run the callbacks; return the epoch's flat report (``model.report_keys``)."""
        self.epoch += 1
        start = time.perf_counter()
        train = self._train_epoch()
        if self.stopped:
            # A diverged model's boxes are NaN: nothing to validate, and it detects nothing.
            val: dict[str, float | None] = dict.fromkeys(K.VAL_KEYS, 0.0)
            if self.wider is None:
                val.update(dict.fromkeys(K.VAL_WIDER_KEYS))  # not computed at all, as in every other epoch
        else:
            # The official protocol on its fixed subset of val, on all of val at the last epoch.
            full = self.epoch >= self.cfg.epochs
            val = evaluate_model(self.model, self.val_loader, self.device, self.cfg, wider=self.wider, full=full)
        report: dict[str, Any] = {K.EPOCH: self.epoch, K.STEP: self.global_step, **train, **val}
        self._call("on_validation_end", report)
        self.improved = not self.stopped and report[K.VAL_AP] > self.best_ap
        if self.improved:
            self.best_ap = report[K.VAL_AP]
        report[K.EPOCH_SECONDS] = time.perf_counter() - start
        self._call("on_epoch_end", report)
        return report

    def fit(self) -> list[dict[str, Any]]:
        """Run until the last epoch or a stop; the epochs' reports."""
        reports = []
        while not self.finished:
            reports.append(self.run_epoch())
        return reports

    def show_progress(self, **values: str) -> None:
        """Figures beside the progress bar (a callback that has synced them anyway)."""
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def _train_epoch(self) -> dict[str, Any]:
        model = self.model
        model.train()
        anchors = model.anchors(self.device, torch.float32)
        self.steps_this_epoch = images = 0
        class_weight, box_weight = loss_weights_at(self.cfg, self.global_step, self.iters_per_epoch)
        start = time.perf_counter()
        self._call("on_train_epoch_start")
        self._bar = self._progress_bar()
        for index, (batch_images, targets) in enumerate(self._batches(self._bar)):
            if self.recovery.skips(self.epoch, index):
                continue  # a recovery skips the batches around an explosion when it replays the epoch
            self.batch_index = index
            lr = self.optimizer.param_groups[0]["lr"]
            outputs, losses, grad_norm, class_weight, box_weight = self.optimizer_step(
                batch_images, targets, anchors, self.global_step
            )
            self.scheduler.step()
            self.global_step += 1
            self.steps_this_epoch += 1
            images += batch_images.shape[0]
            step = StepResult(
                self.global_step, self.epoch, batch_images.shape[0], outputs, losses, grad_norm, lr, class_weight, box_weight
            )
            self._call("on_train_step_end", step)
            if self.should_stop:
                break
        self._bar.close()
        self._bar = None
        if self.steps_this_epoch == 0:
            raise RuntimeError("the training loader yielded no batches: is the training split empty?")
        train: dict[str, Any] = {K.TRAIN_IMAGES: images}
        self._call("on_train_epoch_end", train)
        train[K.TRAIN_LR] = self.optimizer.param_groups[0]["lr"]
        train[K.TRAIN_CLASS_WEIGHT], train[K.TRAIN_BOX_WEIGHT] = _scalar(class_weight), _scalar(box_weight)
        # Training alone (validation excluded), after the callbacks' sync: the run's throughput.
        train[K.TRAIN_IMAGES_PER_S] = images / (time.perf_counter() - start)
        return {key: train[key] for key in K.TRAIN_KEYS if key in train} | train

    def optimizer_step(
        self, batch_images: torch.Tensor, targets: list[dict[str, Any]], anchors: torch.Tensor, step: int
    ) -> tuple[Any, dict[str, torch.Tensor], torch.Tensor, Any, Any]:
        """One optimiser step on a batch at the lr in force (the schedule is the caller's): forward,
        the loss weighted as at global step ``step``, backward, clipping, the (scaled) update.
        Returns the model's outputs, the losses (``loss``: the weighted one minimised), the gradient
        norm before clipping, the class and box weights. The training loop and the LR probe share it."""
        cfg, model = self.cfg, self.model  # the config in force: a recovery may have changed it (loss weights)
        with torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype else nullcontext():
            outputs = model(batch_images)
        losses = self.loss_fn(outputs, anchors, targets)
        class_weight, box_weight = self.loss_weighting.weights(losses, *loss_weights_at(cfg, step, self.iters_per_epoch))
        losses["loss"] = weighted_loss(losses, class_weight, box_weight)
        regulariser = self.loss_weighting.regulariser()
        objective = losses["loss"] + regulariser if isinstance(regulariser, torch.Tensor) else losses["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(objective).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip_norm or math.inf)
        if self.scaler.is_enabled():
            # fp16 overflows are routine (the scaler skips that step); they are not divergence.
            grad_norm = torch.nan_to_num(grad_norm, nan=0.0, posinf=0.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return outputs, losses, grad_norm, class_weight, box_weight

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
            "stopped": self.should_stop,
            "loss_weighting": self.loss_weighting.state_dict(),
            "callbacks": {
                **{cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_key},
                self.recovery.state_key: self.recovery.state_dict(),
            },
            "config": self.start_cfg.model_dump(mode="json"),
            "rng": self.rng_state(),
        }

    def rng_state(self) -> dict[str, Any]:
        """Every random state training draws from: Python's, NumPy's, torch's, CUDA's, the loader's."""
        return {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "loader": self.train_loader.generator.get_state(),
        }

    def set_rng_state(self, rng: dict[str, Any]) -> None:
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.train_loader.generator.set_state(rng["loader"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.global_step = state["global_step"]
        self.best_ap = state["best_ap"]
        if state.get("loss_weighting"):
            self.loss_weighting.load_state_dict(state["loss_weighting"])
        saved = state.get("callbacks", {"health": state.get("health")})  # before callbacks: "health" alone
        for callback in self.callbacks:
            if callback.state_key and saved.get(callback.state_key) is not None:
                callback.load_state_dict(saved[callback.state_key])
        if saved.get(self.recovery.state_key):  # after the monitor's: it re-arms the monitor
            self.recovery.load_state_dict(saved[self.recovery.state_key], self)
        self.should_stop = state.get("stopped", self.monitor.verdict.stop)
        self.set_rng_state(state["rng"])

    def save_checkpoint(self, path: Path) -> None:
        """Write atomically: an interruption mid-write never leaves a truncated checkpoint."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: Path) -> None:
        self.load_state_dict(load_checkpoint(path))  # tensors and plain data only (weights_only)


def _scalar(value: float | torch.Tensor) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
