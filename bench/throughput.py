"""Training throughput: our ``Trainer`` against a torchvision-reference-style training loop.

Three loops train the same network (tiny SSD, same initial weights) on the same data (the same
Dataset and DataLoader settings, the same shuffling order), batch size, device and thread count:

* ``ours``: :class:`model.trainer.Trainer` with its defaults, health monitor on;
* ``ours_nomonitor``: the same with ``health.enabled: false`` (the monitor's overhead alone);
* ``reference``: a plain loop in the style of torchvision's ``references/detection/engine.py``
  ``train_one_epoch``: ``torchvision.models.detection.SSD`` built from *our* backbone, anchor
  generator and head (so the networks match), its own ``compute_loss`` (SSDMatcher, 3:1 hard
  negatives), ``sum(loss_dict.values())``, a ``.item()`` and a finiteness check every step, the
  same optimiser (SGD, same learning rate, momentum, weight decay groups) and schedule.

They run in one process, finely interleaved: a round is a pass of ``--iters`` steps of each loop
(the order rotating each round), after two warm-up rounds, so drifting load on a shared machine
hits all of them alike. Each pass is read three ways (wall clock, median step time, process CPU
time); the script reports medians, ratios of medians and medians of per-round ratios. It also
times the monitor's own work directly (``check_step`` plus its host read, per step), since an A/B
difference of 1-2 % is below the noise of a shared CPU.

Usage::

    python bench/throughput.py                          # CPU, 1 thread, ~4-5 min on 2 shared cores
    python bench/throughput.py --rounds 40 --iters 5 --threads 2
    python bench/throughput.py --device cuda --amp --batch-size 32

Writes ``bench/results/throughput.json`` and ``.md`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torchvision
from torchvision.models.detection.ssd import SSD

from model.config import TrainConfig
from model.engine import build_loaders, build_optimizer, build_scheduler
from model.ssd import FaceSSD
from model.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script (bench/ is not an installed package)
    sys.path.insert(0, str(REPO))
from bench.machine import machine_info  # noqa: E402

DEFAULT_DATA = REPO / "data" / "wider-mini"
DEFAULT_OUT = REPO / "bench" / "results"
LOOPS = ("ours", "ours_nomonitor", "reference")
WARMUP_ROUNDS = 2


# -- the reference loop -------------------------------------------------------------------------


def torchvision_ssd_like(ours: FaceSSD) -> SSD:
    """``torchvision.models.detection.SSD`` with a copy of our backbone, anchors and head.

    The same modules and initial weights, so the two networks compute the same thing; what
    differs is everything torchvision's SSD does around them (transform, anchors every step,
    per-image matching and loss).
    """
    size = ours.input_size
    return SSD(
        backbone=copy.deepcopy(ours.backbone),
        anchor_generator=copy.deepcopy(ours.anchor_generator),
        size=(size, size),
        num_classes=2,
        image_mean=ours.image_mean.flatten().tolist(),
        image_std=ours.image_std.flatten().tolist(),
        head=copy.deepcopy(ours.head),
        positive_fraction=0.25,  # neg:pos 3:1, as our default loss
    )


class ReferenceLoop:
    """torchvision's ``references/detection`` ``train_one_epoch``, single process, without logging I/O.

    Targets keep their ``boxes`` and ``labels`` (torchvision's SSD has no ignore regions and
    refuses degenerate boxes, so those are dropped, as a torchvision dataset wrapper would).
    """

    def __init__(
        self, cfg: TrainConfig, ours: FaceSSD, loader: torch.utils.data.DataLoader, device: torch.device, steps: int
    ) -> None:
        self.model = torchvision_ssd_like(ours).to(device)
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_scheduler(cfg, self.optimizer, len(loader))
        self.loader = self.clock = StepClock(loader, steps)
        self.device = device
        amp = device.type == "cuda" and cfg.optim.amp
        self.amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if amp else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.losses: list[float] = []

    def train_epoch(self) -> int:
        """One pass over the loader; returns the number of images."""
        model, device = self.model, self.device
        model.train()
        autocast = torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        images_seen = 0
        for images, targets in self.loader:
            images = list(image.to(device) for image in images)
            targets = [_reference_target(t, device) for t in targets]
            with autocast:
                loss_dict = model(images, targets)
                losses = sum(loss for loss in loss_dict.values())
            loss_value = losses.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"reference loop: loss is {loss_value}: {loss_dict}")
            self.optimizer.zero_grad()
            self.scaler.scale(losses).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            # MetricLogger.update(loss=..., **loss_dict) reads every value on the host.
            self.losses.append(loss_value)
            _ = {k: v.item() for k, v in loss_dict.items()}
            images_seen += len(images)
        return images_seen


def _reference_target(target: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    boxes, labels = target["boxes"], target["labels"]
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return {"boxes": boxes[keep].to(device), "labels": labels[keep].to(device)}


class StepClock:
    """Wraps a DataLoader: hands out at most ``limit`` batches per pass and stamps each hand-out.

    The limit makes a pass a few steps long (fine interleaving of the loops) without touching the
    loop being measured; consecutive stamps are one optimiser step apart (its compute plus loading
    the next batch), so a pass's median step time can be read too. On a shared CPU that median
    shrugs off the bursts of other processes that inflate a pass's total.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, limit: int) -> None:
        self.loader = loader
        self.limit = limit
        self.stamps: list[float] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __iter__(self) -> Any:
        self.stamps = []
        for _, batch in zip(range(self.limit), self.loader):
            self.stamps.append(time.perf_counter())
            yield batch

    def step_times(self) -> list[float]:
        """Seconds between consecutive hand-outs of the last pass (``limit - 1`` steps)."""
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


