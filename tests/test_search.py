"""``hpo/search.py`` end to end: real Ray Tune, Optuna and MLflow (SQLite) on the mini set."""

from pathlib import Path

import mlflow
import pytest
import yaml

from hpo.export import main as export_main
from hpo.search import main as search_main
from hpo.space import load_space

pytestmark = pytest.mark.slow

DIVERGING = {"optim.lr": 5.0, "schedule.warmup_epochs": 0.0}
HEALTHY = {"optim.lr": 0.01, "schedule.warmup_epochs": 0.5}


def _space_file(tmp_path: Path) -> Path:
    raw = load_space("cpu-mini").as_dict()
    raw.update(
        name="e2e",
        budget={"num_samples": 3, "max_epochs": 2, "max_concurrent_trials": 2, "time_budget_s": None},
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2, "brackets": 1},
        params={
            "optim.lr": {"distribution": "loguniform", "low": 1e-3, "high": 10.0},
            "schedule.warmup_epochs": {"distribution": "uniform", "low": 0.0, "high": 1.0},
        },
        points_to_evaluate=[DIVERGING, HEALTHY],
    )
    raw["sampler"]["n_startup_trials"] = 3
    raw["fixed"].update(
        {
            "data.max_train_images": 32,
            "data.max_val_images": 16,
            "model.input_size": 128,
            "batch_size": 8,
            "health.check_every_steps": 2,
        }
    )
    path = tmp_path / "e2e.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _trial_runs(client: mlflow.MlflowClient, experiment_id: str) -> list:
    return client.search_runs([experiment_id], filter_string="tags.`hpo.role` = 'trial'")


def test_search_stops_the_diverging_trial_tracks_every_trial_once_and_resumes(mini_root: Path, tmp_path: Path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        "--space", str(_space_file(tmp_path)),
        "--data", str(mini_root),
        "--storage-path", str(tmp_path / "ray"),
        "--tracking-uri", uri,
    ]  # fmt: skip
    assert search_main(args) == 0
    out = capsys.readouterr().out
    assert "== search finished ==" in out and "stopped:diverged" in out

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("e2e")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.`hpo.role` = 'parent'")
    assert len(parents) == 1
    trials = _trial_runs(client, experiment.experiment_id)
    assert len(trials) == 3
    assert all(t.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for t in trials)
    outcomes = {float(t.data.params["optim.lr"]): t.data.tags["hpo.outcome"] for t in trials}
    assert outcomes[5.0] == "stopped:diverged"
    assert all(o in ("completed", "pruned") for lr, o in outcomes.items() if lr != 5.0)
    diverged = next(t for t in trials if float(t.data.params["optim.lr"]) == 5.0)
    assert [m.step for m in client.get_metric_history(diverged.info.run_id, "val/ap")] == [1]  # its first epoch

    # A resumed search (here: of a finished one) re-runs nothing and duplicates no run.
    assert search_main([*args, "--resume"]) == 0
    assert len(_trial_runs(client, experiment.experiment_id)) == 3
    assert [m.step for m in client.get_metric_history(diverged.info.run_id, "val/ap")] == [1]

    if "completed" in outcomes.values():
        best = tmp_path / "best.yaml"
        assert export_main(["--experiment", "e2e", "--out", str(best), "--tracking-uri", uri]) == 0
        assert yaml.safe_load(best.read_text())["optim"]["lr"] != 5.0
