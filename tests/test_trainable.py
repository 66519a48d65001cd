"""The trainable and the stopping rules: what Tune sees of a report, and a real Ray Tune search.

The search runs the real trainer on the mini set under Ray Tune with ASHA, Optuna's TPE and the
health stopper: one starting point diverges at once, one is healthy, one is sampled.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
import os
import signal
from pathlib import Path
from typing import Any

import optuna
import pytest
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from hpo.layout import NONFINITE_FILL, PENALTY_MAX, PENALTY_MIN
from hpo.space import load_space, space_from_dict
from hpo.stopping import HealthStopper, RungAwareOptunaSearch, build_scheduler, build_searcher, optuna_study
from model.config import load_config
from hpo.trainable import (
    CHECKPOINT_NAME,
    SETUP_KEY,
    _trial_config,
    last_chance_epochs,
    save_recovery_files,
    train_trial,
    tune_metrics,
)
from model.samples import DETECTIONS_FILE
from model.trainer import Trainer

MAX_EPOCHS = 3
#: lr 5 without warm-up: the loss explodes within the first steps on the mini set.
DIVERGING = {"optim.lr": 5.0, "schedule.warmup_epochs": 0.0, "loss.neg_pos_ratio": 3}
HEALTHY = {"optim.lr": 0.01, "schedule.warmup_epochs": 0.5, "loss.neg_pos_ratio": 3}


def tiny_space() -> dict[str, Any]:
    """cpu-mini scaled down to seconds per trial, with a learning-rate range that can diverge."""
    raw = load_space("cpu-mini").as_dict()
    raw["name"] = "test-trainable"
    raw["budget"] = {"num_samples": 3, "max_epochs": MAX_EPOCHS, "max_concurrent_trials": 2, "time_budget_s": None}
    raw["scheduler"] = {"type": "asha", "grace_period": 1, "reduction_factor": 2, "brackets": 1}
    raw["sampler"]["n_startup_trials"] = 3
    raw["fixed"].update(
        {
            "data.max_train_images": 32,
            "data.max_val_images": 16,
            "model.input_size": 128,
            "batch_size": 8,  # 4 steps per epoch
            "health.check_every_steps": 2,
        }
    )
    raw["params"] = {
        "optim.lr": {"distribution": "loguniform", "low": 1e-3, "high": 10.0},
        "schedule.warmup_epochs": {"distribution": "uniform", "low": 0.0, "high": 1.0},
        "loss.neg_pos_ratio": {"distribution": "int", "low": 1, "high": 5},
    }
    raw["points_to_evaluate"] = [DIVERGING, HEALTHY]
    return raw


# -- what Tune sees of one report ------------------------------------------------------------------


def report(**overrides: Any) -> dict[str, Any]:
    """A report shaped like the trainer's (the keys tune_metrics treats specially, and others)."""
    base = {
        "epoch": 2,
        "step": 8,
        "train/loss": 3.5,
        "train/grad_norm": 12.0,
        "val/ap": 0.25,
        "val/fp": 7.0,
        "time/epoch_s": 0.4,
        "health/diagnosis": "healthy",
        "health/code": 0.0,
        "health/stop": 0.0,
        "health/message": "",
    }
    return {**base, **overrides}


def test_non_finite_numbers_are_replaced_and_every_key_kept() -> None:
    raw = report(**{"train/loss": math.nan, "train/grad_norm": math.inf, "train/lr": -math.inf})
    out = tune_metrics(raw, "val/ap", "max")
    assert set(raw) <= set(out)
    assert out["train/loss"] == NONFINITE_FILL and out["train/grad_norm"] == NONFINITE_FILL
    assert out["train/lr"] == -NONFINITE_FILL
    assert out["health/nonfinite"] == 3
    assert all(math.isfinite(v) for v in out.values() if isinstance(v, float))
    # Untouched: the finite numbers, ASHA's time attribute (still an int) and the strings.
    assert out["epoch"] == 2 and isinstance(out["epoch"], int)
    assert out["val/ap"] == 0.25 and out["raw/val/ap"] == 0.25 and out["time/epoch_s"] == 0.4
    assert out["health/diagnosis"] == "healthy" and out["health/message"] == ""
    assert math.isnan(raw["train/loss"]), "the trainer's report must not be modified"


def test_a_healthy_report_passes_unchanged() -> None:
    raw = report()
    out = tune_metrics(raw, "val/fp", "min")
    assert {k: out[k] for k in raw} == raw
    assert out["raw/val/fp"] == 7.0 and out["health/nonfinite"] == 0


