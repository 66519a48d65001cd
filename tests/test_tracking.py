"""MLflow tracking of a search: real MLflow (sqlite in tmp_path) under a real Ray Tune search.

The trainable is trivial (no training): it reports three epochs of made-up numbers shaped by the
real :func:`hpo.trainable.tune_metrics`. One trial per way a trial ends: completed, stopped by
the health monitor (diverged at epoch 1), pruned (ends before ``max_epochs``) and errored.
"""

from __future__ import annotations

import csv
import json
import io
import logging
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from ray import cloudpickle, tune

from hpo import layout as L
from hpo.layout import NONFINITE_FILL
from hpo.runs import trial_outcomes
from hpo.space import load_space, space_from_dict
from hpo.stopping import HealthStopper
from hpo.tracking import TRIAL_METRICS, MlflowTrialCallback, finish_parent_run, open_parent_run
from hpo.trainable import tune_metrics

MAX_EPOCHS = 3
SEARCH_ID = "5e4c0ffee0000000000000000000abcd"
EXPERIMENT = "test-tracking"
#: optim.lr picks the trial's fate (a grid, so every trial id maps to a known lr).
COMPLETED, DIVERGED, PRUNED, FAILED = 0.01, 0.02, 0.03, 0.04


def fake_report(lr: float, epoch: int) -> dict[str, Any]:
    """A trainer report: every metric of TRIAL_METRICS plus the keys that are not tracked."""
    report: dict[str, Any] = {key: 0.5 for key in TRIAL_METRICS}
    report.update(
        {
            "epoch": epoch,
            "step": epoch * 4,
            "val/ap": lr * 10 * epoch,
            "train/loss": 2.0 / epoch,
            "time/epoch_s": 0.01,
            "health/diagnosis": "healthy",
            "health/message": "",
            "health/code": 0.0,
            "health/stop": 0.0,
            "health/recoveries": 0.0,
            "val/num_images": 10.0,
        }
    )
    if lr == DIVERGED:  # stopped inside its first epoch: not validated, zeros (as the trainer reports)
        report.update(dict.fromkeys((k for k in TRIAL_METRICS if k.startswith("val/")), 0.0))
        report.update({"train/loss": math.nan, "health/diagnosis": "diverged", "health/code": 1.0, "health/stop": 1.0,
                       "health/message": "loss exploded (made up)"})  # fmt: skip
    return report


#: What each trial reports, built here with the real tune_metrics: the trainable then needs
#: nothing heavy (torch) on the worker.
REPORTS = {
    lr: [tune_metrics(fake_report(lr, epoch), "val/ap", "max") for epoch in range(1, MAX_EPOCHS + 1)]
    for lr in (COMPLETED, DIVERGED, PRUNED, FAILED)
}


def fake_trainable(config: dict[str, Any]) -> None:
    lr = config["optim.lr"]
    for epoch, metrics in enumerate(REPORTS[lr][: 2 if lr == PRUNED else MAX_EPOCHS], start=1):
        if lr == FAILED and epoch == 2:
            raise RuntimeError("the trial failed on purpose")
        tune.report(metrics)


def make_space():
    raw = load_space("cpu-mini").as_dict()
    raw.update(
        name=EXPERIMENT,
        budget={"num_samples": 1, "max_epochs": MAX_EPOCHS, "max_concurrent_trials": None, "time_budget_s": None},
        scheduler={"type": "none"},
        sampler={"type": "grid"},
        params={"optim.lr": {"distribution": "grid", "values": [COMPLETED, DIVERGED, PRUNED, FAILED]}},
        points_to_evaluate=[],
    )
    return space_from_dict(raw)


