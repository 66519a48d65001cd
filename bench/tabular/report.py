"""Figures of the replayed searches: anytime curves, compute to a target, failures, cut best configs.

Every figure is read from :class:`bench.tabular.replay.Trace` objects. "Best AP found" is the best
last-epoch AP of the trials that ran to ``max_epochs`` (a pruned or stopped trial has no
full-budget value; this is also what ``hpo/export.py`` may export), and the table's best is the
best last-epoch AP among the configurations' primary runs (the surrogate answers with those), so
100 % means the search ran the table's best configuration to the end.
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
from bench.tabular.surrogate import Run

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
    }


def fate(outcomes: Sequence[str]) -> str:
    """How a configuration fared over its trials: ``completed`` if any trial completed, else the
    rule that cut it (``asha``, ``health``), else ``error`` or ``running`` (the budget ended)."""
    kinds = {o.split("@")[0].split(":")[0] for o in outcomes}
    for kind in ("completed", "health", "asha", "error", "running"):
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
    for key in ("trials", "distinct", "final_best_ap", "failing_share", *(f"compute_to_{int(f * 100)}" for f in TARGETS)):
        out[key] = quantiles([s[key] for s in stats])
    for f in TARGETS:
        key = f"compute_to_{int(f * 100)}"
        out[f"reached_{int(f * 100)}"] = sum(math.isfinite(s[key]) for s in stats)
    out["outcomes_mean"] = {
        k: sum(s["outcomes"].get(k, 0) for s in stats) / n for k in sorted({k for s in stats for k in s["outcomes"]})
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


def plot(variants: Mapping[str, dict[str, Any]], best: float, path: Path, title: str) -> None:
    """Median and interquartile band of the best AP found vs compute: one row per variant, TPE and
    random side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(variants), 2, figsize=(12, 4.4 * len(variants)), sharey=True, squeeze=False)
    colours = {"nostop": "tab:grey", "asha": "tab:blue", "health": "tab:orange", "health+asha": "tab:green"}
    for row, v in zip(axes, variants.values()):
        grid = np.array(v["anytime"]["grid_s"]) / v["full_run_s"]
        for ax, sampler in zip(row, ("tpe", "random")):
            for name, curve in v["anytime"]["curves"].items():
                if not name.startswith(sampler + "+"):
                    continue
                rules = name.split("+", 1)[1]
                label = {"health+asha": "health + ASHA (default)", "nostop": "no stopping"}.get(rules, f"{rules} alone")
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


def strategy_label(name: str, default: bool = True) -> str:
    """``default``: the space's own scheduler settings, so health + ASHA is the platform's default."""
    sampler, rules = name.split("+", 1)
    both = "health + ASHA (platform default)" if default else "health + ASHA"
    rules = {"nostop": "no stopping", "health+asha": both}.get(rules, f"{rules} alone")
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
        f"trial that ran all 6 epochs. {r['workers']} slots on an event clock (the space's `max_concurrent_trials`); "
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
        for rules in ("asha", "health", "health+asha"):
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
    lines += [
        "",
        "Replay time, each strategy's searches added up (one search runs in one process): "
        + ", ".join(f"{n} {sec:.0f} s" for n, sec in v["replay_s"]["per_strategy"].items())
        + f"; the variant {v['replay_s']['total']:.0f} s wall with {jobs} process(es).",
    ]
    return lines


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
