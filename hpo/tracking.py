"""MLflow tracking of a search: one parent run per search, one child run per Tune trial.

The layout (the contract with the search entry point and the export):

* parent run, found again by the tag ``hpo.search_id`` (stable across ``--resume``): tags
  ``hpo.role=parent``, ``hpo.search_id``, ``hpo.space``, ``hpo.metric``, ``hpo.mode``; a few
  params; artifact ``search_space.yaml``; at the end ``summary.csv`` and ``hpo.status``.
* child run per trial, found again by (``hpo.search_id``, ``hpo.trial_id``) before one is created,
  so a resumed search never duplicates it: tags ``mlflow.parentRunId``, ``hpo.role=trial``,
  ``hpo.outcome`` (``running``, ``completed``, ``pruned`` + ``hpo.pruned_at_epoch``,
  ``stopped:<diagnosis>``, ``error``, ``interrupted`` until ``--resume`` goes on with it),
  ``hpo.diagnosis``; params = the sampled dotted keys;
  artifacts ``trial_config.yaml`` and, once it ended, ``learning_curves.png`` and
  ``detections.png`` (sample detections of its last epoch; an errored trial's only if its last
  checkpoint holds one, see :func:`hpo.trainable.last_chance_epochs`); the metrics of :data:`TRIAL_METRICS` per epoch (step = epoch).

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
"""

from __future__ import annotations

import csv
import io
import logging
import math
import numbers
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlparse

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from ray import tune

from hpo import plots
from hpo.space import SearchSpace
from hpo.trainable import penalty
from model.samples import DETECTIONS_FILE

if TYPE_CHECKING:
    from mlflow.entities import Run
    from ray.train import Checkpoint
    from ray.tune.experiment import Trial

__all__ = [
    "CURVES_ARTIFACT",
    "DEFAULT_TRACKING_URI",
    "TRIAL_CONFIG_ARTIFACT",
    "TRIAL_METRICS",
    "MlflowTrialCallback",
    "finish_parent_run",
    "open_parent_run",
    "trial_outcomes",
    "unfinished_trials",
]

_LOG = logging.getLogger(__name__)

#: MLflow 3.x refuses the plain file store; a sqlite file is the zero-setup default.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: The trial's full TrainConfig, on every child run (what the export reads back).
TRIAL_CONFIG_ARTIFACT = "trial_config.yaml"
#: A trial's learning curves, logged when it ends (its sample detections: ``detections.png``).
CURVES_ARTIFACT = "learning_curves.png"

#: The per-epoch metrics a child run records (keys of the trainable's ``tune_metrics`` output).
TRIAL_METRICS: tuple[str, ...] = (
    "train/loss",
    "train/loss_cls",
    "train/loss_box",
    "train/lr",
    "train/grad_norm",
    "train/pos_anchors_per_image",
    "train/images_per_s",  # training alone: the trial's throughput (packed trials share a GPU)
    "val/ap",
    "val/precision",
    "val/recall",
    "val/mean_iou",
    "val/tp",
    "val/fp",
    "val/fn",
    "val/num_images",  # with val/fp: false positives per image (the fp-surge signal)
    "val/detections_per_image",
    "val/top_score",
    "val/top_score_spread",
    "health/code",
    "health/stop",
)

# Tags of the layout.
ROLE, SEARCH_ID, TRIAL_ID = "hpo.role", "hpo.search_id", "hpo.trial_id"
OUTCOME, DIAGNOSIS, PRUNED_AT = "hpo.outcome", "hpo.diagnosis", "hpo.pruned_at_epoch"
STATUS = "hpo.status"
PARENT_RUN_ID = "mlflow.parentRunId"

_HEALTHY = "healthy"
#: The callback's MLflow writes off Tune's event loop (see the module's doc); False writes them in
#: the hooks themselves (``bench/dead_time.py --variant sync-tracking`` measures the difference).
BACKGROUND_WRITES = True
# MLflow's limits per log_batch call.
_MAX_PARAMS_PER_BATCH = 100
_MAX_TAGS_PER_BATCH = 100
_PAGE = 1000


# -- the parent run --------------------------------------------------------------------------------


