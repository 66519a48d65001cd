"""Export the best trial of a search as a production training config.

    python hpo/export.py --experiment NAME --out best.yaml [--tracking-uri sqlite:///mlflow.db]
                         [--search-id ID] [--epochs N] [--metric val/ap --mode max] [--no-recovered]

Reads the MLflow layout the search writes (one parent run per search, one child run per trial),
picks the best trial that *completed healthy* (tags ``hpo.outcome == completed`` and
``hpo.diagnosis == healthy``) by the last logged value of the search's metric, validates its
``trial_config.yaml`` artifact, writes it to ``--out`` for ``python -m model.train --config`` and
records the export on the parent run (tags ``hpo.exported_trial``/``hpo.exported_run``, artifact
``best.yaml``). Exit status 0 on success, 2 with a message for anything that prevents the export.

A *recovered* trial (``hpo.outcome == recovered:<diagnosis>``, ``health.on_failure: recover``: the
trainer rolled it back from that failure and applied an intervention, and it then ran every epoch)
that ended healthy is a candidate too, unless ``--no-recovered``. It is ranked with the completed
ones by its *measured* metric: the last value of the metric in its child run, which records the
measurement (``raw/<metric>``), never the penalty Optuna was told (the sampled configuration
failed). What is exported for it is its *effective config*, the ``effective_config.yaml`` artifact
(the trial's config with its recoveries' changes: a restart with the fix), with a header comment
naming the trial and the interventions (from its ``recoveries.json`` artifact when logged). That
config did not train the measured run from its first step (the run began with the sampled values),
so on an equal value a completed trial wins. A recovered trial without the ``effective_config.yaml``
artifact is skipped with a message, and the next best is taken.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from mlflow import MlflowClient
from mlflow.entities import Run

from hpo import layout as L
from hpo.runs import SearchLookupError, find_parent, search_runs, tag_filter
from model.config import ConfigError, TrainConfig, load_config

__all__ = ["ExportError", "ExportResult", "export_best", "main"]


class ExportError(RuntimeError):
    """The export cannot proceed; the message says what is missing."""


@dataclass(frozen=True)
class ExportResult:
    """What was exported, and from where."""

    path: Path
    """The written YAML config."""
    config: TrainConfig
    experiment: str
    search_id: str
    parent_run_id: str
    trial_id: str
    run_id: str
    """The MLflow run of the chosen trial."""
    metric: str
    mode: Literal["max", "min"]
    value: float
    """The chosen trial's last value of ``metric``."""
    candidates: int
    """How many candidates (healthy completed and, unless excluded, healthy recovered trials with a
    value of ``metric``) were compared."""
    outcome: str = L.COMPLETED
    """The chosen trial's ``hpo.outcome``: ``completed`` or ``recovered:<diagnosis>``."""
    interventions: tuple[str, ...] = ()
    """A recovered trial's recoveries, one line each (from its ``recoveries.json``; empty when not logged)."""
    skipped: tuple[str, ...] = ()
    """Why better-ranked recovered trials were passed over (no effective config logged)."""


