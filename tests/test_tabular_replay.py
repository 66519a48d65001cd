"""The tabular replay (bench/tabular/) on a tiny hand-made table of cpu-mini configurations.

The decisions come from the real classes (Ray's ASHAScheduler, the platform's HealthStopper and
Optuna searcher); these tests check them against what the rules say, computed here by hand.
"""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from bench.tabular.design import design, from_unit, unit_coords
from bench.tabular.replay import STRATEGIES, Strategy, quiet, replay
from bench.tabular.report import trace_stats
from bench.tabular.surrogate import NearestSurrogate, Run, leave_one_out
from hpo.space import load_space
from hpo.stopping import optuna_study
from model.report_keys import VAL_KEYS

SPACE = load_space("cpu-mini")
EPOCH_S = 2.0


def make_run(
    cid: str,
    config: dict,
    aps: list[float],
    *,
    stop_epoch: int | None = None,
    kind: str = "epoch",
    stop_s: float = 0.5,
    diagnosis: str = "stalled",
) -> Run:
    """A recorded run as the recorder writes it: one row per epoch, observe-mode verdicts."""
    rows = []
    for epoch, ap in enumerate(aps, start=1):
        stop = stop_epoch is not None and epoch == stop_epoch
        rows.append(
            {
                "config_id": cid,
                "seed": 0,
                **config,
                "epoch": epoch,
                "step": 37 * epoch,
                "train/loss": 5.0 / epoch,
                "train/loss_cls": 3.0,
                "train/loss_box": 2.0,
                **dict.fromkeys(VAL_KEYS, 0.1),
                "val/ap": ap,
                "health/diagnosis": diagnosis if stop_epoch is not None and epoch >= stop_epoch else "healthy",
                "health/code": 0.0,
                "health/stop": 0.0,
                "health/message": "",
                "health/default_stop": diagnosis if stop else "",
                "health/default_stop_kind": kind if stop else "",
                "time/epoch_s": EPOCH_S + 0.1 * epoch,
                "time/epoch_cpu_s": EPOCH_S,
                "time/to_default_stop_s": (stop_s if kind == "step" else EPOCH_S + 0.1 * epoch) if stop else None,
                "time/to_default_stop_cpu_s": None,
                "ended": None,
            }
        )
    return Run(cid, 0, dict(config), rows)


def config(lr: float, warmup: float = 1.0, box_loss: str = "smooth_l1") -> dict:
    return {
        "optim.lr": lr,
        "schedule.warmup_epochs": warmup,
        "loss.class_weight": 1.0,
        "loss.box_weight": 1.0,
        "loss.neg_pos_ratio": 3,
        "loss.box_loss": box_loss,
    }


@pytest.fixture(scope="module")
def table() -> dict[str, Run]:
    """Six configurations: a known best (b, lr 0.03), healthy ones of different AP, and a failing
    region at high learning rates (f1 stops at a step check in epoch 1, f2 at epoch 3's check)."""
    quiet()
    runs = [
        # the space's two points (the searcher tries them first): p0 healthy, p1 the diverging one
        make_run("p0", SPACE.points_to_evaluate[0], [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]),
        make_run("p1", SPACE.points_to_evaluate[1], [0.0] * 6, stop_epoch=1, kind="step", stop_s=0.3, diagnosis="diverged"),
        make_run("b", config(0.03), [0.02, 0.05, 0.08, 0.10, 0.12, 0.15]),
        make_run("slow", config(0.002), [0.001, 0.004, 0.01, 0.02, 0.03, 0.045]),
        make_run("f1", config(0.5, 0.0, "giou"), [0.0] * 6, stop_epoch=1, kind="step", stop_s=0.4, diagnosis="diverged"),
        make_run("f2", config(0.2, 0.5, "giou"), [0.003, 0.002, 0.001, 0.0, 0.0, 0.0], stop_epoch=3),
        make_run("g", config(0.01, 1.5, "giou"), [0.01, 0.03, 0.02, 0.05, 0.07, 0.08]),
    ]
    return {r.config_id: r for r in runs}


