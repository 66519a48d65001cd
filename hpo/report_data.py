"""A finished search read back from MLflow (:mod:`hpo.layout`) into plain data for the report.

:func:`load_search` reads the parent run (the newest, or the one of a search id), its
``search_space.yaml`` and every child run's params, outcome and diagnosis tags and metric
histories; :class:`SearchRecord` answers the questions the report asks of them (the best trials,
the sampled params, their scales and ranges). A TPE search's Optuna study is read from the storage
the parent names (``hpo.optuna_storage``, :class:`StoredStudy`); a search from before the study
was stored has none, and the report works from the runs alone.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import yaml
from mlflow import MlflowClient

from hpo import layout as L
from hpo import plots
from hpo.runs import SearchLookupError, find_parent, trial_outcomes
from hpo.space import GridParam, IntParam, LogUniformParam, SearchSpace, SearchSpaceError, UniformParam, space_from_dict
from hpo.values import is_finite

__all__ = [
    "FAILURE_DIAGNOSES",
    "ReportError",
    "SearchRecord",
    "StoredStudy",
    "TrialRecord",
    "load_search",
    "load_study",
    "spans_decades",
]

#: Diagnoses that count as a failed trial even when it was not stopped for them.
FAILURE_DIAGNOSES = ("diverged", "background-collapse", "stalled", "no-positives")


class ReportError(RuntimeError):
    """There is nothing to report; the message says what is missing."""


@dataclass(frozen=True)
class TrialRecord:
    """One trial as MLflow holds it."""

    trial_id: str
    run_id: str
    outcome: str
    """``completed``, ``recovered:<diagnosis>``, ``pruned``, ``stopped:<diagnosis>``, ``error``,
    ``interrupted`` or ``running``."""
    diagnosis: str
    params: dict[str, Any]
    history: dict[str, list[tuple[int, float]]]
    """``{metric: [(epoch, value), ...]}``, the search metric's penalty values left out."""
    value: float | None
    """The last real value of the search metric (``None``: none logged, e.g. stopped at epoch 1);
    a recovered trial's is what it measured with its interventions applied (Optuna had the penalty)."""
    message: str = ""
    """The health monitor's diagnosis with its evidence at the trial's last report (``""``: none)."""

    @property
    def category(self) -> str:
        return plots.trial_category(self.outcome, self.diagnosis)

    @property
    def epochs(self) -> int:
        return max((s for points in self.history.values() for s, _ in points), default=0)

    @property
    def recovered(self) -> bool:
        """Rolled back from a failure and fixed (``health.on_failure: recover``), then ran to its end."""
        return L.is_recovered(self.outcome)

    @property
    def recovered_from(self) -> str | None:
        """The diagnosis a recovered trial recovered from (its latest recovery's); ``None`` otherwise."""
        return self.outcome.removeprefix(L.RECOVERED) if self.recovered else None

    @property
    def failed(self) -> bool:
        """Its sampled configuration failed: stopped, recovered from a failure (what Optuna was
        told, too), or diagnosed one of :data:`FAILURE_DIAGNOSES`."""
        return L.is_stopped(self.outcome) or self.recovered or self.diagnosis in FAILURE_DIAGNOSES

    @property
    def exportable(self) -> bool:
        """What ``hpo/export.py`` may export: completed healthy, or recovered and then healthy at its
        end (exported with its effective config)."""
        return self.category == L.HEALTHY or (self.recovered and self.diagnosis == L.HEALTHY)


@dataclass(frozen=True)
class StoredStudy:
    """The search's Optuna study as its storage holds it: what Optuna sampled and was told."""

    storage: str
    """The storage's URL (``sqlite:///...``): ``optuna-dashboard <it>`` opens it."""
    name: str
    trials: dict[str, Any]
    """``{Tune trial id: optuna.trial.FrozenTrial}`` (the trial's ``hpo.trial_id`` user attribute)."""
    states: dict[str, int] = field(default_factory=dict)
    """Optuna's trials by state (``COMPLETE``, ``PRUNED``, ``FAIL``, ...), all of them."""

    def distributions(self) -> dict[str, Any]:
        """The sampled params' distributions, as Optuna sampled them."""
        out: dict[str, Any] = {}
        for trial in self.trials.values():
            out.update(trial.distributions)
        return out