@pytest.mark.parametrize("metric, mode", [("val/ap", "max"), ("val/fp", "min")])
def test_a_stopped_trial_reports_a_penalty_worse_than_any_real_value(metric: str, mode: str) -> None:
    # What the trainer reports when the monitor stops a run: zeros for validation, NaN losses.
    stopped = report(**{"val/ap": 0.0, "val/fp": 0.0, "train/loss": math.nan, "health/stop": 1.0, "health/diagnosis": "diverged"})
    out = tune_metrics(stopped, metric, mode)
    best_or_worst = [tune_metrics(report(**{metric: v}), metric, mode)[metric] for v in (0.0, 1.0, 250_000.0)]
    if mode == "max":
        assert out[metric] == PENALTY_MAX and all(out[metric] < v for v in best_or_worst)
    else:
        assert out[metric] == PENALTY_MIN and all(out[metric] > v for v in best_or_worst)
    assert out[f"raw/{metric}"] == 0.0
    assert out["health/diagnosis"] == "diverged" and out["health/stop"] == 1.0


def test_a_non_finite_metric_becomes_the_penalty_even_without_a_stop() -> None:
    out = tune_metrics(report(**{"val/ap": math.nan}), "val/ap", "max")
    assert out["val/ap"] == PENALTY_MAX and out["raw/val/ap"] == NONFINITE_FILL


def test_a_missing_metric_or_a_bad_mode_is_named() -> None:
    with pytest.raises(ValueError, match="'val/ar'.*numeric keys"):
        tune_metrics(report(), "val/ar", "max")
    with pytest.raises(ValueError, match="mode must be 'max' or 'min'.*'maximize'"):
        tune_metrics(report(), "val/ap", "maximize")  # type: ignore[arg-type]


# -- a recovered trial's record beside its checkpoint ----------------------------------------------


def test_after_a_recovery_the_checkpoint_holds_the_effective_config_and_the_events(
    mini_root: Path, tmp_path: Path, one_thread
) -> None:
    from model.config import TrainConfig
    from model.run_files import EFFECTIVE_CONFIG_FILE, RECOVERIES_FILE

    # The trial's config as sampled (what trial_config.yaml holds), and as this worker runs it.
    sampled = TrainConfig().with_overrides({
        "data.max_train_images": 32, "data.max_val_images": 16, "batch_size": 8, "model.input_size": 128, "epochs": 2,
        "optim.lr": 5.0, "schedule.warmup_iters": 0, "health.on_failure": "recover", "health.check_every_steps": 1,
    })  # fmt: skip
    trainer = Trainer(_trial_config(sampled, str(mini_root), str(mini_root.parent / "cache"), gpu=False), log=lambda _: None)
    early = tmp_path / "early"
    early.mkdir()
    assert not save_recovery_files(trainer, sampled, early) and not any(early.iterdir())

    report = trainer.run_epoch()  # lr 5 without warm-up diverges: rolled back, the lr probed, a fresh warm-up
    assert report["health/recoveries"] == 1.0
    assert save_recovery_files(trainer, sampled, tmp_path)
    effective = load_config(tmp_path / EFFECTIVE_CONFIG_FILE)
    chosen = trainer.recovery_events()[0]["probe"]["chosen_lr"]
    assert effective.optim.lr == pytest.approx(chosen) and chosen <= 0.5 and effective.schedule.warmup_iters == 100
    assert effective.data.root == sampled.data.root != trainer.cfg.data.root  # not this worker's paths
    undone = {"optim.lr": sampled.optim.lr, "schedule.warmup_iters": sampled.schedule.warmup_iters}
    assert effective.with_overrides(undone) == sampled  # nothing else changed
    assert json.loads((tmp_path / RECOVERIES_FILE).read_text()) == trainer.recovery_events()


# -- the stopping rule, the scheduler and the searcher ----------------------------------------------


def test_health_stopper_stops_only_stopped_trials_and_keeps_the_first_diagnosis() -> None:
    stopper = HealthStopper()
    assert not stopper("a", report())
    assert not stopper("a", {"epoch": 1})  # a result without health fields is not a stop
    assert stopper("b", report(**{"health/stop": 1.0, "health/diagnosis": "background-collapse"}))
    assert stopper("b", report(**{"health/stop": 1.0, "health/diagnosis": "diverged"}))
    assert stopper.stopped_trials() == {"b": "background-collapse"}
    assert not stopper.stop_all()


