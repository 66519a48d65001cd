"""A real search whose trials share one GPU: Ray Tune + Optuna + MLflow with fractional GPUs.

The Ray half of the GPU check (``bench/gpu_check.sh``). It runs ``hpo/search.py`` on
``bench/gpu_search.yaml`` (widerface-gpu trials, a quarter of the GPU each, four at once, eight
in all: every trial slot's worker runs a second trial, so actor reuse is exercised on a GPU) over
the WIDER-like set while ``nvidia-smi`` samples the GPU, then reads each trial's results from
Tune's storage. It reports what plain processes (``bench/gpu_packing.py``) cannot show: that Ray
placed the fractional trials on one GPU, how busy the GPU was while they trained, the images/s
per GPU of the whole search, the worker processes reused between trials, and the search's own
summary (every trial ended and reached MLflow).

    python bench/gpu_search.py                                # on a GPU machine: ~3 min
    python bench/gpu_search.py --device cpu --smoke --train-images 40 --data /tmp/wider-like  # a CPU check of the script

Writes ``bench/results/gpu_search.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script (bench/ is not an installed package)
    sys.path.insert(0, str(REPO))

from bench.machine import machine_info, publish  # noqa: E402
from bench.wider_like import make_wider_like  # noqa: E402

SPACE = REPO / "bench" / "gpu_search.yaml"
DEFAULT_DATA = REPO / "data" / "wider-like"
#: On a CPU the check only proves the script: a tiny model, two trials at a time.
SMOKE_FIXED = {"device": "cpu", "model.backbone": "tiny", "model.input_size": 128, "batch_size": 8,
               "data.num_workers": 0, "data.max_train_images": 48, "data.max_val_images": 8}  # fmt: skip


class TimedGpuSampler:
    """``nvidia-smi`` utilisation samples with their wall-clock time, read as they come."""

    def __init__(self, interval_ms: int = 200) -> None:
        self.cmd = ["nvidia-smi", "--query-gpu=timestamp,utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                    "-lms", str(interval_ms)]  # fmt: skip
        self.samples: list[tuple[float, float, float]] = []  # (unix time, busy %, MiB used)

    def __enter__(self) -> TimedGpuSampler:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            stamp, util, mem = (part.strip() for part in line.split(","))
            when = dt.datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f").timestamp()
            self.samples.append((when, float(util), float(mem)))

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.thread.join(timeout=5)


def write_space(args: argparse.Namespace, folder: Path) -> Path:
    space = yaml.safe_load(SPACE.read_text())
    if args.smoke:
        space["fixed"].update(SMOKE_FIXED)
        space["budget"].update(num_samples=4, max_concurrent_trials=2)
        space["resources"] = {"cpu": 1, "gpu": 0}
    path = folder / "gpu_search.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def read_trials(search_dir: Path) -> list[dict[str, Any]]:
    """Each trial's epochs as Tune stored them (``result.json``: one JSON line an epoch)."""
    trials = []
    for result in sorted(search_dir.glob("*/result.json")):
        epochs = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if epochs:
            trials.append({"trial": result.parent.name, "epochs": epochs})
    return trials