@dataclass(frozen=True)
class SearchRecord:
    """A search read back from MLflow."""

    experiment: str
    search_id: str
    parent_run_id: str
    status: str
    """The parent's ``hpo.status`` (``finished``, ``interrupted``) or ``running``."""
    metric: str
    mode: Literal["max", "min"]
    space: SearchSpace | None
    """``None`` when the parent's ``search_space.yaml`` is missing or no longer validates."""
    space_note: str
    trials: list[TrialRecord]
    study: StoredStudy | None = None
    """The Optuna study from its storage; ``None``: a grid, a search from before it was stored, or
    a storage not readable here (:attr:`study_note` says which)."""
    study_note: str = ""

    def ranked(self) -> list[TrialRecord]:
        """The trials the export chooses from (:attr:`TrialRecord.exportable`: completed healthy, or
        recovered and healthy at the end) with a value of the metric, best first; on a tie a
        completed trial before a recovered one, as the export ranks them."""
        sign = 1.0 if self.mode == "max" else -1.0
        healthy = [t for t in self.trials if t.exportable and t.value is not None]
        return sorted(healthy, key=lambda t: (-sign * cast(float, t.value), t.recovered))  # value: not None (above)

    def best_point(self, trial: TrialRecord) -> tuple[int, float] | None:
        """The trial's best ``(epoch, value)`` of the search metric (the earliest of ties)."""
        points = sorted(trial.history.get(self.metric, []))
        return (max if self.mode == "max" else min)(points, key=lambda p: p[1], default=None)

    def param_keys(self) -> list[str]:
        """The sampled params: the space's, else those whose recorded values differ between trials."""
        if self.space is not None:
            return list(self.space.params)
        keys = sorted({k for t in self.trials for k in t.params})
        return [k for k in keys if len({repr(t.params.get(k)) for t in self.trials}) > 1]

    def grid_keys(self) -> list[str]:
        """The params a grid search swept (empty for other samplers or an unknown space)."""
        if self.space is None:
            return []
        return [k for k, spec in self.space.params.items() if isinstance(spec, GridParam)]

    def log_keys(self) -> set[str]:
        """Params on a log axis: log-sampled ones (a grid spanning two decades counts)."""
        if self.space is None:
            return {k for k in self.param_keys() if spans_decades([t.params.get(k) for t in self.trials])}
        return {
            key
            for key, spec in self.space.params.items()
            if isinstance(spec, LogUniformParam)
            or (isinstance(spec, IntParam) and spec.log)
            or (isinstance(spec, GridParam) and spans_decades(spec.values))
        }

    def limits(self) -> dict[str, tuple[float, float]]:
        """The sampled range of each numeric param (the atlas shows the whole space)."""
        out: dict[str, tuple[float, float]] = {}
        for key, spec in self.space.params.items() if self.space is not None else ():
            if isinstance(spec, GridParam):
                if all(is_finite(v) for v in spec.values):
                    out[key] = (min(spec.values), max(spec.values))
            elif hasattr(spec, "low"):
                ranged = cast("UniformParam | LogUniformParam | IntParam", spec)  # the params with a range
                out[key] = (ranged.low, ranged.high)
        return out


def spans_decades(values: Sequence[Any]) -> bool:
    """All numbers, more than one, positive, the largest at least 100 times the smallest."""
    numbers = [v for v in values if is_finite(v)]
    return len(numbers) == len(values) > 1 and min(numbers) > 0 and max(numbers) / min(numbers) >= 100


