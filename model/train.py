"""Train one SSD face detector from a config file: ``python -m model.train --config CONFIG.yaml``.

With no config it trains the tiny SSD on the generated mini set (created on first use).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from model.config import ConfigError, TrainConfig, load_config
from model.engine import (
    build_datasets,
    build_loaders,
    build_loss,
    build_model,
    build_optimizer,
    build_scheduler,
    evaluate_model,
    resolve_device,
    seed_everything,
    train_one_epoch,
)


def run(cfg: TrainConfig, out_dir: Path, log=print) -> dict[str, float]:
    """Train for ``cfg.epochs`` epochs, validating after each; return the last epoch's metrics."""
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    train_set, val_set = build_datasets(cfg)
    log(f"train: {train_set.report()}")
    log(f"val:   {val_set.report()}")
    train_loader, val_loader = build_loaders(cfg, train_set, val_set)
    model = build_model(cfg).to(device)
    loss_fn = build_loss(cfg, model)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, len(train_loader))

    out_dir.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out_dir / "config.yaml")
    metrics: dict[str, float] = {}
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        stats = train_one_epoch(model, loss_fn, train_loader, optimizer, scheduler, device, cfg.optim.grad_clip_norm)
        metrics = {"epoch": epoch, **stats.as_metrics(), **evaluate_model(model, val_loader, device, cfg)}
        metrics["time/epoch_s"] = time.perf_counter() - start
        log(
            f"epoch {epoch:3d}/{cfg.epochs}  loss {stats.loss:.4f} (cls {stats.loss_cls:.4f}, box {stats.loss_box:.4f})"
            f"  lr {stats.lr:.2e}  val AP {metrics['val/ap']:.4f}  P {metrics['val/precision']:.3f}"
            f"  R {metrics['val/recall']:.3f}  {metrics['time/epoch_s']:.1f}s"
        )
    torch.save({"model": model.state_dict(), "config": cfg.model_dump(mode="json")}, out_dir / "model.pt")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log(f"wrote {out_dir / 'model.pt'} and {out_dir / 'metrics.json'}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.train", description=__doc__)
    parser.add_argument("--config", type=Path, help="YAML training config (defaults: tiny SSD on the mini set)")
    parser.add_argument("--data", type=Path, help="dataset root (overrides data.root)")
    parser.add_argument("--epochs", type=int, help="overrides epochs")
    parser.add_argument("--out", type=Path, default=Path("runs/train"), help="output folder (default: runs/train)")
    args = parser.parse_args(argv)

    overrides = {}
    if args.data is not None:
        overrides["data.root"] = str(args.data)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    try:
        cfg = load_config(args.config, overrides) if args.config else TrainConfig().with_overrides(overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run(cfg, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
