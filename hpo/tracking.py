"""MLflow tracking of a search: one parent run per search, one child run per Tune trial, in the
layout of :mod:`hpo.layout`; a child run's per-epoch metrics are :data:`TRIAL_METRICS` (step = epoch).

Everything goes through :class:`mlflow.MlflowClient`, never the fluent API: the callback lives in
Tune's driver next to other code, and the fluent API's global "active run" would leak into it.
Tracking is best effort during a search: a failure is logged as a warning and the search goes on.

The callback's hooks run on Tune's event loop, which starts a trial's training only once
``on_trial_start`` has returned, sends a trial its next epoch only once ``on_trial_result`` has,
and frees an ended trial's slot only once ``on_trial_complete`` has; the end-of-trial artifacts
alone (reading the metric history back, drawing the learning curves, uploading them and the
sample detections) took 1.3-1.7 s a trial there on 2 loaded cores (``bench/dead_time.py``). So the
hooks only take a snapshot of the trial and queue the work; one writer thread does it, in the
order it was queued (per run and across runs MLflow sees the writes in Tune's order; a run's
start and end times and the metrics' timestamps are the hooks' own). The queue is drained before
``on_experiment_end`` returns (also after Ctrl-C), so everything has reached MLflow when
``Tuner.fit`` does.

Nothing is lost when the tracking server goes away (:mod:`hpo.journal`): a write MLflow does not
acknowledge (each call gives up after the search's bounded retries) goes to a local journal, and
so does every write after it, in order, until the server answers again (tried every
:data:`RETRY_S` seconds): then the journal is replayed and writing goes on. What is still
journaled when the search ends is replayed by ``--resume``, which then also reconciles MLflow with
Tune's own record of every trial (:meth:`MlflowTrialCallback.reconcile`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlparse

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from ray import tune

from hpo import layout as L
from hpo import plots
from hpo.journal import TrackingJournal
from hpo.runs import search_runs, tag_filter
from hpo.space import SearchSpace
from hpo.values import is_finite, is_number
from model import report_keys as K
from model import run_files

if TYPE_CHECKING:
    import pyarrow.fs as pafs
    from ray.train import Checkpoint
    from ray.tune import Result
    from ray.tune.experiment import Trial

__all__ = ["TRIAL_METRICS", "MlflowTrialCallback", "finish_parent_run", "open_parent_run", "share_trials_view"]

_LOG = logging.getLogger(__name__)

#: The per-epoch metrics a child run records: every number of the trainer's report but its position
#: and time (``val/num_images`` with ``val/fp``: false positives per image, the fp-surge signal), and
#: the images each split skipped (the trainable's).
TRIAL_METRICS: tuple[str, ...] = (*K.TRAIN_KEYS, *K.VAL_KEYS, K.HEALTH_CODE, K.HEALTH_STOP, K.HEALTH_RECOVERIES,
                                  L.TRAIN_SKIPPED, L.VAL_SKIPPED)  # fmt: skip

#: The callback's MLflow writes off Tune's event loop (see the module's doc); False writes them in
#: the hooks themselves (``bench/dead_time.py --variant sync-tracking`` measures the difference).
BACKGROUND_WRITES = True
#: Seconds between attempts to write the journal to a tracking server that did not answer.
RETRY_S = 30.0
_MAX_PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call
_MAX_TAG_CHARS = 5000  # below MLflow's limit on a tag value (8000 in MLflow 3)


# -- the parent run --------------------------------------------------------------------------------


def open_parent_run(
    tracking_uri: str, experiment: str, search_id: str, space: SearchSpace, *, tags: Mapping[str, str] | None = None
) -> str:
    """Create the search's parent run, or re-open the one tagged with ``search_id``; its run id.

    A new run gets the layout's tags, params (metric, mode, num_samples, max_epochs, scheduler,
    sampler) and the artifact ``search_space.yaml``. The experiment gets the runs table's trials
    view of this space (:func:`share_trials_view`). A re-opened one (``--resume``) is set back to
    RUNNING with ``hpo.status`` removed; its params and artifact are left as they were. ``tags``
    (e.g. where the Optuna study is) go on the run either way. The experiment is created when
    missing, and opens in MLflow's model-training view (see :func:`_experiment_id`).

    Raises:
        mlflow.MlflowException: the tracking server or store refuses (here, unlike in the
            callback, a failure is the caller's to handle: the search has not started yet).
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = _experiment_id(client, tracking_uri, experiment)
    share_trials_view(client, experiment_id, space)
    found = search_runs(client, [experiment_id], tag_filter({L.ROLE: L.PARENT, L.SEARCH_ID: search_id}))
    if found:
        run_id: str = found[0].info.run_id
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        if L.STATUS in found[0].data.tags:
            client.delete_tag(run_id, L.STATUS)
        if tags:
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        return run_id

    layout_tags = {L.ROLE: L.PARENT, L.SEARCH_ID: search_id, L.SPACE: space.name, L.METRIC: space.metric, L.MODE: space.mode}
    run = client.create_run(experiment_id, tags={**layout_tags, **(tags or {})}, run_name=f"{space.name}-{search_id[:8]}")
    run_id = run.info.run_id
    params = {
        "metric": space.metric,
        "mode": space.mode,
        "num_samples": space.budget.num_samples,
        "max_epochs": space.budget.max_epochs,
        "scheduler": space.scheduler.type,
        "sampler": space.sampler.type,
    }
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    client.log_text(run_id, space.to_yaml(), L.SPACE_ARTIFACT)
    return run_id


def finish_parent_run(
    tracking_uri: str,
    run_id: str,
    summary_rows: Sequence[Mapping[str, Any]],
    status: L.SearchStatus,
    *,
    best: Mapping[str, Any] | None = None,
    metric: str | None = None,
) -> None:
    """Write ``summary.csv`` (one row per trial; columns in order of first appearance), tag
    ``hpo.status``, and end the parent run: FINISHED, or KILLED for an interrupted search. With
    ``best`` (a summary row) and ``metric``, the parent shows the best trial in the runs table: its
    metric value as the parent's metric, its id as ``hpo.best_trial``, its sampled params (the row's
    dotted keys) as ``hpo.best_params``; its description counts the trials by outcome and names the
    best one with its params.

    Raises:
        ValueError: ``status`` is neither ``finished`` nor ``interrupted``.
    """
    if status not in (L.FINISHED, L.INTERRUPTED):
        raise ValueError(f"status must be {L.FINISHED!r} or {L.INTERRUPTED!r} (got {status!r})")
    client = MlflowClient(tracking_uri=tracking_uri)
    client.log_text(run_id, _csv(summary_rows), L.SUMMARY_ARTIFACT)
    counts: dict[str, int] = {}
    for row in summary_rows:
        outcome = str(row.get("outcome", L.UNKNOWN)).split("@")[0]
        counts[outcome] = counts.get(outcome, 0) + 1
    lines = [f"Search {status}: {len(summary_rows)} trials.", "", "| outcome | trials |", "|---|---|"]
    lines += [f"| {outcome} | {n} |" for outcome, n in sorted(counts.items())]
    tags: dict[str, str] = {L.STATUS: status}
    if best is not None and metric is not None and is_finite(best.get(metric)):
        client.log_metric(run_id, metric, float(best[metric]))
        tags[L.BEST_TRIAL] = str(best["trial_id"])
        params = ", ".join(f"{k}={v}" for k, v in best.items() if "." in k and k != metric)
        lines += ["", f"Best completed trial: {best['trial_id']} ({metric} {float(best[metric]):.4f})."]
        if params:
            tags[L.BEST_PARAMS] = params[:_MAX_TAG_CHARS]
            lines.append(f"Its params: {params}.")
    tags[L.DESCRIPTION] = "\n".join(lines)
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED if status == L.FINISHED else RunStatus.KILLED))


