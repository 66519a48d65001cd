"""Figures of the replayed searches: anytime curves, compute to a target, failures, cut best configs.

Every figure is read from :class:`bench.tabular.replay.Trace` objects. "Best AP found" is the best
last-epoch AP of the trials that ran to ``max_epochs`` (a pruned or stopped trial has no
full-budget value; this is also what ``hpo/export.py`` may export), and the table's best is the
best last-epoch AP among the configurations' primary runs (the surrogate answers with those), so
100 % means the search ran the table's best configuration to the end. A trial answered by a
recorded recovered run (``recover`` strategies) that ran to ``max_epochs`` is a kept run too
(``recovered:<diagnosis>``): its AP counts as found.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from bench.tabular.replay import STRATEGIES, Trace
from bench.tabular.surrogate import AP_FLOOR, Run

#: Fractions of the table's best AP a search is timed to (75 %: a softer target, several configurations reach it).
TARGETS = (0.75, 0.9, 1.0)
QUANTILES = (25, 50, 75)


def trace_stats(trace: Trace, table_best: float, table_best_id: str) -> dict[str, Any]:
    """One replayed search in numbers."""
    outcomes = Counter(r.outcome.split("@")[0].split(":")[0] for r in trace.trials)
    failing = sum(r.cost for r in trace.trials if r.run.failing)
    by_config: dict[str, list[str]] = {}
    for r in trace.trials:
        by_config.setdefault(r.run.config_id, []).append(r.outcome)
    best_id = max(by_config, key=lambda c: next(r.run.final_ap for r in trace.trials if r.run.config_id == c))
    recovered = [r for r in trace.trials if r.recovered]
    kept = [r.ap for r in recovered if r.ap is not None]
    proposed = next((r.start for r in trace.trials if r.run.config_id == table_best_id), None)
    return {
        "seed": trace.seed,
        "trials": len(trace.trials),
        "distinct": len(by_config),
        "outcomes": dict(outcomes),
        **{f"compute_to_{int(f * 100)}": trace.compute_to_reach(f * table_best) for f in TARGETS},
        "final_best_ap": trace.best_at(trace.budget_s),
        "failing_share": failing / trace.budget_s,
        "best_proposed": best_id,
        "best_proposed_fate": fate(by_config[best_id]),
        "table_best_fate": fate(by_config[table_best_id]) if table_best_id in by_config else "not proposed",
        # When the table's best was first proposed (slot-seconds; inf: never): what the rules cannot shorten.
        "compute_to_propose_best": trace.workers * proposed if proposed is not None else math.inf,
        "recovered_outcomes": dict(Counter(_recovered_kind(r) for r in recovered)),
        "recovered_share": sum(r.cost for r in recovered) / trace.budget_s,
        "recovered_best_ap": max(kept, default=0.0),
        "best_is_recovered": any((r.ap, r.run.config_id) == trace.incumbent[-1][1:] for r in recovered if trace.incumbent),
    }


def _recovered_kind(trial: Any) -> str:
    """How a trial answered by a recovered run ended: ``recovered`` (kept), ``asha``, ``health`` or
    ``running``; ``... on a recovery`` when its last report was one of a failing epoch the trainer
    had just rolled back (ASHA judging that epoch's zeroed or collapsed AP at a rung, or stopping
    it at ``max_t``, where every trial ends)."""
    kind = trial.outcome.split("@")[0].split(":")[0]
    recovering = trial.epochs > 0 and bool(trial.run.epochs[trial.epochs - 1].get("health/recovery"))
    return f"{kind} on a recovery" if recovering and kind in ("recovered", "asha") else kind


def fate(outcomes: Sequence[str]) -> str:
    """How a configuration fared over its trials: ``completed`` if any trial completed, else
    ``recovered`` if one ran to the end after a recovery, else the rule that cut it (``asha``,
    ``health``), else ``error`` or ``running`` (the budget ended)."""
    kinds = {o.split("@")[0].split(":")[0] for o in outcomes}
    for kind in ("completed", "recovered", "health", "asha", "error", "running"):
        if kind in kinds:
            return kind
    return "unknown"


def quantiles(values: Sequence[float]) -> dict[str, float]:
    """25th/50th/75th percentiles (``inf`` stays ``inf``: a seed that never reached counts as worst)."""
    ordered = np.sort(np.asarray(values, dtype=float))
    out = {}
    for q in QUANTILES:
        # The order statistic at q (no interpolation: an inf neighbour would poison the mean).
        index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
        out[f"p{q}"] = float(ordered[index])
    return out


def anytime(traces: Sequence[Trace], grid: np.ndarray) -> dict[str, list[float]]:
    """Quartiles over seeds of the best AP found at each compute in ``grid``."""
    curves = np.array([[t.best_at(x) for x in grid] for t in traces])
    return {f"p{q}": np.percentile(curves, q, axis=0).tolist() for q in QUANTILES}


def summarise(stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Across seeds: quartiles of each figure, counts of fates."""
    n = len(stats)
    out: dict[str, Any] = {"seeds": n}
    for key in (
        *("trials", "distinct", "final_best_ap", "failing_share", "compute_to_propose_best"),
        *("recovered_share", "recovered_best_ap", *(f"compute_to_{int(f * 100)}" for f in TARGETS)),
    ):
        out[key] = quantiles([s[key] for s in stats])
    out["best_is_recovered"] = sum(s["best_is_recovered"] for s in stats)
    for f in TARGETS:
        key = f"compute_to_{int(f * 100)}"
        out[f"reached_{int(f * 100)}"] = sum(math.isfinite(s[key]) for s in stats)
    out["outcomes_mean"] = {
        k: sum(s["outcomes"].get(k, 0) for s in stats) / n for k in sorted({k for s in stats for k in s["outcomes"]})
    }
    out["recovered_outcomes_mean"] = {
        k: sum(s["recovered_outcomes"].get(k, 0) for s in stats) / n
        for k in sorted({k for s in stats for k in s["recovered_outcomes"]})
    }
    out["best_proposed_fate"] = dict(Counter(s["best_proposed_fate"] for s in stats))
    out["table_best_fate"] = dict(Counter(s["table_best_fate"] for s in stats))
    return out


