"""Dynamic loss weighting against fixed weights over the study's box-weight sweep (issue 16).

The study swept ``loss.box_weight`` from 0.01 to 10; here every (method, box weight, seed) of
``weighting.method`` in {fixed, uncertainty, loss_ratio} x box weight in {0.01, 0.1, 1, 3, 10}
trains the tiny SSD at the failure zoo's ``cpu-mini`` sizes (160 px, 300 train / 60 val images of
the generated mini set, batch 8, CPU, 1 torch thread per run) with the default training config
otherwise (SGD lr 0.01 and its warm-up, class weight 1), through the zoo's own loop
(``failure_zoo.train_one``: the production :class:`model.trainer.Trainer`, the health monitor in
observe mode, every epoch's report kept). A setting *trains healthy* when the monitor never gave a
verdict that the default ``health.stop_on`` would have stopped on (the zoo's ``would_stop``).

Per run: final and best val AP, the monitor's first diagnosis and its epoch, the weights the
method ended with (``train/class_weight``, ``train/box_weight``: the effective ones), wall time.
Per method: the share of (box weight, seed) settings that train healthy, the best AP over the
sweep, the mean final AP per box weight.

Usage::

    nice -n 5 python bench/loss_weighting.py              # 5 x 3 x 2 = 30 runs x ~30-40 s: ~15-20 min on 1 core
    python bench/loss_weighting.py --jobs 2               # the same on 2 free cores: ~8-10 min
    python bench/loss_weighting.py --epochs 1 --seeds 0 --box-weights 1,10 --out /tmp/lw   # smoke test, ~1 min
    nice -n 5 python bench/loss_weighting.py --overrides '{"schedule.warmup_iters": 0}' --stem loss_weighting_nowarm
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling zoo module
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from failure_zoo import DEFAULT_STOP_ON, SIZES, ZooEntry, train_one

from bench.machine import load_average, machine_info, write_results
from model import report_keys as K
from model.config import DEFAULT_MINI_ROOT
from model.data.mini import ensure_mini

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("fixed", "uncertainty", "loss_ratio")
BOX_WEIGHTS = (0.01, 0.1, 1.0, 3.0, 10.0)


def run_one(method: str, box_weight: float, seed: int, epochs: int, data_root: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Train one setting in this process (1 torch thread); its record."""
    torch.set_num_threads(1)
    entry = ZooEntry("healthy", {**overrides, "weighting.method": method, "loss.box_weight": box_weight}, epochs)
    rec = train_one(f"{method} bw{box_weight:g}", entry, seed, data_root)
    reports, sc = rec["reports"], rec["score"]
    stops = [v for v in rec["verdicts"] if v["diagnosis"] in DEFAULT_STOP_ON]
    last = reports[-1] if reports else {}
    aps = [r[K.VAL_AP] for r in reports]
    return {
        "method": method,
        "box_weight": box_weight,
        "seed": seed,
        "final_ap": aps[-1] if aps else 0.0,
        "best_ap": max(aps) if aps else 0.0,
        "healthy": not sc["would_stop"],
        "first_diagnosis": sc["first_diagnosis"],
        "first_epoch": sc["first_epoch"],
        "first_step": sc["first_step"],
        "first_stop_diagnosis": stops[0]["diagnosis"] if stops else None,
        "first_stop_epoch": stops[0]["epoch"] if stops else None,
        "final_class_weight": last.get(K.TRAIN_CLASS_WEIGHT),
        "final_box_weight": last.get(K.TRAIN_BOX_WEIGHT),
        "epochs_run": rec["epochs_run"],
        "ended": rec["ended"],
        "hindsight": rec["hindsight"],
        "wall_s": round(rec["seconds"], 1),
        "verdicts": rec["verdicts"],
        "reports": reports,
    }


