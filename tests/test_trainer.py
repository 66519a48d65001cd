"""The trainer on the real mini set: resume is exact, reports have one shape, the CLI's contract."""

import json
import math
from pathlib import Path

import mlflow
import pytest
import torch

from model.config import TrainConfig
from model.callbacks import Callback, StepResult
from model.report_keys import REPORT_KEYS
from model.trainer import Trainer
from model.train import EXIT_STOPPED, main


def small_cfg(root: Path, **overrides) -> TrainConfig:
    """A few seconds an epoch on 2 CPU cores."""
    base = {
        "data.root": str(root),
        "data.cache_dir": str(root.parent / "cache"),
        "data.max_train_images": 32,
        "data.max_val_images": 16,
        "batch_size": 8,
        "model.input_size": 128,
        "schedule.warmup_iters": 4,
        "epochs": 2,
    }
    return TrainConfig().with_overrides({**base, **overrides})


@pytest.mark.parametrize("pipeline", ["per_sample", "batched"])
def test_resume_after_interruption_matches_an_uninterrupted_run(mini_root: Path, tmp_path: Path, pipeline: str) -> None:
    cfg = small_cfg(mini_root, **{"augment.pipeline": pipeline})
    straight = Trainer(cfg, log=lambda _: None)
    uninterrupted = straight.fit()

    first = Trainer(cfg, log=lambda _: None)
    first.run_epoch()
    first.save_checkpoint(tmp_path / "last.pt")
    del first  # the "interruption": nothing survives but the checkpoint

    resumed = Trainer(cfg, log=lambda _: None)
    resumed.load_checkpoint(tmp_path / "last.pt")
    assert resumed.epoch == 1
    second = resumed.run_epoch()

    expected = uninterrupted[-1]
    for key in ("train/loss", "train/loss_cls", "train/loss_box", "train/grad_norm", "val/ap", "val/fp", "step"):
        assert second[key] == expected[key], key
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_the_batched_pipeline_renders_on_the_device_what_the_loader_drew(mini_root: Path) -> None:
    trainer = Trainer(small_cfg(mini_root, **{"augment.pipeline": "batched"}), log=lambda _: None)
    canvas, drawn = next(iter(trainer.train_loader))
    assert canvas.dtype == torch.uint8 and canvas.shape[-1] > 128  # decoded images, not yet resized
    trainer.train_loader = [(canvas, drawn)]  # the same batch through the trainer's own batch path
    ((images, targets),) = list(trainer._batches(trainer._progress_bar()))
    assert images.dtype == torch.float32 and images.shape == (8, 3, 128, 128)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert set(targets[0]) == {"boxes", "labels", "ignore", "image_id", "orig_size"}  # render entries used up
    assert torch.equal(targets[0]["boxes"], drawn[0]["boxes"])
    # On a CPU, "auto" keeps torchvision's per-sample transforms in the loader.
    plain = Trainer(small_cfg(mini_root), log=lambda _: None)
    assert not plain.batched_augmentation and next(iter(plain.train_loader))[0].shape == (8, 3, 128, 128)


class StepLosses(Callback):
    """Records every step's weighted loss, and stops the run after ``stop_at`` steps if asked."""

    state_key = "step_losses"

    def __init__(self, stop_at: int | None = None) -> None:
        self.losses: list[float] = []
        self.stop_at = stop_at

    def on_train_step_end(self, trainer: Trainer, step: StepResult) -> None:
        self.losses.append(float(step.losses["loss"].detach()))
        assert step.step == trainer.global_step and step.class_weight == trainer.cfg.loss.class_weight
        if self.stop_at is not None and step.step >= self.stop_at:
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"losses": self.losses}

    def load_state_dict(self, state: dict) -> None:
        self.losses = list(state["losses"])


def test_the_monitor_checks_step_one_so_its_reference_is_the_untrained_loss(mini_root: Path) -> None:
    recorder = StepLosses()
    trainer = Trainer(small_cfg(mini_root, **{"health.check_every_steps": 3}), log=lambda _: None, callbacks=[recorder])
    trainer.run_epoch()  # 4 steps: checks at steps 1 and 3
    losses = recorder.losses
    assert len(losses) == 4
    assert trainer.monitor.state_dict()["loss_ref"] == [losses[0], losses[2]]