def paired_ratios(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], key: str, budget: float) -> dict[str, Any]:
    """Per seed, ``a``'s compute over ``b``'s (the same sampler seed). A search that did not reach
    the target counts as the whole budget, so a ratio involving one is a bound (``censored``
    counts them); seeds where neither reached are left out."""
    by_seed = {s["seed"]: s[key] for s in b}
    ratios, censored = [], 0
    for s in a:
        x, y = s[key], by_seed[s["seed"]]
        if math.isinf(x) and math.isinf(y):
            continue
        censored += math.isinf(x) or math.isinf(y)
        ratios.append(min(x, budget) / min(y, budget))
    return {"n": len(ratios), "censored": censored, **(quantiles(ratios) if ratios else {})}


def table_facts(
    primary: Mapping[str, Run], runs: Mapping[tuple[str, int], Run], cost_key: str = "time/epoch_s"
) -> dict[str, Any]:
    """What the recorded table holds; ``full_run_s`` in the seconds of ``cost_key``."""
    best_id = max(primary, key=lambda c: primary[c].final_ap)
    ranked = sorted(primary, key=lambda c: -primary[c].final_ap)
    stops = Counter(
        r.epochs[r.first_default_stop()]["health/default_stop"] for r in primary.values() if r.first_default_stop() is not None
    )
    run_seconds = [r.epochs[0]["time/run_s"] for r in runs.values()]
    stop_epochs: dict[str, Counter] = {}
    full = spent = 0.0
    for r in primary.values():
        i = r.first_default_stop()
        if i is None:
            continue
        stop_epochs.setdefault(r.epochs[i]["health/default_stop"], Counter())[r.epochs[i]["epoch"]] += 1
        full += r.full_seconds(cost_key)
        spent += sum(e[cost_key] for e in r.epochs[:i]) + r.epochs[i][cost_key.replace("epoch", "to_default_stop")]
    # How well ASHA's rung (epoch 2) predicts the end: rank correlation over the healthy configurations,
    # and how many of the 10 best at the end are in the top third at epoch 2 (what a rung at 2 keeps).
    healthy = [r for r in primary.values() if not r.failing]
    rho = spearmanr([r.epochs[1]["val/ap"] for r in healthy], [r.final_ap for r in healthy]).statistic
    at_rung = sorted(primary, key=lambda c: -primary[c].epochs[1]["val/ap"])[: math.ceil(len(primary) / 3)]
    return {
        "configs": len(primary),
        "runs": len(runs),
        "epochs": sum(len(r.epochs) for r in runs.values()),
        "best_config": best_id,
        "best_ap": primary[best_id].final_ap,
        "best_params": primary[best_id].config,
        "top5": [(c, round(primary[c].final_ap, 4)) for c in ranked[:5]],
        "failing_configs": sum(r.failing for r in primary.values()),
        "health_would_stop": dict(stops),
        "health_stops_in_top10": [c for c in ranked[:10] if primary[c].first_default_stop() is not None],
        "health_stop_epochs": {d: dict(sorted(c.items())) for d, c in sorted(stop_epochs.items())},
        "health_saved_share_of_stopped": 1 - spent / full if full else 0.0,
        "epoch2_vs_final_spearman_healthy": float(rho),
        "top10_in_epoch2_top_third": [c for c in ranked[:10] if c in at_rung],
        "full_run_s": quantiles([r.full_seconds(cost_key) for r in primary.values()]),
        "wall_full_run_s": quantiles([r.full_seconds() for r in primary.values()]),
        "cpu_full_run_s": quantiles([r.full_seconds("time/epoch_cpu_s") for r in primary.values()]),
        "recording_s": sum(run_seconds),
        "recording_span": [
            min(r.epochs[0]["recorded_at"] for r in runs.values()),
            max(r.epochs[0]["recorded_at"] for r in runs.values()),
        ],
    }