def test_surrogate_answers_a_recorded_config_with_its_own_run(table):
    surrogate = NearestSurrogate(SPACE, table)
    for run in table.values():
        assert surrogate.answer(run.config) is run
    # Numerically next to b, but giou: the categorical is matched first (g, not b).
    assert surrogate.nearest(config(0.03, 1.0, "giou")) == "g"
    # lr 0.005 is nearer to slow's 0.002 than to p0's 0.01 on a linear scale, to p0 on the log scale
    assert surrogate.nearest(config(0.005)) == "p0"
    held_out = {r["config_id"]: r for r in leave_one_out(SPACE, table)}
    assert held_out["b"]["answered_by"] != "b"
    assert held_out["b"]["abs_error"] == pytest.approx(abs(table[held_out["b"]["answered_by"]].final_ap - 0.15))


def test_health_rule_stops_at_the_recorded_verdict(table):
    trace = replay(
        SPACE, NearestSurrogate(SPACE, table), Strategy("random", asha=False, health=True), seed=3, budget_s=200.0, workers=1
    )
    by_run: dict[str, list] = {}
    for trial in trace.trials:
        by_run.setdefault(trial.run.config_id, []).append(trial)
    assert {t.outcome for t in by_run["p1"]} == {"health:diverged@1"}
    p1 = by_run["p1"][0]
    assert p1.epochs == 1 and p1.cost == pytest.approx(0.3)  # the seconds up to the stopping step
    for trial in by_run.get("f2", []):
        if trial.outcome != "running":
            assert trial.outcome == "health:stalled@3" and trial.epochs == 3
            assert trial.cost == pytest.approx(sum(EPOCH_S + 0.1 * e for e in (1, 2, 3)))
    assert "f2" in by_run, "the seed should propose the failing region at least once"
    for cid in ("p0", "b", "slow", "g"):
        assert all(t.outcome in ("completed", "running") for t in by_run.get(cid, []))
    # Optuna was told the health-stopped trial COMPLETE with the penalty, as the platform does.
    study = optuna_study(trace.searcher)
    first = study.trials[1]  # p1, the second point
    assert first.state == optuna.trial.TrialState.COMPLETE and first.value == -1.0


def test_asha_decisions_follow_the_rung_rule(table):
    """Sequential replay: each trial reaches epoch 2 after every earlier one ended, so ASHA's rung
    at 2 compares it with all earlier trials' epoch-2 values: stop iff below their 1 - 1/3 quantile."""
    trace = replay(
        SPACE, NearestSurrogate(SPACE, table), Strategy("random", asha=True, health=False), seed=0, budget_s=300.0, workers=1
    )
    rung: list[float] = []
    decided = 0
    for trial in trace.trials:
        if trial.epochs < 2:
            continue
        value = trial.run.epochs[1]["val/ap"]
        expected_stop = bool(rung) and value < _quantile(rung, 1 - 1 / 3)
        if expected_stop:
            assert trial.outcome == "asha@2", (trial.trial_id, rung, value)
        else:
            assert trial.outcome in ("completed", "running"), (trial.trial_id, rung, value)
        rung.append(value)
        decided += 1
    assert decided >= 10
    assert any(t.outcome == "asha@2" for t in trace.trials)
    assert any(t.outcome == "completed" for t in trace.trials[3:])
    # The sampler was told: pruned at the rung = PRUNED, run to the end = COMPLETE.
    states = {"asha@2": optuna.trial.TrialState.PRUNED, "completed": optuna.trial.TrialState.COMPLETE}
    for trial, ot_trial in zip(trace.trials, optuna_study(trace.searcher).trials):
        if trial.outcome in states:
            assert ot_trial.state == states[trial.outcome]


def _quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile, written out (ASHA's cutoff is NumPy's percentile of the rung)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def test_compute_accounting_and_the_known_best(table):
    budget = 240.0
    trace = replay(SPACE, NearestSurrogate(SPACE, table), STRATEGIES["random+nostop"], seed=1, budget_s=budget, workers=2)
    # Two slots never idle: the trials' costs fill the budget exactly.
    assert sum(t.cost for t in trace.trials) == pytest.approx(budget)
    for trial in trace.trials:
        if trial.outcome == "completed":
            assert trial.cost == pytest.approx(trial.run.full_seconds())
    # The incumbent's compute is two slots' clock when the improving trial ended.
    for spent, ap, cid in trace.incumbent:
        ended = [
            t
            for t in trace.trials
            if t.run.config_id == cid and t.outcome == "completed" and 2 * (t.start + t.cost) == pytest.approx(spent)
        ]
        assert ended and ap == table[cid].final_ap
    assert trace.best_at(budget) == pytest.approx(0.15)  # the known best, b, was found and completed
    stats = trace_stats(trace, 0.15, "b")
    failing = sum(t.cost for t in trace.trials if t.run.config_id in ("p1", "f1", "f2"))
    assert stats["failing_share"] == pytest.approx(failing / budget)
    assert failing > 0  # no stopping: the failing region is paid in full
    assert stats["compute_to_100"] == trace.incumbent[-1][0]
    assert stats["table_best_fate"] == "completed"


