"""The tabular benchmark's configurations: a scrambled Sobol design over a search space's params.

Everything is read from the space (``hpo.space.load_space``): its params, their distributions and
its ``points_to_evaluate``; nothing is re-declared here. A unit-cube point maps through each
param's distribution (log scale for ``loguniform`` and ``int`` with ``log``, rounding for ``int``,
equal bins for ``categorical``). :func:`unit_coords` is the inverse used by the replay's surrogate
to measure distances, with categorical params left out (they are matched exactly).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.stats import qmc

from hpo.space import CategoricalParam, IntParam, LogUniformParam, SearchSpace, UniformParam

#: The Sobol scramble's seed: the design is a fixed, reproducible part of the table.
DESIGN_SEED = 18


def from_unit(spec: Any, u: float) -> Any:
    """The value of one param at ``u`` in [0, 1) of its distribution."""
    if isinstance(spec, LogUniformParam):
        return float(math.exp(math.log(spec.low) + u * (math.log(spec.high) - math.log(spec.low))))
    if isinstance(spec, UniformParam):
        value = spec.low + u * (spec.high - spec.low)
        if spec.step is not None:
            value = spec.low + round((value - spec.low) / spec.step) * spec.step
        return float(min(max(value, spec.low), spec.high))
    if isinstance(spec, IntParam):
        # Equal-width bins per allowed integer (rounding a continuous value would halve the end bins).
        if spec.log:
            value = math.exp(math.log(spec.low) + u * (math.log(spec.high + 1) - math.log(spec.low)))
            return int(min(max(math.floor(value), spec.low), spec.high))
        count = (spec.high - spec.low) // spec.step + 1
        return int(spec.low + min(int(u * count), count - 1) * spec.step)
    if isinstance(spec, CategoricalParam):
        return spec.choices[min(int(u * len(spec.choices)), len(spec.choices) - 1)]
    raise TypeError(f"no unit mapping for a {type(spec).__name__}")


def to_unit(spec: Any, value: Any) -> float:
    """Where ``value`` lies in [0, 1] of a numeric param's range (log for log-scaled params)."""
    if isinstance(spec, LogUniformParam) or (isinstance(spec, IntParam) and spec.log):
        return (math.log(value) - math.log(spec.low)) / (math.log(spec.high) - math.log(spec.low))
    if isinstance(spec, (UniformParam, IntParam)):
        return (value - spec.low) / (spec.high - spec.low)
    raise TypeError(f"{type(spec).__name__} has no numeric coordinate (categoricals are matched exactly)")


def numeric_keys(space: SearchSpace) -> list[str]:
    """The params that get a coordinate (every non-categorical one), in the space's order."""
    return [k for k, spec in space.params.items() if not isinstance(spec, CategoricalParam)]


def categorical_keys(space: SearchSpace) -> list[str]:
    return [k for k, spec in space.params.items() if isinstance(spec, CategoricalParam)]


def unit_coords(space: SearchSpace, config: Mapping[str, Any]) -> np.ndarray:
    """The config's numeric params as unit coordinates, in :func:`numeric_keys` order."""
    return np.array([to_unit(space.params[k], config[k]) for k in numeric_keys(space)], dtype=float)


def sobol_configs(space: SearchSpace, count: int, seed: int = DESIGN_SEED) -> list[dict[str, Any]]:
    """``count`` configs from a scrambled Sobol sequence over the space's params (the first
    ``count`` points of the sequence; a power of two keeps its balance properties)."""
    keys = list(space.params)
    points = qmc.Sobol(d=len(keys), scramble=True, seed=seed).random(count)
    return [{k: from_unit(space.params[k], float(u)) for k, u in zip(keys, row)} for row in points]


def design(space: SearchSpace, count: int, seed: int = DESIGN_SEED) -> dict[str, dict[str, Any]]:
    """``{config_id: config}``: the space's ``points_to_evaluate`` (``p0``, ``p1``, ...) then the
    Sobol configs (``s000``, ``s001``, ...)."""
    out = {f"p{i}": dict(point) for i, point in enumerate(space.points_to_evaluate)}
    # Three digits whatever the count: a larger design extends a smaller one (same first points, same ids).
    out.update({f"s{i:03d}": config for i, config in enumerate(sobol_configs(space, count, seed))})
    return out
