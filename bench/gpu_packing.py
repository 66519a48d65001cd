"""Trials packed on one GPU: images/s per GPU and GPU busy %, per-sample vs batched augmentation.

Each cell of the table is ``k`` concurrent trial processes (this script with ``--worker``) on one
GPU, each a ``widerface-gpu`` trial as the search runs it (MobileNetV3 SSD at 320 px, batch 32, AMP,
channels-last, 3 loader workers and 4 CPUs, its ``1/k`` share of the GPU with the allocator cap of
``model.gpu_share``), on generated WIDER-like images (``bench/wider_like.py``: ~1024 px JPEGs, many
small faces) read through the shared decoded-image cache (built once, before the trials start,
as one node's trials share it). A trial builds its ``Trainer``, trains one warm-up epoch, waits at
a barrier, then trains for ``--seconds`` (the health monitor on, in observe mode so a cell never
stops early) and reports its images and seconds; ``nvidia-smi`` samples the GPU every 100 ms
meanwhile. Pipelines and trial counts are interleaved (for each ``k``: every pipeline), so drift
hits them alike. Before the trials, the training loader alone (0 workers, one thread: images/s per
CPU core) is timed for each pipeline on the same images.

    python bench/gpu_packing.py                                   # on a GPU machine: ~5 min
    python bench/gpu_packing.py --device cpu --backbone tiny --input-size 128 --trials 1 2 --seconds 5 --smoke

Writes ``bench/results/gpu_packing.{json,md}`` (``--stem``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script (bench/ is not an installed package)
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.machine import machine_info, publish  # noqa: E402
from bench.throughput import GpuSampler, loader_rate  # noqa: E402
from bench.wider_like import make_wider_like  # noqa: E402
from model.config import TrainConfig  # noqa: E402
from model.data.batch_augment import render_batch  # noqa: E402
from model.engine import build_datasets, build_loaders  # noqa: E402
from model.gpu_share import cap_gpu_memory  # noqa: E402
from model.trainer import Trainer  # noqa: E402

DEFAULT_DATA = REPO / "data" / "wider-like"
PIPELINES = ("per_sample", "batched")


def trial_config(args: argparse.Namespace, pipeline: str) -> TrainConfig:
    """The widerface-gpu trial's fixed settings (no pretrained download), on the WIDER-like set."""
    return TrainConfig().with_overrides(
        {
            "data.source": "wider",
            "data.root": str(args.data.resolve()),
            "data.cache_dir": str(args.data.resolve() / ".cache"),
            "data.num_workers": args.loader_workers,
            "data.max_val_images": 8,
            "augment.pipeline": pipeline,
            "model.backbone": args.backbone,
            "model.input_size": args.input_size,
            "batch_size": args.batch_size,
            "device": args.device,
            "epochs": 1000,  # the schedule never ends inside the measurement
            "schedule.warmup_iters": 20,
            "health.stop_on": [],  # observe mode: a cell measures its whole window
        }
    )


# -- one trial (a worker process) ---------------------------------------------------------------