def export_best(
    tracking_uri: str,
    experiment: str,
    out: str | Path,
    search_id: str | None = None,
    epochs: int | None = None,
    metric: str | None = None,
    mode: Literal["max", "min"] | None = None,
    recovered: bool = True,
) -> ExportResult:
    """Write the best healthy completed (or recovered) trial's config to ``out`` and record it on the parent run.

    Args:
        tracking_uri: MLflow tracking URI (a ``sqlite:///`` file must already exist).
        experiment: the search's MLflow experiment name.
        out: where to write the YAML config.
        search_id: the ``hpo.search_id`` of the search; ``None`` = the most recently started parent run.
        epochs: production length; ``None`` keeps the trial's ``epochs``.
        metric, mode: what "best" means; ``None`` = the parent's ``hpo.metric``/``hpo.mode`` tags.
        recovered: let recovered trials compete (exported with their effective config, see the
            module's doc); ``False`` = completed trials only.

    Raises:
        ExportError: unknown experiment or search, no healthy completed trial (nor a usable
            recovered one), a completed trial without its config artifact, an invalid config, or
            no metric/mode to rank by.
    """
    try:
        client, experiment_id, parent = find_parent(tracking_uri, experiment, search_id)
    except SearchLookupError as exc:
        raise ExportError(str(exc)) from None
    tags = parent.data.tags
    search_id = tags.get(L.SEARCH_ID, search_id or "")
    metric = metric or tags.get(L.METRIC)
    # Checked just below: anything but max or min is an error.
    mode = cast("Literal['max', 'min'] | None", mode or tags.get(L.MODE))
    if not metric or mode not in ("max", "min"):
        raise ExportError(
            f"search {search_id} (run {parent.info.run_id}) has no usable {L.METRIC}/{L.MODE} tags "
            f"(got {metric!r}/{mode!r}): pass --metric and --mode max|min"
        )

    # Children are found by the search id (stable across --resume); a parent without one by its run id.
    owner = {L.SEARCH_ID: search_id} if search_id else {L.PARENT_RUN_ID: parent.info.run_id}
    trials = search_runs(client, [experiment_id], tag_filter({**owner, L.ROLE: L.TRIAL}))
    healthy = [r for r in trials if _eligible(r, recovered)]
    ranked = [r for r in healthy if math.isfinite(r.data.metrics.get(metric, math.nan))]
    if not ranked:
        raise ExportError(_no_candidate_message(search_id, experiment, trials, healthy, metric, recovered))
    # run.data.metrics holds each metric's latest value (highest step): the trial's last report.
    # Best first; on a tie a completed trial before a recovered one, then the earlier started.
    sign = 1.0 if mode == "max" else -1.0
    ranked.sort(key=lambda r: (-sign * r.data.metrics[metric], L.is_recovered(_outcome(r)), r.info.start_time))
    skipped: list[str] = []
    interventions: tuple[str, ...]
    for best in ranked:
        trial_id = best.data.tags.get(L.TRIAL_ID, best.info.run_id)
        if not L.is_recovered(_outcome(best)):
            config, interventions, header = _trial_config(client, best, trial_id, epochs), (), ""
            break
        chosen = _recovered_config(client, best, trial_id, epochs, metric, search_id)
        if isinstance(chosen, str):
            skipped.append(chosen)
            continue
        config, interventions, header = chosen
        break
    else:
        raise ExportError(f"search {search_id} in experiment {experiment!r} has no trial to export: " + "; ".join(skipped))

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config.to_yaml(out)
    if header:
        out.write_text(header + out.read_text())
    load_config(out)  # the written file must round-trip, exactly as model.train will read it

    client.set_tag(parent.info.run_id, L.EXPORTED_TRIAL, trial_id)
    client.set_tag(parent.info.run_id, L.EXPORTED_RUN, best.info.run_id)
    client.log_text(parent.info.run_id, out.read_text(), L.EXPORT_ARTIFACT)
    return ExportResult(
        path=out,
        config=config,
        experiment=experiment,
        search_id=search_id,
        parent_run_id=parent.info.run_id,
        trial_id=trial_id,
        run_id=best.info.run_id,
        metric=metric,
        mode=mode,
        value=best.data.metrics[metric],
        candidates=len(ranked),
        outcome=_outcome(best),
        interventions=interventions,
        skipped=tuple(skipped),
    )


def _outcome(run: Run) -> str:
    return run.data.tags.get(L.OUTCOME, L.UNKNOWN)


def _eligible(run: Run, recovered: bool) -> bool:
    """Completed (or, when ``recovered``, recovered) with a healthy last report."""
    outcome = _outcome(run)
    ran_to_end = outcome == L.COMPLETED or (recovered and L.is_recovered(outcome))
    return ran_to_end and run.data.tags.get(L.DIAGNOSIS, L.HEALTHY) == L.HEALTHY


def _no_candidate_message(
    search_id: str, experiment: str, trials: list[Run], healthy: list[Run], metric: str, recovered: bool = True
) -> str:
    where = f"search {search_id} in experiment {experiment!r}"
    if not trials:
        return f"{where} has no trial runs"
    outcomes = Counter(
        outcome
        if not (outcome == L.COMPLETED or L.is_recovered(outcome))
        else f"{outcome}/{r.data.tags.get(L.DIAGNOSIS, L.HEALTHY)}"
        for r in trials
        for outcome in [_outcome(r)]
    )
    summary = ", ".join(f"{name}: {n}" for name, n in sorted(outcomes.items()))
    nor = " (nor a healthy recovered one)" if recovered else ""
    message = f"{where} has no healthy completed trial to export{nor}; {len(trials)} trials ({summary})"
    if healthy:
        kinds = "completed or recovered" if recovered else L.COMPLETED
        message += f"; the {len(healthy)} healthy {kinds} ones logged no finite {metric!r}"
    return message


def _trial_config(client: MlflowClient, run: Run, trial_id: str, epochs: int | None) -> TrainConfig:
    with tempfile.TemporaryDirectory(prefix="hpo-export-") as tmp:
        try:
            local = client.download_artifacts(run.info.run_id, L.TRIAL_CONFIG_ARTIFACT, dst_path=tmp)
        except Exception as exc:  # MLflow raises different types per artifact store
            raise ExportError(
                f"trial {trial_id} (run {run.info.run_id}) has no {L.TRIAL_CONFIG_ARTIFACT} artifact: {exc}"
            ) from None
        overrides = {} if epochs is None else {"epochs": epochs}
        try:
            return load_config(local, overrides)
        except ConfigError as exc:
            raise ExportError(f"trial {trial_id} (run {run.info.run_id}): {exc}") from None


