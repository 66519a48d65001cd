"""What a search prints while it runs (``hpo/console.py``): the lines built from real trainer
reports, and the console of a real small search (real Ray Tune, Optuna and MLflow on SQLite)."""

from __future__ import annotations

import re
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import mlflow
import pytest
import ray
from ray import cloudpickle, tune

from hpo import console
from hpo.console import Row, SearchConsole, end_line, error_line, measured_value, one_line_error, progress_table
from hpo.layout import PENALTY_MAX
from hpo.space import load_space
from tests.support import space_file
from hpo.trainable import tune_metrics
from model.config import TrainConfig
from model.trainer import Trainer

#: The tiny SSD on the small mini set: 4 steps an epoch, seconds a run.
SMALL = {"data.max_train_images": 32, "data.max_val_images": 16, "batch_size": 8, "model.input_size": 128,
         "health.check_every_steps": 1}  # fmt: skip
#: lr 5 without warm-up: the loss explodes within the first steps (stopped, or rolled back with recover).
DIVERGING = {"optim.lr": 5.0, "schedule.warmup_iters": 0}


def _reports(root: Path, epochs: int, **overrides: Any) -> list[dict[str, Any]]:
    """A real trainer run's reports as Tune receives them from the trainable (``tune_metrics``),
    with the keys Tune adds."""
    cfg = TrainConfig().with_overrides(
        {"data.root": str(root), "data.cache_dir": str(root.parent / "cache"), "epochs": epochs, **SMALL, **overrides}
    )
    reports = Trainer(cfg, log=lambda _: None).fit()
    return [
        {**tune_metrics(r, "val/ap", "max"), "trial_id": "a46ff7ca", "training_iteration": i + 1} for i, r in enumerate(reports)
    ]


@pytest.fixture(scope="module")
def healthy(mini_root: Path) -> list[dict[str, Any]]:
    return _reports(mini_root, 2, **{"schedule.warmup_epochs": 0.5})


@pytest.fixture(scope="module")
def diverged(mini_root: Path) -> dict[str, Any]:
    last = _reports(mini_root, 2, **DIVERGING)[-1]
    assert last["health/stop"] == 1.0 and last["val/ap"] == PENALTY_MAX
    return last


@pytest.fixture(scope="module")
def recovered(mini_root: Path) -> dict[str, Any]:
    last = _reports(mini_root, 1, **DIVERGING, **{"health.on_failure": "recover"})[-1]
    assert last["health/recoveries"] == 1.0 and last["val/ap"] == PENALTY_MAX  # Optuna's penalty
    return last


def test_a_completed_or_pruned_trial_ends_in_one_line_with_its_measured_metric(healthy) -> None:
    last = healthy[-1]
    value = last["raw/val/ap"]
    assert end_line("a46ff7ca", last, "val/ap", 2) == f"a46ff7ca completed: val/ap {value:.4f} after 2 epochs"
    # Ended before budget.max_epochs without a health stop: ASHA pruned it (or the time budget).
    assert end_line("a46ff7ca", last, "val/ap", 6) == f"a46ff7ca pruned at epoch 2 (val/ap {value:.4f})"
    best = value + 0.01
    assert end_line("a46ff7ca", last, "val/ap", 2, best=best).endswith(f"after 2 epochs, best {best:.4f}")


def test_a_stopped_trial_ends_with_the_monitors_evidence_never_the_penalty(diverged) -> None:
    line = end_line("a46ff7ca", diverged, "val/ap", 2)
    assert line == f"a46ff7ca stopped: {diverged['health/message']}"
    assert re.fullmatch(r"a46ff7ca stopped: diverged at step \d+ \(epoch 1\): loss explosion.*: .*loss .*", line), line
    assert "\n" not in line and "-1" not in line
    assert measured_value(diverged, "val/ap") is None  # stopped before it validated: nothing measured
    # An older report without the message still names the diagnosis.
    assert end_line("x", {**diverged, "health/message": ""}, "val/ap", 2) == "x stopped: diverged at epoch 1"


def test_a_recovered_trial_completes_with_its_raw_metric(recovered) -> None:
    line = end_line("a46ff7ca", recovered, "val/ap", 1)
    value = recovered["raw/val/ap"]
    assert line.startswith(f"a46ff7ca completed after recovering from diverged (1 rollback): val/ap {value:.4f} after 1 epoch")
    assert measured_value(recovered, "val/ap") == value != PENALTY_MAX


def _tune_error_text(*messages: str) -> str:
    """A trial's error.txt as Tune writes it: one "Failure # n" section per failure, each the
    text of a RayTaskError (its header line, the worker's traceback, the exception's own lines)."""
    sections = []
    for n, message in enumerate(messages, start=1):
        try:
            raise RuntimeError(message)
        except RuntimeError as exc:
            trace = "".join(traceback.format_exception(exc))
        header = "ray.exceptions.RayTaskError(RuntimeError): \x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=1, ip=1.2.3.4)"
        sections.append(f"Failure # {n} (occurred at 2026-12-01_08-21-26)\n{header}\n{trace}")
    return "".join(sections)


