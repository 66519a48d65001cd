"""Recovery in a real search (Ray Tune, Optuna, MLflow): a diverging trial with
``health.on_failure: recover`` is rolled back and kept; Optuna learns the configuration failed."""

from __future__ import annotations

from pathlib import Path

import mlflow
import optuna
import pytest
import yaml

from hpo.layout import PENALTY_MAX
from hpo.search import main as search_main
from hpo.stopping import RungAwareOptunaSearch
from tests.support import search_args, space_file

pytestmark = pytest.mark.slow

_BASE = {"optim.lr": 0.01, "schedule.warmup_epochs": 0.5, "loss.class_weight": 1.0, "loss.box_weight": 1.0,
         "loss.neg_pos_ratio": 3, "loss.box_loss": "smooth_l1"}  # fmt: skip
#: cpu-mini's known failure: SGD at lr 1 without warm-up diverges in the first steps (the default
#: intervention: lr x0.01, a fresh warm-up, the batches up to the explosion skipped).
DIVERGING = {**_BASE, "optim.lr": 1.0, "schedule.warmup_epochs": 0.0}
MAX_EPOCHS = 2


def test_a_recovered_trial_is_kept_and_optuna_is_told_it_failed(full_mini: Path, tmp_path: Path) -> None:
    space = space_file(
        tmp_path, "recover",
        budget={"num_samples": 2, "max_epochs": MAX_EPOCHS, "max_concurrent_trials": 2, "time_budget_s": None},
        scheduler={"type": "none"}, points_to_evaluate=[DIVERGING, _BASE], sampler={"n_startup_trials": 2},
        fixed={"health.on_failure": "recover", "data.max_train_images": 160},
    )  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert search_main(search_args(space, full_mini, tmp_path, "--no-report")) == 0

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("recover")
    runs = {
        float(r.data.params["optim.lr"]): r for r in client.search_runs([experiment.experiment_id], "tags.`hpo.role` = 'trial'")
    }
    recovered, healthy = runs[1.0], runs[0.01]
    assert healthy.data.tags["hpo.outcome"] == "completed"
    assert recovered.data.tags["hpo.outcome"] == "recovered:diverged", recovered.data.tags
    assert recovered.info.run_name.endswith(" recovered:diverged") and recovered.info.status == "FINISHED"
    note = recovered.data.tags["mlflow.note.content"]
    assert "Last recovery (of 1)" in note and "rollback to epoch" in note and "optim.lr 1.0 -> 0.01" in note
    # The run was kept and trained on: real validation values (no penalty), the replayed epoch too.
    ap = client.get_metric_history(recovered.info.run_id, "val/ap")
    assert sorted(m.step for m in ap) == [1, 2] and all(m.value >= 0 for m in ap)
    assert max(m.value for m in client.get_metric_history(recovered.info.run_id, "health/recoveries")) == 1.0
    # Its effective config and recovery events are on the run, for the export (the healthy run has none).
    assert {"effective_config.yaml", "recoveries.json"} <= {a.path for a in client.list_artifacts(recovered.info.run_id)}
    assert not {"effective_config.yaml", "recoveries.json"} & {a.path for a in client.list_artifacts(healthy.info.run_id)}
    effective = yaml.safe_load(
        Path(client.download_artifacts(recovered.info.run_id, "effective_config.yaml", str(tmp_path))).read_text()
    )
    assert effective["optim"]["lr"] == pytest.approx(0.01) and effective["data"]["root"] == str(full_mini)

    # Optuna: the sampled configuration failed (its penalty), the healthy one has its real value.
    searcher = RungAwareOptunaSearch(max_epochs=MAX_EPOCHS)
    searcher.restore_from_dir(str(tmp_path / "ray" / "recover"))
    study: optuna.Study = searcher._ot_study
    by_lr = {t.params["optim.lr"]: t for t in study.trials}
    assert by_lr[1.0].state == optuna.trial.TrialState.COMPLETE and by_lr[1.0].value == PENALTY_MAX
    assert by_lr[0.01].value >= 0
