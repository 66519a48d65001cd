"""What a run does besides optimising: hooks the :class:`model.trainer.Trainer` calls.

The loop itself only steps the optimiser and validates; statistics, health checks, checkpoints,
logging and recovery are callbacks, as in Lightning's ``Callback`` and detectron2's
``HookBase``. A callback reads the trainer, may add keys to the dicts it is handed, and asks the run
to end by setting ``trainer.should_stop``. Callbacks are called in order: the trainer's defaults
(:class:`TrainStatistics`, :class:`HealthCheck`, :class:`EpochLog`) first, then the caller's, so
that a caller's callback sees a complete report.

A callback with state (``state_key`` set) has it saved in the trainer's checkpoint and restored on
resume.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from model import report_keys as K
from model.engine import loss_weights_at
from model.health import LABELS, HealthMonitor, Verdict, constant_predictor_cls_loss
from model.recovery import Recovery
from model.run_files import EFFECTIVE_CONFIG_FILE, RECOVERIES_FILE

if TYPE_CHECKING:
    from model.config import TrainConfig
    from model.ssd import HeadOutputs
    from model.trainer import Trainer

__all__ = [
    "Callback",
    "Checkpointing",
    "EpochLog",
    "HealthCheck",
    "History",
    "StepResult",
    "TrainStatistics",
    "health_fields",
    "save_recovery_record",
]


@dataclass
class StepResult:
    """One optimiser step, as callbacks see it. Tensors stay on the device: reading one syncs."""

    step: int
    """Global 1-based count of the step just taken."""
    epoch: int
    images: int
    """Images in the batch."""
    outputs: HeadOutputs
    """The model's raw head outputs for the batch."""
    losses: dict[str, torch.Tensor]
    """The loss's parts and counters (``model.loss.MultiBoxLoss``) plus ``loss``, the weighted sum minimised."""
    grad_norm: torch.Tensor
    """Gradient norm before clipping."""
    lr: float
    """The learning rate the step used."""
    class_weight: float | torch.Tensor
    """The weights applied (``model.loss_weighting``): floats, or device tensors when dynamic."""
    box_weight: float | torch.Tensor


class Callback:
    """Override the hooks you need; each gets the trainer first."""

    #: Where this callback's state goes in the checkpoint (``None``: it has none).
    state_key: str | None = None

    def on_train_epoch_start(self, trainer: Trainer) -> None: ...

    def on_train_step_end(self, trainer: Trainer, step: StepResult) -> None:
        """After the optimiser step. Set ``trainer.should_stop`` to end the epoch here."""

    def on_train_epoch_end(self, trainer: Trainer, train: dict[str, Any]) -> None:
        """After the epoch's last step; add the epoch's ``train/*`` figures to ``train``."""

    def on_validation_end(self, trainer: Trainer, report: dict[str, Any]) -> None:
        """After validation (skipped, with zeros, when the run was stopped); ``report`` has train and val keys."""

    def on_epoch_end(self, trainer: Trainer, report: dict[str, Any]) -> None:
        """The epoch's report is complete once the callbacks before this one have added to it."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TrainStatistics(Callback):
    """The epoch's training means (loss and its parts, gradient norm, positives per image) and the
    number of batches without a positive anchor. Running sums stay on the device: one host sync
    per epoch."""

    _SUMS = (K.TRAIN_LOSS, K.TRAIN_LOSS_CLS, K.TRAIN_LOSS_BOX, K.TRAIN_GRAD_NORM, "pos", "empty")

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        self.sums = torch.zeros(len(self._SUMS), device=trainer.device)
        self.steps = self.images = 0

    def on_train_step_end(self, trainer: Trainer, step: StepResult) -> None:
        losses, num_pos = step.losses, step.losses["num_pos"].float()
        parts = [
            losses["loss"].detach(),
            losses["loss_cls"].detach(),
            losses["loss_box"].detach(),
            step.grad_norm.detach().float(),
        ]
        self.sums += torch.stack([*parts, num_pos, (num_pos == 0).float()])
        self.steps += 1
        self.images += step.images

    def on_train_epoch_end(self, trainer: Trainer, train: dict[str, Any]) -> None:
        totals = dict(zip(self._SUMS, self.sums.tolist()))
        train.update({key: totals[key] / self.steps for key in self._SUMS[:4]})
        train[K.TRAIN_POS_ANCHORS] = totals["pos"] / self.images
        train[K.TRAIN_EMPTY_BATCHES] = totals["empty"]


def health_fields(verdict: Verdict) -> dict[str, Any]:
    """The report's health part: the label, a numeric code for metric stores, stop flag, reason."""
    return {
        K.HEALTH_DIAGNOSIS: verdict.diagnosis,
        K.HEALTH_CODE: float(LABELS.index(verdict.diagnosis)),
        K.HEALTH_STOP: float(verdict.stop),
        K.HEALTH_MESSAGE: verdict.message() if verdict.diagnosis != "healthy" else "",
    }