class ThreadRecordingCallback(MlflowTrialCallback):
    """The tracking callback, noting which threads wrote to MLflow for which hooks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.threads: dict[str, set[str]] = {}

    def _guard(self, hook: str, *args: Any) -> None:
        self.threads.setdefault(hook, set()).add(threading.current_thread().name)
        super()._guard(hook, *args)

    def _artifacts(self, *args: Any, **kwargs: Any) -> None:
        # Slow on purpose: were the queue not drained at the experiment's end, fit() would return
        # before the last trials' artifacts are written.
        time.sleep(0.5)
        super()._artifacts(*args, **kwargs)


class TrialRecorder(tune.Callback):
    """Keeps the Trial objects of a run, to replay them through a fresh tracking callback."""

    def __init__(self) -> None:
        self.trials: list[Any] = []

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.trials = list(trials)


@pytest.fixture(scope="module")
def ray_session():
    # The workers cannot import this test module: ship its trainable by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def search(ray_session, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One search tracked into MLflow, then resumed with Tuner.restore (errored trials rerun)."""
    root = tmp_path_factory.mktemp("tracking")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    space = make_space()
    parent = open_parent_run(uri, EXPERIMENT, SEARCH_ID, space)
    recorder = TrialRecorder()
    tracking = ThreadRecordingCallback(uri, parent, SEARCH_ID, space, MAX_EPOCHS)
    tuner = tune.Tuner(
        fake_trainable,
        param_space=space.grid(),
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(
            name="search",
            storage_path=str(root / "ray_results"),
            stop=HealthStopper(),
            callbacks=[tracking, recorder],
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=0,
        ),
    )
    tuner.fit()
    first = trial_outcomes(uri, SEARCH_ID)
    # Read at once: whatever the callback wrote off Tune's loop must be there when fit() returns.
    artifacts_at_return = {row["trial_id"]: {a.path for a in MlflowClient(uri).list_artifacts(row["run_id"])} for row in first}

    # The resume: the parent is found again by its search id, and the restored Tuner unpickles
    # its tracking callback without its cache, so it finds the children again by their tags.
    reopened = open_parent_run(uri, EXPERIMENT, SEARCH_ID, space)
    tune.Tuner.restore(str(root / "ray_results" / "search"), fake_trainable, resume_errored=True).fit()
    return {
        "uri": uri,
        "root": root,
        "space": space,
        "parent": parent,
        "reopened": reopened,
        "trials": recorder.trials,
        "first": first,
        "artifacts_at_return": artifacts_at_return,
        "writer_threads": dict(tracking.threads),
        "client": MlflowClient(tracking_uri=uri),
    }


def by_lr(rows: list[dict[str, Any]]) -> dict[float, dict[str, Any]]:
    return {row["params"]["optim.lr"]: row for row in rows}


def test_the_experiment_opens_in_the_model_training_view_unless_its_kind_was_chosen(tmp_path: Path) -> None:
    """MLflow 3's UI opens an experiment in its GenAI view unless ``mlflow.experimentKind`` says
    ``custom_model_development``: the search sets it on the experiment it creates or re-opens,
    and leaves a kind someone chose as it is."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    space = load_space("cpu-mini")

    def kind(name: str) -> str | None:
        return client.get_experiment_by_name(name).tags.get("mlflow.experimentKind")

    parent = open_parent_run(uri, "created", "s1", space)
    assert kind("created") == "custom_model_development"
    artifacts = (tmp_path / "mlruns").as_uri()  # not MLflow's default, the working directory's mlruns/
    client.create_experiment("older", artifact_location=artifacts)  # made before the search (an older search, a user)
    open_parent_run(uri, "older", "s2", space)
    assert kind("older") == "custom_model_development"
    client.create_experiment("chosen", artifact_location=artifacts, tags={"mlflow.experimentKind": "genai_development"})
    open_parent_run(uri, "chosen", "s3", space)
    assert kind("chosen") == "genai_development"
    # A re-opened parent (--resume) gets the tags it is given, as a new one does.
    assert open_parent_run(uri, "created", "s1", space, tags={L.OPTUNA_STUDY: "study"}) == parent
    assert client.get_run(parent).data.tags[L.OPTUNA_STUDY] == "study"


def test_the_experiment_shares_a_view_of_its_trials(tmp_path: Path) -> None:
    """The runs table's columns cannot be set in a URL: the experiment's shared view brings them,
    the trials best first with their outcome, metric and sampled params; its filter is one MLflow
    takes and the URL the search prints names it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    space = load_space("cpu-mini")
    parent = open_parent_run(uri, "viewed", "s1", space)
    experiment = client.get_experiment_by_name("viewed")
    view = json.loads(experiment.tags[f"mlflow.sharedViewState.{L.TRIALS_VIEW}"])
    assert view["selectedColumns"][:2] == ["tags.`hpo.outcome`", "metrics.`val/ap`"]
    assert {f"params.`{key}`" for key in space.params} == set(view["selectedColumns"][2:])
    assert view["columnOrder"] == view["selectedColumns"] and view["orderByAsc"] is False
    client.create_run(experiment.experiment_id, tags={L.ROLE: L.TRIAL})
    found = client.search_runs([experiment.experiment_id], view["searchFilter"], order_by=[view["orderByKey"] + " DESC"])
    assert parent not in {run.info.run_id for run in found} and len(found) == 1
    url = L.trials_view_url("http://127.0.0.1:5000", experiment.experiment_id)
    assert url.endswith(f"/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=trials")


