"""``hpo/search.py`` end to end: real Ray Tune, Optuna and MLflow (SQLite) on the mini set."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml

from hpo.export import main as export_main
from hpo.layout import PENALTY_MAX
from hpo.search import CLUSTER_CACHE_DIR, INTERRUPTED_EXIT, cache_dir, parse_args
from hpo.search import main as search_main
from hpo.space import load_space
from hpo.stopping import RungAwareOptunaSearch, optuna_study
from hpo.trainable import _trial_config
from tests.support import space_file, tune_results, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

# Starting points of the e2e search: every sampled key set. Found with the trainer on the demo's
# mini set at the cpu-mini space's sizes (300 training images at 160 px, batch 8, seed 0).
_BASE = {"optim.lr": 0.01, "schedule.warmup_epochs": 0.0, "loss.box_weight": 1.0, "loss.neg_pos_ratio": 3}
#: SGD at lr 5, no warm-up: the loss explodes within the first step checks.
DIVERGING = {**_BASE, "optim.lr": 5.0}
#: The study's early-stage avoidance: box weight 10, 30 negatives per positive, no warm-up. The top
#: face score is 1.0 after epoch 1, then no face is predicted (top score < 0.1, AP 0).
COLLAPSING = {**_BASE, "loss.box_weight": 10.0, "loss.neg_pos_ratio": 30}
#: The defaults with half an epoch of warm-up: AP 0.006 -> 0.02 over 3 epochs, never flagged.
HEALTHY = {**_BASE, "schedule.warmup_epochs": 0.5}


def _write_space(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _e2e_space(tmp_path: Path) -> Path:
    """The cpu-mini space with the three starting points and one sampled trial, 4 epochs at most.

    ASHA's only rung is at epoch 3, after the health monitor's first verdicts (grace 1 epoch,
    collapse at the first collapsed evaluation past it): the collapse is the monitor's to catch, not
    ASHA's. (With a patience of 2 it depended on the CPU: on an AMD EPYC the collapsing point's top
    score fell to 0.05 at epoch 3 and came back to 0.99 at epoch 4, one collapsed evaluation only.)
    """
    raw = load_space("cpu-mini").as_dict()
    raw.update(
        name="e2e",
        budget={"num_samples": 4, "max_epochs": 4, "max_concurrent_trials": 2, "time_budget_s": None},
        scheduler={"type": "asha", "grace_period": 3, "reduction_factor": 2, "brackets": 1},
        params={
            "optim.lr": {"distribution": "loguniform", "low": 1e-3, "high": 10.0},
            "schedule.warmup_epochs": {"distribution": "uniform", "low": 0.0, "high": 1.0},
            "loss.box_weight": {"distribution": "loguniform", "low": 0.01, "high": 10.0},
            "loss.neg_pos_ratio": {"distribution": "int", "low": 1, "high": 30},
        },
        points_to_evaluate=[DIVERGING, COLLAPSING, HEALTHY],
    )
    raw["sampler"]["n_startup_trials"] = 4
    raw["fixed"].update({"health.grace_epochs": 1, "health.collapse_patience": 1, "health.min_span_steps": 0})
    return _write_space(tmp_path, raw)


def _trial_runs(client: mlflow.MlflowClient, experiment_id: str) -> list:
    return client.search_runs([experiment_id], filter_string="tags.`hpo.role` = 'trial'")


def _point(run) -> dict:
    return {k: type(v)(run.data.params[k]) for k, v in _BASE.items()}


@pytest.fixture(scope="module")
def e2e(full_mini: Path, tmp_path_factory: pytest.TempPathFactory):
    """One real search of the e2e space: its arguments, exit status, MLflow URI and results folder."""
    tmp_path = tmp_path_factory.mktemp("e2e")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        "--space", str(_e2e_space(tmp_path)),
        "--data", str(full_mini),
        "--storage-path", str(tmp_path / "ray"),
        "--tracking-uri", uri,
        "--cache-dir", str(tmp_path / "image-cache"),
    ]  # fmt: skip
    rc = search_main(args)
    return {"args": args, "rc": rc, "uri": uri, "tmp": tmp_path, "search_dir": tmp_path / "ray" / "e2e"}


def test_search_stops_the_failures_with_their_diagnoses_and_tracks_every_trial_once(e2e) -> None:
    assert e2e["rc"] == 0
    client = mlflow.MlflowClient(e2e["uri"])
    experiment = client.get_experiment_by_name("e2e")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.`hpo.role` = 'parent'")
    assert len(parents) == 1 and parents[0].data.tags["hpo.status"] == "finished"
    trials = _trial_runs(client, experiment.experiment_id)
    assert len(trials) == 4
    assert all(t.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for t in trials)
    assert len({t.data.tags["hpo.trial_id"] for t in trials}) == 4
    # The runs table's shared view (what the printed URL opens) lists exactly these trials.
    view = json.loads(experiment.tags["mlflow.sharedViewState.trials"])
    in_view = client.search_runs([experiment.experiment_id], view["searchFilter"], order_by=[view["orderByKey"] + " DESC"])
    assert {t.info.run_id for t in in_view} == {t.info.run_id for t in trials}
    by_point = {tuple(_point(t).values()): t for t in trials}

    diverged = by_point[tuple(DIVERGING.values())]
    assert diverged.data.tags["hpo.outcome"] == "stopped:diverged"
    assert [m.step for m in client.get_metric_history(diverged.info.run_id, "health/stop")] == [1]  # its first epoch
    assert client.get_metric_history(diverged.info.run_id, "val/ap") == []  # stopped before validating: nothing measured
    # Its name says how it ended; its description and a tag give the monitor's evidence.
    assert diverged.info.run_name == f"{diverged.data.tags['hpo.trial_id']} stopped:diverged"
    assert diverged.data.tags["hpo.health_message"].startswith("diverged at step")
    assert f"Health monitor: {diverged.data.tags['hpo.health_message']}" in diverged.data.tags["mlflow.note.content"]

    collapsed = by_point[tuple(COLLAPSING.values())]
    assert collapsed.data.tags["hpo.outcome"] == "stopped:background-collapse", collapsed.data.tags
    assert collapsed.data.tags["hpo.diagnosis"] == "background-collapse"
    epochs = [m.step for m in client.get_metric_history(collapsed.info.run_id, "val/ap")]
    # Every epoch up to the stop measured once. Named within the 4-epoch budget; at which epoch, float rounding of the
    # augmentation decides (the closed-form hue step moved it from 3 to 4; the outcome above is the check).
    assert epochs and epochs == list(range(1, len(epochs) + 1))

    healthy = by_point[tuple(HEALTHY.values())]
    assert healthy.data.tags["hpo.outcome"] in ("completed", "pruned") and healthy.data.tags["hpo.diagnosis"] == "healthy"
    for run in trials:
        assert run.data.tags["hpo.outcome"] in ("completed", "pruned") or run.data.tags["hpo.outcome"].startswith("stopped:")
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"trial_config.yaml", "learning_curves.png", "detections.png"} <= artifacts, artifacts
    # Only measured values are logged: no penalty, no placeholder (AP is never negative).
    assert all(m.value >= 0 for t in trials for m in client.get_metric_history(t.info.run_id, "val/ap"))
    # The parent names the best completed trial, with its metric and params.
    completed = [t for t in trials if t.data.tags["hpo.outcome"] == "completed"]
    parent = parents[0].data
    if completed:
        best = max(completed, key=lambda t: t.data.metrics["val/ap"])
        assert parent.tags["hpo.best_trial"] == best.data.tags["hpo.trial_id"]
        assert parent.metrics["val/ap"] == pytest.approx(best.data.metrics["val/ap"])
        assert f"optim.lr={best.data.params['optim.lr']}" in parent.tags["hpo.best_params"]
    else:
        assert "hpo.best_trial" not in parent.tags and "val/ap" not in parent.metrics
    # The parent holds the space, the summary table and the report with its plots.
    parent_artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"search_space.yaml", "summary.csv", "report"} <= parent_artifacts, parent_artifacts
    report = {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    assert "report/report.html" in report and any(p.endswith(".png") for p in report), report
    assert (e2e["search_dir"] / "report" / "report.html").is_file()


def test_trials_share_their_workers_and_the_image_cache_of_cache_dir(e2e) -> None:
    """4 trials, 2 at a time: the search reuses its 2 workers (no new process per trial), and the
    trials read the decoded images from the one cache built under --cache-dir."""
    rows = tune_results(e2e["search_dir"])
    assert len(rows) == 4
    pids = {row["pid"] for trial in rows.values() for row in trial}
    assert len(pids) <= 2, pids
    built = sorted(p.name.split("-")[1] for p in (e2e["tmp"] / "image-cache").glob("widerface-*.arrow"))
    assert built == ["train", "val"], built


def test_cache_dir_is_beside_the_data_locally_and_node_local_on_a_cluster(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "data"
    assert cache_dir(parse_args([]), root) == str(root / ".cache")
    assert cache_dir(parse_args(["--address", "auto"]), root) == CLUSTER_CACHE_DIR == "~/.cache/ssd-face-hpo"
    assert cache_dir(parse_args(["--address", "auto", "--cache-dir", "~/scratch/c"]), root) == "~/scratch/c"
    monkeypatch.chdir(tmp_path)
    assert cache_dir(parse_args(["--cache-dir", "rel/c"]), root) == str(tmp_path / "rel" / "c")
    # "~" reaches the trial as it is and is expanded there, on the node the trial runs on.
    monkeypatch.setenv("HOME", str(tmp_path / "node-home"))
    space = load_space("cpu-mini")
    cfg = _trial_config(space.trial_config(dict(space.points_to_evaluate[0])), str(root), CLUSTER_CACHE_DIR, gpu=False)
    assert cfg.data.cache_dir == tmp_path / "node-home" / ".cache" / "ssd-face-hpo"


def _stored_study(uri: str, experiment: str, search_dir: Path) -> optuna.Study:
    """The search's Optuna study from the RDB storage its parent run names (beside its results)."""
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow's UI: the runs table
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.`hpo.role` = 'parent'")
    storage, name = parent.data.tags["hpo.optuna_storage"], parent.data.tags["hpo.optuna_study"]
    assert storage.startswith("sqlite:///") and Path(storage.removeprefix("sqlite:///")).samefile(search_dir / "optuna.db")
    return optuna.load_study(study_name=name, storage=storage)