def searcher_metric(searcher) -> str:
    while isinstance(searcher, ConcurrencyLimiter):
        searcher = searcher.searcher
    return searcher.metric


def test_asha_does_not_judge_the_epoch_a_recovery_rolled_back() -> None:
    """The failed epoch's report (``health/recovery`` set) is skipped, at a rung and at ``max_t``;
    the replayed epoch is judged. Ray's own ASHA cuts the run on the failed epoch's zero."""
    space = space_from_dict(tiny_space())
    recovering = {"health/recovery": "diverged at step 5 (epoch 1) -> rollback to epoch 0 (step 0): ..."}

    def results(scheduler) -> list[str]:
        trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(3)]
        for trial in trials:
            scheduler.on_trial_add(None, trial)
        first, second, fixed = trials
        return [
            scheduler.on_trial_result(None, first, {"epoch": 1, "raw/val/ap": 0.5}),
            scheduler.on_trial_result(None, second, {"epoch": 1, "raw/val/ap": 0.6}),
            scheduler.on_trial_result(None, fixed, {"epoch": 1, "raw/val/ap": 0.0, **recovering}),
            scheduler.on_trial_result(None, fixed, {"epoch": MAX_EPOCHS, "raw/val/ap": 0.0, **recovering}),
            scheduler.on_trial_result(None, fixed, {"epoch": 1, "raw/val/ap": 0.7}),  # the replayed epoch 1
        ]

    assert results(build_scheduler(space)) == ["CONTINUE"] * 5
    plain = ASHAScheduler(
        time_attr="epoch", metric="raw/val/ap", mode="max", max_t=MAX_EPOCHS, grace_period=1, reduction_factor=2
    )
    assert results(plain)[2:4] == ["STOP", "STOP"]


def test_scheduler_and_searcher_follow_the_space() -> None:
    space = space_from_dict(tiny_space())
    asha = build_scheduler(space)
    assert isinstance(asha, ASHAScheduler)
    # ASHA judges the measured value (raw/val/ap: the metric itself, except a recovered trial's penalty).
    assert (asha._time_attr, asha.metric, asha._mode, asha._max_t) == ("epoch", "raw/val/ap", "max", MAX_EPOCHS)
    assert searcher_metric(build_searcher(space)) == "val/ap"  # Optuna is told the penalty
    assert sorted(milestone for milestone, _ in asha._brackets[0]._rungs) == [1, 2]  # grace 1, factor 2
    searcher = build_searcher(space)
    assert isinstance(searcher, ConcurrencyLimiter) and searcher.max_concurrent == 2
    assert isinstance(searcher.searcher, OptunaSearch)
    study = optuna_study(searcher)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    # The starting points come first, in order, with dotted keys intact; then the limit holds.
    assert [searcher.suggest(trial_id) for trial_id in ("t1", "t2")] == [DIVERGING, HEALTHY]
    assert searcher.suggest("t3") is None

    raw = tiny_space()
    raw["scheduler"] = {"type": "none"}
    raw["budget"]["max_concurrent_trials"] = None
    plain = space_from_dict(raw)
    assert isinstance(build_scheduler(plain), FIFOScheduler)
    assert isinstance(build_searcher(plain), OptunaSearch)
    raw["sampler"] = {"type": "grid"}
    raw["params"] = {"optim.lr": {"distribution": "grid", "values": [0.01, 0.02]}}
    raw["points_to_evaluate"] = []
    grid = space_from_dict(raw)
    assert build_searcher(grid) is None and optuna_study(None) is None


@pytest.mark.parametrize(
    "grace, factor, brackets, max_epochs",
    [(1, 2, 1, 3), (1, 3, 1, 6), (2, 3, 1, 6), (1, 2.5, 2, 20), (1, 3, 3, 27), (3, 2, 1, 3)],
)
def test_detections_are_drawn_where_ashas_rungs_may_end_a_trial(
    grace: int, factor: float, brackets: int, max_epochs: int
) -> None:
    """The epochs a trial draws its sample detections at (besides its last) are the rungs of the
    ASHA that build_scheduler makes, rounded up (a trial is judged at its first report past one)."""
    raw = tiny_space()
    raw["scheduler"] = {"type": "asha", "grace_period": grace, "reduction_factor": factor, "brackets": brackets}
    raw["budget"]["max_epochs"] = max_epochs
    space = space_from_dict(raw)
    rungs = {math.ceil(m) for bracket in build_scheduler(space)._brackets for m, _ in bracket._rungs}
    assert last_chance_epochs(space) == {r for r in rungs if r < max_epochs}
    raw["scheduler"] = {"type": "none"}
    assert last_chance_epochs(space_from_dict(raw)) == frozenset()  # only where the trial itself ends
    raw["budget"]["time_budget_s"] = 600
    assert last_chance_epochs(space_from_dict(raw)) is None  # any epoch may be the last: every one