def test_a_callback_stops_the_run_mid_epoch_and_its_state_travels_in_the_checkpoint(mini_root: Path, tmp_path: Path) -> None:
    reports: list[dict] = []

    class Reports(Callback):
        def on_epoch_end(self, trainer: Trainer, report: dict) -> None:
            reports.append(dict(report))  # after the defaults: the report is complete here

    trainer = Trainer(small_cfg(mini_root, epochs=3), log=lambda _: None, callbacks=[StepLosses(stop_at=2), Reports()])
    trainer.fit()
    assert trainer.stopped and trainer.epoch == 1 and trainer.global_step == 2  # ended inside epoch 1
    assert len(reports) == 1 and set(reports[0]) == set(REPORT_KEYS)
    assert reports[0]["val/ap"] == 0.0  # a stopped run is not validated
    trainer.save_checkpoint(tmp_path / "last.pt")
    again = StepLosses()
    resumed = Trainer(small_cfg(mini_root, epochs=3), log=lambda _: None, callbacks=[again])
    resumed.load_checkpoint(tmp_path / "last.pt")
    assert again.losses == trainer.callbacks[3].losses and len(again.losses) == 2
    assert resumed.stopped and resumed.finished  # the stop survives the checkpoint


def test_every_report_has_the_same_keys_and_finite_numbers_or_a_label(mini_root: Path) -> None:
    trainer = Trainer(small_cfg(mini_root, epochs=1), log=lambda _: None)
    report = trainer.run_epoch()
    assert list(report) == list(REPORT_KEYS)  # every key, in the documented order
    assert report["health/diagnosis"] == "healthy" and report["health/stop"] == 0.0
    assert all(math.isfinite(v) for v in report.values() if isinstance(v, float))
    assert report["train/pos_anchors_per_image"] > 0


def test_cli_logs_to_mlflow_and_resumes_into_the_same_run(mini_root: Path, tmp_path: Path) -> None:
    config, out = tmp_path / "c.yaml", tmp_path / "run"
    small_cfg(mini_root, epochs=1).to_yaml(config)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--config", str(config), "--out", str(out), "--tracking-uri", uri, "--experiment", "prod", "--no-progress"]
    assert main(args) == 0
    assert main([*args, "--epochs", "2", "--resume"]) == 0

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("prod").experiment_id])
    assert len(runs) == 1  # the resumed run kept writing to the same MLflow run
    run = runs[0]
    assert run.data.tags["hpo.role"] == "production" and run.data.tags["hpo.outcome"] == "completed"
    assert run.data.tags["hpo.diagnosis"] == "healthy" and "hpo.health_message" not in run.data.tags
    assert run.data.tags["mlflow.note.content"] == "Production training: completed after epoch 2."
    assert run.data.params["loss.box_weight"] == "1.0"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/ap")] == [1, 2]
    lines = (out / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert json.loads((out / "metrics.json").read_text())["outcome"] == "completed"


def test_cli_refuses_to_resume_a_different_config(mini_root: Path, tmp_path: Path, capsys) -> None:
    config, out = tmp_path / "c.yaml", tmp_path / "run"
    small_cfg(mini_root, epochs=1).to_yaml(config)
    assert main(["--config", str(config), "--out", str(out), "--no-progress"]) == 0
    small_cfg(mini_root, epochs=1, **{"loss.box_weight": 2.0}).to_yaml(config)
    assert main(["--config", str(config), "--out", str(out), "--resume"]) == 2
    assert "loss.box_weight: 1.0 -> 2.0" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "nothing"), "--resume"]) == 2


def test_cli_exits_non_zero_with_the_diagnosis_when_training_diverges(mini_root: Path, tmp_path: Path, capsys) -> None:
    config, out = tmp_path / "c.yaml", tmp_path / "run"
    small_cfg(mini_root, epochs=3, **DIVERGING).to_yaml(config)
    assert main(["--config", str(config), "--out", str(out), "--no-progress"]) == EXIT_STOPPED
    assert "diverged" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["outcome"] == "stopped:diverged"


#: Found on the mini set: no warm-up and a learning rate far too high for SGD on a fresh SSD.
DIVERGING = {"optim.lr": 5.0, "schedule.warmup_iters": 0}
