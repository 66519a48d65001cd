"""The training health monitor: a run that knows when it is failing, and says how.

The trainer feeds it two streams and gets back a :class:`Verdict` each time:

* :meth:`HealthMonitor.check_step`, every ``check_every_steps`` optimiser steps, with the current
  loss parts, gradient norm and positive-anchor count (host floats, one sync per check). Cheap
  checks for what must stop a run at once: non-finite values, a loss explosion (against the early
  median of the checks and against the untrained network's loss at the first check, which a loss
  already rising over the early checks cannot inflate), a gradient spike that comes with a rising
  loss (``diverged``), and batches without any positive anchor (``no-positives``).
* :meth:`HealthMonitor.check_epoch`, after each validation, with the flat per-epoch report. The
  failure stages of the seed study: early-stage avoidance (``background-collapse``, 3.1: AP near 0
  and a top face score that fell from its peak or never rose; ``near-collapse``, a warning, when
  the AP hovers around that limit instead), nothing learnt (``stalled``: the classification loss
  flat near its start, AP near 0), mid-stage false-positive surge and recall decline (3.2),
  late-stage ``overfitting`` (3.3). None of these fire before the learning-rate warm-up has ended
  plus ``grace_epochs``; each needs its signal to persist over a patience counted after that, to
  exceed a minimum absolute change, and AP and recall are judged by running medians, so one noisy
  evaluation never labels a run. With tiny epochs, grace and patience stretch to
  ``min_span_steps`` optimiser steps. The one exception is ``stalled`` from step-level evidence:
  the step checks since the warm-up ended (``stall_window_steps`` of them, medians of halves) are
  many samples, not a few noisy evaluations, so it needs no grace.

On the mini set a healthy tiny SSD has no detection above the 0.5 score threshold and a falling
top score for many epochs while its AP rises from 0.002 to 0.19: AP, which ranks every score, is
what separates a slow start from a collapse, not the thresholded counts.

Which diagnoses stop a run is configuration (``stop_on``); the others are warnings. The first
stopping verdict is sticky. The monitor's whole state is a small JSON-able dict, so a resumed run
reaches the same verdicts as an uninterrupted one.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal, TypeGuard, cast, get_args

from pydantic import BaseModel, ConfigDict, Field

from model import report_keys as K

__all__ = [
    "DEFAULT_INTERVENTIONS",
    "LABELS",
    "MIN_IMAGES_FOR_SPREAD",
    "HealthConfig",
    "Intervention",
    "LRProbe",
    "HealthMonitor",
    "Verdict",
    "constant_predictor_cls_loss",
]

Problem = Literal[
    "diverged",
    "background-collapse",
    "stalled",
    "fp-surge",
    "recall-decline",
    "overfitting",
    "no-positives",
    "near-collapse",
]
#: Every diagnosis; the index is the stable numeric code metric stores log.
LABELS: tuple[str, ...] = ("healthy", *get_args(Problem))

_STATE_VERSION = 1
#: Fewest validation images on which the spread of their top face scores says anything.
MIN_IMAGES_FOR_SPREAD = 8


class LRProbe(BaseModel):
    """An LR range test at recovery time (``Intervention.lr_probe``; ``model/recovery.py``): after
    the rollback, train each candidate learning rate for ``steps`` steps from the restored state
    (restored again between candidates) on the batches the run trains on next, and go on with the
    one the rule below picks instead of trusting ``lr_factor``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

    enabled: bool = False
    """Probe (``lr_factor`` is then only the fallback when every candidate diverges)."""
    factors: list[Annotated[float, Field(gt=0)]] | None = Field(None, min_length=2)
    """Candidate factors of the learning rate in force (every group's peak lr: the probe trains at
    the candidate, without warm-up or decay). ``None``: four decades in ``lr_factor``'s direction,
    ``1e-4, 1e-3, 1e-2, 1e-1`` for a factor below 1, ``10 .. 1e4`` above 1, ``0.01 .. 100`` at 1."""
    steps: int = Field(8, ge=2)
    """Optimiser steps per candidate (each one batch: the cost is candidates x steps batches)."""
    rule: Literal["lowest-loss", "below-divergence"] = "lowest-loss"
    """How the best candidate is chosen among those that did not diverge (see ``explode``):
    ``lowest-loss``, the lowest mean loss over the later half of the steps (ties: the smaller lr);
    ``below-divergence``, the LR range test's "a decade below where the loss blows up": the largest
    candidate below the smallest diverging one (none diverged: the largest). Short probes from a
    barely trained state favour small steps: on the zoo's stalls (lr 1e-5) 8 and 16 steps at 0.001
    beat 0.01 on two of three seeds, which recover to 20-57 % of the healthy AP at 0.001, while 0.1
    diverged on every seed and 0.01 (under a fresh warm-up) is the healthy lr; a divergence's probe,
    searching downwards from an exploding lr, keeps ``lowest-loss`` (its largest stable candidate
    was 3-10x too high)."""
    pick: float = Field(1.0, gt=0, le=1)
    """The new factor is the best candidate's times this. lr_find divides the lr of a continuous
    sweep's loss minimum by ~10, as that minimum sits where the loss is about to blow up; decade
    candidates compared after ``steps`` steps keep a margin of their own (on the zoo's lr-5 and lr-1
    runs the candidate above the best rose to ~2x its start loss or diverged within 8 steps), and
    the best one itself recovered the zoo's lr-5 and lr-1e-6 runs (``bench/results/recovery_probe.md``;
    a ``pick`` below 1 was not measured)."""
    explode: float = Field(4.0, gt=1)
    """A candidate whose loss is non-finite or above this many times its first step's (the
    restored model's loss on the first probe batch) diverged and is never picked."""


class Intervention(BaseModel):
    """What a recovery does for one diagnosis (``health.interventions``; ``model/recovery.py``).
    Factors multiply the run's current values; 1 leaves them."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

    action: Literal["rollback", "restore_best", "stop"] = "rollback"
    """``rollback``: restore a snapshot (see ``rollback``), apply the changes below, go on;
    ``restore_best``: restore the best epoch's snapshot and stop; ``stop``: stop as without recovery."""
    rollback: Literal["onset", "start"] = "onset"
    """Where ``rollback`` goes: ``onset``, the newest healthy snapshot from before the failure's
    onset; ``start``, the untrained state: the run restarts with the changes below, keeping its
    run, data order and epoch budget (for failures whose damage the fix does not undo in place)."""
    lr_factor: float = Field(1.0, gt=0)
    """Multiplies the learning rate (every group's, for the rest of the schedule)."""
    warmup_iters: int = Field(0, ge=0)
    """A fresh linear warm-up from ``schedule.warmup_start_factor`` over this many optimiser steps
    (with ``warmup_epochs`` the longer of the two; 0 and 0: none). Where it overlaps the schedule's
    own warm-up (a rollback into it) the lower of the two ramps applies, not their product."""
    warmup_epochs: float = Field(0.0, ge=0)
    """A fresh warm-up over this many epochs (see ``warmup_iters``)."""
    class_weight_factor: float = Field(1.0, gt=0)
    """Multiplies ``loss.class_weight`` (re-balances the loss towards classification)."""
    neg_pos_factor: float = Field(1.0, gt=0)
    """Multiplies ``loss.neg_pos_ratio`` (hard-mined CE only)."""
    box_weight_factor: float = Field(1.0, gt=0)
    """Multiplies ``loss.box_weight``."""
    neg_pos_max: float | None = Field(None, gt=0)
    """After the factors: at most this many hard negatives per positive (``None``: no cap)."""
    box_class_max: float | None = Field(None, gt=0)
    """After the factors: a box weight at most this many times the class weight (``None``: no cap)."""
    reset_class_head: bool = False
    """After the rollback, re-initialise the classification head's output layers to the face prior
    (``model.prior_prob``) and drop their optimiser state: forgets a classifier that learnt to call
    everything background while keeping the backbone's features and the box regressor."""
    reset_optimizer: bool = False
    """After the rollback, drop the whole optimiser state (SGD momentum, Adam moments)."""
    skip_batches: int = Field(0, ge=0)
    """``diverged`` at a step check: skip this many batches, up to the one checked, when the epoch
    is replayed (the same batches come back: the snapshot holds the data order's random state)."""
    lr_probe: LRProbe = LRProbe()
    """Measure the learning rate after the rollback instead of multiplying it by ``lr_factor``
    (see :class:`LRProbe`)."""