# -- the child runs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TrialView:
    """A trial as a hook saw it, for the writer thread (Tune goes on changing the ``Trial``)."""

    trial_id: str
    config: dict[str, Any]
    last_result: dict[str, Any]
    checkpoint: Checkpoint | None
    at_ms: int
    """When the hook ran (ms since the epoch): the run's start/end time and the metrics' timestamp."""

    @classmethod
    def of(cls, trial: Trial) -> _TrialView:
        return cls(trial.trial_id, dict(trial.config), dict(trial.last_result or {}), trial.checkpoint, int(time.time() * 1000))

    def to_json(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "config": self.config, "last_result": self.last_result,
                "checkpoint": _checkpoint_uri(self.checkpoint), "at_ms": self.at_ms}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _TrialView:
        checkpoint = None
        if data.get("checkpoint"):
            checkpoint = tune.Checkpoint(data["checkpoint"])
        return cls(str(data["trial_id"]), dict(data["config"]), dict(data["last_result"]), checkpoint, int(data["at_ms"]))


class MlflowTrialCallback(tune.Callback):
    """Mirrors every Tune trial into a child run of the search's parent run.

    Every hook is best effort: a tracking failure is logged as a warning, never raised into Tune,
    and with a ``journal`` the write is kept there and replayed (see the module's doc). Each result
    costs one ``log_batch`` call (metrics and the diagnosis tag together). A child run is looked up
    by (search id, trial id) before one is created, so a resumed search (a second ``Tuner`` with
    the same search id, or ``Tuner.restore``) continues the same runs; epochs it already logged
    are not logged again.

    The hooks only queue the work (see the module's doc); :meth:`flush` waits for it, and
    ``on_experiment_end`` flushes before it returns.

    Args:
        tracking_uri: the MLflow tracking URI (e.g. ``sqlite:///mlflow.db``).
        parent_run_id: what :func:`open_parent_run` returned.
        search_id: the search's id (the parent's ``hpo.search_id``).
        space: the search space (the trial config artifact is built from it).
        max_epochs: a trial that ends at this epoch, not stopped, is ``completed``; earlier, ``pruned``.
        journal: where writes MLflow did not acknowledge wait (a local file); None: they are lost
            (with a warning).

    After ``Tuner.fit`` the driver reads :attr:`unfinished`: the trials the fit left unfinished
    (Ctrl-C), started but never ended or never started; empty for a search that ran to its end;
    and :attr:`journaled`: how many writes still wait in the journal.
    """

    _OPS = {"start": "_start", "result": "_result", "complete": "_complete", "end": "_end", "artifacts": "_artifacts"}

    def __init__(
        self,
        tracking_uri: str,
        parent_run_id: str,
        search_id: str,
        space: SearchSpace,
        max_epochs: int,
        journal: Path | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.parent_run_id = parent_run_id
        self.search_id = search_id
        self.space = space
        self.max_epochs = max_epochs
        self.journal = TrackingJournal(journal) if journal is not None else None
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        # Written by the writer thread only (read on the loop after a flush).
        self._runs: dict[str, str] = {}  # trial id -> child run id
        # trial id -> (recoveries, epoch, validated) last logged: a recovery's replay of an epoch
        # (after the unvalidated report that triggered it) is new, a result re-reported after a
        # restore from a checkpoint is not.
        self._last_step: dict[str, tuple[int, int, int]] = {}
        self._ended: set[str] = set()  # trials whose run this driver ended
        self._unsynced: set[str] = set()  # trials with a write that failed in this driver
        self._recovery: dict[str, str] = {}  # trial id -> its latest recovery event (for the description)
        self._journaled: int | None = None  # entries in the journal (None: not read yet)
        self._retry_at = 0.0  # time.monotonic() before which the journal waits
        self._executor: ThreadPoolExecutor | None = None  # the writer, started on first use
        self._pending: list[Future[None]] = []
        # Written on Tune's loop: which trials the hooks saw start and end.
        self._started: set[str] = set()
        self._finished: set[str] = set()
        self.unfinished: set[str] = set()

    # The callback is pickled with the Tuner's state; the client (a database engine) and the
    # writer thread are not.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_client=None, _experiment_id=None, _runs={}, _last_step={}, _ended=set(), _unsynced=set(), _recovery={},
                     _journaled=None, _retry_at=0.0, _executor=None, _pending=[], _started=set(), _finished=set(),
                     unfinished=set())  # fmt: skip
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A search stored before the journal existed: its callback has none.
        self.__dict__.update({"journal": None, "_unsynced": set(), "_journaled": None, "_retry_at": 0.0, "_started": set(),
                              "_finished": set()})  # fmt: skip
        self.__dict__.update(state)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def journaled(self) -> int:
        """How many writes wait in the journal (0 without one)."""
        if self.journal is None:
            return 0
        if self._journaled is None:
            self._journaled = len(self.journal)
        return self._journaled

    @property
    def had_failures(self) -> bool:
        """Whether a write failed in this driver (the trial runs concerned may lack something)."""
        return bool(self._unsynced)

    # -- Tune hooks ---------------------------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._started.add(trial.trial_id)
        self._submit("start", trial)

    def on_trial_restore(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._started.add(trial.trial_id)
        self._submit("start", trial)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any) -> None:
        self._submit("result", trial, dict(result))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finished.add(trial.trial_id)
        self._submit("complete", trial)
        self._submit("artifacts", trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finished.add(trial.trial_id)
        self._submit("end", trial, {L.OUTCOME: L.ERROR}, RunStatus.FAILED)
        self._submit("artifacts", trial)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.flush()
        # Also called after Ctrl-C, when Tune has just marked every running trial TERMINATED: what
        # tells the unfinished ones apart is that they never reached on_trial_complete/_error.
        self.unfinished = {
            t.trial_id
            for t in trials
            if (t.trial_id in self._started and t.trial_id not in self._finished) or t.status in (t.PENDING, t.PAUSED)
        }
        for trial in trials:
            if trial.trial_id in self.unfinished and trial.trial_id in self._started:
                # The run says so instead of staying RUNNING; --resume sets it running again.
                self._submit("end", trial, {L.OUTCOME: L.INTERRUPTED}, RunStatus.KILLED)
        self.flush()
        if self.journaled and not self.replay_journal():
            _LOG.warning(
                "%d MLflow writes could not be made (%s did not answer); they are kept in %s and written by --resume",
                self.journaled,
                self.tracking_uri,
                self.journal.path if self.journal else "?",
            )

    def flush(self) -> None:
        """Wait until everything the hooks queued so far is written (or journaled, or has failed with a warning)."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    # -- the journal and the reconciliation ----------------------------------------------------------

    def replay_journal(self, *, skip_parent: bool = False) -> bool:
        """Write what the journal holds, in order; True when it is empty afterwards.

        Stops at the first write that fails again (the rest waits :data:`RETRY_S` seconds).
        ``skip_parent`` drops a journaled closing of the parent run (a resumed search closes it itself).
        """
        if self.journal is None:
            return True
        entries = self.journal.entries()
        for done, entry in enumerate(entries):
            if skip_parent and entry.get("op") == "finish_parent":
                continue
            try:
                self._apply(entry)
            except Exception as exc:  # noqa: BLE001 - still down: keep the rest
                self.journal.replace(entries[done:])
                self._journaled = len(entries) - done
                self._retry_at = time.monotonic() + RETRY_S
                _LOG.info("MLflow still unavailable (%s: %s); %d writes wait in %s", type(exc).__name__, exc,
                          self._journaled, self.journal.path)  # fmt: skip
                return False
        self.journal.replace([])
        self._journaled = 0
        if entries:
            _LOG.warning("MLflow answers again: %d journaled writes made", len(entries))
        return True

    def journal_parent_finish(self, **kwargs: Any) -> None:
        """Keep a closing of the parent run that failed (:func:`finish_parent_run`'s arguments but the URI)."""
        self._append({"op": "finish_parent", "args": kwargs})

    def reconcile(self, results: Iterable[Result], unfinished: Collection[str] = ()) -> int:
        """Write to MLflow what it lacks of the trials Tune recorded: every ended trial (not in
        ``unfinished``) gets its child run, each reported epoch's metrics, its outcome and its
        artifacts, from Tune's own record (each trial's ``result.json`` in storage). Trials this
        driver tracked without a failure are taken as they are; the others are checked against
        MLflow. Returns how many trials needed writes.
        """
        children = {
            run.data.tags.get(L.TRIAL_ID): run
            for run in search_runs(self.client, [self._experiment()], tag_filter({L.SEARCH_ID: self.search_id, L.ROLE: L.TRIAL}))
        }
        repaired = 0
        for result in results:
            rows = [row for row in stored_results(result) if is_number(row.get(K.EPOCH))]
            if not rows:
                continue  # never reported an epoch: nothing was measured
            trial_id = str(rows[-1].get("trial_id"))
            if trial_id in unfinished or (trial_id in self._ended and trial_id not in self._unsynced):
                continue
            run = children.get(trial_id)
            if run is not None and self._recorded(run, rows[-1]):
                continue
            config = dict(result.config or rows[-1].get("config") or {})
            views = [_TrialView(trial_id, config, row, result.checkpoint, _row_ms(row)) for row in rows]
            for view in views:
                self._guard("result", view, view.last_result)
            if result.error is not None:
                self._guard("end", views[-1], {L.OUTCOME: L.ERROR}, RunStatus.FAILED)
            else:
                self._guard("complete", views[-1])
            self._guard("artifacts", views[-1])
            repaired += 1
        return repaired

    def _recorded(self, run: Any, last: Mapping[str, Any]) -> bool:
        """Whether an ended trial's run holds its end, its last epoch and its learning curves."""
        if run.data.tags.get(L.OUTCOME) in (L.RUNNING, L.INTERRUPTED) or run.info.status == "RUNNING":
            return False
        if self._logged_until(run.info.run_id) < _position(last):
            return False
        return any(f.path == L.CURVES_ARTIFACT for f in self.client.list_artifacts(run.info.run_id))

    def _apply(self, entry: Mapping[str, Any]) -> None:
        if entry["op"] == "finish_parent":
            finish_parent_run(self.tracking_uri, **entry["args"])
            return
        getattr(self, self._OPS[entry["op"]])(_TrialView.from_json(entry["view"]), *entry.get("args", ()))

    # -- what the hooks do ---------------------------------------------------------------------------

    def _submit(self, op: str, trial: Trial, *args: Any) -> None:
        """Run op (a key of ``_OPS``) on a view of the trial in the writer thread, after everything
        queued before (or here and now, see :data:`BACKGROUND_WRITES`)."""
        try:
            view = _TrialView.of(trial)
        except Exception as exc:  # noqa: BLE001
            _LOG.warning("MLflow tracking failed on trial %s (%s): %s: %s", trial.trial_id, op, type(exc).__name__, exc)
            return
        if not BACKGROUND_WRITES:
            self._guard(op, view, *args)
            return
        if self._executor is None:
            # One thread: per run, and across runs, MLflow sees the writes in the order Tune made them.
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-writer")
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._executor.submit(self._guard, op, view, *args))

    def _guard(self, op: str, trial: _TrialView, *args: Any) -> None:
        """Make one write; a failure is a warning and, with a journal, the write waits there (as
        does every write while the journal is not empty: MLflow must see them in order)."""
        if self.journaled and (time.monotonic() < self._retry_at or not self.replay_journal()):
            self._keep(op, trial, args)
            return
        try:
            getattr(self, self._OPS[op])(trial, *args)
        except Exception as exc:  # noqa: BLE001 - tracking must never take the search down
            kept = f"; kept in {self.journal.path}, written when MLflow answers again" if self.journal else ""
            _LOG.warning("MLflow tracking failed on trial %s (%s): %s: %s%s", trial.trial_id, op, type(exc).__name__,
                         _first_line(exc), kept)  # fmt: skip
            self._keep(op, trial, args)
            self._retry_at = time.monotonic() + RETRY_S

    def _keep(self, op: str, trial: _TrialView, args: Sequence[Any]) -> None:
        self._unsynced.add(trial.trial_id)
        self._append({"op": op, "view": trial.to_json(), "args": list(args)})

    def _append(self, entry: dict[str, Any]) -> None:
        if self.journal is not None:
            count = self.journaled
            self.journal.append(entry)
            self._journaled = count + 1

    def _start(self, trial: _TrialView) -> None:
        run_id = self._run_id(trial)
        # A trial Tune starts again (a retry, a resumed search) is running again.
        self.client.log_batch(run_id, tags=[RunTag(L.OUTCOME, L.RUNNING)])
        self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING), name=_run_name(trial.trial_id, L.RUNNING))

    def _result(self, trial: _TrialView, result: Mapping[str, Any]) -> None:
        if not is_number(result.get(K.EPOCH)):
            return  # not a training report (nothing to plot against)
        run_id = self._run_id(trial)
        position = _position(result)
        if position <= self._last_step.get(trial.trial_id, (0, -1, 0)):
            return  # re-reported after a restore from an earlier checkpoint
        # Measured values only: an epoch stopped before validation has placeholder zeros for its
        # val/* (no image validated), and the search metric's penalty is Optuna's, not a measurement.
        skip = set(K.VAL_KEYS) if result.get(K.VAL_NUM_IMAGES) == 0 else set()
        values = {key: result.get(f"{L.RAW_PREFIX}{key}", result.get(key)) for key in TRIAL_METRICS if key not in skip}
        step = position[1]
        metrics = [Metric(key, float(value), trial.at_ms, step) for key, value in values.items() if is_finite(value)]
        tags = [RunTag(L.DIAGNOSIS, str(result[K.HEALTH_DIAGNOSIS]))] if result.get(K.HEALTH_DIAGNOSIS) else []
        if result.get(K.HEALTH_RECOVERY):  # only in the report of the epoch it happened
            self._recovery[trial.trial_id] = f"(of {position[0]}): {result[K.HEALTH_RECOVERY]}"
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        self._last_step[trial.trial_id] = position

    def _complete(self, trial: _TrialView) -> None:
        end = L.trial_end(trial.last_result, self.max_epochs)
        tags = {L.OUTCOME: end.outcome}
        if end.pruned_at is not None:
            tags[L.PRUNED_AT] = str(end.pruned_at)
        # MLflow has three end states, so its icons tell apart what ran to its end (completed, and a
        # recovered trial: its name and outcome say it recovered), what the scheduler cut short
        # (pruned: KILLED) and what failed (stopped by the health monitor, like an error: FAILED).
        ran_to_end = end.outcome == L.COMPLETED or end.outcome.startswith(L.RECOVERED)
        status = RunStatus.FINISHED if ran_to_end else RunStatus.FAILED if L.is_stopped(end.outcome) else RunStatus.KILLED
        self._end(trial, tags, status)

    def _end(self, trial: _TrialView, tags: dict[str, str], status: int) -> None:
        run_id = self._run_id(trial)
        note = _description(trial.trial_id, tags[L.OUTCOME], trial.last_result, self._recovery.get(trial.trial_id))
        tags = {**tags, L.DESCRIPTION: note}
        if trial.last_result.get(K.HEALTH_MESSAGE):
            tags[L.HEALTH_MESSAGE] = str(trial.last_result[K.HEALTH_MESSAGE])[:_MAX_TAG_CHARS]
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.update_run(run_id, name=_run_name(trial.trial_id, tags[L.OUTCOME], tags.get(L.PRUNED_AT)))
        self.client.set_terminated(run_id, RunStatus.to_string(status), end_time=trial.at_ms)
        self._ended.add(trial.trial_id)

    def _artifacts(self, trial: _TrialView) -> None:
        """The ended trial's learning curves (from its run's metric history), its last sample
        detections and, after a recovery, its effective config and recovery events (written by the
        trainable beside its checkpoint)."""
        run_id = self._run_id(trial)
        history = {}
        for key in TRIAL_METRICS:
            points = [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]
            if key == self.space.metric:
                points = L.measured(points, self.space.mode)
            if points:
                history[key] = points
        if history:
            figure = plots.learning_curves(history, title=f"trial {trial.trial_id} ({self.space.name})")
            self.client.log_figure(run_id, figure, L.CURVES_ARTIFACT)
        if trial.checkpoint is not None:
            from model.samples import DETECTIONS_FILE  # here: it imports torch, which the callback needs nowhere else

            with trial.checkpoint.as_directory() as directory:
                # A recovered trial's effective config and events (hpo.trainable.save_recovery_files) too.
                for name in (DETECTIONS_FILE, L.EFFECTIVE_CONFIG_ARTIFACT, L.RECOVERIES_ARTIFACT):
                    if (Path(directory) / name).is_file():
                        self.client.log_artifact(run_id, str(Path(directory) / name))

    def _run_id(self, trial: _TrialView) -> str:
        """The trial's child run: cached, else found by tags, else created; with its params and config
        (a run found without them was created by a write whose next call failed)."""
        trial_id = trial.trial_id
        if trial_id in self._runs:
            return self._runs[trial_id]
        found = search_runs(self.client, [self._experiment()], tag_filter({L.SEARCH_ID: self.search_id, L.TRIAL_ID: trial_id}))
        if found:
            run_id: str = found[0].info.run_id
            if not found[0].data.params:
                self._describe(run_id, trial)
            self._last_step[trial_id] = self._logged_until(run_id)
        else:
            run_id = self._create(trial)
            self._last_step[trial_id] = (0, -1, 0)
        self._runs[trial_id] = run_id
        return run_id

    def _experiment(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self.client.get_run(self.parent_run_id).info.experiment_id
        return self._experiment_id

    def _create(self, trial: _TrialView) -> str:
        tags = {
            L.PARENT_RUN_ID: self.parent_run_id,
            L.ROLE: L.TRIAL,
            L.SEARCH_ID: self.search_id,
            L.TRIAL_ID: trial.trial_id,
            L.OUTCOME: L.RUNNING,
            L.DIAGNOSIS: L.HEALTHY,
        }
        run = self.client.create_run(
            self._experiment(), start_time=trial.at_ms, tags=tags, run_name=_run_name(trial.trial_id, L.RUNNING)
        )
        self._describe(run.info.run_id, trial)
        return cast(str, run.info.run_id)

    def _describe(self, run_id: str, trial: _TrialView) -> None:
        """The trial's params (the sampled values) and its full config as an artifact."""
        sampled = dict(trial.config)
        params = [Param(k, str(v)) for k, v in sampled.items()]
        for start in range(0, len(params), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=params[start : start + _MAX_PARAMS_PER_BATCH])
        try:
            cfg = self.space.trial_config({k: v for k, v in sampled.items() if k in self.space.params})
        except ValueError as exc:
            _LOG.warning("no %s for trial %s: %s", L.TRIAL_CONFIG_ARTIFACT, trial.trial_id, exc)
        else:
            text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
            self.client.log_text(run_id, text, L.TRIAL_CONFIG_ARTIFACT)

    def _logged_until(self, run_id: str) -> tuple[int, int, int]:
        """(recoveries, epoch, validated) of the last report an existing child run holds."""

        def last(key: str) -> Metric | None:
            return max(self.client.get_metric_history(run_id, key), key=lambda m: (m.timestamp, m.step), default=None)

        recoveries, epoch, images = last(K.HEALTH_RECOVERIES), last(K.HEALTH_STOP), last(K.VAL_NUM_IMAGES)
        validated = images is not None and epoch is not None and images.step == epoch.step
        return (int(recoveries.value) if recoveries else 0, epoch.step if epoch else -1, int(validated))


# -- helpers ---------------------------------------------------------------------------------------


def stored_results(result: Result) -> list[dict[str, Any]]:
    """Every result a trial reported, in order, as Tune keeps them (``result.json`` in the trial's
    folder in storage, appended by each run of the trial); the last one alone when that file
    cannot be read. A line torn by a crash is skipped."""
    try:
        with result.filesystem.open_input_stream(f"{result.path}/result.json") as f:
            text = f.read().decode("utf-8")
    except (FileNotFoundError, OSError):
        return [dict(result.metrics)] if result.metrics else []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _position(result: Mapping[str, Any]) -> tuple[int, int, int]:
    """(recoveries, epoch, validated) of a report: a later position is a new report to log."""
    recoveries = int(result[K.HEALTH_RECOVERIES]) if is_number(result.get(K.HEALTH_RECOVERIES)) else 0
    return (recoveries, int(result[K.EPOCH]), int(result.get(K.VAL_NUM_IMAGES) != 0))


def _row_ms(row: Mapping[str, Any]) -> int:
    """When Tune received a stored result (its ``timestamp``, s), in ms."""
    return int(float(row["timestamp"]) * 1000) if is_number(row.get("timestamp")) else int(time.time() * 1000)


def _checkpoint_uri(checkpoint: Checkpoint | None) -> str | None:
    """Where a checkpoint lives, as a path or a URI that ``tune.Checkpoint`` opens again."""
    if checkpoint is None:
        return None
    scheme = cast("pafs.FileSystem", checkpoint.filesystem).type_name  # a Checkpoint with a path has one (Ray types it Optional)
    return checkpoint.path if scheme == "local" else f"{'gs' if scheme == 'gcs' else scheme}://{checkpoint.path}"


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


def _run_name(trial_id: str, outcome: str, pruned_at: str | None = None) -> str:
    """A child run's name in the runs table: the trial and how it ended (MLflow's statuses cannot
    tell a pruned trial from a stopped one)."""
    return f"{trial_id} {outcome}" + (f"@{pruned_at}" if pruned_at else "")


def _description(trial_id: str, outcome: str, last: Mapping[str, Any], recovery: str | None = None) -> str:
    """A child run's description: the outcome, where it happened, the health monitor's evidence and
    the latest recovery (what, from which snapshot, which change)."""
    epoch, step = last.get(K.EPOCH), last.get(K.STEP)
    where = f" after epoch {int(epoch)} (step {int(step)})" if is_number(epoch) and is_number(step) else ""
    return run_files.run_description(
        f"Trial {trial_id}: {outcome}{where}.", str(last.get(K.HEALTH_MESSAGE) or ""), recovery or ""
    )


def _experiment_id(client: MlflowClient, tracking_uri: str, name: str) -> str:
    """The id of experiment ``name``, created when missing (restored when deleted).

    It gets ``mlflow.experimentKind=custom_model_development``, the tag that makes MLflow 3's UI
    open it on its runs table instead of its GenAI view, unless it already has a kind: a value
    someone chose (the UI's own selector writes this tag) is theirs.
    """
    kind = {L.EXPERIMENT_KIND: L.MODEL_TRAINING}
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=_artifact_location(tracking_uri), tags=kind)
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    if L.EXPERIMENT_KIND not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, L.EXPERIMENT_KIND, L.MODEL_TRAINING)
    return experiment.experiment_id


