"""Recovery: roll a failing run back to its last healthy state and change what made it fail.

With ``health.on_failure: recover`` a stopping diagnosis of the health monitor no longer ends the
run. The trainer's whole state (model, optimiser, schedule, RNG, monitor, callbacks: what a
checkpoint holds) is kept in memory at the end of every epoch the monitor judged healthy, the last
``health.snapshots`` of them, plus the state before the first step. On a diagnosis whose
intervention (``health.interventions``) is ``rollback``, the newest snapshot from before the
failure's onset is restored (for a validation diagnosis the onset is the first of the evaluations
that showed it), the intervention's changes are applied (learning rate, a fresh warm-up, loss
weights, hard-negative ratio, batches to skip) and training goes on, within ``max_recoveries``. A
fresh warm-up that overlaps the schedule's own (a rollback into it) ramps once, along the lower of
the two.

Snapshots are taken at epoch ends only: there, and only there, the data order is resumable
exactly (as for checkpoints), so a restored epoch replays the same batches, and the run after a
recovery resumes from ``last.pt`` exactly like one never interrupted. The cost is at most one epoch
of lost work per recovery and, per snapshot, the model and optimiser state (see
``bench/results/recovery.md`` for the bytes of the tiny SSD and MobileNetV3).

With ``lr_probe.enabled`` (:class:`~model.health.LRProbe`) the intervention measures the learning
rate instead of trusting ``lr_factor``: an LR range test from the restored state. Each candidate
(factors of the learning rate in force; by default four decades in ``lr_factor``'s direction) trains
``steps`` optimiser steps at that peak lr (no warm-up, no decay) from the restored model and
optimiser state, which is restored again after each; a candidate whose loss turns non-finite or
exceeds ``explode`` times its first step's diverged. Rule (``LRProbe.rule``): among those that did
not diverge, the candidate with the lowest mean loss over the later half of its steps (the same
batches for every candidate: a paired comparison; ties to the smaller lr; ``diverged``'s default),
or the largest candidate below the smallest diverging one (``stalled``'s default), times ``pick``
(1 by default: see :class:`~model.health.LRProbe` for why not lr_find's "minimum / 10"); every
candidate diverged: ``lr_factor``. The intervention's other changes (the fresh warm-up, skipped batches) then apply
as without the probe. The batches are the ones the run trains on next (the replayed epoch's, its
skipped batches left out, then the next epoch's if it is shorter), drawn with every random state
(Python, NumPy, torch, the loader's generator) saved before and put back after each candidate: the
probe consumes no randomness, so the training after it sees what it would have seen without a
probe, and a run resumed from a checkpoint after the recovery (which holds the chosen lr) goes on
exactly. Its compute, ``candidates x steps`` batches (a candidate cut short by a non-finite loss
is charged in full), is in the event (``probe.images``) for a benchmark to charge; with the defaults
4 x 8 batches of 8: 256 images, 86 % of an epoch of the zoo's runs (300 images), plus the copies of
the model and optimiser state between candidates.

Each recovery is an event: the diagnosis and its evidence, the failure's step and epoch, the
snapshot's epoch and step, the changes (before -> after). It goes to the epoch report
(``health/recoveries``, ``health/recovery``), the log, the checkpoint, and ``effective_config.yaml``
(the config with the changes: a run restarted with the fix) beside ``last.pt``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, cast

import torch
from tqdm import tqdm

from model import report_keys as K
from model.dotted import get_dotted
from model.engine import build_loss
from model.health import Intervention, LRProbe, Problem, Verdict, constant_predictor_cls_loss
from model.ssd import init_face_prior

if TYPE_CHECKING:
    from model.trainer import Trainer

__all__ = ["Recovery", "choose_factor", "probe_factors", "probe_lr", "snapshot_bytes"]

_STATE_VERSION = 1


def _cpu_copy(value: Any) -> Any:
    """A deep copy with every tensor on the CPU: snapshots must not alias live state or use GPU memory."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(v) for v in value)
    return copy.deepcopy(value)


def snapshot_bytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) state dict."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(snapshot_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(snapshot_bytes(v) for v in state)
    return 0


