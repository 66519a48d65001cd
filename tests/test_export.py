"""Exporting the best trial: a search's MLflow layout built by hand, then the export and a training run."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from hpo.export import ExportError, export_best, main
from model.config import TrainConfig, load_config
from model.data.mini import ensure_mini

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "faces"


@dataclass
class Store:
    uri: str
    client: MlflowClient
    root: Path
    mini: Path
    old_search: str = "0ld5ea4c4"
    new_search: str = "7e55ea4c4"
    parents: dict[str, str] | None = None  # search id -> parent run id
    children: dict[str, str] | None = None  # trial id -> run id


def _trial_config(store: Store, **overrides) -> TrainConfig:
    base = {"data.root": str(store.mini), "model.input_size": 128, "batch_size": 8, "epochs": 4, "schedule.warmup_iters": 0}
    return TrainConfig().with_overrides({**base, **overrides})


def _child(store: Store, exp_id: str, parent_id: str, search_id: str, trial_id: str, outcome: str, diagnosis: str,
           val_ap: list[float], train_loss: list[float], overrides: dict) -> str:
    tags = {
        "mlflow.parentRunId": parent_id,
        "hpo.role": "trial",
        "hpo.search_id": search_id,
        "hpo.trial_id": trial_id,
        "hpo.outcome": outcome,
        "hpo.diagnosis": diagnosis,
    }
    run = store.client.create_run(exp_id, tags=tags, run_name=trial_id)
    run_id = run.info.run_id
    for step, (ap, loss) in enumerate(zip(val_ap, train_loss), start=1):
        store.client.log_metric(run_id, "val/ap", ap, step=step)
        store.client.log_metric(run_id, "train/loss", loss, step=step)
    for key, value in overrides.items():
        store.client.log_param(run_id, key, value)
    path = store.root / "staging" / trial_id / "trial_config.yaml"
    path.parent.mkdir(parents=True)
    _trial_config(store, **overrides).to_yaml(path)
    store.client.log_artifact(run_id, str(path))
    store.client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Two searches of one experiment; the newer one has every trial outcome of the layout."""
    root = tmp_path_factory.mktemp("export")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    s = Store(uri, client, root, ensure_mini(root / "mini", num_train=16, num_val=8), parents={}, children={})
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    client.create_experiment("empty", artifact_location=(root / "artifacts-empty").as_uri())
    for search_id, start in ((s.old_search, 1_000), (s.new_search, 2_000)):
        tags = {"hpo.role": "parent", "hpo.search_id": search_id, "hpo.space": "demo", "hpo.metric": "val/ap", "hpo.mode": "max"}
        s.parents[search_id] = client.create_run(exp_id, start_time=start, tags=tags).info.run_id

    new = s.parents[s.new_search]
    # (trial id, outcome, diagnosis, val/ap per epoch, train/loss per epoch, sampled values)
    trials = [
        ("t_ok", "completed", "healthy", [0.10, 0.30, 0.50], [3.0, 2.0, 1.5], {"loss.box_weight": 0.5}),
        # Peaked higher than t_best but *ended* lower: the last value counts.
        ("t_peaked", "completed", "healthy", [0.20, 0.90, 0.55], [3.0, 2.5, 2.2], {"loss.box_weight": 1.0}),
        ("t_best", "completed", "healthy", [0.20, 0.40, 0.70], [3.0, 1.0, 1.2], {"loss.box_weight": 2.0, "optim.lr": 0.005}),
        # A "better" raw value, but the monitor stopped it: never exported.
        ("t_diverged", "stopped:diverged", "diverged", [0.50, 0.95], [3.0, 1e6], {"optim.lr": 0.9}),
        ("t_pruned", "pruned", "healthy", [0.92], [0.5], {"loss.box_weight": 3.0}),
        # Completed, but its last report carried a warning: not healthy.
        ("t_warned", "completed", "overfitting", [0.30, 0.80, 0.85], [2.0, 0.2, 0.1], {"loss.box_weight": 4.0}),
    ]
    for trial_id, outcome, diagnosis, ap, loss, overrides in trials:
        s.children[trial_id] = _child(s, exp_id, new, s.new_search, trial_id, outcome, diagnosis, ap, loss, overrides)
    # The older search only failed.
    old = s.parents[s.old_search]
    _child(s, exp_id, old, s.old_search, "o_pruned", "pruned", "healthy", [0.99], [0.1], {"loss.box_weight": 9.0})
    _child(s, exp_id, old, s.old_search, "o_stalled", "stopped:stalled", "stalled", [0.01, 0.01], [2.0, 2.0], {})
    return s