def monitored_loss(trainer: Trainer, loss: float, loss_cls: float, loss_box: float, step: int) -> float:
    """The loss the health monitor judges: the parts at the configured weights (with the ramp's
    schedule at ``step``). With ``weighting.method: fixed`` that is the loss minimised. A dynamic
    weighting moves its own weights (uncertainty weighting shrinks both to ~0.4 within epochs,
    ``loss_ratio`` rescales the box part every step), which the stall and overfitting checks would
    read as a falling loss and the explosion reference as a moving scale."""
    if trainer.cfg.weighting.method == "fixed":
        return loss
    class_weight, box_weight = loss_weights_at(trainer.cfg, step, trainer.iters_per_epoch)
    return class_weight * loss_cls + box_weight * loss_box


class HealthCheck(Callback):
    """The health monitor (``model.health``): every ``health.check_every_steps`` steps (and step 1),
    at the epoch's end and after validation; a stopping diagnosis ends the run, or, with
    ``health.on_failure: recover``, rolls it back (``model.recovery``, driven from here so that
    it acts before the caller's callbacks: their checkpoint is of the recovered run)."""

    state_key = "health"

    def __init__(self, trainer: Trainer) -> None:
        cfg = trainer.cfg
        self.every = cfg.health.check_every_steps if cfg.health.enabled else 0
        self.monitor = HealthMonitor(
            cfg.health,
            warmup_iters=cfg.schedule.warmup_length(trainer.iters_per_epoch),
            iters_per_epoch=trainer.iters_per_epoch,
            eval_score_threshold=cfg.eval.score_threshold,
            prior_cls_loss=constant_predictor_cls_loss(cfg.loss.neg_pos_ratio) if cfg.loss.cls_loss == "ce" else None,
        )
        self.recovery = Recovery(trainer)

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        self.recovery.on_train_epoch_start(trainer)

    def on_train_step_end(self, trainer: Trainer, step: StepResult) -> None:
        self.recovery.on_train_step_end(trainer)
        # Step 1 too: its loss is the untrained network's, the one clean reference when the loss
        # has already exploded by the first regular check (lr 1: x56 at step 5).
        if not self.every or (step.step % self.every and step.step != 1):
            return
        losses = step.losses
        parts = [losses["loss"], losses["loss_cls"], losses["loss_box"], step.grad_norm.float(), losses["num_pos"].float()]
        loss, loss_cls, loss_box, grad_norm, num_pos = torch.stack([p.detach() for p in parts]).tolist()
        trainer.show_progress(loss=f"{loss:.4g}", cls=f"{loss_cls:.3g}", box=f"{loss_box:.3g}")
        loss = monitored_loss(trainer, loss, loss_cls, loss_box, step.step - 1)  # the step's weights were those of step - 1
        verdict = self.monitor.check_step(
            step.step, step.epoch, loss=loss, loss_cls=loss_cls, loss_box=loss_box, grad_norm=grad_norm, num_pos=num_pos
        )
        trainer.should_stop |= verdict.stop

    def on_train_epoch_end(self, trainer: Trainer, train: dict[str, Any]) -> None:
        loss = self._epoch_loss(trainer, train)
        exploded = not all(map(math.isfinite, train.values())) or loss > trainer.cfg.health.max_loss
        if self.every and not trainer.should_stop and exploded:
            # Steps after the last check still count: a non-finite or exploded epoch mean is
            # labelled before validation, which a diverged model's NaN boxes would only crash.
            verdict = self.monitor.check_step(
                trainer.global_step,
                trainer.epoch,
                loss=loss,
                loss_cls=train[K.TRAIN_LOSS_CLS],
                loss_box=train[K.TRAIN_LOSS_BOX],
                grad_norm=train[K.TRAIN_GRAD_NORM],
                num_pos=train[K.TRAIN_POS_ANCHORS] * train[K.TRAIN_IMAGES] / max(1, trainer.steps_this_epoch),
            )
            trainer.should_stop |= verdict.stop

    def on_validation_end(self, trainer: Trainer, report: dict[str, Any]) -> None:
        if not trainer.should_stop:
            metrics = {**report, K.TRAIN_LOSS: self._epoch_loss(trainer, report)} if K.TRAIN_LOSS in report else report
            trainer.should_stop |= self.monitor.check_epoch(trainer.epoch, metrics).stop

    @staticmethod
    def _epoch_loss(trainer: Trainer, train: dict[str, Any]) -> float:
        # Under a dynamic weighting the epoch's parts at the weights of its last step (a ramp moving
        # within the epoch makes this approximate; with fixed weights it is the reported mean itself).
        parts = train[K.TRAIN_LOSS], train[K.TRAIN_LOSS_CLS], train[K.TRAIN_LOSS_BOX]
        return monitored_loss(trainer, *parts, step=max(0, trainer.global_step - 1))

    def on_epoch_end(self, trainer: Trainer, report: dict[str, Any]) -> None:
        report.update(health_fields(self.monitor.verdict))
        self.recovery.on_epoch_end(trainer, report)

    def state_dict(self) -> dict[str, Any]:
        return self.monitor.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.monitor.load_state_dict(state)