def summarise(runs: list[dict[str, Any]], box_weights: list[float]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        rows = [r for r in runs if r["method"] == method]
        per_bw = {}
        for bw in box_weights:
            cell = [r for r in rows if r["box_weight"] == bw]
            if cell:
                per_bw[f"{bw:g}"] = {
                    "runs": len(cell),
                    "healthy": sum(r["healthy"] for r in cell),
                    "final_ap_mean": statistics.mean(r["final_ap"] for r in cell),
                    "best_ap": max(r["best_ap"] for r in cell),
                    "final_box_weight_mean": statistics.mean(r["final_box_weight"] or 0.0 for r in cell),
                    "final_class_weight_mean": statistics.mean(r["final_class_weight"] or 0.0 for r in cell),
                    "diagnoses": sorted({r["first_stop_diagnosis"] for r in cell if r["first_stop_diagnosis"]}),
                }
        summary[method] = {
            "runs": len(rows),
            "healthy_share": sum(r["healthy"] for r in rows) / len(rows),
            "best_ap": max(r["best_ap"] for r in rows),
            "final_ap_mean": statistics.mean(r["final_ap"] for r in rows),
            "per_box_weight": per_bw,
        }
    return summary


def write_markdown(result: dict[str, Any]) -> str:
    m, s, bws = result["machine"], result["summary"], [f"{b:g}" for b in result["box_weights"]]
    lines = [
        "# Dynamic loss weighting vs fixed weights over the box-weight sweep (`bench/loss_weighting.py`)",
        "",
        (
            f"Machine: {m['cpu']}, {m['cpu_cores']} cores (shared), torch {m['torch']} with 1 thread per run"
            f" ({result['jobs']} run(s) at a time), load average at start {', '.join(map(str, m['load_average_at_start']))},"
            f" at end {', '.join(map(str, m.get('load_average_at_end', [])))}; {result['wall_s']:.0f} s wall in all."
        ),
        (
            "Tiny SSD, cpu-mini sizes (160 px, 300 train / 60 val mini images, batch 8), default training config"
            " (SGD lr 0.01 with its warm-up, class weight 1)"
            + (f" with {result['overrides']}" if result["overrides"] else "")
            + f", {result['epochs']} epochs, seeds"
            f" {', '.join(map(str, result['seeds']))}. Monitor in observe mode; *healthy*: no verdict the default"
            f" `stop_on` ({', '.join(result['default_stop_on'])}) would have stopped on."
        ),
        "",
        "## Per method",
        "",
        "| method | healthy share | best AP | mean final AP over the sweep |",
        "|---|---|---|---|",
    ]
    for method, x in s.items():
        lines.append(
            f"| {method} | {x['healthy_share']:.0%} ({round(x['healthy_share'] * x['runs'])}/{x['runs']}) |"
            f" {x['best_ap']:.4f} | {x['final_ap_mean']:.4f} |"
        )

    def grid(cell: Callable[[dict[str, Any]], str]) -> list[str]:
        """A method x box weight table of ``cell(per-box-weight summary)``."""
        rows = ["| method | " + " | ".join(f"bw {b}" for b in bws) + " |", "|---|" + "---|" * len(bws)]
        for method, x in s.items():
            cells = [cell(x["per_box_weight"][b]) if b in x["per_box_weight"] else "" for b in bws]
            rows.append(f"| {method} | " + " | ".join(cells) + " |")
        return rows

    def ap_cell(c: dict[str, Any]) -> str:
        diag = f"; {', '.join(c['diagnoses'])}" if c["diagnoses"] else ""
        return f"{c['final_ap_mean']:.4f} ({c['healthy']}/{c['runs']}{diag})"

    lines += [
        "",
        "## Per method and box weight",
        "",
        "Mean final AP over the seeds (healthy runs / runs; the stopping diagnoses seen, if any).",
        "",
        *grid(ap_cell),
        "",
        "Effective weights at the last step, mean over the seeds (class / box):",
        "",
        *grid(lambda c: f"{c['final_class_weight_mean']:.3g} / {c['final_box_weight_mean']:.3g}"),
    ]
    lines += [
        "",
        "## Every run",
        "",
        "| method | box weight | seed | final AP | best AP | first diagnosis (epoch) | stopping diagnosis | healthy |"
        " class / box weight at the end | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        first = r["first_diagnosis"] + (f" ({r['first_epoch']})" if r["first_epoch"] is not None else "")
        stop = "-" if r["first_stop_diagnosis"] is None else f"{r['first_stop_diagnosis']} ({r['first_stop_epoch']})"
        weights = f"{r['final_class_weight']:.3g} / {r['final_box_weight']:.3g}" if r["final_box_weight"] is not None else "-"
        lines.append(
            f"| {r['method']} | {r['box_weight']:g} | {r['seed']} | {r['final_ap']:.4f} | {r['best_ap']:.4f} | {first} |"
            f" {stop} | {'yes' if r['healthy'] else 'no'} | {weights} | {r['wall_s']} |"
        )
    return "\n".join(lines) + "\n"


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--box-weights", default=",".join(f"{b:g}" for b in BOX_WEIGHTS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for loss_weighting.{json,md}")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (1 torch thread each)")
    parser.add_argument(
        "--overrides", type=json.loads, default={}, help='JSON config overrides for every run, e.g. {"schedule.warmup_iters": 0}'
    )
    parser.add_argument("--stem", default="loss_weighting", help="the results' file name: <out>/<stem>.{json,md}")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    box_weights, methods = _floats(args.box_weights), args.methods.split(",")
    torch.set_num_threads(1)
    data_root = ensure_mini(DEFAULT_MINI_ROOT)
    result: dict[str, Any] = {
        "machine": machine_info(),
        "seeds": seeds,
        "epochs": args.epochs,
        "box_weights": box_weights,
        "methods": methods,
        "jobs": args.jobs,
        "overrides": args.overrides,
        "sizes": SIZES,
        "default_stop_on": list(DEFAULT_STOP_ON),
    }
    grid = [(method, bw, seed) for method in methods for bw in box_weights for seed in seeds]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, method, bw, seed, args.epochs, data_root, args.overrides) for method, bw, seed in grid]
        runs = []
        for future in futures:
            r = future.result()
            print(
                f"== {r['method']} bw {r['box_weight']:g} seed {r['seed']}: final AP {r['final_ap']:.4f} best"
                f" {r['best_ap']:.4f}, {r['first_diagnosis']}, healthy {r['healthy']}, {r['wall_s']} s",
                flush=True,
            )
            runs.append(r)
    result["wall_s"] = time.perf_counter() - start
    result["runs"] = runs
    result["summary"] = summarise(runs, box_weights)
    result["machine"]["load_average_at_end"] = load_average()
    write_results(args.out, args.stem, result, write_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
