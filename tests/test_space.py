"""Search spaces: the shipped YAML files, validation errors that name the key, and the real
Optuna / Ray Tune objects built from a space."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.variant_generator import generate_variants

from hpo.space import (
    METRIC_MODES,
    SPACES_DIR,
    CategoricalParam,
    IntParam,
    LogUniformParam,
    SearchSpace,
    SearchSpaceError,
    UniformParam,
    available_spaces,
    load_space,
)
from model.config import TrainConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)

SHIPPED = ("cpu-demo", "cpu-mini", "widerface-gpu", "seed-study-sweep")
#: The seed study's sweep, as its paper lists it (class weight 1.0 throughout).
STUDY_BOX_WEIGHTS = [0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]


def _valid() -> dict[str, Any]:
    """A small valid space that malformed cases mutate."""
    return {
        "name": "t",
        "metric": "val/ap",
        "mode": "max",
        "budget": {"num_samples": 4, "max_epochs": 6},
        "resources": {"cpu": 1, "gpu": 0},
        "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 3},
        "sampler": {"type": "tpe", "seed": 0, "n_startup_trials": 2},
        "fixed": {"model.backbone": "tiny", "batch_size": 16},
        "params": {
            "optim.lr": {"distribution": "loguniform", "low": 1e-3, "high": 0.1},
            "schedule.warmup_epochs": {"distribution": "uniform", "low": 0.0, "high": 2.0},
            "loss.neg_pos_ratio": {"distribution": "int", "low": 1, "high": 9, "step": 2},
            "loss.box_loss": {"distribution": "categorical", "choices": ["smooth_l1", "giou"]},
        },
        "points_to_evaluate": [
            {"optim.lr": 0.01, "schedule.warmup_epochs": 1.0, "loss.neg_pos_ratio": 3, "loss.box_loss": "giou"}
        ],
    }


def _write(tmp_path: Path, raw: Any, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _samples(space: SearchSpace) -> list[dict[str, Any]]:
    """Settings at the edges of every param: all lows, all highs, and each choice in turn."""
    lows, highs = {}, {}
    for key, spec in space.params.items():
        if isinstance(spec, (UniformParam, LogUniformParam, IntParam)):
            lows[key], highs[key] = spec.low, spec.high
        else:
            options = spec.choices if isinstance(spec, CategoricalParam) else spec.values
            lows[key], highs[key] = options[0], options[-1]
    samples = [lows, highs]
    for key, spec in space.params.items():
        for option in getattr(spec, "choices", None) or getattr(spec, "values", None) or []:
            samples.append({**lows, key: option})
    return samples


# -- the shipped spaces ----------------------------------------------------------------------------


def test_every_shipped_space_is_tested() -> None:
    assert sorted(available_spaces()) == sorted(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_builds_trial_configs_at_its_bounds(name: str) -> None:
    space = load_space(SPACES_DIR / f"{name}.yaml")
    assert space.name == name
    for sampled in _samples(space):
        cfg = space.trial_config(sampled)
        assert isinstance(cfg, TrainConfig)
        assert cfg.epochs == space.budget.max_epochs
        for key, value in {**space.fixed, **sampled}.items():
            section, _, leaf = key.rpartition(".")
            got = getattr(getattr(cfg, section) if section else cfg, leaf)
            assert got == value or str(got) == str(value), key  # Path fields compare as text
    for point in space.points_to_evaluate:
        space.trial_config(point)


def test_cpu_mini_is_a_tpe_asha_search_with_a_baseline() -> None:
    space = load_space("cpu-mini")
    assert space.sampler.type == "tpe" and space.scheduler.type == "asha"
    assert space.resources.gpu == 0 and space.points_to_evaluate
    assert space.scheduler.grace_period >= space.params["schedule.warmup_epochs"].high
    assert space.fixed["model.backbone"] == "tiny" and 128 <= space.fixed["model.input_size"] <= 192


def test_the_default_search_is_the_cpu_demo_whose_first_point_is_its_recipe() -> None:
    """``python hpo/search.py`` runs cpu-demo: the recipe of bench/results/demo_recipe.md first (AdamW
    lr 2e-3, weight decay 1.0), a known divergence second (SGD lr 1 without warm-up), every trial at most 12 epochs."""
    from hpo.search import parse_args

    assert parse_args([]).space == "cpu-demo"
    space = load_space("cpu-demo")
    assert space.sampler.type == "tpe" and space.scheduler.type == "asha" and space.budget.max_epochs == 12
    assert space.scheduler.grace_period >= space.params["schedule.warmup_epochs"].high
    recipe, failure = (space.trial_config(point) for point in space.points_to_evaluate)
    assert (recipe.optim.optimizer, recipe.optim.lr, recipe.schedule.warmup_epochs) == ("adamw", 2e-3, 1.0)
    assert recipe.optim.weight_decay == 1.0 and failure.optim.weight_decay == 5e-4  # AdamW's decay is decoupled
    assert (recipe.loss.match_iou, recipe.data.min_face_size, recipe.augment.zoom_out) == (0.35, 10, False)
    assert recipe.eval.score_threshold == 0.4 and recipe.data.max_train_images == 400
    assert (failure.optim.optimizer, failure.optim.lr, failure.schedule.warmup_epochs) == ("sgd", 1.0, 0.0)


def test_widerface_gpu_uses_real_data_on_gpus() -> None:
    space = load_space("widerface-gpu")
    assert space.fixed["data.source"] == "wider" and space.resources.gpu > 0
    assert space.fixed["model.backbone"] in ("mobilenet_v3", "vgg16")
    assert space.scheduler.grace_period >= space.params["schedule.warmup_epochs"].high


def test_widerface_gpu_optimises_the_official_hard_ap_on_all_of_val() -> None:
    space = load_space("widerface-gpu")
    assert (space.metric, space.mode) == ("val/wider_hard", "max")
    assert space.fixed["eval.wider_ap"] is True and space.fixed["eval.wider_subset"] is None


@pytest.mark.parametrize("metric", ["val/wider_easy", "val/wider_medium", "val/wider_hard"])
def test_official_metrics_are_searchable_with_eval_wider_ap_fixed_on(tmp_path: Path, metric: str) -> None:
    raw = _valid()
    raw["metric"] = metric
    raw["fixed"].update({"eval.wider_ap": True, "eval.wider_subset": 200})
    space = load_space(_write(tmp_path, raw))
    assert space.metric == metric and METRIC_MODES[metric] == "max"
    assert space.trial_config(space.points_to_evaluate[0]).eval.wider_subset == 200


def test_seed_study_grid_is_the_nine_setting_sweep() -> None:
    space = load_space("seed-study-sweep")
    assert space.scheduler.type == "none" and space.num_trials == 9
    variants = [config for _, config in generate_variants(space.grid())]
    assert [v["loss.box_weight"] for v in variants] == STUDY_BOX_WEIGHTS
    for variant in variants:
        cfg = space.trial_config(variant)
        assert cfg.loss.class_weight == 1.0 and cfg.loss.box_weight == variant["loss.box_weight"]
        assert cfg.epochs == space.budget.max_epochs


def test_load_by_bare_name_finds_the_repository_file() -> None:
    by_name = load_space("cpu-mini")
    assert Path(by_name.source) == Path(__file__).resolve().parents[1] / "search_spaces" / "cpu-mini.yaml"
    assert by_name.as_dict() == load_space(SPACES_DIR / "cpu-mini.yaml").as_dict()
    unknown = r"cpu-mni: no search space of that name.*'cpu-mini'.*available: .*seed-study-sweep"
    with pytest.raises(SearchSpaceError, match=unknown):
        load_space("cpu-mni")


def test_yaml_round_trip(tmp_path: Path) -> None:
    space = load_space("widerface-gpu")
    path = tmp_path / "copy.yaml"
    text = space.to_yaml(path)
    assert path.read_text() == text
    assert load_space(path).as_dict() == space.as_dict()


def test_exponents_without_a_dot_are_numbers(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML) reads 1e-3 as a string; a space file must not depend on writing 1.0e-3.
    text = _write(tmp_path, _valid()).read_text().replace("low: 0.001", "low: 1e-3")
    assert "1e-3" in text
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    assert load_space(path).params["optim.lr"].low == 0.001


def test_metric_modes_are_keys_of_the_trainer_report() -> None:
    from model.report_keys import VAL_KEYS

    assert set(METRIC_MODES) <= set(VAL_KEYS)


# -- malformed spaces ------------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _parent(raw: dict[str, Any], path: str) -> tuple[Any, str]:
    """The container and last key of a ``/``-separated path (dotted config keys stay whole)."""
    *parents, leaf = path.split("/")
    node: Any = raw
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, leaf


def _set(path: str, value: Any) -> Mutation:
    def mutate(raw: dict[str, Any]) -> None:
        node, leaf = _parent(raw, path)
        node[leaf] = value

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(raw: dict[str, Any]) -> None:
        node, leaf = _parent(raw, path)
        del node[leaf]

    return mutate


def _both(*mutations: Mutation) -> Mutation:
    def mutate(raw: dict[str, Any]) -> None:
        for m in mutations:
            m(raw)

    return mutate


LR = "params/optim.lr"
MALFORMED: dict[str, tuple[Mutation, str, str]] = {
    # case: (mutation, the key path the message names, a fragment of the problem)
    "unknown top-level key": (_set("paramz", {}), "paramz", "unknown key (did you mean 'params'?)"),
    "unknown budget key": (_set("budget/num_sample", 3), "budget.num_sample", "unknown key"),
    "unknown param key": (_set(f"{LR}/lo", 0.1), "params.optim.lr.lo", "allowed keys here: distribution, low, high"),
    "unknown scheduler key": (
        _set("scheduler/grace", 2),
        "scheduler.grace",
        "unknown key (did you mean 'grace_period'?)",
    ),
    "missing section": (_delete("budget"), "budget", "missing"),
    "missing bound": (_delete(f"{LR}/high"), "params.optim.lr.high", "missing"),
    "wrong type budget": (_set("budget/num_samples", "many"), "budget.num_samples", "valid integer"),
    "wrong type bound": (_set(f"{LR}/low", "small"), "params.optim.lr.low", "valid number"),
    "fractional int bound": (_set("params/loss.neg_pos_ratio/high", 9.5), "params.loss.neg_pos_ratio.high", "integer"),
    "param not a mapping": (_set(LR, 0.01), "params.optim.lr", "expected a mapping"),
    "empty range": (_set(f"{LR}/low", 0.5), "params.optim.lr.low", "must be < high (got low=0.5, high=0.1)"),
    "equal bounds": (
        _set("params/schedule.warmup_epochs/low", 2.0),
        "params.schedule.warmup_epochs.low",
        "must be < high",
    ),
    "log scale from zero": (_set(f"{LR}/low", 0.0), "params.optim.lr.low", "must be > 0"),
    "infinite bound": (_set(f"{LR}/high", math.inf), "params.optim.lr.high", "finite"),
    "step not dividing": (
        _set("params/loss.neg_pos_ratio/step", 3),
        "params.loss.neg_pos_ratio.step",
        "multiple of step",
    ),
    "empty choices": (_set("params/loss.box_loss/choices", []), "params.loss.box_loss.choices", "must not be empty"),
    "duplicate choice": (
        _set("params/loss.box_loss/choices", ["giou", "giou"]),
        "params.loss.box_loss.choices[1]",
        "duplicate",
    ),
    "unknown distribution": (
        _set(f"{LR}/distribution", "normal"),
        "params.optim.lr.distribution",
        "unknown distribution 'normal'",
    ),
    "missing distribution": (_delete(f"{LR}/distribution"), "params.optim.lr.distribution", "missing"),
    "no params": (_set("params", {}), "params", "must not be empty"),
    "fixed key not in TrainConfig": (
        _set("fixed/loss.box_wieght", 1.0),
        "fixed.loss.box_wieght",
        "not a TrainConfig key",
    ),
    "fixed section not in TrainConfig": (
        _set("fixed/los.box_weight", 1.0),
        "fixed.los.box_weight",
        "no 'los' (did you mean 'loss'?)",
    ),
    "param key not in TrainConfig": (
        _both(
            _set("params/optim.learning_rate", {"distribution": "uniform", "low": 0.1, "high": 0.2}),
            _delete("points_to_evaluate"),
        ),
        "params.optim.learning_rate",
        "not a TrainConfig key",
    ),
    "section as a key": (_set("fixed/loss", {"box_weight": 1.0}), "fixed.loss", "is a section"),
    "setting used as a section": (_set("fixed/seed.value", 1), "fixed.seed.value", "is a setting, not a section"),
    "fixed value the config rejects": (
        _set("fixed/model.backbone", "resnet"),
        "fixed.model.backbone",
        "'tiny', 'mobilenet_v3' or 'vgg16'",
    ),
    "fixed values that clash": (
        _both(_set("fixed/loss.class_weight", 0.0), _set("fixed/loss.box_weight", 0.0)),
        "fixed",
        "loss: class_weight and box_weight cannot both be 0",
    ),
    "choice the config rejects": (
        _set("params/loss.box_loss/choices", ["smooth_l1", "huber"]),
        "params.loss.box_loss.choices[1]",
        "'smooth_l1', 'giou', 'diou' or 'ciou'",
    ),
    "bound the config rejects": (
        _set("params/schedule.warmup_epochs/low", -1.0),
        "params.schedule.warmup_epochs.low",
        "greater than or equal to 0",
    ),
    "float range on an integer key": (
        _both(
            _set("params/batch_size", {"distribution": "uniform", "low": 8, "high": 32}),
            _delete("fixed/batch_size"),
            _delete("points_to_evaluate"),
        ),
        "params.batch_size.distribution",
        "use distribution: int",
    ),
    "fixed and sampled": (_set("fixed/optim.lr", 0.01), "params.optim.lr", "is also in fixed"),
    "epochs fixed": (_set("fixed/epochs", 3), "fixed.epochs", "budget.max_epochs"),
    "point misses a param": (
        _delete("points_to_evaluate/0/optim.lr"),
        "points_to_evaluate[0]",
        "misses the sampled key(s) optim.lr",
    ),
    "point outside range": (
        _set("points_to_evaluate/0/optim.lr", 0.5),
        "points_to_evaluate[0].optim.lr",
        "outside the param's range [0.001, 0.1]",
    ),
    "point off the step grid": (
        _set("points_to_evaluate/0/loss.neg_pos_ratio", 4),
        "points_to_evaluate[0].loss.neg_pos_ratio",
        "in steps of 2",
    ),
    "point not a choice": (
        _set("points_to_evaluate/0/loss.box_loss", "diou"),
        "points_to_evaluate[0].loss.box_loss",
        "outside the param's choices",
    ),
    "point sets a fixed key": (
        _set("points_to_evaluate/0/batch_size", 8),
        "points_to_evaluate[0].batch_size",
        "is fixed, not sampled",
    ),
    "more points than trials": (
        _set("points_to_evaluate", _valid()["points_to_evaluate"] * 5),
        "points_to_evaluate",
        "never run",
    ),
    "metric typo": (
        _set("metric", "val/AP"),
        "metric",
        "'val/AP' is not a metric a search can optimise (did you mean 'val/ap'?)",
    ),
    "official metric without eval.wider_ap": (
        _set("metric", "val/wider_hard"),
        "metric",
        "val/wider_hard is reported only with eval.wider_ap: true in fixed",
    ),
    "official metric with eval.wider_ap sampled": (
        _both(
            _set("metric", "val/wider_medium"),
            _set("params/eval.wider_ap", {"distribution": "categorical", "choices": [True, False]}),
            _delete("points_to_evaluate"),
        ),
        "metric",
        "val/wider_medium is reported only with eval.wider_ap: true in fixed",
    ),
    "the subset's size is no metric": (_set("metric", "val/wider_images"), "metric", "not a metric a search can optimise"),
    "mode typo": (_set("mode", "maximize"), "mode", "'max' or 'min'"),
    "mode against the metric": (_set("mode", "min"), "mode", "mode must be max"),
    "grid param with tpe": (
        _set(f"{LR}", {"distribution": "grid", "values": [0.01, 0.1]}),
        "params.optim.lr.distribution",
        "tpe sampler needs",
    ),
    "tpe params with a grid sampler": (
        _set("sampler", {"type": "grid"}),
        "params.optim.lr.distribution",
        "grid sampler needs distribution: grid",
    ),
    "unknown sampler": (_set("sampler/type", "cmaes"), "sampler.type", "unknown type 'cmaes'"),
    "unknown scheduler": (_set("scheduler/type", "hyperband"), "scheduler.type", "unknown type 'hyperband'"),
    "grace shorter than warm-up": (
        _set("scheduler/grace_period", 1),
        "scheduler.grace_period",
        "shorter than the longest warm-up, 2 epochs (params.schedule.warmup_epochs.high)",
    ),
    "grace shorter than loss ramp": (
        _set("fixed/schedule.loss_ramp_epochs", 3.0),
        "scheduler.grace_period",
        "fixed.schedule.loss_ramp_epochs",
    ),
    "grace shorter than an iteration warm-up": (
        _both(
            _delete("params/schedule.warmup_epochs"),
            _delete("points_to_evaluate"),
            _set("fixed/data.max_train_images", 160),
            _set("fixed/schedule.warmup_iters", 50),
        ),
        "scheduler.grace_period",
        "50 iterations at most 10 per epoch",
    ),
    "grace beyond the budget": (
        _set("budget/max_epochs", 1),
        "scheduler.grace_period",
        "exceeds budget.max_epochs (1)",
    ),
    "cuda without a gpu": (_set("fixed/device", "cuda"), "resources.gpu", "device cuda"),
    "fractional gpus above one": (_set("resources/gpu", 1.5), "resources.gpu", "whole number"),
    "bad name": (_set("name", "my search!"), "name", "pattern"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_space_names_the_key(tmp_path: Path, case: str) -> None:
    mutate, key_path, fragment = MALFORMED[case]
    raw = copy.deepcopy(_valid())
    mutate(raw)
    path = _write(tmp_path, raw)
    with pytest.raises(SearchSpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert f"{path}: {key_path}: " in message, message
    assert fragment in message, message


def test_the_unmutated_space_is_valid(tmp_path: Path) -> None:
    # Guards the malformed cases: each fails because of its mutation, not the base.
    assert load_space(_write(tmp_path, _valid())).num_trials == 4


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("name: [unclosed", "not valid YAML"),
        ("- a list", "expected a mapping of sections"),
        ("", "expected a mapping of sections"),
    ],
)
def test_file_that_is_not_a_space(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SearchSpaceError, match=fragment):
        load_space(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SearchSpaceError, match="no such search space file"):
        load_space(tmp_path / "none.yaml")


# -- from a space to the search --------------------------------------------------------------------


def _every_kind(tmp_path: Path) -> SearchSpace:
    raw = _valid()
    raw["params"]["loss.box_weight"] = {"distribution": "uniform", "low": 0.5, "high": 2.0, "step": 0.25}
    raw["params"]["data.max_train_images"] = {"distribution": "int", "low": 16, "high": 256, "log": True}
    raw["points_to_evaluate"][0].update({"loss.box_weight": 1.25, "data.max_train_images": 64})
    return load_space(_write(tmp_path, raw))


def test_optuna_distributions_match_the_specs(tmp_path: Path) -> None:
    dists = _every_kind(tmp_path).optuna_distributions()
    assert dists == {
        "optim.lr": FloatDistribution(1e-3, 0.1, log=True),
        "schedule.warmup_epochs": FloatDistribution(0.0, 2.0),
        "loss.neg_pos_ratio": IntDistribution(1, 9, step=2),
        "loss.box_loss": CategoricalDistribution(["smooth_l1", "giou"]),
        "loss.box_weight": FloatDistribution(0.5, 2.0, step=0.25),
        "data.max_train_images": IntDistribution(16, 256, log=True),
    }


def test_optuna_search_honours_points_then_samples_inside_the_bounds(tmp_path: Path) -> None:
    space = _every_kind(tmp_path)
    searcher = OptunaSearch(
        space=space.optuna_distributions(),
        metric=space.metric,
        mode=space.mode,
        sampler=space.sampler.build(),
        points_to_evaluate=space.points_to_evaluate,
    )
    first = searcher.suggest("t0")
    # Dotted names reach the trial whole: neither Optuna nor Tune's "/" unflattening splits them.
    assert first == space.points_to_evaluate[0]
    searcher.on_trial_complete("t0", {space.metric: 0.1})
    for i in range(1, 8):  # past n_startup_trials: TPE proposes the later ones
        config = searcher.suggest(f"t{i}")
        assert set(config) == set(space.params)
        for key, value in config.items():
            assert space.params[key].contains(value), (key, value)
        cfg = space.trial_config(config)
        assert cfg.optim.lr == config["optim.lr"] and cfg.loss.box_loss == config["loss.box_loss"]
        searcher.on_trial_complete(f"t{i}", {space.metric: config["optim.lr"]})


def test_tpe_sampler_is_seeded_from_the_space(tmp_path: Path) -> None:
    space = _every_kind(tmp_path)

    def suggestions(seed: int) -> list[dict[str, Any]]:
        sampler = space.sampler.model_copy(update={"seed": seed}).build()
        searcher = OptunaSearch(space=space.optuna_distributions(), metric=space.metric, mode=space.mode, sampler=sampler)
        out = []
        for i in range(4):
            out.append(searcher.suggest(f"t{i}"))
            searcher.on_trial_complete(f"t{i}", {space.metric: float(i)})
        return out

    assert suggestions(0) == suggestions(0)
    assert suggestions(0) != suggestions(1)


def test_grid_and_optuna_refuse_the_other_kind(tmp_path: Path) -> None:
    with pytest.raises(SearchSpaceError, match="params.optim.lr: only grid params"):
        load_space(_write(tmp_path, _valid())).grid()
    with pytest.raises(SearchSpaceError, match="params.loss.box_weight: a grid param"):
        load_space("seed-study-sweep").optuna_distributions()


def test_trial_config_takes_exactly_the_sampled_keys() -> None:
    space = load_space("cpu-mini")
    point = dict(space.points_to_evaluate[0])
    cfg = space.trial_config(point)
    assert cfg.epochs == space.budget.max_epochs and cfg.data.max_train_images == space.fixed["data.max_train_images"]
    with pytest.raises(SearchSpaceError, match=r"missing sampled keys \['optim.lr'\]"):
        space.trial_config({k: v for k, v in point.items() if k != "optim.lr"})
    with pytest.raises(SearchSpaceError, match=r"keys that are not params \['batch_size'\]"):
        space.trial_config({**point, "batch_size": 4})


def test_trial_config_reports_what_the_config_rejects(tmp_path: Path) -> None:
    raw = _valid()
    raw["params"]["loss.class_weight"] = {"distribution": "categorical", "choices": [0.0, 1.0]}
    raw["params"]["loss.box_weight"] = {"distribution": "categorical", "choices": [0.0, 1.0]}
    del raw["points_to_evaluate"]
    space = load_space(_write(tmp_path, raw))  # each choice alone is valid...
    sampled = {"optim.lr": 0.01, "schedule.warmup_epochs": 1.0, "loss.neg_pos_ratio": 3, "loss.box_loss": "giou"}
    with pytest.raises(SearchSpaceError, match="cannot both be 0"):  # ...both at 0 are not
        space.trial_config({**sampled, "loss.class_weight": 0.0, "loss.box_weight": 0.0})


def test_grid_settings_are_each_checked(tmp_path: Path) -> None:
    raw = _valid()
    raw["sampler"] = {"type": "grid"}
    raw["scheduler"] = {"type": "none"}
    raw["params"] = {
        "loss.class_weight": {"distribution": "grid", "values": [0.0, 1.0]},
        "loss.box_weight": {"distribution": "grid", "values": [0.0, 1.0]},
    }
    del raw["points_to_evaluate"]
    path = _write(tmp_path, raw)
    setting = r"\{'loss.class_weight': 0.0, 'loss.box_weight': 0.0\}"
    with pytest.raises(SearchSpaceError, match=rf"params: the grid setting {setting}: .*cannot both be 0"):
        load_space(path)