def test_an_error_is_one_line_naming_the_latest_exception() -> None:
    text = _tune_error_text("first failure", "the loader lost\nits file")
    assert one_line_error(text) == "RuntimeError: the loader lost its file"
    assert one_line_error("no exception line here\nlast words") == "last words"
    assert len(one_line_error(_tune_error_text("x" * 500))) == 200
    assert error_line("a46ff7ca", "RuntimeError: boom", 2, details="/r/error.txt") == (
        "a46ff7ca error after epoch 2: RuntimeError: boom  (traceback: /r/error.txt)"
    )
    assert error_line("a46ff7ca", "RuntimeError: boom", None, retry=(1, 2)) == (
        "a46ff7ca failed before its first epoch (RuntimeError: boom); retrying from its last checkpoint (1 of 2)"
    )


def test_the_table_shows_status_epoch_measured_metric_best_and_outcome(healthy, diverged) -> None:
    rows = [
        Row("9e169ac7", "ended", 2, measured_value(healthy[-1], "val/ap"), healthy[-1]["raw/val/ap"], "completed"),
        Row("7a26c4d2", "ended", 1, measured_value(diverged, "val/ap"), None, "stopped:diverged"),
        Row("39dd916c", "running", 1, measured_value(healthy[0], "val/ap"), healthy[0]["raw/val/ap"], "healthy"),
        Row("70af5f40", "pending", None, None, None, ""),
    ]
    lines = progress_table(rows, "val/ap", "max", 95.0).splitlines()
    best = max(healthy[-1]["raw/val/ap"], healthy[0]["raw/val/ap"])
    assert lines[0].startswith("== 01:35  trials: 1 running, 1 pending, 2 ended (1 completed, 1 stopped:diverged)")
    assert lines[0].endswith(f"best val/ap {best:.4f} ({'9e169ac7' if best == healthy[-1]['raw/val/ap'] else '39dd916c'})")
    assert lines[1].split() == ["id", "status", "epoch", "val/ap", "best", "outcome"]
    assert lines[3].split() == ["7a26c4d2", "ended", "1", "-", "-", "stopped:diverged"]  # never the penalty
    assert lines[5].split() == ["70af5f40", "pending", "-", "-", "-"]
    column = lines[1].index("outcome")  # aligned columns
    assert [line.rindex(word) for line, word in zip(lines[2:5], ["completed", "stopped:diverged", "healthy"], strict=True)] == [
        column
    ] * 3
    # A long search: the trials not ended and the best ended ones, the rest counted.
    many = [Row(f"t{i:02d}", "ended", 2, i / 100, i / 100, "completed") for i in range(30)] + rows[2:3]
    table = progress_table(many, "val/ap", "max", 0.0).splitlines()
    assert len(table) == 2 + console.MAX_ROWS + 1 and table[-1] == "  ... and 11 more ended trials"
    assert any(line.split()[0] == "39dd916c" for line in table[2:]) and table[2].split()[0] == "t11"


def test_the_console_pickles_for_a_restored_search() -> None:
    """Tuner.restore unpickles the run config's callbacks: settings kept, this driver's state fresh."""
    original = SearchConsole("val/fp", "min", 6, every_s=5.0)
    original._best["a"] = 1.0
    copy = cloudpickle.loads(cloudpickle.dumps(original))
    assert (copy.metric, copy.mode, copy.max_epochs, copy.every_s) == ("val/fp", "min", 6, 5.0)
    assert copy._best == {} and copy._ended == {}


# -- real searches ---------------------------------------------------------------------------------

#: Starting points: the healthy default with half an epoch of warm-up, and lr 5 without warm-up.
_BASE = {"optim.lr": 0.01, "schedule.warmup_epochs": 0.5, "loss.class_weight": 1.0, "loss.box_weight": 1.0,
         "loss.neg_pos_ratio": 3, "loss.box_loss": "smooth_l1"}  # fmt: skip
_END = re.compile(r"^(\w+) (completed: |completed after recovering |pruned at epoch |stopped: |error )")


def _console_space(tmp_path: Path) -> Path:
    """cpu-mini in miniature: 3 trials (healthy, diverging, one sampled) x 3 epochs, 2 at a time."""
    params = load_space("cpu-mini").as_dict()["params"]
    params["optim.lr"]["high"] = 10.0
    return space_file(
        tmp_path, "console", params=params,
        budget={"num_samples": 3, "max_epochs": 3, "max_concurrent_trials": 2, "time_budget_s": None},
        scheduler={"type": "none"}, points_to_evaluate=[_BASE, {**_BASE, "optim.lr": 5.0, "schedule.warmup_epochs": 0.0}],
        sampler={"n_startup_trials": 3},
        fixed={"data.max_train_images": 96, "data.max_val_images": 16, "model.input_size": 128, "health.check_every_steps": 2},
    )  # fmt: skip


