"""Recovery (model/recovery.py) on the real mini set: a diverging run is rolled back and goes on,
the event is reported and saved, the budget ends it, and a resume after a recovery is exact."""

import json
import math
from pathlib import Path

import pytest
import torch
from test_trainer import DIVERGING, small_cfg

from model.callbacks import Checkpointing
from model.config import ConfigError, ScheduleConfig, TrainConfig
from model.health import DEFAULT_INTERVENTIONS, Intervention, Verdict
from model.recovery import choose_factor, describe
from model.trainer import Trainer

#: The fixed factor (lr x0.01), without the LR probe the default table runs for ``diverged``.
RECOVER = {
    **DIVERGING,
    "health.on_failure": "recover",
    "health.check_every_steps": 1,
    "health.interventions.diverged.lr_probe.enabled": False,
}


def quiet(cfg: TrainConfig, **kw) -> Trainer:
    return Trainer(cfg, log=lambda _: None, **kw)


def test_a_diverging_run_is_rolled_back_and_continues_with_a_finite_loss(mini_root: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    trainer = Trainer(small_cfg(mini_root, epochs=2, **RECOVER), log=lines.append, callbacks=[Checkpointing(tmp_path)])
    reports = trainer.fit()
    failed, *after = reports
    assert failed["health/diagnosis"] == "diverged" and failed["health/stop"] == 0.0  # recovered, not stopped
    assert failed["health/recoveries"] == 1.0 and "rollback to epoch 0" in failed["health/recovery"]
    assert "optim.lr 5.0 -> 0.05" in failed["health/recovery"]
    assert any(line.startswith("recovery 1/2: diverged") for line in lines)
    assert [r["epoch"] for r in after] == [1, 2] and not trainer.stopped  # epoch 1 replayed from the snapshot
    assert all(math.isfinite(r["train/loss"]) and r["health/recovery"] == "" for r in after)
    assert after[-1]["health/recoveries"] == 1.0
    (event,) = trainer.recovery_events()
    assert event["snapshot_step"] == 0 and event["failed_epoch"] == 1 and event["skipped_batches"]
    # The effective config (a restart with the fix) and the events are saved beside last.pt.
    saved = TrainConfig.model_validate(__import__("yaml").safe_load((tmp_path / "effective_config.yaml").read_text()))
    assert saved.optim.lr == 0.05 and saved.schedule.warmup_iters == 100  # the default fresh warm-up
    assert json.loads((tmp_path / "recoveries.json").read_text()) == [event]
    assert torch.load(tmp_path / "last.pt", weights_only=False)["config"]["optim"]["lr"] == 5.0  # what was started


def test_a_spent_budget_stops_the_run_as_without_recovery(mini_root: Path) -> None:
    # An intervention that changes nothing: the run diverges again and the budget of 1 runs out.
    same = {"health.interventions": {"diverged": {"action": "rollback"}}, "health.max_recoveries": 1}
    trainer = quiet(small_cfg(mini_root, epochs=3, **RECOVER, **same))
    reports = trainer.fit()
    assert [r["health/recoveries"] for r in reports] == [1.0, 1.0]
    assert reports[-1]["health/stop"] == 1.0 and trainer.stopped and trainer.monitor.verdict.diagnosis == "diverged"
    none = quiet(small_cfg(mini_root, epochs=3, **RECOVER, **{"health.max_recoveries": 0}))
    assert len(none.fit()) == 1 and none.stopped


@pytest.fixture(scope="module")
def uninterrupted(mini_root: Path) -> tuple[Trainer, dict]:
    straight = quiet(small_cfg(mini_root, epochs=2, **RECOVER))
    return straight, straight.fit()[-1]


@pytest.mark.parametrize("interrupt_after", [1, 2])  # right after the recovery; after the replayed epoch
def test_a_run_checkpointed_after_a_recovery_resumes_exactly(
    mini_root: Path, tmp_path: Path, interrupt_after: int, uninterrupted: tuple[Trainer, dict]
) -> None:
    cfg = small_cfg(mini_root, epochs=2, **RECOVER)
    straight, expected = uninterrupted

    first = quiet(cfg)
    for _ in range(interrupt_after):
        first.run_epoch()
    assert first.recovery_events()
    first.save_checkpoint(tmp_path / "last.pt")
    del first

    resumed = quiet(cfg)  # built from the start config, as `model.train --resume` does
    resumed.load_checkpoint(tmp_path / "last.pt")
    assert resumed.effective_config().optim.lr == 0.05
    last = resumed.fit()[-1]
    for key in ("train/loss", "train/loss_cls", "train/grad_norm", "train/lr", "val/ap", "step", "health/recoveries"):
        assert last[key] == expected[key], key
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"health.interventions": {"exploded": {}}}, "health.interventions.exploded"),
        ({"health.max_recoveries": -1}, "health.max_recoveries"),
        ({"health.interventions.diverged.lr_probe.steps": 1}, "health.interventions.diverged.lr_probe.steps"),
        ({"health.interventions.stalled.lr_probe.factors": [10.0, -1.0]}, "health.interventions.stalled.lr_probe.factors"),
        ({"health.interventions.diverged.lr_probe.pick": 2.0}, "health.interventions.diverged.lr_probe.pick"),
        ({"health.interventions.diverged.lr_probe.tries": 3}, "health.interventions.diverged.lr_probe.tries"),
    ],
)
def test_a_bad_recovery_config_names_the_key(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        TrainConfig().with_overrides(overrides)


def test_an_intervention_caps_the_loss_balance_and_names_each_change(mini_root: Path) -> None:
    """Caps after the factors: at most 3 negatives per positive and a box weight at most the class
    weight; a value already within its cap is left out of the changes."""
    caps = {"neg_pos_max": 3.0, "box_class_max": 1.0, "class_weight_factor": 2.0, "warmup_iters": 30}
    trainer = quiet(small_cfg(mini_root, **{"loss.box_weight": 10.0, "loss.neg_pos_ratio": 30.0, "schedule.warmup_iters": 0}))
    changes = trainer.recovery.apply(trainer, Intervention(**caps))
    assert changes == {
        "loss.class_weight": [1.0, 2.0],
        "loss.box_weight": [10.0, 2.0],  # capped at 1 x the new class weight
        "loss.neg_pos_ratio": [30.0, 3.0],
        "schedule.warmup_iters": [0, 30],
    }
    assert (trainer.cfg.loss.box_weight, trainer.cfg.loss.neg_pos_ratio, trainer.cfg.loss.class_weight) == (2.0, 3.0, 2.0)
    within = quiet(small_cfg(mini_root, **{"loss.box_weight": 0.5, "loss.neg_pos_ratio": 2.0}))
    assert within.recovery.apply(within, Intervention(neg_pos_max=3.0, box_class_max=1.0)) == {}


def test_a_fresh_warm_up_inside_the_schedules_own_ramps_once(mini_root: Path) -> None:
    """Rolled back into the schedule's own warm-up, a fresh warm-up of the same length gives that
    ramp again (the lower of the two), not its square; rolled back past it, the fresh ramp
    multiplies the schedule (here its cosine decay). The default fresh warm-up is the schedule's
    default length."""
    assert DEFAULT_INTERVENTIONS["diverged"].warmup_iters == ScheduleConfig().warmup_iters == 100
    trainer = quiet(small_cfg(mini_root, epochs=4, **{"schedule.warmup_iters": 6}))  # 4 steps an epoch
    own = [trainer.scheduler.lr_lambdas[0](step) for step in range(16)]
    trainer.recovery.apply(trainer, Intervention(warmup_iters=6))  # at step 0: inside the own warm-up
    assert [trainer.scheduler.lr_lambdas[0](step) for step in range(16)] == pytest.approx(own)
    trainer.global_step = trainer.scheduler.last_epoch = 8  # past it: the fresh ramp times the decay
    trainer.recovery.apply(trainer, Intervention(warmup_iters=4))
    rewarmed = trainer.scheduler.lr_lambdas[0]
    start = trainer.cfg.schedule.warmup_start_factor
    assert rewarmed(8) == pytest.approx(own[8] * start) and rewarmed(10) == pytest.approx(own[10] * (start + (1 - start) / 2))
    assert rewarmed(12) == pytest.approx(own[12]) and rewarmed(3) == pytest.approx(own[3])


def test_the_untrained_state_is_kept_for_a_rollback_to_the_start(mini_root: Path) -> None:
    """Snapshots: the untrained state and the newest ``health.snapshots`` healthy epochs; a
    ``rollback: start`` intervention goes back to the untrained state, whatever the onset."""
    collapse_entry = "health.interventions.background-collapse"
    overrides = {"health.on_failure": "recover", "health.snapshots": 1, f"{collapse_entry}.neg_pos_max": 1.0}
    trainer = quiet(small_cfg(mini_root, epochs=3, **overrides))
    trainer.fit()
    assert [s["epoch"] for s in trainer.recovery.snapshots] == [0, 3]
    assert trainer.cfg.health.interventions["background-collapse"].rollback == "start"  # the default
    collapse = Verdict("background-collapse", True, evidence={"evaluations": 1}, epoch=3)
    assert trainer.recovery._recover(trainer, collapse)
    (event,) = trainer.recovery_events()
    assert (event["snapshot_epoch"], event["snapshot_step"], trainer.epoch, trainer.global_step) == (0, 0, 0, 0)
    assert event["changes"]["loss.neg_pos_ratio"] == [3.0, 1.0]


@pytest.mark.slow
def test_a_collapsing_run_recovers_through_the_training_command(full_mini: Path, tmp_path: Path) -> None:
    """The zoo's collapse (box weight 10, neg:pos 30, no warm-up) at the demo's sizes, through
    ``python -m model.train``: rolled back to the untrained state with the loss balance capped, it
    trains on; the event and the effective config are beside its checkpoints."""
    from model.train import main

    collapsing = {"loss.box_weight": 10.0, "loss.neg_pos_ratio": 30.0, "schedule.warmup_iters": 0}
    fast = {"health.grace_epochs": 1, "health.collapse_patience": 1, "health.min_span_steps": 0}  # as test_search's e2e
    sizes = {"data.max_train_images": 300, "data.max_val_images": 60, "model.input_size": 160, "batch_size": 8}
    cfg = TrainConfig().with_overrides(
        {"data.root": str(full_mini), "data.cache_dir": str(tmp_path / "cache"), "epochs": 4,
         "health.on_failure": "recover", **collapsing, **fast, **sizes}
    )  # fmt: skip
    config, out = tmp_path / "c.yaml", tmp_path / "run"
    cfg.to_yaml(config)
    main(["--config", str(config), "--out", str(out), "--no-progress", "--threads", "1"])
    first, *_ = json.loads((out / "recoveries.json").read_text())
    assert first["diagnosis"] == "background-collapse" and first["snapshot_epoch"] == 0, first
    assert first["changes"]["loss.box_weight"] == [10.0, 1.0] and first["changes"]["loss.neg_pos_ratio"] == [30.0, 3.0]
    effective = TrainConfig.model_validate(__import__("yaml").safe_load((out / "effective_config.yaml").read_text()))
    assert (effective.loss.box_weight, effective.loss.neg_pos_ratio, effective.schedule.warmup_iters) == (1.0, 3.0, 100)
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    failed = next(i for i, r in enumerate(rows) if r["health/recovery"])
    assert [r["epoch"] for r in rows[failed + 1 :]][:1] == [1]  # trained on, from the start


def test_a_diverging_run_recovers_through_the_training_command(mini_root: Path, tmp_path: Path) -> None:
    """``python -m model.train`` on a configuration that explodes in its first epoch: rolled back
    with the default lr x0.01, it finishes (exit 0) with the event and the effective config beside
    its checkpoints and every later epoch finite."""
    from model.train import main

    cfg = small_cfg(mini_root, epochs=2, **RECOVER)
    config, out = tmp_path / "c.yaml", tmp_path / "run"
    cfg.to_yaml(config)
    assert main(["--config", str(config), "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    (event,) = json.loads((out / "recoveries.json").read_text())
    assert event["diagnosis"] == "diverged" and event["changes"]["optim.lr"] == [5.0, 0.05]
    effective = TrainConfig.model_validate(__import__("yaml").safe_load((out / "effective_config.yaml").read_text()))
    assert effective.optim.lr == 0.05
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert rows[0]["health/diagnosis"] == "diverged" and rows[0]["health/stop"] == 0.0
    assert [r["epoch"] for r in rows[1:]] == [1, 2] and all(math.isfinite(r["train/loss"]) for r in rows[1:])


def test_a_reset_re_initialises_the_class_head_and_drops_optimiser_state(mini_root: Path) -> None:
    """``reset_class_head``/``reset_optimizer``: after the rollback, the classification head's output
    layers are back at the face prior (drawn from the recovery's own seeded generator: two runs get
    the same head) and the optimiser's state is gone; everything else is the snapshot's."""
    entry = "health.interventions.background-collapse"
    overrides = {
        "health.on_failure": "recover",
        f"{entry}.rollback": "onset",
        f"{entry}.reset_class_head": True,
        f"{entry}.reset_optimizer": True,
    }
    heads = []
    for _ in range(2):
        trainer = quiet(small_cfg(mini_root, epochs=1, **overrides))
        trainer.fit()
        snapshot = trainer.recovery.snapshots[-1]
        assert snapshot["epoch"] == 1 and trainer.optimizer.state  # SGD momentum after a trained epoch
        collapse = Verdict("background-collapse", True, evidence={"evaluations": 1}, epoch=2)
        assert trainer.recovery._recover(trainer, collapse)
        (event,) = trainer.recovery_events()
        assert event["snapshot_epoch"] == 1 and event["resets"] == ["class head", "optimizer state"]
        assert "reset class head, reset optimizer state" in trainer.recovery.event_text
        assert not trainer.optimizer.state
        face_bias = math.log(0.01 / 0.99)  # model.prior_prob's default
        for block in trainer.model.head.classification_head.module_list:  # the tiny SSD's: one conv each
            assert torch.allclose(block.bias.view(-1, 2), torch.tensor([0.0, face_bias]))
        head = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if n.startswith("head.classification_head")}
        assert not any(torch.equal(head[n], snapshot["model"][n]) for n in head)
        for name, tensor in trainer.model.state_dict().items():
            if not name.startswith("head.classification_head"):
                assert torch.equal(tensor, snapshot["model"][name]), name
        heads.append(head)
    assert all(torch.equal(heads[0][n], heads[1][n]) for n in heads[0])


def test_a_rollback_skips_snapshots_that_trained_above_the_untrained_loss(mini_root: Path) -> None:
    """A snapshot is a rollback target only if its epoch trained at an unweighted loss below the
    untrained network's: one above it had started to fail, though no check fired."""
    trainer = quiet(small_cfg(mini_root, epochs=2, **{"health.on_failure": "recover"}))
    trainer.fit()
    untrained = trainer.monitor.untrained_loss
    assert untrained is not None and [s["epoch"] for s in trainer.recovery.snapshots] == [0, 1, 2]
    assert all(s["train_loss"] < untrained for s in trainer.recovery.snapshots[1:])  # it learnt
    trainer.recovery.snapshots[2]["train_loss"] = 3 * untrained  # as the zoo's SGD lr 0.3 epoch did
    diverged = Verdict("diverged", True, evidence={}, epoch=3, step=80)
    assert trainer.recovery._recover(trainer, diverged)
    assert trainer.recovery_events()[0]["snapshot_epoch"] == 1  # the newest that learnt


#: The probe on, 4 steps a candidate (the tiny config's epoch is 4 batches).
PROBE = {**RECOVER, "health.interventions.diverged.lr_probe.enabled": True, "health.interventions.diverged.lr_probe.steps": 4}


def test_an_lr_probe_measures_the_learning_rate_after_a_divergence(mini_root: Path) -> None:
    """``lr_probe``: from the restored state each candidate (lr 5 x 1e-4 .. 1e-1) trains 4 steps on
    the batches the run trains on next; the one with the lowest loss that did not blow up, times
    ``pick``, is the new lr, and the event records what was tried. The probe leaves no trace: the
    run goes on exactly as one recovered with the chosen factor fixed."""
    assert TrainConfig().health.interventions["diverged"].lr_probe.enabled  # the default table probes
    assert TrainConfig().health.interventions["stalled"].lr_probe.enabled
    probed = quiet(small_cfg(mini_root, epochs=1, **PROBE))
    after = probed.fit()[-1]
    (event,) = probed.recovery_events()
    probe = event["probe"]
    assert probe["lrs"] == pytest.approx([5e-4, 5e-3, 0.05, 0.5]) and len(probe["losses"]) == 4
    assert probe["losses"][-1] is None  # lr 0.5 from a fresh network on SGD: diverged
    assert probe["chosen_lr"] <= 0.05 and probe["chosen_lr"] in probe["lrs"]
    assert event["changes"]["optim.lr"] == [5.0, pytest.approx(probe["chosen_lr"])]
    assert probe["images"] == 4 * 4 * 8 and all(len(c) == 4 for c in probe["curves"][:-1])
    assert len({c[0] for c in probe["curves"]}) == 1  # the same restored model on the same first batch
    assert f"lr probe 4 steps each (0.0005: {probe['losses'][0]:.3g}" in describe(event) and "0.5: diverged" in describe(event)
    fixed_factor = {"health.interventions.diverged.lr_factor": probe["chosen_factor"]}
    fixed = quiet(small_cfg(mini_root, epochs=1, **RECOVER, **fixed_factor))
    expected = fixed.fit()[-1]
    for key in ("train/loss", "train/grad_norm", "train/lr", "val/ap", "step"):
        assert after[key] == expected[key], key
    for name, tensor in fixed.model.state_dict().items():
        assert torch.equal(tensor, probed.model.state_dict()[name]), name


def test_a_run_checkpointed_after_a_probing_recovery_resumes_exactly(mini_root: Path, tmp_path: Path) -> None:
    cfg = small_cfg(mini_root, epochs=2, **PROBE)
    straight = quiet(cfg)
    expected = straight.fit()[-1]
    first = quiet(cfg)
    first.run_epoch()  # diverges, recovers with the probe
    assert "lr probe" in first.recovery.event_text and first.recovery_events()[0]["probe"]["chosen_lr"] <= 0.5
    first.save_checkpoint(tmp_path / "last.pt")
    del first
    resumed = quiet(cfg)
    resumed.load_checkpoint(tmp_path / "last.pt")
    last = resumed.fit()[-1]
    for key in ("train/loss", "train/grad_norm", "train/lr", "val/ap", "step", "health/recoveries"):
        assert last[key] == expected[key], key
    assert resumed.recovery_events() == straight.recovery_events()
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


@pytest.mark.parametrize(
    ("losses", "rule", "expected"),
    [
        ([9.3, 8.63, 9.2, None], "lowest-loss", (1e3, "lowest loss")),  # the zoo's stall, seed 2
        ([9.3, 8.63, 9.2, None], "below-divergence", (1e4, "below the first divergence")),
        ([8.41, 7.95, 15.9, 30.0], "below-divergence", (1e5, "below the first divergence")),  # none diverged: the largest
        ([None, 8.0, 7.0, 9.0], "below-divergence", (1e4, "lowest loss")),  # the smallest diverged: no stable range
        ([7.0, 7.0, None, None], "lowest-loss", (1e2, "lowest loss")),  # a tie: the smaller lr
        ([None, None, None, None], "below-divergence", (None, "")),
    ],
)
def test_the_probe_picks_by_its_rule(losses: list, rule: str, expected: tuple) -> None:
    assert choose_factor([1e2, 1e3, 1e4, 1e5], losses, rule) == expected