def test_design_maps_the_unit_cube_through_each_distribution():
    configs = design(SPACE, 16)
    assert list(configs)[:2] == ["p0", "p1"] and len(configs) == 18
    for cfg in configs.values():
        SPACE.trial_config(cfg)  # every config is a valid trial
        assert 0.0 <= unit_coords(SPACE, cfg).min() and unit_coords(SPACE, cfg).max() <= 1.0
    lr = SPACE.params["optim.lr"]
    assert from_unit(lr, 0.5) == pytest.approx(math.sqrt(lr.low * lr.high))  # log scale: the geometric middle
    ratio = SPACE.params["loss.neg_pos_ratio"]
    assert [from_unit(ratio, u) for u in (0.0, 0.099, 0.1, 0.999)] == [1, 1, 2, 10]
    assert {c["loss.box_loss"] for c in configs.values()} == {"smooth_l1", "giou"}
    assert np.isclose(unit_coords(SPACE, configs["p0"])[0], 1 / 3)  # lr 0.01 in [1e-3, 1]: a third on log scale


def make_recovered_run(cid: str, config: dict, reports: list[tuple[int, float, str]]) -> Run:
    """A recovered run as ``record.py --recover`` writes it: every report in order, replayed epochs
    included, ``report`` counting them. Each report is ``(epoch, ap, event)``; the event is a
    diagnosis the trainer recovered from at that epoch (``"recover:<diagnosis>"``), one it stopped
    on (``"stop:<diagnosis>"``, its recoveries spent), or ``""``."""
    rows, recoveries, last = [], 0, ""
    for index, (epoch, ap, event) in enumerate(reports, start=1):
        kind, _, diagnosis = event.partition(":")
        if kind == "recover":
            recoveries += 1
            last = diagnosis
        rows.append(
            {
                "config_id": cid,
                "seed": 0,
                **config,
                "report": index,
                "epoch": epoch,
                "step": 37 * epoch,
                "train/loss": 5.0,
                "train/loss_cls": 3.0,
                "train/loss_box": 2.0,
                **dict.fromkeys(VAL_KEYS, 0.1),
                "val/ap": ap,
                "health/diagnosis": diagnosis or "healthy",
                "health/code": 0.0,
                "health/stop": 1.0 if kind == "stop" else 0.0,
                "health/message": "",
                "health/recoveries": float(recoveries),
                "health/recovery": f"{diagnosis} at epoch {epoch} -> rollback" if kind == "recover" else "",
                "health/recovered_from": last,
                "health/default_stop": diagnosis,
                "health/default_stop_kind": "step" if diagnosis else "",
                "time/epoch_s": 1.0 + 0.01 * index,
                "time/epoch_cpu_s": 1.0,
                "time/to_default_stop_s": 0.2 if diagnosis else None,
                "time/to_default_stop_cpu_s": None,
                "ended": None,
            }
        )
    if rows[-1]["health/stop"] == 1.0:
        for row in rows:
            row["ended"] = f"stopped: {rows[-1]['health/diagnosis']} at epoch {rows[-1]['epoch']}"
    return Run(cid, 0, dict(config), rows)


@pytest.fixture(scope="module")
def recovered(table) -> dict[str, Run]:
    """The failing configurations' recovered runs: p1 and f1 recover from diverged at their first
    epoch and run to the end (f1 better than the table's best), f2 recovers from stalled at epoch
    3, stalls again at 4 and stops (its recoveries spent)."""
    healthy = [(e, 0.02 * e, "") for e in range(1, 7)]
    return {
        "p1": make_recovered_run("p1", table["p1"].config, [(1, 0.0, "recover:diverged"), *healthy]),
        "f1": make_recovered_run(
            "f1", table["f1"].config, [(1, 0.0, "recover:diverged"), *[(e, 0.04 * e, "") for e in range(1, 7)]]
        ),
        "f2": make_recovered_run(
            "f2",
            table["f2"].config,
            [(1, 0.003, ""), (2, 0.002, ""), (3, 0.001, "recover:stalled"), (3, 0.002, ""), (4, 0.001, "stop:stalled")],
        ),
    }