def test_optuna_is_told_how_each_trial_ended() -> None:
    raw = tiny_space()
    raw["budget"]["max_concurrent_trials"] = None
    raw["points_to_evaluate"] = []
    searcher = build_searcher(space_from_dict(raw))
    assert isinstance(searcher, RungAwareOptunaSearch)
    study = optuna_study(searcher)

    def run(trial_id: str, reports: list[dict[str, Any]], *, error: bool = False, stopped_by_scheduler: bool = False):
        assert searcher.suggest(trial_id) is not None
        results = [{"training_iteration": i, **report} for i, report in enumerate(reports, start=1)]
        # Tune gives the result on which a scheduler stops a trial to on_trial_complete alone.
        for result in results[:-1] if stopped_by_scheduler else results:
            searcher.on_trial_result(trial_id, result)
        searcher.on_trial_complete(trial_id, result=results[-1] if results else None, error=error)
        return study.trials[-1]

    def epoch(n: int, ap: float, stop: float = 0.0) -> dict[str, Any]:
        return {"epoch": n, "val/ap": ap, "health/stop": stop}

    full = run("full", [epoch(e, 0.1 * e) for e in range(1, MAX_EPOCHS + 1)])
    assert full.state == optuna.trial.TrialState.COMPLETE and full.value == pytest.approx(0.1 * MAX_EPOCHS)
    cut = run("cut", [epoch(1, 0.05)])
    assert cut.state == optuna.trial.TrialState.PRUNED and cut.value == 0.05 and cut.intermediate_values == {1: 0.05}
    rung = run("rung", [epoch(1, 0.05), epoch(2, 0.07)], stopped_by_scheduler=True)  # ASHA at its epoch-2 rung
    assert rung.state == optuna.trial.TrialState.PRUNED and rung.intermediate_values == {1: 0.05, 2: 0.07}
    stopped = run("stopped", [epoch(1, PENALTY_MAX, stop=1.0)])
    assert stopped.state == optuna.trial.TrialState.COMPLETE and stopped.value == PENALTY_MAX
    failed = run("failed", [epoch(1, 0.01)], error=True)
    assert failed.state == optuna.trial.TrialState.FAIL


# -- a real search -------------------------------------------------------------------------------


class _CrashOnce(tune.Callback):
    """A real failure: kill the worker of the trial with config ``point`` once its first
    checkpoint is saved, as a preempted node or an OOM kill would."""

    def __init__(self, point: dict[str, Any]) -> None:
        self.point = point
        self.killed: str | None = None

    def on_checkpoint(self, iteration: int, trials: list, trial, checkpoint, **info: Any) -> None:
        if self.killed is None and trial.config == self.point:
            self.killed = trial.trial_id
            os.kill(trial.last_result["pid"], signal.SIGKILL)


@pytest.fixture(scope="module")
def ray_2cpus():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def search(ray_2cpus, mini_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """Three trials of the tiny space, the healthy one's worker killed after its first epoch:
    the results, the stopper, the Optuna study and the id of the killed trial."""
    space = space_from_dict(tiny_space())
    trainable = tune.with_resources(
        tune.with_parameters(
            train_trial, space=space.as_dict(), data_root=str(mini_root), cache_dir=str(mini_root.parent / "cache")
        ),
        {"cpu": space.resources.cpu, "gpu": space.resources.gpu},
    )
    stopper = HealthStopper()
    searcher = build_searcher(space)
    crash = _CrashOnce(HEALTHY)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=build_scheduler(space), num_samples=space.budget.num_samples, reuse_actors=True
        ),
        run_config=tune.RunConfig(
            name="search",
            storage_path=str(tmp_path_factory.mktemp("ray_results")),
            stop=stopper,
            failure_config=tune.FailureConfig(max_failures=1),
            callbacks=[crash],
            verbose=0,
        ),
    )
    results = tuner.fit()
    return results, stopper, optuna_study(searcher), crash.killed


