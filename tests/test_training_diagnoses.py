"""The health monitor on real training runs of the tiny SSD on the generated mini set.

The configurations were found with ``bench/failure_probe.py`` (two seeds each); these tests run
them through the production trainer and assert the diagnosis label.
"""

from pathlib import Path

import pytest

from model.config import TrainConfig
from model.trainer import Trainer

pytestmark = pytest.mark.slow

#: SGD at lr 5 with no warm-up: the loss passes 1e6 x its first value within a few steps.
DIVERGING = {"optim.lr": 5.0, "schedule.warmup_iters": 0}
#: The study's early-stage avoidance: box loss weighted 10:1 over classification, 30 mined
#: negatives per positive and no warm-up. Classification loss settles at the value of scoring
#: every anchor alike and the top face score falls from ~1 to the prior.
COLLAPSING = {"loss.box_weight": 10.0, "loss.neg_pos_ratio": 30.0, "schedule.warmup_iters": 0}
#: The defaults with a one-epoch warm-up, so the monitor judges the epochs that follow.
HEALTHY = {"schedule.warmup_iters": 25}


def _trainer(root: Path, epochs: int, overrides: dict) -> Trainer:
    cfg = TrainConfig().with_overrides(
        {"data.root": str(root), "data.cache_dir": str(root.parent / "cache"), "epochs": epochs, **overrides}
    )
    return Trainer(cfg, log=lambda _: None)


def test_a_diverging_run_is_stopped_within_a_few_steps(full_mini: Path) -> None:
    trainer = _trainer(full_mini, 3, DIVERGING)
    report = trainer.run_epoch()
    verdict = trainer.monitor.verdict
    assert verdict.diagnosis == "diverged" and verdict.stop
    assert report["health/diagnosis"] == "diverged" and report["health/stop"] == 1.0
    # Stopped at the first step checks, long before the end of the 25-step epoch.
    assert verdict.step is not None and verdict.step <= 2 * trainer.cfg.health.check_every_steps
    assert trainer.global_step == verdict.step
    assert trainer.finished


def test_a_collapsing_run_is_stopped_as_background_collapse(full_mini: Path) -> None:
    trainer = _trainer(full_mini, 10, COLLAPSING)
    reports = trainer.fit()
    verdict = trainer.monitor.verdict
    assert verdict.diagnosis == "background-collapse" and verdict.stop, verdict
    assert len(reports) < 10  # stopped before the end
    assert reports[-1]["val/ap"] <= 0.01
    assert max(r["val/top_score"] for r in reports) > 2 * reports[-1]["val/top_score"]


def test_a_sensible_run_improves_and_is_never_flagged(full_mini: Path) -> None:
    trainer = _trainer(full_mini, 6, HEALTHY)
    reports = trainer.fit()
    assert len(reports) == 6
    assert [r["health/diagnosis"] for r in reports] == ["healthy"] * 6
    assert trainer.monitor.history() == []
    # The monitor did judge these epochs: its first epoch verdict comes after warm-up + grace.
    assert trainer.monitor.first_verdict_epoch <= 4
    assert reports[-1]["val/ap"] > 0.02 and reports[-1]["val/ap"] > 3 * reports[0]["val/ap"]