def load_search(tracking_uri: str, experiment: str, search_id: str | None = None) -> SearchRecord:
    """Read a search's parent run, space and trials (with their metric histories) from MLflow.

    Raises:
        ReportError: no such store, experiment or search, a parent without ``hpo.search_id``, or
            a search without trial runs.
    """
    try:
        client, _, parent = find_parent(tracking_uri, experiment, search_id)
    except SearchLookupError as exc:
        raise ReportError(str(exc)) from None
    tags = parent.data.tags
    sid = tags.get(L.SEARCH_ID)
    if not sid:
        raise ReportError(
            f"parent run {parent.info.run_id} of experiment {experiment!r} has no {L.SEARCH_ID} tag: not written by hpo/search.py"
        )
    space, space_note = _space(client, parent.info.run_id)
    metric = tags.get(L.METRIC) or (space.metric if space else None)
    # Checked just below: anything but max or min is an error.
    mode = cast("Literal['max', 'min'] | None", tags.get(L.MODE) or (space.mode if space else None))
    if not metric or mode not in ("max", "min"):
        raise ReportError(
            f"search {sid} (run {parent.info.run_id}) has no usable {L.METRIC}/{L.MODE} tags (got {metric!r}/{mode!r})"
        )

    rows = trial_outcomes(tracking_uri, sid)
    if not rows:
        raise ReportError(f"search {sid} in experiment {experiment!r} has no trial runs: nothing to report")
    trials = []
    for row in rows:
        history = {
            key: [(m.step, m.value) for m in client.get_metric_history(row["run_id"], key)] for key in sorted(row["metrics"])
        }
        if metric in history:
            history[metric] = L.measured(history[metric], mode)
        last = sorted(history.get(metric, []))
        value = last[-1][1] if last and math.isfinite(last[-1][1]) else None
        trials.append(
            TrialRecord(
                row["trial_id"], row["run_id"], row["outcome"], row["diagnosis"], row["params"], history, value, row["message"]
            )
        )
    status = tags.get(L.STATUS, L.RUNNING)
    study, study_note = load_study(tags.get(L.OPTUNA_STORAGE), tags.get(L.OPTUNA_STUDY))
    return SearchRecord(experiment, sid, parent.info.run_id, status, metric, mode, space, space_note, trials, study, study_note)


def load_study(storage: str | None, name: str | None) -> tuple[StoredStudy | None, str]:
    """The study ``name`` in the Optuna storage at ``storage`` (the parent's ``hpo.optuna_storage``
    and ``hpo.optuna_study``), and a note when it cannot be read; ``(None, "")`` without them."""
    if not storage or not name:
        return None, ""
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).is_file():
        # Opening it would create an empty database; the search ran elsewhere, or its folder moved.
        return None, f"the Optuna storage {storage} is not on this machine: the study is rebuilt from the runs"
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage)
        frozen = study.get_trials(deepcopy=False)
    except Exception as exc:  # noqa: BLE001 - a store of another schema, a server that refuses: the runs suffice
        why = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        return None, f"the Optuna study {name!r} in {storage} is not readable ({why}): the study is rebuilt from the runs"
    trials = {str(t.user_attrs[L.TRIAL_ID]): t for t in frozen if L.TRIAL_ID in t.user_attrs}
    states = dict(Counter(t.state.name for t in frozen))
    return StoredStudy(storage, name, trials, states), ""


def _space(client: MlflowClient, run_id: str) -> tuple[SearchSpace | None, str]:
    with tempfile.TemporaryDirectory(prefix="hpo-report-") as tmp:
        try:
            local = client.download_artifacts(run_id, L.SPACE_ARTIFACT, dst_path=tmp)
        except Exception as exc:  # MLflow raises different types per artifact store
            return (
                None,
                f"the parent run has no readable {L.SPACE_ARTIFACT} ({type(exc).__name__}): scales are guessed, no importances",
            )
        try:
            return space_from_dict(yaml.safe_load(Path(local).read_text()), source=L.SPACE_ARTIFACT), ""
        except (yaml.YAMLError, SearchSpaceError) as exc:
            return None, f"the parent run's {L.SPACE_ARTIFACT} does not load ({exc}): scales are guessed, no importances"