def test_optuna_records_stopped_trials_with_their_penalty(e2e) -> None:
    """The study in its storage (what optuna-dashboard opens): every trial, none RUNNING, each
    with its Tune trial id and the state its outcome calls for; the searcher state Tune saved
    (what --resume restores) reads the same study."""
    study = _stored_study(e2e["uri"], "e2e", e2e["search_dir"])
    assert len(study.trials) == 4
    client = mlflow.MlflowClient(e2e["uri"])
    runs = _trial_runs(client, client.get_experiment_by_name("e2e").experiment_id)
    outcomes = {r.data.tags["hpo.trial_id"]: r.data.tags["hpo.outcome"] for r in runs}
    by_trial = {t.user_attrs["hpo.trial_id"]: t for t in study.trials}
    assert sorted(by_trial) == sorted(outcomes)
    for trial_id, outcome in outcomes.items():
        expected = optuna.trial.TrialState.PRUNED if outcome == "pruned" else optuna.trial.TrialState.COMPLETE
        assert by_trial[trial_id].state == expected, (trial_id, outcome, by_trial[trial_id].state)
    for point in (DIVERGING, COLLAPSING):
        trial = next(t for t in study.trials if t.params == point)
        assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == PENALTY_MAX, trial
    searcher = RungAwareOptunaSearch(max_epochs=4)
    searcher.restore_from_dir(str(e2e["search_dir"]))
    restored = optuna_study(searcher)
    assert [(t.number, t.state, t.params) for t in restored.trials] == [(t.number, t.state, t.params) for t in study.trials]
    assert "Optuna study" in (e2e["search_dir"] / "report" / "report.html").read_text()  # the report read it