# -- our loops ----------------------------------------------------------------------------------


class OurLoop:
    """One :class:`Trainer`; a pass is its training epoch (no validation), cut to ``steps`` batches."""

    def __init__(self, cfg: TrainConfig, steps: int) -> None:
        self.trainer = Trainer(cfg, log=lambda _: None)
        self.clock = self.trainer.train_loader = StepClock(self.trainer.train_loader, steps)  # type: ignore[assignment]

    def train_epoch(self) -> int:
        before = self.trainer.global_step
        report = self.trainer._train_epoch()  # the training half of run_epoch, without validation
        if self.trainer.stopped:
            raise RuntimeError(f"the health monitor stopped the benchmark run: {self.trainer.monitor.verdict.message()}")
        if not math.isfinite(report["train/loss"]):
            raise FloatingPointError(f"non-finite training loss in our loop: {report}")
        return (self.trainer.global_step - before) * self.trainer.cfg.batch_size


def monitor_cost_per_step(trainer: Trainer, samples: int = 2000) -> float:
    """Seconds of health-monitor work per optimiser step: one ``check_step`` (with the host read
    of the five counters) every ``check_every_steps`` steps, timed on a copy of the live monitor."""
    monitor = copy.deepcopy(trainer.monitor)
    current = torch.tensor([1.5, 1.0, 0.5, 3.0, 40.0], device=trainer.device)
    start = time.perf_counter()
    for i in range(samples):
        loss, loss_cls, loss_box, gnorm, pos = current.tolist()
        monitor.check_step(10_000 + i, 1, loss=loss, loss_cls=loss_cls, loss_box=loss_box, grad_norm=gnorm, num_pos=pos)
    per_check = (time.perf_counter() - start) / samples
    return per_check / trainer.cfg.health.check_every_steps


# -- the benchmark ------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(run: Callable[[], int], device: torch.device) -> tuple[int, float, float]:
    """Images, wall-clock seconds and process CPU seconds of one pass."""
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    images = run()
    _sync(device)
    return images, time.perf_counter() - start, time.process_time() - cpu_start


