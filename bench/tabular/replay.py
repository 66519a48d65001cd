"""Replay a search over the recorded table: the platform's own decision rules, no training.

One replayed search is an event-clock simulation of ``max_concurrent_trials`` trial slots (the
space's 2 for cpu-mini; ``--workers 1`` replays sequentially). A free slot asks the searcher for a
configuration, the surrogate (``NearestSurrogate``) answers it with a recorded run, and the run's
epochs arrive one by one after their recorded seconds. Each epoch's report goes through the same
objects, in the same order, as in a real search (``ray.tune.execution.tune_controller``'s
``_process_trial_result`` and ``stop_trial``):

* ``hpo.trainable.tune_metrics`` makes the report Tune sees (the penalty for a stopped trial);
* the stopper (``hpo.stopping.HealthStopper``) is asked first; if it says stop, the scheduler
  and the searcher do not see the result;
* else the scheduler (Ray's ``ASHAScheduler`` from ``hpo.stopping.build_scheduler``, or Ray's
  ``FIFOScheduler``) decides through ``on_trial_result``; the searcher gets ``on_trial_result``
  unless the decision is STOP;
* an ended trial: ``scheduler.on_trial_complete`` and ``searcher.on_trial_complete`` with its
  last result (``RungAwareOptunaSearch`` tells Optuna COMPLETE / PRUNED), then its slot asks for
  the next configuration.

The searcher is ``hpo.stopping.build_searcher`` for TPE (the space's sampler with its seed set to
the replay's seed) and the same ``RungAwareOptunaSearch`` with Optuna's ``RandomSampler`` for
random sampling, both behind the space's ``ConcurrencyLimiter`` and trying its
``points_to_evaluate`` first. ASHA only reads ``trial.trial_id`` from Ray's ``Trial``, so a
minimal :class:`ReplayTrial` stands in for it; the decisions are Ray's class's.

The health rule: the table was recorded in observe mode, so a run's stop is played at the first
epoch whose recorded verdicts include a diagnosis of the default ``HealthConfig().stop_on``
(``health/default_stop``). That epoch's report gets ``health/stop = 1`` and the diagnosis, its
validation is zeroed when a step check fired (the trainer skips it), and it costs the recorded
seconds up to the stopping step (``time/to_default_stop_s``), or the whole epoch for an epoch
check. Every other epoch costs its recorded ``time/epoch_s`` (``cost="cpu"``: the same in process
CPU seconds, which other jobs on a shared machine inflate far less). Compute is slot-seconds: the slots
never wait (a suggestion costs no recorded time), so compute at clock time t is ``workers * t``.
Dead time between trials and Ray's own overhead are not in the table (bench/dead_time.py: ~3 %).

Recovery (``<sampler>+recover+asha``, issue 18 item 4): the health monitor with
``health.on_failure: recover``. A trial answered by a configuration whose run the default rule
would stop is answered instead by that configuration's recorded *recovered* run
(``table_recover.parquet``, ``record.py --recover``): every report of it arrives, the replayed
epochs included, each after its recorded seconds (the trainer really cut the failing epoch, so
its ``time/epoch_s`` is what it cost), and goes through the same objects as above, as the real
search's would: ``tune_metrics`` gives the searcher the penalty from the first recovery on
(``health/recoveries > 0``: the configuration as sampled failed), ASHA judges ``raw/<metric>``
on the trainer's ``epoch`` (a replayed epoch past a rung already judged is not judged again; the
report of the epoch a recovery rolled back is not judged at all, ``hpo.stopping.RecoveryAwareASHA``;
any other report at ``max_epochs`` ends the trial, as Ray's ASHA stops any trial there), ``training_iteration``
counts the reports as Tune does. The health stopper ends it only where the recovered run itself
stopped (``health/stop == 1``: its recoveries spent, or a diagnosis without one). A recovered run
that ends at ``max_epochs`` is ``recovered:<diagnosis>`` (``hpo.layout.trial_end``): Optuna is told
COMPLETE with the penalty, and the run is kept, its AP counts as found.

``bench/tabular/compare.py`` replays every strategy over many seeds and writes the report.
"""

from __future__ import annotations