def recover_facts(
    primary: Mapping[str, Run], recovered: Mapping[str, Run], max_epochs: int, cost_key: str = "time/epoch_s"
) -> dict[str, Any]:
    """The recorded recovered runs (``table_recover.parquet``) beside the observe-mode runs of the
    same configurations: how they ended, what they reached, what they cost."""
    best = max(r.final_ap for r in primary.values())
    healthy = sorted((r.final_ap for r in primary.values() if not r.failing), reverse=True)
    by_diagnosis: dict[str, Counter] = {}
    runs = []
    for cid, run in sorted(recovered.items()):
        first = primary[cid].epochs[primary[cid].first_default_stop() or 0]["health/default_stop"] or "none"
        last = run.epochs[-1]
        ended = (
            "stopped" if last.get("ended") else ("healthy end" if last["health/diagnosis"] == "healthy" else "warning at the end")
        )
        by_diagnosis.setdefault(first, Counter())[ended] += 1
        runs.append(
            {
                "config_id": cid,
                "diagnosis": first,
                "ended": last.get("ended") or "ran to the end",
                "last_diagnosis": last["health/diagnosis"],
                "recoveries": int(last["health/recoveries"]),
                "reports": len(run.epochs),
                "final_ap": run.final_ap,
                "rank_among_healthy": 1 + sum(ap > run.final_ap for ap in healthy) if run.final_ap >= AP_FLOOR else None,
                "cost_s": run.full_seconds(cost_key),
                "observe_cost_s": primary[cid].full_seconds(cost_key),
                "recovered_at_last_epoch": any(e.get("health/recovery") and e["epoch"] >= max_epochs for e in run.epochs),
            }
        )
    aps = [r["final_ap"] for r in runs if r["ended"] == "ran to the end"]
    top = max(runs, key=lambda r: r["final_ap"]) if runs else None
    return {
        "runs": len(runs),
        "failing_configs_covered": sum(
            1 for r in primary.values() if r.first_default_stop() is not None and r.config_id in recovered
        ),
        "failing_configs": sum(1 for r in primary.values() if r.first_default_stop() is not None),
        "by_diagnosis": {d: dict(c) for d, c in sorted(by_diagnosis.items())},
        "ran_to_the_end": len(aps),
        "final_ap_ran_to_the_end": quantiles(aps) if aps else {},
        "at_least_75_of_best": sum(ap >= 0.75 * best for ap in aps),
        "above_ap_floor": sum(ap >= AP_FLOOR for ap in aps),
        "best": {"config_id": top["config_id"], "final_ap": top["final_ap"], "rank_among_healthy": top["rank_among_healthy"]}
        if top
        else None,
        "healthy_configs": len(healthy),
        "recovered_at_last_epoch": [r["config_id"] for r in runs if r["recovered_at_last_epoch"]],
        "cost_s": quantiles([r["cost_s"] for r in runs]) if runs else {},
        "cost_over_observe_run": quantiles([r["cost_s"] / r["observe_cost_s"] for r in runs]) if runs else {},
        "per_run": runs,
    }