def share_trials_view(client: MlflowClient, experiment_id: str, space: SearchSpace) -> None:
    """Write the experiment's shared view ``L.TRIALS_VIEW`` (opened by :func:`hpo.layout.trials_view_url`):
    the trials listed flat (a URL cannot expand the parent run), best ``space.metric`` first, with
    their outcome, that metric and the sampled params as columns, sized to fit 1600 px."""
    metric = f"metrics.`{space.metric}`"
    columns = [f"tags.`{L.OUTCOME}`", metric, *(f"params.`{key}`" for key in sorted(space.params))]
    state = {
        "searchFilter": f"tags.`{L.ROLE}` = '{L.TRIAL}'",
        "orderByKey": metric,
        "orderByAsc": space.mode == "min",
        "selectedColumns": columns,
        "columnOrder": columns,
        "columnWidths": {column: 105 for column in columns} | {columns[0]: 140},
    }
    client.set_experiment_tag(experiment_id, L.SHARED_VIEW_PREFIX + L.TRIALS_VIEW, json.dumps(state))


def _artifact_location(tracking_uri: str) -> str | None:
    """For a sqlite store, ``mlruns/`` next to the database file (MLflow's own default is the
    working directory's ``mlruns/``, which scatters artifacts wherever a search happens to run)."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "sqlite":
        return None
    path = unquote(parsed.path)
    if path in ("", "/", "/:memory:"):
        return None
    # sqlite:///rel.db -> "/rel.db" (relative); sqlite:////abs.db -> "//abs.db" (absolute).
    db = Path(path[1:])
    return (db.expanduser().resolve().parent / "mlruns").as_uri()


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