def test_recover_strategy_replays_the_recovered_runs(table, recovered):
    """A failing configuration is answered by its recovered run: all its reports arrive and cost
    their seconds, the searcher is told the penalty (COMPLETE), the run is kept and its AP found;
    one that stopped after spending its recoveries is stopped there by the health stopper."""
    strategy = Strategy("random", asha=False, health=True, recover=True)
    assert strategy.name == "random+recover" and STRATEGIES["tpe+recover+asha"].recover
    trace = replay(SPACE, NearestSurrogate(SPACE, table), strategy, seed=1, budget_s=400.0, workers=1, recovered=recovered)
    study = optuna_study(trace.searcher)
    by_run: dict[str, list] = {}
    for trial, ot_trial in zip(trace.trials, study.trials):
        by_run.setdefault(trial.run.config_id, []).append((trial, ot_trial))
        assert trial.recovered == (trial.run.config_id in recovered)
        if trial.recovered:
            assert trial.run is recovered[trial.run.config_id]  # not the stopping run of the table
    p1, p1_study = by_run["p1"][0]
    assert p1.outcome == "recovered:diverged" and p1.epochs == 7  # the replayed epoch 1 included
    assert p1.cost == pytest.approx(recovered["p1"].full_seconds())  # every report's recorded seconds
    assert p1.ap == pytest.approx(0.12)
    # The searcher: the penalty from the recovery on, COMPLETE; reports counted as Tune counts them.
    assert p1_study.state == optuna.trial.TrialState.COMPLETE and p1_study.value == -1.0
    assert p1_study.intermediate_values == dict.fromkeys(range(1, 8), -1.0)
    assert "f2" in by_run and "f1" in by_run, "the seed should propose the failing region"
    for trial, ot_trial in by_run["f2"]:
        if trial.outcome != "running":
            assert trial.outcome == "health:stalled@4" and trial.epochs == 5
            assert trial.cost == pytest.approx(recovered["f2"].full_seconds())
            assert ot_trial.state == optuna.trial.TrialState.COMPLETE and ot_trial.value == -1.0
    # The recovered f1 (0.24) is kept: the best found, above the table's best b (0.15).
    f1_done = [t for t, _ in by_run["f1"] if t.outcome == "recovered:diverged"]
    assert f1_done and trace.incumbent[-1][1:] == (pytest.approx(0.24), "f1")
    stats = trace_stats(trace, 0.15, "b")
    assert stats["outcomes"]["recovered"] == sum(t.outcome.startswith("recovered") for t in trace.trials)
    assert stats["best_is_recovered"] and stats["recovered_best_ap"] == pytest.approx(0.24)
    assert stats["recovered_share"] == pytest.approx(sum(t.cost for t in trace.trials if t.recovered) / 400.0)
    # Without recovery the same seed's p1 is stopped at its first step check.
    plain = replay(SPACE, NearestSurrogate(SPACE, table), STRATEGIES["random+health"], seed=1, budget_s=400.0, workers=1)
    assert plain.trials[1].outcome == "health:diverged@1" and plain.trials[1].epochs == 1