@pytest.mark.slow
def test_a_search_prints_one_end_line_per_trial_and_the_table_without_tunes_boxes(
    mini_root: Path, tmp_path: Path, capfd, monkeypatch
) -> None:
    from hpo.search import main as search_main

    monkeypatch.setattr(console, "TABLE_EVERY_S", 0.0)  # a table after every change: some while it runs, however fast
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--space", str(_console_space(tmp_path)), "--data", str(mini_root), "--storage-path", str(tmp_path / "ray"),
            "--tracking-uri", uri, "--no-report"]  # fmt: skip
    assert search_main(args) == 0
    out, err = capfd.readouterr()
    console_text = out + err

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("console")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`hpo.role` = 'trial'")
    outcomes = {r.data.tags["hpo.trial_id"]: r.data.tags["hpo.outcome"] for r in runs}
    assert len(outcomes) == 3 and "stopped:diverged" in outcomes.values(), outcomes
    ends = [line for line in out.splitlines() if _END.match(line)]
    assert sorted(_END.match(line).group(1) for line in ends) == sorted(outcomes), ends  # one line per trial
    for line in ends:
        outcome = outcomes[line.split()[0]]
        assert line.split()[1].rstrip(":") == outcome.split(":")[0], (line, outcome)
        if outcome == "stopped:diverged":  # the monitor's evidence: the loss against its reference
            # (whichever trial diverged: the sampled one may be a high lr that explodes later than lr 5)
            assert re.search(r"stopped: diverged at step \d+ \(epoch [1-3]\): loss explosion: .*loss", line), line
        if outcome == "completed":
            assert re.search(r"completed: val/ap \d\.\d{4} after 3 epochs", line), line

    heads = [i for i, line in enumerate(out.splitlines()) if re.match(r"== \d\d:\d\d  trials: ", line)]
    assert len(heads) >= 2, out  # at least one while it ran, and the last one
    lines = out.splitlines()
    assert lines[heads[-1] + 1].split() == ["id", "status", "epoch", "val/ap", "best", "outcome"]
    final = {line.split()[0]: line.split() for line in lines[heads[-1] + 2 : heads[-1] + 5]}
    assert {trial: row[1] for trial, row in final.items()} == dict.fromkeys(outcomes, "ended")
    assert {trial: row[-1] for trial, row in final.items()} == outcomes
    # None of Tune's own output: boxes, its status tables, the TensorBoard hint, the checkpoint chatter.
    for noise in ("Checkpoint successfully created", "Configuration for experiment", "Trial status:", "with TensorBoard",
                  "completed after", "started with configuration"):  # fmt: skip
        assert noise not in console_text.replace("completed after recovering", ""), noise
    assert not re.search(r"Trial \S+ result", console_text)
    assert "== search finished ==" in out


def _flaky(config: dict[str, Any]) -> None:
    """Three epochs; with ``fail`` it raises in its second one, every time (its retries fail too)."""
    start = 1 if tune.get_checkpoint() is None else 2
    for epoch in range(start, 4):
        if config["fail"] and epoch == 2:
            raise RuntimeError("the data loader\nlost its file")
        with tempfile.TemporaryDirectory() as directory:
            report = {"epoch": epoch, "val/ap": 0.1 * epoch, "raw/val/ap": 0.1 * epoch, "val/num_images": 16,
                      "health/stop": 0.0, "health/diagnosis": "healthy", "health/message": ""}  # fmt: skip
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(directory))


@pytest.mark.slow
def test_a_failing_trial_prints_its_retries_and_one_error_line(tmp_path: Path, capfd, monkeypatch) -> None:
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "0")  # as hpo/search.py sets it: Tune's engine silent at verbose=0
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/ modules
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        tuner = tune.Tuner(
            _flaky,
            param_space={"fail": tune.grid_search([False, True])},
            run_config=tune.RunConfig(
                name="flaky",
                storage_path=str(tmp_path),
                callbacks=[SearchConsole("val/ap", "max", 3)],
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=1),
            ),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
    out = capfd.readouterr().out
    ids = {r.metrics["trial_id"]: r.config["fail"] for r in results}
    ok, failing = (next(t for t, fail in ids.items() if fail is flag) for flag in (False, True))
    lines = out.splitlines()
    assert [line for line in lines if line.startswith(f"{ok} ")] == [f"{ok} completed: val/ap 0.3000 after 3 epochs"]
    mine = [line for line in lines if line.startswith(f"{failing} ")]
    assert mine[0] == (f"{failing} failed after epoch 1 (RuntimeError: the data loader lost its file); "
                       "retrying from its last checkpoint (1 of 1)")  # fmt: skip
    assert mine[1].startswith(f"{failing} error after epoch 1: RuntimeError: the data loader lost its file  (traceback: ")
    assert len(mine) == 2 and Path(mine[1].split("(traceback: ")[1].rstrip(")")).is_file()
    assert re.search(r"^== \d\d:\d\d  trials: 2 ended \(1 completed, 1 error\)  best val/ap 0.3000", out, re.M), out
