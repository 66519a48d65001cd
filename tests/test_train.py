"""One training run end to end on the generated mini set: the real data, model, loss and metrics."""

import json
import os
from pathlib import Path

import pytest
import torch

from model.config import TrainConfig
from model.engine import (
    build_datasets,
    build_loaders,
    build_loss,
    build_model,
    build_optimizer,
    build_scheduler,
    seed_everything,
)
from model.loss import weighted_loss
from model.train import MlflowLogging, available_cpus, default_threads, main, training_threads


def _cfg(root: Path, **overrides) -> TrainConfig:
    base = {
        "data.root": str(root),
        "data.cache_dir": str(root.parent / "cache"),
        "batch_size": 8,
        "model.input_size": 192,
        "schedule.warmup_iters": 0,
    }
    return TrainConfig().with_overrides({**base, **overrides})


def test_a_few_optimisation_steps_lower_the_loss_on_one_batch(mini_root: Path) -> None:
    seed_everything(0)
    cfg = _cfg(mini_root, **{"augment.photometric": False, "optim.lr": 0.01})
    train, val = build_datasets(cfg)
    assert (len(train), len(val)) == (96, 32)  # the fixture's small set is used, not regenerated
    images, targets = next(iter(build_loaders(cfg, train, val)[0]))
    model = build_model(cfg)
    loss_fn = build_loss(cfg, model)
    optimizer = build_optimizer(cfg, model)
    anchors = model.anchors(torch.device("cpu"), images.dtype)

    model.train()
    history = []
    for _ in range(15):
        losses = loss_fn(model(images), anchors, targets)
        loss = weighted_loss(losses, cfg.loss.class_weight, cfg.loss.box_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(history)))
    assert int(losses["num_pos"]) > 0
    # Overfitting one batch: the loss must fall clearly, not just wobble.
    assert history[-1] < 0.7 * history[0], history


def test_batches_are_pinned_for_cuda_only_unless_the_config_says(mini_root: Path) -> None:
    cpu = _cfg(mini_root, device="cpu")
    train, val = build_datasets(cpu)
    assert [loader.pin_memory for loader in build_loaders(cpu, train, val)] == [False, False]
    pinned = _cfg(mini_root, device="cpu", **{"data.pin_memory": True})
    assert [loader.pin_memory for loader in build_loaders(pinned, train, val)] == [True, True]
    auto = _cfg(mini_root, device="auto")
    assert build_loaders(auto, train, val)[0].pin_memory == torch.cuda.is_available()


def test_scheduler_warms_up_linearly_then_decays(mini_root: Path) -> None:
    cfg = _cfg(mini_root, **{"schedule.warmup_iters": 10, "schedule.warmup_start_factor": 0.1, "epochs": 2})
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, iters_per_epoch=20)
    lrs = []
    for _ in range(40):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert abs(lrs[0] - 0.1 * cfg.optim.lr) < 1e-12
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # rising through warm-up
    assert abs(lrs[10] - cfg.optim.lr) < 1e-12
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # cosine never rises again
    assert lrs[-1] < 0.05 * cfg.optim.lr


def test_train_cli_writes_model_config_and_metrics(mini_root: Path, tmp_path: Path, capsys) -> None:
    config = tmp_path / "c.yaml"
    _cfg(mini_root, **{"data.max_train_images": 32, "data.max_val_images": 16}).to_yaml(config)
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        assert main(["--config", str(config), "--epochs", "1", "--out", str(out), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epoch"] == 1
    for key in ("train/loss", "train/loss_cls", "train/loss_box", "val/ap", "val/recall", "val/mean_iou"):
        assert key in metrics and metrics[key] == metrics[key]  # present and not NaN
    for name in ("last.pt", "best.pt", "config.yaml", "history.jsonl"):
        assert (out / name).exists(), name
    assert metrics["outcome"] == "completed" and metrics["health/diagnosis"] == "healthy"
    assert "epoch   1/1" in printed and "threads: 1 (--threads;" in printed


def test_train_cli_rejects_a_bad_config_naming_the_key(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("loss:\n  box_weigth: 2\n")
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "loss.box_weigth" in err and "box_weight" in err


def test_training_takes_the_cpus_nothing_else_uses_unless_told() -> None:
    """Torch's default (a thread per core) stalls on cores other processes hold: an epoch took 72 s
    on a busy 2-core machine against 8 s with one thread (issue 14)."""
    assert default_threads(cpus=2, loader_workers=0, load=0.2) == 2  # a quiet machine: both cores
    assert default_threads(cpus=2, loader_workers=0, load=2.6) == 1  # a busy one: one thread
    assert default_threads(cpus=16, loader_workers=3, load=4.2) == 12  # the loader's workers and others' cores left
    assert default_threads(cpus=4, loader_workers=3, load=None) == 1  # no load average: the workers only
    assert default_threads(cpus=1, loader_workers=2, load=9.0) == 1  # never none
    # --threads wins; OMP_NUM_THREADS is left to torch (read at import); else the rule.
    assert training_threads(3, 0, environ={"OMP_NUM_THREADS": "2"}) == (3, "--threads")
    assert training_threads(None, 0, environ={"OMP_NUM_THREADS": "2"}) == (None, "OMP_NUM_THREADS=2")
    threads, why = training_threads(None, 1, environ={})
    assert 1 <= threads <= available_cpus() and "CPUs" in why and "1 loader workers" in why


def test_a_cgroup_cpu_quota_caps_the_cpus(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # a container's --cpus 1.5
    assert available_cpus(quota) == min(affinity, 2)
    quota.write_text("max 100000\n")
    assert available_cpus(quota) == affinity
    assert available_cpus(tmp_path / "missing") == affinity


def test_train_cli_refuses_zero_threads(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--threads", "0"])
    assert exit_.value.code == 2 and "--threads must be at least 1" in capsys.readouterr().err


def test_production_training_opens_its_experiment_in_the_model_training_view(tmp_path: Path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    client.create_experiment(
        "chosen", artifact_location=(tmp_path / "mlruns").as_uri(), tags={"mlflow.experimentKind": "genai_development"}
    )
    before = mlflow.get_tracking_uri()
    try:
        for experiment in ("production", "chosen"):
            out = tmp_path / experiment
            out.mkdir()
            MlflowLogging(uri, experiment, TrainConfig(), out)
            mlflow.end_run()
    finally:
        mlflow.set_tracking_uri(before)
    assert client.get_experiment_by_name("production").tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment_by_name("chosen").tags["mlflow.experimentKind"] == "genai_development"  # chosen: kept