def test_recover_with_asha_judges_the_raw_metric_and_skips_the_rolled_back_epoch(table, recovered):
    """ASHA judges a recovered trial on raw/val/ap (its metric is the penalty) and does not judge the
    report of an epoch a recovery rolled back (hpo.stopping.RecoveryAwareASHA): one that recovers at
    epoch 6, max_t, goes on through its replayed epochs instead of ending there."""
    late = make_recovered_run(
        "p1",
        table["p1"].config,
        [(1, 0.0, "recover:diverged"), *[(e, 0.03 * e, "") for e in range(1, 6)], (6, 0.0, "recover:background-collapse")]
        + [(e, 0.01 * e, "") for e in range(1, 7)],
    )
    trace = replay(
        SPACE,
        NearestSurrogate(SPACE, table),
        STRATEGIES["random+recover+asha"],
        seed=0,
        budget_s=60.0,
        workers=1,
        recovered={**recovered, "p1": late},
    )
    p0, p1 = trace.trials[:2]
    assert p0.run.config_id == "p0" and p0.outcome == "completed"
    # At rung 2 p1's raw AP 0.06 beats p0's 0.02: kept, though the searcher sees -1 for it.
    assert p1.outcome == "recovered:background-collapse" and p1.epochs == len(late.epochs) == 13
    assert p1.cost == pytest.approx(sum(e["time/epoch_s"] for e in late.epochs))
    assert p1.ap == pytest.approx(0.06)  # the replayed epoch 6, not the rolled-back one's 0
    ot = optuna_study(trace.searcher).trials[1]
    assert ot.state == optuna.trial.TrialState.COMPLETE and ot.value == -1.0
    outcomes = trace_stats(trace, 0.15, "b")["recovered_outcomes"]
    assert outcomes.get("recovered", 0) >= 1 and "recovered on a recovery" not in outcomes


def test_recovered_runs_are_put_on_the_table_clock(table, recovered):
    """The recovered runs' seconds are converted by the epochs both recordings trained before the
    first failure (the same work; identical losses and AP only with the same trainer); every report
    is charged its CPU seconds times the ratio."""
    from bench.tabular.compare import on_table_clock

    converted, clock = on_table_clock(table, recovered)
    # f2's epochs 1 and 2 (p1 and f1 recover in their first epoch); only epoch 1 has the same loss
    # in both: the table's 2.1 and 2.2 s wall, 2.0 s CPU each, against the recovered run's 1.0 s CPU.
    expected = {"paired_epochs": 2, "identical_epochs": 1, "wall_per_recorded_cpu_s": pytest.approx(2.15)}
    assert clock == expected | {"cpu_per_recorded_cpu_s": 2.0}
    for cid, run in converted.items():
        assert [e["time/epoch_s"] for e in run.epochs] == pytest.approx(
            [2.15 * e["time/epoch_cpu_s"] for e in recovered[cid].epochs]
        )
        assert [e["time/recorded_epoch_s"] for e in run.epochs] == [e["time/epoch_s"] for e in recovered[cid].epochs]
    assert recovered["f2"].epochs[0]["time/epoch_s"] == pytest.approx(1.01)  # the recorded runs are left as they are


def test_defaults_sweep_replays_settings_the_validation_rejects(table):
    """``defaults.py``: its settings parse; an ASHA setting is checked by the space's validation
    and its rungs read from Ray's scheduler; a rejected grace period (shorter than the warm-up)
    is replayed all the same on an unchecked copy, and ASHA then judges at epoch 1."""
    from bench.tabular.compare import unchecked_space
    from bench.tabular.defaults import parse_sampler, parse_scheduler, scheduler_check

    assert parse_scheduler("g2r3") == {"grace_period": 2, "reduction_factor": 3, "brackets": 1}
    assert parse_scheduler("g1r4b2") == {"grace_period": 1, "reduction_factor": 4, "brackets": 2}
    assert parse_sampler("tpe:n_startup_trials=10") == ("tpe", ["sampler.n_startup_trials=10"])
    assert parse_sampler("random") == ("random", [])
    raw = SPACE.as_dict()
    sets, rejected, rungs = scheduler_check(raw, parse_scheduler("g2r2b2"))
    assert rejected is None and rungs == [[2, 4], [4]]
    assert sets == ["scheduler.grace_period=2", "scheduler.reduction_factor=2", "scheduler.brackets=2"]
    _, rejected, rungs = scheduler_check(raw, parse_scheduler("g1r3"))
    assert "shorter than the longest warm-up" in rejected and rungs == [[1, 3]]

    grace = SPACE.scheduler.grace_period
    space = unchecked_space(SPACE, [("scheduler.grace_period", 1), ("scheduler.reduction_factor", 3)])
    assert space.scheduler.grace_period == 1 and SPACE.scheduler.grace_period == grace
    trace = replay(
        space, NearestSurrogate(space, table), Strategy("random", asha=True, health=False), seed=0, budget_s=300.0, workers=1
    )
    assert any(t.outcome == "asha@1" for t in trace.trials)
