"""Search spaces: the YAML files a user edits, validated on load.

A search space names the metric, the budget, the per-trial resources, the scheduler (ASHA or
none), the sampler (Optuna TPE or a grid), the fixed settings and the sampled hyperparameters.
Every key under ``fixed``, ``params`` and ``points_to_evaluate`` is a dotted key of
:class:`model.config.TrainConfig` (``loss.box_weight``), the one place a hyperparameter is
defined. Loading checks everything a search would otherwise discover hours in, on a worker:
unknown keys at any level, wrong types, empty ranges, values the trainer's config rejects (each
bound, each choice, each grid setting is built into a real ``TrainConfig``), starting points
outside the space, a metric the trainer does not report, and an ASHA grace period that would
prune trials while they are still warming up. Errors name the file and the key path::

    search_spaces/x.yaml: params.optim.lr.low: must be < high (got low=0.1, high=0.01)

The sampled names are the dotted keys themselves: Ray Tune only splits nested-config names on
``/`` and Optuna keeps names verbatim, so ``loss.box_weight`` reaches the trial unchanged.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, cast, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator
from pydantic.fields import FieldInfo

from hpo.values import is_finite
from model.config import ConfigError, TrainConfig
from model.dotted import KeyPathError, did_you_mean, dotted_path, error_message, field_at, get_dotted, unknown_key
from model.report_keys import METRIC_MODES, VAL_WIDER_KEYS

if TYPE_CHECKING:
    import optuna

__all__ = [
    "METRIC_MODES",
    "SPACES_DIR",
    "AshaSchedulerSpec",
    "Budget",
    "CategoricalParam",
    "GridParam",
    "GridSamplerSpec",
    "IntParam",
    "LogUniformParam",
    "NoSchedulerSpec",
    "ParamSpec",
    "Resources",
    "SamplerSpec",
    "SchedulerSpec",
    "SearchSpace",
    "SearchSpaceError",
    "TpeSamplerSpec",
    "UniformParam",
    "available_spaces",
    "load_space",
    "space_from_dict",
]

#: Where bare names (``load_space("cpu-mini")``) are looked up: the repository's ``search_spaces/``.
SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"

#: A grid is checked setting by setting (every combination is a real trial) up to this size.
_MAX_GRID_CHECKS = 1024

Scalar = Union[None, bool, int, float, str]


class SearchSpaceError(ValueError):
    """A search space that does not validate; the message names the file and the key path."""


class _Issue(ValueError):
    """A validation problem at ``path`` below the model that raises it (pydantic keeps the
    original exception in the error's context, so the path survives into the final message)."""

    def __init__(self, path: str | tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path: tuple[str | int, ...] = (path,) if isinstance(path, str) else path
        self.message = message


class _Strict(BaseModel):
    """Base of every part of a space: strict types, finite floats, no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        # Checked here rather than by extra="forbid" alone, so the message can list what is allowed.
        if isinstance(data, Mapping):
            for key in data:
                if key not in cls.model_fields:
                    raise _Issue(str(key), unknown_key(str(key), cls.model_fields))
        return data


# -- sampled parameters --------------------------------------------------------------------------


class UniformParam(_Strict):
    """A float drawn uniformly from ``[low, high]``, optionally on a grid of ``step``."""

    distribution: Literal["uniform"]
    low: float
    high: float
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> UniformParam:
        _check_range(self.low, self.high)
        if self.step is not None and not _is_multiple(self.high - self.low, self.step):
            raise _Issue("step", _not_multiple(self.low, self.high, self.step))
        return self

    def probes(self) -> list[tuple[str, Any]]:
        """``(label, value)`` pairs that stand for the param when the space is validated."""
        return [("low", self.low), ("high", self.high), ("middle", (self.low + self.high) / 2)]

    def contains(self, value: Any) -> bool:
        """Whether the sampler could propose ``value`` (a starting point must lie in the space)."""
        if not is_finite(value) or not self.low <= value <= self.high:
            return False
        return self.step is None or _is_multiple(value - self.low, self.step)

    def to_optuna(self) -> optuna.distributions.BaseDistribution:
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, step=self.step)


class LogUniformParam(_Strict):
    """A positive float drawn log-uniformly from ``[low, high]`` (learning rates, loss weights)."""

    distribution: Literal["loguniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _check(self) -> LogUniformParam:
        if self.low <= 0:
            raise _Issue("low", f"must be > 0 for a log scale (got low={self.low})")
        _check_range(self.low, self.high)
        return self

    def probes(self) -> list[tuple[str, Any]]:
        return [("low", self.low), ("high", self.high), ("middle", math.sqrt(self.low * self.high))]

    def contains(self, value: Any) -> bool:
        return is_finite(value) and self.low <= value <= self.high

    def to_optuna(self) -> optuna.distributions.BaseDistribution:
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=True)


class IntParam(_Strict):
    """An integer from ``[low, high]`` in steps of ``step``; ``log: true`` samples on a log scale."""

    distribution: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        _check_range(self.low, self.high)
        if (self.high - self.low) % self.step:
            raise _Issue("step", _not_multiple(self.low, self.high, self.step))
        if self.log and self.low < 1:
            raise _Issue("low", f"must be >= 1 for a log scale (got low={self.low})")
        if self.log and self.step != 1:
            raise _Issue("step", "must be 1 with log: true (Optuna samples log-scaled integers without a step)")
        return self

    def probes(self) -> list[tuple[str, Any]]:
        return [("low", self.low), ("high", self.high)]

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
            and (value - self.low) % self.step == 0
        )

    def to_optuna(self) -> optuna.distributions.BaseDistribution:
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self.high, log=self.log, step=self.step)


class CategoricalParam(_Strict):
    """One of ``choices`` (scalars: Optuna stores choices as they are; use a grid for lists)."""

    distribution: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> CategoricalParam:
        _check_unique(self.choices, "choices")
        return self

    def probes(self) -> list[tuple[str, Any]]:
        return [(f"choices[{i}]", c) for i, c in enumerate(self.choices)]

    def contains(self, value: Any) -> bool:
        return any(_same(value, c) for c in self.choices)

    def to_optuna(self) -> optuna.distributions.BaseDistribution:
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(self.choices)


class GridParam(_Strict):
    """Every one of ``values``, each in its own trial (``sampler: {type: grid}`` only)."""

    distribution: Literal["grid"]
    values: list[Any] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> GridParam:
        _check_unique(self.values, "values")
        return self

    def probes(self) -> list[tuple[str, Any]]:
        return [(f"values[{i}]", v) for i, v in enumerate(self.values)]

    def contains(self, value: Any) -> bool:
        return any(_same(value, v) for v in self.values)


ParamSpec = Annotated[
    Union[UniformParam, LogUniformParam, IntParam, CategoricalParam, GridParam], Field(discriminator="distribution")
]
_Sampled = Union[UniformParam, LogUniformParam, IntParam, CategoricalParam, GridParam]


# -- budget, resources, scheduler, sampler ---------------------------------------------------------


class Budget(_Strict):
    num_samples: int = Field(1, ge=1)
    """Trials to run. With the grid sampler: how many times the whole grid runs (Ray Tune's meaning)."""
    max_epochs: int = Field(ge=1)
    """Every trial's ``epochs``, and ASHA's ``max_t``."""
    max_concurrent_trials: int | None = Field(None, ge=1)
    """``None``: as many as the cluster's resources allow."""
    time_budget_s: float | None = Field(None, gt=0)
    """Wall-clock limit of the whole search; ``None`` = no limit."""


class Resources(_Strict):
    """What one trial reserves (Ray's ``tune.with_resources``)."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)
    """Fractions below 1 share a GPU between trials (0.5: two per GPU)."""

    @model_validator(mode="after")
    def _check(self) -> Resources:
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise _Issue("gpu", f"must be a whole number above 1 (Ray shares fractions of one GPU only; got {self.gpu})")
        return self


class AshaSchedulerSpec(_Strict):
    """Asynchronous successive halving; rungs at ``grace_period * reduction_factor**k`` epochs."""

    type: Literal["asha"]
    grace_period: int = Field(ge=1)
    """Epochs every trial runs before it can be pruned."""
    reduction_factor: float = Field(3.0, gt=1)
    brackets: int = Field(1, ge=1)


class NoSchedulerSpec(_Strict):
    """Every trial runs to ``budget.max_epochs`` (unless the health monitor stops it)."""

    type: Literal["none"]


SchedulerSpec = Annotated[Union[AshaSchedulerSpec, NoSchedulerSpec], Field(discriminator="type")]


class TpeSamplerSpec(_Strict):
    """Optuna's TPE sampler, driven through Ray Tune's ``OptunaSearch``."""

    type: Literal["tpe"]
    seed: int | None = 0
    multivariate: bool = True
    """Model the parameters jointly (loss weights and learning rate interact)."""
    constant_liar: bool = True
    """Treat running trials as bad results so concurrent trials do not all sample the same region."""
    n_startup_trials: int = Field(10, ge=0)
    """Random trials (``points_to_evaluate`` count among them) before TPE takes over."""

    def build(self) -> optuna.samplers.TPESampler:
        """The configured ``optuna.samplers.TPESampler``."""
        from optuna.samplers import TPESampler

        return TPESampler(
            seed=self.seed,
            multivariate=self.multivariate,
            constant_liar=self.constant_liar,
            n_startup_trials=self.n_startup_trials,
        )


class GridSamplerSpec(_Strict):
    """Every combination of the ``grid`` params (Ray Tune's ``tune.grid_search``)."""

    type: Literal["grid"]


SamplerSpec = Annotated[Union[TpeSamplerSpec, GridSamplerSpec], Field(discriminator="type")]


# -- the space -------------------------------------------------------------------------------------


class SearchSpace(_Strict):
    """A validated search space; see the module docstring and ``search_spaces/*.yaml``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Also the default MLflow experiment name."""
    description: str = ""
    metric: str
    """A key of the trainer's per-epoch report, one of :data:`METRIC_MODES`; the official
    ``val/wider_*`` need ``eval.wider_ap: true`` in ``fixed``."""
    mode: Literal["max", "min"]
    budget: Budget
    resources: Resources = Resources()
    scheduler: SchedulerSpec
    sampler: SamplerSpec
    fixed: dict[str, Any] = {}
    """Dotted ``TrainConfig`` keys set the same in every trial."""
    params: dict[str, ParamSpec] = Field(min_length=1)
    """Dotted ``TrainConfig`` keys sampled per trial."""
    points_to_evaluate: list[dict[str, Any]] = []
    """Settings of every sampled key tried first, in order (TPE only)."""

    _source: str = PrivateAttr("<search space>")

    @property
    def source(self) -> str:
        """The file this space was loaded from (for messages)."""
        return self._source

    @property
    def num_trials(self) -> int:
        """How many trials the search starts: ``num_samples``, times the grid's size for a grid."""
        if isinstance(self.sampler, GridSamplerSpec):
            sizes = (len(cast(GridParam, p).values) for p in self.params.values())  # a grid has grid params only
            return self.budget.num_samples * math.prod(sizes)
        return self.budget.num_samples

    @model_validator(mode="after")
    def _check_space(self) -> SearchSpace:
        _check_metric(self.metric, self.mode)
        self._check_sampler_kinds()
        base = self._check_keys_and_fixed()
        self._check_metric_reported(base)
        self._check_params(base)
        self._check_points(base)
        self._check_scheduler(base)
        self._check_device(base)
        return self

    # -- the search's inputs ------------------------------------------------------------------------

    def optuna_distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """``{dotted key: optuna distribution}``, the ``space`` argument of ``OptunaSearch``."""
        grid = [k for k, p in self.params.items() if isinstance(p, GridParam)]
        if grid:
            raise SearchSpaceError(f"{self.source}: params.{grid[0]}: a grid param has no Optuna distribution; use grid()")
        # No grid param left (above): each is one with an Optuna distribution.
        sampled = cast("dict[str, UniformParam | LogUniformParam | IntParam | CategoricalParam]", self.params)
        return {key: spec.to_optuna() for key, spec in sampled.items()}

    def grid(self) -> dict[str, dict[str, list[Any]]]:
        """``{dotted key: tune.grid_search(values)}``, the ``param_space`` of a grid search."""
        from ray import tune

        not_grid = [k for k, p in self.params.items() if not isinstance(p, GridParam)]
        if not_grid:
            raise SearchSpaceError(
                f"{self.source}: params.{not_grid[0]}: only grid params make a grid; use optuna_distributions()"
            )
        # Grid params only (above); grid_search wraps the list it is given: {"grid_search": values}.
        params = cast("dict[str, GridParam]", self.params)
        return {key: cast("dict[str, list[Any]]", tune.grid_search(list(spec.values))) for key, spec in params.items()}

    def trial_config(self, sampled: Mapping[str, Any]) -> TrainConfig:
        """The trial's ``TrainConfig``: defaults, then ``fixed``, then ``sampled``, and ``epochs``
        set to ``budget.max_epochs``. ``sampled`` must hold exactly the keys of ``params``."""
        missing = [k for k in self.params if k not in sampled]
        extra = [k for k in sampled if k not in self.params]
        if missing or extra:
            parts = [f"missing sampled keys {missing}"] if missing else []
            parts += [f"keys that are not params {extra}"] if extra else []
            raise SearchSpaceError(f"{self.source}: trial config: {'; '.join(parts)}")
        try:
            return TrainConfig().with_overrides({**self.fixed, **sampled, "epochs": self.budget.max_epochs})
        except ConfigError as exc:
            raise SearchSpaceError(f"{self.source}: trial config {dict(sampled)}: {_config_problem(exc)}") from None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict that loads back into the same space."""
        return self.model_dump(mode="json")

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The space as YAML (written to ``path`` when given), e.g. for the search's parent run."""
        text = yaml.safe_dump(self.as_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    # -- checks across sections -------------------------------------------------------------------

    def _check_sampler_kinds(self) -> None:
        grid = isinstance(self.sampler, GridSamplerSpec)
        for key, spec in self.params.items():
            if grid != isinstance(spec, GridParam):
                wanted = "grid" if grid else "uniform, loguniform, int or categorical"
                raise _Issue(
                    ("params", key, "distribution"),
                    f"the {self.sampler.type} sampler needs distribution: {wanted} (got {spec.distribution})",
                )
        if grid and self.points_to_evaluate:
            raise _Issue("points_to_evaluate", "a grid runs every setting anyway; starting points are for tpe")

    def _check_keys_and_fixed(self) -> TrainConfig:
        """Every key names a leaf of ``TrainConfig``; return the config with ``fixed`` applied."""
        for section in ("fixed", "params"):
            for key in getattr(self, section):
                if key == "epochs":
                    raise _Issue((section, key), "is set by budget.max_epochs")
                try:
                    field_at(TrainConfig, key)
                except KeyPathError as exc:
                    raise _Issue((section, key), str(exc)) from None
        for key in self.params:
            if key in self.fixed:
                raise _Issue(("params", key), "is also in fixed: a key is either fixed or sampled")
        for key, value in self.fixed.items():
            _build({key: value}, ("fixed", key), key)
        return _build(self.fixed, ("fixed",), None)

    def _check_metric_reported(self, base: TrainConfig) -> None:
        """The official WIDER FACE metrics are numbers in a trial's report only with ``eval.wider_ap``
        on (``None`` otherwise, which the trial could not report as its metric): it must be fixed on."""
        if self.metric not in VAL_WIDER_KEYS:
            return
        if "eval.wider_ap" in self.params or not base.eval.wider_ap:
            needs = "the data needs the official .mat ground truth"
            raise _Issue("metric", f"{self.metric} is reported only with eval.wider_ap: true in fixed ({needs})")

    def _check_params(self, base: TrainConfig) -> None:
        """Each bound, choice and grid value must make a valid ``TrainConfig`` with ``fixed``."""
        for key, spec in self.params.items():
            if isinstance(spec, (UniformParam, LogUniformParam)) and _is_int_field(field_at(TrainConfig, key)):
                raise _Issue(("params", key, "distribution"), f"{key} is an integer setting: use distribution: int")
            for label, value in spec.probes():
                _build({key: value}, ("params", key, label), key, base)
        if isinstance(self.sampler, GridSamplerSpec):
            grid = {k: p.probes() for k, p in self.params.items()}
            if math.prod(len(v) for v in grid.values()) <= _MAX_GRID_CHECKS:
                for combo in itertools.product(*grid.values()):
                    setting = {k: value for k, (_, value) in zip(grid, combo)}
                    _build(setting, ("params",), None, base, what=f"the grid setting {setting}")

    def _check_points(self, base: TrainConfig) -> None:
        if len(self.points_to_evaluate) > self.budget.num_samples:
            raise _Issue(
                "points_to_evaluate",
                f"{len(self.points_to_evaluate)} points but budget.num_samples is {self.budget.num_samples}: "
                "the extra points would never run",
            )
        for i, point in enumerate(self.points_to_evaluate):
            missing = [k for k in self.params if k not in point]
            if missing:
                message = f"misses the sampled key(s) {', '.join(missing)}: a point sets every param"
                raise _Issue(("points_to_evaluate", i), message)
            for key, value in point.items():
                spec = self.params.get(key)
                if spec is None:
                    fixed = key in self.fixed
                    why = "is fixed, not sampled" if fixed else f"is not a sampled param{did_you_mean(key, self.params)}"
                    raise _Issue(("points_to_evaluate", i, key), why)
                if not spec.contains(value):
                    message = f"{value!r} lies outside the param's {_describe(spec)}"
                    raise _Issue(("points_to_evaluate", i, key), message)
            _build(point, ("points_to_evaluate", i), None, base)

    def _check_scheduler(self, base: TrainConfig) -> None:
        if not isinstance(self.scheduler, AshaSchedulerSpec):
            return
        grace = self.scheduler.grace_period
        if grace > self.budget.max_epochs:
            raise _Issue(("scheduler", "grace_period"), f"{grace} exceeds budget.max_epochs ({self.budget.max_epochs})")
        longest, where = self._longest_warmup(base)
        if longest > grace:
            raise _Issue(
                ("scheduler", "grace_period"),
                f"{grace} epoch(s) is shorter than the longest warm-up, {longest:.3g} epochs ({where}): ASHA would "
                "compare trials that are still warming up; raise grace_period or shorten the warm-up",
            )

    def _longest_warmup(self, base: TrainConfig) -> tuple[float, str]:
        """The longest learning-rate warm-up or loss-weight ramp any trial can get, in epochs.

        ``schedule.warmup_epochs`` and ``schedule.loss_ramp_epochs`` are exact. Where a trial may
        fall back to ``schedule.warmup_iters``, its length in epochs depends on the dataset's size,
        which is unknown here; when ``data.max_train_images`` is set, ``iters / ceil(max_train_images
        / batch_size)`` is a lower bound on it (a smaller set only lengthens the warm-up) and is
        checked, otherwise iteration-based warm-ups are not checked.
        """
        candidates: list[tuple[float, str]] = [(0.0, "none")]
        epochs = self._candidates("schedule.warmup_epochs", base)
        candidates += [(v, w) for v, w in epochs if v is not None]
        candidates += self._candidates("schedule.loss_ramp_epochs", base)
        if any(v is None for v, _ in epochs):
            images = [v for v, _ in self._candidates("data.max_train_images", base)]
            if None not in images:
                batch = min(v for v, _ in self._candidates("batch_size", base))
                iters_per_epoch = math.ceil(max(images) / batch)
                for iters, where in self._candidates("schedule.warmup_iters", base):
                    how = f"{where}: {iters} iterations at most {iters_per_epoch} per epoch"
                    candidates.append((iters / iters_per_epoch, how))
        return max(candidates, key=lambda c: c[0])

    def _candidates(self, key: str, base: TrainConfig) -> list[tuple[Any, str]]:
        """Every value ``key`` can take in a trial (``base``: the config with ``fixed`` applied),
        with where it comes from."""
        if key in self.params:
            return [(v, f"params.{key}.{label}") for label, v in self.params[key].probes()]
        value = get_dotted(base, key)
        return [(value, f"fixed.{key}" if key in self.fixed else f"the default {key}")]

    def _check_device(self, base: TrainConfig) -> None:
        devices = {v for v, _ in self._candidates("device", base)}
        if self.resources.gpu == 0 and "cuda" in devices:
            message = "is 0 but trials run on device cuda: Ray hides GPUs from trials that reserve none"
            raise _Issue(("resources", "gpu"), message)
        if self.resources.gpu > 0 and devices == {"cpu"}:
            message = f"reserves {self.resources.gpu} GPU per trial but trials run on device cpu"
            raise _Issue(("resources", "gpu"), message)


# -- loading ---------------------------------------------------------------------------------------


def available_spaces() -> list[str]:
    """Names of the spaces shipped in ``search_spaces/``."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(path_or_name: str | Path) -> SearchSpace:
    """Load and validate a search space: a YAML path, or a bare name in ``search_spaces/``.

    Raises:
        SearchSpaceError: the file is missing, not YAML, or does not validate.
    """
    path = _resolve(path_or_name)
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)
    except FileNotFoundError:
        raise SearchSpaceError(f"{path}: no such search space file") from None
    except yaml.YAMLError as exc:
        raise SearchSpaceError(f"{path}: not valid YAML: {exc}") from None
    return space_from_dict(raw, source=str(path))


def space_from_dict(raw: Any, source: str = "<search space>") -> SearchSpace:
    """Validate a parsed search space; errors read ``<source>: <key path>: <problem>``."""
    if not isinstance(raw, Mapping):
        raise SearchSpaceError(f"{source}: expected a mapping of sections at the top level (got {type(raw).__name__})")
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as exc:
        raise SearchSpaceError(_explain(exc, raw, source)) from None
    space._source = source
    return space


def _resolve(path_or_name: str | Path) -> Path:
    path = Path(path_or_name)
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1 or path.exists():
        return path
    candidate = SPACES_DIR / f"{path}.yaml"
    if not candidate.exists():
        names = available_spaces()
        raise SearchSpaceError(
            f"{path_or_name}: no search space of that name in {SPACES_DIR}{did_you_mean(str(path), names)}; "
            f"available: {', '.join(names) or 'none'}"
        )
    return candidate


class _Loader(yaml.SafeLoader):
    """PyYAML implements YAML 1.1, where ``1e-3`` (no dot) is a string; accept it as a float as
    YAML 1.2 does, since learning rates are written that way."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


# -- helpers ---------------------------------------------------------------------------------------


def _check_metric(metric: str, mode: str) -> None:
    wanted = METRIC_MODES.get(metric)
    if wanted is None:
        hint = did_you_mean(metric, METRIC_MODES)
        raise _Issue("metric", f"{metric!r} is not a metric a search can optimise{hint}; one of: {', '.join(METRIC_MODES)}")
    if mode != wanted:
        direction = "maximised" if wanted == "max" else "minimised"
        raise _Issue("mode", f"{metric} is {direction}: mode must be {wanted} (got {mode})")


def _check_range(low: float, high: float) -> None:
    if low >= high:
        raise _Issue("low", f"must be < high (got low={low}, high={high}); a constant belongs in fixed")


def _not_multiple(low: float, high: float, step: float) -> str:
    return f"high - low must be a multiple of step (got low={low}, high={high}, step={step})"


def _check_unique(items: list[Any], field: str) -> None:
    for i, item in enumerate(items):
        if any(_same(item, other) for other in items[:i]):
            raise _Issue((field, i), f"duplicate {item!r}")


def _is_multiple(value: float, step: float) -> bool:
    ratio = value / step
    return math.isclose(ratio, round(ratio), rel_tol=1e-9, abs_tol=1e-9)


def _same(a: Any, b: Any) -> bool:
    """Equality that does not confuse ``True`` with ``1``."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _describe(spec: _Sampled) -> str:
    if isinstance(spec, (UniformParam, LogUniformParam, IntParam)):
        step = getattr(spec, "step", None)
        kind = "integer " if isinstance(spec, IntParam) else ""
        return f"{kind}range [{spec.low}, {spec.high}]" + (f" in steps of {step}" if step not in (None, 1) else "")
    return f"choices {spec.choices}" if isinstance(spec, CategoricalParam) else f"values {spec.values}"


def _is_int_field(field: FieldInfo) -> bool:
    kinds = set(get_args(field.annotation) or (field.annotation,)) - {type(None)}
    return int in kinds and float not in kinds


def _build(
    overrides: dict[str, Any],
    path: tuple[str | int, ...],
    key: str | None,
    base: TrainConfig | None = None,
    what: str | None = None,
) -> TrainConfig:
    """``base.with_overrides(overrides)``, its ``ConfigError`` turned into an issue at ``path``."""
    try:
        return (base or TrainConfig()).with_overrides(overrides)
    except ConfigError as exc:
        problem = _config_problem(exc, key)
        raise _Issue(path, f"{what}: {problem}" if what else problem) from None


def _config_problem(exc: ConfigError, key: str | None = None) -> str:
    """The lines of a ``ConfigError`` without its header (and without ``key:`` when it is the subject)."""
    lines = [line.strip().replace("Value error, ", "") for line in str(exc).splitlines()[1:]] or [str(exc)]
    if key is not None:
        lines = [line.removeprefix(f"{key}: ") for line in lines]
    return "; ".join(lines)


def _explain(exc: ValidationError, raw: Any, source: str) -> str:
    """One ``<source>: <path>: <problem>`` line per pydantic error, with discriminator tags dropped."""
    lines = []
    for err in exc.errors():
        path = _strip_tags(err["loc"], raw)
        ctx = err.get("ctx") or {}
        issue = ctx.get("error")
        if isinstance(issue, _Issue):
            path += issue.path
            message = issue.message
        elif err["type"] == "union_tag_invalid":
            field = ctx["discriminator"].strip("'")
            path += (field,)
            message = f"unknown {field} {ctx['tag']!r}; expected one of: {ctx['expected_tags'].replace(chr(39), '')}"
        elif err["type"] == "union_tag_not_found":
            field = ctx["discriminator"].strip("'")
            path += (field,)
            message = "missing"
        elif err["type"] == "missing":
            message = "missing"
        elif err["type"] == "too_short":
            message = "must not be empty"
        elif err["type"] in ("model_type", "model_attributes_type", "dict_type"):
            message = f"expected a mapping (got {err['input']!r})"
        else:
            message = error_message(err)
        lines.append(f"{source}: {dotted_path(path) or '<top level>'}: {message}")
    return "\n".join(lines)


def _strip_tags(loc: tuple[str | int, ...], raw: Any) -> tuple[str | int, ...]:
    """Drop the union tags pydantic inserts into error locations (``params.x.loguniform.low``)."""
    out: list[str | int] = []
    node = raw
    for part in loc:
        if isinstance(node, Mapping) and part not in node and part in (node.get("distribution"), node.get("type")):
            continue
        out.append(part)
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(out)
