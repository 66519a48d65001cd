"""Report of a finished search: where training worked, where and why it failed.

    python hpo/report.py --experiment NAME [--tracking-uri sqlite:///mlflow.db] [--search-id ID]
                         [--out DIR] [--top N]

Reads the MLflow layout the search writes (``hpo/tracking.py``): the parent run (tag
``hpo.role=parent``; the newest, or the one of ``--search-id``), its ``search_space.yaml``, and
every child run's params, ``hpo.outcome`` / ``hpo.diagnosis`` tags and metric histories. Writes
``report.html`` (self-contained: the figures are embedded as base64 PNGs) and the PNGs to
``--out`` and logs them to the parent run under ``report/``. The report holds the outcome counts,
the best healthy trials, learning curves (all trials overlaid, the best trial, one example of each
way of failing), the failure atlas (the sampled space projected on pairs of params, each trial
coloured by its diagnosis) and Optuna's parameter importances for the search metric and for
failure. Exit status 0 on success, 2 with a message when there is nothing to report.
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import os
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from mlflow import MlflowClient

from hpo import plots
from hpo.export import ExportError, check_store_exists, find_parent
from hpo.stages import STAGES, monitor_verdicts, read_stages
from hpo.space import GridParam, IntParam, LogUniformParam, SearchSpace, SearchSpaceError, space_from_dict
from hpo.tracking import DEFAULT_TRACKING_URI, SEARCH_ID, STATUS, trial_outcomes
from hpo.trainable import penalty

__all__ = [
    "ReportError",
    "ReportResult",
    "SearchRecord",
    "TrialRecord",
    "build_report",
    "load_search",
    "main",
    "param_importances",
    "search_distributions",
]

#: Where the report goes on the parent run.
REPORT_ARTIFACT_DIR = "report"
SPACE_ARTIFACT = "search_space.yaml"
#: Fewer trials than this in a study: no importances (a handful of points says nothing).
MIN_IMPORTANCE_TRIALS = 4
#: A sweep's per-setting figure draws at most this many settings (one row each).
MAX_SWEEP_ROWS = 30
#: Diagnoses that count as a failed trial even when it was not stopped for them.
FAILURE_DIAGNOSES = ("diverged", "background-collapse", "stalled", "no-positives")
# Outcomes that say nothing about failure: the trial did not end on its own.
_UNFINISHED = ("running", "interrupted", "error")


class ReportError(RuntimeError):
    """There is nothing to report; the message says what is missing."""


@dataclass(frozen=True)
class TrialRecord:
    """One trial as MLflow holds it."""

    trial_id: str
    run_id: str
    outcome: str
    """``completed``, ``pruned``, ``stopped:<diagnosis>``, ``error``, ``interrupted`` or ``running``."""
    diagnosis: str
    params: dict[str, Any]
    history: dict[str, list[tuple[int, float]]]
    """``{metric: [(epoch, value), ...]}``, the search metric's penalty values left out."""
    value: float | None
    """The last real value of the search metric (``None``: none logged, e.g. stopped at epoch 1)."""

    @property
    def category(self) -> str:
        return plots.trial_category(self.outcome, self.diagnosis)

    @property
    def epochs(self) -> int:
        return max((s for points in self.history.values() for s, _ in points), default=0)

    @property
    def failed(self) -> bool:
        return self.outcome.startswith("stopped:") or self.diagnosis in FAILURE_DIAGNOSES


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


@dataclass(frozen=True)
class ReportResult:
    """What :func:`build_report` wrote, and for which search."""

    html: Path
    images: list[Path]
    search: SearchRecord
    logged_to: str | None
    """The parent run id the report was logged to (``None``: not logged)."""


# -- reading a search ------------------------------------------------------------------------------