import heapq
import logging
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repository's packages

import numpy as np  # noqa: E402

from bench.tabular.surrogate import NearestSurrogate, Run  # noqa: E402
from hpo import layout as L  # noqa: E402
from hpo.space import SearchSpace  # noqa: E402
from hpo.stopping import HealthStopper, RungAwareOptunaSearch, build_scheduler, build_searcher  # noqa: E402
from hpo.trainable import tune_metrics  # noqa: E402
from model.health import LABELS  # noqa: E402
from model.report_keys import VAL_KEYS  # noqa: E402

Sampler = Literal["tpe", "random"]
Cost = Literal["wall", "cpu"]
#: The recorded seconds an epoch costs, and a stopped epoch up to its stop: wall clock (the
#: default) or the process's CPU time (on a shared machine the other jobs' load inflates wall).
COST_KEYS: dict[str, tuple[str, str]] = {
    "wall": ("time/epoch_s", "time/to_default_stop_s"),
    "cpu": ("time/epoch_cpu_s", "time/to_default_stop_cpu_s"),
}

#: Columns the recorder added beside the trainer's report: not part of what a trial reports.
_RECORDER_KEYS = frozenset(
    {
        "health/verdict_step",
        "health/verdict_epoch",
        "health/verdicts",
        "health/default_stop",
        "health/default_stop_kind",
        "health/default_stop_step",
        "time/train_s",
        "time/to_default_stop_s",
        "time/setup_s",
        "time/run_s",
    }
)


@dataclass(frozen=True)
class Strategy:
    sampler: Sampler
    asha: bool
    health: bool
    recover: bool = False
    """The health monitor with ``health.on_failure: recover`` (needs ``health``): failing
    configurations answered by their recorded recovered runs."""

    @property
    def name(self) -> str:
        rules = [r for r, on in (("recover" if self.recover else "health", self.health), ("asha", self.asha)) if on]
        return f"{self.sampler}+{'+'.join(rules) or 'nostop'}"


#: Every strategy of the comparison; ``tpe+health+asha`` is the platform's default.
STRATEGIES = {
    s.name: s
    for sampler in ("tpe", "random")
    for s in (
        Strategy(sampler, asha=False, health=False),
        Strategy(sampler, asha=True, health=False),
        Strategy(sampler, asha=False, health=True),
        Strategy(sampler, asha=True, health=True),
    )
} | {s.name: s for s in (Strategy(sampler, asha=True, health=True, recover=True) for sampler in ("tpe", "random"))}


@dataclass(frozen=True)
class ReplayTrial:
    """What Ray's schedulers read of a ``Trial``: its id."""

    trial_id: str


@dataclass
class TrialRecord:
    """One replayed trial: what was proposed, which recorded run answered it, how it ended."""

    trial_id: str
    config: dict[str, Any]
    run: Run
    start: float
    stop_at: int | None
    """Report index at which the health rule stops it (``None``: never, or the rule is off)."""
    recovered: bool = False
    """Answered by a recorded recovered run (a ``recover`` strategy, a failing configuration)."""
    epochs: int = 0
    """Reports received (a recovered run's replayed epochs included)."""
    cost: float = 0.0
    outcome: str = "running"
    """``completed``, ``recovered:<diagnosis>``, ``asha@<epoch>``, ``health:<diagnosis>@<epoch>``,
    ``error@<epoch>`` or ``running`` (cut by the end of the budget)."""
    ap: float | None = None
    """The raw metric of its last report when it ended completed or recovered (a kept run)."""

    def summary(self) -> dict[str, Any]:
        return {
            "trial_id": self.trial_id,
            "answered_by": self.run.config_id,
            "epochs": self.epochs,
            "cost_s": round(self.cost, 3),
            "outcome": self.outcome,
            "ap": self.ap,
            "full_ap": self.run.final_ap,
            "failing": self.run.failing,
        }


