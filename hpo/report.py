"""Report of a finished search: where training worked, where and why it failed.

    python hpo/report.py --experiment NAME [--tracking-uri sqlite:///mlflow.db] [--search-id ID]
                         [--out DIR] [--top N]

Reads the MLflow layout the search writes (``hpo/layout.py``): the parent run (tag
``hpo.role=parent``; the newest, or the one of ``--search-id``), its ``search_space.yaml``, and
every child run's params, ``hpo.outcome`` / ``hpo.diagnosis`` tags and metric histories. Writes
``report.html`` (self-contained: the figures are embedded as base64 PNGs) and the PNGs to
``--out`` and logs them to the parent run under ``report/``. The report holds the outcome counts,
the best healthy trials (those the export chooses from: completed healthy, or recovered and then
healthy), learning curves (all trials overlaid, the best trial, one example of each way of failing
or recovering), the failure atlas (the sampled space projected on pairs of params, each trial
coloured by its diagnosis; a recovered trial a diamond in the shade of the failure it recovered
from) and Optuna's parameter importances for the search metric and for failure. Exit status 0 on
success, 2 with a message when there is nothing to report.

The parts: reading MLflow into plain data (``hpo/report_data.py``), the importances
(``hpo/importance.py``), the figures (``hpo/plots.py``) and the page, a Jinja2 template rendered
with autoescaping (``hpo/templates/report.html.j2``); this module puts them together.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from markupsafe import Markup
from mlflow import MlflowClient

from hpo import layout as L
from hpo import plots
from hpo.importance import param_importances, search_distributions
from hpo.report_data import FAILURE_DIAGNOSES, ReportError, SearchRecord, TrialRecord, load_search
from hpo.stages import STAGES, monitor_verdicts, read_stages
from hpo.values import is_finite

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

#: A sweep's per-setting figure draws at most this many settings (one row each).
MAX_SWEEP_ROWS = 30
# Outcomes that say nothing about failure: the trial did not end on its own.
_UNFINISHED = (L.RUNNING, L.INTERRUPTED, L.ERROR)


@dataclass(frozen=True)
class ReportResult:
    """What :func:`build_report` wrote, and for which search."""

    html: Path
    images: list[Path]
    search: SearchRecord
    logged_to: str | None
    """The parent run id the report was logged to (``None``: not logged)."""


@dataclass(frozen=True)
class Image:
    """A figure as the page embeds it: a base64 PNG."""

    alt: str
    data: str


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
    from jinja2 import Environment, PackageLoader, StrictUndefined

    search = load_search(tracking_uri, experiment, search_id)
    out = Path(out) if out is not None else Path("reports") / f"{experiment}-{search.search_id[:8]}"
    out.mkdir(parents=True, exist_ok=True)
    figures = _Figures(out)
    env = Environment(
        loader=PackageLoader("hpo"), autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    env.filters["breakable"] = _breakable
    page = out / "report.html"
    page.write_text(
        env.get_template("report.html.j2").render(
            search=search,
            meta=_meta(search),
            failure_diagnoses=FAILURE_DIAGNOSES,
            outcomes=_outcomes(search),
            why=_why(search),
            best=_best(search, top),
            curves=_curves(search, figures),
            sweep=_sweep(search, figures) if search.grid_keys() else None,
            atlas=_atlas(search, figures),
            importances=_importances(search, figures),
            trials=_trials(search),
        ),
        encoding="utf-8",
    )
    logged = None
    if log_to_parent:
        client = MlflowClient(tracking_uri=tracking_uri)
        for path in [page, *figures.paths]:
            client.log_artifact(search.parent_run_id, str(path), L.REPORT_ARTIFACT_DIR)
        logged = search.parent_run_id
    return ReportResult(page, figures.paths, search, logged)


class _Figures:
    """Saves each figure as a PNG in the report's folder, for the page to embed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.paths: list[Path] = []

    def add(self, fig: Any, name: str, alt: str) -> Image:
        data = plots.png_bytes(fig)
        path = self.folder / f"{name}.png"
        path.write_bytes(data)
        self.paths.append(path)
        return Image(alt, base64.b64encode(data).decode("ascii"))


