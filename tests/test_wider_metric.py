"""The official WIDER FACE AP as a per-epoch metric (``eval.wider_ap``): what the trainer reports
equals what ``model.predict`` and ``model.widerface_eval`` give on the same checkpoint and images,
the per-epoch subset is fixed, a missing ground truth is one line, and a search can optimise it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest

from model import report_keys as K
from model.callbacks import Callback
from model.config import ConfigError, TrainConfig
from model.engine import build_datasets, build_wider_validation
from model.predict import evaluate_predictions, model_from_checkpoint, predict_images, predict_split
from model.trainer import Trainer
from model.widerface_eval import find_ground_truth, load_ground_truth
from model.widerface_eval import main as wider_eval_main

EPOCHS = 3
SUBSET = 12


def _cfg(root: Path, **overrides: object) -> TrainConfig:
    """The tiny SSD, small and short; score threshold 0 so even an early model has detections to rank."""
    base = {
        "data.root": str(root), "data.max_train_images": 16, "model.input_size": 128, "batch_size": 8,
        "device": "cpu", "epochs": EPOCHS, "optim.lr": 0.05, "schedule.warmup_iters": 0,
        "postprocess.score_threshold": 0.0, "eval.wider_ap": True, "eval.wider_subset": SUBSET,
    }  # fmt: skip
    return TrainConfig().with_overrides({**base, **overrides})


class _SaveEachEpoch(Callback):
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_epoch_end(self, trainer: Trainer, report: dict) -> None:
        trainer.save_checkpoint(self.folder / f"epoch{trainer.epoch}.pt")


@pytest.fixture(scope="module")
def run(mini_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One short training run with the option on: its reports, checkpoints and trainer."""
    folder = tmp_path_factory.mktemp("wider-run")
    trainer = Trainer(_cfg(mini_root), log=lambda _: None, callbacks=[_SaveEachEpoch(folder)])
    return {"trainer": trainer, "reports": trainer.fit(), "folder": folder, "root": mini_root}


def test_every_epoch_reports_the_official_aps_of_predict_and_widerface_eval(run: dict, tmp_path: Path) -> None:
    trainer, reports, root = run["trainer"], run["reports"], run["root"]
    assert [r[K.EPOCH] for r in reports] == list(range(1, EPOCHS + 1))
    gt = load_ground_truth(find_ground_truth(root))
    images_dir = root / "WIDER_val" / "images"
    for report in reports[:-1]:  # on the fixed subset: model.predict on those images, the protocol on their ground truth
        model, cfg = model_from_checkpoint(run["folder"] / f"epoch{report[K.EPOCH]}.pt")
        ids = [image.image_id for image in trainer.wider.subset.images]
        predictions = predict_images(model, cfg, images_dir, [f"{i}.jpg" for i in ids], device="cpu", progress=False)
        aps = evaluate_predictions(predictions, gt.select(ids))
        assert report[K.VAL_WIDER_IMAGES] == SUBSET
        for setting, key in K.WIDER_AP.items():
            assert report[key] == pytest.approx(aps[setting], rel=1e-6, abs=1e-12), (report[K.EPOCH], setting)
    # The last epoch on all of val: the official files written by model.predict, scored by model.widerface_eval's CLI.
    last = reports[-1]
    model, cfg = model_from_checkpoint(run["folder"] / f"epoch{EPOCHS}.pt")
    gt_dir, preds, scores = find_ground_truth(root), tmp_path / "preds", tmp_path / "aps.json"
    summary = predict_split(model, cfg, root, "val", preds, gt_dir=gt_dir, device="cpu", progress=False)
    assert wider_eval_main(["--pred", str(preds), "--gt", str(gt_dir), "--json", str(scores)]) == 0
    official = json.loads(scores.read_text())
    assert last[K.VAL_WIDER_IMAGES] == len(gt) == summary.images == last[K.VAL_NUM_IMAGES]
    for setting, key in K.WIDER_AP.items():
        assert last[key] == pytest.approx(official[setting], rel=1e-6, abs=1e-12), setting
        assert last[key] == pytest.approx(summary.aps[setting], rel=1e-6, abs=1e-12), setting
    assert any(last[key] > 0 for key in K.WIDER_AP.values())  # a real number to compare, not 0 against 0
    # The health monitor reads its own signals, untouched: val/ap and the rest are there as before.
    assert all(isinstance(r[K.VAL_AP], float) and r[K.HEALTH_DIAGNOSIS] for r in reports)


