"""Export the best trial of a search as a production training config.

    python hpo/export.py --experiment NAME --out best.yaml [--tracking-uri sqlite:///mlflow.db]
                         [--search-id ID] [--epochs N] [--metric val/ap --mode max]

Reads the MLflow layout the search writes (one parent run per search, one child run per trial),
picks the best trial that *completed healthy* (tags ``hpo.outcome == completed`` and
``hpo.diagnosis == healthy``) by the last logged value of the search's metric, validates its
``trial_config.yaml`` artifact, writes it to ``--out`` for ``python -m model.train --config`` and
records the export on the parent run (tags ``hpo.exported_trial``/``hpo.exported_run``, artifact
``best.yaml``). Exit status 0 on success, 2 with a message for anything that prevents the export.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
    """How many healthy completed trials (with a value of ``metric``) were compared."""


def export_best(
    tracking_uri: str,
    experiment: str,
    out: str | Path,
    search_id: str | None = None,
    epochs: int | None = None,
    metric: str | None = None,
    mode: Literal["max", "min"] | None = None,
) -> ExportResult:
    """Write the best healthy completed trial's config to ``out`` and record it on the parent run.

    Args:
        tracking_uri: MLflow tracking URI (a ``sqlite:///`` file must already exist).
        experiment: the search's MLflow experiment name.
        out: where to write the YAML config.
        search_id: the ``hpo.search_id`` of the search; ``None`` = the most recently started parent run.
        epochs: production length; ``None`` keeps the trial's ``epochs``.
        metric, mode: what "best" means; ``None`` = the parent's ``hpo.metric``/``hpo.mode`` tags.

    Raises:
        ExportError: unknown experiment or search, no healthy completed trial, a missing artifact,
            an invalid trial config, or no metric/mode to rank by.
    """
    try:
        client, experiment_id, parent = find_parent(tracking_uri, experiment, search_id)
    except SearchLookupError as exc:
        raise ExportError(str(exc)) from None
    tags = parent.data.tags
    search_id = tags.get(L.SEARCH_ID, search_id or "")
    metric = metric or tags.get(L.METRIC)
    mode = mode or tags.get(L.MODE)  # type: ignore[assignment]
    if not metric or mode not in ("max", "min"):
        raise ExportError(
            f"search {search_id} (run {parent.info.run_id}) has no usable {L.METRIC}/{L.MODE} tags "
            f"(got {metric!r}/{mode!r}): pass --metric and --mode max|min"
        )

    # Children are found by the search id (stable across --resume); a parent without one by its run id.
    owner = {L.SEARCH_ID: search_id} if search_id else {L.PARENT_RUN_ID: parent.info.run_id}
    trials = search_runs(client, [experiment_id], tag_filter({**owner, L.ROLE: L.TRIAL}))
    healthy = [r for r in trials if r.data.tags.get(L.OUTCOME) == L.COMPLETED and r.data.tags.get(L.DIAGNOSIS, L.HEALTHY) == L.HEALTHY]
    ranked = [r for r in healthy if math.isfinite(r.data.metrics.get(metric, math.nan))]
    if not ranked:
        raise ExportError(_no_candidate_message(search_id, experiment, trials, healthy, metric))
    # run.data.metrics holds each metric's latest value (highest step): the trial's last report.
    sign = 1.0 if mode == "max" else -1.0
    best = max(ranked, key=lambda r: (sign * r.data.metrics[metric], -r.info.start_time))
    trial_id = best.data.tags.get(L.TRIAL_ID, best.info.run_id)

    config = _trial_config(client, best, trial_id, epochs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config.to_yaml(out)
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
    )


def _no_candidate_message(search_id: str, experiment: str, trials: list[Run], healthy: list[Run], metric: str) -> str:
    where = f"search {search_id} in experiment {experiment!r}"
    if not trials:
        return f"{where} has no trial runs"
    outcomes = Counter(
        outcome if outcome != L.COMPLETED else f"{outcome}/{r.data.tags.get(L.DIAGNOSIS, L.HEALTHY)}"
        for r in trials
        for outcome in [r.data.tags.get(L.OUTCOME, L.UNKNOWN)]
    )
    summary = ", ".join(f"{name}: {n}" for name, n in sorted(outcomes.items()))
    message = f"{where} has no healthy completed trial to export; {len(trials)} trials ({summary})"
    if healthy:
        message += f"; the {len(healthy)} healthy completed ones logged no finite {metric!r}"
    return message


def _trial_config(client: MlflowClient, run: Run, trial_id: str, epochs: int | None) -> TrainConfig:
    with tempfile.TemporaryDirectory(prefix="hpo-export-") as tmp:
        try:
            local = client.download_artifacts(run.info.run_id, L.TRIAL_CONFIG_ARTIFACT, dst_path=tmp)
        except Exception as exc:  # MLflow raises different types per artifact store
            raise ExportError(f"trial {trial_id} (run {run.info.run_id}) has no {L.TRIAL_CONFIG_ARTIFACT} artifact: {exc}") from None
        overrides = {} if epochs is None else {"epochs": epochs}
        try:
            return load_config(local, overrides)
        except ConfigError as exc:
            raise ExportError(f"trial {trial_id} (run {run.info.run_id}): {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python hpo/export.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", required=True, help="the search's MLflow experiment name")
    parser.add_argument("--out", type=Path, required=True, help="where to write the YAML config")
    parser.add_argument("--tracking-uri", default=L.DEFAULT_TRACKING_URI, help="MLflow tracking URI (default: %(default)s)")
    parser.add_argument("--search-id", help="the search's hpo.search_id (default: the most recent search)")
    parser.add_argument("--epochs", type=int, help="production training length (default: the trial's)")
    parser.add_argument("--metric", help="rank trials by this metric (default: the search's hpo.metric)")
    parser.add_argument("--mode", choices=["max", "min"], help="default: the search's hpo.mode")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be at least 1 (got {args.epochs})")

    try:
        result = export_best(
            args.tracking_uri, args.experiment, args.out, search_id=args.search_id, epochs=args.epochs, metric=args.metric, mode=args.mode
        )
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"exported trial {result.trial_id} (run {result.run_id}, {result.metric} = {result.value:.4g}, best of "
        f"{result.candidates} healthy completed) of search {result.search_id} to {result.path}; "
        f"train it with: python -m model.train --config {result.path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