# -- what each section shows (the template, hpo/templates/report.html.j2, lays it out) -------------


def _meta(search: SearchRecord) -> list[tuple[str, str]]:
    space = search.space
    meta = [
        ("experiment", search.experiment),
        ("search id", search.search_id),
        ("parent run", search.parent_run_id),
        ("status", search.status),
        ("search metric", f"{search.metric} ({search.mode})"),
    ]
    if space is not None:
        meta += [("space", space.name), ("sampler / scheduler", f"{space.sampler.type} / {space.scheduler.type}"),
                 ("budget", f"{space.budget.num_samples} samples, {space.budget.max_epochs} epochs")]  # fmt: skip
    else:
        meta.append(("space", search.space_note))
    if search.study is not None:
        states = ", ".join(f"{n} {state}" for state, n in sorted(search.study.states.items()))
        study = search.study
        meta.append(
            ("Optuna study", f"{study.name} in {study.storage} ({states}); open it with optuna-dashboard {study.storage}")
        )
    elif search.study_note:
        meta.append(("Optuna study", search.study_note))
    return [*meta, ("generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))]


def _outcomes(search: SearchRecord) -> dict[str, Any]:
    groups: dict[str, list[str]] = {}
    for t in search.trials:
        groups.setdefault(t.category, []).append(t.trial_id)
    shape = {"o": "dot", "D": "dot diamond"}  # the figures' markers, as the page's CSS classes
    return {
        "groups": [
            (c, plots.category_color(c), shape[plots.category_marker(c)], groups[c]) for c in plots.category_order(groups)
        ],
        "failed": sum(t.failed for t in search.trials),
        "recovered": sum(t.recovered for t in search.trials),
    }


def _why(search: SearchRecord) -> dict[str, Any]:
    """Each trial the health monitor stopped, recovered or warned about, with its evidence."""
    rows = [[t.trial_id, t.outcome, str(t.epochs), t.message] for t in search.trials if t.message]
    return _table(["trial", "outcome", "epochs", "the health monitor's evidence"], rows)


def _best(search: SearchRecord, top: int) -> dict[str, Any]:
    keys = search.param_keys()
    shown = search.ranked()[:top]
    # A recovered trial among them: say so in an outcome column (its params are the sampled ones,
    # which failed; the export writes its effective config).
    outcome = ["outcome"] if any(t.recovered for t in shown) else []
    rows = [
        [
            str(i + 1),
            t.trial_id,
            *([t.outcome] if outcome else []),
            _num(t.value),
            str(t.epochs),
            *(_num(t.params.get(k)) for k in keys),
        ]
        for i, t in enumerate(shown)
    ]
    return {**_table(["rank", "trial", *outcome, search.metric, "epochs", *keys], rows), "recovered": bool(outcome)}


def _curves(search: SearchRecord, figures: _Figures) -> dict[str, Any]:
    ranked = search.ranked()
    best = ranked[0] if ranked else None
    keys = list(dict.fromkeys([*plots.OVERLAY_KEYS[:3], search.metric, *plots.OVERLAY_KEYS[3:]]))
    out: dict[str, Any] = {"best": best is not None, "overlay": None, "why": "", "examples": []}
    try:
        fig = plots.overlay_curves(
            {t.trial_id: t.history for t in search.trials},
            {t.trial_id: t.category for t in search.trials},
            keys,
            highlight=best.trial_id if best else None,
            title="All trials, coloured by outcome",
        )
        out["overlay"] = figures.add(fig, "curves_all", "learning curves of all trials")
    except ValueError as exc:
        out["why"] = str(exc)
    for t in ([best] if best else []) + _failure_examples(search, best):
        label = "best trial" if t is best else f"example of {t.category}"
        try:
            fig = plots.learning_curves(t.history, title=f"{label}: {t.trial_id} ({t.outcome}, diagnosis {t.diagnosis})")
        except ValueError:
            image = None  # no metrics logged
        else:
            name = "curves_best" if t is best else f"curves_{t.category.replace(':', '_')}"
            image = figures.add(fig, name, f"learning curves of {label} {t.trial_id}")
        out["examples"].append({"label": label, "trial_id": t.trial_id, "image": image})
    return out


def _failure_examples(search: SearchRecord, best: TrialRecord | None = None) -> list[TrialRecord]:
    """The longest-running trial of each category other than healthy (pruned excepted): the most to
    see; never ``best`` (a recovered trial may be the best, shown as such)."""
    out: dict[str, TrialRecord] = {}
    for t in search.trials:
        if t.category in (L.HEALTHY, L.PRUNED, L.RUNNING, L.INTERRUPTED) or t is best:
            continue
        if t.category not in out or t.epochs > out[t.category].epochs:
            out[t.category] = t
    return [out[c] for c in plots.category_order(out)]


def _sweep(search: SearchRecord, figures: _Figures) -> dict[str, Any]:
    """A grid search (the seed study's sweep) setting by setting: curves, the study's stages, verdicts."""
    keys = search.grid_keys()
    trials = sorted(search.trials, key=lambda t: tuple(_sort_key(t.params.get(k)) for k in keys))
    settings = [", ".join(f"{k.rsplit('.', 1)[-1]}={_num(t.params.get(k))}" for k in keys) for t in trials]
    stages = {t.trial_id: read_stages(t.history) for t in trials}
    verdicts = {t.trial_id: monitor_verdicts(t.history) for t in trials}
    best = {t.trial_id: search.best_point(t) for t in trials}
    rows = []
    for t, setting in zip(trials, settings):
        top = best[t.trial_id]
        cells = [setting, t.outcome, str(t.epochs), f"{_num(top[1])} (epoch {top[0]})" if top else "–", _num(t.value)]
        for name in STAGES:
            cells.append("; ".join(f"epochs {s.span}: {s.detail}" for s in stages[t.trial_id] if s.name == name) or "–")
        first: dict[str, int] = {}
        for epoch, diagnosis in verdicts[t.trial_id]:
            first.setdefault(diagnosis, epoch)
        cells.append(", ".join(f"{d} (epoch {e})" for d, e in first.items()) or L.HEALTHY)
        rows.append(cells)
    metric = search.metric
    ranked = sorted(((t.value, s) for t, s in zip(trials, settings) if t.value is not None), reverse=search.mode == "max")
    shown = trials[:MAX_SWEEP_ROWS]
    out: dict[str, Any] = {
        "table": _table(["setting", "outcome", "epochs", f"best {metric}", f"last {metric}", *STAGES, "monitor"], rows),
        "ranked": (ranked[0][1], _num(ranked[0][0]), ranked[-1][1], _num(ranked[-1][0])) if len(ranked) > 1 else None,
        "summary": None,
        "shown": len(shown),
        "total": len(trials),
        "curves": None,
        "why": "",
    }
    if len(keys) == 1 and all(is_finite(t.params.get(keys[0])) for t in trials):
        points = [(float(t.params[keys[0]]), (best[t.trial_id] or (0, None))[1], t.value, t.category) for t in trials]
        fig = plots.sweep_summary(keys[0], points, log=keys[0] in search.log_keys(), metric=metric)
        out["summary"] = figures.add(fig, "sweep_summary", f"best and last {metric} per setting")
    curves = [
        plots.SettingRow(
            setting, t.category, t.history, [(s.name, s.first, s.last) for s in stages[t.trial_id]], verdicts[t.trial_id]
        )
        for t, setting in zip(shown, settings)
    ]
    try:
        fig = plots.setting_curves(curves, title="The sweep, setting by setting")
        out["curves"] = figures.add(fig, "sweep_curves", "learning curves of every setting")
    except ValueError as exc:
        out["why"] = str(exc)
    return out


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if is_finite(value) else (1, str(value))


def _atlas(search: SearchRecord, figures: _Figures) -> dict[str, Any] | None:
    pairs = plots.atlas_pairs(search.param_keys(), search.metric)
    if not pairs:
        return None
    points = [plots.AtlasPoint(t.trial_id, t.category, {**t.params, search.metric: t.value}) for t in search.trials]
    recovered = sorted({t.category for t in search.trials if t.recovered})
    title = "Failure atlas: each trial at its sampled params, coloured by outcome" + (
        "; diamonds: recovered" if recovered else ""
    )
    fig = plots.failure_atlas(points, pairs, log_axes=search.log_keys(), limits=search.limits(), title=title)
    return {
        "views": "; ".join(f"{x} × {y}" for x, y in pairs),
        "image": figures.add(fig, "atlas", "failure atlas"),
        "recovered": recovered,
    }


def _importances(search: SearchRecord, figures: _Figures) -> list[dict[str, Any]] | None:
    # The stored Optuna study's trials, params and distributions as Optuna sampled them; without
    # one (a grid, an older search) the runs' params typed by the space's distributions.
    stored = search.study.trials if search.study is not None else None
    if search.space is not None:
        distributions = search_distributions(search.space)
    elif search.study is not None and search.study.trials:
        distributions = search.study.distributions()
    else:
        return None
    direction: Literal["maximize", "minimize"] = "maximize" if search.mode == "max" else "minimize"
    return [
        # The metric over trials that were not stopped: what decides how good a working trial gets.
        _importance(
            figures, param_importances(search.trials, distributions, _working_value, direction, stored=stored),
            search.metric, "importance_metric", "#1f77b4",
            f"the search metric, {search.metric}", "trials not stopped (completed or pruned), at their last value",
        ),
        # Failure over every finished trial: what decides whether training works at all.
        _importance(
            figures, param_importances(search.trials, distributions, _failure_value, "maximize", binary=True, stored=stored),
            "failure", "importance_failure", "#d62728",
            f"failure (1: stopped, recovered, or diagnosed {'/'.join(FAILURE_DIAGNOSES)}; 0: otherwise)",
            "every trial that ended on its own (not error, interrupted or running)",
        ),
    ]  # fmt: skip


def _working_value(t: TrialRecord) -> float | None:
    return t.value if t.outcome in (L.COMPLETED, L.PRUNED) and not t.failed else None


def _failure_value(t: TrialRecord) -> float | None:
    return None if t.outcome in _UNFINISHED else float(t.failed)


def _importance(
    figures: _Figures, result: tuple[dict[str, float] | None, str], short: str, name: str, color: str, what: str, who: str
) -> dict[str, Any]:
    importances, note = result
    image = None
    if importances is not None:
        fig = plots.importance_bars(importances, title=f"importance for {short}", color=color)
        image = figures.add(fig, name, f"parameter importances for {short}")
    return {"what": what, "who": who, "note": note, "image": image}


def _trials(search: SearchRecord) -> dict[str, Any]:
    keys = search.param_keys()
    rows = [
        [t.trial_id, t.outcome, t.diagnosis, str(t.epochs), _num(t.value), *(_num(t.params.get(k)) for k in keys), t.run_id]
        for t in search.trials
    ]
    return _table(["trial", "outcome", "diagnosis", "epochs", search.metric, *keys, "MLflow run"], rows)


def _breakable(key: str) -> Markup:
    """A dotted key (a column header) that may wrap after its dots: the best trials' table holds
    every sampled param, and seven of them overflowed a 1600 px page."""
    return Markup(".<wbr>").join(key.split("."))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> dict[str, Any]:
    return {"header": header, "rows": rows}


def _num(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python hpo/report.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", required=True, help="the search's MLflow experiment name")
    parser.add_argument("--tracking-uri", default=L.DEFAULT_TRACKING_URI, help="MLflow tracking URI (default: %(default)s)")
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
        print(f"  logged to parent run {result.logged_to} under {L.REPORT_ARTIFACT_DIR}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
