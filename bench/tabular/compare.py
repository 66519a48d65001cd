"""Search strategies compared on the recorded table: every strategy replayed over many seeds.

Strategies: TPE or random sampling, each with no stopping, ASHA alone, the health stopper alone,
and health stopper + ASHA (the platform's default), and the health monitor with recovery + ASHA
(``health.on_failure: recover``: the failing configurations answered by their recorded recovered
runs, ``table_recover.parquet``); see ``bench/tabular/replay.py`` for how one search is replayed.
Variants of the comparison:

* ``points``: the space as shipped, its ``points_to_evaluate`` (the healthy baseline, then the
  diverging lr 1.0) tried first by every search;
* ``nopoints``: without them, so the best configuration has to be found by sampling;
* ``nopoints-cpu``: the same, compute counted in process CPU seconds instead of wall seconds (the
  table was recorded on a shared machine; this checks that the other jobs' load on the wall
  clock does not decide the comparison), for the two ends, no stopping and the default, and
  recovery (its runs were recorded later, under another load);
* ``nopoints-rung3``, ``nopoints-rf2``, ``nopoints-rf4``: other ASHA settings than the space's
  (its one rung at epoch 2 keeping a third): the rung at epoch 3; rungs at 2 and 4 keeping half;
  the rung at 2 keeping a quarter. What a change of the default would buy.

Each search gets the same compute budget (``--budget-runs`` times the median recorded cost of one
run to ``max_epochs``); the seeds are the sampler's (and ASHA's bracket draw's). Writes
``<out>/<stem>.{md,json,png}``.

    python bench/tabular/compare.py --jobs 2                 # 6 variants, 50 seeds: bench/results/tabular_replay.*, ~16 min
    python bench/tabular/compare.py --variants nopoints --strategies tpe+nostop,tpe+health+asha --seeds 5 --out /tmp/r
    python bench/tabular/compare.py --set scheduler.grace_period=3 --stem tabular_replay_grace3 --out /tmp/r
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repository's packages

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from bench.machine import load_average, machine_info, machine_line  # noqa: E402
from bench.tabular import report  # noqa: E402
from bench.tabular.record import TABLE, TABLE_RECOVER  # noqa: E402
from bench.tabular.replay import COST_KEYS, STRATEGIES, Cost, quiet, replay  # noqa: E402
from bench.tabular.surrogate import (  # noqa: E402
    NearestSurrogate,
    Run,
    error_summary,
    leave_one_out,
    load_runs,
    primary_runs,
    seed_noise,
)
from hpo.space import SearchSpace, load_space, space_from_dict  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
_ENDS = ("tpe+nostop", "tpe+health+asha", "random+nostop", "random+health+asha")
_RECOVER = ("tpe+recover+asha", "random+recover+asha")
_ASHA = ("tpe+nostop", "tpe+asha", "tpe+health+asha", "random+nostop", "random+asha", "random+health+asha")


@dataclass(frozen=True)
class Variant:
    points: bool
    cost: Cost
    strategies: tuple[str, ...]
    figure: bool
    title: str
    sets: tuple[tuple[str, Any], ...] = ()
    """Space overrides of this variant (dotted path into the space's YAML, value)."""
    unchecked: tuple[tuple[str, Any], ...] = ()
    """Overrides applied after the space's validation (``section.field``, value): to replay a
    setting the validation rejects (an ASHA grace period shorter than the warm-up), see :func:`unchecked_space`."""


VARIANTS = {
    "points": Variant(True, "wall", tuple(STRATEGIES), True, "the space as shipped: its 2 points first"),
    "nopoints": Variant(False, "wall", tuple(STRATEGIES), True, "no points_to_evaluate: every trial sampled"),
    "nopoints-cpu": Variant(False, "cpu", _ENDS + _RECOVER, False, "no points, compute in process CPU seconds"),
    "nopoints-rung3": Variant(
        False, "wall", _ASHA, False, "no points, ASHA's rung at epoch 3 (grace_period 3)", (("scheduler.grace_period", 3),)
    ),
    "nopoints-rf2": Variant(
        False,
        "wall",
        _ASHA,
        False,
        "no points, ASHA keeping half at epochs 2 and 4 (reduction_factor 2)",
        (("scheduler.reduction_factor", 2),),
    ),
    "nopoints-rf4": Variant(
        False,
        "wall",
        _ASHA,
        False,
        "no points, ASHA keeping a quarter at epoch 2 (reduction_factor 4)",
        (("scheduler.reduction_factor", 4),),
    ),
}

_STATE: dict[str, Any] = {}


def variant_space(raw: dict[str, Any], points: bool, unchecked: Sequence[tuple[str, Any]] = ()) -> SearchSpace:
    raw = json.loads(json.dumps(raw))
    if not points:
        raw.pop("points_to_evaluate", None)
    return unchecked_space(space_from_dict(raw, source=f"{raw['name']} (replay)"), unchecked)


def unchecked_space(space: SearchSpace, overrides: Sequence[tuple[str, Any]]) -> SearchSpace:
    """``space`` with ``(section.field, value)`` overrides set on a copy without validation (the
    space's own checks, e.g. a grace period covering the warm-up, are skipped: what the platform
    would refuse, replayed to measure it)."""
    for key, value in overrides:
        section, _, name = key.partition(".")
        part = getattr(space, section)
        space = space.model_copy(update={section: part.model_copy(update={name: value})})
    return space


def on_table_clock(primary: dict[str, Run], recovered: dict[str, Run]) -> tuple[dict[str, Run], dict[str, Any]]:
    """The recovered runs with their seconds on the table's clock, and the conversion.

    They were recorded later than the table, with a newer trainer and under another load, so
    their seconds are not the table's. Up to its first failure a recovered run does the same work
    as the configuration's observe-mode run (the same images, steps and network; with the same
    trainer even identical losses and AP), so those epochs, recorded twice, give the conversion:
    the median ratio of the table's wall (and CPU) seconds to the recovered run's process CPU
    seconds (CPU: what the load during the recording inflates least). Every report of a
    recovered run then costs its CPU seconds times that (``time/epoch_s``, ``time/epoch_cpu_s``;
    as recorded: ``time/recorded_epoch_s`` and ``..._cpu_s``). No such epoch: unchanged (factor 1)."""
    pairs, identical = [], 0
    for cid, run in recovered.items():
        observed = {e["epoch"]: e for e in primary[cid].epochs}
        for e in run.epochs:
            o = observed.get(e["epoch"])
            if e.get("health/recoveries") or e["health/default_stop"] or o is None or o["health/default_stop"]:
                break
            identical += (o["val/ap"], o["train/loss"]) == (e["val/ap"], e["train/loss"])
            pairs.append((o["time/epoch_s"] / e["time/epoch_cpu_s"], o["time/epoch_cpu_s"] / e["time/epoch_cpu_s"]))
    wall = statistics.median(p[0] for p in pairs) if pairs else 1.0
    cpu = statistics.median(p[1] for p in pairs) if pairs else 1.0
    converted = {
        cid: Run(
            run.config_id,
            run.seed,
            run.config,
            [
                {
                    **e,
                    "time/recorded_epoch_s": e["time/epoch_s"],
                    "time/recorded_epoch_cpu_s": e["time/epoch_cpu_s"],
                    "time/epoch_s": e["time/epoch_cpu_s"] * wall,
                    "time/epoch_cpu_s": e["time/epoch_cpu_s"] * cpu,
                }
                for e in run.epochs
            ],
        )
        for cid, run in recovered.items()
    }
    clock = {"paired_epochs": len(pairs), "identical_epochs": identical}
    return converted, clock | {"wall_per_recorded_cpu_s": wall, "cpu_per_recorded_cpu_s": cpu}


def load_recovered(path: Path, space: SearchSpace, primary: dict[str, Run]) -> tuple[dict[str, Run], dict[str, Any]]:
    """The recovered runs of ``path`` (the space's seed), on the table's clock (:func:`on_table_clock`)."""
    return on_table_clock(primary, primary_runs(load_runs(path, space), space.fixed.get("seed", 0)))


def _init(
    table: str,
    raw: dict[str, Any],
    points: bool,
    cost: Cost,
    budget_s: float,
    workers: int | None,
    grid: list[float],
    recover_table: str | None = None,
    unchecked: Sequence[tuple[str, Any]] = (),
) -> None:
    """Per process: the variant's space, the surrogate over the primary runs, the table's best,
    the recovered runs (``recover_table``, for the ``recover`` strategies)."""
    quiet()
    space = variant_space(raw, points, unchecked)
    seed = space.fixed.get("seed", 0)
    primary = primary_runs(load_runs(Path(table), space), seed)
    best_id = max(primary, key=lambda c: primary[c].final_ap)
    _STATE.update(
        space=space,
        surrogate=NearestSurrogate(space, primary),
        recovered=load_recovered(Path(recover_table), space, primary)[0] if recover_table else None,
        best_id=best_id,
        best=primary[best_id].final_ap,
        budget_s=budget_s,
        workers=workers,
        grid=grid,
        cost=cost,
    )


def _one(job: tuple[str, int]) -> tuple[str, dict[str, Any], list[float], float]:
    """Replay one (strategy, seed): its numbers, its anytime curve on the grid, its seconds."""
    name, seed = job
    started = time.perf_counter()
    s = _STATE
    trace = replay(s["space"], s["surrogate"], STRATEGIES[name], seed, s["budget_s"], s["workers"], s["cost"], s["recovered"])
    stats = report.trace_stats(trace, s["best"], s["best_id"])
    return name, stats, [trace.best_at(x) for x in s["grid"]], time.perf_counter() - started


def compare(args: argparse.Namespace, raw: dict[str, Any], variant: Variant, names: list[str], unit: float) -> dict[str, Any]:
    """Every strategy of ``names`` over ``args.seeds`` seeds in one variant."""
    budget_s = args.budget_runs * unit
    grid = np.geomspace(0.25 * unit, budget_s, 161)  # geometric: the figure's compute axis is logarithmic
    raw = apply_sets(json.loads(json.dumps(raw)), [f"{k}={v}" for k, v in variant.sets])
    recover_table = args.recover_table if any(STRATEGIES[n].recover for n in names) else None
    init = (
        args.table,
        raw,
        variant.points,
        variant.cost,
        budget_s,
        args.workers,
        grid.tolist(),
        recover_table,
        variant.unchecked,
    )
    jobs = [(n, s) for n in names for s in range(args.seeds)]
    started = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, initializer=_init, initargs=init) as pool:
            results = list(pool.map(_one, jobs))
    else:
        _init(*init)
        results = [_one(job) for job in jobs]
    stats: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    curves: dict[str, list[list[float]]] = {n: [] for n in names}
    seconds: dict[str, float] = dict.fromkeys(names, 0.0)
    for name, one, curve, wall in results:
        stats[name].append(one)
        curves[name].append(curve)
        seconds[name] += wall
    comparisons = {}
    for sampler in ("tpe", "random"):
        default, nostop = f"{sampler}+health+asha", f"{sampler}+nostop"
        if default in stats and nostop in stats:
            comparisons[sampler] = {
                f"paired_ratio_to_{int(f * 100)}": report.paired_ratios(
                    stats[default], stats[nostop], f"compute_to_{int(f * 100)}", budget_s
                )
                for f in report.TARGETS
            }
        recover = f"{sampler}+recover+asha"
        if recover in stats and default in stats:
            comparisons.setdefault(sampler, {})["recover_vs_default_to_100"] = report.paired_ratios(
                stats[recover], stats[default], "compute_to_100", budget_s
            )
    return {
        "points": variant.points,
        "cost": variant.cost,
        "title": variant.title,
        "space_overrides": [f"{k}={v}" for k, v in variant.sets + variant.unchecked],
        "figure": variant.figure,
        "full_run_s": unit,
        "budget_runs": args.budget_runs,
        "budget_s": budget_s,
        "strategies": {n: report.summarise(stats[n]) for n in names},
        "comparisons": comparisons,
        "per_seed": {n: {k: [one[k] for one in rows] for k in rows[0]} for n, rows in stats.items()},  # columns: small
        "anytime": {
            "grid_s": grid.tolist(),
            "curves": {
                n: {f"p{q}": np.percentile(np.array(curves[n]), q, axis=0).tolist() for q in report.QUANTILES} for n in names
            },
        },
        "replay_s": {"total": time.perf_counter() - started, "per_strategy": seconds},
    }


