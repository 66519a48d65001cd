"""Training throughput: our ``Trainer`` against a torchvision-reference-style training loop.

Three loops train the same network (tiny SSD, same initial weights) on the same data (the same
Dataset and DataLoader settings, the same shuffling order), batch size, device and thread count:

* ``ours``: :class:`model.trainer.Trainer` with its defaults, health monitor on;
* ``ours_nomonitor``: the same with ``health.enabled: false`` (the monitor's overhead alone);
* ``reference``: a plain loop in the style of torchvision's ``references/detection/engine.py``
  ``train_one_epoch``: ``torchvision.models.detection.SSD`` built from *our* backbone, anchor
  generator and head (so the networks match), its own ``compute_loss`` (SSDMatcher, 3:1 hard
  negatives), ``sum(loss_dict.values())``, a ``.item()`` and a finiteness check every step, the
  same optimiser (SGD, same learning rate, momentum, weight decay groups) and schedule; its loader
  distorts colours with torchvision's own ``RandomPhotometricDistort`` (the same draws; ours
  computes the hue step in closed form, ``model/data/colour.py``).

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

Writes ``bench/results/throughput.json`` and ``.md`` (``throughput_cuda.*`` on CUDA, with the GPU
utilisation of each loop running alone; ``--out``/``--stem`` to change).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torchvision
from torchvision.models.detection.ssd import SSD
from torchvision.transforms import v2

from model.config import TrainConfig
from model.data.colour import PhotometricDistort
from model.engine import batched_augmentation, build_datasets, build_loaders, build_optimizer, build_scheduler
from model.ssd import FaceSSD
from model.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script (bench/ is not an installed package)
    sys.path.insert(0, str(REPO))
from bench.machine import machine_info, write_results  # noqa: E402

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
        # torchvision's recipe keeps the default memory format (ours may be channels-last).
        self.model = torchvision_ssd_like(ours).to(device, memory_format=torch.contiguous_format)
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


def with_torchvision_photometric(transform: v2.Compose) -> v2.Compose:
    """The training transform with torchvision's own ``RandomPhotometricDistort`` in place of ours
    (the same draws and steps; ours computes the hue shift in closed form)."""
    steps = [
        v2.RandomPhotometricDistort(p=step.p) if isinstance(step, PhotometricDistort) else step for step in transform.transforms
    ]
    return v2.Compose(steps)


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


class CachedBatches:
    """The first ``count`` batches of a loader, kept in memory and replayed: a training loop fed
    from it does no image loading, so its rate is the training step's alone (host to device copy
    included), the bound the input pipeline holds the real loop under."""

    def __init__(self, loader: torch.utils.data.DataLoader, count: int) -> None:
        self.batches = [batch for _, batch in zip(range(count), loader)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Any:
        return iter(self.batches)


def loader_rate(loader: torch.utils.data.DataLoader, seconds: float) -> float:
    """Images per second the loader alone delivers (decoding, augmentation, collation), epochs back to back."""
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch_images, _ in loader:
            images += len(batch_images)
    return images / (time.perf_counter() - start)


# -- GPU utilisation -----------------------------------------------------------------------------


class GpuSampler:
    """``nvidia-smi`` sampling the GPU's utilisation and memory every ``interval_ms`` in the background.

    ``utilization.gpu`` is the share of the last sample period in which a kernel ran: how busy the
    loop keeps the GPU (a loop starved by its data loader or host syncs leaves it idle).
    """

    QUERY = "utilization.gpu,memory.used"

    def __init__(self, gpu_index: int, interval_ms: int = 100) -> None:
        self.cmd = ["nvidia-smi", "-i", str(gpu_index), f"--query-gpu={self.QUERY}", "--format=csv,noheader,nounits",
                    "-lms", str(interval_ms)]  # fmt: skip
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> GpuSampler:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        self.samples = [tuple(float(x) for x in line.split(",")) for line in out.splitlines() if line.strip()]


def gpu_utilisation(loop: Any, seconds: float, device: torch.device) -> dict[str, Any]:
    """One loop alone, passes back to back for ``seconds``, ``nvidia-smi`` sampling meanwhile.

    The first second of samples is dropped (the sampler's start and the loop's first pass)."""
    torch.cuda.reset_peak_memory_stats(device)
    passes, images = 0, 0
    with GpuSampler(device.index or 0) as sampler:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            images += loop.train_epoch()
            passes += 1
        _sync(device)
        elapsed = time.perf_counter() - start
    util = [u for u, _ in sampler.samples[10:]] or [u for u, _ in sampler.samples]
    return {
        "seconds": round(elapsed, 2),
        "passes": passes,
        "images_per_s": round(images / elapsed, 2),
        "samples": len(util),
        "gpu_util_mean": round(statistics.fmean(util), 1) if util else None,
        "gpu_util_median": statistics.median(util) if util else None,
        "gpu_memory_used_mib_max": max((m for _, m in sampler.samples), default=None),
        "torch_max_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
    }


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
        "model": {"backbone": args.backbone, "input_size": args.input_size},
        "augment": {"pipeline": args.pipeline},
    }
    if args.pin_memory is not None:
        overrides["data"]["pin_memory"] = args.pin_memory
    return TrainConfig.model_validate(overrides)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    cfg = build_config(args)
    cfg_off = cfg.model_copy(deep=True)
    cfg_off.health.enabled = False

    loops: dict[str, Any] = {"ours": OurLoop(cfg, args.iters), "ours_nomonitor": OurLoop(cfg_off, args.iters)}
    ours = loops["ours"].trainer
    device = ours.device
    # The same Dataset class and DataLoader settings, a loader of its own with the same seed; the
    # reference always distorts colours in its loader, with torchvision's own transform (the
    # torchvision recipe; ours is the same transform with a faster hue step, model/data/colour.py).
    ref_cfg = cfg.model_copy(deep=True)
    ref_cfg.augment.pipeline = "per_sample"
    ref_train, ref_val = build_datasets(ref_cfg)
    ref_train.transform = with_torchvision_photometric(ref_train.transform)
    ref_loader, _ = build_loaders(ref_cfg, ref_train, ref_val)
    loops["reference"] = ReferenceLoop(cfg, ours.model, ref_loader, device, args.iters)
    pin_memory = ref_loader.pin_memory  # the effective setting (the config's None: on for CUDA)
    if args.cached:
        # Every loop replays the same batches from memory: the steps alone, no input pipeline.
        for loop in loops.values():
            torch.manual_seed(args.seed)
            loop.clock.loader = CachedBatches(loop.clock.loader, args.iters)

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
        order = LOOPS[r % len(LOOPS) :] + LOOPS[: r % len(LOOPS)]
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
    utilisation, bounds = {}, {}
    if device.type == "cuda" and args.util_seconds > 0:
        # Our loop again, fed from batches held in memory: what the step alone keeps the GPU at.
        cached = OurLoop(cfg, args.iters)
        cached.clock.loader = CachedBatches(cached.clock.loader, args.iters)
        for name, loop in [*((name, loops[name]) for name in LOOPS), ("ours_cached_batches", cached)]:
            utilisation[name] = gpu_utilisation(loop, args.util_seconds, device)
            log(f"GPU utilisation, {name} alone: {utilisation[name]}")
        bounds["loader_images_per_s"] = round(
            loader_rate(build_loaders(cfg, ours.train_set, ours.val_set)[0], args.util_seconds), 1
        )
        log(f"the training loader alone: {bounds['loader_images_per_s']} images/s")
    if args.loader_workers:
        # How the input pipeline scales with the CPUs a trial gets (its loader workers).
        by_workers = {}
        for n in args.loader_workers:
            cfg_n = cfg.model_copy(deep=True)
            cfg_n.data.num_workers = n
            by_workers[n] = round(loader_rate(build_loaders(cfg_n, ours.train_set, ours.val_set)[0], 10.0), 1)
            log(f"the training loader alone, {n} workers: {by_workers[n]} images/s")
        bounds["loader_images_per_s_by_workers"] = by_workers
    step_s = args.batch_size / summary["images_per_s"]["median"]["ours"]
    monitor_direct = monitor_cost_per_step(ours)
    return {
        "benchmark": "training throughput: model.trainer.Trainer vs a torchvision references/detection loop",
        "machine": machine_info(
            torchvision=torchvision.__version__,
            device=str(device),
            **({"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}),
        ),
        "settings": {
            "backbone": cfg.model.backbone,
            "pin_memory": pin_memory,
            "augment_pipeline": "batched" if batched_augmentation(cfg) else "per_sample",
            "input_size": cfg.model.input_size,
            "batch_size": cfg.batch_size,
            "steps_per_round": args.iters,
            "rounds": args.rounds,
            "warmup_rounds": WARMUP_ROUNDS,
            "threads": args.threads,
            "num_workers": args.workers,
            "amp": args.amp and device.type == "cuda",
            "cached_batches": args.cached,
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
        **({"gpu_utilisation": utilisation} if utilisation else {}),
        **({"bounds": bounds} if bounds else {}),
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
            name: batch_size / statistics.median(t for row in per_round for t in row[name]["step_seconds"]) for name in LOOPS
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
        f"pin_memory {s.get('pin_memory')}, "
        + (
            "batched augmentation rendered on the device (the reference: per-sample in its loader), "
            if s.get("augment_pipeline") == "batched"
            else ""
        )
        + ("**every loop replays the same batches from memory (no image loading)**, " if s.get("cached_batches") else "")
        + f"AMP {'on' if s['amp'] else 'off'}, health checks every {s['health_check_every_steps']} steps, data {s['data']}.",
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
        lines.append(
            f"| {row['round']} | {order} | {cell(row['ours'])} | {cell(row['reference'])} | {cell(row['ours_nomonitor'])} |"
        )
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
    if "gpu_utilisation" in res:
        lines += [
            "",
            "GPU utilisation, each loop alone for a while after the timed rounds (`nvidia-smi` every 100 ms, "
            "`utilization.gpu`: the share of time a kernel ran):",
            "",
            "| loop | images/s alone | GPU utilisation mean / median (%) | GPU memory used, max (MiB) | torch peak allocated (MiB) |",
            "|---|---|---|---|---|",
        ]
        for name, u in res["gpu_utilisation"].items():
            lines.append(f"| {name} | {u['images_per_s']:.1f} | {u['gpu_util_mean']} / {u['gpu_util_median']} | "
                         f"{u['gpu_memory_used_mib_max']} | {u['torch_max_allocated_mib']} |")  # fmt: skip
        lines += [
            "",
            f"`ours_cached_batches`: our loop fed from {s['steps_per_round']} batches held in memory (no image loading): "
            f"the training step's own rate. The training loader alone (same settings, epochs back to back) delivers "
            f"{res['bounds']['loader_images_per_s']} images/s.",
        ]
    if "loader_images_per_s_by_workers" in res.get("bounds", {}):
        by = res["bounds"]["loader_images_per_s_by_workers"]
        lines += ["", "The training loader alone, by loader workers (images/s): "
                  + ", ".join(f"{n} workers {rate}" for n, rate in by.items()) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=24, help="timed rounds (default 24)")
    parser.add_argument("--iters", type=int, default=4, help="optimiser steps per loop and round (default 4)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA only), for both loops")
    parser.add_argument(
        "--backbone",
        choices=("tiny", "mobilenet_v3", "vgg16"),
        default="tiny",
        help="the SSD's backbone, untrained (default tiny; mobilenet_v3 at 320 px is the GPU space's)",
    )
    parser.add_argument("--input-size", type=int, default=256, help="input size in pixels (default 256)")
    parser.add_argument(
        "--pin-memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the loader's pin_memory (default: the config's, on for CUDA)",
    )
    parser.add_argument(
        "--pipeline",
        choices=["auto", "batched", "per_sample"],
        default="auto",
        help="augment.pipeline of our loop (the reference keeps torchvision's per-sample transforms)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0, the config default)")
    parser.add_argument(
        "--cached",
        action="store_true",
        help="every loop replays --iters batches held in memory: the training steps alone, no loading",
    )
    parser.add_argument(
        "--loader-workers",
        type=int,
        nargs="*",
        default=[],
        metavar="N",
        help="also time the training loader alone with each of these worker counts (10 s each)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the mini set (generated if missing)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the results folder (default bench/results)")
    parser.add_argument("--stem", help="results file name without extension (default throughput, throughput_cuda on CUDA)")
    parser.add_argument("--util-seconds", type=float, default=20.0,
                        help="CUDA only: seconds each loop runs alone while nvidia-smi samples GPU utilisation (0: skip)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.iters < 2 or args.batch_size < 1 or args.threads < 1:
        parser.error("--rounds, --batch-size and --threads must be >= 1, --iters >= 2")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    res = run(args)
    stem = args.stem or ("throughput_cuda" if args.device == "cuda" else "throughput")
    write_results(args.out, stem, res, to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