class Recovery:
    """The trainer's recovery (driven by :class:`model.callbacks.HealthCheck`, whose verdicts it acts on)."""

    state_key = "recovery"

    def __init__(self, trainer: Trainer) -> None:
        health = trainer.cfg.health
        self.cfg = health
        self.enabled = health.enabled and health.on_failure == "recover"
        self.snapshots: list[dict[str, Any]] = []  # oldest first
        self.best: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []
        self.overrides: dict[str, Any] = {}  # dotted config keys changed by interventions
        self.rewarms: list[tuple[int, int, float]] = []  # (first step, length, start factor)
        self.lr_scale = 1.0
        self.skip: set[tuple[int, int]] = set()  # (epoch, batch index in the epoch's data order)
        self.rearm: tuple[int, int] | None = None  # the monitor's (warmup_epochs, first_verdict_epoch)
        self.event_text = ""
        self._last_index = -1
        self._taking = False
        # The schedule as built from the run's config: interventions compose with it.
        self._base_lambdas = list(trainer.scheduler.lr_lambdas)
        self._base_lrs = list(trainer.scheduler.base_lrs)
        schedule = trainer.start_cfg.schedule
        self._base_warmup = min(
            schedule.warmup_length(trainer.iters_per_epoch), trainer.start_cfg.epochs * trainer.iters_per_epoch
        )
        self._keep_best = any(iv.action == "restore_best" and d in health.stop_on for d, iv in health.interventions.items())

    # -- hooks (called by HealthCheck) -------------------------------------------------------------

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        self.event_text = ""
        if self.enabled and not self.snapshots and trainer.global_step == 0:
            # The untrained state: run_epoch has already counted this epoch, nothing else has run.
            snapshot = self._snapshot(trainer)
            snapshot["epoch"] = trainer.epoch - 1
            self.snapshots.append(snapshot)

    def skips(self, epoch: int, index: int) -> bool:
        return (epoch, index) in self.skip

    def on_train_step_end(self, trainer: Trainer) -> None:
        self._last_index = trainer.batch_index

    def on_epoch_end(self, trainer: Trainer, report: dict[str, Any]) -> None:
        verdict = trainer.monitor.verdict
        if self.enabled and trainer.should_stop and verdict.stop:
            if self._recover(trainer, verdict):
                report[K.HEALTH_STOP] = 0.0
        elif self.enabled and not trainer.should_stop and verdict.diagnosis == "healthy":
            snapshot = self._snapshot(trainer)
            snapshot["train_loss"] = float(report[K.TRAIN_LOSS_CLS] + report[K.TRAIN_LOSS_BOX])  # unweighted
            if self.snapshots:  # the untrained state stays first (``rollback: start``), then the newest
                untrained, *others = self.snapshots
                self.snapshots = [untrained, *[*others, snapshot][-self.cfg.snapshots :]]
            else:
                self.snapshots = [snapshot]
            if self._keep_best and trainer.improved:
                self.best = snapshot
        report[K.HEALTH_RECOVERIES] = float(len(self.events))
        report[K.HEALTH_RECOVERY] = self.event_text
        report[K.HEALTH_RECOVERED_FROM] = self.events[-1]["diagnosis"] if self.events else ""

    # -- recovering --------------------------------------------------------------------------------

    def _recover(self, trainer: Trainer, verdict: Verdict) -> bool:
        # A stopping verdict's diagnosis is one of stop_on: a Problem, never "healthy".
        intervention = self.cfg.interventions.get(cast(Problem, verdict.diagnosis))
        if intervention is None or intervention.action == "stop":
            return False
        if len(self.events) >= self.cfg.max_recoveries:
            trainer.log(f"recovery: budget of {self.cfg.max_recoveries} spent; stopping on {verdict.diagnosis}")
            return False
        if intervention.action == "restore_best":
            if self.best is None:
                return False
            snapshot = self.best
        elif not self.snapshots:
            return False
        elif intervention.rollback == "start":
            snapshot = self.snapshots[0]  # the untrained state, always kept
        else:
            onset = _onset_epoch(verdict)
            untrained = trainer.monitor.untrained_loss
            before = [s for s in self.snapshots if s["epoch"] < onset and _learnt(s, untrained)]
            snapshot = (before or self.snapshots[:1])[-1]
        failed_epoch, failed_step = verdict.epoch, verdict.step
        skipped = []
        if intervention.skip_batches and failed_step is not None and failed_epoch is not None:
            last = self._last_index
            skipped = [(failed_epoch, i) for i in range(max(0, last - intervention.skip_batches + 1), last + 1)]
        trainer.load_state_dict(_cpu_copy(snapshot))  # a copy: the optimiser's state would alias it
        self.snapshots = [s for s in self.snapshots if s["epoch"] <= snapshot["epoch"]]
        # The resets touch the model and optimiser only, apply the config and schedule: either order
        # gives the same run; resetting first lets the probe start from the state training goes on from.
        resets = self._reset(trainer, intervention, seed=trainer.cfg.seed * 1000 + len(self.events) + 1)
        probe: dict[str, Any] | None = None
        if intervention.action == "restore_best":
            changes: dict[str, list[Any]] = {}
            trainer.should_stop = True
        else:
            self.skip.update(skipped)
            if intervention.lr_probe.enabled:
                probe = probe_lr(trainer, intervention, self.skips)
                intervention = intervention.model_copy(update={"lr_factor": probe["chosen_factor"]})
            changes = self.apply(trainer, intervention)
        event = {
            "recovery": len(self.events) + 1,
            "diagnosis": verdict.diagnosis,
            "verdict": verdict.message(),
            "failed_epoch": failed_epoch,
            "failed_step": failed_step,
            "action": intervention.action,
            "snapshot_epoch": snapshot["epoch"],
            "snapshot_step": snapshot["global_step"],
            "changes": changes,
            "resets": resets,
            "skipped_batches": [list(s) for s in skipped],
        }
        if probe is not None:
            event["probe"] = probe
        self.events.append(event)
        self.event_text = describe(event)
        trainer.log(f"recovery {event['recovery']}/{self.cfg.max_recoveries}: {self.event_text}")
        return True

    def apply(self, trainer: Trainer, iv: Intervention) -> dict[str, list[Any]]:
        """Change the run as ``iv`` says; return ``{dotted key: [before, after]}``."""
        cfg = trainer.cfg
        factors = {
            "optim.lr": iv.lr_factor,
            "loss.class_weight": iv.class_weight_factor,
            "loss.box_weight": iv.box_weight_factor,
            "loss.neg_pos_ratio": iv.neg_pos_factor,
        }
        before = {key: get_dotted(cfg, key) for key in factors}
        after = {key: before[key] * factor for key, factor in factors.items()}
        if iv.neg_pos_max is not None:
            after["loss.neg_pos_ratio"] = min(after["loss.neg_pos_ratio"], iv.neg_pos_max)
        if iv.box_class_max is not None:
            after["loss.box_weight"] = min(after["loss.box_weight"], iv.box_class_max * after["loss.class_weight"])
        changes: dict[str, list[Any]] = {key: [before[key], value] for key, value in after.items() if value != before[key]}
        ipe = max(1, trainer.iters_per_epoch)
        length = max(iv.warmup_iters, round(iv.warmup_epochs * ipe))
        if length:
            # A rewarm that starts after the restored step belongs to the abandoned branch.
            self.rewarms = [r for r in self.rewarms if r[0] <= trainer.global_step]
            self.rewarms.append((trainer.global_step, length, cfg.schedule.warmup_start_factor))
            if length > cfg.schedule.warmup_length(ipe):  # a restart with the fix warms up at least this long
                if cfg.schedule.warmup_epochs is None:
                    changes["schedule.warmup_iters"] = [cfg.schedule.warmup_iters, length]
                else:
                    changes["schedule.warmup_epochs"] = [cfg.schedule.warmup_epochs, round(length / ipe, 4)]
        self.lr_scale *= iv.lr_factor
        self.overrides.update({key: after for key, (_, after) in changes.items()})
        # Validation diagnoses wait for the fresh warm-up and the grace again, judged on new epochs only.
        monitor = trainer.monitor
        warm = math.ceil(length / ipe)
        warmup_epochs = max(monitor.warmup_epochs, trainer.epoch + warm)
        self.rearm = (warmup_epochs, max(monitor.first_verdict_epoch, warmup_epochs + monitor._span(self.cfg.grace_epochs) + 1))
        self._install(trainer)
        scheduler = trainer.scheduler
        lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        for group, lr in zip(trainer.optimizer.param_groups, lrs):
            group["lr"] = lr
        scheduler._last_lr = lrs
        return changes

    @staticmethod
    def _reset(trainer: Trainer, iv: Intervention, seed: int) -> list[str]:
        """Re-initialise what ``iv`` says (after the rollback, so the restored state is what changes);
        return what was reset. The head draws from its own generator: the run's random streams (data
        order, augmentation) go on as without the reset, and a resumed run does the same."""
        resets = []
        optimizer = trainer.optimizer
        if iv.reset_class_head:
            device = next(trainer.model.parameters()).device
            generator = torch.Generator(device=device).manual_seed(seed)
            for param in init_face_prior(trainer.model.head, trainer.cfg.model.prior_prob, generator):
                optimizer.state.pop(param, None)
            resets.append("class head")
        if iv.reset_optimizer:
            optimizer.state.clear()
            resets.append("optimizer state")
        return resets

    def _install(self, trainer: Trainer) -> None:
        """Make the trainer's objects follow ``overrides``, ``rewarms``, ``lr_scale`` and ``rearm``
        (after a rollback and on resume: none of them is in the objects' own state)."""
        trainer.cfg = trainer.start_cfg.with_overrides(self.overrides)
        trainer.loss_fn = build_loss(trainer.cfg, trainer.model)
        monitor = trainer.monitor
        if trainer.cfg.loss.cls_loss == "ce":
            monitor.prior_cls_loss = constant_predictor_cls_loss(trainer.cfg.loss.neg_pos_ratio)
        if self.rearm is not None:
            monitor.warmup_epochs, monitor.first_verdict_epoch = self.rearm
        scheduler, rewarms = trainer.scheduler, list(self.rewarms)
        scheduler.lr_lambdas = [_rewarmed(base, rewarms, self._base_warmup) for base in self._base_lambdas]
        scheduler.base_lrs = [lr * self.lr_scale for lr in self._base_lrs]

    def _snapshot(self, trainer: Trainer) -> dict[str, Any]:
        self._taking = True
        try:
            state = trainer.state_dict()
        finally:
            self._taking = False
        state["callbacks"].pop(self.state_key, None)  # a rollback keeps the record of recoveries
        return cast("dict[str, Any]", _cpu_copy(state))

    # -- checkpoint ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        if self._taking:
            return {}
        return {
            "version": _STATE_VERSION,
            "snapshots": self.snapshots,
            "best": self.best,
            "events": self.events,
            "overrides": self.overrides,
            "rewarms": [list(r) for r in self.rewarms],
            "lr_scale": self.lr_scale,
            "skip": sorted(list(s) for s in self.skip),
            "rearm": list(self.rearm) if self.rearm is not None else None,
            "event_text": self.event_text,
        }

    def load_state_dict(self, state: dict[str, Any], trainer: Trainer) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"recovery state version {state.get('version')!r} is not {_STATE_VERSION}")
        self.snapshots = [_cpu_copy(s) for s in state["snapshots"]]
        self.best = _cpu_copy(state["best"]) if state["best"] is not None else None
        self.events = list(state["events"])
        self.overrides = dict(state["overrides"])
        self.rewarms = [(int(a), int(b), float(c)) for a, b, c in state["rewarms"]]
        self.lr_scale = float(state["lr_scale"])
        self.skip = {(int(e), int(i)) for e, i in state["skip"]}
        self.rearm = tuple(state["rearm"]) if state["rearm"] is not None else None
        self.event_text = state["event_text"]
        if self.events:
            self._install(trainer)  # the checkpoint's scheduler already holds the scaled base lrs