def test_resuming_a_finished_search_reruns_nothing_and_export_writes_a_trainable_config(e2e, capsys) -> None:
    client = mlflow.MlflowClient(e2e["uri"])
    experiment = client.get_experiment_by_name("e2e")
    before = {
        t.info.run_id: [m.step for m in client.get_metric_history(t.info.run_id, "val/ap")]
        for t in _trial_runs(client, experiment.experiment_id)
    }
    assert search_main([*e2e["args"], "--resume"]) == 0
    after = {
        t.info.run_id: [m.step for m in client.get_metric_history(t.info.run_id, "val/ap")]
        for t in _trial_runs(client, experiment.experiment_id)
    }
    assert after == before

    outcomes = [t.data.tags["hpo.outcome"] for t in _trial_runs(client, experiment.experiment_id)]
    if "completed" in outcomes:
        best = e2e["tmp"] / "best.yaml"
        assert export_main(["--experiment", "e2e", "--out", str(best), "--tracking-uri", e2e["uri"]]) == 0
        cfg = yaml.safe_load(best.read_text())
        assert cfg["optim"]["lr"] != DIVERGING["optim.lr"]
        from model.config import load_config

        assert load_config(best).epochs == cfg["epochs"]


# -- an interrupted search ------------------------------------------------------------------------


def _interrupt_space(tmp_path: Path) -> Path:
    """Three healthy trials one at a time, 3 epochs of 12 steps each, no scheduler: all complete."""
    return space_file(
        tmp_path, "interrupted",
        budget={"num_samples": 3, "max_epochs": 3, "max_concurrent_trials": 1, "time_budget_s": None},
        scheduler={"type": "none"}, params={"optim.lr": {"distribution": "loguniform", "low": 5e-3, "high": 2e-2}},
        points_to_evaluate=[],
        fixed={"data.max_train_images": 96, "data.max_val_images": 16, "model.input_size": 128, "schedule.warmup_epochs": 0.5},
    )  # fmt: skip