def build_config(args: argparse.Namespace) -> TrainConfig:
    overrides: dict[str, Any] = {
        "seed": args.seed,
        "batch_size": args.batch_size,
        "device": args.device,
        # The schedule spans every step of the benchmark (even at one step per epoch), so the
        # learning rate never reaches 0.
        "epochs": (args.rounds + WARMUP_ROUNDS) * args.iters,
        "data": {"root": str(args.data), "num_workers": args.workers},
        "optim": {"amp": args.amp},
    }
    return TrainConfig.model_validate(overrides)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    cfg = build_config(args)
    cfg_off = cfg.model_copy(deep=True)
    cfg_off.health.enabled = False

    loops: dict[str, Any] = {"ours": OurLoop(cfg, args.iters), "ours_nomonitor": OurLoop(cfg_off, args.iters)}
    ours = loops["ours"].trainer
    device = ours.device
    # The same Dataset class and DataLoader settings, a loader of its own with the same seed.
    ref_loader, _ = build_loaders(cfg, ours.train_set, ours.val_set)
    loops["reference"] = ReferenceLoop(cfg, ours.model, ref_loader, device, args.iters)

    def log(msg: str) -> None:
        print(msg, flush=True)

    def one_pass(name: str, round_index: int) -> tuple[int, float, float]:
        # The same augmentation draws for every loop in a round (each loader has its own generator
        # with the same seed, so the batches come in the same order too): equal data, equal work.
        torch.manual_seed(args.seed * 1_000_003 + round_index)
        return _timed(loops[name].train_epoch, device)

    log(f"warm-up: {WARMUP_ROUNDS} passes of {args.iters} steps per loop")
    for w in range(WARMUP_ROUNDS):
        for name in LOOPS:
            one_pass(name, -1 - w)

    per_round: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = LOOPS[r % len(LOOPS):] + LOOPS[: r % len(LOOPS)]
        row: dict[str, Any] = {"round": r + 1, "order": list(order)}
        for name in order:
            images, seconds, cpu_seconds = one_pass(name, r + 1)
            row[name] = {
                "images": images,
                "seconds": round(seconds, 4),
                "cpu_seconds": round(cpu_seconds, 4),
                "images_per_s": round(images / seconds, 3),
                "images_per_cpu_s": round(images / cpu_seconds, 3),
                "step_seconds": [round(t, 5) for t in loops[name].clock.step_times()],
            }
        per_round.append(row)
        log(f"round {r + 1}/{args.rounds} (img/s): " + "  ".join(f"{n} {row[n]['images_per_s']:.2f}" for n in LOOPS))

    summary = {metric: summarise(per_round, metric, args.batch_size) for metric in METRICS}
    step_s = args.batch_size / summary["images_per_s"]["median"]["ours"]
    monitor_direct = monitor_cost_per_step(ours)
    return {
        "benchmark": "training throughput: model.trainer.Trainer vs a torchvision references/detection loop",
        "machine": machine_info(
            torchvision=torchvision.__version__, device=str(device),
            **({"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}),
        ),
        "settings": {
            "backbone": cfg.model.backbone,
            "input_size": cfg.model.input_size,
            "batch_size": cfg.batch_size,
            "steps_per_round": args.iters,
            "rounds": args.rounds,
            "warmup_rounds": WARMUP_ROUNDS,
            "threads": args.threads,
            "num_workers": args.workers,
            "amp": args.amp and device.type == "cuda",
            "health_check_every_steps": cfg.health.check_every_steps,
            "data": str(args.data),
            "train_images_per_round": args.iters * args.batch_size,
            "seed": args.seed,
        },
        "metrics": METRICS,
        "per_round": per_round,
        "summary": summary,
        "monitor_direct": {
            "seconds_per_step": monitor_direct,
            "fraction_of_step": round(monitor_direct / step_s, 6),
            "step_seconds_ours": round(step_s, 4),
        },
    }


#: The three readings of the passes, all in images per second.
METRICS = {
    "images_per_s": "wall clock of each pass (the throughput)",
    "images_per_s_median_step": "batch size / median step time (robust to bursts of other processes)",
    "images_per_cpu_s": "process CPU time of each pass",
}


def _rates(per_round: list[dict[str, Any]], name: str, metric: str, batch_size: int) -> list[float]:
    if metric == "images_per_s_median_step":
        return [batch_size / statistics.median(row[name]["step_seconds"]) for row in per_round]
    return [row[name][metric] for row in per_round]


def summarise(per_round: list[dict[str, Any]], metric: str, batch_size: int) -> dict[str, Any]:
    """Medians, ours/reference and the monitor's overhead, both as ratios of medians and as
    medians of per-round ratios (loops that ran back to back share the machine's state).
    The step-time reading pools every step of every round for its median."""
    rates = {name: _rates(per_round, name, metric, batch_size) for name in LOOPS}
    if metric == "images_per_s_median_step":
        medians = {
            name: batch_size / statistics.median(t for row in per_round for t in row[name]["step_seconds"])
            for name in LOOPS
        }
    else:
        medians = {name: statistics.median(rates[name]) for name in LOOPS}
    vs_ref = [a / b for a, b in zip(rates["ours"], rates["reference"])]
    monitor = [c / a - 1 for a, c in zip(rates["ours"], rates["ours_nomonitor"])]
    return {
        "median": {k: round(v, 3) for k, v in medians.items()},
        "ours_to_reference": round(medians["ours"] / medians["reference"], 4),
        "ours_to_reference_paired": round(statistics.median(vs_ref), 4),
        # Positive: the run without the monitor was faster, i.e. the monitor costs this fraction.
        "monitor_overhead": round(medians["ours_nomonitor"] / medians["ours"] - 1, 4),
        "monitor_overhead_paired": round(statistics.median(monitor), 4),
        "monitor_overhead_paired_range": [round(min(monitor), 4), round(max(monitor), 4)],
    }


def to_markdown(res: dict[str, Any]) -> str:
    m, s = res["machine"], res["settings"]
    lines = [
        "# Training throughput: our Trainer vs a torchvision reference loop",
        "",
        f"Machine: {m['cpu']}, {m['cpu_cores']} cores, device {m['device']}"
        + (f" ({m['gpu']})" if "gpu" in m else "")
        + f", torch {m['torch']}, torchvision {m['torchvision']}, {m['torch_threads']} torch thread(s), "
        f"load average at start {', '.join(f'{x:.2f}' for x in m.get('load_average_at_start', []))}.",
        f"Settings: {s['backbone']} SSD, {s['input_size']} px, batch {s['batch_size']}, {s['steps_per_round']} steps "
        f"per round, {s['rounds']} rounds after {s['warmup_rounds']} warm-up round, {s['num_workers']} loader workers, "
        f"AMP {'on' if s['amp'] else 'off'}, health checks every {s['health_check_every_steps']} steps, data {s['data']}.",
        "",
        "A: ours (health monitor on), B: the reference loop, C: ours with `health.enabled: false`.",
        "Images/s per round: wall clock of the pass / from the median step / per CPU second.",
        "",
        "| round | order | A ours | B reference | C ours, monitor off |",
        "|---|---|---|---|---|",
    ]

    def cell(entry: dict[str, Any]) -> str:
        if "step_seconds" in entry:
            entry = {**entry, "images_per_s_median_step": s["batch_size"] / statistics.median(entry["step_seconds"])}
        return " / ".join(f"{entry[metric]:.2f}" for metric in METRICS)

    for row in res["per_round"]:
        order = " ".join({"ours": "A", "ours_nomonitor": "C", "reference": "B"}[n] for n in row["order"])
        lines.append(f"| {row['round']} | {order} | {cell(row['ours'])} | {cell(row['reference'])} | {cell(row['ours_nomonitor'])} |")
    med = {name: {metric: res["summary"][metric]["median"][name] for metric in METRICS} for name in LOOPS}
    lines += [
        f"| **median** | | **{cell(med['ours'])}** | **{cell(med['reference'])}** | **{cell(med['ours_nomonitor'])}** |",
        "",
        "| reading | ours / reference (ratio of medians; median of per-round ratios) | monitor overhead (C/A - 1; per round: median, range) |",
        "|---|---|---|",
    ]
    for metric, meaning in METRICS.items():
        x = res["summary"][metric]
        lo, hi = x["monitor_overhead_paired_range"]
        lines.append(
            f"| {meaning} | **{x['ours_to_reference']:.3f}x**; {x['ours_to_reference_paired']:.3f}x | "
            f"{100 * x['monitor_overhead']:+.2f} %; {100 * x['monitor_overhead_paired']:+.2f} % "
            f"({100 * lo:+.2f} to {100 * hi:+.2f} %) |"
        )
    d = res["monitor_direct"]
    lines += [
        "",
        f"The health monitor's own work, timed directly (`check_step` with its host read of the counters, every "
        f"{s['health_check_every_steps']} steps): {1e6 * d['seconds_per_step']:.1f} us per step = "
        f"{100 * d['fraction_of_step']:.4f} % of a {1e3 * d['step_seconds_ours']:.0f} ms step. Targets: ours / reference "
        ">= 1 with the monitor on; monitor overhead <= 2 %.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=24, help="timed rounds (default 24)")
    parser.add_argument("--iters", type=int, default=4, help="optimiser steps per loop and round (default 4)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA only), for both loops")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0, the config default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the mini set (generated if missing)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where throughput.json/.md go")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.iters < 2 or args.batch_size < 1 or args.threads < 1:
        parser.error("--rounds, --batch-size and --threads must be >= 1, --iters >= 2")
    res = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps(res, indent=2) + "\n")
    md = to_markdown(res)
    (args.out / "throughput.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