def test_exports_the_best_healthy_completed_trial_and_training_accepts_it(store: Store, tmp_path: Path) -> None:
    from model.train import main as train_main

    out = tmp_path / "prod" / "best.yaml"
    result = export_best(store.uri, EXPERIMENT, out, epochs=7)

    assert (result.trial_id, result.run_id) == ("t_best", store.children["t_best"])
    assert result.search_id == store.new_search and result.parent_run_id == store.parents[store.new_search]
    assert result.value == pytest.approx(0.70) and result.candidates == 3
    cfg = load_config(out)
    assert cfg.loss.box_weight == 2.0 and cfg.optim.lr == 0.005  # the chosen trial's sampled values
    assert cfg.epochs == 7  # the production length, not the trial's 4
    assert cfg.model.input_size == 128

    parent = store.client.get_run(result.parent_run_id)
    assert parent.data.tags["hpo.exported_trial"] == "t_best"
    assert parent.data.tags["hpo.exported_run"] == store.children["t_best"]
    logged = Path(store.client.download_artifacts(result.parent_run_id, "best.yaml", dst_path=str(tmp_path)))
    assert yaml.safe_load(logged.read_text()) == yaml.safe_load(out.read_text())

    run_dir = tmp_path / "run"
    argv = ["--config", str(out), "--epochs", "1", "--data", str(store.mini), "--out", str(run_dir), "--no-progress"]
    assert train_main(argv) == 0
    assert load_config(run_dir / "config.yaml").loss.box_weight == 2.0


def test_metric_and_mode_can_be_overridden_and_epochs_default_to_the_trial(store: Store, tmp_path: Path) -> None:
    result = export_best(store.uri, EXPERIMENT, tmp_path / "b.yaml", metric="train/loss", mode="min")
    # Lowest *last* train/loss among the healthy completed: t_best ends at 1.2, t_ok at 1.5.
    assert result.trial_id == "t_best" and result.value == pytest.approx(1.2)
    assert load_config(tmp_path / "b.yaml").epochs == 4

    result = export_best(store.uri, EXPERIMENT, tmp_path / "c.yaml", metric="train/loss", mode="max")
    assert result.trial_id == "t_peaked"  # 2.2: shows the ranking follows the mode, not a fixed order


def test_cli_runs_as_a_script(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "cli.yaml"
    cmd = [sys.executable, "hpo/export.py", "--experiment", EXPERIMENT, "--out", str(out), "--tracking-uri", store.uri,
           "--search-id", store.new_search, "--epochs", "3"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "t_best" in done.stdout
    assert load_config(out).epochs == 3


def test_no_healthy_completed_trial_lists_the_outcomes(store: Store, tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.yaml"
    code = main(["--experiment", EXPERIMENT, "--out", str(out), "--tracking-uri", store.uri, "--search-id", store.old_search])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "no healthy completed trial" in err and "2 trials" in err
    assert "pruned: 1" in err and "stopped:stalled: 1" in err
    # The failed export must not have marked the old search as exported.
    assert "hpo.exported_trial" not in store.client.get_run(store.parents[store.old_search]).data.tags


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--experiment", "nope"], ["no MLflow experiment 'nope'", "faces"]),
        (["--experiment", "empty"], ["'empty' has no parent run"]),
        (["--experiment", EXPERIMENT, "--search-id", "abc123"], ["no search 'abc123'", "7e55ea4c4"]),
        (["--experiment", EXPERIMENT, "--metric", "val/nothing"], ["no healthy completed trial", "no finite 'val/nothing'"]),
    ],
)
def test_clear_errors(store: Store, tmp_path: Path, capsys, args: list[str], expected: list[str]) -> None:
    assert main([*args, "--out", str(tmp_path / "x.yaml"), "--tracking-uri", store.uri]) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err


def test_missing_database_is_an_error_not_a_new_empty_one(tmp_path: Path) -> None:
    db = tmp_path / "typo.db"
    with pytest.raises(ExportError, match="no MLflow database"):
        export_best(f"sqlite:///{db}", EXPERIMENT, tmp_path / "x.yaml")
    assert not db.exists()