#: The default intervention table (see model/recovery.py). ``bench/results/recovery.md`` (the
#: zoo's lr-1 run, 3 seeds): ``diverged``'s lr x0.1 left it at 2-3 % of the healthy baseline's AP,
#: x0.01 at 55-104 % (mean 0.093 vs 0.123), hence x0.01. The zoo's collapse (box weight 10, neg:pos
#: 30, no warm-up) stayed collapsed when rolled back to any epoch after its first with any fix
#: measured (class weight x2 or x5, neg:pos x0.5, or the caps below: 0-6 % of the healthy AP); rolled
#: back to the untrained state with the caps it reached 55-77 % (``bench/results/recovery_collapse.md``,
#: 3 seeds; the same fix restarted by hand 67-76 %): hence a rollback to the start. ``stalled``:
#: the zoo's lr 1e-5 with lr x10 reached 8-10 % of the healthy AP in 10 epochs, with x100 33-38 %
#: (lr 1e-6: 6-7 % either way; ``bench/results/recovery_zoo.md``, ``recovery_stall.md``).
#: A fixed factor is too weak where the lr is far off, so ``diverged`` and ``stalled`` measure it
#: instead (``lr_probe``: 4 decades in the factor's direction, 8 steps each, the lowest loss;
#: ``lr_factor`` stays the fallback should every candidate diverge). ``bench/results/recovery_probe.md``
#: (3 seeds, probe against the fixed factors in one process): the zoo's SGD lr 5 went from 0-3 % of
#: the healthy AP to 85-117 % (it chose 0.005 where x0.01 gives 0.05); lr 1e-6 from 9-12 % to
#: 57-100 % (0.01, 0.01, 0.001); lr 1e-5 from 28-57 % to 28-100 % (one seed chose 0.01, two the
#: fixed 0.001); lr 1 unchanged (it chose x0.01, the fixed factor: the runs were identical). Cost:
#: 256 images per probing recovery (4 x 8 batches of 8: 9 % of the zoo's 10-epoch budget).
#: The fresh warm-up is the schedule's default length (``schedule.warmup_iters``, 100 steps), not
#: one epoch: on the zoo a 1-epoch warm-up (37 steps) trains to ~65 % of the 100-step one's AP in 8
#: epochs (``healthy_warmup1ep`` in ``bench/results/failure_zoo.md``), and the recoveries that restart
#: from the untrained state with it inherit that gap: collapse 55-74 % of the healthy AP with 1 epoch,
#: 74-105 % with 100 steps; SGD lr 0.3 58-102 % -> 72-111 %; lr 1 67-82 % -> 85-105 %
#: (``bench/results/recovery_zoo_probe.md`` -> ``recovery_zoo_warm.md``, 3 seeds). ``stalled`` gets
#: one too: its lr rises 10-10^4 x (the zoo's lr 1e-5 without warm-up: 33-52 % without one, 74-105 %
#: with it and the ``below-divergence`` probe).
_WARMUP = 100  # = ScheduleConfig.warmup_iters's default (model.config imports this module; a test keeps them equal)
_COLLAPSE_FIX = Intervention(rollback="start", neg_pos_max=3.0, box_class_max=1.0, warmup_iters=_WARMUP)
_PROBE = LRProbe(enabled=True)
DEFAULT_INTERVENTIONS: dict[Problem, Intervention] = {
    "diverged": Intervention(lr_factor=0.01, warmup_iters=_WARMUP, skip_batches=5, lr_probe=_PROBE),
    "background-collapse": _COLLAPSE_FIX,
    "stalled": Intervention(lr_factor=100.0, warmup_iters=_WARMUP, lr_probe=LRProbe(enabled=True, rule="below-divergence")),
    "fp-surge": Intervention(neg_pos_factor=2.0),
    "overfitting": Intervention(action="restore_best"),
    "no-positives": Intervention(action="stop"),
    "recall-decline": Intervention(action="stop"),
    # A warning by default; when added to ``stop_on`` it is treated as the collapse it precedes.
    "near-collapse": _COLLAPSE_FIX,
}