def test_the_subset_is_seeded_the_same_every_epoch_and_for_every_training_seed(mini_root: Path) -> None:
    cfg = _cfg(mini_root)
    _, val = build_datasets(cfg)
    chosen = build_wider_validation(cfg, val)
    assert chosen is not None and len(chosen.subset) == SUBSET and len(chosen.gt) == len(val)
    ids = [image.image_id for image in chosen.subset.images]
    assert set(ids) <= {record.image_id for record in val.records} and len(set(ids)) == SUBSET
    again = build_wider_validation(cfg.with_overrides({"seed": 7}), val)  # another trial's training seed
    assert [image.image_id for image in again.subset.images] == ids
    other = build_wider_validation(cfg.with_overrides({"eval.wider_subset_seed": 1}), val)
    assert [image.image_id for image in other.subset.images] != ids
    # None, or a subset no smaller than val: all of val every epoch.
    for size in (None, len(val), 10 * len(val)):
        whole = build_wider_validation(cfg.with_overrides({"eval.wider_subset": size}), val)
        assert whole.subset is whole.gt


def test_the_epochs_before_the_last_score_the_same_images(run: dict) -> None:
    # Each epoch's figure matched model.predict on trainer.wider.subset (above); that subset is one
    # fixed object, and the reports say how many images each epoch was scored on.
    assert [r[K.VAL_WIDER_IMAGES] for r in run["reports"]] == [SUBSET] * (EPOCHS - 1) + [len(run["trainer"].val_set)]


def test_option_off_reports_none_and_a_missing_ground_truth_is_one_line(mini_root: Path, tmp_path: Path) -> None:
    off = Trainer(_cfg(mini_root, **{"eval.wider_ap": False, "epochs": 1}), log=lambda _: None)
    assert off.wider is None
    report = off.run_epoch()
    assert all(report[key] is None for key in K.VAL_WIDER_KEYS) and list(report) == list(K.REPORT_KEYS)

    # The WIDER layout without the .mat ground truth (a mini set would regenerate it).
    bare = tmp_path / "wider"
    shutil.copytree(mini_root, bare, ignore=shutil.ignore_patterns("*.mat", ".cache"))
    cfg = _cfg(bare, **{"data.source": "wider", "data.cache": False})
    with pytest.raises(ConfigError) as info:
        Trainer(cfg, log=lambda _: None)
    message = str(info.value)
    assert "\n" not in message and message.startswith("eval.wider_ap: ")
    assert all(key in message for key in K.WIDER_AP.values()) and str(bare) in message


@pytest.mark.slow
def test_a_search_optimises_the_official_hard_ap(mini_root: Path, tmp_path: Path) -> None:
    from hpo.search import main as search_main
    from tests.support import search_args, space_file

    base = {"optim.lr": 0.01, "schedule.warmup_epochs": 0.5, "loss.class_weight": 1.0, "loss.box_weight": 1.0,
            "loss.neg_pos_ratio": 3, "loss.box_loss": "smooth_l1"}  # fmt: skip
    space = space_file(
        tmp_path, "wider-hard", metric=K.VAL_WIDER_HARD,
        budget={"num_samples": 2, "max_epochs": 2, "max_concurrent_trials": 2, "time_budget_s": None},
        scheduler={"type": "none"}, points_to_evaluate=[base, {**base, "optim.lr": 0.02}], sampler={"n_startup_trials": 2},
        fixed={"eval.wider_ap": True, "eval.wider_subset": 16, "data.max_train_images": 48},
    )  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert search_main(search_args(space, mini_root, tmp_path, "--no-report")) == 0

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("wider-hard")
    trials = client.search_runs([experiment.experiment_id], "tags.`hpo.role` = 'trial'")
    assert len(trials) == 2
    for trial in trials:
        assert trial.data.tags["hpo.outcome"] == "completed", trial.data.tags
        hard = sorted((m.step, m.value) for m in client.get_metric_history(trial.info.run_id, K.VAL_WIDER_HARD))
        assert [step for step, _ in hard] == [1, 2] and all(0.0 <= value <= 1.0 for _, value in hard), hard
        scored = sorted((m.step, m.value) for m in client.get_metric_history(trial.info.run_id, K.VAL_WIDER_IMAGES))
        assert scored == [(1, 16.0), (2, 32.0)]  # the subset, then all of val at the last epoch
    parent = client.search_runs([experiment.experiment_id], "tags.`hpo.role` = 'parent'")[0]
    assert parent.data.tags["hpo.metric"] == K.VAL_WIDER_HARD
