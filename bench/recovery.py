"""Recovery against stopping, on real failing configurations of the failure zoo.

Each case trains the tiny SSD at the failure zoo's ``cpu-mini`` sizes (160 px, 300 train / 60 val
images of the generated mini set, batch 8, CPU) for the same epoch budget with
``health.on_failure: stop`` and ``recover`` (optionally with another intervention, to choose the
defaults of ``health.interventions``), beside the healthy baseline. Per run: final and best val AP,
epochs reported (a recovery replays epochs), optimiser steps, recoveries and their events, wall
time. Also the memory of one recovery snapshot for the tiny SSD and MobileNetV3.

Usage::

    nice -n 10 python bench/recovery.py                       # ~5-10 min on 2 shared cores
    python bench/recovery.py --cases diverged_lr1:stop --epochs 4 --out /tmp/rec
    nice -n 10 python bench/recovery.py --seeds 0,1,2        # the figures in bench/results/recovery.md
    python bench/recovery.py --cases healthy:stop,collapse_bw10_neg30_nowarm:recover,collapse_bw10_neg30_nowarm:restart_fixed \
        --seeds 0,1,2 --stem recovery_collapse                # bench/results/recovery_collapse.md

(``recovery.md`` was measured with the intervention table before the collapse entry's caps and
``rollback: start``, and with ``restart_fixed`` at the fixes of that time: lr x0.1 and class weight
x2 / neg:pos 15; its events name the changes each run made.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling zoo module
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from failure_zoo import ZOO, config_for

from bench.machine import load_average, machine_info, write_results
from model import report_keys as K
from model.config import DEFAULT_MINI_ROOT, TrainConfig
from model.data.mini import ensure_mini
from model.engine import build_model, build_optimizer
from model.recovery import snapshot_bytes
from model.trainer import Trainer

RESULTS = Path(__file__).resolve().parent / "results"

#: The collapse entry of the intervention table before the caps (class weight x2, neg:pos x0.5, a
#: fresh warm-up, rolled back to the onset), for comparison.
_OLD_ENTRY: dict[str, Any] = {
    "rollback": "onset",
    "class_weight_factor": 2.0,
    "neg_pos_factor": 0.5,
    "neg_pos_max": None,
    "box_class_max": None,
}


def _collapse_entry(changes: dict[str, Any]) -> dict[str, Any]:
    """Recover, with these keys of the ``background-collapse`` intervention changed."""
    return {"health.on_failure": "recover", **{f"health.interventions.background-collapse.{k}": v for k, v in changes.items()}}


#: name -> (zoo entry, overrides). ``recover`` uses the default intervention table; the variants
#: change one entry of it, to compare.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "healthy:stop": ("healthy", {}),
    "diverged_lr1:stop": ("diverged_lr1", {}),
    "diverged_lr1:recover": ("diverged_lr1", {"health.on_failure": "recover"}),
    "diverged_lr1:recover_lr0.1": (
        "diverged_lr1",
        {"health.on_failure": "recover", "health.interventions.diverged.lr_factor": 0.1},
    ),
    "collapse_bw10_neg30_nowarm:stop": ("collapse_bw10_neg30_nowarm", {}),
    "collapse_bw10_neg30_nowarm:recover": ("collapse_bw10_neg30_nowarm", {"health.on_failure": "recover"}),
    # The collapse entry before it (class weight x2 or x5, neg:pos x0.5, rolled back to the onset),
    # and the default's caps rolled back to the onset instead of the start.
    "collapse_bw10_neg30_nowarm:recover_cw2_onset": ("collapse_bw10_neg30_nowarm", _collapse_entry(_OLD_ENTRY)),
    "collapse_bw10_neg30_nowarm:recover_cw5_onset": (
        "collapse_bw10_neg30_nowarm",
        _collapse_entry({**_OLD_ENTRY, "class_weight_factor": 5.0}),
    ),
    "collapse_bw10_neg30_nowarm:recover_caps_onset": ("collapse_bw10_neg30_nowarm", _collapse_entry({"rollback": "onset"})),
    # The same configurations restarted from scratch with the default intervention's change applied
    # (what a user does by hand): the compute a recovery is measured against.
    "diverged_lr1:restart_fixed": ("diverged_lr1", {"optim.lr": 0.01, "schedule.warmup_epochs": 1.0}),
    "collapse_bw10_neg30_nowarm:restart_fixed": (
        "collapse_bw10_neg30_nowarm",
        {"loss.box_weight": 1.0, "loss.neg_pos_ratio": 3, "schedule.warmup_epochs": 1.0},
    ),
}


def run_case(name: str, data_root: Path, seed: int, epochs: int) -> dict[str, Any]:
    entry_name, overrides = CASES[name]
    entry = ZOO[entry_name]
    base = config_for(entry, seed, data_root, epochs)
    # The zoo observes (stop_on: []); here the monitor acts as in production.
    cfg = base.with_overrides({"health.stop_on": TrainConfig().health.stop_on, **overrides})
    lines: list[str] = []
    start = time.perf_counter()
    trainer = Trainer(cfg, log=lines.append)
    reports = trainer.fit()
    wall = time.perf_counter() - start
    aps = [r[K.VAL_AP] for r in reports]
    verdict = trainer.monitor.verdict
    return {
        "case": name,
        "zoo_entry": entry_name,
        "seed": seed,
        "epochs_budget": epochs,
        "overrides": overrides,
        "final_ap": aps[-1] if aps else None,
        "best_ap": max(aps) if aps else None,
        "epoch_reached": trainer.epoch,
        "epochs_reported": len(reports),
        "steps": trainer.global_step,
        # Images trained, replayed epochs included (the global step is rolled back with the model).
        "compute_images": int(sum(r[K.TRAIN_IMAGES] for r in reports)),
        "curve": [(int(sum(x[K.TRAIN_IMAGES] for x in reports[: i + 1])), round(r[K.VAL_AP], 4)) for i, r in enumerate(reports)],
        "outcome": f"stopped:{verdict.diagnosis}" if trainer.stopped else "completed",
        "recoveries": len(trainer.recovery_events()),
        "events": [e for e in lines if e.startswith("recovery")],
        "effective_changes": trainer.recovery.overrides,
        "wall_s": round(wall, 1),
        "aps": [round(a, 4) for a in aps],
    }


def snapshot_costs() -> dict[str, int]:
    """Bytes of one snapshot's tensors (model + SGD momentum) per backbone, after one step."""
    costs = {}
    for backbone, size in (("tiny", 256), ("mobilenet_v3", 320)):
        cfg = TrainConfig().with_overrides({"model.backbone": backbone, "model.input_size": size})
        model = build_model(cfg)
        optimizer = build_optimizer(cfg, model)
        out = model(torch.rand(2, 3, size, size))
        sum(t.float().sum() for t in out if isinstance(t, torch.Tensor)).backward()
        optimizer.step()  # creates the momentum buffers
        costs[backbone] = snapshot_bytes({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    return costs


def _images_to_reach(curve: list[tuple[int, float]], ap: float) -> int | None:
    """Images trained when a run's val AP first reached ``ap`` (None: never)."""
    return next((images for images, value in curve if value >= ap), None)


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per case over the seeds: final AP against the healthy baseline of the same seed (the issue's
    target: a recovered run at 80 % of it or more), compute, and for a recovery the images its
    restart-with-the-fix needed to reach the recovered run's final AP (the other target: recovery
    at most half of that)."""
    by = {(r["case"], r["seed"]): r for r in runs}
    summary: dict[str, dict[str, Any]] = {}
    for case in dict.fromkeys(r["case"] for r in runs):
        rows = [r for r in runs if r["case"] == case]
        ratios, vs_restart = [], []
        for r in rows:
            healthy = by.get(("healthy:stop", r["seed"]))
            if healthy and healthy["final_ap"]:
                ratios.append(r["final_ap"] / healthy["final_ap"])
            restart = by.get((f"{r['zoo_entry']}:restart_fixed", r["seed"]))
            if r["recoveries"] and restart:
                needed = _images_to_reach(restart["curve"], r["final_ap"])
                vs_restart.append(None if needed is None else round(r["compute_images"] / needed, 2))
        summary[case] = {
            "seeds": len(rows),
            "final_ap_mean": sum(r["final_ap"] for r in rows) / len(rows),
            "of_healthy": [round(x, 2) for x in ratios],
            "at_least_80pct": sum(x >= 0.8 for x in ratios),
            "compute_images_mean": sum(r["compute_images"] for r in rows) / len(rows),
            "compute_vs_restart": vs_restart,
        }
    return summary


def write_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Recovery vs stop on the failure zoo (`bench/recovery.py`)",
        "",
        (
            f"Machine: {m['cpu']}, {m['cpu_cores']} cores (shared), torch {m['torch']} with {m['torch_threads']}"
            f" thread(s), load average at start {', '.join(map(str, m['load_average_at_start']))},"
            f" at end {', '.join(map(str, m.get('load_average_at_end', [])))}."
        ),
        (
            f"Tiny SSD, cpu-mini sizes (160 px, 300 train / 60 val mini images, batch 8), seeds"
            f" {', '.join(map(str, result['seeds']))}, {result['epochs']} epochs budget; a recovery replays epochs,"
            " so compute is counted in images trained (replays included), not in the final global step."
        ),
        "",
        "## Per case, over the seeds",
        "",
        "`of healthy`: final AP / the healthy baseline's final AP of the same seed (target for a recovery:"
        " 0.8 or more); `vs restart`: a recovered run's images / the images its configuration restarted"
        " from scratch with the fix needed to reach the same AP (target: 0.5 or less; `-`: never reached).",
        "",
        "| case | seeds | mean final AP | of healthy | >= 80 % | mean images | vs restart |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, s in result["summary"].items():
        restart = ", ".join("-" if x is None else f"{x:.2f}" for x in s["compute_vs_restart"]) or ""
        lines.append(
            f"| {case} | {s['seeds']} | {s['final_ap_mean']:.4f} | {', '.join(f'{x:.2f}' for x in s['of_healthy'])} |"
            f" {s['at_least_80pct']}/{len(s['of_healthy'])} | {s['compute_images_mean']:.0f} | {restart} |"
        )
    lines += [
        "",
        "## Every run",
        "",
        "| seed | case | outcome | final AP | best AP | epochs reported | images | recoveries | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['seed']} | {r['case']} | {r['outcome']} | {r['final_ap']:.4f} | {r['best_ap']:.4f} |"
            f" {r['epochs_reported']} | {r['compute_images']} | {r['recoveries']} | {r['wall_s']} |"
        )
    lines += ["", "Events:", ""]
    for r in result["runs"]:
        lines += [f"- seed {r['seed']} {r['case']}: {e}" for e in r["events"]]
    costs = result["snapshot_bytes"]
    lines += [
        "",
        "One snapshot (model + SGD momentum, float32): "
        + ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in costs.items())
        + " (AdamW: one more copy of the parameters). `health.snapshots` (4) of them are kept in host memory"
        " and in `last.pt`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated names of CASES")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (each case runs once per seed)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--stem", default="recovery", help="the results' file name: <out>/<stem>.{json,md}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data_root = ensure_mini(DEFAULT_MINI_ROOT)
    seeds = [int(s) for s in args.seeds.split(",")]
    result: dict[str, Any] = {"machine": machine_info(), "seeds": seeds, "epochs": args.epochs, "runs": []}
    for seed in seeds:
        for name in args.cases.split(","):
            record = run_case(name, data_root, seed, args.epochs)
            print(
                f"seed {seed} {name}: {record['outcome']} final AP {record['final_ap']:.4f} best {record['best_ap']:.4f} "
                f"recoveries {record['recoveries']} {record['wall_s']} s",
                flush=True,
            )
            result["runs"].append(record)
    result["summary"] = summarise(result["runs"])
    result["snapshot_bytes"] = snapshot_costs()
    result["machine"]["load_average_at_end"] = load_average()
    write_results(args.out, args.stem, result, write_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
