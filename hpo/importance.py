"""Optuna's parameter importances of a finished search, from its recorded trials.

The report ranks params by its own objectives (the search metric of the trials that worked,
failure), not by the values Optuna was told (a stopped trial's penalty, none for a pruned one). So
each trial's objective goes into an in-memory study through Optuna's public API
(``optuna.create_study``, ``optuna.trial.create_trial``, which also checks that each value lies in
its distribution), ranked by ``optuna.importance.get_param_importances``. A trial's params and
their distributions come from the search's stored Optuna study when it has one (exactly as Optuna
sampled them, :class:`hpo.report_data.StoredStudy`), else from its MLflow params, typed by the
space's distributions.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from hpo.report_data import TrialRecord, spans_decades
from hpo.space import GridParam, SearchSpace
from hpo.values import is_finite

__all__ = ["MIN_IMPORTANCE_TRIALS", "param_importances", "search_distributions"]

#: Fewer trials than this in a study: no importances (a handful of points says nothing).
MIN_IMPORTANCE_TRIALS = 4


def search_distributions(space: SearchSpace) -> dict[str, Any]:
    """Optuna distributions of the space's params; a grid param becomes the range of its values
    (log-scaled when they span two decades or more), or a categorical for text values."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    out: dict[str, Any] = {}
    for key, spec in space.params.items():
        if not isinstance(spec, GridParam):
            out[key] = spec.to_optuna()
        elif all(is_finite(v) for v in spec.values):
            low, high = min(spec.values), max(spec.values)
            out[key] = (
                FloatDistribution(low, high, log=spans_decades(spec.values)) if low < high else CategoricalDistribution([low])
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
    stored: Mapping[str, Any] | None = None,
) -> tuple[dict[str, float] | None, str]:
    """Optuna's parameter importances of ``objective`` over ``trials``; ``(None, why)`` when there
    is nothing to learn from (too few trials, a constant objective, a single parameter).

    Trials whose objective is ``None`` or whose params do not fit ``distributions`` are left out.
    The evaluator is Optuna's default, PED-ANOVA: the importance of each param for reaching the
    top quantile of the objective. For a ``binary`` objective (failure: 1, else 0) the top
    quantile is exactly the trials with 1; otherwise it is the top 5 trials or 10 %, whichever is
    more (at most half), as PED-ANOVA wants at least 5 trials in it.

    ``stored``: the search's Optuna trials (``optuna.trial.FrozenTrial``) by Tune trial id; a trial
    found there takes its params and their distributions from it.
    """
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator

    frozen = []
    misfits = from_study = 0
    for trial in trials:
        value = objective(trial)
        if value is None or not math.isfinite(value):
            continue
        sampled = (stored or {}).get(trial.trial_id)
        try:
            if sampled is not None and all(k in sampled.params for k in distributions):
                params = {k: sampled.params[k] for k in distributions}
                trial_distributions = {k: sampled.distributions[k] for k in distributions}
                from_study += 1
            else:
                params, trial_distributions = _typed(trial.params, distributions), dict(distributions)
            frozen.append(optuna.trial.create_trial(params=params, distributions=trial_distributions, value=float(value)))
        except ValueError:  # a param missing, or outside its distribution
            misfits += 1
    skipped = f" ({misfits} trials left out: their params lie outside the space)" if misfits else ""
    if from_study:
        skipped += f"; params of {from_study} trials as Optuna sampled them (the stored study)"
    if len(frozen) < MIN_IMPORTANCE_TRIALS:
        return None, f"too few trials to rank parameters: {len(frozen)} (at least {MIN_IMPORTANCE_TRIALS}){skipped}"
    values = [t.value for t in frozen]
    if len(set(values)) == 1:
        return None, f"the objective is the same ({values[0]:g}) for all {len(frozen)} trials: nothing separates them{skipped}"
    varied = [k for k, d in distributions.items() if not d.single()]
    if len(varied) < 2:
        return (
            None,
            f"only one sampled parameter ({', '.join(varied) or 'none'}): its importance is 1 by definition; see the atlas",
        )

    if binary:
        top = sum(v == (1 if direction == "maximize" else 0) for v in values)
        quantile = top / len(values)
        note = f"{len(frozen)} trials, {top} of them in the top group (objective {1 if direction == 'maximize' else 0})"
    else:
        quantile = min(0.5, max(0.1, 5 / len(frozen)))
        top = math.ceil(quantile * len(frozen))
        note = f"{len(frozen)} trials, the top {top} by the objective as the top group"
    if top < 5:
        note += "; with fewer than 5 trials in the top group the ranking is rough"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction=direction)
        study.add_trials(frozen)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "importances will be equal" and the like: the note says so
            importances = optuna.importance.get_param_importances(
                study, evaluator=PedAnovaImportanceEvaluator(target_quantile=quantile)
            )
    finally:
        optuna.logging.set_verbosity(verbosity)
    return dict(importances), note + skipped


def _typed(params: Mapping[str, Any], distributions: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's params in the types the distributions take (MLflow gives ``1`` for ``1.0``).

    Raises:
        ValueError: a param is missing or cannot be of its distribution's type.
    """
    from optuna.distributions import CategoricalDistribution, IntDistribution

    out = {}
    for key, dist in distributions.items():
        if key not in params:
            raise ValueError(f"no {key}")
        value = params[key]
        if isinstance(dist, CategoricalDistribution):
            # Optuna matches a choice by ==, so True would pass for 1: bools must meet bools.
            match = [c for c in dist.choices if c == value and isinstance(c, bool) == isinstance(value, bool)]
            if not match:
                raise ValueError(f"{key}={value!r} is none of {dist.choices}")
            value = match[0]
        elif not is_finite(value) or (isinstance(dist, IntDistribution) and value != int(value)):
            raise ValueError(f"{key}={value!r} is not a {type(dist).__name__}'s number")
        else:
            value = int(value) if isinstance(dist, IntDistribution) else float(value)
        out[key] = value
    return out