def run_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    share = 1.0 / args.concurrent
    cap = cap_gpu_memory(share) if args.device == "cuda" else None
    trainer = Trainer(trial_config(args, args.pipeline), log=lambda _: None)
    trainer._train_epoch()  # warm-up: workers started, cuDNN autotuned, allocator grown
    Path(args.ready).touch()
    while not Path(args.go).exists():
        time.sleep(0.01)
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        before = trainer.global_step
        trainer._train_epoch()
        images += (trainer.global_step - before) * args.batch_size
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = {"images": images, "seconds": round(seconds, 3), "images_per_s": round(images / seconds, 2), "memory_cap": cap}
    if trainer.device.type == "cuda":
        result["max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    Path(args.result).write_text(json.dumps(result))


# -- the benchmark ------------------------------------------------------------------------------


def run_cell(args: argparse.Namespace, pipeline: str, k: int, scratch: Path) -> dict[str, Any]:
    """``k`` trials of ``pipeline`` at once; their images/s and the GPU's utilisation meanwhile."""
    cell = scratch / f"{pipeline}-{k}"
    cell.mkdir()
    go = cell / "go"
    procs = []
    for i in range(k):
        cmd = [sys.executable, __file__, "--worker", "--pipeline", pipeline, "--concurrent", str(k),
               "--ready", str(cell / f"ready{i}"), "--go", str(go), "--result", str(cell / f"result{i}.json"),
               *_shared_flags(args)]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=REPO))
    deadline = time.perf_counter() + args.start_timeout
    while not all((cell / f"ready{i}").exists() for i in range(k)):
        if any(p.poll() not in (None, 0) for p in procs) or time.perf_counter() > deadline:
            for p in procs:
                p.kill()
            raise RuntimeError(f"{pipeline} x{k}: a trial failed or did not start within {args.start_timeout} s")
        time.sleep(0.05)
    sampler = GpuSampler(0) if shutil.which("nvidia-smi") and args.device == "cuda" else None
    if sampler:
        sampler.__enter__()
    time.sleep(0.3)
    go.touch()
    codes = [p.wait(timeout=args.seconds + args.start_timeout) for p in procs]
    if sampler:
        sampler.__exit__(None, None, None)
    if any(codes):
        raise RuntimeError(f"{pipeline} x{k}: trial exit codes {codes}")
    trials = [json.loads((cell / f"result{i}.json").read_text()) for i in range(k)]
    util = [u for u, _ in sampler.samples[5:]] if sampler else []
    return {
        "pipeline": pipeline,
        "trials": k,
        "images_per_s_per_gpu": round(sum(t["images_per_s"] for t in trials), 1),
        "images_per_s_per_trial": [t["images_per_s"] for t in trials],
        "gpu_util_mean": round(statistics.fmean(util), 1) if util else None,
        "gpu_util_median": statistics.median(util) if util else None,
        "gpu_memory_used_mib_max": max((m for _, m in sampler.samples), default=None) if sampler else None,
        "per_trial": trials,
    }


def _shared_flags(args: argparse.Namespace) -> list[str]:
    return ["--data", str(args.data), "--device", args.device, "--backbone", args.backbone,
            "--input-size", str(args.input_size), "--batch-size", str(args.batch_size),
            "--loader-workers", str(args.loader_workers), "--threads", str(args.threads),
            "--seconds", str(args.seconds)]  # fmt: skip