def summarise(trials: list[dict[str, Any]], samples: list[tuple[float, float, float]]) -> dict[str, Any]:
    """Throughput and GPU busy % over the window in which trials trained (first epoch's start to
    the last epoch's end: set-up, validation and the gaps between trials included)."""
    epochs = [e for t in trials for e in t["epochs"]]
    start = min(e["timestamp"] - e["time_this_iter_s"] for e in epochs)
    end = max(e["timestamp"] for e in epochs)
    window = [s for s in samples if start <= s[0] <= end]
    per_trial = [statistics.median(e["train/images_per_s"] for e in t["epochs"]) for t in trials]
    return {
        "trials": len(trials),
        "epochs": len(epochs),
        "worker_processes": len({(e["hostname"], e["pid"]) for e in epochs}),
        "window_s": round(end - start, 1),
        "images_per_s_per_gpu": round(sum(e["train/images"] for e in epochs) / (end - start), 1),
        "trial_images_per_s_median": round(statistics.median(per_trial), 1),
        "setup_s_median": round(statistics.median(e["time/setup_s"] for e in epochs), 2),
        "gpu_samples": len(window),
        "gpu_busy_mean": round(statistics.fmean(u for _, u, _ in window), 1) if window else None,
        "gpu_busy_median": statistics.median(u for _, u, _ in window) if window else None,
        "gpu_mem_max_mib": max((m for _, _, m in window), default=None),
        "outcomes": {t["trial"]: t["epochs"][-1].get("health/diagnosis") for t in trials},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    make_wider_like(args.data, num_train=args.train_images, num_val=100, seed=0)
    scratch = Path(tempfile.mkdtemp(prefix="gpu_search_"))
    space = write_space(args, scratch)
    cmd = [sys.executable, str(REPO / "hpo" / "search.py"), "--space", str(space), "--data", str(args.data),
           "--storage-path", str(scratch / "ray"), "--tracking-uri", f"sqlite:///{scratch / 'mlflow.db'}", "--no-report"]  # fmt: skip
    if not args.smoke:
        cmd += ["--gpus-per-trial", str(args.gpus_per_trial), "--cpus-per-trial", str(args.cpus_per_trial)]
    began = time.perf_counter()
    sampler = TimedGpuSampler() if args.device == "cuda" else None
    if sampler:
        sampler.__enter__()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.timeout)
    finally:
        if sampler:
            sampler.__exit__()
    wall = time.perf_counter() - began
    print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
    name = yaml.safe_load(space.read_text())["name"]
    trials = read_trials(scratch / "ray" / name)
    if proc.returncode != 0 or not trials:
        raise SystemExit(f"the search failed (exit {proc.returncode}, {len(trials)} trials with results)")
    return {
        "machine": machine_info(device=args.device),
        "settings": {
            "space": str(SPACE.relative_to(REPO)),
            "smoke": args.smoke,
            "gpus_per_trial": args.gpus_per_trial,
            "cpus_per_trial": args.cpus_per_trial,
            "train_images": args.train_images,
        },  # fmt: skip
        "search_wall_s": round(wall, 1),
        "summary": summarise(trials, sampler.samples if sampler else []),
        "search_output_tail": proc.stdout.splitlines()[-25:],
    }


def to_markdown(r: dict[str, Any]) -> str:
    s = r["summary"]
    lines = [
        "# A Ray search with trials packed on one GPU (bench/gpu_search.py)",
        "",
        f"Machine: {r['machine']}",
        f"Settings: {r['settings']}",
        "",
        "| reading | value |",
        "|---|---|",
        f"| search wall clock (Ray start-up to summary) | {r['search_wall_s']} s |",
        f"| trials / epochs / worker processes | {s['trials']} / {s['epochs']} / {s['worker_processes']} |",
        f"| training window (first epoch start to last epoch end) | {s['window_s']} s |",
        f"| training images/s per GPU over that window | {s['images_per_s_per_gpu']} |",
        f"| one trial's training images/s (median) | {s['trial_images_per_s_median']} |",
        f"| GPU busy over the window: mean / median ({s['gpu_samples']} samples) | {s['gpu_busy_mean']} / {s['gpu_busy_median']} % |",
        f"| GPU memory used, max | {s['gpu_mem_max_mib']} MiB |",
        f"| trial set-up (median) | {s['setup_s_median']} s |",
        "",
        "The search's last lines:",
        "",
        "```",
        *r["search_output_tail"],
        "```",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="WIDER-like set, generated if missing (default: %(default)s)")
    p.add_argument("--train-images", type=int, default=1200)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--gpus-per-trial", type=float, default=0.25)
    p.add_argument("--cpus-per-trial", type=float, default=4)
    p.add_argument("--timeout", type=float, default=420, help="seconds before the search is killed")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--stem", default="gpu_search")
    p.add_argument("--smoke", action="store_true", help="a tiny CPU search; writes nothing to bench/results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    publish(args, results, to_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