def test_one_parent_with_the_search_tags_params_and_space(search) -> None:
    client, space = search["client"], search["space"]
    experiment = client.get_experiment_by_name(EXPERIMENT)
    parents = client.search_runs([experiment.experiment_id], "tags.`hpo.role` = 'parent'")
    assert [r.info.run_id for r in parents] == [search["parent"]] and search["reopened"] == search["parent"]
    run = parents[0]
    assert run.data.tags["hpo.search_id"] == SEARCH_ID
    assert (run.data.tags["hpo.space"], run.data.tags["hpo.metric"], run.data.tags["hpo.mode"]) == (EXPERIMENT, "val/ap", "max")
    assert run.data.params == {
        "metric": "val/ap",
        "mode": "max",
        "num_samples": "1",
        "max_epochs": str(MAX_EPOCHS),
        "scheduler": "none",
        "sampler": "grid",
    }
    path = download_artifacts(run_id=run.info.run_id, artifact_path="search_space.yaml", tracking_uri=search["uri"])
    assert space_from_dict(yaml.safe_load(Path(path).read_text())) == space
    # Artifacts live next to the database, not in the working directory.
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(search["root"])


def test_one_child_per_trial_with_its_outcome(search) -> None:
    rows = search["first"]
    assert len(rows) == 4 and len({r["trial_id"] for r in rows}) == 4
    assert {r["trial_id"] for r in rows} == {t.trial_id for t in search["trials"]}
    fate = by_lr(rows)
    assert fate[COMPLETED]["outcome"] == "completed" and fate[COMPLETED]["status"] == "FINISHED"
    assert fate[DIVERGED]["outcome"] == "stopped:diverged" and fate[DIVERGED]["status"] == "FAILED"
    assert fate[DIVERGED]["diagnosis"] == "diverged" and fate[COMPLETED]["diagnosis"] == "healthy"
    assert fate[DIVERGED]["message"] == "loss exploded (made up)" and fate[COMPLETED]["message"] == ""
    assert fate[PRUNED]["outcome"] == "pruned" and fate[PRUNED]["pruned_at_epoch"] == 2
    assert fate[PRUNED]["status"] == "KILLED" and fate[COMPLETED]["pruned_at_epoch"] is None
    assert fate[FAILED]["outcome"] == "error" and fate[FAILED]["status"] == "FAILED"
    assert sorted(fate) == [COMPLETED, DIVERGED, PRUNED, FAILED]  # params read back as numbers
    assert all(set(row["params"]) == {"optim.lr"} for row in rows)


def test_child_tags_metrics_and_trial_config(search) -> None:
    client, uri = search["client"], search["uri"]
    fate = by_lr(search["first"])
    run = client.get_run(fate[COMPLETED]["run_id"])
    assert run.data.tags["mlflow.parentRunId"] == search["parent"]
    assert run.data.tags["hpo.role"] == "trial" and run.data.tags["hpo.search_id"] == SEARCH_ID
    assert run.data.params == {"optim.lr": str(COMPLETED)}
    assert set(run.data.metrics) == set(TRIAL_METRICS)  # nothing else: no epoch, no time/, no raw/
    ap = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val/ap"))
    assert ap == [(e, pytest.approx(COMPLETED * 10 * e)) for e in range(1, MAX_EPOCHS + 1)]

    # The stopped trial: one epoch, its non-finite loss made finite; no validation metric (it was
    # not validated) and no penalty: only measured values are logged.
    diverged = fate[DIVERGED]
    assert diverged["metrics"]["health/stop"] == 1.0 and diverged["metrics"]["train/loss"] == NONFINITE_FILL
    assert not any(key.startswith("val/") for key in diverged["metrics"])
    assert client.get_metric_history(diverged["run_id"], "val/ap") == []
    for row in search["first"]:
        assert all(m.value >= 0 for m in client.get_metric_history(row["run_id"], "val/ap"))

    # Names and descriptions say how each trial ended, with the monitor's evidence.
    names = {lr: client.get_run(row["run_id"]).info.run_name for lr, row in fate.items()}
    assert names[COMPLETED].endswith(" completed") and names[PRUNED].endswith(" pruned@2")
    assert names[DIVERGED].endswith(" stopped:diverged") and names[FAILED].endswith(" error")
    note = client.get_run(diverged["run_id"]).data.tags["mlflow.note.content"]
    assert "stopped:diverged after epoch 1" in note and "Health monitor: loss exploded" in note

    path = download_artifacts(run_id=run.info.run_id, artifact_path="trial_config.yaml", tracking_uri=uri)
    cfg = yaml.safe_load(Path(path).read_text())
    assert cfg["optim"]["lr"] == COMPLETED and cfg["epochs"] == MAX_EPOCHS
    assert cfg["model"]["backbone"] == "tiny"  # from the space's fixed settings


