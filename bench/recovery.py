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
    nice -n 5 python bench/recovery.py --zoo --seeds 0,1,2 --stem recovery_zoo   # issue 16's targets (~30 min)
    # the same as one process per seed side by side (bench/results/recovery_zoo_warm.md, ~12 min on 2 cores):
    for s in 0 1 2; do python bench/recovery.py --zoo --seeds $s --out /tmp/z --stem s$s & done; wait
    python bench/recovery.py --merge /tmp/z/s0.json /tmp/z/s1.json /tmp/z/s2.json --stem recovery_zoo_warm

``<zoo entry>:recover_probe`` recovers with the LR probe on for ``diverged`` and ``stalled``
(``health.interventions.<diagnosis>.lr_probe.enabled``; ``model/recovery.py``), ``recover_fixed``
with it off (their fixed ``lr_factor``), and ``<zoo entry>:restart_probe`` restarts with the changes
the ``recover_probe`` run ended with; ``--set KEY=VALUE``
(repeatable, the value read as YAML) adds a config override to every case, e.g. the probe's
settings. The probe's training is charged: its images (``probe.images`` of each event) count in
a run's compute at the epoch of its recovery. The probe's figures (``recovery_probe.md``)::

    nice -n 10 python bench/recovery.py --seeds 0,1,2 --stem recovery_probe --cases healthy:stop,\\
    diverged_lr5:recover_fixed,diverged_lr5:recover_probe,stalled_lr1e-6:recover_fixed,stalled_lr1e-6:recover_probe,\\
    stalled_lr1e-5:recover_fixed,stalled_lr1e-5:recover_probe,diverged_lr1:recover_fixed,diverged_lr1:recover_probe

``--zoo`` runs every failure of the zoo that the default table answers with a rollback (its
candidates left out), with ``recover`` and restarted from scratch with the changes its recovery made
(``restart_fixed``), beside the healthy baseline, and sums up the issue's two targets.

(``recovery.md`` was measured with the intervention table before the collapse entry's caps and
``rollback: start``, and with ``restart_fixed`` at the fixes of that time: lr x0.1 and class weight
x2 / neg:pos 15; its events name the changes each run made.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling zoo module
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from failure_zoo import ZOO, config_for

from bench.machine import load_average, machine_info, write_results
from model import report_keys as K
from model.config import DEFAULT_MINI_ROOT, TrainConfig
from model.data.mini import ensure_mini
from model.engine import build_model, build_optimizer
from model.health import DEFAULT_INTERVENTIONS
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
    # A stall answered with lr x100 where the default was x10 (recovery_stall.md); x100 is the default since.
    "stalled_lr1e-5:recover_lr100": (
        "stalled_lr1e-5",
        {"health.on_failure": "recover", "health.interventions.stalled.lr_factor": 100.0},
    ),
    "stalled_lr1e-6:recover_lr100": (
        "stalled_lr1e-6",
        {"health.on_failure": "recover", "health.interventions.stalled.lr_factor": 100.0},
    ),
    # The caps at the onset with the classification head re-initialised and the optimiser's state dropped.
    "collapse_bw10_neg30_nowarm:recover_reset_onset": (
        "collapse_bw10_neg30_nowarm",
        _collapse_entry({"rollback": "onset", "reset_class_head": True, "reset_optimizer": True}),
    ),
}
#: ``<zoo entry>:restart_fixed`` (any entry): the configuration restarted from scratch with the
#: changes its ``<zoo entry>:recover`` run of the same seed ended with (what a user does by hand after
#: reading the recovery's events): the compute a recovery is measured against. Runs after it.
RESTART = "restart_fixed"
#: The LR probe on (``recover_probe``) or off (``recover_fixed``: the fixed ``lr_factor``) for the
#: diagnoses whose fix is a learning rate (``model.health.LRProbe``), whatever the default table says.
_LR_FIXES = ("diverged", "stalled")
#: ``<zoo entry>:<case>`` -> its overrides; a restart (``RESTARTS``) follows the recovery it names.
RECOVER_CASES: dict[str, dict[str, Any]] = {
    "recover": {"health.on_failure": "recover"},
    **{
        case: {"health.on_failure": "recover", **{f"health.interventions.{d}.lr_probe.enabled": on for d in _LR_FIXES}}
        for case, on in (("recover_probe", True), ("recover_fixed", False))
    },
}
RESTARTS = {RESTART: "recover", "restart_probe": "recover_probe"}


