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

Where the study lives: ``build_searcher(space, storage=URL, study_name=NAME)`` keeps it in an
Optuna RDB storage (the search passes a sqlite file beside its results), where ``optuna-dashboard``
and ``optuna.load_study`` read it, during the search and after; without a storage, in memory.
Either way :func:`optuna_study` reads it through the storage: no private attribute of
``OptunaSearch`` is needed. Tune pickles the searcher with its checkpoints (``OptunaSearch.save``)
and ``Tuner.restore`` unpickles it: the study's storage reconnects to the same URL, so a resumed
search goes on in the same study (the database, not the pickle, holds its trials). Each Optuna
trial carries its Tune trial id as the user attribute ``hpo.trial_id`` (the report and the
dashboard link it to its MLflow run).

Tune passes the scheduler and the searcher their ``metric``/``mode`` here, so the search entry
point must not set them again in ``tune.TuneConfig`` (Tune refuses a scheduler that has its own),
and when :func:`build_searcher` applies the concurrency limit, ``TuneConfig.max_concurrent_trials``
must stay ``None`` (or equal).
"""

from __future__ import annotations

import logging
from typing import Any, cast

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, InMemoryStorage, RDBStorage
from ray import tune
from ray.air.constants import TRAINING_ITERATION  # where ray.tune.result has it from
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from hpo import layout as L
from hpo.space import AshaSchedulerSpec, SearchSpace, TpeSamplerSpec
from hpo.values import is_number
from model import report_keys as K

__all__ = ["HealthStopper", "RungAwareOptunaSearch", "build_scheduler", "build_searcher", "optuna_study"]

_LOG = logging.getLogger(__name__)


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

    ``storage``: an Optuna storage, or the URL of an RDB one (``sqlite:///...``); ``None``: a new
    in-memory storage. Either way :attr:`storage` and :attr:`study_name` say where the study is.
    """

    def __init__(
        self, *args: Any, max_epochs: int, storage: str | BaseStorage | None = None, study_name: str | None = None, **kwargs: Any
    ) -> None:
        if isinstance(storage, str):
            storage = RDBStorage(storage)
        #: Where the study is (``optuna.load_study(study_name=..., storage=...)``).
        self.storage: BaseStorage = storage if storage is not None else InMemoryStorage()
        self.study_name = study_name or "optuna"  # OptunaSearch's own default name
        # mypy cannot bound *args: they are OptunaSearch's leading params (space ... sampler), never these two.
        super().__init__(*args, storage=self.storage, study_name=self.study_name, **kwargs)  # type: ignore[misc]
        self.max_epochs = max_epochs
        self._reported: dict[str, int] = {}  # trial id -> the last step told to Optuna

    def restore(self, checkpoint_path: str) -> None:
        # The saved searcher's storage replaces this one's; a searcher saved before the study had a
        # storage of its own leaves none (its study was in the pickle only: optuna_study gives None).
        self.__dict__.pop("storage", None)
        self.__dict__.pop("study_name", None)
        super().restore(checkpoint_path)
        storage = getattr(self, "storage", None)
        if isinstance(storage, RDBStorage):
            try:
                storage.get_study_id_from_name(self.study_name)
            except KeyError:
                # Its trials are in the database, not in the pickle: going on without them would
                # fail at the first trial, with a less helpful message.
                raise RuntimeError(
                    f"the search's Optuna study {self.study_name!r} is not in {storage.url}: resume the search "
                    "on the machine that holds that file"
                ) from None

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        trial = self._ot_trials.get(trial_id)
        if config is not None and trial is not None and L.TRIAL_ID not in trial.user_attrs:
            trial.set_user_attr(L.TRIAL_ID, trial_id)  # which Tune trial (and MLflow run) it is
        return config

    def _last_reported(self) -> dict[str, int]:
        # A searcher saved before this attribute existed is restored without it.
        return cast("dict[str, int]", self.__dict__.setdefault("_reported", {}))

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            # A resumed search whose storage recorded the trial's end after Tune's last checkpoint
            # of the searcher: Tune runs the rest again, the study keeps what it was told.
            _LOG.debug("trial %s already finished in the Optuna study: result not reported", trial_id)
            return
        if trial_id not in self._completed_trials and is_number(result.get(TRAINING_ITERATION)):
            self._last_reported()[trial_id] = int(result[TRAINING_ITERATION])

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if not error and result and trial_id in self._ot_trials and trial_id not in self._completed_trials:
            # Tune hands the result that made ASHA stop a trial (its rung value) to on_trial_complete
            # only, never to on_trial_result: report it as the intermediate value it is.
            step, value = result.get(TRAINING_ITERATION), result.get(self.metric)
            if is_number(step) and is_number(value) and step > self._last_reported().get(trial_id, 0):
                try:
                    self._ot_trials[trial_id].report(float(value), int(step))
                except UpdateFinishedTrialError:  # see on_trial_result; OptunaSearch's tell warns
                    pass
        if error or (result and L.trial_end(result, self.max_epochs).outcome == L.PRUNED):
            # OptunaSearch tells a trial without a value as FAIL (error) or PRUNED (no error).
            result = None
        super().on_trial_complete(trial_id, result=result, error=error)