def test_mlflow_is_written_off_the_loop_and_complete_when_fit_returns(search) -> None:
    """No hook wrote to MLflow on Tune's event loop (the main thread), yet every ended trial
    (completed, stopped, pruned, errored) has its outcome and learning curves once ``Tuner.fit``
    has returned."""
    threads = search["writer_threads"]
    assert {"start", "result", "complete", "end", "artifacts"} <= set(threads), threads
    assert all(threading.main_thread().name not in names for names in threads.values()), threads
    assert sorted(r["outcome"] for r in search["first"]) == ["completed", "error", "pruned", "stopped:diverged"]
    for trial_id, paths in search["artifacts_at_return"].items():
        assert {"trial_config.yaml", "learning_curves.png"} <= paths, (trial_id, paths)


def test_resume_creates_no_duplicates(search) -> None:
    """The restored search reran the errored trial into its own run; nothing else changed."""
    after = trial_outcomes(search["uri"], SEARCH_ID)
    assert sorted(r["run_id"] for r in after) == sorted(r["run_id"] for r in search["first"])
    assert [r["outcome"] for r in after] == [r["outcome"] for r in search["first"]]
    client = search["client"]
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert len(client.search_runs([experiment.experiment_id], "tags.`hpo.role` = 'trial'")) == 4
    failed = by_lr(after)[FAILED]["run_id"]
    assert [m.step for m in client.get_metric_history(failed, "val/ap")] == [1]  # epoch 1 not logged twice


def test_replaying_the_same_trials_logs_nothing_twice(search) -> None:
    uri, client = search["uri"], search["client"]
    callback = MlflowTrialCallback(uri, search["parent"], SEARCH_ID, search["space"], MAX_EPOCHS)
    for trial in search["trials"]:
        callback.on_trial_start(iteration=0, trials=search["trials"], trial=trial)
        callback.on_trial_result(iteration=0, trials=search["trials"], trial=trial, result=trial.last_result)
        callback.on_trial_complete(iteration=0, trials=search["trials"], trial=trial)
    callback.flush()
    rows = trial_outcomes(uri, SEARCH_ID)
    assert sorted(r["run_id"] for r in rows) == sorted(r["run_id"] for r in search["first"])
    completed = by_lr(rows)[COMPLETED]
    assert completed["outcome"] == "completed"
    assert len(client.get_metric_history(completed["run_id"], "val/ap")) == MAX_EPOCHS


def test_a_tracking_failure_is_a_warning(search, caplog: pytest.LogCaptureFixture) -> None:
    callback = MlflowTrialCallback(search["uri"], "no-such-run", SEARCH_ID, search["space"], MAX_EPOCHS)
    trial = search["trials"][0]
    with caplog.at_level(logging.WARNING, logger="hpo.tracking"):
        callback.on_trial_start(iteration=0, trials=[trial], trial=trial)
        callback.on_trial_result(iteration=0, trials=[trial], trial=trial, result=trial.last_result)
        callback.on_trial_error(iteration=0, trials=[trial], trial=trial)
        callback.flush()
    hooks = [r.args[1] for r in caplog.records if trial.trial_id in r.getMessage()]
    assert hooks == ["start", "result", "end", "artifacts"]  # each failed alone, none raised


