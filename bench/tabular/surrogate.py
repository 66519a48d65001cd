"""The recorded table read back as runs, and the surrogate that answers a proposed configuration.

The surrogate is the nearest recorded configuration: categorical params must match exactly, the
others are compared as unit coordinates of their range (log scale for log-sampled params, see
:func:`bench.tabular.design.unit_coords`), Euclidean distance, ties to the first recorded id. A
proposal is answered with that configuration's whole recorded run (its curves, verdicts and
seconds), so every decision of the replay is made on a real run. Its error is measured by
:func:`leave_one_out` (each recorded configuration answered by its nearest other one) beside
the run-to-run noise of the same configuration (:func:`seed_noise`): a nearest-neighbour answer
cannot be closer to the truth than a second seed of the same configuration is.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from bench.tabular.design import categorical_keys, unit_coords
from hpo.space import SearchSpace
from model.health import HealthConfig

#: The monitor's stopping diagnoses: a run that raised one at any epoch is a failing configuration.
FAILURES = frozenset(HealthConfig().stop_on)
#: "AP ~ 0" (as bench/search_efficiency.py): a run whose last AP is below this failed too.
AP_FLOOR = 1e-3


@dataclass
class Run:
    """One recorded (configuration, seed): its config and one dict per epoch (the table's row)."""

    config_id: str
    seed: int
    config: dict[str, Any]
    epochs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final_ap(self) -> float:
        """The last epoch's AP; 0 for a run recorded as ended early or with a non-finite AP."""
        last = self.epochs[-1]
        value = last["val/ap"]
        return value if last.get("ended") is None and math.isfinite(value) else 0.0

    def full_seconds(self, key: str = "time/epoch_s") -> float:
        """What running it to the end costs: the recorded seconds (``key``) of its epochs."""
        return sum(e[key] for e in self.epochs)

    def first_default_stop(self) -> int | None:
        """Index of the first epoch in which the default ``stop_on`` would have stopped the run."""
        return next((i for i, e in enumerate(self.epochs) if e.get("health/default_stop")), None)

    @property
    def failing(self) -> bool:
        return self.first_default_stop() is not None or self.final_ap < AP_FLOOR


def runs_from_rows(rows: Iterable[Mapping[str, Any]], space: SearchSpace) -> dict[tuple[str, int], Run]:
    """Group table rows (one per epoch report) into runs keyed by ``(config_id, seed)``, reports in order."""
    runs: dict[tuple[str, int], Run] = {}
    for row in rows:
        key = (row["config_id"], int(row["seed"]))
        if key not in runs:
            runs[key] = Run(key[0], key[1], {k: row[k] for k in space.params})
        runs[key].epochs.append(dict(row))
    for run in runs.values():
        # In report order: a recovered run (table_recover.parquet) replays epochs, its ``report`` counts on.
        run.epochs.sort(key=lambda e: e.get("report") or e["epoch"])
    return runs


def load_runs(path: Path, space: SearchSpace) -> dict[tuple[str, int], Run]:
    return runs_from_rows(pq.read_table(path).to_pylist(), space)


def primary_runs(runs: Mapping[tuple[str, int], Run], seed: int) -> dict[str, Run]:
    """``{config_id: run}`` of one seed (the space's own ``fixed.seed``: what a trial trains)."""
    return {cid: run for (cid, s), run in runs.items() if s == seed}


class NearestSurrogate:
    """Answers a configuration with the nearest recorded run (see the module docstring)."""

    def __init__(self, space: SearchSpace, runs: Mapping[str, Run]) -> None:
        if not runs:
            raise ValueError("the surrogate needs at least one recorded run")
        self.space = space
        self.ids = list(runs)
        self.runs = dict(runs)
        self._coords = np.stack([unit_coords(space, runs[c].config) for c in self.ids])
        self._cats = [tuple(runs[c].config[k] for k in categorical_keys(space)) for c in self.ids]

    def nearest(self, config: Mapping[str, Any]) -> str:
        """The id of the recorded configuration that answers ``config``."""
        cats = tuple(config[k] for k in categorical_keys(self.space))
        distance = np.linalg.norm(self._coords - unit_coords(self.space, config), axis=1)
        # A categorical mismatch is farther than any numeric distance (the unit cube's diagonal).
        mismatch = np.array([c != cats for c in self._cats], dtype=float)
        return self.ids[int(np.argmin(distance + mismatch * (math.sqrt(self._coords.shape[1]) + 1)))]

    def answer(self, config: Mapping[str, Any]) -> Run:
        return self.runs[self.nearest(config)]


def leave_one_out(space: SearchSpace, runs: Mapping[str, Run]) -> list[dict[str, Any]]:
    """Each recorded configuration answered by the surrogate built from all the others."""
    out = []
    for cid, run in runs.items():
        others = {c: r for c, r in runs.items() if c != cid}
        guess = NearestSurrogate(space, others).answer(run.config)
        out.append(
            {
                "config_id": cid,
                "answered_by": guess.config_id,
                "final_ap": run.final_ap,
                "predicted_ap": guess.final_ap,
                "abs_error": abs(guess.final_ap - run.final_ap),
                "failing": run.failing,
                "predicted_failing": guess.failing,
            }
        )
    return out


def seed_noise(runs: Mapping[tuple[str, int], Run], seed: int) -> list[dict[str, Any]]:
    """Per configuration recorded with other seeds: its final AP per seed and the absolute
    difference of each other seed from ``seed``'s run (what the surrogate's answer stands for)."""
    out = []
    for (cid, s), run in sorted(runs.items()):
        if s != seed or not any(c == cid and o != seed for c, o in runs):
            continue
        others = [r for (c, o), r in sorted(runs.items()) if c == cid and o != seed]
        aps = {seed: run.final_ap, **{r.seed: r.final_ap for r in others}}
        out.append(
            {
                "config_id": cid,
                "final_ap": aps,
                "abs_diff": [abs(r.final_ap - run.final_ap) for r in others],
                "failing": {seed: run.failing, **{r.seed: r.failing for r in others}},
            }
        )
    return out


def error_summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"mean": statistics.fmean(values), "median": statistics.median(values), "max": max(values), "n": len(values)}
