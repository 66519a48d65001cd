"""Exporting the best trial: a search's MLflow layout built by hand, then the export and a training run."""

from __future__ import annotations

import json
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
    rec_search: str = "rec5ea4c4"  # health.on_failure: recover
    parents: dict[str, str] | None = None  # search id -> parent run id
    children: dict[str, str] | None = None  # trial id -> run id


def _trial_config(store: Store, **overrides) -> TrainConfig:
    base = {"data.root": str(store.mini), "model.input_size": 128, "batch_size": 8, "epochs": 4, "schedule.warmup_iters": 0}
    return TrainConfig().with_overrides({**base, **overrides})


def _child(
    store: Store,
    exp_id: str,
    parent_id: str,
    search_id: str,
    trial_id: str,
    outcome: str,
    diagnosis: str,
    val_ap: list[float],
    train_loss: list[float],
    overrides: dict,
) -> str:
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


#: What model/recovery.py records for cpu-mini's divergence (the default intervention for it).
DIVERGED_EVENT = {
    "recovery": 1, "diagnosis": "diverged", "verdict": "diverged: loss 3.1e+04 > 100x its early reference",
    "failed_epoch": 1, "failed_step": 3, "action": "rollback", "snapshot_epoch": 0, "snapshot_step": 0,
    "changes": {"optim.lr": [0.5, 0.05], "schedule.warmup_epochs": [None, 1.0]},
    "skipped_batches": [[1, 0], [1, 1], [1, 2]],
}  # fmt: skip