def apply_sets(raw: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` overrides of the space (dotted path into its YAML, the value read as YAML)."""
    for item in sets:
        key, _, value = item.partition("=")
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = yaml.safe_load(value)
    return raw


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", default=str(TABLE))
    parser.add_argument("--recover-table", default=str(TABLE_RECOVER), help="the recovered runs (record.py --recover)")
    parser.add_argument("--space", default="cpu-mini")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated, of: " + ", ".join(STRATEGIES))
    parser.add_argument("--seeds", type=int, default=50, help="seeds 0..N-1 per strategy")
    parser.add_argument(
        "--budget-runs",
        type=float,
        default=200.0,
        help="compute per search, in full runs (the median recorded cost of one run to max_epochs)",
    )
    parser.add_argument("--workers", type=int, default=None, help="trial slots (default: the space's max_concurrent_trials)")
    parser.add_argument("--jobs", type=int, default=1, help="replay processes")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the space, e.g. scheduler.grace_period=3 (repeatable)",
    )
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--stem", default="tabular_replay")
    parser.add_argument("--rerender", action="store_true", help="only write the .md and .png again from the .json")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.rerender:
        result = report.from_json(json.loads((out / f"{args.stem}.json").read_text()))
        write_report(result, out, args.stem)
        return

    import optuna
    import ray

    machine = machine_info(ray=ray.__version__, optuna=optuna.__version__)
    raw = apply_sets(load_space(args.space).as_dict(), args.set)
    space = variant_space(raw, points=True)
    runs = load_runs(Path(args.table), space)
    seed0 = space.fixed.get("seed", 0)
    primary = primary_runs(runs, seed0)
    wanted = [n for n in args.strategies.split(",") if n]
    unknown = [n for n in wanted if n not in STRATEGIES] + [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown strategies or variants {unknown}; strategies: {list(STRATEGIES)}, variants: {list(VARIANTS)}")
    recover_facts = None
    if any(STRATEGIES[n].recover for n in wanted):
        if not Path(args.recover_table).is_file():
            sys.exit(f"{args.recover_table} is missing: record it (record.py --recover) or leave out the recover strategies")
        recovered, clock = load_recovered(Path(args.recover_table), space, primary)
        missing = sorted(c for c, r in primary.items() if r.first_default_stop() is not None and c not in recovered)
        if missing:
            sys.exit(f"{args.recover_table} has no recovered run of {len(missing)} failing configurations: {missing}")
        first = next(iter(recovered.values())).epochs[0]
        recover_facts = {
            **report.recover_facts(primary, recovered, space.budget.max_epochs),
            "path": _shown(Path(args.recover_table)),
            "clock": clock,
            "recorded_s": report.quantiles([r.full_seconds("time/recorded_epoch_s") for r in recovered.values()]),
            "recorded_cpu_s": report.quantiles([r.full_seconds("time/recorded_epoch_cpu_s") for r in recovered.values()]),
            "git_commit": sorted({r.epochs[0]["git_commit"] for r in recovered.values()}),
            "git_dirty_runs": sum(bool(r.epochs[0]["git_dirty"]) for r in recovered.values()),
            "recording_machine": json.loads(first["machine"]),
            "recording_span": [
                min(r.epochs[0]["recorded_at"] for r in recovered.values()),
                max(r.epochs[0]["recorded_at"] for r in recovered.values()),
            ],
            "images_per_s": {
                "table": statistics.median(e["train/images_per_s"] for r in primary.values() for e in r.epochs),
                "recovered": statistics.median(e["train/images_per_s"] for r in recovered.values() for e in r.epochs),
            },
        }

    loo = leave_one_out(space, primary)
    noise = seed_noise(runs, seed0)
    surrogate = {
        "leave_one_out_abs_error": error_summary([r["abs_error"] for r in loo]),
        "leave_one_out_failing_agreement": sum(r["failing"] == r["predicted_failing"] for r in loo) / len(loo),
        "seed_noise_abs_diff": error_summary([d for r in noise for d in r["abs_diff"]]),
        "seed_noise_failing_agreement": sum(len(set(r["failing"].values())) == 1 for r in noise) / len(noise) if noise else None,
        "seed_noise": noise,
    }
    variants = {}
    for name in args.variants.split(","):
        variant = VARIANTS[name]
        names = [n for n in wanted if n in variant.strategies]
        unit = report.table_facts(primary, runs, COST_KEYS[variant.cost][0])["full_run_s"]["p50"]
        variants[name] = compare(args, raw, variant, names, unit)
        print(f"{name}: {len(names)} strategies x {args.seeds} seeds in {variants[name]['replay_s']['total']:.0f} s", flush=True)
    machine["load_average_at_end"] = load_average()

    result = {
        "issue": 18,
        "space": args.space,
        "table": {**report.table_facts(primary, runs), "path": _shown(Path(args.table))},
        "recover_table": recover_facts,
        "space_overrides": args.set,
        "recording_machine": json.loads(next(iter(runs.values())).epochs[0]["machine"]),
        "replay_machine": machine,
        "git_commit_of_table": sorted({r.epochs[0]["git_commit"] for r in runs.values()}),
        "git_dirty_runs": sum(bool(r.epochs[0]["git_dirty"]) for r in runs.values()),
        "workers": args.workers or space.budget.max_concurrent_trials or 1,
        "seeds": args.seeds,
        "jobs": args.jobs,
        "surrogate": surrogate,
        "leave_one_out": loo,
        "variants": variants,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.stem}.json").write_text(report.dumps(result))
    write_report(result, out, args.stem)


def write_report(result: dict[str, Any], out: Path, stem: str) -> None:
    """``<stem>.png`` and ``<stem>.md`` from the comparison's result (also re-made from its JSON)."""
    png = out / f"{stem}.png"
    figure = {k: v for k, v in result["variants"].items() if v["figure"]}
    report.plot(
        figure,
        result["table"]["best_ap"],
        png,
        f"{result.get('space', 'cpu-mini')}: {result['table']['configs']} recorded configurations, {result['seeds']} seeds per "
        f"strategy, {result['workers']} trial slots"
        + (f", {', '.join(result['space_overrides'])}" if result["space_overrides"] else ""),
    )
    markdown = report.markdown(result, machine_line(result["replay_machine"]), png.name)
    (out / f"{stem}.md").write_text(markdown)
    print(markdown)


def _shown(path: Path) -> str:
    """The table's path relative to the repository when it lies inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(resolved)


if __name__ == "__main__":
    main()