# -- the LR probe ---------------------------------------------------------------------------------


def probe_factors(iv: Intervention) -> list[float]:
    """The candidate factors of ``iv.lr_probe``: its own, or four decades in ``lr_factor``'s direction."""
    if iv.lr_probe.factors is not None:
        return sorted(iv.lr_probe.factors)
    if iv.lr_factor < 1:
        return [1e-4, 1e-3, 1e-2, 1e-1]
    if iv.lr_factor > 1:
        return [10.0, 100.0, 1e3, 1e4]
    return [0.01, 0.1, 1.0, 10.0, 100.0]


def probe_lr(trainer: Trainer, iv: Intervention, skips: Callable[[int, int], bool]) -> dict[str, Any]:
    """The LR range test of ``iv.lr_probe`` (see the module's docstring) from the trainer's state,
    which it leaves as it found it (model, optimiser, loss weighting, scaler, every random state);
    the record of what it tried and chose (``chosen_factor`` multiplies the learning rate in force)."""
    settings: LRProbe = iv.lr_probe
    factors = probe_factors(iv)
    base_lrs = [float(lr) for lr in trainer.scheduler.base_lrs]  # every group's peak lr in force (earlier recoveries' included)
    saved = _probe_state(trainer)
    curves: list[list[float]] = []
    try:
        for i, factor in enumerate(factors):
            if i:
                _restore_probe_state(trainer, saved)
            curves.append(_probe_one(trainer, [lr * factor for lr in base_lrs], settings, skips))
    finally:
        _restore_probe_state(trainer, saved)
    half = settings.steps // 2
    losses: list[float | None] = []
    for curve in curves:
        ok = all(math.isfinite(x) for x in curve) and max(curve) <= settings.explode * curve[0]
        losses.append(sum(curve[half:]) / len(curve[half:]) if ok else None)
    best, how = choose_factor(factors, losses, settings.rule)
    if best is None:
        chosen, rule = iv.lr_factor, f"every candidate diverged: lr_factor {_short(iv.lr_factor)}"
    else:
        chosen, rule = best * settings.pick, f"{how} at {_short(base_lrs[0] * best)} x {_short(settings.pick)}"
    batch = trainer.cfg.batch_size
    return {
        "factors": factors,
        "lrs": [base_lrs[0] * f for f in factors],
        "steps": settings.steps,
        "losses": losses,  # mean loss over the later half of the steps; None: diverged
        "curves": [[round(x, 4) if math.isfinite(x) else str(x) for x in c] for c in curves],
        "chosen_factor": chosen,
        "chosen_lr": base_lrs[0] * chosen,
        "rule": rule,
        "images": len(factors) * settings.steps * batch,
    }