def _recovery_record(store: Store, run_id: str, trial_id: str, effective: TrainConfig, events: list[dict] | None) -> None:
    """What the tracking callback logs of a recovered trial's last checkpoint."""
    folder = store.root / "staging" / trial_id
    effective.to_yaml(folder / "effective_config.yaml")
    store.client.log_artifact(run_id, str(folder / "effective_config.yaml"))
    if events is not None:
        (folder / "recoveries.json").write_text(json.dumps(events))
        store.client.log_artifact(run_id, str(folder / "recoveries.json"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Two searches of one experiment; the newer one has every trial outcome of the layout."""
    root = tmp_path_factory.mktemp("export")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    s = Store(uri, client, root, ensure_mini(root / "mini", num_train=16, num_val=8), parents={}, children={})
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    client.create_experiment("empty", artifact_location=(root / "artifacts-empty").as_uri())
    for search_id, start in ((s.old_search, 1_000), (s.rec_search, 1_500), (s.new_search, 2_000)):
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

    # A search with recovery: the recovered trials' metric is their measured value (raw/<metric>).
    rec = s.parents[s.rec_search]
    fixed = _child(
        s, exp_id, rec, s.rec_search, "r_fixed", "recovered:diverged", "healthy", [0.1, 0.6], [3.0, 1.0], {"optim.lr": 0.5}
    )
    _recovery_record(s, fixed, "r_fixed", _trial_config(s, **{"optim.lr": 0.05, "schedule.warmup_epochs": 1.0}), [DIVERGED_EVENT])
    # Better, but logged without its effective config (a search from before it was logged): skipped.
    bare = _child(s, exp_id, rec, s.rec_search, "r_bare", "recovered:background-collapse", "healthy", [0.3, 0.8], [3.0, 2.0], {})
    s.client.log_metric(bare, "val/only_bare", 1.0, step=2)
    # Best of all, but it ended with a warning: not healthy, never exported.
    sick = _child(s, exp_id, rec, s.rec_search, "r_sick", "recovered:stalled", "overfitting", [0.2, 0.9], [3.0, 0.5], {})
    _recovery_record(s, sick, "r_sick", _trial_config(s, **{"optim.lr": 0.1}), None)
    s.children["r_ok"] = _child(
        s, exp_id, rec, s.rec_search, "r_ok", "completed", "healthy", [0.2, 0.4], [3.0, 1.0], {"loss.box_weight": 0.5}
    )
    s.children.update(r_fixed=fixed, r_bare=bare, r_sick=sick)
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
    cmd = [
        sys.executable,
        "hpo/export.py",
        "--experiment",
        EXPERIMENT,
        "--out",
        str(out),
        "--tracking-uri",
        store.uri,
        "--search-id",
        store.new_search,
        "--epochs",
        "3",
    ]
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


# -- recovered trials ------------------------------------------------------------------------------


def test_a_recovered_trial_is_exported_with_its_effective_config_when_it_is_the_best(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "rec.yaml"
    result = export_best(store.uri, EXPERIMENT, out, search_id=store.rec_search)

    # r_bare measured more (0.8) but logged no effective config: skipped, with the reason.
    assert (result.trial_id, result.outcome, result.candidates) == ("r_fixed", "recovered:diverged", 3)
    assert result.value == pytest.approx(0.6)
    (skipped,) = result.skipped
    assert "r_bare" in skipped and "recovered:background-collapse" in skipped and "no effective_config.yaml artifact" in skipped
    # The effective config, not the sampled one (lr 0.5 diverged).
    cfg = load_config(out)
    assert cfg.optim.lr == 0.05 and cfg.schedule.warmup_epochs == 1.0 and cfg.epochs == 4
    assert result.config == cfg
    header = [line for line in out.read_text().splitlines() if line.startswith("#")]
    text = "\n".join(header)
    assert out.read_text().startswith("# ") and "RECOVERED trial: trial r_fixed" in text and "recovered:diverged" in text
    assert result.interventions == (
        "1. diverged at step 3 (epoch 1): roll back to epoch 0 (step 0); optim.lr 0.5 -> 0.05, "
        "schedule.warmup_epochs None -> 1.0, skip 3 batches",
    )
    assert f"#   {result.interventions[0]}" in header
    parent = store.client.get_run(store.parents[store.rec_search])
    assert (
        parent.data.tags["hpo.exported_trial"] == "r_fixed" and parent.data.tags["hpo.exported_run"] == store.children["r_fixed"]
    )
    logged = Path(store.client.download_artifacts(parent.info.run_id, "best.yaml", dst_path=str(tmp_path)))
    assert logged.read_text() == out.read_text()  # the header too


def test_recovered_trials_lose_ties_and_can_be_left_out(store: Store, tmp_path: Path) -> None:
    # train/loss: r_fixed and r_ok both end at 1.0; r_fixed started first, the completed one wins.
    result = export_best(
        store.uri, EXPERIMENT, tmp_path / "tie.yaml", search_id=store.rec_search, metric="train/loss", mode="min"
    )
    assert (result.trial_id, result.outcome) == ("r_ok", "completed")
    assert not (tmp_path / "tie.yaml").read_text().startswith("#")  # no header for a completed trial
    result = export_best(store.uri, EXPERIMENT, tmp_path / "only.yaml", search_id=store.rec_search, recovered=False)
    assert (result.trial_id, result.candidates, result.skipped) == ("r_ok", 1, ())
    assert load_config(tmp_path / "only.yaml").loss.box_weight == 0.5


def test_a_recovered_trial_without_its_effective_config_is_not_exported(store: Store, tmp_path: Path) -> None:
    # Only r_bare logged this metric: skipped, nothing else to take.
    with pytest.raises(ExportError, match=r"has no trial to export: skipped trial r_bare .* no effective_config\.yaml artifact"):
        export_best(store.uri, EXPERIMENT, tmp_path / "x.yaml", search_id=store.rec_search, metric="val/only_bare", mode="max")
    assert not (tmp_path / "x.yaml").exists()


def test_cli_names_a_recovered_export_and_what_it_skipped(store: Store, tmp_path: Path, capsys) -> None:
    argv = ["--experiment", EXPERIMENT, "--tracking-uri", store.uri, "--search-id", store.rec_search]
    assert main([*argv, "--out", str(tmp_path / "a.yaml")]) == 0
    captured = capsys.readouterr()
    assert "warning: skipped trial r_bare" in captured.err
    assert "exported trial r_fixed" in captured.out and "a recovered trial (recovered:diverged)" in captured.out
    assert main([*argv, "--out", str(tmp_path / "b.yaml"), "--no-recovered"]) == 0
    captured = capsys.readouterr()
    assert "exported trial r_ok" in captured.out and "best of 1 healthy completed)" in captured.out
    assert "warning" not in captured.err