def load_search(tracking_uri: str, experiment: str, search_id: str | None = None) -> SearchRecord:
    """Read a search's parent run, space and trials (with their metric histories) from MLflow.

    Raises:
        ReportError: no such store, experiment or search, a parent without ``hpo.search_id``, or
            a search without trial runs.
    """
    try:
        check_store_exists(tracking_uri)
        client = MlflowClient(tracking_uri=tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            known = sorted(e.name for e in client.search_experiments())
            raise ReportError(
                f"no MLflow experiment {experiment!r} at {tracking_uri} (experiments there: {', '.join(known) or 'none'})"
            )
        parent = find_parent(client, exp.experiment_id, experiment, search_id)
    except ExportError as exc:
        raise ReportError(str(exc)) from None
    tags = parent.data.tags
    sid = tags.get(SEARCH_ID)
    if not sid:
        raise ReportError(
            f"parent run {parent.info.run_id} of experiment {experiment!r} has no {SEARCH_ID} tag: not written by hpo/search.py"
        )
    space, space_note = _space(client, parent.info.run_id)
    metric = tags.get("hpo.metric") or (space.metric if space else None)
    mode = tags.get("hpo.mode") or (space.mode if space else None)
    if not metric or mode not in ("max", "min"):
        raise ReportError(
            f"search {sid} (run {parent.info.run_id}) has no usable hpo.metric/hpo.mode tags (got {metric!r}/{mode!r})"
        )

    rows = trial_outcomes(tracking_uri, sid)
    if not rows:
        raise ReportError(f"search {sid} in experiment {experiment!r} has no trial runs: nothing to report")
    worst = penalty(mode)  # type: ignore[arg-type]
    trials = []
    for row in rows:
        history = {
            key: [(m.step, m.value) for m in client.get_metric_history(row["run_id"], key)] for key in sorted(row["metrics"])
        }
        # A stopped trial reports the penalty as its metric: the search's stand-in, not a measurement.
        if metric in history:
            history[metric] = [(s, v) for s, v in history[metric] if v != worst]
        last = sorted(history.get(metric, []))
        value = last[-1][1] if last and math.isfinite(last[-1][1]) else None
        trials.append(
            TrialRecord(row["trial_id"], row["run_id"], row["outcome"], row["diagnosis"], row["params"], history, value)
        )
    status = tags.get(STATUS, "running")
    return SearchRecord(experiment, sid, parent.info.run_id, status, metric, mode, space, space_note, trials)  # type: ignore[arg-type]


def _space(client: MlflowClient, run_id: str) -> tuple[SearchSpace | None, str]:
    with tempfile.TemporaryDirectory(prefix="hpo-report-") as tmp:
        try:
            local = client.download_artifacts(run_id, SPACE_ARTIFACT, dst_path=tmp)
        except Exception as exc:  # MLflow raises different types per artifact store
            return (
                None,
                f"the parent run has no readable {SPACE_ARTIFACT} ({type(exc).__name__}): scales are guessed, no importances",
            )
        try:
            return space_from_dict(yaml.safe_load(Path(local).read_text()), source=SPACE_ARTIFACT), ""
        except (yaml.YAMLError, SearchSpaceError) as exc:
            return None, f"the parent run's {SPACE_ARTIFACT} does not load ({exc}): scales are guessed, no importances"


# -- importances -----------------------------------------------------------------------------------


def search_distributions(space: SearchSpace) -> dict[str, Any]:
    """Optuna distributions of the space's params; a grid param becomes the range of its values
    (log-scaled when they span two decades or more), or a categorical for text values."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    out: dict[str, Any] = {}
    for key, spec in space.params.items():
        if not isinstance(spec, GridParam):
            out[key] = spec.to_optuna()
        elif all(_is_number(v) for v in spec.values):
            low, high = min(spec.values), max(spec.values)
            out[key] = (
                FloatDistribution(low, high, log=_spans_decades(spec.values)) if low < high else CategoricalDistribution([low])
            )
        else:
            out[key] = CategoricalDistribution(
                [v if v is None or isinstance(v, (bool, int, float, str)) else str(v) for v in spec.values]
            )
    return out


def param_importances(
    trials: Sequence[TrialRecord],
    distributions: Mapping[str, Any],
    objective: Callable[[TrialRecord], float | None],
    direction: Literal["maximize", "minimize"],
    binary: bool = False,
) -> tuple[dict[str, float] | None, str]:
    """Optuna's parameter importances of ``objective`` over ``trials``; ``(None, why)`` when there
    is nothing to learn from (too few trials, a constant objective, a single parameter).

    The study is built in memory from the recorded params (``optuna.trial.create_trial``); trials
    whose objective is ``None`` or whose params do not fit ``distributions`` are left out. The
    evaluator is Optuna's default, PED-ANOVA: the importance of each param for reaching the top
    quantile of the objective. For a ``binary`` objective (failure: 1, else 0) the top quantile is
    exactly the trials with 1; otherwise it is the top 5 trials or 10 %, whichever is more (at most
    half), as PED-ANOVA wants at least 5 trials in it.
    """
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator

    points = []
    misfits = 0
    for trial in trials:
        value = objective(trial)
        if value is None or not math.isfinite(value):
            continue
        params = _fit(trial.params, distributions)
        if params is None:
            misfits += 1
            continue
        points.append((params, float(value)))
    skipped = f" ({misfits} trials left out: their params lie outside the space)" if misfits else ""
    if len(points) < MIN_IMPORTANCE_TRIALS:
        return None, f"too few trials to rank parameters: {len(points)} (at least {MIN_IMPORTANCE_TRIALS}){skipped}"
    values = [v for _, v in points]
    if len(set(values)) == 1:
        return None, f"the objective is the same ({values[0]:g}) for all {len(points)} trials: nothing separates them{skipped}"
    varied = [k for k, d in distributions.items() if not d.single()]
    if len(varied) < 2:
        return (
            None,
            f"only one sampled parameter ({', '.join(varied) or 'none'}): its importance is 1 by definition; see the atlas",
        )

    if binary:
        top = sum(v == (1 if direction == "maximize" else 0) for v in values)
        quantile = top / len(values)
        note = f"{len(points)} trials, {top} of them in the top group (objective {1 if direction == 'maximize' else 0})"
    else:
        quantile = min(0.5, max(0.1, 5 / len(points)))
        top = math.ceil(quantile * len(points))
        note = f"{len(points)} trials, the top {top} by the objective as the top group"
    if top < 5:
        note += "; with fewer than 5 trials in the top group the ranking is rough"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction=direction)
        study.add_trials(
            [optuna.trial.create_trial(params=p, distributions={k: distributions[k] for k in p}, value=v) for p, v in points]
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "importances will be equal" and the like: the note says so
            importances = optuna.importance.get_param_importances(
                study, evaluator=PedAnovaImportanceEvaluator(target_quantile=quantile)
            )
    finally:
        optuna.logging.set_verbosity(verbosity)
    return dict(importances), note + skipped


def _fit(params: Mapping[str, Any], distributions: Mapping[str, Any]) -> dict[str, Any] | None:
    """The trial's params in the types the distributions take, or ``None`` if one does not fit."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    out = {}
    for key, dist in distributions.items():
        if key not in params:
            return None
        value = params[key]
        if isinstance(dist, CategoricalDistribution):
            match = [c for c in dist.choices if c == value and isinstance(c, bool) == isinstance(value, bool)]
            if not match:
                return None
            value = match[0]
        elif not _is_number(value):
            return None
        elif isinstance(dist, IntDistribution):
            if value != int(value):
                return None
            value = int(value)
        else:
            value = float(value)
        try:
            if not dist._contains(dist.to_internal_repr(value)):
                return None
        except ValueError:
            return None
        out[key] = value
    return out


# -- the report ------------------------------------------------------------------------------------


def build_report(
    tracking_uri: str,
    experiment: str,
    out: str | Path | None = None,
    search_id: str | None = None,
    top: int = 5,
    log_to_parent: bool = True,
) -> ReportResult:
    """Write ``report.html`` and its PNGs to ``out`` and log them to the parent run.

    Args:
        tracking_uri: MLflow tracking URI (a ``sqlite:///`` file must already exist).
        experiment: the search's MLflow experiment name.
        out: the report's folder; ``None`` = ``reports/<experiment>-<search id[:8]>``.
        search_id: the search's ``hpo.search_id``; ``None`` = the newest search of ``experiment``.
        top: how many of the best healthy trials to list.
        log_to_parent: log the files to the parent run under ``report/``.

    Raises:
        ReportError: see :func:`load_search`.
    """
    search = load_search(tracking_uri, experiment, search_id)
    out = Path(out) if out is not None else Path("reports") / f"{experiment}-{search.search_id[:8]}"
    out.mkdir(parents=True, exist_ok=True)
    figures = _Figures(out)
    sections = [
        _outcomes_section(search),
        _best_section(search, top),
        _curves_section(search, figures),
        *([_sweep_section(search, figures)] if _grid_keys(search) else []),
        _atlas_section(search, figures),
        _importance_section(search, figures),
        _trials_section(search),
    ]
    page = out / "report.html"
    page.write_text(_page(search, sections), encoding="utf-8")
    logged = None
    if log_to_parent:
        client = MlflowClient(tracking_uri=tracking_uri)
        for path in [page, *figures.paths]:
            client.log_artifact(search.parent_run_id, str(path), REPORT_ARTIFACT_DIR)
        logged = search.parent_run_id
    return ReportResult(page, figures.paths, search, logged)


class _Figures:
    """Saves each figure as a PNG in the report's folder and returns its ``<img>`` tag."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.paths: list[Path] = []

    def img(self, fig: Any, name: str, alt: str) -> str:
        data = plots.png_bytes(fig)
        path = self.folder / f"{name}.png"
        path.write_bytes(data)
        self.paths.append(path)
        return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _outcomes_section(search: SearchRecord) -> str:
    groups: dict[str, list[str]] = {}
    for t in search.trials:
        groups.setdefault(t.category, []).append(t.trial_id)
    order = plots.category_order(groups)
    rows = [
        [
            f'<span class="dot" style="background:{plots.category_color(c)}"></span>{_e(c)}',
            str(len(groups[c])),
            _e(", ".join(groups[c])),
        ]
        for c in order
    ]
    failed = sum(t.failed for t in search.trials)
    text = (
        f"<p>{len(search.trials)} trials; {failed} failed (stopped by the health monitor or diagnosed "
        f"{', '.join(FAILURE_DIAGNOSES)}). <i>healthy</i> = completed every epoch with no diagnosis; "
        "<i>completed:&lt;diagnosis&gt;</i> = completed with a warning; <i>pruned</i> = stopped early by the scheduler.</p>"
    )
    return _section("outcomes", "Outcomes", text + _table(["outcome", "trials", "trial ids"], rows, raw=True))


def _best_section(search: SearchRecord, top: int) -> str:
    best = _ranked(search)[:top]
    if not best:
        return _section(
            "best-trials", "Best trials", "<p class=note>No trial completed healthy with a value of the search metric.</p>"
        )
    keys = _param_keys(search)
    rows = [
        [str(i + 1), t.trial_id, _num(t.value), str(t.epochs), *(_num(t.params.get(k)) for k in keys)] for i, t in enumerate(best)
    ]
    text = f"<p>The {len(best)} best of the trials that completed healthy, by the last {_e(search.metric)} ({search.mode}).</p>"
    return _section("best-trials", "Best trials", text + _table(["rank", "trial", search.metric, "epochs", *keys], rows))


def _curves_section(search: SearchRecord, figures: _Figures) -> str:
    histories = {t.trial_id: t.history for t in search.trials}
    categories = {t.trial_id: t.category for t in search.trials}
    ranked = _ranked(search)
    best = ranked[0] if ranked else None
    keys = list(dict.fromkeys([*plots.OVERLAY_KEYS[:3], search.metric, *plots.OVERLAY_KEYS[3:]]))
    parts = []
    try:
        fig = plots.overlay_curves(
            histories, categories, keys, highlight=best.trial_id if best else None, title="All trials, coloured by outcome"
        )
        parts.append(figures.img(fig, "curves_all", "learning curves of all trials"))
    except ValueError as exc:
        parts.append(f"<p class=note>No curves to overlay: {_e(str(exc))}.</p>")
    examples = ([best] if best else []) + _failure_examples(search)
    for t in examples:
        label = "best trial" if t is best else f"example of {t.category}"
        try:
            fig = plots.learning_curves(t.history, title=f"{label}: {t.trial_id} ({t.outcome}, diagnosis {t.diagnosis})")
        except ValueError:
            parts.append(f"<p class=note>{_e(label)} {_e(t.trial_id)}: no metrics logged.</p>")
            continue
        name = "curves_best" if t is best else f"curves_{t.category.replace(':', '_')}"
        parts.append(
            f"<h3>{_e(label)}: {_e(t.trial_id)}</h3>" + figures.img(fig, name, f"learning curves of {label} {t.trial_id}")
        )
    if best is None:
        parts.insert(1, "<p class=note>No healthy completed trial: no best trial to show.</p>")
    return _section("learning-curves", "Learning curves", "\n".join(parts))


def _sweep_section(search: SearchRecord, figures: _Figures) -> str:
    """A grid search (the seed study's sweep) setting by setting: curves, the study's stages, verdicts."""
    keys = _grid_keys(search)
    trials = sorted(search.trials, key=lambda t: tuple(_sort_key(t.params.get(k)) for k in keys))
    settings = [", ".join(f"{k.rsplit('.', 1)[-1]}={_num(t.params.get(k))}" for k in keys) for t in trials]
    stages = {t.trial_id: read_stages(t.history) for t in trials}
    verdicts = {t.trial_id: monitor_verdicts(t.history) for t in trials}
    best = {t.trial_id: _best_point(t, search) for t in trials}
    parts = [
        "<p>Each setting of the grid, in grid order. Shaded behind the curves, the seed study's stages read from the "
        "curves after the run (<code>hpo/stages.py</code>, the health monitor's thresholds): early <b>avoidance</b> "
        "(after the random start nothing passes the score threshold; a healthy run's AP keeps rising meanwhile, a "
        "failing one stays at the collapse level), mid-stage <b>fp-growth</b> (false positives per image rising at "
        "consecutive evaluations) and late <b>overfitting</b> (AP well below its best while the training loss falls); "
        "dashed lines mark the first epoch of each health-monitor diagnosis.</p>"
    ]
    rows = []
    for t, setting in zip(trials, settings):
        top = best[t.trial_id]
        cells = [setting, t.outcome, str(t.epochs), f"{_num(top[1])} (epoch {top[0]})" if top else "–", _num(t.value)]
        for name in STAGES:
            cells.append("; ".join(f"epochs {s.span}: {s.detail}" for s in stages[t.trial_id] if s.name == name) or "–")
        first: dict[str, int] = {}
        for epoch, diagnosis in verdicts[t.trial_id]:
            first.setdefault(diagnosis, epoch)
        cells.append(", ".join(f"{d} (epoch {e})" for d, e in first.items()) or "healthy")
        rows.append(cells)
    metric = search.metric
    parts.append(_table(["setting", "outcome", "epochs", f"best {metric}", f"last {metric}", *STAGES, "monitor"], rows))
    ranked = sorted(((t.value, s) for t, s in zip(trials, settings) if t.value is not None), reverse=search.mode == "max")
    if len(ranked) > 1:
        parts.append(f"<p>Last {_e(metric)}: best {_e(ranked[0][1])} ({_num(ranked[0][0])}), "
                     f"worst {_e(ranked[-1][1])} ({_num(ranked[-1][0])}).</p>")  # fmt: skip
    if len(keys) == 1 and all(_is_number(t.params.get(keys[0])) for t in trials):
        points = [(float(t.params[keys[0]]), (best[t.trial_id] or (0, None))[1], t.value, t.category) for t in trials]
        fig = plots.sweep_summary(keys[0], points, log=keys[0] in _log_keys(search), metric=metric)
        parts.append(figures.img(fig, "sweep_summary", f"best and last {metric} per setting"))
    shown = trials[:MAX_SWEEP_ROWS]
    if len(trials) > len(shown):
        parts.append(f"<p class=note>Curves of the first {len(shown)} of {len(trials)} settings (grid order).</p>")
    curves = [
        plots.SettingRow(setting, t.category, t.history, [(s.name, s.first, s.last) for s in stages[t.trial_id]], verdicts[t.trial_id])
        for t, setting in zip(shown, settings)
    ]
    try:
        fig = plots.setting_curves(curves, title="The sweep, setting by setting")
        parts.append(figures.img(fig, "sweep_curves", "learning curves of every setting"))
    except ValueError as exc:
        parts.append(f"<p class=note>No curves: {_e(str(exc))}.</p>")
    return _section("sweep", "The sweep, setting by setting", "\n".join(parts))


def _best_point(t: TrialRecord, search: SearchRecord) -> tuple[int, float] | None:
    """The trial's best ``(epoch, value)`` of the search metric (the earliest of ties)."""
    points = sorted(t.history.get(search.metric, []))
    return (max if search.mode == "max" else min)(points, key=lambda p: p[1], default=None)


def _grid_keys(search: SearchRecord) -> list[str]:
    """The params a grid search swept (empty for other samplers or an unknown space)."""
    if search.space is None:
        return []
    return [k for k, spec in search.space.params.items() if isinstance(spec, GridParam)]


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if _is_number(value) else (1, str(value))


def _failure_examples(search: SearchRecord) -> list[TrialRecord]:
    """The longest-running trial of each category other than healthy (pruned excepted): the most to see."""
    out: dict[str, TrialRecord] = {}
    for t in search.trials:
        if t.category in ("healthy", "pruned", "running", "interrupted"):
            continue
        if t.category not in out or t.epochs > out[t.category].epochs:
            out[t.category] = t
    return [out[c] for c in plots.category_order(out)]


def _atlas_section(search: SearchRecord, figures: _Figures) -> str:
    sampled = _param_keys(search)
    pairs = plots.atlas_pairs(sampled, search.metric)
    if not pairs:
        return _section("failure-atlas", "Failure atlas", "<p class=note>No sampled parameters: no atlas.</p>")
    points = [plots.AtlasPoint(t.trial_id, t.category, {**t.params, search.metric: t.value}) for t in search.trials]
    title = "Failure atlas: each trial at its sampled params, coloured by outcome"
    fig = plots.failure_atlas(points, pairs, log_axes=_log_keys(search), limits=_limits(search), title=title)
    text = (
        f"<p>Views: {_e('; '.join(f'{x} × {y}' for x, y in pairs))}. Hollow markers on an edge: trials without a value "
        f"there (a trial stopped before its first real {_e(search.metric)}). Log axes for log-sampled parameters.</p>"
    )
    return _section("failure-atlas", "Failure atlas", text + figures.img(fig, "atlas", "failure atlas"))


def _importance_section(search: SearchRecord, figures: _Figures) -> str:
    if search.space is None:
        return _section("importances", "Parameter importances", f"<p class=note>Not computed: {_e(search.space_note)}.</p>")
    distributions = search_distributions(search.space)
    parts = [
        "<p>Optuna's parameter importances (<code>optuna.importance.get_param_importances</code>, PED-ANOVA: how much "
        "each parameter decides whether a trial reaches the top of the objective), on an in-memory study built from "
        "the trials' recorded params and the space's distributions.</p>"
    ]
    # The metric over trials that were not stopped: what decides how good a working trial gets.
    direction = "maximize" if search.mode == "max" else "minimize"
    working = param_importances(search.trials, distributions, _working_value, direction)  # type: ignore[arg-type]
    parts += _importance_part(
        figures, working, search.metric, "importance_metric", "#1f77b4",
        f"the search metric, {search.metric}", "trials not stopped (completed or pruned), at their last value",
    )  # fmt: skip
    # Failure over every finished trial: what decides whether training works at all.
    failure = param_importances(search.trials, distributions, _failure_value, "maximize", binary=True)
    parts += _importance_part(
        figures, failure, "failure", "importance_failure", "#d62728",
        f"failure (1: stopped, or diagnosed {'/'.join(FAILURE_DIAGNOSES)}; 0: otherwise)",
        "every trial that ended on its own (not error, interrupted or running)",
    )  # fmt: skip
    return _section("importances", "Parameter importances", "\n".join(parts))


def _working_value(t: TrialRecord) -> float | None:
    return t.value if t.outcome in ("completed", "pruned") and not t.failed else None


def _failure_value(t: TrialRecord) -> float | None:
    return None if t.outcome in _UNFINISHED else float(t.failed)


def _importance_part(
    figures: _Figures, result: tuple[dict[str, float] | None, str], short: str, name: str, color: str, what: str, who: str
) -> list[str]:
    importances, note = result
    head = f"<h3>For {_e(what)}</h3>"
    if importances is None:
        return [head, f"<p class=note>Not computed: {_e(note)}.</p>"]
    fig = plots.importance_bars(importances, title=f"importance for {short}", color=color)
    return [head, f"<p>{_e(who)}: {_e(note)}.</p>", figures.img(fig, name, f"parameter importances for {short}")]


def _trials_section(search: SearchRecord) -> str:
    keys = _param_keys(search)
    rows = [
        [t.trial_id, t.outcome, t.diagnosis, str(t.epochs), _num(t.value), *(_num(t.params.get(k)) for k in keys), t.run_id]
        for t in search.trials
    ]
    return _section(
        "trials", "All trials", _table(["trial", "outcome", "diagnosis", "epochs", search.metric, *keys, "MLflow run"], rows)
    )


# -- html ------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2} img{max-width:100%;display:block;margin:.5em 0 1.5em}
.note{color:#8a5a00} .meta td:first-child{font-weight:600}
.dot{display:inline-block;width:.8em;height:.8em;border-radius:50%;margin-right:.4em}
"""


def _page(search: SearchRecord, sections: list[str]) -> str:
    space = search.space
    meta = [
        ["experiment", search.experiment],
        ["search id", search.search_id],
        ["parent run", search.parent_run_id],
        ["status", search.status],
        ["search metric", f"{search.metric} ({search.mode})"],
    ]
    if space is not None:
        meta += [["space", space.name], ["sampler / scheduler", f"{space.sampler.type} / {space.scheduler.type}"],
                 ["budget", f"{space.budget.num_samples} samples, {space.budget.max_epochs} epochs"]]  # fmt: skip
    else:
        meta.append(["space", search.space_note])
    meta.append(["generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")])
    links = [("outcomes", "Outcomes"), ("best-trials", "Best trials"), ("learning-curves", "Learning curves"),
             ("sweep", "Sweep"), ("failure-atlas", "Failure atlas"), ("importances", "Importances"), ("trials", "All trials")]  # fmt: skip
    nav = " · ".join(f'<a href="#{i}">{t}</a>' for i, t in links if i != "sweep" or _grid_keys(search))
    return (
        f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>Search report: {_e(search.experiment)}</title>"
        f"<style>{_CSS}</style></head><body>\n<h1>Search report: {_e(search.experiment)}</h1>\n"
        f"<table class=meta>{''.join(f'<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>' for k, v in meta)}</table>\n"
        f"<p>{nav}</p>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>\n{body}\n</section>'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (the caller escaped them)."""
    cell = (lambda c: c) if raw else _e
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _e(text: Any) -> str:
    return html.escape(str(text))


# -- helpers ---------------------------------------------------------------------------------------


def _ranked(search: SearchRecord) -> list[TrialRecord]:
    """Trials that completed healthy with a value of the metric, best first."""
    sign = 1.0 if search.mode == "max" else -1.0
    healthy = [t for t in search.trials if t.category == "healthy" and t.value is not None]
    return sorted(healthy, key=lambda t: -sign * t.value)  # type: ignore[operator]


def _param_keys(search: SearchRecord) -> list[str]:
    """The sampled params: the space's, else those whose recorded values differ between trials."""
    if search.space is not None:
        return list(search.space.params)
    keys = sorted({k for t in search.trials for k in t.params})
    return [k for k in keys if len({repr(t.params.get(k)) for t in search.trials}) > 1]


def _log_keys(search: SearchRecord) -> set[str]:
    """Params on a log axis: log-sampled ones (a grid spanning two decades counts)."""
    if search.space is None:
        return {k for k in _param_keys(search) if _spans_decades([t.params.get(k) for t in search.trials])}
    out = set()
    for key, spec in search.space.params.items():
        if isinstance(spec, LogUniformParam) or (isinstance(spec, IntParam) and spec.log):
            out.add(key)
        elif isinstance(spec, GridParam) and _spans_decades(spec.values):
            out.add(key)
    return out


def _limits(search: SearchRecord) -> dict[str, tuple[float, float]]:
    """The sampled range of each numeric param (the atlas shows the whole space)."""
    out: dict[str, tuple[float, float]] = {}
    for key, spec in search.space.params.items() if search.space is not None else ():
        if isinstance(spec, GridParam):
            if all(_is_number(v) for v in spec.values):
                out[key] = (min(spec.values), max(spec.values))
        elif hasattr(spec, "low"):
            out[key] = (spec.low, spec.high)
    return out


def _spans_decades(values: Sequence[Any]) -> bool:
    numbers = [v for v in values if _is_number(v)]
    return len(numbers) == len(values) > 1 and min(numbers) > 0 and max(numbers) / min(numbers) >= 100


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python hpo/report.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", required=True, help="the search's MLflow experiment name")
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, help="MLflow tracking URI (default: %(default)s)")
    parser.add_argument("--search-id", help="the search's hpo.search_id (default: the most recent search)")
    parser.add_argument("--out", type=Path, help="the report's folder (default: reports/<experiment>-<search id>)")
    parser.add_argument("--top", type=int, default=5, help="how many best trials to list (default: %(default)s)")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small YAML: no bar
    if args.top < 1:
        parser.error(f"--top must be at least 1 (got {args.top})")
    try:
        result = build_report(args.tracking_uri, args.experiment, args.out, args.search_id, args.top, not args.no_log)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s = result.search
    counts = Counter(t.category for t in s.trials)
    print(f"report of search {s.search_id} ({len(s.trials)} trials: {', '.join(f'{c} {n}' for c, n in sorted(counts.items()))})")
    print(f"  {result.html.resolve()}  ({len(result.images)} figures embedded)")
    if result.logged_to:
        print(f"  logged to parent run {result.logged_to} under {REPORT_ARTIFACT_DIR}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
