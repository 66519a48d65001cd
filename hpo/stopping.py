"""How a search ends trials: the health rule first, then ASHA, with Optuna learning from both.

* :class:`HealthStopper` is the absolute rule: a trial whose report says the health monitor
  stopped it (``health/stop == 1``: diverged, collapsed, stalled...) ends at once. Tune asks the
  stopper before the scheduler, so ASHA never has to judge such a trial.
* :func:`build_scheduler`: ASHA prunes the weak among the healthy trials at its rungs
  (``time_attr`` is the trainer's ``epoch``), or FIFO when the space has no scheduler.
* :func:`build_searcher`: Optuna's sampler (TPE) through :class:`RungAwareOptunaSearch`, Ray
  Tune's ``OptunaSearch`` told how each trial really ended.

What Optuna's study records for each way a trial ends:

* completed (all ``budget.max_epochs``): COMPLETE with its last value;
* recovered (``health.on_failure: recover``; ``recovered:<diagnosis>``): COMPLETE with the penalty,
  the configuration as sampled failed; the run itself goes on, judged by ASHA on its raw metric;
* stopped by :class:`HealthStopper`: COMPLETE, value = the trial's last reported metric, which
  :func:`hpo.trainable.tune_metrics` made the finite penalty, so the sampler learns that the
  region fails (a NaN instead would leave the trial RUNNING forever: Optuna refuses to be told it);
* pruned by ASHA at a rung (or cut by the time budget): PRUNED, its intermediate values (one per
  epoch, the rung's own included: Tune passes the result that stops a trial to the searcher's
  ``on_trial_complete`` only) kept. Plain ``OptunaSearch`` would record it COMPLETE with its low-fidelity rung value,
  which TPE then ranks against full-length trials as if it were their equal;
* errored (once its retries are spent): FAIL, no value; while Tune retries it, it stays RUNNING.

Tune passes the scheduler and the searcher their ``metric``/``mode`` here, so the search entry
point must not set them again in ``tune.TuneConfig`` (Tune refuses a scheduler that has its own),
and when :func:`build_searcher` applies the concurrency limit, ``TuneConfig.max_concurrent_trials``
must stay ``None`` (or equal).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from hpo import layout as L
from hpo.space import AshaSchedulerSpec, SearchSpace, TpeSamplerSpec
from hpo.values import is_number
from model import report_keys as K

if TYPE_CHECKING:
    import optuna

__all__ = ["HealthStopper", "RungAwareOptunaSearch", "build_scheduler", "build_searcher", "optuna_study"]


class HealthStopper(tune.Stopper):
    """Stops a trial as soon as its result carries ``health/stop == 1``; never the whole search.

    Records why: :meth:`stopped_trials` maps each stopped trial's id to its diagnosis. Tune keeps
    the object passed as ``RunConfig(stop=...)`` in the driver (it is neither copied nor sent to
    the workers), so the search entry point reads it after ``Tuner.fit()``. A search restored with
    ``Tuner.restore`` unpickles its own copy: only trials stopped after the restore land here.
    """

    def __init__(self) -> None:
        self._stopped: dict[str, str] = {}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if not L.stopped_by_health(result):
            return False
        # The first stopping result is the diagnosis; a late duplicate result does not overwrite it.
        self._stopped.setdefault(trial_id, L.diagnosis_of(result))
        return True

    def stop_all(self) -> bool:
        return False

    def stopped_trials(self) -> dict[str, str]:
        """``{trial_id: diagnosis}`` of every trial this stopper ended, in the order they stopped."""
        return dict(self._stopped)


class RungAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna a trial ended before ``max_epochs`` as PRUNED.

    A health-stopped trial stays COMPLETE: its value is the penalty, and that is the lesson TPE must
    learn. A trial ASHA cut at a rung is PRUNED: TPE ranks pruned trials below the completed ones
    (by how far they got, then by their last intermediate value) instead of treating a value from
    2 epochs like a value from the full budget. The intermediate values are what
    ``OptunaSearch.on_trial_result`` reported each epoch.
    """

    def __init__(self, *args: Any, max_epochs: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_epochs = max_epochs
        self._reported: dict[str, int] = {}  # trial id -> the last step told to Optuna

    def _last_reported(self) -> dict[str, int]:
        # A searcher saved before this attribute existed is restored without it.
        return self.__dict__.setdefault("_reported", {})

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        super().on_trial_result(trial_id, result)
        if trial_id not in self._completed_trials and is_number(result.get(TRAINING_ITERATION)):
            self._last_reported()[trial_id] = int(result[TRAINING_ITERATION])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if not error and result and trial_id in self._ot_trials and trial_id not in self._completed_trials:
            # Tune hands the result that made ASHA stop a trial (its rung value) to on_trial_complete
            # only, never to on_trial_result: report it as the intermediate value it is.
            step, value = result.get(TRAINING_ITERATION), result.get(self.metric)
            if is_number(step) and is_number(value) and step > self._last_reported().get(trial_id, 0):
                self._ot_trials[trial_id].report(float(value), int(step))
        if error or (result and L.trial_end(result, self.max_epochs).outcome == L.PRUNED):
            # OptunaSearch tells a trial without a value as FAIL (error) or PRUNED (no error).
            result = None
        super().on_trial_complete(trial_id, result=result, error=error)


def build_scheduler(space: SearchSpace) -> ASHAScheduler | FIFOScheduler:
    """ASHA over the trainer's epochs (``max_t`` = ``budget.max_epochs``), or FIFO for ``type: none``."""
    spec = space.scheduler
    if isinstance(spec, AshaSchedulerSpec):
        return ASHAScheduler(
            time_attr=K.EPOCH,
            # The measured value: equal to the metric except for a recovered trial, whose metric
            # is the penalty for Optuna while ASHA judges the run on what it reaches.
            metric=f"{L.RAW_PREFIX}{space.metric}",
            mode=space.mode,
            max_t=space.budget.max_epochs,
            grace_period=spec.grace_period,
            reduction_factor=spec.reduction_factor,
            brackets=spec.brackets,
        )
    return FIFOScheduler()


def build_searcher(space: SearchSpace) -> Searcher | None:
    """``OptunaSearch`` over the space's distributions for the TPE sampler, its
    ``points_to_evaluate`` tried first; wrapped in a ``ConcurrencyLimiter`` when
    ``budget.max_concurrent_trials`` is set. ``None`` for a grid: the search then passes
    ``space.grid()`` as Tune's ``param_space`` and needs no searcher.
    """
    if not isinstance(space.sampler, TpeSamplerSpec):
        return None
    searcher: Searcher = RungAwareOptunaSearch(
        space=space.optuna_distributions(),
        metric=space.metric,
        mode=space.mode,
        sampler=space.sampler.build(),
        points_to_evaluate=[dict(point) for point in space.points_to_evaluate] or None,
        max_epochs=space.budget.max_epochs,
    )
    limit = space.budget.max_concurrent_trials
    if limit is not None:
        # With constant_liar, TPE treats running trials as bad: the limit keeps that guess small.
        searcher = ConcurrencyLimiter(searcher, max_concurrent=limit)
    return searcher


def optuna_study(searcher: Searcher | None) -> optuna.Study | None:
    """The Optuna study behind a searcher from :func:`build_searcher` (``None`` for a grid).

    ``OptunaSearch`` has no public accessor for its study; this is the one place that reaches in.
    """
    while isinstance(searcher, ConcurrencyLimiter):
        searcher = searcher.searcher
    if searcher is None:
        return None
    if not isinstance(searcher, OptunaSearch):
        raise TypeError(f"not an OptunaSearch (or a ConcurrencyLimiter around one): {type(searcher).__name__}")
    return searcher._ot_study