def choose_factor(factors: list[float], losses: list[float | None], rule: str) -> tuple[float | None, str]:
    """The probe's pick among ascending ``factors`` from their later-half losses (None: diverged)
    under ``LRProbe.rule``, and how it was picked; (None, "") when every candidate diverged."""
    scored = [(loss, factor) for loss, factor in zip(losses, factors) if loss is not None]
    if not scored:
        return None, ""
    if rule == "below-divergence":
        stable = next((factors[:i] for i, loss in enumerate(losses) if loss is None), factors)
        if stable:
            return stable[-1], "below the first divergence"
    return min(scored)[1], "lowest loss"  # ties: the smaller factor (the tuples compare it second)


def _probe_state(trainer: Trainer) -> dict[str, Any]:
    """What a probe's training changes, copied (the random states too: it draws batches)."""
    state = _cpu_copy(
        {
            "model": trainer.model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "loss_weighting": trainer.loss_weighting.state_dict(),
            "scaler": trainer.scaler.state_dict(),
            "rng": trainer.rng_state(),
        }
    )
    return cast("dict[str, Any]", state)


def _restore_probe_state(trainer: Trainer, saved: dict[str, Any]) -> None:
    state = _cpu_copy(saved)  # loading must not alias the saved copy (the optimiser keeps tensors)
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.loss_weighting.load_state_dict(state["loss_weighting"])
    trainer.scaler.load_state_dict(state["scaler"])
    trainer.set_rng_state(state["rng"])