@dataclass
class Trace:
    """One replayed search."""

    strategy: str
    seed: int
    budget_s: float
    workers: int
    searcher: Any = None
    """The searcher after the search (its Optuna study says what the sampler was told)."""
    trials: list[TrialRecord] = field(default_factory=list)
    incumbent: list[tuple[float, float, str]] = field(default_factory=list)
    """``(compute_s, best AP, config_id)`` each time a completed (or recovered) trial raised the best AP."""

    def best_at(self, compute_s: float) -> float:
        """Best AP of the trials completed by ``compute_s`` slot-seconds (0 before the first)."""
        best = 0.0
        for spent, ap, _ in self.incumbent:
            if spent > compute_s:
                break
            best = ap
        return best

    def compute_to_reach(self, target: float) -> float:
        """Slot-seconds until a completed trial's AP first reached ``target`` (inf: never)."""
        return next((spent for spent, ap, _ in self.incumbent if ap >= target - 1e-12), math.inf)


def searcher_for(space: SearchSpace, sampler: Sampler, seed: int):
    """The platform's searcher with the sampler's seed set to ``seed`` (TPE: exactly
    ``build_searcher``), or the same searcher around Optuna's ``RandomSampler``. The seed is set
    on a copy of the space, not re-validated (a replay may carry a scheduler setting the space's
    validation rejects, ``compare.py``'s unchecked overrides; the searcher does not read it)."""
    seeded = space.model_copy(update={"sampler": space.sampler.model_copy(update={"seed": seed})})
    searcher = build_searcher(seeded)
    if sampler == "tpe":
        return searcher
    from optuna.samplers import RandomSampler
    from ray.tune.search import ConcurrencyLimiter

    random = RungAwareOptunaSearch(
        space=seeded.optuna_distributions(),
        metric=seeded.metric,
        mode=seeded.mode,
        sampler=RandomSampler(seed=seed),
        points_to_evaluate=[dict(p) for p in seeded.points_to_evaluate] or None,
        max_epochs=seeded.budget.max_epochs,
    )
    limit = seeded.budget.max_concurrent_trials
    return ConcurrencyLimiter(random, max_concurrent=limit) if limit is not None else random


def epoch_result(space: SearchSpace, trial_id: str, row: dict[str, Any], stop: bool) -> dict[str, Any]:
    """What Tune sees of one recorded epoch: the trainer's report (as the default health rule
    would have made it when ``stop``; a recovered run's as recorded) through ``tune_metrics``,
    plus Tune's own keys (``training_iteration``: the run's report count)."""
    report = {
        k: v
        for k, v in row.items()
        if (k in ("epoch", "step", "time/epoch_s") or k.split("/")[0] in ("train", "val", "health")) and k not in _RECORDER_KEYS
    }
    if stop:
        diagnosis = row["health/default_stop"]
        report.update({"health/stop": 1.0, "health/diagnosis": diagnosis, "health/code": float(LABELS.index(diagnosis))})
        if row["health/default_stop_kind"] == "step":
            report.update(dict.fromkeys(VAL_KEYS, 0.0))  # the trainer skips validation after a step stop
    metrics = tune_metrics(report, space.metric, space.mode)
    metrics.update(training_iteration=row.get("report") or row["epoch"], trial_id=trial_id)
    return metrics


def recorded_stop(run: Run) -> int | None:
    """Index of the report at which a recovered run's trainer really stopped (``health/stop``)."""
    return next((i for i, e in enumerate(run.epochs) if e.get("health/stop") == 1), None)