def _trial(results: tune.ResultGrid, point: dict[str, Any]) -> tune.Result:
    found = [r for r in results if r.config == point]
    assert len(found) == 1, f"expected one trial with config {point}, got {[r.config for r in results]}"
    return found[0]


def test_search_runs_every_trial_without_errors(search) -> None:
    results, *_ = search
    assert len(results) == 3
    assert results.num_errors == 0, [r.error for r in results if r.error]


def test_diverging_trial_is_stopped_in_its_first_epoch_with_a_finite_penalty(search) -> None:
    results, stopper, *_ = search
    trial = _trial(results, DIVERGING)
    assert trial.metrics["epoch"] == 1
    assert trial.metrics["health/diagnosis"] == "diverged" and trial.metrics["health/stop"] == 1.0
    assert trial.metrics["val/ap"] == PENALTY_MAX
    assert math.isfinite(trial.metrics["train/loss"])
    assert stopper.stopped_trials()[trial.metrics["trial_id"]] == "diverged"


def test_healthy_trial_is_never_stopped_by_the_health_rule(search) -> None:
    results, stopper, *_ = search
    trial = _trial(results, HEALTHY)
    history = trial.metrics_dataframe
    table = history[["epoch", "training_iteration", "val/ap", "health/diagnosis", "pid"]].to_string()
    assert (history["health/stop"] == 0).all() and (history["health/diagnosis"] == "healthy").all(), table
    assert trial.metrics["trial_id"] not in stopper.stopped_trials()
    # No epoch trained twice across the restart (the kill below): the rows' epochs rise one by one
    # to the last, and Tune's own count of the trial's reports agrees with the epoch at every row.
    # (Tune's logger may lose the row of the epoch before the kill: on the restart it restores
    # progress.csv/result.json from storage, which the driver syncs periodically; seen in CI as
    # epochs [2, 3] with training_iteration [2, 3].)
    epochs = list(history["epoch"])
    assert epochs == list(range(epochs[0], MAX_EPOCHS + 1)) and epochs[0] <= 2, table
    assert list(history["training_iteration"]) == epochs, table
    assert trial.metrics["val/ap"] >= 0.0 and trial.metrics["val/ap"] == trial.metrics["raw/val/ap"]
    with trial.checkpoint.as_directory() as directory:
        assert (Path(directory) / CHECKPOINT_NAME).is_file()


def test_no_result_holds_a_non_finite_number(search) -> None:
    results, *_ = search
    for trial in results:
        history = trial.metrics_dataframe
        numeric = history.select_dtypes("number")
        assert not numeric.empty and numeric.map(math.isfinite).all().all(), trial.config


def test_optuna_study_holds_every_trial_with_its_value(search) -> None:
    results, stopper, study, _ = search
    finished = {frozenset(t.params.items()): t for t in study.trials}
    assert len(study.trials) == 3
    assert finished[frozenset(DIVERGING.items())].value == PENALTY_MAX
    assert finished[frozenset(DIVERGING.items())].state == optuna.trial.TrialState.COMPLETE
    for trial in results:
        recorded = finished[frozenset(trial.config.items())]
        # Stopped (the penalty) and full-length trials are COMPLETE; ASHA's cuts are PRUNED.
        cut = trial.metrics["health/stop"] != 1.0 and trial.metrics["epoch"] < MAX_EPOCHS
        expected = optuna.trial.TrialState.PRUNED if cut else optuna.trial.TrialState.COMPLETE
        assert recorded.state == expected, (trial.config, trial.metrics["epoch"], recorded.state)
        # Either way Optuna holds the last value Tune saw: the penalty, the rung value or the final one.
        assert recorded.value == trial.metrics["val/ap"]
    assert len(stopper.stopped_trials()) == sum(r.metrics["health/stop"] == 1.0 for r in results)


def test_a_killed_trial_resumes_from_its_checkpoint(search) -> None:
    results, *_, killed = search
    trial = _trial(results, HEALTHY)
    assert killed == trial.metrics["trial_id"]
    # Restarted from a checkpoint (not from scratch): the trainer's epoch counter went on where
    # Tune's iteration count did, and the trial still ended at the last epoch.
    assert trial.metrics["iterations_since_restore"] < trial.metrics["training_iteration"]
    assert trial.metrics["epoch"] == trial.metrics["training_iteration"] == MAX_EPOCHS