def restart_of(case: str) -> str | None:
    """The restart case (``<entry>:restart_...``) of a recovery case, if it has one."""
    entry, _, kind = case.rpartition(":")
    return next((f"{entry}:{r}" for r, rec in RESTARTS.items() if rec == kind), None)


def zoo_cases() -> list[str]:
    """``--zoo``: the healthy baseline, then every zoo failure whose label the default table answers
    with a rollback (not the candidates), recovered and restarted with the fix."""
    recoverable = {d for d, iv in DEFAULT_INTERVENTIONS.items() if iv.action == "rollback"}
    entries = [name for name, e in ZOO.items() if e.label in recoverable and not e.candidate]
    return ["healthy:stop", *(f"{name}:{case}" for name in entries for case in ("recover", RESTART))]


def case_overrides(name: str, seed: int, runs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]] | None:
    """(zoo entry, overrides) of a case; None for a restart whose recovery changed nothing."""
    if name in CASES:
        return CASES[name]
    entry, _, case = name.rpartition(":")
    kinds = "|".join([*RECOVER_CASES, *RESTARTS])
    if entry not in ZOO:
        raise SystemExit(f"unknown case {name!r}: one of {', '.join(CASES)} or <zoo entry>:{kinds}")
    if case in RECOVER_CASES:
        return entry, dict(RECOVER_CASES[case])
    if case not in RESTARTS:
        raise SystemExit(f"unknown case {name!r}: a zoo entry's case is one of {kinds}")
    source = f"{entry}:{RESTARTS[case]}"
    recovered = [r for r in runs if r["case"] == source and r["seed"] == seed]
    if not recovered:
        raise SystemExit(f"{name} needs {source} of seed {seed} before it")
    changes = recovered[-1]["effective_changes"]
    return (entry, dict(changes)) if changes else None


def run_case(name: str, entry_name: str, overrides: dict[str, Any], data_root: Path, seed: int, epochs: int) -> dict[str, Any]:
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
    events = trainer.recovery_events()
    # Images trained per report, replayed epochs included (the global step is rolled back with the
    # model), plus an LR probe's images at the epoch of the recovery that ran it.
    probes = iter([e.get("probe") for e in events])
    images = [r[K.TRAIN_IMAGES] + ((next(probes, None) or {}).get("images", 0) if r[K.HEALTH_RECOVERY] else 0) for r in reports]
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
        "compute_images": int(sum(images)),
        "probe_images": int(sum(e["probe"]["images"] for e in events if "probe" in e)),
        "probes": [{k: e["probe"][k] for k in ("lrs", "losses", "chosen_lr", "rule", "images")} for e in events if "probe" in e],
        "curve": [(int(sum(images[: i + 1])), round(r[K.VAL_AP], 4)) for i, r in enumerate(reports)],
        # Through the report of the first recovery (the failed epoch's images; its probe comes after).
        "images_before_failure": next(
            (int(sum(images[:i]) + r[K.TRAIN_IMAGES]) for i, r in enumerate(reports) if r[K.HEALTH_RECOVERY]), int(sum(images))
        ),
        "outcome": f"stopped:{verdict.diagnosis}" if trainer.stopped else "completed",
        "recoveries": len(trainer.recovery_events()),
        "events": [e for e in lines if e.startswith("recovery")],
        "effective_changes": trainer.recovery.overrides,
        "wall_s": round(wall, 1),
        "aps": [round(a, 4) for a in aps],
    }


def baseline_runs(path: Path, names: list[str], seeds: list[int], epochs: int) -> list[dict[str, Any]]:
    """The runs of an earlier result to compare with: the healthy baseline, and the default table's
    recovery and restart of the zoo entries among ``names``, of the same seeds and epoch budget."""
    earlier = json.loads(path.read_text())
    if earlier["epochs"] != epochs:
        raise SystemExit(f"--baseline {path} has a budget of {earlier['epochs']} epochs, not {epochs}")
    entries = {n.rpartition(":")[0] for n in names}
    wanted = {"healthy:stop", *(f"{e}:{kind}" for e in entries for kind in ("recover", RESTART))}
    runs = [dict(r, baseline=True) for r in earlier["runs"] if r["case"] in wanted and r["seed"] in seeds]
    if not any(r["case"] == "healthy:stop" for r in runs):
        raise SystemExit(f"--baseline {path} has no healthy:stop run of seeds {seeds}")
    return runs


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