def _probe_batches(
    trainer: Trainer, skips: Callable[[int, int], bool]
) -> Generator[tuple[torch.Tensor, list[dict[str, Any]]], None, None]:
    """The batches the run trains on next: the coming epoch's (its skipped ones left out), then the
    following epochs' (the trainer's own batch pipeline; the caller restores the random states)."""
    epoch = trainer.epoch + 1
    while True:
        with tqdm(disable=True) as bar:
            for index, batch in enumerate(trainer._batches(bar)):
                if not skips(epoch, index):
                    yield batch
        epoch += 1


def _probe_one(trainer: Trainer, lrs: list[float], settings: LRProbe, skips: Callable[[int, int], bool]) -> list[float]:
    """Train ``settings.steps`` steps at ``lrs`` (one per optimiser group) with the trainer's own
    step; the loss of each (the weighted loss minimised, before the step's update), cut short once
    it is not finite (that step's update is undone with the rest of the probe's by the caller)."""
    trainer.model.train()
    anchors = trainer.model.anchors(trainer.device, torch.float32)
    for group, lr in zip(trainer.optimizer.param_groups, lrs):
        group["lr"] = lr
    curve: list[float] = []
    batches = _probe_batches(trainer, skips)
    for step in range(settings.steps):
        images, targets = next(batches)
        _, losses, *_ = trainer.optimizer_step(images, targets, anchors, trainer.global_step + step)
        curve.append(float(losses["loss"].detach()))
        if not math.isfinite(curve[-1]):
            break
    batches.close()
    trainer.optimizer.zero_grad(set_to_none=True)
    return curve


