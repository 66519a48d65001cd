"""Failure probe: train known-healthy and known-failing configurations and record their curves.

The health monitor (``diverged``, ``background-collapse``, ``stalled``, ...) needs thresholds
taken from real runs, not guesses. This script trains each named configuration of :data:`RUNS`
(the project's "failure zoo") on the generated mini set and writes, per run and seed, every
optimiser step (loss and its two parts, gradient norm, positive anchors, learning rate, face-score
statistics of the batch) and every epoch's full validation metrics to
``<out>/<name>_seed<k>.json``, with one line per file in ``<out>/README.txt``.

Usage::

    python bench/failure_probe.py --list
    python bench/failure_probe.py --out /tmp/zoo --runs healthy,collapse_bw10_neg30_nowarm --seeds 0,1

Each record's ``outcome`` is :func:`read_outcome`'s hindsight reading of the whole run, a
cross-check for the table, not the health monitor. Runs on CPU with one thread by default (the
probe is meant to run beside other work) and deterministically: the same seed gives the same
curves. A run stops at the first non-finite loss. An epoch of the tiny SSD on the 400-image mini
set takes about ten seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.config import DEFAULT_MINI_ROOT, TrainConfig
from model.data.mini import ensure_mini
from model import report_keys as K
from model.callbacks import Callback, StepResult
from model.engine import evaluate_model
from model.health import constant_predictor_cls_loss
from model.trainer import Trainer


@dataclass(frozen=True)
class ProbeRun:
    """One entry of the failure zoo."""

    overrides: dict[str, Any]
    """Dotted-key overrides of the default :class:`TrainConfig`."""
    expected: str
    """What this configuration did on the mini set (seeds 0 and 1 unless the note says otherwise)."""
    epochs: int = 12
    note: str = ""


# Every probe shares the same small, fast setting; the entries differ only in what they test.
#: The monitor observes (its verdicts are what the probe calibrates) but stops nothing.
BASE_OVERRIDES: dict[str, Any] = {"batch_size": 16, "device": "cpu", "health.stop_on": []}
_NO_WARMUP_CONSTANT = {"schedule.warmup_iters": 0, "schedule.decay": "none"}

#: name -> configuration and the outcome observed on the mini set (400 train / 100 val images).
RUNS: dict[str, ProbeRun] = {
    "healthy": ProbeRun(
        {},
        "healthy",
        note="defaults (SGD lr 0.01, warm-up 100 iters, cw = bw = 1, 3:1): AP 0 -> 0.19-0.21 in 12 epochs",
    ),
    "diverged_lr1": ProbeRun(
        {"optim.lr": 1.0, **_NO_WARMUP_CONSTANT},
        "diverged",
        epochs=3,
        note="loss x25-x56 at step 1, x1e6 by step 15-42, 1e13-1e21 after 75 steps; never non-finite",
    ),
    "diverged_lr5": ProbeRun(
        {"optim.lr": 5.0, **_NO_WARMUP_CONSTANT},
        "diverged",
        epochs=3,
        note="loss x130-x270 at step 1, x1e6 by step 3-4, non-finite at step 22 / 69",
    ),
    "stalled_lr1e-5": ProbeRun({"optim.lr": 1e-5}, "stalled", epochs=6, note="loss parts fall < 10 % in 150 steps, AP 0"),
    "collapse_bw10_neg30_nowarm": ProbeRun(
        {"loss.box_weight": 10.0, "loss.neg_pos_ratio": 30.0, "schedule.warmup_iters": 0},
        "background-collapse",
        note="classification loss pinned at the constant-predictor value (ln 31 + 30 ln 31/30 = 4.42), face "
        "scores ~1/31 with no spread, AP <= 0.01 after 12 epochs (healthy: 0.19)",
    ),
    "dead_lr0.1_nowarm": ProbeRun(
        {"optim.lr": 0.1, "schedule.warmup_iters": 0},
        "weak",
        epochs=6,
        note="AP < 0.005 after 6 epochs; seed 0 dies from step ~56 (every anchor of every image scores "
        "~0.23, the 1/(k+1) prior: read as dead-network), seed 1 does not",
    ),
    "overfit_32img_noaug": ProbeRun(
        {
            "data.max_train_images": 32,
            "augment.photometric": False,
            "augment.zoom_out": False,
            "augment.iou_crop": False,
            "augment.hflip": False,
            "schedule.warmup_iters": 10,
            "schedule.decay": "none",
        },
        "healthy",
        epochs=60,
        note="meant as overfitting, seed 0 only: train loss 9.3 -> 1.3 while val AP plateaus at 0.10-0.17 "
        "from epoch ~32, noisy (+-0.03), no sustained decline in 60 epochs",
    ),
    # Expected to collapse (the study's box/class imbalance, missing warm-up), but did not; seed 0 only.
    "nofail_bw10_nowarm": ProbeRun(
        {"loss.box_weight": 10.0, "schedule.warmup_iters": 0},
        "weak",
        epochs=6,
        note="AP 0.005 after 6 epochs; face scores stay spread (not the prior): slow, not collapsed",
    ),
    "nofail_cw0.01": ProbeRun(
        {"loss.class_weight": 0.01},
        "weak",
        epochs=6,
        note="classifier hardly trains (AP 0.001), box loss falls normally",
    ),
    "nofail_neg30_nowarm": ProbeRun(
        {"loss.neg_pos_ratio": 30.0, "schedule.warmup_iters": 0},
        "healthy",
        epochs=6,
        note="top score falls to 0.11-0.28 and recall@0.5 = 0, yet AP rises to 0.038 (healthy at epoch 6: 0.04-0.07)",
    ),
    "nofail_neg100_nowarm": ProbeRun(
        {"loss.neg_pos_ratio": 100.0, "schedule.warmup_iters": 0},
        "healthy",
        epochs=6,
        note="AP 0.08 after 6 epochs: better than the default at the same point",
    ),
}


def _config(run: ProbeRun, seed: int, data_root: Path, epochs: int) -> TrainConfig:
    overrides = {
        **BASE_OVERRIDES,
        "data.root": str(data_root),
        "data.cache_dir": str(data_root / ".cache"),
        "seed": seed,
        "epochs": epochs,
        **run.overrides,
    }
    return TrainConfig().with_overrides(overrides)


@torch.no_grad()
def _score_stats(cls_logits: torch.Tensor) -> dict[str, float]:
    """Face-probability statistics of one training batch (free: the logits are already there)."""
    face = cls_logits.detach().float().softmax(dim=-1)[..., 1]
    per_image_max = face.amax(dim=1)
    return {
        "max_face_score": float(per_image_max.max()),
        "mean_image_max_face_score": float(per_image_max.mean()),
        "mean_face_score": float(face.mean()),
        # ~0 when the output no longer depends on the input (a dead network predicting the prior).
        "face_score_std": float(face.std()),
        "frac_anchors_above_0.05": float((face >= 0.05).float().mean()),
    }


@torch.no_grad()
def _raw_val_scores(model: torch.nn.Module, loader: torch.utils.data.DataLoader) -> dict[str, float]:
    """Face scores on validation before any threshold or NMS: does the model still 'see' faces?"""
    model.eval()
    faces = []
    for images, _ in loader:
        cls_logits, _ = model(images)
        faces.append(cls_logits.float().softmax(dim=-1)[..., 1])
    face = torch.cat(faces)  # (N, A)
    per_image_max = face.amax(dim=1)
    return {
        "val/raw_max_face_score": float(per_image_max.max()),
        "val/raw_median_image_max_face_score": float(per_image_max.median()),
        "val/raw_mean_face_score": float(face.mean()),
        "val/raw_face_score_std": float(face.std()),
        # Spread of each anchor's score across images: ~0 when the output ignores the image.
        "val/raw_across_image_std": float(face.std(dim=0).mean()),
    }


class ProbeRecorder(Callback):
    """Every optimiser step's figures and every epoch's validation with raw face scores; ends the
    run at the first non-finite loss (the monitor only observes: nothing else stops a probe)."""

    def __init__(self, name: str, seed: int) -> None:
        self.name, self.seed = name, seed
        self.steps: list[dict[str, Any]] = []
        self.epochs: list[dict[str, Any]] = []
        self.stopped: str | None = None

    def on_train_epoch_start(self, trainer: Trainer) -> None:
        self.epoch_start = time.perf_counter()

    def on_train_step_end(self, trainer: Trainer, step: StepResult) -> None:
        parts = step.losses
        record = {
            "step": step.step - 1,
            "epoch": step.epoch,
            "loss": float(parts["loss"].detach()),
            "loss_cls": float(parts["loss_cls"].detach()),
            "loss_box": float(parts["loss_box"].detach()),
            "grad_norm": float(step.grad_norm),
            "num_pos": int(parts["num_pos"]),
            "num_neg": int(parts["num_neg"]),
            "images_without_positives": int(parts["images_without_positives"]),
            "lr": step.lr,
            **_score_stats(step.outputs.cls_logits),
        }
        self.steps.append(record)
        if not math.isfinite(record["loss"]):
            self.stopped = f"non-finite loss at step {record['step']} (epoch {step.epoch})"
            trainer.should_stop = True

    def on_epoch_end(self, trainer: Trainer, report: dict[str, Any]) -> None:
        metrics = {
            "epoch": trainer.epoch,
            **{key: report[key] for key in (K.TRAIN_LOSS, K.TRAIN_LOSS_CLS, K.TRAIN_LOSS_BOX)},
            "train/seconds": report[K.TRAIN_IMAGES] / report[K.TRAIN_IMAGES_PER_S],
        }
        if self.stopped is None:
            metrics.update({key: report[key] for key in K.VAL_KEYS})
            metrics.update(_raw_val_scores(trainer.model, trainer.val_loader))
        self.epochs.append(metrics)
        _print_epoch(self.name, self.seed, metrics)


def train_probe(name: str, run: ProbeRun, seed: int, data_root: Path, epochs: int | None = None) -> dict[str, Any]:
    """Train one configuration with the production Trainer; return the record written to ``<name>_seed<seed>.json``.

    The record holds ``steps`` (one dict per optimiser step: ``loss``, ``loss_cls``, ``loss_box``
    unweighted, ``grad_norm`` before clipping, ``num_pos``, ``num_neg``, ``lr`` used by the step,
    face-score statistics of the batch) and ``epochs`` (epoch 0 is the untrained model: every
    ``val/*`` metric of :func:`evaluate_model`, ``val/raw_*`` face scores over all anchors before
    threshold and NMS, ``train/*`` epoch means).
    """
    cfg = _config(run, seed, data_root, epochs or run.epochs)
    start = time.perf_counter()
    recorder = ProbeRecorder(name, seed)
    trainer = Trainer(cfg, log=lambda _line: None, callbacks=[recorder])
    untrained = evaluate_model(trainer.model, trainer.val_loader, trainer.device, cfg)
    recorder.epochs.append({"epoch": 0, **untrained, **_raw_val_scores(trainer.model, trainer.val_loader)})
    trainer.fit()
    steps, epochs_out, stopped = recorder.steps, recorder.epochs, recorder.stopped
    record = {
        "name": name,
        "seed": seed,
        "overrides": {**BASE_OVERRIDES, **run.overrides},
        "config": cfg.model_dump(mode="json"),
        "expected": run.expected,
        "outcome": None,  # filled in by read_outcome below
        "stopped": stopped,
        "note": run.note,
        "steps": steps,
        "epochs": epochs_out,
        "seconds": time.perf_counter() - start,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    record["outcome"] = read_outcome(record)
    return record


def read_outcome(record: dict[str, Any]) -> str:
    """The probe's own hindsight reading of a finished record (not the health monitor).

    Rules, in order: a non-finite loss or a step loss 100x the first one is ``diverged``;
    validation scores that no longer depend on the image are ``dead-network``; a best AP below
    0.02 is ``stalled`` when the loss parts stay within 10 % of their start,
    ``background-collapse`` when the classification loss sits at the constant-predictor value,
    else ``weak``; an AP that ends below 80 % of an earlier best is ``overfitting``; otherwise
    ``healthy``.
    """
    steps, epochs = record["steps"], record["epochs"]
    finite = [s["loss"] for s in steps if math.isfinite(s["loss"])]
    if record["stopped"] or max(finite) > 100 * steps[0]["loss"]:
        return "diverged"
    evaluated = [e for e in epochs if "val/ap" in e and e["epoch"] > 0]
    last, best = evaluated[-1], max(evaluated, key=lambda e: e["val/ap"])
    if last.get("val/raw_across_image_std", 1.0) < 1e-3:
        return "dead-network"
    if best["val/ap"] < 0.02:
        final_steps = [s for s in steps if s["epoch"] == last["epoch"]]
        cls_last = sum(s["loss_cls"] for s in final_steps) / len(final_steps)
        box_last = sum(s["loss_box"] for s in final_steps) / len(final_steps)
        cls_first = sum(s["loss_cls"] for s in steps[:5]) / len(steps[:5])
        box_first = sum(s["loss_box"] for s in steps[:5]) / len(steps[:5])
        if cls_last > 0.9 * cls_first and box_last > 0.9 * box_first:
            return "stalled"
        k = record["config"]["loss"]["neg_pos_ratio"]
        if cls_last < 1.05 * constant_predictor_cls_loss(k):
            return "background-collapse"
        return "weak"
    if best["epoch"] < last["epoch"] - 2 and last["val/ap"] < 0.8 * best["val/ap"]:
        return "overfitting"
    return "healthy"


def _print_epoch(name: str, seed: int, m: dict[str, Any]) -> None:
    keys = ("train/loss", "val/ap", "val/recall", "val/precision", "val/top_score", "val/raw_max_face_score")
    parts = " ".join(f"{k.split('/')[1]}={m[k]:.4g}" for k in keys if k in m)
    print(f"[{name} s{seed}] epoch {m['epoch']}: {parts}", flush=True)


def _update_readme(out: Path) -> None:
    lines = ["Failure-probe records (bench/failure_probe.py): file  expected  outcome  stopped  final AP\n"]
    for path in sorted(out.glob("*_seed*.json")):
        rec = json.loads(path.read_text())
        ap = next((e["val/ap"] for e in reversed(rec["epochs"]) if "val/ap" in e), float("nan"))
        lines.append(
            f"{path.name}  expected={rec['expected']}  outcome={rec['outcome']}  "
            f"stopped={rec['stopped'] or '-'}  final_ap={ap:.3f}  ({rec['seconds']:.0f} s)\n"
        )
    notes = out / "NOTES.txt"  # hand-written observations, kept above the generated table
    header = notes.read_text() + "\n" if notes.exists() else ""
    (out / "README.txt").write_text(header + "".join(lines))


def select_runs(parser: argparse.ArgumentParser, runs: str, seeds: str, known: Any) -> tuple[list[str], list[int]]:
    """``--runs a,b`` and ``--seeds 0,1`` as lists; an unknown run name is a usage error naming the known ones."""
    names = [n for n in runs.split(",") if n]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown run(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return names, [int(s) for s in seeds.split(",") if s]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the JSON records and README.txt (required to train)")
    parser.add_argument("--runs", default="healthy", help="comma-separated names from the table (--list)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=None, help="override each run's own epoch count")
    parser.add_argument("--data", type=Path, default=DEFAULT_MINI_ROOT, help="mini set root (generated on first use)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--list", action="store_true", help="print the table and exit")
    args = parser.parse_args(argv)

    if args.list:
        for name, run in RUNS.items():
            print(f"{name:28s} {run.expected:20s} {run.epochs:3d} ep  {run.overrides}  {run.note}")
        return 0
    if args.out is None:
        parser.error("--out is required unless --list is given")
    names, seeds = select_runs(parser, args.runs, args.seeds, RUNS)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data_root = ensure_mini(args.data)
    for name in names:
        for seed in seeds:
            record = train_probe(name, RUNS[name], seed, data_root, args.epochs)
            path = args.out / f"{name}_seed{seed}.json"
            path.write_text(json.dumps(record))
            _update_readme(args.out)
            print(f"wrote {path} ({record['seconds']:.0f} s, stopped: {record['stopped'] or 'no'})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