class EpochLog(Callback):
    """One line per epoch through the trainer's ``log``."""

    def on_epoch_end(self, trainer: Trainer, report: dict[str, Any]) -> None:
        trainer.log(format_report(report, trainer.cfg.epochs))


def format_report(report: dict[str, Any], epochs: int) -> str:
    line = (
        f"epoch {report[K.EPOCH]:3d}/{epochs}  loss {report[K.TRAIN_LOSS]:.4f}"
        f" (cls {report[K.TRAIN_LOSS_CLS]:.4f}, box {report[K.TRAIN_LOSS_BOX]:.4f})"
        f"  lr {report[K.TRAIN_LR]:.2e}  val AP {report[K.VAL_AP]:.4f}  P {report[K.VAL_PRECISION]:.3f}"
        f"  R {report[K.VAL_RECALL]:.3f}  top {report[K.VAL_TOP_SCORE]:.3f}  {report[K.EPOCH_SECONDS]:.1f}s"
    )
    if report[K.HEALTH_DIAGNOSIS] != "healthy":
        line += f"  [{report[K.HEALTH_MESSAGE]}]"
    return line


class Checkpointing(Callback):
    """``last.pt`` after every epoch, ``best.pt`` when the validation AP improved (atomic writes);
    after a recovery also ``effective_config.yaml`` (the config with the recoveries' changes) and
    ``recoveries.json`` (the events: with the original config they reproduce the run), see
    :func:`save_recovery_record`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def on_epoch_end(self, trainer: Trainer, report: dict[str, Any]) -> None:
        trainer.save_checkpoint(self.directory / "last.pt")
        if trainer.improved:
            trainer.save_checkpoint(self.directory / "best.pt")
        events = trainer.recovery_events()
        if events:
            save_recovery_record(self.directory, trainer.effective_config(), events)


def save_recovery_record(directory: Path, config: TrainConfig, events: list[dict[str, Any]]) -> None:
    """A recovered run's record in ``directory``: ``config`` (the configuration with the
    recoveries' changes) as :data:`~model.run_files.EFFECTIVE_CONFIG_FILE` and ``events`` (the
    trainer's :meth:`~model.trainer.Trainer.recovery_events`) as :data:`~model.run_files.RECOVERIES_FILE`."""
    directory = Path(directory)
    config.to_yaml(directory / EFFECTIVE_CONFIG_FILE)
    (directory / RECOVERIES_FILE).write_text(json.dumps(events, indent=2))


class History(Callback):
    """Each epoch's report as one JSON line appended to ``path`` (a resumed run appends)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_epoch_end(self, trainer: Trainer, report: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(report) + "\n")