def open_parent_run(tracking_uri: str, experiment: str, search_id: str, space: SearchSpace) -> str:
    """Create the search's parent run, or re-open the one tagged with ``search_id``; its run id.

    A new run gets the layout's tags, params (metric, mode, num_samples, max_epochs, scheduler,
    sampler) and the artifact ``search_space.yaml``. A re-opened one (``--resume``) is set back to
    RUNNING with ``hpo.status`` removed; its params and artifact are left as they were.

    Raises:
        mlflow.MlflowException: the tracking server or store refuses (here, unlike in the
            callback, a failure is the caller's to handle: the search has not started yet).
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = _experiment_id(client, tracking_uri, experiment)
    found = _search(client, [experiment_id], _filter({ROLE: "parent", SEARCH_ID: search_id}))
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        if STATUS in found[0].data.tags:
            client.delete_tag(run_id, STATUS)
        return run_id

    tags = {ROLE: "parent", SEARCH_ID: search_id, "hpo.space": space.name, "hpo.metric": space.metric, "hpo.mode": space.mode}
    run = client.create_run(experiment_id, tags=tags, run_name=f"{space.name}-{search_id[:8]}")
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
    client.log_text(run_id, space.to_yaml(), "search_space.yaml")
    return run_id


def finish_parent_run(
    tracking_uri: str,
    run_id: str,
    summary_rows: Sequence[Mapping[str, Any]],
    status: Literal["finished", "interrupted"],
) -> None:
    """Write ``summary.csv`` (one row per trial; columns in order of first appearance), tag
    ``hpo.status`` and end the parent run: FINISHED, or KILLED for an interrupted search.

    Raises:
        ValueError: ``status`` is neither ``finished`` nor ``interrupted``.
    """
    if status not in ("finished", "interrupted"):
        raise ValueError(f"status must be 'finished' or 'interrupted' (got {status!r})")
    client = MlflowClient(tracking_uri=tracking_uri)
    client.log_text(run_id, _csv(summary_rows), "summary.csv")
    client.set_tag(run_id, STATUS, status)
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED if status == "finished" else RunStatus.KILLED))


#: Trials the last search of each search id left unfinished (an interrupted search). Kept here, not
#: on the callback: after --resume, Tune calls a copy of the callback restored from its own state.
_UNFINISHED: dict[str, set[str]] = {}


def unfinished_trials(search_id: str) -> set[str]:
    """Ids of the trials the search's last ``Tuner.fit`` in this process left unfinished (Ctrl-C):
    started but never ended, or never started. Empty for a search that ran to its end."""
    return set(_UNFINISHED.get(search_id, ()))


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


class MlflowTrialCallback(tune.Callback):
    """Mirrors every Tune trial into a child run of the search's parent run.

    Every hook is best effort: a tracking failure is logged as a warning, never raised into Tune.
    Each result costs one ``log_batch`` call (metrics and the diagnosis tag together). A child run
    is looked up by (search id, trial id) before one is created, so a resumed search (a second
    ``Tuner`` with the same search id, or ``Tuner.restore``) continues the same runs; epochs it
    already logged are not logged again.

    The hooks only queue the work (see the module's doc); :meth:`flush` waits for it, and
    ``on_experiment_end`` flushes before it returns.

    Args:
        tracking_uri: the MLflow tracking URI (e.g. ``sqlite:///mlflow.db``).
        parent_run_id: what :func:`open_parent_run` returned.
        search_id: the search's id (the parent's ``hpo.search_id``).
        space: the search space (the trial config artifact is built from it).
        max_epochs: a trial that ends at this epoch, not stopped, is ``completed``; earlier, ``pruned``.
    """

    def __init__(self, tracking_uri: str, parent_run_id: str, search_id: str, space: SearchSpace, max_epochs: int) -> None:
        self.tracking_uri = tracking_uri
        self.parent_run_id = parent_run_id
        self.search_id = search_id
        self.space = space
        self.max_epochs = max_epochs
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        # Written by the writer thread only (read on the loop after a flush).
        self._runs: dict[str, str] = {}  # trial id -> child run id
        self._last_step: dict[str, int] = {}  # trial id -> last epoch logged
        self._ended: set[str] = set()  # trials whose run this driver ended
        self._executor: ThreadPoolExecutor | None = None  # the writer, started on first use
        self._pending: list[Future] = []

    # The callback is pickled with the Tuner's state; the client (a database engine) and the
    # writer thread are not.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_client=None, _experiment_id=None, _runs={}, _last_step={}, _ended=set(), _executor=None, _pending=[])
        return state

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    # -- Tune hooks ---------------------------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._submit("start", trial, self._start)

    def on_trial_restore(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._submit("restore", trial, self._start)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        self._submit("result", trial, self._result, dict(result))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._submit("complete", trial, self._complete)
        self._submit("artifacts", trial, self._artifacts)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._submit("error", trial, self._end, {OUTCOME: "error"}, RunStatus.FAILED)
        self._submit("artifacts", trial, self._artifacts)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.flush()
        # Also called after Ctrl-C, when Tune has just marked every running trial TERMINATED: what
        # tells the unfinished ones apart is that they never reached on_trial_complete/_error.
        unfinished = {
            t.trial_id
            for t in trials
            if (t.trial_id in self._runs and t.trial_id not in self._ended) or t.status in (t.PENDING, t.PAUSED)
        }
        _UNFINISHED[self.search_id] = unfinished
        for trial in trials:
            if trial.trial_id in unfinished and trial.trial_id in self._runs:
                # The run says so instead of staying RUNNING; --resume sets it running again.
                self._submit("end", trial, self._end, {OUTCOME: "interrupted"}, RunStatus.KILLED)
        self.flush()

    def flush(self) -> None:
        """Wait until everything the hooks queued so far is written (or has failed with a warning)."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    # -- what they do -------------------------------------------------------------------------------

    def _submit(self, hook: str, trial: Trial, fn: Any, *args: Any) -> None:
        """Run ``fn(view of trial, *args)`` in the writer thread, after everything queued before
        (or here and now, see :data:`BACKGROUND_WRITES`)."""
        try:
            view = _TrialView.of(trial)
        except Exception as exc:  # noqa: BLE001
            _LOG.warning("MLflow tracking failed on trial %s (%s): %s: %s", trial.trial_id, hook, type(exc).__name__, exc)
            return
        if not BACKGROUND_WRITES:
            self._guard(hook, view, fn, view, *args)
            return
        if self._executor is None:
            # One thread: per run, and across runs, MLflow sees the writes in the order Tune made them.
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-writer")
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._executor.submit(self._guard, hook, view, fn, view, *args))

    def _guard(self, hook: str, trial: _TrialView, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - tracking must never take the search down
            _LOG.warning("MLflow tracking failed on trial %s (%s): %s: %s", trial.trial_id, hook, type(exc).__name__, exc)

    def _start(self, trial: _TrialView) -> None:
        run_id = self._run_id(trial)
        # A trial Tune starts again (a retry, a resumed search) is running again.
        self.client.log_batch(run_id, tags=[RunTag(OUTCOME, "running")])
        self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))

    def _result(self, trial: _TrialView, result: Mapping[str, Any]) -> None:
        run_id = self._run_id(trial)
        epoch = result.get("epoch")
        if not _is_number(epoch):
            return  # not a training report (nothing to plot against)
        step = int(epoch)
        if step <= self._last_step.get(trial.trial_id, -1):
            return  # re-reported after a restore from an earlier checkpoint
        metrics = [
            Metric(key, float(result[key]), trial.at_ms, step)
            for key in TRIAL_METRICS
            if _is_number(result.get(key)) and math.isfinite(result[key])
        ]
        tags = [RunTag(DIAGNOSIS, str(result["health/diagnosis"]))] if result.get("health/diagnosis") else []
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        self._last_step[trial.trial_id] = step

    def _complete(self, trial: _TrialView) -> None:
        last = trial.last_result
        epoch = int(last["epoch"]) if _is_number(last.get("epoch")) else 0
        tags: dict[str, str]
        if last.get("health/stop") == 1:
            tags = {OUTCOME: f"stopped:{last.get('health/diagnosis') or 'unknown'}"}
            status = RunStatus.KILLED
        elif epoch >= self.max_epochs:
            tags, status = {OUTCOME: "completed"}, RunStatus.FINISHED
        else:
            tags, status = {OUTCOME: "pruned", PRUNED_AT: str(epoch)}, RunStatus.KILLED
        self._end(trial, tags, status)

    def _end(self, trial: _TrialView, tags: dict[str, str], status: int) -> None:
        run_id = self._run_id(trial)
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(run_id, RunStatus.to_string(status), end_time=trial.at_ms)
        self._ended.add(trial.trial_id)

    def _artifacts(self, trial: _TrialView) -> None:
        """The ended trial's learning curves (from its run's metric history) and its last sample
        detections (drawn by the trainable beside its checkpoint)."""
        run_id = self._run_id(trial)
        worst = penalty(self.space.mode)
        history = {}
        for key in TRIAL_METRICS:
            # The search metric of a stopped trial is the penalty: the search's stand-in, not a value.
            points = [(m.step, m.value) for m in self.client.get_metric_history(run_id, key) if key != self.space.metric or m.value != worst]
            if points:
                history[key] = points
        if history:
            figure = plots.learning_curves(history, title=f"trial {trial.trial_id} ({self.space.name})")
            self.client.log_figure(run_id, figure, CURVES_ARTIFACT)
        if trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as directory:
                picture = Path(directory) / DETECTIONS_FILE
                if picture.is_file():
                    self.client.log_artifact(run_id, str(picture))

    def _run_id(self, trial: _TrialView) -> str:
        """The trial's child run: cached, else found by tags, else created (with params and config)."""
        trial_id = trial.trial_id
        if trial_id in self._runs:
            return self._runs[trial_id]
        if self._experiment_id is None:
            self._experiment_id = self.client.get_run(self.parent_run_id).info.experiment_id
        found = _search(self.client, [self._experiment_id], _filter({SEARCH_ID: self.search_id, TRIAL_ID: trial_id}))
        if found:
            run_id = found[0].info.run_id
            self._last_step[trial_id] = self._logged_until(run_id)
        else:
            run_id = self._create(trial)
            self._last_step[trial_id] = -1
        self._runs[trial_id] = run_id
        return run_id

    def _create(self, trial: _TrialView) -> str:
        tags = {
            PARENT_RUN_ID: self.parent_run_id,
            ROLE: "trial",
            SEARCH_ID: self.search_id,
            TRIAL_ID: trial.trial_id,
            OUTCOME: "running",
            DIAGNOSIS: _HEALTHY,
        }
        run = self.client.create_run(self._experiment_id, start_time=trial.at_ms, tags=tags, run_name=trial.trial_id)
        run_id = run.info.run_id
        sampled = dict(trial.config)
        params = [Param(k, str(v)) for k, v in sampled.items()]
        for start in range(0, len(params), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=params[start : start + _MAX_PARAMS_PER_BATCH])
        try:
            cfg = self.space.trial_config({k: v for k, v in sampled.items() if k in self.space.params})
        except ValueError as exc:
            _LOG.warning("no trial_config.yaml for trial %s: %s", trial.trial_id, exc)
        else:
            text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
            self.client.log_text(run_id, text, TRIAL_CONFIG_ARTIFACT)
        return run_id

    def _logged_until(self, run_id: str) -> int:
        """The last epoch an existing child run holds (``health/stop`` is in every report)."""
        history = self.client.get_metric_history(run_id, "health/stop")
        return max((m.step for m in history), default=-1)


