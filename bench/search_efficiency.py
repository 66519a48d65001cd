"""Search efficiency: the collapse-aware search against plain ASHA and against no early stopping.

Three searches of the ``cpu-mini`` space on the mini set, each ``python hpo/search.py`` as a user
runs it (a local Ray, MLflow in a temporary SQLite store), same trials, epochs and sampler seed:

* **a, collapse-aware**: the health monitor stops diverged/collapsed/stalled trials, then ASHA;
* **b, plain ASHA**: the monitor still diagnoses (``health.stop_on: []``) but never stops a trial;
* **c, no early stopping**: ``scheduler: none`` and the monitor never stops: every trial runs to
  ``max_epochs`` (the reference compute: trials x max_epochs);
* **d, recovering** (issue 16; run with ``--variants a d``): as a, but a diagnosed trial is rolled
  back and fixed (``health.on_failure: recover``) instead of stopped.

Compute is counted in trial-epochs from Tune's ``result.json`` (one row per epoch a trial ran,
retries after an error included). Per search: best AP (``raw/val/ap``, any epoch), trial-epochs
spent until a report first reached a target AP (the best of c, and fractions of it), in the order
the reports arrived, and the share of trial-epochs spent on trials that ended as failures. Then,
on c's full curves, the monitor's stop rule and ASHA's rung rule are replayed (``replay_cuts``):
how many of c's final best trials early stopping would have cut.

``--no-points`` drops the space's ``points_to_evaluate`` (its healthy baseline would otherwise hand
every search a good trial first).

    python bench/search_efficiency.py                       # 8 trials x 6 epochs x 3 searches, seed 0 (37 min at load 6-10)
    python bench/search_efficiency.py --seeds 0 1 2 --trials 12
    python bench/search_efficiency.py --seeds 0 1 2 --no-points   # no given baseline: results in *_nopoints.{json,md}
    python bench/search_efficiency.py --seeds 0 1 2 --no-points --variants a c d   # search_recovery_nopoints.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import load_average, machine_info, machine_line, write_results  # noqa: E402
from hpo.space import load_space  # noqa: E402
from model.health import HealthConfig  # noqa: E402

#: The monitor's stopping diagnoses: a trial whose last report carries one ended as a failure.
FAILURES = frozenset(HealthConfig().stop_on)
#: "AP ~ 0": a trial whose last AP is below this ended as a failure too (cpu-mini's healthy
#: baseline reaches 0.006 after its first epoch).
AP_FLOOR = 1e-3
#: Targets, as fractions of the best AP of the no-stopping search.
TARGET_FRACTIONS = (1.0, 0.9, 0.75, 0.5)
VARIANTS = {
    "a": "collapse-aware (health stopper + ASHA)",
    "b": "plain ASHA (monitor never stops)",
    "c": "no early stopping (every trial to max_epochs)",
    "d": "recovering (health.on_failure: recover, then ASHA)",
}


def ray_version() -> str:
    import ray  # only for the record: the searches run in subprocesses

    return ray.__version__


def space_file(directory: Path, name: str, *, trials: int, epochs: int, seed: int, variant: str, points: bool = True) -> Path:
    """cpu-mini with the benchmark's budget, seed and the variant's stopping rules; ``points=False``
    drops its ``points_to_evaluate`` (the healthy baseline and the known diverging point), so every
    trial is sampled and the best AP has to be found, not given."""
    raw = load_space("cpu-mini").as_dict()
    raw["name"] = name
    if not points:
        raw.pop("points_to_evaluate", None)
    raw["budget"].update(num_samples=trials, max_epochs=epochs)
    raw["sampler"]["seed"] = seed
    if variant in ("b", "c"):
        # Diagnosed (so failures are labelled the same way in all three) but never stopped.
        raw["fixed"]["health.stop_on"] = []
    if variant == "c":
        raw["scheduler"] = {"type": "none"}
    if variant == "d":
        # Diagnosed failures are rolled back and fixed (model/recovery.py), not stopped; a recovery
        # replays epochs, and Tune's result rows count them.
        raw["fixed"]["health.on_failure"] = "recover"
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def read_trials(search_dir: Path) -> dict[str, dict[str, Any]]:
    """Per Tune trial: its result rows (one per epoch run) and whether it ended in an error."""
    trials = {}
    for result in sorted(search_dir.glob("*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            trials[rows[0]["trial_id"]] = {
                "rows": rows,
                "errored": (result.parent / "error.txt").exists(),
                "start_mtime": (result.parent / "params.json").stat().st_mtime,
                "end_mtime": result.stat().st_mtime,
            }
    return trials


def outcome(trial: dict[str, Any], max_epochs: int) -> tuple[str, bool]:
    """(how the trial ended, whether that is a failure)."""
    rows = trial["rows"]
    last = rows[-1]
    diagnosis = last.get("health/diagnosis", "healthy")
    if trial["errored"]:
        return "error", True
    if last.get("health/stop") == 1:
        return f"stopped:{diagnosis}", True
    end = "completed" if last["epoch"] >= max_epochs else f"pruned@{last['epoch']}"
    seen = [r.get("health/diagnosis") for r in rows if r.get("health/diagnosis") in FAILURES]
    if seen:  # diagnosed at some epoch; a diverged run's later "healthy" epochs still detect ~nothing
        return f"{end}:{seen[0]}", True
    if rows[-1].get("raw/val/ap", 0.0) < AP_FLOOR:
        return f"{end}:ap~0", True
    return end, False


def analyse(search_dir: Path, max_epochs: int) -> dict[str, Any]:
    trials = read_trials(search_dir)
    events = []  # (arrival, trial, ap): every epoch a trial ran, in the order it was reported
    per_trial = []
    for trial_id, trial in trials.items():
        how, failed = outcome(trial, max_epochs)
        aps = [r.get("raw/val/ap", 0.0) for r in trial["rows"]]
        per_trial.append({"trial_id": trial_id, "outcome": how, "failure": failed, "epochs": len(trial["rows"]),
                          "best_ap": max(aps), "config": trial["rows"][-1].get("config", {})})  # fmt: skip
        for r, ap in zip(trial["rows"], aps):
            events.append((r["timestamp"], r.get("time_total_s", 0.0), trial_id, ap))
    events.sort()
    curve, best, spent = [], 0.0, 0
    for _, _, _, ap in events:
        spent += 1
        best = max(best, ap)
        curve.append((spent, best))
    total = len(events)
    failed_epochs = sum(t["epochs"] for t in per_trial if t["failure"])
    return {
        "trials": per_trial,
        "trial_epochs": total,
        "best_ap": best,
        "failure_trial_epochs": failed_epochs,
        "failure_share": failed_epochs / total if total else 0.0,
        "best_ap_curve": curve,
        "train_s": sum(r.get("time/epoch_s", 0.0) for t in trials.values() for r in t["rows"]),
    }


def replay_cuts(search_dir: Path, max_epochs: int, grace: int, reduction_factor: int, top: int) -> dict[str, Any]:
    """Which of the no-stopping search's best trials early stopping would have cut, replayed on its
    full curves (every trial ran to ``max_epochs`` with the monitor observing).

    * the monitor: a trial stops at the first epoch whose diagnosis is a stopping one (default
      ``stop_on``);
    * ASHA (Ray's asynchronous rule, one bracket): at each rung ``grace * rf**k < max_epochs``, a trial
      is cut when its AP there is below the ``1 - 1/rf`` quantile of the APs recorded at that rung
      before it (in the order the trials reached the rung in this search), and trials the monitor
      stopped earlier never reach the rung.

    The best trials are the ``top`` with the highest last AP (healthy ones, by that definition)."""
    import numpy as np

    trials = read_trials(search_dir)
    rungs = []
    milestone = grace
    while milestone < max_epochs:
        rungs.append(milestone)
        milestone *= reduction_factor
    cut: dict[str, tuple[str, int]] = {}  # trial -> (who cut it, at which epoch)
    for trial_id, trial in trials.items():
        stop = next((r["epoch"] for r in trial["rows"] if r.get("health/diagnosis") in FAILURES), None)
        if stop is not None:
            cut[trial_id] = ("monitor", stop)
    for milestone in rungs:
        arrivals = []
        for trial_id, trial in trials.items():
            row = next((r for r in trial["rows"] if r["epoch"] == milestone), None)
            stopped_before = trial_id in cut and cut[trial_id][1] <= milestone
            if row is not None and not stopped_before:
                arrivals.append((row["timestamp"], trial_id, row.get("raw/val/ap", 0.0)))
        recorded: list[float] = []
        for _, trial_id, ap in sorted(arrivals):
            if recorded and ap < np.nanpercentile(recorded, (1 - 1 / reduction_factor) * 100):
                cut[trial_id] = ("asha", milestone)
            recorded.append(ap)
    final = {tid: t["rows"][-1].get("raw/val/ap", 0.0) for tid, t in trials.items()}
    best = sorted(final, key=final.__getitem__, reverse=True)[:top]
    return {
        "rungs": rungs,
        "best": [
            {"trial_id": tid, "last_ap": final[tid], "cut": "@".join(map(str, cut[tid])) if tid in cut else None} for tid in best
        ],
        "best_cut_share": sum(tid in cut for tid in best) / len(best) if best else None,
        "cut_trials": len(cut),
        "trials": len(trials),
    }


def spent_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((spent for spent, best in curve if best >= target - 1e-12), None)


def run_search(work: Path, name: str, space: Path, data: Path, log: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(REPO / "hpo" / "search.py"), "--space", str(space), "--data", str(data), "--no-report",
           "--storage-path", str(work / "ray"), "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"]  # fmt: skip
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"search {name} exited {proc.returncode}; log: {log}\n{log.read_text()[-4000:]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=6, help="max_epochs of every trial (ASHA's max_t)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="TPE sampler seeds, one search per variant each")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--data", type=Path, default=REPO / "data" / "wider-mini")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--no-points", action="store_true", help="drop cpu-mini's points_to_evaluate: every trial sampled")
    p.add_argument("--top", type=int, default=3, help="best trials of search c checked against the replayed cuts")
    p.add_argument("--keep", type=Path, help="keep the searches' results here (default: a temporary directory)")
    p.add_argument(
        "--reanalyse",
        action="store_true",
        help="do not search: analyse the searches kept in --keep again (wall times from the previous results JSON)",
    )
    args = p.parse_args(argv)
    if "c" not in args.variants:
        p.error("the targets are the best AP of the no-stopping search: include variant c")

    if args.reanalyse and args.keep is None:
        p.error("--reanalyse needs --keep DIR")
    # With and without the given points are two benchmarks: each keeps its own results.
    stem = "search_efficiency_nopoints" if args.no_points else "search_efficiency"
    if "d" in args.variants:  # the recovery comparison keeps its own results too
        stem = stem.replace("search_efficiency", "search_recovery")
    previous = json.loads((args.out / f"{stem}.json").read_text()) if args.reanalyse else None
    machine = previous["machine"] if args.reanalyse else machine_info(ray=ray_version())
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-search-"))
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[int, dict[str, Any]] = {}
    for seed in args.seeds:
        runs[seed] = {}
        for variant in args.variants:
            name = f"eff-s{seed}-{variant}"
            space = space_file(
                work, name, trials=args.trials, epochs=args.epochs, seed=seed, variant=variant, points=not args.no_points
            )
            print(f"seed {seed}, {variant}: {VARIANTS[variant]} ...", flush=True)
            if args.reanalyse:
                wall = previous["runs"][str(seed)][variant]["wall_s"]
            else:
                wall = run_search(work, name, space, args.data.resolve(), work / f"{name}.log")
            res = analyse(work / "ray" / name, args.epochs)
            res["wall_s"] = wall
            runs[seed][variant] = res
            print(f"  {wall:.0f} s, {res['trial_epochs']} trial-epochs, best AP {res['best_ap']:.4f}, "
                  f"failure share {res['failure_share']:.0%}", flush=True)  # fmt: skip
        ref = runs[seed]["c"]["best_ap"]
        for res in runs[seed].values():
            res["to_reach"] = {f"{f:g}": spent_to_reach(res["best_ap_curve"], f * ref) for f in TARGET_FRACTIONS}
        runs[seed]["c_budget"] = runs[seed]["c"]["trial_epochs"]
        asha = load_space("cpu-mini").scheduler
        runs[seed]["c_replay"] = replay_cuts(
            work / "ray" / f"eff-s{seed}-c", args.epochs, asha.grace_period, asha.reduction_factor, args.top
        )
        write(args, machine, runs, stem)  # after every seed: a cut-short run keeps the seeds it finished
    return 0


def write(args: argparse.Namespace, machine: dict[str, Any], runs: dict[int, dict[str, Any]], stem: str) -> None:
    if not args.reanalyse:
        machine["load_average_at_end"] = load_average()
    settings = {"space": "cpu-mini (search_spaces/cpu-mini.yaml)", "trials": args.trials, "max_epochs": args.epochs,
                "seeds": list(runs), "points_to_evaluate": not args.no_points, "variants": {v: VARIANTS[v] for v in args.variants}, "ap_floor": AP_FLOOR,
                "failures": sorted(FAILURES), "target_fractions": TARGET_FRACTIONS,
                "torch_threads_per_trial": 1, "concurrent_trials": 2}  # fmt: skip
    out = {"benchmark": "search efficiency: " + " vs ".join(VARIANTS[v] for v in args.variants), "machine": machine,
           "settings": settings, "runs": {str(k): v for k, v in runs.items()}}  # fmt: skip
    write_results(args.out, stem, out, markdown(out))


def markdown(out: dict[str, Any]) -> str:
    m, s = out["machine"], out["settings"]
    lines = [
        "# Search efficiency", "",
        machine_line(m),
        f"Space {s['space']}: {s['trials']} trials x up to {s['max_epochs']} epochs per search, "
        f"{s['concurrent_trials']} at a time, 1 torch thread each; seeds {s['seeds']}; "
        + ("the space's points_to_evaluate first (a healthy baseline, a diverging point)." if s.get("points_to_evaluate", True)
           else "no points_to_evaluate: every trial sampled by TPE."),
        "Failure: the monitor diagnosed one of " + ", ".join(s["failures"])
        + f" at some epoch, or the trial errored, or its last AP < {s['ap_floor']:g}.", "",
        "| seed | search | trial-epochs | best AP | trial-epochs to reach best AP of c (x of c's total) | to 0.9 / 0.75 / 0.5 of it | failure share of trial-epochs | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for seed, by_variant in out["runs"].items():
        budget = by_variant["c_budget"]
        for v, res in by_variant.items():
            if v not in VARIANTS:
                continue
            reach = res["to_reach"]
            full = reach["1"]
            full_s = "not reached" if full is None else f"{full} ({full / budget:.2f}x)"
            rest = " / ".join("-" if reach[k] is None else str(reach[k]) for k in ("0.9", "0.75", "0.5"))
            lines.append(f"| {seed} | {v}: {s['variants'][v]} | {res['trial_epochs']} | {res['best_ap']:.4f} | {full_s} | {rest} | "
                         f"{res['failure_share']:.0%} ({res['failure_trial_epochs']}) | {res['wall_s']:.0f} |")  # fmt: skip
    lines += summary_lines(out)
    lines += ["", "## Trials", ""]
    for seed, by_variant in out["runs"].items():
        for v, res in by_variant.items():
            if v not in VARIANTS:
                continue
            lines.append(
                f"- seed {seed}, {v}: "
                + "; ".join(f"{t['trial_id'][-5:]} {t['outcome']} {t['epochs']} ep AP {t['best_ap']:.4f}" for t in res["trials"])
            )
    return "\n".join(lines) + "\n"


def summary_lines(out: dict[str, Any]) -> list[str]:
    """Across seeds: how often each search reached c's best AP, its compute as a fraction of c's,
    and the replay of early stopping on c's best trials."""
    runs, s = out["runs"], out["settings"]
    lines = ["", "## Across seeds", "",
             "| search | seeds reaching c's best AP | within 1/3 of c's compute | trial-epochs to c's best, x of c's total (median, max) "
             "| compute on failures (median) |", "|---|---|---|---|---|"]  # fmt: skip
    for v, label in s["variants"].items():
        fractions = [r[v]["to_reach"]["1"] / r["c_budget"] for r in runs.values() if r[v]["to_reach"]["1"] is not None]
        shares = sorted(r[v]["failure_share"] for r in runs.values())
        within = sum(f <= 1 / 3 + 1e-9 for f in fractions)
        spread = f"{statistics.median(fractions):.2f}x, {max(fractions):.2f}x" if fractions else "-"
        lines.append(f"| {v}: {label} | {len(fractions)}/{len(runs)} | {within}/{len(runs)} | {spread} | "
                     f"{statistics.median(shares):.0%} |")  # fmt: skip
    replays = {seed: r["c_replay"] for seed, r in runs.items() if "c_replay" in r}
    if replays:
        lines += ["", "## Early stopping replayed on c's best trials", "",
                  "Search c ran every trial to the end with the monitor observing; the monitor's default stop rule and "
                  "ASHA's asynchronous rung rule are replayed on its curves (see `replay_cuts`). A best trial that would "
                  "have been cut is what early stopping costs.", "",
                  "| seed | ASHA rungs | c's best trials by last AP (cut by) | best cut | trials cut |", "|---|---|---|---|---|"]  # fmt: skip
        for seed, rep in replays.items():
            best = "; ".join(f"{b['trial_id'][-5:]} {b['last_ap']:.4f} ({b['cut'] or 'kept'})" for b in rep["best"])
            lines.append(
                f"| {seed} | {rep['rungs']} | {best} | {rep['best_cut_share']:.0%} | {rep['cut_trials']}/{rep['trials']} |"
            )
        cut = sum(sum(b["cut"] is not None for b in rep["best"]) for rep in replays.values())
        total = sum(len(rep["best"]) for rep in replays.values())
        lines += ["", f"Share of the final best trials that ASHA or the monitor would have cut: {cut}/{total} "
                  f"({cut / total:.0%})." if total else ""]  # fmt: skip
    return lines


if __name__ == "__main__":
    sys.exit(main())