class RecoveryAwareASHA(ASHAScheduler):
    """Ray's ASHA, except that it does not judge the report of an epoch the trainer has just
    rolled back (``health/recovery`` names the recovery, in that report only): its metric is the
    failure's, and the run goes on from an earlier epoch. Judged, a recovery at a rung showed ASHA
    the failed epoch's zeroed AP and the run was cut while being fixed, and one at ``max_t`` ended
    the trial (the recovered runs replayed in ``bench/tabular``). The replayed epochs are judged
    as usual when they reach a rung the trial has not been judged at."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if result.get(K.HEALTH_RECOVERY):
            return str(self.CONTINUE)
        return super().on_trial_result(tune_controller, trial, result)


def build_scheduler(space: SearchSpace) -> ASHAScheduler | FIFOScheduler:
    """ASHA over the trainer's epochs (``max_t`` = ``budget.max_epochs``; :class:`RecoveryAwareASHA`),
    or FIFO for ``type: none``."""
    spec = space.scheduler
    if isinstance(spec, AshaSchedulerSpec):
        return RecoveryAwareASHA(
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
    return FIFOScheduler()  # type: ignore[no-untyped-call]  # Ray's FIFOScheduler.__init__ is unannotated


def build_searcher(space: SearchSpace, storage: str | None = None, study_name: str | None = None) -> Searcher | None:
    """``OptunaSearch`` over the space's distributions for the TPE sampler, its
    ``points_to_evaluate`` tried first; wrapped in a ``ConcurrencyLimiter`` when
    ``budget.max_concurrent_trials`` is set. ``None`` for a grid: the search then passes
    ``space.grid()`` as Tune's ``param_space`` and needs no searcher.

    ``storage``: the URL of the Optuna RDB storage to keep the study in (``sqlite:///...``;
    created when missing), with ``study_name``; ``None``: in memory.
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
        storage=storage,
        study_name=study_name,
    )
    limit = space.budget.max_concurrent_trials
    if limit is not None:
        # With constant_liar, TPE treats running trials as bad: the limit keeps that guess small.
        searcher = ConcurrencyLimiter(searcher, max_concurrent=limit)
    return searcher


def optuna_study(searcher: Searcher | None) -> optuna.Study | None:
    """The Optuna study behind a searcher from :func:`build_searcher` (``None`` for a grid, or a
    searcher restored from a checkpoint saved before the study had a storage), read from its
    storage."""
    while isinstance(searcher, ConcurrencyLimiter):
        searcher = searcher.searcher
    if searcher is None:
        return None
    if not isinstance(searcher, RungAwareOptunaSearch):
        raise TypeError(f"not a RungAwareOptunaSearch (or a ConcurrencyLimiter around one): {type(searcher).__name__}")
    if getattr(searcher, "storage", None) is None:
        return None
    return optuna.load_study(study_name=searcher.study_name, storage=searcher.storage)