def test_finish_parent_run_writes_the_summary(search) -> None:
    uri, client = search["uri"], search["client"]
    rows = [{"trial_id": r["trial_id"], "outcome": r["outcome"], **r["metrics"]} for r in search["first"]]
    rows[0]["extra"] = "only here"
    best = {"trial_id": "abc123", "outcome": "completed", "val/ap": 0.25, "optim.lr": 0.002, "loss.box_loss": "giou"}
    finish_parent_run(uri, search["parent"], rows, "finished", best=best, metric="val/ap")
    run = client.get_run(search["parent"])
    assert run.info.status == "FINISHED" and run.data.tags["hpo.status"] == "finished"
    # The runs table shows the best trial on the parent; its description counts the outcomes.
    assert run.data.metrics["val/ap"] == 0.25 and run.data.tags["hpo.best_trial"] == "abc123"
    assert "| stopped:diverged | 1 |" in run.data.tags["mlflow.note.content"]
    assert run.data.tags["hpo.best_params"] == "optim.lr=0.002, loss.box_loss=giou"
    assert "Its params: optim.lr=0.002, loss.box_loss=giou." in run.data.tags["mlflow.note.content"]
    path = download_artifacts(run_id=search["parent"], artifact_path="summary.csv", tracking_uri=uri)
    table = list(csv.DictReader(io.StringIO(Path(path).read_text())))
    assert [row["trial_id"] for row in table] == [r["trial_id"] for r in rows]
    assert table[0]["extra"] == "only here" and table[1]["extra"] == ""
    with pytest.raises(ValueError, match="status"):
        finish_parent_run(uri, search["parent"], rows, "done")  # type: ignore[arg-type]


def test_reconcile_rebuilds_the_record_from_tunes_results(search, tmp_path: Path) -> None:
    """What ``--resume`` does after an outage: an empty store gets, from Tune's stored results
    alone, every trial's run with the live record's outcome and epochs; a second pass writes nothing."""
    uri = f"sqlite:///{tmp_path / 'rebuilt.db'}"
    parent = open_parent_run(uri, EXPERIMENT, SEARCH_ID, search["space"])
    results = tune.Tuner.restore(str(search["root"] / "ray_results" / "search"), fake_trainable).get_results()
    callback = MlflowTrialCallback(uri, parent, SEARCH_ID, search["space"], MAX_EPOCHS)
    assert callback.reconcile(results) == 4
    live, rebuilt = trial_outcomes(search["uri"], SEARCH_ID), trial_outcomes(uri, SEARCH_ID)
    assert sorted(r["trial_id"] for r in rebuilt) == sorted(r["trial_id"] for r in live)
    outcomes = {lr: row["outcome"] for lr, row in by_lr(rebuilt).items()}
    assert outcomes == {COMPLETED: "completed", DIVERGED: "stopped:diverged", PRUNED: "pruned", FAILED: "error"}
    client, live_runs = MlflowClient(uri), {r["trial_id"]: r["run_id"] for r in live}
    for row in rebuilt:
        for key in ("val/ap", "train/loss", "health/stop"):
            steps = [(m.step, m.value) for m in client.get_metric_history(row["run_id"], key)]
            expected = [(m.step, m.value) for m in search["client"].get_metric_history(live_runs[row["trial_id"]], key)]
            assert sorted(steps) == sorted(expected), (row["trial_id"], key)
        assert "learning_curves.png" in {a.path for a in client.list_artifacts(row["run_id"])}
    assert MlflowTrialCallback(uri, parent, SEARCH_ID, search["space"], MAX_EPOCHS).reconcile(results) == 0


def test_a_failed_write_waits_in_the_journal_and_is_replayed_in_order(search, tmp_path: Path) -> None:
    """Writes to a parent run that does not exist (as if the server had gone) are journaled in
    order, survive the callback (a new one replays them) and are gone once replayed."""
    journal = tmp_path / "journal.jsonl"
    trial = search["trials"][0]
    down = MlflowTrialCallback(search["uri"], "no-such-run", SEARCH_ID, search["space"], MAX_EPOCHS, journal=journal)
    down.on_trial_start(iteration=0, trials=[trial], trial=trial)
    down.on_trial_result(iteration=0, trials=[trial], trial=trial, result=trial.last_result)
    down.on_trial_complete(iteration=0, trials=[trial], trial=trial)
    down.flush()
    assert down.journaled == 4 and down.had_failures
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [e["op"] for e in entries] == ["start", "result", "complete", "artifacts"]
    # A new driver (a resumed search) with the real parent replays them; MLflow ignores what it has.
    before = trial_outcomes(search["uri"], SEARCH_ID)
    up = MlflowTrialCallback(search["uri"], search["parent"], SEARCH_ID, search["space"], MAX_EPOCHS, journal=journal)
    assert up.replay_journal() and up.journaled == 0 and not journal.exists()
    after = trial_outcomes(search["uri"], SEARCH_ID)
    assert sorted(r["run_id"] for r in after) == sorted(r["run_id"] for r in before)