# -- one worker, trial after trial (reuse_actors) ----------------------------------------------------


@pytest.fixture(scope="module")
def reused(ray_2cpus, mini_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """Two trials one after the other on one reused worker: the diverging point (stopped in its
    first epoch, its last state a blown-up model), then the healthy one, 2 epochs, no scheduler."""
    raw = tiny_space()
    raw["name"] = "test-reuse"
    raw["budget"] = {"num_samples": 2, "max_epochs": 2, "max_concurrent_trials": 1, "time_budget_s": None}
    raw["scheduler"] = {"type": "none"}
    space = space_from_dict(raw)
    cache_dir = str(mini_root.parent / "cache")
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, space=space.as_dict(), data_root=str(mini_root), cache_dir=cache_dir),
        {"cpu": space.resources.cpu, "gpu": space.resources.gpu},
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=build_searcher(space), scheduler=build_scheduler(space), num_samples=2, reuse_actors=True
        ),
        run_config=tune.RunConfig(
            name="reuse", storage_path=str(tmp_path_factory.mktemp("ray_reuse")), stop=HealthStopper(), verbose=0
        ),
    )
    results = tuner.fit()
    return results, space, cache_dir


def test_a_reused_worker_starts_each_trial_from_its_own_config(reused, mini_root: Path, one_thread) -> None:
    results, space, cache_dir = reused
    assert results.num_errors == 0, [r.error for r in results if r.error]
    diverged, healthy = _trial(results, DIVERGING), _trial(results, HEALTHY)
    assert diverged.metrics["health/diagnosis"] == "diverged"
    first, second = diverged.metrics_dataframe, healthy.metrics_dataframe
    assert set(first["pid"]) == set(second["pid"]), "the second trial did not run on the first one's worker"
    # From scratch: its own epochs from 1, never restored (not from the diverged trial's checkpoint).
    assert list(second["epoch"]) == [1, 2] and list(second["training_iteration"]) == [1, 2]
    assert list(second["iterations_since_restore"]) == [1, 2]
    assert (second["health/diagnosis"] == "healthy").all() and (second[SETUP_KEY] > 0).all()
    # The same numbers as the same config trained in a fresh process: nothing of the diverged run
    # (weights, optimiser, RNG state) carried over into the reused worker's second trial.
    cfg = _trial_config(space.trial_config(HEALTHY), str(mini_root), cache_dir, gpu=False)
    fresh = Trainer(cfg, log=lambda *_: None).run_epoch()
    for key in ("train/loss", "train/loss_cls", "train/loss_box", "train/grad_norm"):
        assert second[key].iloc[0] == pytest.approx(fresh[key], rel=1e-4), key
    # Sample detections only where the trial may end (no scheduler: its last epoch).
    drawn = {
        p.parent.name: p.exists() for p in (Path(c) / DETECTIONS_FILE for c in sorted(Path(healthy.path).glob("checkpoint_*")))
    }
    assert list(drawn.values()) == [False, True], drawn


def test_a_trial_counts_the_images_it_skipped(mini_root: Path, tmp_path: Path, one_thread) -> None:
    """A missing and a corrupt image are skipped, never fatal, and counted in every result (and so
    in the trial's MLflow run: the keys are tracking metrics)."""
    import shutil

    from hpo import layout as L
    from hpo.tracking import TRIAL_METRICS
    from hpo.trainable import skipped_images
    from model.config import TrainConfig

    root = tmp_path / "data"
    shutil.copytree(mini_root, root)

    def first_image(split: str) -> Path:  # the annotation file's first record: inside max_*_images
        relpath = (root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt").read_text().splitlines()[0].strip()
        return root / f"WIDER_{split}" / "images" / relpath

    first_image("train").write_bytes(b"not a jpeg")
    first_image("val").unlink()
    cfg = TrainConfig().with_overrides({"data.max_train_images": 32, "data.max_val_images": 16, "batch_size": 8,
                                        "model.input_size": 128, "epochs": 1, "data.source": "wider"})  # fmt: skip
    trainer = Trainer(_trial_config(cfg, str(root), str(tmp_path / "cache"), gpu=False), log=lambda _: None)
    assert skipped_images(trainer) == {L.TRAIN_SKIPPED: 1.0, L.VAL_SKIPPED: 1.0}
    assert {L.TRAIN_SKIPPED, L.VAL_SKIPPED} <= set(TRIAL_METRICS)