class HealthConfig(BaseModel):
    """Thresholds of the health monitor. The defaults were calibrated by replaying real runs of the
    tiny SSD on the mini set (``bench/failure_probe.py``): nothing fires on its healthy runs, and its
    diverging runs stop at the first or second step check, its collapsing runs after three
    evaluations past the grace."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

    enabled: bool = True
    """Run the checks at all; when off every verdict is ``healthy``."""
    check_every_steps: int = Field(5, ge=1)
    """Step checks every this many optimiser steps (each costs one host sync)."""
    stop_on: list[Problem] = ["diverged", "no-positives", "stalled", "background-collapse"]
    """Diagnoses that stop the run; the others only warn. Runs that cannot recover stop by default;
    ``overfitting`` is left out because the best checkpoint is kept anyway and a search's scheduler
    (ASHA) already prunes weak trials, while the mid-stage labels can recover after a learning-rate
    decay. Add ``overfitting`` for early stopping."""

    # -- recovery (model/recovery.py) ----------------------------------------------------------------
    on_failure: Literal["stop", "recover"] = "stop"
    """What a stopping diagnosis does: end the run, or roll it back and apply its intervention."""
    max_recoveries: int = Field(2, ge=0)
    """Recoveries a run may make; the next stopping diagnosis ends it as ``stop`` would."""
    snapshots: int = Field(4, ge=1)
    """In-memory snapshots of the trainer's state kept, one per healthy epoch: enough to go back
    before a collapse, which is named after ``collapse_patience`` (3) evaluations that looked it."""
    interventions: dict[Problem, Intervention] = Field(default_factory=lambda: dict(DEFAULT_INTERVENTIONS))
    """Per diagnosis, what a recovery does; a diagnosis without an entry stops the run."""

    # -- step checks ------------------------------------------------------------------------------
    reference_checks: int = Field(5, ge=1)
    """The early loss reference is the median of the first this many (finite) step checks (the
    trainer checks step 1 as well, so the untrained network's loss is among them)."""
    explosion_factor: float = Field(100.0, gt=1)
    """``diverged`` when the loss exceeds this many times its early reference, or when its unweighted
    parts (``loss_cls + loss_box``) exceed this many times their value at the first check with a
    positive anchor (the untrained network's, at step 1): a loss already rising over the reference
    checks inflates their median (SGD lr 0.3 without warm-up: to 4x the untrained loss by step 20),
    never the first check. Unweighted, so that a loss-weight ramp starting near 0 is no explosion."""
    explosion_min_loss: float = Field(10.0, ge=0)
    """...and is at least this large: a tiny starting loss times the factor is not an explosion."""
    max_loss: float = Field(1e4, gt=0)
    """``diverged`` when the loss exceeds this, reference or not: it catches an explosion that is
    already under way at the first check. The loss is normalised per positive anchor, so healthy
    values are ~1-100 even with loss weights of 10 (the "22-digit loss" is far beyond)."""
    window_checks: int = Field(25, ge=3)
    """Running medians of the loss and the gradient norm span the last this many step checks."""
    spike_min_checks: int = Field(5, ge=1)
    """A gradient spike is judged only once the running window holds this many checks."""
    grad_spike_factor: float = Field(10.0, gt=1)
    """A gradient norm above this many times its running median is a spike."""
    spike_loss_factor: float = Field(2.0, gt=1)
    """A spike counts towards ``diverged`` only while the loss is above this many times its running
    median: healthy runs have gradient spikes alone, a diverging one has both."""
    spike_patience: int = Field(2, ge=1)
    """Consecutive step checks with a spike and a rising loss before ``diverged``."""
    no_positives_checks: int = Field(10, ge=1)
    """Consecutive step checks whose batch had no positive anchor before ``no-positives``."""

    # -- epoch checks -----------------------------------------------------------------------------
    grace_epochs: int = Field(2, ge=0)
    """Epochs after the warm-up has ended before any validation-based diagnosis may fire (but the
    step-level ``stalled``, whose evidence is the step checks: see ``stall_window_steps``)."""
    min_span_steps: int = Field(50, ge=0)
    """The grace and every patience or window below also span at least this many optimiser steps:
    with tiny epochs (a few steps each) consecutive evaluations barely differ in training but
    still differ by noise, so more of them are needed."""
    smooth_evaluations: int = Field(3, ge=1)
    """AP and recall are judged by their running median over this many evaluations, so one noisy
    evaluation neither sets a best nor ends a decline."""
    collapse_patience: int = Field(3, ge=1)
    """Consecutive evaluations that must look collapsed before ``background-collapse``."""
    collapse_max_ap: float = Field(0.01, ge=0)
    """Collapsed: validation AP at most this..."""
    collapse_max_recall: float = Field(0.01, ge=0)
    """...recall at the evaluation score threshold at most this..."""
    collapse_max_detections: float = Field(0.1, ge=0)
    """...at most this many detections per image above the evaluation score threshold..."""
    collapse_score_drop: float = Field(0.5, gt=0, le=1)
    """...and the top face score fallen to at most this fraction of its best since the warm-up (or
    never above ``collapse_min_score``). A healthy slow starter has AP near 0 and no detection above
    0.5 for many epochs, but its AP rises: AP near 0 *and* a fallen or absent top score is collapse."""
    collapse_min_score: float = Field(0.05, ge=0, le=1)
    """A top face score at or below this counts as no face predicted at all."""
    collapse_max_spread: float = Field(1e-3, ge=0)
    """Also collapsed: validation AP at most ``collapse_max_ap`` and every validation image's top
    face score the same to within this standard deviation (``val/top_score_spread``): the output no
    longer depends on the input (a dead network scoring every anchor at one prior, above the score
    threshold or not). Judged on at least :data:`MIN_IMAGES_FOR_SPREAD` validation images."""
    stall_epochs: int = Field(3, ge=2)
    """Evaluations over which the classification loss must stay flat before ``stalled``."""
    stall_max_change: float = Field(0.05, ge=0)
    """Flat: the classification loss varies by at most this fraction over the window..."""
    stall_min_fraction: float = Field(0.8, ge=0)
    """...is still at least this fraction of its starting value (the early step checks)..."""
    stall_prior_margin: float = Field(0.05, ge=0)
    """Not stalled: a flat classification loss at most this fraction above the constant
    predictor's (:func:`constant_predictor_cls_loss`): the classifier did move, to the class prior
    and no further, which is collapse (with 30:1 mining that level is ~80 % of the start, where a
    stall and a collapse would otherwise look alike)."""
    stall_max_ap: float = Field(0.01, ge=0)
    """...and the validation AP stays at most this. A model whose top face score rose and then fell
    is not stalled but collapsing (the collapse check owns it)."""
    stall_window_steps: int = Field(50, ge=1)
    """Also ``stalled``, judged at each validation from the end of the warm-up on, without the grace
    and without waiting for ``stall_epochs`` evaluations: the step checks of the last this many
    optimiser steps (all after the warm-up; at least ``min_span_steps``) show the classification
    loss, median of the later half of the checks against median of the earlier half, moved by at
    most ``stall_max_change`` and still at least ``stall_min_fraction`` of its start, and so is the
    loss (median of the later half) of its early reference (``reference_checks``: a box regressor
    that learns is not stalled), while every validation since the warm-up (at least two) had AP
    at most ``stall_step_max_ap`` (the class-prior and fallen-top-score exceptions above hold here
    too). Under the default warm-up (100 steps; with 37-step epochs it ends in epoch 3) a run at lr
    1e-5 or 1e-6 is named at epoch 5 or 6, not at epoch 8 or 9."""
    stall_max_loss_rise: float = Field(1.25, ge=1)
    """Not stalled (the step-level rule): the loss (median of the later half of the checks) above
    this many times its early reference is rising, not flat, and is left to the collapse and
    divergence checks. The zoo's collapse (box weight 10, neg:pos 30, no warm-up) was called
    stalled at 150 % of its early loss on one seed, and the stall's intervention (lr x10) then
    made it diverge (``bench/results/recovery.md``)."""
    stall_step_max_ap: float = Field(0.002, ge=0)
    """The step-level stall's AP limit: without the grace it asks for an untrained detector's AP
    (the mini set's stalled runs: at most 0.0006), not just AP near 0; a healthy run that sits at
    the class prior for its first epochs without warm-up already has 0.0075-0.01 by its second
    evaluation. Runs between this and ``stall_max_ap`` are left to the evaluation-level rule."""
    near_collapse_max_ap: float = Field(0.03, ge=0)
    """``near-collapse`` (a warning): validation AP at most this (near ``collapse_max_ap``: an AP that
    hovers around the collapse limit, 0.003-0.028, never makes a collapse streak)..."""
    near_collapse_patience: int = Field(4, ge=1)
    """...at each of this many consecutive evaluations after the grace, each with no face above the
    score threshold (``collapse_max_recall``, ``collapse_max_detections``) and a top face score fallen
    to at most ``collapse_score_drop`` of its best, the warm-up's included (one more evaluation than
    ``collapse_patience``: a run collapsing outright is stopped as ``background-collapse`` first)..."""
    near_collapse_max_ap_gain: float = Field(0.005, ge=0)
    """...while the AP (running median) at the last of them is at most this above its best before
    them: a slow starter whose AP climbs through that range is learning, not fading."""
    fp_surge_window: int = Field(3, ge=1)
    """Evaluations over which false positives per image must rise at every one before ``fp-surge``."""
    fp_surge_factor: float = Field(1.5, gt=1)
    """FP per image must grow by this factor over the window..."""
    fp_surge_min_increase: float = Field(1.0, ge=0)
    """...and by at least this many false positives per image..."""
    fp_surge_min_precision_drop: float = Field(0.05, ge=0)
    """...while precision falls by at least this much (absolute)..."""
    fp_surge_max_ap_gain: float = Field(0.005, ge=0)
    """...and AP does not rise by more than this (more detections that also raise AP are learning)."""
    recall_patience: int = Field(3, ge=1)
    """Consecutive evaluations with the (smoothed) recall below its best before ``recall-decline``."""
    recall_min_drop: float = Field(0.1, ge=0)
    """Below the best recall by at least this much (absolute: recall at the score threshold swings
    by several points between healthy evaluations)..."""
    recall_rel_drop: float = Field(0.2, ge=0, le=1)
    """...and by at least this fraction of it..."""
    recall_max_ap_gain: float = Field(0.0, ge=0)
    """...while the (smoothed) AP rose by at most this over those evaluations: a recall at the
    threshold that falls while AP rises is the score calibration moving, not faces lost."""
    overfit_patience: int = Field(4, ge=1)
    """Consecutive evaluations with the (smoothed) AP below its best before ``overfitting``."""
    overfit_min_drop: float = Field(0.01, ge=0)
    """Below the best AP by at least this much (absolute)..."""
    overfit_rel_drop: float = Field(0.2, ge=0, le=1)
    """...and by at least this fraction of it (the mini set's AP swings by ~20 % between
    evaluations late in a healthy run)..."""
    overfit_min_best_ap: float = Field(0.02, ge=0)
    """...where the best AP is at least this (no overfitting of a model that never fitted)..."""
    overfit_min_loss_drop: float = Field(0.02, ge=0, lt=1)
    """...while the training loss fell by at least this fraction since the best-AP evaluation."""


@dataclass(frozen=True)
class Verdict:
    """What the monitor concluded at one check."""

    diagnosis: str
    """One of :data:`LABELS`."""
    stop: bool
    """True: stop the run now."""
    signal: str = ""
    """The signal that fired, e.g. ``"non-finite loss"``; empty when healthy."""
    evidence: dict[str, Any] = field(default_factory=dict)
    """The values behind the diagnosis (JSON-able numbers, strings and lists)."""
    step: int | None = None
    epoch: int | None = None

    def message(self) -> str:
        """One human line, e.g. ``diverged at step 37 (epoch 2): loss explosion: loss 3.1e+13 > ...``."""
        if self.step is not None:
            where = f"step {self.step}" + (f" (epoch {self.epoch})" if self.epoch is not None else "")
        elif self.epoch is not None:
            where = f"epoch {self.epoch}"
        else:
            where = "start"
        if self.diagnosis == "healthy":
            return f"healthy at {where}"
        return f"{self.diagnosis} at {where}: {self.signal}: {_describe(self.signal, self.evidence)}"

    def as_dict(self) -> dict[str, Any]:
        """Flat and JSON-able for logging: evidence keys become ``evidence.<key>``."""
        flat: dict[str, Any] = {
            "diagnosis": self.diagnosis,
            "stop": self.stop,
            "signal": self.signal,
            "step": self.step,
            "epoch": self.epoch,
            "message": self.message(),
        }
        flat.update({f"evidence.{key}": value for key, value in self.evidence.items()})
        return flat


_HEALTHY = Verdict("healthy", False)

# How each signal reads; the fields come from the verdict's evidence.
_TEMPLATES: dict[str, str] = {
    "non-finite loss": "loss {loss:.4g} (cls {loss_cls:.4g}, box {loss_box:.4g}), gradient norm {grad_norm:.4g}",
    "non-finite gradient norm": "gradient norm {grad_norm:.4g} with loss {loss:.4g}",
    "loss explosion": "loss {loss:.3g} > {factor:g} x its early median {reference:.3g}",
    "loss explosion over the untrained loss": (
        "loss_cls + loss_box {unweighted:.3g} > {factor:g} x {untrained:.3g}, their value at the first check"
        " (the untrained network); loss {loss:.3g}"
    ),
    "loss above its ceiling": "loss {loss:.3g} > {ceiling:.3g}",
    "gradient spike with rising loss": (
        "gradient norm {grad_norm:.3g} > {grad_factor:g} x its running median {grad_median:.3g} and loss"
        " {loss:.3g} > {loss_factor:g} x its running median {loss_median:.3g}, {checks} checks in a row"
    ),
    "no positive anchors": (
        "no positive anchor in {checks} consecutive checked batches, so no face can be learnt; check that"
        " faces survive data.min_face_size at model.input_size (smaller ones become ignore regions),"
        " the annotations, and model.anchor_scales / loss.match_iou"
    ),
    "non-finite training loss": "epoch mean loss {loss:.4g}",
    "training loss above its ceiling": "epoch mean loss {loss:.3g} > {ceiling:.3g}",
    "no faces predicted after warm-up": (
        "AP {ap:.4f}, recall {recall:.3f} and {detections_per_image:.2f} detections/image at score"
        " >= {score_threshold:g}; top face score {top_score:.3f} (its best {best_top_score:.3f} at epoch"
        " {best_top_epoch}) for {evaluations} evaluations"
    ),
    "classification loss flat": (
        "loss_cls {loss_cls:.4f} varied {change:.1%} over {evaluations} evaluations and is still"
        " {fraction:.0%} of its starting value {start:.4f}; AP {ap:.4f}"
    ),
    "classification loss flat since the warm-up": (
        "loss_cls {loss_cls:.4f} (median of the later {checks} step checks) moved {change:.1%} over steps"
        " {first_step}-{last_step}, after the warm-up, and is still {fraction:.0%} of its starting value"
        " {start:.4f} (the loss {loss_fraction:.0%} of its early median); AP at most"
        " {ap:.4f} over {evaluations} evaluations since the warm-up"
    ),
    "AP hovering at the collapse limit": (
        "AP {ap:.4f}, at most {max_ap:g} for {evaluations} evaluations ({aps}), with recall {recall:.3f} and"
        " {detections_per_image:.2f} detections/image at score >= {score_threshold:g}; top face score"
        " {top_score:.3f}, down from {best_top_score:.3f} at epoch {best_top_epoch} ({top_scores})"
    ),
    "false positives rising while precision falls": (
        "FP/image {fp_start:.2f} -> {fp_end:.2f}, precision {precision_start:.3f} -> {precision_end:.3f},"
        " AP {ap_start:.4f} -> {ap_end:.4f} over {evaluations} evaluations"
    ),
    "recall falling from its best": (
        "recall (running median) {recall:.3f} below its best {best_recall:.3f} (epoch {best_epoch}) for {evaluations} evaluations"
    ),
    "val AP falling while train loss falls": (
        "AP (running median) {ap:.4f} below its best {best_ap:.4f} (epoch {best_epoch}) for {evaluations}"
        " evaluations while the train loss fell {loss_at_best:.4f} -> {loss:.4f}"
    ),
}


def _describe(signal: str, evidence: Mapping[str, Any]) -> str:
    template = _TEMPLATES.get(signal)
    if template is not None:
        try:
            text = template.format(**evidence)
        except (KeyError, ValueError, TypeError):
            pass  # evidence from an older or hand-made verdict: fall back to the raw values
        else:
            also = evidence.get("also")
            return f"{text} (also: {', '.join(also)})" if also else text
    return ", ".join(f"{key} {value}" for key, value in evidence.items())


def _finite(value: float | None) -> TypeGuard[float]:
    return value is not None and math.isfinite(value)


def _low_median(values: Sequence[float]) -> float:
    """The lower median: with two values the smaller, so one bad value never sets the reference."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def _running_median(values: Sequence[float], window: int) -> list[float]:
    """Median of each value with the up to ``window - 1`` values before it."""
    return [statistics.median(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def constant_predictor_cls_loss(neg_pos_ratio: float) -> float:
    """Hard-mined CE of a classifier that gives every anchor the same face probability.

    With ``k`` negatives per positive the best constant is ``p = 1 / (k + 1)`` and the loss per
    positive ``ln(k + 1) + k * ln((k + 1) / k)`` (2.25 for 3:1, 4.42 for 30:1): a classification
    loss sitting at this value means the classifier has learnt only the class prior.
    """
    k = neg_pos_ratio
    return math.log(k + 1) + k * math.log((k + 1) / k)


def _number(metrics: Mapping[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _streak(records: Sequence[dict[str, Any]], condition: Callable[[int], bool]) -> int:
    """How many of the latest records, counted back from the last, satisfy ``condition(index)``."""
    count = 0
    for index in range(len(records) - 1, -1, -1):
        if not condition(index):
            break
        count += 1
    return count


class HealthMonitor:
    """Watches one training run; see the module docstring for the checks.

    Args:
        cfg: thresholds and which diagnoses stop the run.
        warmup_iters: length of the learning-rate warm-up in optimiser steps; validation-based
            diagnoses wait for it to end (plus ``cfg.grace_epochs``).
        iters_per_epoch: optimiser steps per epoch.
        eval_score_threshold: the score threshold of the validation operating point (for messages).
        prior_cls_loss: the classification loss of a constant predictor under this run's loss
            (:func:`constant_predictor_cls_loss` for hard-mined CE; ``None`` when unknown, e.g.
            focal loss): a loss flat at that level is not a stall.
    """

    def __init__(
        self,
        cfg: HealthConfig,
        *,
        warmup_iters: int,
        iters_per_epoch: int,
        eval_score_threshold: float = 0.5,
        prior_cls_loss: float | None = None,
    ) -> None:
        if warmup_iters < 0 or iters_per_epoch < 0:
            raise ValueError(f"warmup_iters and iters_per_epoch must be >= 0, got {warmup_iters} and {iters_per_epoch}")
        self.cfg = cfg
        self.eval_score_threshold = eval_score_threshold
        self.prior_cls_loss = prior_cls_loss
        #: The last epoch during which the learning rate is still warming up (0: none).
        self.warmup_epochs = math.ceil(warmup_iters / iters_per_epoch) if warmup_iters and iters_per_epoch else 0
        self._iters_per_epoch = max(1, iters_per_epoch)
        #: The first epoch whose validation may raise a diagnosis.
        self.first_verdict_epoch = self.warmup_epochs + self._span(cfg.grace_epochs) + 1
        self._loss_ref: list[float] = []
        self._cls_ref: list[float] = []
        #: ``loss_cls + loss_box`` at the first check with a positive anchor: the untrained network's.
        self._untrained: float | None = None
        #: ``[step, epoch, loss_cls, loss]`` of the latest step checks (the step-level stall evidence).
        self._recent: deque[list[float]] = deque(maxlen=self._recent_size())
        self._losses: deque[float] = deque(maxlen=cfg.window_checks)
        self._grads: deque[float] = deque(maxlen=cfg.window_checks)
        self._spike_streak = 0
        self._zero_pos_streak = 0
        self._epochs: list[dict[str, Any]] = []
        self._history: list[Verdict] = []
        self._stopped: Verdict | None = None
        self._latest: dict[str, Verdict] = {"step": _HEALTHY, "epoch": _HEALTHY}
        self._last_kind = "step"

    # -- public API ---------------------------------------------------------------------------------

    @property
    def untrained_loss(self) -> float | None:
        """``loss_cls + loss_box`` of the untrained network (its first step check with a positive anchor)."""
        return self._untrained

    @property
    def verdict(self) -> Verdict:
        """The first stopping verdict (sticky); otherwise the latest warning, or healthy."""
        if self._stopped is not None:
            return self._stopped
        other = "epoch" if self._last_kind == "step" else "step"
        for kind in (self._last_kind, other):
            if self._latest[kind].diagnosis != "healthy":
                return self._latest[kind]
        return self._latest[self._last_kind]

    def history(self) -> list[Verdict]:
        """Every non-healthy verdict raised, warnings included (a step-level warning once per onset)."""
        return list(self._history)

    def check_step(
        self, step: int, epoch: int, *, loss: float, loss_cls: float, loss_box: float, grad_norm: float, num_pos: float
    ) -> Verdict:
        """Judge one optimiser step (``step`` is the global 1-based count)."""
        if self._stopped is not None:
            return self._stopped
        if not self.cfg.enabled:
            return self._record("step", Verdict("healthy", False, step=step, epoch=epoch))
        found = self._step_problem(step, epoch, loss, loss_cls, loss_box, grad_norm, num_pos)
        if found is None:
            result = Verdict("healthy", False, step=step, epoch=epoch)
        else:
            diagnosis, signal, evidence = found
            result = self._verdict(diagnosis, signal, evidence, step=step, epoch=epoch)
        return self._record("step", result)

    def check_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> Verdict:
        """Judge one validation; ``metrics`` is the flat epoch report (missing keys skip their checks)."""
        if self._stopped is not None:
            return self._stopped
        if not self.cfg.enabled:
            return self._record("epoch", Verdict("healthy", False, epoch=epoch))
        # The epoch means also cover steps no check saw (an epoch shorter than check_every_steps).
        loss = _number(metrics, K.TRAIN_LOSS)
        if loss is not None and not math.isfinite(loss):
            evidence: dict[str, Any] = {"loss": loss}
            return self._record("epoch", self._verdict("diverged", "non-finite training loss", evidence, epoch=epoch))
        if loss is not None and loss > self.cfg.max_loss:
            evidence = {"loss": loss, "ceiling": self.cfg.max_loss}
            verdict = self._verdict("diverged", "training loss above its ceiling", evidence, epoch=epoch)
            return self._record("epoch", verdict)
        # A re-validated epoch (a resumed run repeating it) replaces its record and any later ones.
        self._epochs = [r for r in self._epochs if r["epoch"] < epoch]
        self._epochs.append(self._epoch_record(epoch, metrics))
        found = self._epoch_problems(epoch)
        if not found:
            return self._record("epoch", Verdict("healthy", False, epoch=epoch))
        # A stopping diagnosis wins over a warning; otherwise the fixed order of the checks.
        found.sort(key=lambda item: item[0] not in self.cfg.stop_on)
        diagnosis, signal, evidence = found[0]
        if len(found) > 1:
            evidence = {**evidence, "also": [other[0] for other in found[1:]]}
        return self._record("epoch", self._verdict(diagnosis, signal, evidence, epoch=epoch))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: JSON-able (non-finite numbers stay floats)."""
        return {
            "version": _STATE_VERSION,
            "loss_ref": list(self._loss_ref),
            "cls_ref": list(self._cls_ref),
            "untrained": self._untrained,
            "recent": [list(check) for check in self._recent],
            "losses": list(self._losses),
            "grads": list(self._grads),
            "spike_streak": self._spike_streak,
            "zero_pos_streak": self._zero_pos_streak,
            "epochs": [dict(record) for record in self._epochs],
            "history": [asdict(v) for v in self._history],
            "stopped": asdict(self._stopped) if self._stopped is not None else None,
            "latest": {kind: asdict(v) for kind, v in self._latest.items()},
            "last_kind": self._last_kind,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (with the same ``warmup_iters``/``iters_per_epoch``)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"health monitor state version {state.get('version')!r} is not {_STATE_VERSION}")
        self._loss_ref = [float(v) for v in state["loss_ref"]]
        self._cls_ref = [float(v) for v in state["cls_ref"]]
        # Absent from states saved before these checks existed: such a run just starts collecting them.
        untrained = state.get("untrained")
        self._untrained = float(untrained) if untrained is not None else None
        self._recent = deque(([float(v) for v in check] for check in state.get("recent", ())), maxlen=self._recent_size())
        self._losses = deque((float(v) for v in state["losses"]), maxlen=self.cfg.window_checks)
        self._grads = deque((float(v) for v in state["grads"]), maxlen=self.cfg.window_checks)
        self._spike_streak = int(state["spike_streak"])
        self._zero_pos_streak = int(state["zero_pos_streak"])
        self._epochs = [dict(record) for record in state["epochs"]]
        self._history = [Verdict(**v) for v in state["history"]]
        self._stopped = Verdict(**state["stopped"]) if state["stopped"] is not None else None
        self._latest = {kind: Verdict(**v) for kind, v in state["latest"].items()}
        self._last_kind = state["last_kind"]

    # -- bookkeeping --------------------------------------------------------------------------------

    def _verdict(self, diagnosis: str, signal: str, evidence: dict[str, Any], **where: Any) -> Verdict:
        return Verdict(diagnosis, diagnosis in self.cfg.stop_on, signal, evidence, **where)

    def _record(self, kind: str, result: Verdict) -> Verdict:
        previous = self._latest[kind]
        self._latest[kind], self._last_kind = result, kind
        if result.diagnosis != "healthy":
            # A persisting step-level warning would otherwise be logged every few steps.
            if kind == "epoch" or result.stop or result.diagnosis != previous.diagnosis:
                self._history.append(result)
            if result.stop:
                self._stopped = result
        return result

    # -- step checks --------------------------------------------------------------------------------

    def _step_problem(
        self, step: int, epoch: int, loss: float, loss_cls: float, loss_box: float, grad_norm: float, num_pos: float
    ) -> tuple[str, str, dict[str, Any]] | None:
        cfg = self.cfg
        values = {"loss": loss, "loss_cls": loss_cls, "loss_box": loss_box, "grad_norm": grad_norm}
        if not all(math.isfinite(v) for v in (loss, loss_cls, loss_box)):
            return "diverged", "non-finite loss", values
        if not math.isfinite(grad_norm):
            return "diverged", "non-finite gradient norm", values

        # The early reference: judged against the checks before this one, then frozen.
        if self._loss_ref:
            reference = _low_median(self._loss_ref)
            if loss > cfg.explosion_factor * reference and loss >= cfg.explosion_min_loss:
                return "diverged", "loss explosion", {**values, "reference": reference, "factor": cfg.explosion_factor}
        # The untrained network's loss: a loss already rising over the reference checks inflates
        # their median, never the first check.
        unweighted = loss_cls + loss_box
        if self._untrained is not None:
            if unweighted > cfg.explosion_factor * self._untrained and unweighted >= cfg.explosion_min_loss:
                evidence = {**values, "unweighted": unweighted, "untrained": self._untrained, "factor": cfg.explosion_factor}
                return "diverged", "loss explosion over the untrained loss", evidence
        elif num_pos > 0 and unweighted > 0:
            self._untrained = unweighted
        if loss > cfg.max_loss:
            return "diverged", "loss above its ceiling", {**values, "ceiling": cfg.max_loss}
        if len(self._loss_ref) < cfg.reference_checks:
            self._loss_ref.append(loss)
            self._cls_ref.append(loss_cls)
        self._recent.append([float(step), float(epoch), loss_cls, loss])

        spike = None
        if len(self._grads) >= cfg.spike_min_checks:
            grad_median, loss_median = _low_median(self._grads), _low_median(self._losses)
            if grad_norm > cfg.grad_spike_factor * grad_median and loss > cfg.spike_loss_factor * loss_median:
                spike = {"grad_median": grad_median, "loss_median": loss_median}
        self._spike_streak = self._spike_streak + 1 if spike else 0
        self._grads.append(grad_norm)
        self._losses.append(loss)
        if spike and self._spike_streak >= cfg.spike_patience:
            evidence = {
                **values,
                **spike,
                "grad_factor": cfg.grad_spike_factor,
                "loss_factor": cfg.spike_loss_factor,
                "checks": self._spike_streak,
            }
            return "diverged", "gradient spike with rising loss", evidence

        self._zero_pos_streak = self._zero_pos_streak + 1 if not num_pos > 0 else 0
        if self._zero_pos_streak >= cfg.no_positives_checks:
            return "no-positives", "no positive anchors", {"num_pos": num_pos, "checks": self._zero_pos_streak}
        return None

    # -- epoch checks -------------------------------------------------------------------------------

    @staticmethod
    def _epoch_record(epoch: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        fp, images = _number(metrics, K.VAL_FP), _number(metrics, K.VAL_NUM_IMAGES)
        return {
            "epoch": epoch,
            "ap": _number(metrics, K.VAL_AP),
            "precision": _number(metrics, K.VAL_PRECISION),
            "recall": _number(metrics, K.VAL_RECALL),
            "fp_per_image": fp / images if fp is not None and images else None,
            "detections_per_image": _number(metrics, K.VAL_DETECTIONS_PER_IMAGE),
            "top_score": _number(metrics, K.VAL_TOP_SCORE),
            "top_spread": _number(metrics, K.VAL_TOP_SCORE_SPREAD),
            "images": images,
            "loss": _number(metrics, K.TRAIN_LOSS),
            "loss_cls": _number(metrics, K.TRAIN_LOSS_CLS),
        }

    def _span(self, evaluations: int) -> int:
        """A number of evaluations, raised so that it spans at least ``min_span_steps`` steps."""
        return max(evaluations, math.ceil(self.cfg.min_span_steps / self._iters_per_epoch))

    def _stall_window(self) -> int:
        """Optimiser steps of step checks the step-level stall evidence spans."""
        return max(self.cfg.stall_window_steps, self.cfg.min_span_steps)

    def _recent_size(self) -> int:
        """Step checks kept for the step-level stall evidence (the trainer also checks step 1)."""
        return math.ceil(self._stall_window() / self.cfg.check_every_steps) + 2

    def _epoch_problems(self, epoch: int) -> list[tuple[str, str, dict[str, Any]]]:
        first = self.first_verdict_epoch
        # References (best AP, best recall, peak top score) come from any epoch after the warm-up;
        # the evaluations a patience or a window counts come only from after the grace as well.
        records = [r for r in self._epochs if r["epoch"] > self.warmup_epochs]
        if epoch < first:
            # Within the grace only the step-level stall may fire: its evidence is the many step
            # checks since the warm-up ended, not a few noisy evaluations.
            found = self._stalled_steps(records) if records and epoch > self.warmup_epochs else None
            return [found] if found is not None else []
        # A stall (the model never moved) before collapse (it moved, towards background only).
        checks = (
            self._stalled,
            self._collapsed,
            self._near_collapse,
            self._overfitting,
            self._recall_decline,
            self._fp_surge,
        )
        problems = [problem for check in checks if (problem := check(records, first)) is not None]
        if any(problem[0] == "background-collapse" for problem in problems):
            # The collapse itself is named; its forewarning would only repeat it.
            problems = [problem for problem in problems if problem[0] != "near-collapse"]
        return problems

    def _start_cls(self) -> float | None:
        """The classification loss at the start: the early step reference, else the first epoch's mean."""
        if self._cls_ref:
            return _low_median(self._cls_ref)
        return next((r["loss_cls"] for r in self._epochs if _finite(r["loss_cls"])), None)

    @staticmethod
    def _top_peaks(records: Sequence[dict[str, Any]]) -> list[tuple[float, int | None]]:
        """For each record, the best top face score so far and the epoch it was reached."""
        peaks: list[tuple[float, int | None]] = []
        best: tuple[float, int | None] = (0.0, None)
        for r in records:
            if _finite(r["top_score"]) and r["top_score"] > best[0]:
                best = (r["top_score"], r["epoch"])
            peaks.append(best)
        return peaks

    def _top_fallen(self, record: dict[str, Any], peak: float) -> bool:
        """The top face score has fallen from a real peak: the model predicted faces, then stopped."""
        top, cfg = record["top_score"], self.cfg
        return _finite(top) and peak > cfg.collapse_min_score and top <= cfg.collapse_score_drop * peak

    def _constant_output(self, record: dict[str, Any]) -> bool:
        """Every validation image gets the same top face score: the output ignores the input."""
        spread, images = record.get("top_spread"), record.get("images")
        return (
            _finite(spread) and images is not None and images >= MIN_IMAGES_FOR_SPREAD
            and spread <= self.cfg.collapse_max_spread
        )  # fmt: skip

    def _no_faces(self, record: dict[str, Any], first: int, max_ap: float) -> bool | None:
        """Whether an evaluation found no faces (AP at most ``max_ap``, recall and detections per
        image at the collapse limits); ``None`` when it is not judged (before epoch ``first``, or
        a value not finite)."""
        keys = ("ap", "recall", "detections_per_image", "top_score")
        if record["epoch"] < first or not all(_finite(record[k]) for k in keys):
            return None
        cfg = self.cfg
        return bool(
            record["ap"] <= max_ap
            and record["recall"] <= cfg.collapse_max_recall
            and record["detections_per_image"] <= cfg.collapse_max_detections
        )

    def _collapsed(self, records: Sequence[dict[str, Any]], first: int) -> tuple[str, str, dict[str, Any]] | None:
        cfg = self.cfg
        peaks = self._top_peaks(records)

        def collapsed(index: int) -> bool:
            r = records[index]
            no_faces = self._no_faces(r, first, cfg.collapse_max_ap)
            if no_faces is None:
                return False
            if no_faces and (r["top_score"] <= cfg.collapse_min_score or self._top_fallen(r, peaks[index][0])):
                return True
            return r["ap"] <= cfg.collapse_max_ap and self._constant_output(r)

        streak = _streak(records, collapsed)
        if streak < self._span(cfg.collapse_patience):
            return None
        last = records[-1]
        best_top, best_epoch = peaks[-1]
        evidence = {
            "ap": last["ap"],
            "recall": last["recall"],
            "detections_per_image": last["detections_per_image"],
            "score_threshold": self.eval_score_threshold,
            "top_score": last["top_score"],
            "best_top_score": best_top,
            "best_top_epoch": best_epoch,
            "top_scores": [r["top_score"] for r in records[-streak:]],
            "top_score_spread": last.get("top_spread"),
            "constant_output": self._constant_output(last),
            "evaluations": streak,
        }
        reason = "no faces predicted after warm-up"
        if evidence["constant_output"] and last["detections_per_image"] > cfg.collapse_max_detections:
            reason = "the same face score for every image after warm-up (the output ignores the input)"
        return "background-collapse", reason, evidence

    def _stalled(self, records: Sequence[dict[str, Any]], first: int) -> tuple[str, str, dict[str, Any]] | None:
        found = self._stalled_epochs(records, first)
        return found if found is not None else self._stalled_steps(records)

    def _stalled_epochs(self, records: Sequence[dict[str, Any]], first: int) -> tuple[str, str, dict[str, Any]] | None:
        cfg = self.cfg
        size = self._span(cfg.stall_epochs)
        window = records[-size:]
        start = self._start_cls()
        if len(window) < size or window[0]["epoch"] < first or not _finite(start) or start <= 0:
            return None
        if self._top_fallen(records[-1], self._top_peaks(records)[-1][0]):
            return None
        losses = [r["loss_cls"] for r in window]
        aps = [r["ap"] for r in window]
        if not all(_finite(v) for v in losses) or not all(_finite(v) for v in aps):
            return None
        if self.prior_cls_loss is not None and losses[-1] <= (1 + cfg.stall_prior_margin) * self.prior_cls_loss:
            return None  # at the class prior's loss: it moved there (collapse), it did not stall
        mean = sum(losses) / len(losses)
        change = (max(losses) - min(losses)) / mean if mean > 0 else math.inf
        fraction = losses[-1] / start
        if change <= cfg.stall_max_change and fraction >= cfg.stall_min_fraction and max(aps) <= cfg.stall_max_ap:
            evidence = {
                "loss_cls": losses[-1],
                "change": change,
                "fraction": fraction,
                "start": start,
                "ap": aps[-1],
                "evaluations": len(window),
            }
            return "stalled", "classification loss flat", evidence
        return None

    def _stalled_steps(self, records: Sequence[dict[str, Any]]) -> tuple[str, str, dict[str, Any]] | None:
        """``stalled`` from the step checks since the warm-up: the classification loss barely moved
        over the last ``stall_window_steps`` steps (median of the later half of the checks against
        the earlier half: robust to single batches) and is still near its start, so is the loss,
        and no validation since the warm-up found a face. Needs no grace."""
        cfg = self.cfg
        start = self._start_cls()
        aps = [r["ap"] for r in records]
        if len(records) < 2 or not all(_finite(ap) for ap in aps) or max(aps) > cfg.stall_step_max_ap:
            return None  # at least two validations since the warm-up, none with a face found
        if not _finite(start) or start <= 0:
            return None
        epoch = records[-1]["epoch"]  # the checks after the warm-up, up to this validation
        after = [check for check in self._recent if self.warmup_epochs < check[1] <= epoch]
        if not after:
            return None
        window = self._stall_window()
        last_step = after[-1][0]
        checks = [check for check in after if check[0] >= last_step - window]
        if len(checks) < 4 or last_step - checks[0][0] < window - cfg.check_every_steps:
            return None  # not yet a full window of checks after the warm-up
        half = len(checks) // 2
        cls_early = statistics.median(c[2] for c in checks[:half])
        cls_late = statistics.median(c[2] for c in checks[half:])
        loss_late = statistics.median(c[3] for c in checks[half:])
        loss_start = _low_median(self._loss_ref) if self._loss_ref else None
        if not all(_finite(v) and v > 0 for v in (cls_early, cls_late, loss_late, loss_start)):
            return None
        if self.prior_cls_loss is not None and cls_late <= (1 + cfg.stall_prior_margin) * self.prior_cls_loss:
            return None  # at the class prior's loss: it moved there (collapse), it did not stall
        if self._top_fallen(records[-1], self._top_peaks(records)[-1][0]):
            return None  # it predicted faces, then stopped: collapse, not a stall
        change = abs(cls_late - cls_early) / cls_early
        fraction = cls_late / start
        # The whole loss still near its start too: a box regressor that learns is not stalled.
        loss_fraction = loss_late / cast(float, loss_start)  # not None: checked finite above
        if change > cfg.stall_max_change or min(fraction, loss_fraction) < cfg.stall_min_fraction:
            return None
        if loss_fraction > cfg.stall_max_loss_rise:
            return None  # the loss is climbing: getting worse is not "nothing learnt"
        evidence = {
            "loss_cls": cls_late,
            "loss_cls_before": cls_early,
            "change": change,
            "fraction": fraction,
            "loss_fraction": loss_fraction,
            "start": start,
            "ap": max(aps),
            "evaluations": len(records),
            "checks": len(checks) - half,
            "first_step": int(checks[0][0]),
            "last_step": int(last_step),
        }
        return "stalled", "classification loss flat since the warm-up", evidence

    def _near_collapse(self, records: Sequence[dict[str, Any]], first: int) -> tuple[str, str, dict[str, Any]] | None:
        """A warning: AP at or near the collapse limit for several evaluations, no face above the
        score threshold, the top face score fallen from its peak, and the AP not climbing: a run
        whose AP hovers around ``collapse_max_ap`` never makes a collapse streak, yet is fading."""
        cfg = self.cfg
        # The top score's peak counts the warm-up's evaluations too (``records`` is the tail of
        # them after it): SGD lr 0.03 predicted faces at 0.97-1.0 in its warm-up epochs and never
        # again (top 0.27-0.45, AP 0.003-0.02 for 13 epochs); healthy runs fall from such a warm-up
        # peak too, but their AP climbs (the gain check below).
        peaks = self._top_peaks(self._epochs)[len(self._epochs) - len(records) :]

        def near(index: int) -> bool:
            r = records[index]
            return bool(self._no_faces(r, first, cfg.near_collapse_max_ap)) and self._top_fallen(r, peaks[index][0])

        size = self._span(cfg.near_collapse_patience)
        streak = _streak(records, near)
        if streak < size:
            return None
        smooth = _running_median([r["ap"] if _finite(r["ap"]) else 0.0 for r in records], cfg.smooth_evaluations)
        best_before = max(smooth[:-size]) if len(smooth) > size else smooth[-size]
        if smooth[-1] > best_before + cfg.near_collapse_max_ap_gain:
            return None  # AP climbing through the range: a slow start, not a fade
        last = records[-1]
        best_top, best_epoch = peaks[-1]
        evidence = {
            "ap": last["ap"],
            "max_ap": cfg.near_collapse_max_ap,
            "aps": [round(r["ap"], 4) for r in records[-streak:]],
            "ap_smoothed": smooth[-1],
            "best_ap_before": best_before,
            "recall": last["recall"],
            "detections_per_image": last["detections_per_image"],
            "score_threshold": self.eval_score_threshold,
            "top_score": last["top_score"],
            "best_top_score": best_top,
            "best_top_epoch": best_epoch,
            "top_scores": [round(r["top_score"], 3) for r in records[-streak:]],
            "evaluations": streak,
        }
        return "near-collapse", "AP hovering at the collapse limit", evidence

    def _fp_surge(self, records: Sequence[dict[str, Any]], first: int) -> tuple[str, str, dict[str, Any]] | None:
        cfg = self.cfg
        size = self._span(cfg.fp_surge_window) + 1
        window = records[-size:]
        if len(window) < size or window[0]["epoch"] < first:
            return None
        if not all(_finite(r[k]) for r in window for k in ("fp_per_image", "precision", "ap")):
            return None
        fps = [r["fp_per_image"] for r in window]
        start, end = window[0], window[-1]
        # Rising at every evaluation of the window: a one-off burst of detections is not a surge.
        rising = all(b >= a for a, b in zip(fps, fps[1:])) and fps[-1] >= cfg.fp_surge_factor * fps[0]
        if (
            rising
            and fps[-1] - fps[0] >= cfg.fp_surge_min_increase
            and start["precision"] - end["precision"] >= cfg.fp_surge_min_precision_drop
            and end["ap"] - start["ap"] <= cfg.fp_surge_max_ap_gain
        ):
            evidence = {
                "fp_start": fps[0],
                "fp_end": fps[-1],
                "precision_start": start["precision"],
                "precision_end": end["precision"],
                "ap_start": start["ap"],
                "ap_end": end["ap"],
                "evaluations": len(window),
            }
            return "fp-surge", "false positives rising while precision falls", evidence
        return None

    def _decline(
        self, records: Sequence[dict[str, Any]], first: int, key: str, patience: int
    ) -> tuple[list[dict[str, Any]], list[float], int] | None:
        """For a decline of ``key`` over the latest ``patience`` evaluations (when they may be judged):
        the records that have it, its running median, and the index of its best before them."""
        scored = [r for r in records if _finite(r[key])]
        size = self._span(patience)
        if len(scored) <= size or records[-1] is not scored[-1] or scored[-size]["epoch"] < first:
            return None
        smooth = _running_median([r[key] for r in scored], self.cfg.smooth_evaluations)
        best = max(range(len(scored) - size), key=smooth.__getitem__)
        return scored, smooth, best

    def _recall_decline(self, records: Sequence[dict[str, Any]], first: int) -> tuple[str, str, dict[str, Any]] | None:
        cfg = self.cfg
        found = self._decline(records, first, "recall", cfg.recall_patience)
        if found is None:
            return None
        scored, recalls, best = found
        size = self._span(cfg.recall_patience)
        limit = recalls[best] - max(cfg.recall_min_drop, cfg.recall_rel_drop * recalls[best])
        if max(recalls[-size:]) > limit:
            return None
        aps = _running_median([r["ap"] if _finite(r["ap"]) else 0.0 for r in scored], cfg.smooth_evaluations)
        if aps[-1] - aps[-size] > cfg.recall_max_ap_gain:
            return None
        evidence = {
            "recall": recalls[-1],
            "best_recall": recalls[best],
            "best_epoch": scored[best]["epoch"],
            "recalls": [r["recall"] for r in scored[-size:]],
            "evaluations": size,
        }
        return "recall-decline", "recall falling from its best", evidence

    def _overfitting(self, records: Sequence[dict[str, Any]], first: int) -> tuple[str, str, dict[str, Any]] | None:
        cfg = self.cfg
        found = self._decline(records, first, "ap", cfg.overfit_patience)
        if found is None:
            return None
        scored, aps, best = found
        size = self._span(cfg.overfit_patience)
        if aps[best] < cfg.overfit_min_best_ap:
            return None
        limit = aps[best] - max(cfg.overfit_min_drop, cfg.overfit_rel_drop * aps[best])
        loss, loss_at_best = scored[-1]["loss"], scored[best]["loss"]
        if max(aps[-size:]) > limit or not (_finite(loss) and _finite(loss_at_best)):
            return None
        if loss > (1 - cfg.overfit_min_loss_drop) * loss_at_best:
            return None
        evidence = {
            "ap": aps[-1],
            "best_ap": aps[best],
            "best_epoch": scored[best]["epoch"],
            "aps": [r["ap"] for r in scored[-size:]],
            "loss": loss,
            "loss_at_best": loss_at_best,
            "evaluations": size,
        }
        return "overfitting", "val AP falling while train loss falls", evidence