def test_an_interrupted_search_resumes_without_rerunning_or_duplicating(mini_root: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        "--space", str(_interrupt_space(tmp_path)),
        "--data", str(mini_root),
        "--storage-path", str(tmp_path / "ray"),
        "--tracking-uri", uri,
        "--no-report",
    ]  # fmt: skip
    search_dir = tmp_path / "ray" / "interrupted"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "hpo/search.py", *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def one_done_and_one_under_way() -> bool:
        rows = tune_results(search_dir)
        done = [t for t, r in rows.items() if r[-1]["epoch"] == 3]
        return len(done) == 1 and any(t not in done for t in rows)

    wait_for(one_done_and_one_under_way, 300, proc, stop=proc.kill)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == INTERRUPTED_EXIT, out[-3000:]
    assert "== search interrupted ==" in out and "--resume" in out

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("interrupted")
    parent = client.search_runs([experiment.experiment_id], filter_string="tags.`hpo.role` = 'parent'")
    assert len(parent) == 1 and parent[0].data.tags["hpo.status"] == "interrupted"
    runs = _trial_runs(client, experiment.experiment_id)
    assert sorted(r.data.tags["hpo.outcome"] for r in runs) == ["completed", "interrupted"]
    before = tune_results(search_dir)
    finished = next(t for t, rows in before.items() if rows[-1]["epoch"] == 3)
    cut = next(t for t in before if t != finished)

    assert search_main([*args, "--resume"]) == 0
    after = tune_results(search_dir)
    runs = _trial_runs(client, experiment.experiment_id)
    parent = client.get_run(parent[0].info.run_id)
    assert parent.data.tags["hpo.status"] == "finished"
    assert len(after) == 3 and len(runs) == 3  # every trial once, in Tune and in MLflow
    assert sorted({r.data.tags["hpo.trial_id"] for r in runs}) == sorted(after)
    assert all(r.data.tags["hpo.outcome"] == "completed" for r in runs)
    # The finished trial was not run again; the interrupted one went on from its checkpoint.
    assert after[finished] == before[finished]
    epochs = [row["epoch"] for row in after[cut]]
    assert epochs == [1, 2, 3], epochs
    assert after[cut][-1]["iterations_since_restore"] < after[cut][-1]["training_iteration"]
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/ap")]
        assert steps == [1, 2, 3], (run.data.tags["hpo.trial_id"], steps)
    # One Optuna study across the interruption, in its storage: each trial once, all told COMPLETE.
    study = _stored_study(uri, "interrupted", search_dir)
    assert sorted(t.user_attrs["hpo.trial_id"] for t in study.trials) == sorted(after)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials), [t.state for t in study.trials]


def test_how_a_trial_ended_in_the_summary() -> None:
    from hpo.search import outcome_of

    assert outcome_of({}, None, 6) == "interrupted"  # started, never reported: not "pruned@0"
    assert outcome_of({"epoch": 2, "health/stop": 0.0}, None, 6) == "pruned@2"
    assert outcome_of({"epoch": 6, "health/stop": 0.0}, None, 6) == "completed"
    assert outcome_of({"epoch": 1, "health/stop": 1.0, "health/diagnosis": "diverged"}, None, 6) == "stopped:diverged"
    assert outcome_of({"epoch": 1}, RuntimeError("boom"), 6) == "error"
    assert outcome_of({"epoch": 3}, None, 6, unfinished=True) == "interrupted"


def test_the_searchers_study_lives_in_its_storage_across_a_save_and_restore(tmp_path: Path) -> None:
    """What --resume relies on without running a search: Tune pickles the searcher (its study's
    storage with it) and unpickles it; the restored one reconnects to the same sqlite file, and
    refuses, in words, a file without the study (the search moved to another machine)."""
    from hpo.stopping import build_searcher

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = build_searcher(load_space("cpu-mini"), storage=storage, study_name="demo").searcher
    assert searcher.suggest("t1") is not None
    searcher.save(str(tmp_path / "searcher.pkl"))
    searcher.on_trial_complete("t1", {"training_iteration": 1, "epoch": 1, "val/ap": PENALTY_MAX, "health/stop": 1.0})

    restored = RungAwareOptunaSearch(max_epochs=4)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("t2") is not None
    study = optuna.load_study(study_name="demo", storage=storage)
    told = {t.user_attrs.get("hpo.trial_id"): t for t in study.trials}
    assert told["t1"].state == optuna.trial.TrialState.COMPLETE and told["t1"].value == PENALTY_MAX
    assert told["t2"].state == optuna.trial.TrialState.RUNNING  # asked after the restore, in the same study
    assert len(optuna_study(restored).trials) == len(study.trials)

    (tmp_path / "optuna.db").unlink()
    with pytest.raises(RuntimeError, match="'demo' is not in sqlite:///.*on the machine that holds that file"):
        RungAwareOptunaSearch(max_epochs=4).restore(str(tmp_path / "searcher.pkl"))
