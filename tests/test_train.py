"""One training run end to end on the generated mini set: the real data, model, loss and metrics."""

import json
from pathlib import Path

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
from model.train import main


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
    assert main(["--config", str(config), "--epochs", "1", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epoch"] == 1
    for key in ("train/loss", "train/loss_cls", "train/loss_box", "val/ap", "val/recall", "val/mean_iou"):
        assert key in metrics and metrics[key] == metrics[key]  # present and not NaN
    for name in ("last.pt", "best.pt", "config.yaml", "history.jsonl"):
        assert (out / name).exists(), name
    assert metrics["outcome"] == "completed" and metrics["health/diagnosis"] == "healthy"
    assert "epoch   1/1" in capsys.readouterr().out


def test_train_cli_rejects_a_bad_config_naming_the_key(tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("loss:\n  box_weigth: 2\n")
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "loss.box_weigth" in err and "box_weight" in err