def loader_per_core(args: argparse.Namespace, pipeline: str) -> float:
    """The training loader alone in this process, no workers, one thread: images/s per CPU core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = trial_config(args, pipeline).with_overrides({"data.num_workers": 0, "device": "cpu"})
    try:
        return round(loader_rate(build_loaders(cfg, *build_datasets(cfg))[0], args.loader_seconds), 1)
    finally:
        torch.set_num_threads(threads)


def render_parity(args: argparse.Namespace) -> float | None:
    """Largest pixel difference between one real batch rendered on the CPU and on the GPU."""
    if args.device != "cuda":
        return None
    cfg = trial_config(args, "batched").with_overrides({"data.num_workers": 0, "device": "cpu"})
    canvas, targets = next(iter(build_loaders(cfg, *build_datasets(cfg))[0]))
    on_cpu = render_batch(canvas, targets, args.input_size)
    on_gpu = render_batch(canvas.cuda(), targets, args.input_size).cpu()
    return float((on_cpu - on_gpu).abs().max())


def run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    make_wider_like(args.data, num_train=args.train_images, num_val=100, seed=0)
    print(f"data ready at {args.data} ({time.perf_counter() - start:.0f} s)", flush=True)
    cache_start = time.perf_counter()
    build_datasets(trial_config(args, "per_sample"))  # the node's one cache build, before any trial
    cache_s = time.perf_counter() - cache_start
    loaders = {p: loader_per_core(args, p) for p in PIPELINES}
    print(f"loader alone, images/s per core: {loaders}", flush=True)
    parity = render_parity(args)
    print(f"batched render, CPU vs GPU, largest pixel difference: {parity}", flush=True)
    cells = []
    with tempfile.TemporaryDirectory(prefix="gpu-packing-") as scratch:
        for k in args.trials:
            for pipeline in args.pipelines:
                try:
                    cell = run_cell(args, pipeline, k, Path(scratch))
                except RuntimeError as exc:  # one failed cell (e.g. out of memory at 1/k GPU) is a finding
                    print(f"{pipeline} x{k}: FAILED: {exc}", flush=True)
                    cells.append({"pipeline": pipeline, "trials": k, "error": str(exc)})
                    continue
                print(f"{pipeline} x{k}: {cell['images_per_s_per_gpu']} images/s per GPU, "
                      f"GPU busy {cell['gpu_util_mean']} %", flush=True)  # fmt: skip
                cells.append(cell)
    extra = {"device": args.device}
    if args.device == "cuda":
        extra["gpu"] = torch.cuda.get_device_name(0)
    return {
        "benchmark": "trials packed on one GPU: per-sample vs batched augmentation",
        "machine": machine_info(**extra),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "cache_build_or_open_s": round(cache_s, 1),
        "loader_images_per_s_per_core": loaders,
        "render_cpu_vs_gpu_max_abs_diff": parity,
        "cells": cells,
        "wall_s": round(time.perf_counter() - start, 1),
    }


def to_markdown(r: dict[str, Any]) -> str:
    m, s = r["machine"], r["settings"]
    lines = [
        "# Trials packed on one GPU: per-sample vs batched augmentation",
        "",
        f"Machine: {m.get('gpu', m['device'])}, {m['cpu']} ({m['cpu_cores']} cores), torch {m['torch']}, "
        f"Python {m['python']}. Each trial: {s['backbone']} SSD at {s['input_size']} px, batch {s['batch_size']}, "
        f"{s['loader_workers']} loader workers, {s['threads']} torch threads, its 1/k GPU share (allocator cap); "
        f"{s['train_images']} WIDER-like training images (bench/wider_like.py), {s['seconds']} s measured per cell "
        f"after a warm-up epoch. Cache build (or open) before the trials: {r['cache_build_or_open_s']} s.",
        "",
        "Training loader alone, no workers, one thread (images/s per CPU core): "
        + ", ".join(f"{p} {v}" for p, v in r["loader_images_per_s_per_core"].items())
        + f" ({r['loader_images_per_s_per_core']['batched'] / r['loader_images_per_s_per_core']['per_sample']:.1f}x)."
        + f" The batched render of one batch on the CPU and on the GPU differs by at most {r['render_cpu_vs_gpu_max_abs_diff']}"
        + " (pixels in [0, 1]).",
        "",
        "| trials on the GPU | pipeline | images/s per GPU | per trial | GPU busy % (mean / median) | GPU memory used, max (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for c in r["cells"]:
        if "error" in c:
            lines.append(f"| {c['trials']} | {c['pipeline']} | failed: {c['error']} | | | |")
            continue
        lines.append(
            f"| {c['trials']} | {c['pipeline']} | {c['images_per_s_per_gpu']} | "
            f"{', '.join(str(x) for x in c['images_per_s_per_trial'])} | {c['gpu_util_mean']} / {c['gpu_util_median']} | "
            f"{c['gpu_memory_used_mib_max']} |"
        )
    lines += ["", f"Wall time of the whole run: {r['wall_s']} s.", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="WIDER-like set, generated if missing (default: %(default)s)")
    p.add_argument("--train-images", type=int, default=1200)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--backbone", default="mobilenet_v3")
    p.add_argument("--input-size", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--loader-workers", type=int, default=3)
    p.add_argument("--threads", type=int, default=4, help="torch threads per trial (the trial's reserved CPUs)")
    p.add_argument("--trials", type=int, nargs="+", default=[1, 2, 4], help="concurrent trials per cell")
    p.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES), help="augmentation pipelines to compare")
    p.add_argument("--seconds", type=float, default=25.0, help="measured seconds per cell")
    p.add_argument("--loader-seconds", type=float, default=8.0)
    p.add_argument("--start-timeout", type=float, default=120.0)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--stem", default="gpu_packing")
    p.add_argument("--smoke", action="store_true", help="write nothing to bench/results (a check of the script)")
    # A worker (one trial), started by the benchmark itself.
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pipeline", choices=PIPELINES, help=argparse.SUPPRESS)
    p.add_argument("--concurrent", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--ready", help=argparse.SUPPRESS)
    p.add_argument("--go", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu for a check of the script", file=sys.stderr)
        return 2
    results = run(args)
    publish(args, results, to_markdown(results))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