# -- reading a search back -------------------------------------------------------------------------


def trial_outcomes(tracking_uri: str, search_id: str) -> list[dict[str, Any]]:
    """Every child run of the search, in the order the trials started.

    Each row: ``trial_id``, ``run_id``, ``status`` (MLflow's), ``outcome``, ``diagnosis``,
    ``pruned_at_epoch`` (int or ``None``), ``params`` (``{dotted key: value}``, numbers and
    booleans parsed back from MLflow's strings) and ``metrics`` (the last value of each).
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_ids = [e.experiment_id for e in _all_experiments(client)]
    if not experiment_ids:
        return []
    runs = _search(client, experiment_ids, _filter({ROLE: "trial", SEARCH_ID: search_id}))
    rows = []
    for run in sorted(runs, key=lambda r: (r.info.start_time or 0, r.data.tags.get(TRIAL_ID, ""))):
        tags = run.data.tags
        pruned_at = tags.get(PRUNED_AT)
        rows.append(
            {
                "trial_id": tags.get(TRIAL_ID, ""),
                "run_id": run.info.run_id,
                "status": run.info.status,
                "outcome": tags.get(OUTCOME, "running"),
                "diagnosis": tags.get(DIAGNOSIS, _HEALTHY),
                "pruned_at_epoch": int(pruned_at) if pruned_at is not None else None,
                "params": {k: _parse_param(v) for k, v in sorted(run.data.params.items())},
                "metrics": dict(run.data.metrics),
            }
        )
    return rows


# -- helpers ---------------------------------------------------------------------------------------


def _experiment_id(client: MlflowClient, tracking_uri: str, name: str) -> str:
    """The id of experiment ``name``, created when missing (restored when deleted)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=_artifact_location(tracking_uri))
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


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


def _filter(tags: Mapping[str, str]) -> str:
    return " and ".join(f"tags.`{k}` = '{_quote(v)}'" for k, v in tags.items())


def _quote(value: str) -> str:
    if "'" in value:
        raise ValueError(f"a tag value used in a search may not contain a quote (got {value!r})")
    return value


def _search(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
    """Every run matching ``filter_string`` (all pages), oldest first."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string, max_results=_PAGE, order_by=["attributes.start_time ASC"], page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _all_experiments(client: MlflowClient) -> Iterable[Any]:
    token = None
    while True:
        page = client.search_experiments(max_results=_PAGE, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _parse_param(value: str) -> Any:
    """MLflow keeps params as ``str(value)``: read ints, floats, booleans and None back."""
    special = {"True": True, "False": False, "None": None}
    if value in special:
        return special[value]
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