def plot(variants: Mapping[str, dict[str, Any]], best: float, path: Path, title: str) -> None:
    """Median and interquartile band of the best AP found vs compute: one row per variant, TPE and
    random side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(variants), 2, figsize=(12, 4.4 * len(variants)), sharey=True, squeeze=False)
    colours = {
        "nostop": "tab:grey",
        "asha": "tab:blue",
        "health": "tab:orange",
        "health+asha": "tab:green",
        "recover+asha": "tab:red",
    }
    for row, v in zip(axes, variants.values()):
        grid = np.array(v["anytime"]["grid_s"]) / v["full_run_s"]
        for ax, sampler in zip(row, ("tpe", "random")):
            for name, curve in v["anytime"]["curves"].items():
                if not name.startswith(sampler + "+"):
                    continue
                rules = name.split("+", 1)[1]
                label = {
                    "health+asha": "health + ASHA (default)",
                    "nostop": "no stopping",
                    "recover+asha": "health (recover) + ASHA",
                }.get(rules, f"{rules} alone")
                ax.plot(grid, curve["p50"], color=colours[rules], label=label, lw=1.8)
                ax.fill_between(grid, curve["p25"], curve["p75"], color=colours[rules], alpha=0.15, lw=0)
            ax.axhline(best, color="k", ls=":", lw=1, label="table's best")
            ax.axhline(0.9 * best, color="k", ls="--", lw=0.7, label="90 % of it")
            ax.set_title(f"{'TPE' if sampler == 'tpe' else 'random sampling'}, {v['title']}", fontsize=10)
            ax.set_xscale("log")  # the platform's own budget (12 trials) and the long run both readable
            ax.set_xlim(0.5, grid[-1])
            ax.set_xlabel(f"compute spent, in full runs ({v['full_run_s']:.1f} recorded {v['cost']} s each; log scale)")
            ax.grid(alpha=0.3)
        row[0].set_ylabel("best val/ap of a completed trial\n(median over seeds, IQR band)")
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def to_json(obj: Any) -> Any:
    """inf as the string "inf" (JSON has no infinity); floats to 6 significant digits (the size)."""
    if isinstance(obj, float):
        return "inf" if math.isinf(obj) else float(f"{obj:.6g}")
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(to_json(obj), indent=1)


def from_json(obj: Any) -> Any:
    """:func:`to_json` undone: "inf" back to a float."""
    if obj == "inf":
        return math.inf
    if isinstance(obj, dict):
        return {k: from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_json(v) for v in obj]
    return obj


def fmt_runs(seconds: float, unit: float) -> str:
    return ">budget" if math.isinf(seconds) else f"{seconds / unit:.1f}"


def _runs(q: Mapping[str, float], unit: float) -> str:
    """Quartiles of slot-seconds in full runs: ``p25 / p50 / p75``."""
    return " / ".join(fmt_runs(q[k], unit) for k in ("p25", "p50", "p75"))


def strategy_label(name: str, default: bool = True) -> str:
    """``default``: the space's own scheduler settings, so health + ASHA is the platform's default."""
    sampler, rules = name.split("+", 1)
    both = "health + ASHA (platform default)" if default else "health + ASHA"
    rules = {"nostop": "no stopping", "health+asha": both, "recover+asha": "health with recovery + ASHA"}.get(
        rules, f"{rules} alone"
    )
    return f"{'TPE' if sampler == 'tpe' else 'random'}, {rules}"


def ordered(names: Sequence[str]) -> list[str]:
    return [n for n in STRATEGIES if n in names]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def markdown(r: dict[str, Any], replay_machine: str, png: str) -> str:
    """The report: the table, the surrogate's error, each variant's strategies and target, the figure."""
    t, rec, sur = r["table"], r["recording_machine"], r["surrogate"]
    loo, noise = sur["leave_one_out_abs_error"], sur["seed_noise_abs_diff"]
    lines = [
        "# Tabular replay: search strategies on recorded learning curves (issue 18)",
        "",
        f"Recorded on: {rec['cpu']}, {rec['cpu_cores']} cores (shared with other jobs), 1 torch thread per run, load "
        f"average at start {', '.join(map(str, rec['load_average_at_start']))}; Python {rec['python']}, torch "
        f"{rec['torch']}; commit {', '.join(c[:10] for c in r['git_commit_of_table'])}"
        + (
            f" with uncommitted changes in `model/` or `hpo/` for {r['git_dirty_runs']} of the {t['runs']} runs "
            "(the working tree is shared)"
            if r["git_dirty_runs"]
            else ""
        )
        + ".",
        f"Replayed on: {replay_machine.removeprefix('Machine: ')}",
        "",
        "## The table",
        "",
        f"`{t['path']}`: {t['configs']} configurations of `cpu-mini` (its 2 `points_to_evaluate` + a scrambled Sobol "
        f"design over its 6 params), {t['runs']} runs ({t['runs'] - t['configs']} of them extra seeds), {t['epochs']} "
        f"epochs; every run trained to 6 epochs by the production Trainer with the health monitor observing "
        f"(`bench/tabular/record.py`). Recording: {t['recording_s'] / 60:.0f} min of run wall time on one core "
        f"(first and last run finished {t['recording_span'][0]} and {t['recording_span'][1]}). One full run: "
        f"{t['wall_full_run_s']['p50']:.1f} s wall, median ({t['wall_full_run_s']['p25']:.1f}-"
        f"{t['wall_full_run_s']['p75']:.1f} s quartiles; the other jobs' load), {t['cpu_full_run_s']['p50']:.1f} s CPU "
        f"({t['cpu_full_run_s']['p25']:.1f}-{t['cpu_full_run_s']['p75']:.1f} s).",
        "",
        f"Best configuration: `{t['best_config']}`, val/ap {t['best_ap']:.4f} after 6 epochs "
        f"({', '.join(f'{k}={_short(v)}' for k, v in t['best_params'].items())}); the top 5: "
        + ", ".join(f"`{c}` {ap}" for c, ap in t["top5"])
        + ".",
        f"Failing configurations (a default `stop_on` diagnosis at some epoch, or a last AP < 0.001): "
        f"{t['failing_configs']} of {t['configs']}; the health rule stops {sum(t['health_would_stop'].values())} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(t['health_would_stop'].items()))}); in the top 10: "
        f"{', '.join(t['health_stops_in_top10']) or 'none'}. Where the rule stops (diagnosis: epoch x configurations): "
        + "; ".join(f"{d}: " + ", ".join(f"{e} x {n}" for e, n in c.items()) for d, c in t["health_stop_epochs"].items())
        + f"; it saves {t['health_saved_share_of_stopped']:.0%} of the recorded seconds of the runs it stops.",
        f"ASHA's rung at epoch 2 as a predictor: Spearman rank correlation of epoch-2 and last-epoch val/ap over the "
        f"healthy configurations {t['epoch2_vs_final_spearman_healthy']:.2f}; of the 10 best at the end, "
        f"{len(t['top10_in_epoch2_top_third'])} are in the top third of all {t['configs']} at epoch 2 (the failing ones "
        "fill the bottom of a rung; a sampler that avoids them leaves the good ones to compete among themselves).",
    ]
    lines += _recover_table_lines(r.get("recover_table"), t)
    lines += [
        "",
        "## The surrogate",
        "",
        "A proposed configuration is answered by the nearest recorded one (categoricals equal, the others in unit "
        "coordinates of their range, log scale for log-sampled params) with that configuration's whole seed-0 run.",
        "",
        "| error of the answer's final val/ap | mean | median | max | n |",
        "|---|---|---|---|---|",
        f"| leave-one-out: each configuration answered by its nearest other | {loo['mean']:.4f} | {loo['median']:.4f} | "
        f"{loo['max']:.4f} | {loo['n']} |",
    ]
    if noise:
        lines.append(
            f"| the same configuration with another seed (run-to-run noise) | {noise['mean']:.4f} | "
            f"{noise['median']:.4f} | {noise['max']:.4f} | {noise['n']} |"
        )
    lines += [
        "",
        f"Failing or not: the leave-one-out answer agrees for {sur['leave_one_out_failing_agreement']:.0%} of the "
        "configurations"
        + (
            f"; a configuration's seeds agree for {sur['seed_noise_failing_agreement']:.0%} of the noise configurations"
            if noise
            else ""
        )
        + ".",
    ]
    if sur["seed_noise"]:
        lines += [
            "",
            "Final val/ap per seed (0 / 1 / 2) of the noise configurations: "
            + "; ".join(
                f"`{n['config_id']}` " + " / ".join(f"{v:.4f}" for v in n["final_ap"].values()) for n in sur["seed_noise"]
            )
            + ".",
        ]
    for vname, v in r["variants"].items():
        lines += _variant_lines(vname, v, r["seeds"], r["workers"], r["jobs"])
    lines += [
        "",
        f"![anytime curves]({png})",
        "",
        "## How it was replayed",
        "",
        "`bench/tabular/replay.py` (one search) and `bench/tabular/compare.py` (the strategies over seeds): a free trial "
        "slot asks the platform's searcher for a configuration (`hpo.stopping.build_searcher`: TPE with the space's "
        "settings, its seed the replay's; random: the same `RungAwareOptunaSearch` around Optuna's `RandomSampler`), "
        "the surrogate answers with a recorded run, and its epochs arrive after their recorded seconds and go through "
        "`hpo.trainable.tune_metrics`, the platform's `HealthStopper`, Ray's `ASHAScheduler` (`build_scheduler`: rung at "
        "epoch 2, reduction factor 3, max_t 6) or `FIFOScheduler`, and the searcher, in the order Tune's controller "
        "calls them. The health rule stops a run at the first epoch whose recorded verdicts hold a default `stop_on` "
        "diagnosis, after the recorded seconds up to the stopping step. Best AP found: the best last-epoch val/ap of a "
        f"trial that ran all 6 epochs. Recovery + ASHA: a proposal answered by a failing configuration gets that "
        "configuration's recorded recovered run instead, every report of it (replayed epochs included) through the "
        "same objects, as a real search's: `tune_metrics` gives Optuna the penalty from the first recovery on, ASHA "
        "judges `raw/val/ap` on the trainer's `epoch`, the health stopper ends it only where the recovered run itself "
        "stopped, and one that reaches epoch 6 is `recovered:<diagnosis>` (`hpo.layout.trial_end`), kept: its val/ap "
        f"counts as found. {r['workers']} slots on an event clock (the space's `max_concurrent_trials`); "
        "compute is slot-seconds. Not in the recorded seconds: Ray's overhead and the dead time between trials "
        "(~3 %, `bench/dead_time.py`).",
        "",
    ]
    return "\n".join(lines)


def _variant_lines(vname: str, v: dict[str, Any], seeds: int, workers: int, jobs: int) -> list[str]:
    s, unit = v["strategies"], v["full_run_s"]
    lines = [
        "",
        f"## `{vname}`: {v['title']}",
        "",
        f"{seeds} seeds per strategy, {v['budget_runs']:g} full runs of compute per search ({v['budget_s']:.0f} "
        f"slot-seconds of recorded {v['cost']} time), {workers} trial slots. Compute in full runs ({unit:.1f} s, the "
        "median run's): quartiles over seeds, p25 / median / p75; `>budget`: not reached within the budget.",
        "",
        "| strategy | trials (distinct configs) | "
        + " | ".join(f"to {f:.0%} of the best | seeds" for f in TARGETS)
        + " | compute on failing configs | best val/ap at the end | best config proposed: cut by ASHA / health | "
        "table's best: proposed / cut by ASHA / health |",
        "|---" * (2 + 2 * len(TARGETS) + 4) + "|",
    ]
    for name in ordered(list(s)):
        x = s[name]
        tb = x["table_best_fate"]
        reach = " | ".join(
            " / ".join(fmt_runs(x[f"compute_to_{int(f * 100)}"][q], unit) for q in ("p25", "p50", "p75"))
            + f" | {x[f'reached_{int(f * 100)}']}/{seeds}"
            for f in TARGETS
        )
        lines.append(
            f"| {strategy_label(name, not v['space_overrides'])} | {x['trials']['p50']:.0f} ({x['distinct']['p50']:.0f}) | {reach} | "
            f"{x['failing_share']['p50']:.0%} ({x['failing_share']['p25']:.0%}-{x['failing_share']['p75']:.0%}) | "
            f"{x['final_best_ap']['p50']:.4f} ({x['final_best_ap']['p25']:.4f}-{x['final_best_ap']['p75']:.4f}) | "
            f"{x['best_proposed_fate'].get('asha', 0)} / {x['best_proposed_fate'].get('health', 0)} | "
            f"{seeds - tb.get('not proposed', 0)} / {tb.get('asha', 0)} / {tb.get('health', 0)} |"
        )
    lines += [
        "",
        "Trials per search by how they ended, mean over seeds (`running`: cut by the end of the budget): "
        + "; ".join(
            f"{strategy_label(n, not v['space_overrides'])}: "
            + ", ".join(f"{k} {c:.1f}" for k, c in s[n]["outcomes_mean"].items())
            for n in ordered(list(s))
        )
        + ".",
    ]
    lines += [
        "",
        "The platform's default against no stopping, compute to reach the target (default / no stopping; "
        "the issue's target for the table's best: <= 1/3 at the median, <= 1/2 at the 75th percentile):",
        "",
    ]
    for sampler, comp in v["comparisons"].items():
        if "paired_ratio_to_100" not in comp:  # only recovery against the default was compared
            continue
        d, n = s[f"{sampler}+health+asha"], s[f"{sampler}+nostop"]
        for f in TARGETS:
            key = f"compute_to_{int(f * 100)}"
            pr = comp[f"paired_ratio_to_{int(f * 100)}"]
            lines.append(
                f"- {'TPE' if sampler == 'tpe' else 'random'}, {f:.0%} of the best: median seed "
                f"{_ratio(d[key]['p50'], n[key]['p50'], v['budget_s'])}, 75th percentile "
                f"{_ratio(d[key]['p75'], n[key]['p75'], v['budget_s'])}; per seed (same sampler seed, n={pr['n']}, "
                f"{pr['censored']} with one side not reaching it, counted as the budget): median "
                f"{_ratio_value(pr.get('p50'))}, 75th percentile {_ratio_value(pr.get('p75'))}."
            )
    lines += [
        "",
        "Which rule costs or saves what, against no stopping (median compute to the table's best / to 75 % of "
        "it, as above; cut: seeds in which the best configuration the search proposed never completed because "
        "the rule stopped it):",
        "",
    ]
    for sampler in ("tpe", "random"):
        base = s.get(f"{sampler}+nostop")
        if base is None:
            continue
        parts = []
        for rules in ("asha", "health", "health+asha", "recover+asha"):
            x = s.get(f"{sampler}+{rules}")
            if x is None:
                continue
            cut = x["best_proposed_fate"]
            parts.append(
                f"{rules.replace('+', ' + ')} {_ratio(x['compute_to_100']['p50'], base['compute_to_100']['p50'], v['budget_s'], 'it')}"
                f" / {_ratio(x['compute_to_75']['p50'], base['compute_to_75']['p50'], v['budget_s'], 'it')}, reached "
                f"{x['reached_100']} / {x['reached_75']} of {seeds} seeds (no stopping {base['reached_100']} / "
                f"{base['reached_75']}), cut by ASHA {cut.get('asha', 0)}, by health {cut.get('health', 0)}"
            )
        lines.append(f"- {'TPE' if sampler == 'tpe' else 'random'}: " + "; ".join(parts) + ".")
        costing = _costing_line(s, sampler, v["budget_s"], seeds, unit)
        if costing:
            lines.append(f"  {costing}")
    lines += _recover_lines(v, seeds)
    lines += [
        "",
        "Replay time, each strategy's searches added up (one search runs in one process): "
        + ", ".join(f"{n} {sec:.0f} s" for n, sec in v["replay_s"]["per_strategy"].items())
        + f"; the variant {v['replay_s']['total']:.0f} s wall with {jobs} process(es).",
    ]
    return lines


def _costing_line(s: Mapping[str, Any], sampler: str, budget: float, seeds: int, unit: float) -> str | None:
    """Where the default (health + ASHA) misses a third of no stopping's compute to the table's
    best at the median seed: which rule costs it (cut the table's best configuration), or that
    neither does and what does (the sampler: when it first proposes that configuration)."""
    d, n = s.get(f"{sampler}+health+asha"), s.get(f"{sampler}+nostop")
    if d is None or n is None:
        return None
    a, b = d["compute_to_100"]["p50"], n["compute_to_100"]["p50"]
    if math.isfinite(a) and math.isfinite(b) and a <= b / 3:
        return None
    tb = d["table_best_fate"]
    proposed = seeds - tb.get("not proposed", 0)
    cut = {"ASHA": tb.get("asha", 0), "the health rule": tb.get("health", 0)}
    text = f"Which rule costs the default the 1/3 target (median seed {_ratio(a, b, budget)}): "
    if any(cut.values()):
        worst, other = sorted(cut, key=lambda k: -cut[k])
        text += (
            f"{worst}, which cut the table's best configuration (no trial of it completed) in {cut[worst]} of the "
            f"{proposed} seeds that proposed it ({other}: {cut[other]})"
        )
    else:
        text += f"neither cut the table's best configuration (in none of the {proposed} seeds that proposed it)"
    alone = [
        f"{label} alone {_ratio(x['compute_to_100']['p50'], b, budget, 'it')}"
        for label, x in (("ASHA", s.get(f"{sampler}+asha")), ("health", s.get(f"{sampler}+health")))
        if x is not None
    ]
    if alone:
        text += "; against no stopping " + ", ".join(alone)
    pd, pn = d["compute_to_propose_best"], n["compute_to_propose_best"]
    text += (
        f"; the search first proposed the table's best after {_runs(pd, unit)} runs' compute (p25 / median / p75; "
        f"without stopping {_runs(pn, unit)}), in "
        f"{proposed} of {seeds} seeds (without stopping {seeds - n['table_best_fate'].get('not proposed', 0)}): "
        + ("what is left is the sampler's, not a rule's." if not any(cut.values()) else "the rest is the sampler's.")
    )
    return text


def _recover_table_lines(rt: Mapping[str, Any] | None, t: Mapping[str, Any]) -> list[str]:
    """The recorded recovered runs (``record.py --recover``), when the comparison had them."""
    if not rt:
        return []
    q, c, ratio = rt["final_ap_ran_to_the_end"], rt["cost_s"], rt["cost_over_observe_run"]
    best = rt["best"]
    return [
        "",
        "## The recovered runs",
        "",
        f"`{rt['path']}`: the {rt['failing_configs_covered']} of {rt['failing_configs']} configurations the default "
        "rule stops, trained again with the same sizes, seed and 6 epochs, with `health.on_failure: recover`, the "
        "default `stop_on` and interventions (`model/health.py` `DEFAULT_INTERVENTIONS`; `record.py --recover`). "
        "By the diagnosis of their observe-mode run: "
        + "; ".join(f"{d}: " + ", ".join(f"{k} {n}" for k, n in sorted(e.items())) for d, e in rt["by_diagnosis"].items())
        + f" (`healthy end`: ran to epoch 6 and the monitor's last verdict healthy; `stopped`: its recoveries spent, "
        f"stopped as without recovery). {rt['ran_to_the_end']} ran to the end"
        + (f", their final val/ap {q['p25']:.4f} / {q['p50']:.4f} / {q['p75']:.4f} (p25 / median / p75)" if q else "")
        + f"; {rt['above_ap_floor']} above 0.001, {rt['at_least_75_of_best']} at >= 75 % of the table's best "
        f"({t['best_ap']:.4f})"
        + (
            f"; the best recovered run: `{best['config_id']}` {best['final_ap']:.4f}"
            + (
                f" (it would rank {best['rank_among_healthy']} among the {rt['healthy_configs']} healthy configurations)"
                if best["rank_among_healthy"]
                else ""
            )
            if best
            else ""
        )
        + "."
        + _clock_line(rt)
        + f" A recovered run costs {c['p50']:.1f} s on the table's wall clock, median ({c['p25']:.1f}-{c['p75']:.1f}), "
        f"{ratio['p50']:.2f} times its configuration's observe-mode run ({ratio['p25']:.2f}-{ratio['p75']:.2f}: the "
        "replayed epochs). Recovering at epoch 6's check (a rollback there replays the run from its snapshot; ASHA "
        "does not judge that report, `hpo.stopping.RecoveryAwareASHA`, where Ray's own would end the trial at `max_t`): "
        + (", ".join(f"`{c}`" for c in rt["recovered_at_last_epoch"]) or "none")
        + ".",
    ]


def _clock_line(rt: Mapping[str, Any]) -> str:
    """How the recovered runs' seconds were put on the table's clock (``compare.on_table_clock``)."""
    clock = rt.get("clock")
    if not clock:
        return ""
    rec, ips = rt["recording_machine"], rt["images_per_s"]
    return (
        f" Recorded {rt['recording_span'][0]} to {rt['recording_span'][1]} on {rec['cpu']}, {rec['cpu_cores']} cores "
        f"shared with other jobs (load average at start {', '.join(map(str, rec['load_average_at_start']))}), commit "
        f"{', '.join(c[:10] for c in rt['git_commit'])}"
        + (f" with uncommitted changes in `model/` or `hpo/` for {rt['git_dirty_runs']} runs" if rt["git_dirty_runs"] else "")
        + f": a newer trainer than the table's, training {ips['recovered']:.0f} images/s against the table's "
        f"{ips['table']:.0f} (medians over epochs), so its seconds are not the table's. They are converted: up to its "
        "first failure a recovered run does the same work as the observe-mode run of its configuration (the same "
        f"images and steps; identical losses and AP in {clock['identical_epochs']} of them, the rest differ by the "
        f"trainers' float noise), and on those {clock.get('paired_epochs', clock['identical_epochs'])} epochs, recorded twice, the table's seconds are "
        f"{clock['wall_per_recorded_cpu_s']:.2f} (wall) and {clock['cpu_per_recorded_cpu_s']:.2f} (CPU) times the "
        "recovered run's process CPU seconds (medians; CPU: what the load during the recording inflates least); every "
        "report of a recovered run is charged its CPU seconds times these. As recorded, a recovered run took "
        f"{rt['recorded_s']['p50']:.1f} s wall, {rt['recorded_cpu_s']['p50']:.1f} s CPU (medians)."
    )


def _recover_lines(v: Mapping[str, Any], seeds: int) -> list[str]:
    """Recovery + ASHA against the default (health + ASHA) in one variant."""
    s, unit, budget = v["strategies"], v["full_run_s"], v["budget_s"]
    lines = []
    for sampler in ("tpe", "random"):
        x, d, n = (s.get(f"{sampler}+{rules}") for rules in ("recover+asha", "health+asha", "nostop"))
        if x is None or d is None:
            continue
        pr = v["comparisons"].get(sampler, {}).get("recover_vs_default_to_100", {})
        nostop = n["compute_to_100"]["p50"] if n is not None else math.nan

        def reach(y: Mapping[str, Any], f: int) -> str:
            return f"{_runs(y[f'compute_to_{f}'], unit)} ({y[f'reached_{f}']}/{seeds} seeds)"

        lines.append(
            f"- {'TPE' if sampler == 'tpe' else 'random'}: to the table's best {reach(x, 100)} runs with recovery, "
            f"{reach(d, 100)} with the default; x of no stopping at the median "
            f"{_ratio(x['compute_to_100']['p50'], nostop, budget, 'it')} against {_ratio(d['compute_to_100']['p50'], nostop, budget)}"
            f"; to 75 % of it {reach(x, 75)} against {reach(d, 75)}"
            + (
                f"; per seed, recovery over the default (same sampler seed, n={pr['n']}, {pr['censored']} with one "
                f"side not reaching it): median {_ratio_value(pr.get('p50'))}, 75th percentile {_ratio_value(pr.get('p75'))}"
                if pr
                else ""
            )
            + ". Trials answered by a recovered run per search, mean, by how they ended: "
            + (", ".join(f"{k} {c:.1f}" for k, c in x["recovered_outcomes_mean"].items()) or "none")
            + "; compute on recovered runs "
            f"{x['recovered_share']['p50']:.0%} ({x['recovered_share']['p25']:.0%}-{x['recovered_share']['p75']:.0%}); "
            f"the best val/ap of a kept recovered run {x['recovered_best_ap']['p50']:.4f} (median), a recovered run the "
            f"search's best at the end in {x['best_is_recovered']} of {seeds} seeds."
        )
    if not lines:
        return []
    return [
        "",
        "Recovery (`health.on_failure: recover`) with ASHA against the platform's default: a failing configuration "
        "answered by its recorded recovered run (Optuna told the penalty, ASHA judging its raw val/ap, kept when it "
        "runs to the end); compute in full runs, p25 / median / p75. Random sampling proposes the same sequence of "
        "configurations in both for a seed, so its per-seed comparison is the clean one; TPE proposes few distinct "
        "configurations (the table's column) and which it settles on depends on the order in which the early trials "
        "end, which a recovered trial (longer than a stopped one) changes.",
        "",
        *lines,
    ]


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _ratio(a: float, b: float, budget: float, who: str = "the default") -> str:
    """``a / b``; a side that did not reach the target counts as the budget: the ratio is a bound."""
    if math.isinf(a) and math.isinf(b):
        return "n/a (neither reached it)"
    if math.isinf(a):
        return f">= {budget / b:.2f} ({who} did not reach it)"
    if math.isinf(b):
        return f"<= {a / budget:.2f} (no stopping did not reach it)"
    return f"{a / b:.2f}"


def _ratio_value(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "inf" if math.isinf(value) else f"{value:.2f}"
