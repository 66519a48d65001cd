"""Finding a search's runs in MLflow (:mod:`hpo.layout`): what tracking, the report and the export share."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow import MlflowClient

from hpo import layout as L

if TYPE_CHECKING:
    from mlflow.entities import Experiment, Run

__all__ = ["SearchLookupError", "all_experiments", "find_parent", "search_runs", "tag_filter", "trial_outcomes"]

_PAGE = 1000


class SearchLookupError(RuntimeError):
    """No such store, experiment or search; the message says what is missing."""


def find_parent(tracking_uri: str, experiment: str, search_id: str | None) -> tuple[MlflowClient, str, Run]:
    """A client of the existing store, the experiment's id and the parent run of ``search_id`` (or
    the experiment's newest one)."""
    # MLflow silently creates an empty database for a mistyped sqlite path; say so instead.
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        if not db.is_file():
            raise SearchLookupError(f"no MLflow database at {db} (tracking URI {tracking_uri})")
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        known = sorted(e.name for e in all_experiments(client))
        raise SearchLookupError(
            f"no MLflow experiment {experiment!r} at {tracking_uri} (experiments there: {', '.join(known) or 'none'})"
        )
    experiment_id, tags = exp.experiment_id, {L.ROLE: L.PARENT}
    if search_id is not None:
        if not re.fullmatch(r"[\w.-]+", search_id):
            raise SearchLookupError(f"--search-id {search_id!r}: expected a search id such as a uuid hex string")
        tags[L.SEARCH_ID] = search_id
    found = client.search_runs([experiment_id], tag_filter(tags), order_by=["attributes.start_time DESC"], max_results=1)
    if found:
        return client, experiment_id, found[0]
    if search_id is None:
        raise SearchLookupError(
            f"experiment {experiment!r} has no parent run (tag {L.ROLE}={L.PARENT}): no search has logged to it"
        )
    known = [r.data.tags.get(L.SEARCH_ID, "?") for r in search_runs(client, [experiment_id], tag_filter({L.ROLE: L.PARENT}))]
    raise SearchLookupError(
        f"experiment {experiment!r} has no search {search_id!r} (searches there: {', '.join(known) or 'none'})"
    )


def trial_outcomes(tracking_uri: str, search_id: str) -> list[dict[str, Any]]:
    """Every child run of the search, in the order the trials started.

    Each row: ``trial_id``, ``run_id``, ``status`` (MLflow's), ``outcome``, ``diagnosis``, ``message``
    (the health monitor's evidence, ``""`` without one),
    ``pruned_at_epoch`` (int or ``None``), ``params`` (``{dotted key: value}``, numbers and
    booleans parsed back from MLflow's strings) and ``metrics`` (the last value of each).
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_ids = [e.experiment_id for e in all_experiments(client)]
    if not experiment_ids:
        return []
    runs = search_runs(client, experiment_ids, tag_filter({L.ROLE: L.TRIAL, L.SEARCH_ID: search_id}))
    rows = []
    for run in sorted(runs, key=lambda r: (r.info.start_time or 0, r.data.tags.get(L.TRIAL_ID, ""))):
        tags = run.data.tags
        pruned_at = tags.get(L.PRUNED_AT)
        rows.append(
            {
                "trial_id": tags.get(L.TRIAL_ID, ""),
                "run_id": run.info.run_id,
                "status": run.info.status,
                "outcome": tags.get(L.OUTCOME, L.RUNNING),
                "diagnosis": tags.get(L.DIAGNOSIS, L.HEALTHY),
                "message": tags.get(L.HEALTH_MESSAGE, ""),
                "pruned_at_epoch": int(pruned_at) if pruned_at is not None else None,
                "params": {k: _parse_param(v) for k, v in sorted(run.data.params.items())},
                "metrics": dict(run.data.metrics),
            }
        )
    return rows


def tag_filter(tags: Mapping[str, str]) -> str:
    """An MLflow filter string: every tag equal to its value."""
    for value in tags.values():
        if "'" in value:
            raise ValueError(f"a tag value used in a search may not contain a quote (got {value!r})")
    return " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())


def search_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
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


def all_experiments(client: MlflowClient) -> Iterator[Experiment]:
    token = None
    while True:
        page = client.search_experiments(max_results=_PAGE, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


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
