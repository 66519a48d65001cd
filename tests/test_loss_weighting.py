"""Dynamic loss weighting (model/loss_weighting.py): uncertainty weights are learnt and reported,
the loss-ratio controller holds the weighted parts' ratio at its target, fixed weights stay put."""

import statistics
from pathlib import Path

import pytest
import torch
from test_trainer import small_cfg

from model.callbacks import Callback, StepResult
from model.loss_weighting import LossWeighting
from model.trainer import Trainer


class WeightedParts(Callback):
    def __init__(self) -> None:
        self.ratios: list[float] = []

    def on_train_step_end(self, trainer: Trainer, step: StepResult) -> None:
        cls, box = float(step.losses["loss_cls"]), float(step.losses["loss_box"])
        cw, bw = (float(torch.as_tensor(w).detach()) for w in (step.class_weight, step.box_weight))
        self.ratios.append(bw * box / (cw * cls))


class LastWeights(Callback):
    def on_train_step_end(self, trainer: Trainer, step: StepResult) -> None:
        self.weights = tuple(float(torch.as_tensor(w).detach()) for w in (step.class_weight, step.box_weight))
        self.log_vars = trainer.loss_weighting.log_vars.detach().clone()  # after this step's update


def test_uncertainty_weights_are_learnt_and_reported(mini_root: Path) -> None:
    cfg = small_cfg(mini_root, epochs=1, **{"weighting.method": "uncertainty", "loss.box_weight": 2.0})
    last = LastWeights()
    trainer = Trainer(cfg, log=lambda _: None, callbacks=[last])
    assert any(p is trainer.loss_weighting.log_vars for g in trainer.optimizer.param_groups for p in g["params"])
    report = trainer.run_epoch()
    s = trainer.loss_weighting.log_vars.detach()
    assert (s.abs() > 1e-3).all()  # both moved from 0 in 4 steps
    # The report's weights are those the last step applied: the configured weight times exp(-s).
    assert (report["train/class_weight"], report["train/box_weight"]) == pytest.approx(last.weights, rel=1e-6)
    assert report["train/class_weight"] != 1.0 and report["train/box_weight"] != 2.0
    assert float(torch.exp(-s[0])) == pytest.approx(trainer.loss_weighting.weights({}, 1.0, 2.0)[0].item())
    state = trainer.state_dict()["loss_weighting"]
    assert torch.equal(state["log_vars"], s)  # in the checkpoint: a resume continues with them


def test_the_loss_ratio_controller_holds_the_weighted_parts_at_the_target(mini_root: Path) -> None:
    parts = WeightedParts()
    cfg = small_cfg(
        mini_root, epochs=2, **{"weighting.method": "loss_ratio", "loss.box_weight": 3.0, "weighting.ratio_momentum": 0.5}
    )
    report = Trainer(cfg, log=lambda _: None, callbacks=[parts]).fit()[-1]
    assert parts.ratios[0] == pytest.approx(3.0)  # the first step sets the running means
    assert statistics.median(parts.ratios) == pytest.approx(3.0, rel=0.25)
    assert report["train/class_weight"] == 1.0 and report["train/box_weight"] != 3.0


def test_the_controller_tracks_a_drifting_box_loss() -> None:
    weighting = LossWeighting("loss_ratio", ratio_momentum=0.9)
    ratios = []
    for step in range(200):  # the box loss falls 10x, as it does in training, with batch noise
        noise = 1 + 0.2 * ((step * 7919) % 11 - 5) / 5
        losses = {"loss_cls": torch.tensor(4.0), "loss_box": torch.tensor(2.0 * 0.1 ** (step / 200) * noise)}
        cw, bw = weighting.weights(losses, 1.0, 0.5)
        ratios.append(float(bw * losses["loss_box"] / (cw * losses["loss_cls"])))
    # The running means lag a falling loss by ~1 / (1 - momentum) steps: ~11 % low here, where
    # fixed weights would have let the ratio fall 10x (0.25 -> 0.025).
    assert statistics.median(ratios[20:]) == pytest.approx(0.5, rel=0.15)
    assert min(ratios[20:]) > 0.3


def test_fixed_weights_are_the_configured_ones_as_floats(mini_root: Path) -> None:
    trainer = Trainer(small_cfg(mini_root, epochs=1, **{"loss.box_weight": 2.0}), log=lambda _: None)
    assert len(trainer.optimizer.param_groups) == 2 and not list(trainer.loss_weighting.parameters())
    losses = {"loss_cls": torch.tensor(3.0), "loss_box": torch.tensor(1.0)}
    assert trainer.loss_weighting.weights(losses, 1.0, 2.0) == (1.0, 2.0)
    report = trainer.run_epoch()
    assert (report["train/class_weight"], report["train/box_weight"]) == (1.0, 2.0)


@pytest.mark.parametrize("method", ["uncertainty", "loss_ratio", "fixed"])
def test_the_monitor_judges_the_loss_at_the_configured_weights(mini_root: Path, method: str) -> None:
    """A dynamic weighting moves its own weights; the health monitor's stall, overfitting and
    explosion checks read the parts at the configured weights (with fixed weights: the loss minimised)."""

    class Seen(Callback):
        def on_train_step_end(self, trainer: Trainer, step: StepResult) -> None:
            self.minimised = float(step.losses["loss"])
            self.parts = float(step.losses["loss_cls"]), float(step.losses["loss_box"])

    cfg = small_cfg(mini_root, epochs=1, **{"weighting.method": method, "loss.box_weight": 2.0, "health.check_every_steps": 1})
    seen = Seen()
    trainer = Trainer(cfg, log=lambda _: None, callbacks=[seen])
    trainer.run_epoch()
    judged = trainer.monitor.state_dict()["recent"][-1][3]  # [step, epoch, loss_cls, loss] of the last check
    cls, box = seen.parts
    assert judged == pytest.approx(1.0 * cls + 2.0 * box, rel=1e-5)
    if method == "fixed":
        assert judged == pytest.approx(seen.minimised, rel=1e-6)
    else:
        assert abs(judged - seen.minimised) > 1e-3 * judged  # the weights moved: the minimised loss differs