def _recovered_config(
    client: MlflowClient, run: Run, trial_id: str, epochs: int | None, metric: str, search_id: str
) -> tuple[TrainConfig, tuple[str, ...], str] | str:
    """A recovered trial's effective config, its interventions and the YAML's header comment; or,
    when the run has no ``effective_config.yaml`` artifact, why it is skipped."""
    run_id, outcome = run.info.run_id, _outcome(run)
    with tempfile.TemporaryDirectory(prefix="hpo-export-") as tmp:
        try:
            local = client.download_artifacts(run_id, L.EFFECTIVE_CONFIG_ARTIFACT, dst_path=tmp)
        except Exception as exc:  # MLflow raises different types per artifact store
            return (
                f"skipped trial {trial_id} (run {run_id}, {outcome}, {metric} {run.data.metrics[metric]:.4g}): it has no "
                f"{L.EFFECTIVE_CONFIG_ARTIFACT} artifact ({type(exc).__name__}), so the config it trained with after its "
                f"recovery is unknown (its sampled config failed)"
            )
        overrides = {} if epochs is None else {"epochs": epochs}
        try:
            config = load_config(local, overrides)
        except ConfigError as exc:
            raise ExportError(f"trial {trial_id} (run {run_id}): {exc}") from None
        try:
            events = json.loads(Path(client.download_artifacts(run_id, L.RECOVERIES_ARTIFACT, dst_path=tmp)).read_text())
        except Exception:  # noqa: BLE001 - not logged (or unreadable): the header says so
            events = None
    interventions = _interventions(events)
    lines = [
        f"Exported by hpo/export.py from a RECOVERED trial: trial {trial_id} (run {run_id}) of search {search_id},",
        f"outcome {outcome}, {metric} {run.data.metrics[metric]:.4g} measured with the interventions applied.",
        "This is its effective config: the sampled config (which failed, and which Optuna recorded as",
        "failed) with the changes its recoveries made; a run started from it has the fix from step 1.",
    ]
    if interventions:
        lines.append("Interventions applied:")
        lines += [f"  {line}" for line in interventions]
    else:
        lines.append(f"Interventions applied: unknown (no readable {L.RECOVERIES_ARTIFACT} artifact; see the run's description).")
    header = "".join(f"# {line}\n" for line in lines)
    return config, interventions, header


def _interventions(events: object) -> tuple[str, ...]:
    """One line per recovery event of ``recoveries.json`` (``model.recovery``'s events); ``()`` when
    there is nothing readable."""
    if not isinstance(events, list):
        return ()
    lines = []
    for i, event in enumerate(events, start=1):
        if not isinstance(event, dict):
            return ()
        step, epoch = event.get("failed_step"), event.get("failed_epoch")
        where = f"step {step} (epoch {epoch})" if step is not None else f"epoch {epoch}"
        target = "restore the best epoch" if event.get("action") == "restore_best" else "roll back to epoch"
        changes = cast("dict[object, object]", event.get("changes")) if isinstance(event.get("changes"), dict) else {}
        parts = [f"{key} {_pair(change)}" for key, change in changes.items()]
        if event.get("skipped_batches"):
            parts.append(f"skip {len(event['skipped_batches'])} batches")
        text = (
            f"{event.get('recovery', i)}. {event.get('diagnosis', L.UNKNOWN)} at {where}: {target} "
            f"{event.get('snapshot_epoch', '?')} (step {event.get('snapshot_step', '?')}); {', '.join(parts) or 'no change'}"
        )
        lines.append(" ".join(text.split()))  # one comment line, whatever the event holds
    return tuple(lines)


def _pair(change: object) -> str:
    if isinstance(change, (list, tuple)) and len(change) == 2:
        return f"{change[0]} -> {change[1]}"
    return f"-> {change}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python hpo/export.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", required=True, help="the search's MLflow experiment name")
    parser.add_argument("--out", type=Path, required=True, help="where to write the YAML config")
    parser.add_argument("--tracking-uri", default=L.DEFAULT_TRACKING_URI, help="MLflow tracking URI (default: %(default)s)")
    parser.add_argument("--search-id", help="the search's hpo.search_id (default: the most recent search)")
    parser.add_argument("--epochs", type=int, help="production training length (default: the trial's)")
    parser.add_argument("--metric", help="rank trials by this metric (default: the search's hpo.metric)")
    parser.add_argument("--mode", choices=["max", "min"], help="default: the search's hpo.mode")
    parser.add_argument(
        "--no-recovered",
        action="store_true",
        help="completed trials only: recovered trials (and their effective configs) do not compete",
    )
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be at least 1 (got {args.epochs})")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # small YAML/JSON files: no bars among the messages

    try:
        result = export_best(
            args.tracking_uri,
            args.experiment,
            args.out,
            search_id=args.search_id,
            epochs=args.epochs,
            metric=args.metric,
            mode=args.mode,
            recovered=not args.no_recovered,
        )
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in result.skipped:
        print(f"warning: {note}", file=sys.stderr)
    kinds = "healthy completed" if args.no_recovered else "healthy completed or recovered"
    print(
        f"exported trial {result.trial_id} (run {result.run_id}, {result.metric} = {result.value:.4g}, best of "
        f"{result.candidates} {kinds}) of search {result.search_id} to {result.path}; "
        f"train it with: {L.python_command('-m', 'model.train', '--config', result.path)}"
    )
    if L.is_recovered(result.outcome):
        listed = f"{len(result.interventions)} listed in the file's header" if result.interventions else "not logged"
        print(
            f"  a recovered trial ({result.outcome}): exported its effective config, the sampled one with its recoveries' changes ({listed})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