def _learnt(snapshot: dict[str, Any], untrained: float | None) -> bool:
    """A snapshot worth rolling back to trained at an (unweighted) loss below the untrained
    network's. One above it had started to fail though no check fired: the zoo's SGD lr 0.3 without
    warm-up (seed 1) trained its first epoch far above the untrained loss (early median 28), diverged
    in its second, and rolled back to the first with lr x0.01 it stayed at AP < 0.01; to the start,
    0.115 (a restart with the fix: 0.135). Snapshots from before this rule carry no loss: kept."""
    loss = snapshot.get("train_loss")
    if snapshot["epoch"] == 0 or loss is None or untrained is None:
        return True
    return math.isfinite(loss) and loss < untrained


def _onset_epoch(verdict: Verdict) -> int:
    """The first epoch that showed the failure: for a collapse, the one after the top face score's
    best (its decline starts there, evaluations before the collapse is named); another validation
    diagnosis counts its evaluations back."""
    epoch = verdict.epoch if verdict.epoch is not None else 0
    best_top = verdict.evidence.get("best_top_epoch")
    if isinstance(best_top, int) and best_top < epoch:
        return best_top + 1
    evaluations = verdict.evidence.get("evaluations")
    if verdict.step is None and isinstance(evaluations, int) and evaluations > 1:
        return epoch - evaluations + 1
    return epoch


def _rewarmed(base: Callable[[int], float], rewarms: list[tuple[int, int, float]], base_warmup: int) -> Callable[[int], float]:
    """The schedule ``base`` with the fresh warm-ups multiplied in; within the schedule's own warm-up
    (its first ``base_warmup`` steps, where ``base`` is a ramp alone) the lower ramp applies: a
    rollback into it warms up once, not along the product of two ramps."""

    # A plain function (not a partial or an object): LambdaLR then keeps it out of its state_dict.
    def factor(step: int) -> float:
        ramp = 1.0
        for start, length, start_factor in rewarms:
            if start <= step < start + length:
                ramp *= start_factor + (1.0 - start_factor) * (step - start) / length
        value = base(step)
        return min(value, ramp) if step < base_warmup else value * ramp

    return factor


def describe(event: dict[str, Any]) -> str:
    """One line: ``diverged at step 5 (epoch 1) -> rollback to epoch 0 (step 0): optim.lr 1 -> 0.1, ...``."""
    where = (
        f"step {event['failed_step']} (epoch {event['failed_epoch']})"
        if event["failed_step"] is not None
        else f"epoch {event['failed_epoch']}"
    )
    target = "best" if event["action"] == "restore_best" else "rollback to"
    parts = [f"{key} {_short(before)} -> {_short(after)}" for key, (before, after) in event["changes"].items()]
    parts += [f"reset {what}" for what in event.get("resets", [])]
    if event["skipped_batches"]:
        parts.append(f"skip {len(event['skipped_batches'])} batches of epoch {event['skipped_batches'][0][0]}")
    if probe := event.get("probe"):
        tried = ", ".join(
            f"{_short(lr)}: {'diverged' if loss is None else f'{loss:.3g}'}" for lr, loss in zip(probe["lrs"], probe["losses"])
        )
        parts.append(f"lr probe {probe['steps']} steps each ({tried}) chose {_short(probe['chosen_lr'])} ({probe['rule']})")
    change = ", ".join(parts) or ("stop" if event["action"] == "restore_best" else "no change")
    return (
        f"{event['diagnosis']} at {where} -> {target} epoch {event['snapshot_epoch']} (step {event['snapshot_step']}):"
        f" {change} [{event['verdict']}]"
    )


def _short(value: Any) -> Any:
    """A float without its product's rounding noise (0.1 x 0.1 is shown 0.01, not 0.010000000000000002)."""
    return float(f"{value:.12g}") if isinstance(value, float) else value