def _against_baselines(
    r: dict[str, Any], by: dict[tuple[str, int], dict[str, Any]]
) -> tuple[float | None, tuple[float, float] | None, bool]:
    """A run's final AP / the healthy baseline's of the same seed; for a recovery, against its
    restart with the fix (None: the restart never reached the recovered AP): (the images it trained
    after the failure was named / the images the restart needed to reach the same AP, its whole
    compute / the failed run's compute until the stop plus that restart's); whether that restart exists."""
    healthy = by.get(("healthy:stop", r["seed"]))
    of_healthy = r["final_ap"] / healthy["final_ap"] if healthy and healthy["final_ap"] else None
    restart_case = restart_of(r["case"])
    restart = by.get((restart_case, r["seed"])) if restart_case else None
    if not (r["recoveries"] and restart):
        return of_healthy, None, False
    needed = _images_to_reach(restart["curve"], r["final_ap"])
    if needed is None:
        return of_healthy, None, True
    before = r.get("images_before_failure", 0)  # results from before this field: the whole run
    after = (r["compute_images"] - before) / needed
    return of_healthy, (after, r["compute_images"] / (before + needed)), True


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per case over the seeds: final AP against the healthy baseline of the same seed (the issue's
    target: a recovered run at 80 % of it or more), compute, and for a recovery the images its
    restart-with-the-fix needed to reach the recovered run's final AP (the other target: recovery
    at most half of that)."""
    by = {(r["case"], r["seed"]): r for r in runs}
    summary: dict[str, dict[str, Any]] = {}
    for case in dict.fromkeys(r["case"] for r in runs):
        rows = [r for r in runs if r["case"] == case]
        compared = [_against_baselines(r, by) for r in rows]
        ratios = [x for x, _, _ in compared if x is not None]
        summary[case] = {
            "seeds": len(rows),
            "final_ap_mean": sum(r["final_ap"] for r in rows) / len(rows),
            "of_healthy": [round(x, 2) for x in ratios],
            "at_least_80pct": sum(x >= 0.8 for x in ratios),
            "compute_images_mean": sum(r["compute_images"] for r in rows) / len(rows),
            "compute_vs_restart": [None if v is None else round(v[0], 2) for _, v, has in compared if has],
            "compute_vs_stop_restart": [None if v is None else round(v[1], 2) for _, v, has in compared if has],
            "baseline": all(r.get("baseline", False) for r in rows),
        }
    return summary


def targets(runs: list[dict[str, Any]], kind: str = "recover") -> dict[str, Any]:
    """Issue 16's two targets over the ``<entry>:<kind>`` runs (``recover``: the default table) that
    failed (a recovery, or a stop): at least 60 % of them at 80 % of the healthy AP or more, and a
    recovered run's compute from the failure on at most half a restart's with the fix to the same AP."""
    by = {(r["case"], r["seed"]): r for r in runs}
    failed = [
        r
        for r in runs
        if not r.get("baseline") and r["case"].rpartition(":")[2] == kind and (r["recoveries"] or r["outcome"] != "completed")
    ]
    compared = [_against_baselines(r, by) for r in failed]
    of_healthy = [x for x, _, _ in compared if x is not None]
    vs_restart = [v for _, v, has in compared if has]
    return {
        "failed_runs": len(failed),
        "at_least_80pct_of_healthy": sum(x >= 0.8 for x in of_healthy),
        "compared_with_restart": len(vs_restart),
        "at_most_half_of_restart": sum(v is not None and v[0] <= 0.5 for v in vs_restart),
        "cheaper_than_stop_restart": sum(v is not None and v[1] < 1 for v in vs_restart),
    }


def probe_comparison(result: dict[str, Any]) -> list[str]:
    """Markdown: per zoo entry run both ways, the fixed factors (``recover_fixed``) against the LR
    probe (``recover_probe``), seed by seed, with the learning rate each probe chose."""
    summary, runs = result["summary"], result["runs"]
    entries = [c.rpartition(":")[0] for c in summary if c.endswith(":recover_probe") and f"{c[: -len('probe')]}fixed" in summary]
    if not entries:
        return []
    lines = [
        "",
        "## The LR probe against the fixed factors",
        "",
        "Same process, same seeds, interleaved: where the probe chose the fixed factor's lr the two runs are"
        " identical (the probe leaves no trace but its compute). `chosen lr` per seed; `+ images`: the probe's"
        " training, charged in `mean images`. The same runs in another process (or on another machine) have"
        " given other figures on the zoo's sizes (the AP of one seed by up to ~0.03): compare within one file.",
        "",
        "| zoo entry | fixed: mean final AP | of healthy | probe: mean final AP | of healthy | chosen lr | + images |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in entries:
        fixed, probe = summary[f"{entry}:recover_fixed"], summary[f"{entry}:recover_probe"]
        rows = [r for r in runs if r["case"] == f"{entry}:recover_probe"]
        chosen = ", ".join("/".join(f"{p['chosen_lr']:.3g}" for p in r["probes"]) or "-" for r in rows)
        extra = sum(r["probe_images"] for r in rows) / len(rows)
        lines.append(
            f"| {entry} | {fixed['final_ap_mean']:.4f} | {', '.join(f'{x:.2f}' for x in fixed['of_healthy'])}"
            f" ({fixed['at_least_80pct']}/{len(fixed['of_healthy'])}) | {probe['final_ap_mean']:.4f} |"
            f" {', '.join(f'{x:.2f}' for x in probe['of_healthy'])} ({probe['at_least_80pct']}/{len(probe['of_healthy'])})"
            f" | {chosen} | {extra:.0f} |"
        )
    return lines


def write_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Recovery vs stop on the failure zoo (`bench/recovery.py`)",
        "",
        (
            f"Machine: {m['cpu']}, {m['cpu_cores']} cores (shared), torch {m['torch']} with {m['torch_threads']}"
            f" thread(s), load average at start {', '.join(map(str, m['load_average_at_start']))},"
            f" at end {', '.join(map(str, m.get('load_average_at_end', [])))}."
            + (
                f" Merged (`--merge`) from {len(m['merged_from'])} processes run side by side on it (one per seed; the first's"
                " machine record above)."
                if m.get("merged_from")
                else ""
            )
        ),
        (
            f"Tiny SSD, cpu-mini sizes (160 px, 300 train / 60 val mini images, batch 8), seeds"
            f" {', '.join(map(str, result['seeds']))}, {result['epochs']} epochs budget; a recovery replays epochs,"
            " so compute is counted in images trained (replays included, and an LR probe's), not in the final"
            " global step."
        ),
        *([f"Overrides of every case run here: `{result['set']}`."] if result.get("set") else []),
        *(
            [
                f"Cases marked `(baseline)` are not run here: their runs are copied from `{result['baseline']}`"
                " (measured at the code before the probe, on its machine; the probe is off by default there)."
            ]
            if result.get("baseline")
            else []
        ),
        "",
        "## Per case, over the seeds",
        "",
        "`of healthy`: final AP / the healthy baseline's final AP of the same seed (target for a recovery:"
        " 0.8 or more); `vs restart`: the images a recovered run trained after its failure was named"
        " (replays and LR probes included) / the images its configuration restarted from scratch with the"
        " fix needed to reach the same AP: what finishing the run costs either way, the work before the"
        " failure being spent in both (target: 0.5 or less; `-`: never reached); `vs stop + restart`: the"
        " recovered run's whole compute / the failed run's until its stop plus that restart's.",
        "",
        "| case | seeds | mean final AP | of healthy | >= 80 % | mean images | vs restart | vs stop + restart |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case, s in result["summary"].items():
        restart, total = (
            ", ".join("-" if x is None else f"{x:.2f}" for x in s.get(key, []))
            for key in ("compute_vs_restart", "compute_vs_stop_restart")
        )
        lines.append(
            f"| {case}{' (baseline)' if s.get('baseline') else ''} | {s['seeds']} | {s['final_ap_mean']:.4f} | {', '.join(f'{x:.2f}' for x in s['of_healthy'])} |"
            f" {s['at_least_80pct']}/{len(s['of_healthy'])} | {s['compute_images_mean']:.0f} | {restart} | {total} |"
        )
    by_kind = result.get("targets_by_kind") or {"recover": result.get("targets") or {}}
    for kind, t in by_kind.items():
        if t and t["failed_runs"]:
            lines += [
                "",
                f"Targets over the {t['failed_runs']} failing `:{kind}` runs (a recovery or a stop): "
                f"{t['at_least_80pct_of_healthy']} at 80 % of the healthy AP or more (goal: 60 % of them); "
                f"{t['at_most_half_of_restart']} of {t['compared_with_restart']} compared at half a restart's compute "
                f"or less from the failure on (goal: all); {t.get('cheaper_than_stop_restart', '-')} of them cheaper than"
                " stopping and restarting.",
            ]
    lines += probe_comparison(result)
    lines += [
        "",
        "## Every run",
        "",
        "| seed | case | outcome | final AP | best AP | epochs reported | images | recoveries | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['seed']} | {r['case']}{' (baseline)' if r.get('baseline') else ''} | {r['outcome']} | {r['final_ap']:.4f} | {r['best_ap']:.4f} |"
            f" {r['epochs_reported']} | {r['compute_images']} | {r['recoveries']} | {r['wall_s']} |"
        )
    lines += ["", "Events (of the runs made here):", ""]
    for r in result["runs"]:
        if not r.get("baseline"):
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
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated names of CASES or <zoo entry>:{'|'.join([*RECOVER_CASES, *RESTARTS])}",
    )
    parser.add_argument("--zoo", action="store_true", help="every recoverable failure of the zoo (zoo_cases())")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (each case runs once per seed)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every case (dotted key, YAML value), e.g. health.interventions.diverged.lr_probe.steps=16",
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="an earlier results JSON (e.g. bench/results/recovery_zoo.json): its healthy:stop runs and the"
        " <entry>:recover|restart_fixed runs of the same seeds and zoo entries join the tables, marked, instead"
        " of being run again (the code they were measured at must train the same)",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="no training: one report of the runs of these results (e.g. one process per seed, run side by side"
        " on the same machine and code)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--stem", default="recovery", help="the results' file name: <out>/<stem>.{json,md}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data_root = ensure_mini(DEFAULT_MINI_ROOT)
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = {key: yaml.safe_load(value) for key, _, value in (kv.partition("=") for kv in args.set)}
    result: dict[str, Any] = {"machine": machine_info(), "seeds": seeds, "epochs": args.epochs, "set": extra, "runs": []}
    if args.merge:
        return merge(args.merge, args.out, args.stem)
    names = zoo_cases() if args.zoo else args.cases.split(",")
    if args.baseline:
        result["baseline"] = str(args.baseline)
        result["runs"] = baseline_runs(args.baseline, names, seeds, args.epochs)
    for seed in seeds:
        for name in names:
            case = case_overrides(name, seed, result["runs"])
            if case is None:
                continue
            entry, overrides = case
            record = run_case(name, entry, {**overrides, **extra}, data_root, seed, args.epochs)
            print(
                f"seed {seed} {name}: {record['outcome']} final AP {record['final_ap']:.4f} best {record['best_ap']:.4f} "
                f"recoveries {record['recoveries']} {record['wall_s']} s",
                flush=True,
            )
            result["runs"].append(record)
    result["machine"]["load_average_at_end"] = load_average()
    write_report(result, args.out, args.stem)
    return 0


def write_report(result: dict[str, Any], out: Path, stem: str) -> None:
    """Sum ``result``'s runs up (summary, targets) and write ``<out>/<stem>.{json,md}``."""
    result["summary"] = summarise(result["runs"])
    result["targets"] = targets(result["runs"])
    kinds = dict.fromkeys(r["case"].rpartition(":")[2] for r in result["runs"] if not r.get("baseline"))
    result["targets_by_kind"] = {kind: targets(result["runs"], kind) for kind in kinds if kind in RECOVER_CASES}
    result["snapshot_bytes"] = snapshot_costs()
    write_results(out, stem, result, write_markdown(result))


def merge(paths: list[Path], out: Path, stem: str) -> int:
    """``--merge``: one report of several results' runs (the first one's machine and settings)."""
    parts = [json.loads(p.read_text()) for p in paths]
    first = parts[0]
    for path, part in zip(paths, parts):
        if (part["epochs"], part.get("set")) != (first["epochs"], first.get("set")):
            raise SystemExit(f"--merge: {path} ran other settings (epochs, --set) than {paths[0]}")
    runs = [r for part in parts for r in part["runs"]]
    seeds = sorted({r["seed"] for r in runs})
    machine = dict(first["machine"], merged_from=[str(p) for p in paths])
    write_report({**first, "machine": machine, "seeds": seeds, "runs": runs}, out, stem)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