def replay(
    space: SearchSpace,
    surrogate: NearestSurrogate,
    strategy: Strategy,
    seed: int,
    budget_s: float,
    workers: int | None = None,
    cost: Cost = "wall",
    recovered: Mapping[str, Run] | None = None,
) -> Trace:
    """One search of ``strategy`` over the table, until ``budget_s`` slot-seconds are spent;
    ``recovered``: ``{config_id: recovered run}`` of the failing configurations (``recover`` strategies)."""
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    workers = workers or space.budget.max_concurrent_trials or 1
    np.random.seed(seed)  # ASHA draws each trial's bracket from NumPy's global generator
    searcher = searcher_for(space, strategy.sampler, seed)
    scheduler = build_scheduler(space) if strategy.asha else FIFOScheduler()
    stopper = HealthStopper() if strategy.health else None
    max_epochs = space.budget.max_epochs
    horizon = budget_s / workers
    trace = Trace(strategy.name, seed, budget_s, workers, searcher)
    epoch_key, stop_key = COST_KEYS[cost]
    events: list[tuple[float, int, TrialRecord, int]] = []
    sequence = 0

    def schedule(record: TrialRecord, index: int, now: float) -> None:
        nonlocal sequence
        row = record.run.epochs[index]
        # A recorded stop of the observe-mode run costs up to its stopping step; a recovered run's
        # epochs were really cut where they stopped or recovered: each costs what it took.
        seconds = row[stop_key] if index == record.stop_at and not record.recovered else row[epoch_key]
        heapq.heappush(events, (now + seconds, sequence, record, index))
        sequence += 1

    def start(now: float) -> None:
        trial_id = f"t{len(trace.trials):05d}"
        config = searcher.suggest(trial_id)
        if config is None:  # cannot happen with one slot per allowed concurrent trial
            raise RuntimeError(f"the searcher proposed nothing for {trial_id} with a free slot")
        run = surrogate.answer(config)
        if strategy.recover and run.first_default_stop() is not None:
            if recovered is None or run.config_id not in recovered:
                raise KeyError(f"no recorded recovered run of the failing configuration {run.config_id} (record.py --recover)")
            run = recovered[run.config_id]
            record = TrialRecord(trial_id, config, run, now, recorded_stop(run), recovered=True)
        else:
            record = TrialRecord(trial_id, config, run, now, run.first_default_stop() if strategy.health else None)
        trace.trials.append(record)
        scheduler.on_trial_add(None, ReplayTrial(trial_id))
        schedule(record, 0, now)

    def finish(record: TrialRecord, result: dict[str, Any], outcome: str, now: float) -> None:
        record.outcome = outcome
        if outcome.startswith("error"):
            scheduler.on_trial_error(None, ReplayTrial(record.trial_id))
            searcher.on_trial_complete(record.trial_id, error=True)
        else:
            scheduler.on_trial_complete(None, ReplayTrial(record.trial_id), result)
            searcher.on_trial_complete(record.trial_id, result=result)
        if outcome == "completed" or L.is_recovered(outcome):  # a kept run: exportable, its AP found
            ap = record.ap = result[f"{L.RAW_PREFIX}{space.metric}"]
            if not trace.incumbent or ap > trace.incumbent[-1][1]:
                trace.incumbent.append((workers * now, ap, record.run.config_id))
        start(now)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings, once per trial
        for _ in range(workers):
            start(0.0)
        while events and events[0][0] <= horizon:
            now, _, record, index = heapq.heappop(events)
            row = record.run.epochs[index]
            stopped = index == record.stop_at
            record.epochs += 1
            record.cost = now - record.start  # its epochs run back to back from its start
            result = epoch_result(space, record.trial_id, row, stopped and not record.recovered)
            trial = ReplayTrial(record.trial_id)
            if stopper is not None and stopper(record.trial_id, result):
                decision = TrialScheduler.STOP
            else:
                decision = scheduler.on_trial_result(None, trial, result)
            if decision != TrialScheduler.STOP:
                searcher.on_trial_result(record.trial_id, result)
            epoch = row["epoch"]
            last = index + 1 >= len(record.run.epochs)
            if stopped:
                diagnosis = row["health/diagnosis"] if record.recovered else row["health/default_stop"]
                finish(record, result, f"health:{diagnosis}@{epoch}", now)
            elif epoch >= max_epochs and (last or decision == TrialScheduler.STOP):
                # At max_epochs the run ended (ASHA stops a trial there unless a recovery has just
                # rolled it back): completed, or recovered:<diagnosis> after a recovery.
                finish(record, result, L.trial_end(result, max_epochs).outcome, now)
            elif decision == TrialScheduler.STOP:
                finish(record, result, f"asha@{epoch}", now)
            elif last:  # recorded as ended early: the trial errors
                finish(record, result, f"error@{epoch}", now)
            else:
                schedule(record, index + 1, now)
    for record in trace.trials:
        if record.outcome == "running":
            record.cost = horizon - record.start  # its share of the budget up to the end
    return trace


def quiet() -> None:
    """Optuna's per-trial info lines and Ray's searcher warnings off: thousands of trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
