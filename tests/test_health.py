"""The health monitor on synthetic curves shaped like real mini-set runs (no training here).

Each failure label is raised on its own kind of sequence, at the expected check, and never on
healthy-looking sequences (noise, a warm-up bump, isolated gradient spikes, a slow starter whose
scores stay below the evaluation threshold for many epochs).
"""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
from pydantic import ValidationError

from model.health import (
    LABELS,
    MIN_IMAGES_FOR_SPREAD,
    HealthConfig,
    HealthMonitor,
    Verdict,
    constant_predictor_cls_loss,
)

EVERY = 5  # check_every_steps in these tests
IPE = 25  # iterations per epoch (400 mini images, batch 16)


def monitor(warmup_iters: int = 100, iters_per_epoch: int = IPE, prior_cls_loss: float | None = None, **cfg) -> HealthMonitor:
    return HealthMonitor(
        HealthConfig(check_every_steps=EVERY, **cfg),
        warmup_iters=warmup_iters,
        iters_per_epoch=iters_per_epoch,
        prior_cls_loss=prior_cls_loss,
    )


# -- synthetic step curves --------------------------------------------------------------------------


def healthy_steps(seed: int, n: int = 1500, warmup: int = 100) -> dict[str, np.ndarray]:
    """Loss decaying 14 -> ~5 with 15% noise and a bump while the learning rate peaks after warm-up;
    gradient norms around 4 with isolated x30 spikes; now and then a batch without positives."""
    rng = np.random.default_rng(seed)
    t = np.arange(1, n + 1)
    base = 5.0 + 9.0 * np.exp(-t / 60.0)
    bump = 1.0 + 0.4 * np.exp(-(((t - 1.5 * warmup) / 40.0) ** 2))
    loss = base * bump * rng.lognormal(0.0, 0.15, n)
    cls_part = rng.uniform(0.4, 0.6, n)
    grad = 4.0 * rng.lognormal(0.0, 0.3, n)
    spikes = rng.choice(n, size=n // 100, replace=False)
    grad[spikes] *= 30.0
    num_pos = rng.poisson(250, n).astype(float)
    num_pos[rng.choice(n, size=n // 50, replace=False)] = 0.0
    return {
        "loss": loss,
        "loss_cls": loss * cls_part,
        "loss_box": loss * (1 - cls_part),
        "grad_norm": grad,
        "num_pos": num_pos,
    }


def feed_steps(mon: HealthMonitor, curves: dict[str, np.ndarray], start: int = 1, step_one: bool = False) -> list[Verdict]:
    """Call check_step at every EVERY-th global step, as the trainer does (and at step 1 too with
    ``step_one``: the trainer checks the untrained network's loss); stop at a stopping verdict."""
    verdicts = []
    for i in range(len(curves["loss"])):
        step = start + i
        if step % EVERY and not (step_one and step == 1):
            continue
        v = mon.check_step(step, (step - 1) // IPE + 1, **{k: float(curves[k][i]) for k in curves})
        verdicts.append(v)
        if v.stop:
            break
    return verdicts


def first_problem(verdicts: list[Verdict]) -> Verdict | None:
    return next((v for v in verdicts if v.diagnosis != "healthy"), None)


# -- synthetic epoch curves -------------------------------------------------------------------------


def epoch_metrics(
    ap: float,
    top: float,
    *,
    precision: float = 0.0,
    recall: float = 0.0,
    fp_per_image: float = 0.0,
    dets: float | None = None,
    loss: float = 6.0,
    loss_cls: float = 3.0,
    spread: float | None = None,
    images: int = 100,
) -> dict[str, float]:
    num_gt = 500
    tp = round(recall * num_gt)
    fp = fp_per_image * images
    return {
        "train/loss": loss,
        "train/loss_cls": loss_cls,
        "train/loss_box": loss - loss_cls,
        "train/grad_norm": 4.0,
        "train/pos_anchors_per_image": 16.0,
        "train/lr": 0.01,
        "val/ap": ap,
        "val/precision": precision,
        "val/recall": recall,
        "val/tp": float(tp),
        "val/fp": float(fp),
        "val/fn": float(num_gt - tp),
        "val/mean_iou": 0.6 if tp else 0.0,
        "val/num_gt": float(num_gt),
        "val/num_images": float(images),
        "val/detections_per_image": (tp + fp) / images if dets is None else dets,
        "val/top_score": top,
        **({} if spread is None else {"val/top_score_spread": spread}),
    }


def slow_starter(epochs: int = 20, seed: int = 0) -> list[dict[str, float]]:
    """Slower than the real healthy runs: AP ~0.001 -> 0.008 over the first five epochs, no detection
    above 0.5 for ten (top score creeping up from 0.1), the classification loss bumping up while the
    learning rate peaks; then AP 0.3 with +-5 % noise."""
    rng = np.random.default_rng(seed)
    out = []
    for e in range(1, epochs + 1):
        ap = 0.001 * 1.7 ** (e - 1) * rng.uniform(0.85, 1.15) if e <= 11 else 0.3 * rng.uniform(0.95, 1.05)
        top = min(0.9, 0.08 + 0.045 * e) * rng.uniform(0.9, 1.1)
        recall = 0.0 if top < 0.5 else min(0.4, 0.03 * (e - 10))
        loss_cls = 3.7 - 0.07 * e + (0.5 if e in (3, 4, 5) else 0.0)
        precision = 0.6 if recall else 0.0
        out.append(epoch_metrics(ap, top, recall=recall, precision=precision, loss=loss_cls * 2.0, loss_cls=loss_cls))
    return out


def feed_epochs(mon: HealthMonitor, reports: list[dict[str, float]], first_epoch: int = 1) -> list[Verdict]:
    verdicts = []
    for i, report in enumerate(reports):
        v = mon.check_epoch(first_epoch + i, report)
        verdicts.append(v)
        if v.stop:
            break
    return verdicts


# -- configuration ----------------------------------------------------------------------------------


def test_config_rejects_unknown_keys_and_labels() -> None:
    with pytest.raises(ValidationError, match="explosion_factr"):
        HealthConfig(explosion_factr=10)
    with pytest.raises(ValidationError, match="stop_on"):
        HealthConfig(stop_on=["exploded"])
    with pytest.raises(ValidationError, match="stop_on"):
        HealthConfig(stop_on=["healthy"])  # healthy never stops a run
    cfg = HealthConfig()
    with pytest.raises(ValidationError):
        cfg.stop_on = ["divergd"]  # assignment is validated too
    with pytest.raises(ValidationError):
        HealthConfig(check_every_steps=0)
    assert set(cfg.stop_on) <= set(LABELS[1:]) and "diverged" in cfg.stop_on


def test_every_threshold_is_documented() -> None:
    """Each field carries a docstring, surfaced as its description (for docs and search spaces)."""
    undocumented = [name for name, f in HealthConfig.model_fields.items() if not (f.description or "").strip()]
    assert undocumented == []


# -- step checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_healthy_steps_are_never_flagged(seed: int) -> None:
    mon = monitor()
    verdicts = feed_steps(mon, healthy_steps(seed))
    assert len(verdicts) == 1500 // EVERY
    assert all(v.diagnosis == "healthy" and not v.stop for v in verdicts)
    assert mon.history() == [] and mon.verdict.diagnosis == "healthy"


@pytest.mark.parametrize("k", [1, 4, 5, 6, 23, 301])
def test_nan_at_step_k_is_caught_at_the_first_check_after_k(k: int) -> None:
    curves = healthy_steps(0, n=400)
    curves["loss"][k - 1 :] = math.nan
    verdict = first_problem(feed_steps(monitor(), curves))
    assert verdict is not None and verdict.diagnosis == "diverged" and verdict.stop
    assert verdict.step == math.ceil(k / EVERY) * EVERY
    assert verdict.signal == "non-finite loss"
    assert "nan" in verdict.message()


def test_infinite_gradient_norm_is_divergence() -> None:
    curves = healthy_steps(1, n=100)
    curves["grad_norm"][60:] = math.inf
    verdict = first_problem(feed_steps(monitor(), curves))
    assert verdict is not None and (verdict.diagnosis, verdict.step) == ("diverged", 65)
    assert verdict.signal == "non-finite gradient norm"


@pytest.mark.parametrize("onset", [3, 40, 700])
def test_explosion_is_caught_within_a_few_checks(onset: int) -> None:
    """Loss 84 -> 1.7e13 -> NaN in three steps on SSD300: here x8 per step, staying finite."""
    curves = healthy_steps(2, n=onset + 200)
    growth = 8.0 ** np.arange(1, 201)
    curves["loss"][onset:] = curves["loss"][onset] * growth
    curves["grad_norm"][onset:] *= growth
    verdict = first_problem(feed_steps(monitor(max_loss=1e30), curves))
    assert verdict is not None and verdict.diagnosis == "diverged" and verdict.stop
    assert verdict.signal == "loss explosion"
    assert onset < verdict.step <= onset + 3 * EVERY
    reference = verdict.evidence["reference"]
    assert verdict.evidence["loss"] > 100 * reference
    if onset > EVERY * HealthConfig().reference_checks:
        assert 5 < reference < 30  # the early median, not inflated by the explosion
    message = verdict.message()
    assert message.startswith(f"diverged at step {verdict.step} (epoch ")
    assert "loss explosion" in message
    assert f"{verdict.evidence['loss']:.3g}" in message and f"{reference:.3g}" in message


def test_a_loss_above_the_ceiling_is_divergence_even_at_the_first_check() -> None:
    curves = healthy_steps(2, n=50)
    curves["loss"][3:] = 1.7e13
    verdict = first_problem(feed_steps(monitor(), curves))
    assert verdict is not None and verdict.step == EVERY and verdict.signal == "loss above its ceiling"
    assert "1.7e+13" in verdict.message()


def test_one_bad_early_value_does_not_poison_the_reference() -> None:
    curves = healthy_steps(3, n=300)
    curves["loss"][EVERY - 1] = 5000.0  # the very first check sees a freak value (below the ceiling)
    curves["loss"][200:] = 3000.0  # later: ~200x the true early loss, but below the freak value
    verdict = first_problem(feed_steps(monitor(), curves))
    assert verdict is not None and verdict.signal == "loss explosion" and verdict.step == 205
    assert verdict.evidence["reference"] < 30


def test_gradient_spikes_alone_are_not_divergence() -> None:
    curves = healthy_steps(4, n=600)
    curves["grad_norm"][300:340] *= 50.0  # eight checks in a row with a huge gradient norm, flat loss
    assert first_problem(feed_steps(monitor(), curves)) is None


def test_gradient_spike_with_rising_loss_is_divergence() -> None:
    curves = healthy_steps(5, n=600)
    # Loss x4 (far from the x100 explosion) and gradient x40, sustained from step 401.
    curves["loss"][400:] *= 4.0
    curves["grad_norm"][400:] *= 40.0
    verdict = first_problem(feed_steps(monitor(), curves))
    assert verdict is not None and verdict.diagnosis == "diverged"
    assert verdict.signal == "gradient spike with rising loss"
    assert verdict.step == 405 + EVERY  # two checks in a row (spike_patience)
    assert verdict.evidence["grad_norm"] > 10 * verdict.evidence["grad_median"]
    assert "gradient norm" in verdict.message()


def test_no_positive_anchors_for_many_checks_stops_with_the_settings_to_check() -> None:
    curves = healthy_steps(6, n=400)
    curves["num_pos"][100:] = 0.0
    verdict = first_problem(feed_steps(monitor(), curves))
    assert verdict is not None and verdict.diagnosis == "no-positives" and verdict.stop
    assert verdict.step == 100 + HealthConfig().no_positives_checks * EVERY
    assert "data.min_face_size" in verdict.message() and "model.anchor_scales" in verdict.message()


# -- epoch checks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_healthy_slow_starter_is_never_flagged(seed: int) -> None:
    mon = monitor()
    verdicts = feed_epochs(mon, slow_starter(seed=seed))
    assert [v.diagnosis for v in verdicts] == ["healthy"] * 20
    assert mon.history() == []


def test_healthy_run_with_noisy_operating_point_is_never_flagged() -> None:
    """A good run whose P/R at the threshold wobble (few detections) and FP grow with recall."""
    rng = np.random.default_rng(7)
    reports = []
    for e in range(1, 31):
        ap = 0.4 * (1 - math.exp(-e / 6)) + rng.normal(0, 0.008)
        recall = max(0.0, 0.35 * (1 - math.exp(-(e - 3) / 5)) + rng.normal(0, 0.02)) if e > 3 else 0.0
        fp = 0.2 * e**0.5 * rng.uniform(0.7, 1.3)
        precision = recall * 500 / (recall * 500 + fp * 100) if recall else 0.0
        loss = 8.0 * math.exp(-e / 15) + 2.0
        top = min(0.95, 0.2 + 0.05 * e)
        reports.append(epoch_metrics(ap, top, precision=precision, recall=recall, fp_per_image=fp, loss=loss, loss_cls=loss / 2))
    mon = monitor()
    assert [v.diagnosis for v in feed_epochs(mon, reports)] == ["healthy"] * 30


def collapsing(epochs: int = 12) -> list[dict[str, float]]:
    """Early-stage avoidance: the top score peaks at 0.3 in epoch 2, then the model stops predicting faces."""
    tops = [0.2, 0.3, 0.22, 0.14, 0.09, 0.06, 0.04, 0.03, 0.02, 0.02, 0.01, 0.01]
    return [epoch_metrics(0.002 if e < 3 else 0.0003, tops[e], loss=1.0, loss_cls=0.5 * 0.85**e) for e in range(epochs)]


def test_background_collapse_is_labelled_once_warm_up_and_grace_are_over() -> None:
    mon = monitor(warmup_iters=2 * IPE)  # warm-up ends with epoch 2; grace 2 -> verdicts from epoch 5
    verdicts = feed_epochs(mon, collapsing())
    stop = verdicts[-1]
    assert [v.diagnosis for v in verdicts[:-1]] == ["healthy"] * (len(verdicts) - 1)
    assert stop.diagnosis == "background-collapse" and stop.stop
    # Epochs 3..: best top after warm-up 0.22 (epoch 3); <= half of it from epoch 5 (0.09): streak 3 at epoch 7.
    assert stop.epoch == 7
    assert stop.evidence["best_top_score"] == pytest.approx(0.22) and stop.evidence["best_top_epoch"] == 3
    message = stop.message()
    assert message.startswith("background-collapse at epoch 7:") and "top face score 0.040" in message


@pytest.mark.parametrize(("warmup_epochs", "grace", "expected"), [(0, 0, 2), (0, 3, 5), (0, 6, 8), (3, 0, 5), (3, 2, 7)])
def test_warm_up_and_grace_delay_epoch_verdicts(warmup_epochs: int, grace: int, expected: int) -> None:
    """A run that never predicts a face from epoch 1, collapse patience 2: the patience counts
    only evaluations after the warm-up (2.5 epochs ends in epoch 3) and the grace."""
    reports = [epoch_metrics(0.0, 0.0, loss_cls=3.0 * 0.8**e) for e in range(10)]
    warmup_iters = round((warmup_epochs - 0.5) * IPE) if warmup_epochs else 0
    mon = monitor(warmup_iters=warmup_iters, grace_epochs=grace, collapse_patience=2, min_span_steps=0)
    verdicts = feed_epochs(mon, reports)
    assert [v.diagnosis for v in verdicts[:-1]] == ["healthy"] * (expected - 1)
    assert verdicts[-1].diagnosis == "background-collapse" and verdicts[-1].epoch == expected


def test_a_rising_top_score_below_the_threshold_is_not_collapse() -> None:
    reports = [epoch_metrics(0.0005, 0.06 + 0.03 * e, loss_cls=3.0 - 0.1 * e) for e in range(12)]
    assert all(v.diagnosis == "healthy" for v in feed_epochs(monitor(warmup_iters=0), reports))


def dead(spread: float, images: int = 100, epochs: int = 10) -> list[dict[str, float]]:
    """lr 0.1 without warm-up, seed 0 at 400 images: from step ~56 every anchor of every image
    scores the 1/(k+1) prior ~0.23, above a 0.2 score threshold: hundreds of detections per image,
    AP ~0, the top score neither low nor fallen; only its spread over images says the output is constant."""
    return [
        epoch_metrics(0.0008, 0.2301, dets=180.0, fp_per_image=180.0, loss_cls=2.25, spread=spread, images=images)
        for _ in range(epochs)
    ]


def test_a_dead_network_with_a_constant_output_is_collapse() -> None:
    mon = monitor(warmup_iters=0)
    start_with(mon, [4.6] * 13)  # the loss fell from its start to the prior's level: not a stall
    verdict = feed_epochs(mon, dead(spread=2e-5))[-1]
    assert verdict.diagnosis == "background-collapse" and verdict.stop
    assert verdict.epoch == HealthConfig().grace_epochs + HealthConfig().collapse_patience
    assert verdict.evidence["constant_output"] is True and verdict.evidence["top_score_spread"] == 2e-5
    assert "the same face score for every image" in verdict.message()


@pytest.mark.parametrize(("spread", "images"), [(0.02, 100), (2e-5, MIN_IMAGES_FOR_SPREAD - 1)])
def test_a_constant_looking_output_needs_a_small_spread_over_enough_images(spread: float, images: int) -> None:
    """A network that still gives each image its own top score is weak, not dead; and the spread of
    a handful of images says nothing."""
    mon = monitor(warmup_iters=0)
    start_with(mon, [4.6] * 13)
    assert all(v.diagnosis == "healthy" for v in feed_epochs(mon, dead(spread, images)))


def test_stalled_when_classification_loss_stays_at_its_start() -> None:
    mon = monitor(warmup_iters=0)
    curves = healthy_steps(8, n=3 * IPE)
    curves["loss_cls"][:] = 2.8 * np.random.default_rng(0).lognormal(0, 0.03, 3 * IPE)
    assert first_problem(feed_steps(mon, curves)) is None
    reports = [epoch_metrics(0.0, 0.1, loss_cls=2.75 + 0.02 * (e % 2), loss=6.0) for e in range(8)]
    verdict = feed_epochs(mon, reports)[-1]
    assert verdict.diagnosis == "stalled" and verdict.stop
    assert verdict.epoch == HealthConfig().grace_epochs + HealthConfig().stall_epochs
    assert verdict.evidence["start"] == pytest.approx(2.8, rel=0.1)
    assert "loss_cls" in verdict.message() and "classification loss flat" in verdict.message()


def test_a_loss_flat_at_the_class_prior_is_not_a_stall() -> None:
    """30:1 mining: the constant predictor's loss (4.42) is 80 % of the start (5.5), so a classifier
    that learnt the prior and nothing more sits right at the stall threshold (a CI run read 0.82 of
    its start as stalled). Told the prior's loss, the monitor leaves that run to the collapse check."""
    prior = constant_predictor_cls_loss(30.0)
    assert prior == pytest.approx(4.42, abs=0.01) and constant_predictor_cls_loss(3.0) == pytest.approx(2.25, abs=0.01)
    reports = [epoch_metrics(0.0, 0.9, loss_cls=4.51 + 0.01 * (e % 2), loss=50.0) for e in range(8)]
    for prior_cls_loss, expected in [(None, "stalled"), (prior, "healthy")]:
        mon = monitor(warmup_iters=0, prior_cls_loss=prior_cls_loss)
        start_with(mon, [5.5] * 13)
        assert feed_epochs(mon, reports)[-1].diagnosis == expected
    # A loss well above the prior's, at its start, is still a stall.
    mon = monitor(warmup_iters=0, prior_cls_loss=prior)
    start_with(mon, [5.5] * 13)
    assert feed_epochs(mon, [epoch_metrics(0.0, 0.9, loss_cls=5.4, loss=50.0)] * 8)[-1].diagnosis == "stalled"


def test_avoidance_with_a_flat_classification_loss_is_collapse_not_a_stall() -> None:
    """The real collapse (box weight 10, 30:1 negatives, no warm-up): the top score jumps to 1.0,
    then sinks to ~0.1 while loss_cls flattens at the background prior's loss, 86 % of its start."""
    mon = monitor(warmup_iters=0)
    curves = healthy_steps(13, n=IPE)
    curves["loss_cls"][:] = 5.2
    feed_steps(mon, curves)
    tops = [0.996, 1.0, 0.841, 0.097, 0.113, 0.168, 0.113]
    cls = [5.07, 4.83, 4.64, 4.53, 4.49, 4.47, 4.46]
    aps = [0.0001, 0.0, 0.0, 0.0, 0.0, 0.0026, 0.0023]
    reports = [epoch_metrics(a, t, loss=30 + 5 * c, loss_cls=c) for a, t, c in zip(aps, tops, cls)]
    verdicts = feed_epochs(mon, reports)
    assert [v.diagnosis for v in verdicts] == ["healthy"] * 5 + ["background-collapse"]
    assert verdicts[-1].evidence["top_scores"] == [0.097, 0.113, 0.168]

    # A flat loss near its start with a model that never predicted a face (scores stay at the prior) is a stall.
    mon = monitor(warmup_iters=0)
    feed_steps(mon, curves)
    verdict = feed_epochs(mon, [epoch_metrics(0.0, 0.0, loss_cls=5.1 - 0.02 * e) for e in range(7)])[-1]
    assert verdict.diagnosis == "stalled" and verdict.epoch == 5
    assert verdict.evidence["also"] == ["background-collapse"]


def test_a_flat_but_falling_from_start_loss_is_not_stalled() -> None:
    mon = monitor(warmup_iters=0)
    curves = healthy_steps(9, n=IPE)
    curves["loss_cls"][:] = 6.0
    feed_steps(mon, curves)
    reports = [epoch_metrics(0.0005, 0.1 + 0.04 * e, loss_cls=2.0) for e in range(8)]
    assert all(v.diagnosis == "healthy" for v in feed_epochs(mon, reports))


def good_then(tail: list[dict[str, float]]) -> list[dict[str, float]]:
    """Six good epochs (AP 0.1 -> 0.3, recall up to 0.4, 1 FP/image), then ``tail``."""
    head = [
        epoch_metrics(0.05 * e, 0.6 + 0.04 * e, precision=0.6, recall=0.07 * e, fp_per_image=1.0, loss=8 - e / 2)
        for e in range(1, 7)
    ]
    return head + tail


def late(ap: float, *, precision: float = 0.6, recall: float = 0.42, fp: float = 1.0, loss: float = 5.0) -> dict[str, float]:
    """A validation after the good start (top score 0.9, classification loss 2.5)."""
    return epoch_metrics(ap, 0.9, precision=precision, recall=recall, fp_per_image=fp, loss=loss, loss_cls=2.5)


def fp_surge_tail() -> list[dict[str, float]]:
    """False positives per image 1 -> 2 -> 3.5 -> 6 while precision falls 0.6 -> 0.2 and AP stays."""
    return [late(0.3, precision=p, fp=f) for f, p in ((2.0, 0.45), (3.5, 0.3), (6.0, 0.2))]


def test_fp_surge_warns_and_a_recovery_clears_the_warning() -> None:
    tail = fp_surge_tail()
    recovery = late(0.34, recall=0.45, loss=4.9)
    mon = monitor(warmup_iters=IPE)
    verdicts = feed_epochs(mon, good_then([*tail, recovery]))
    assert [v.diagnosis for v in verdicts] == ["healthy"] * 8 + ["fp-surge", "healthy"]
    warning = verdicts[8]
    assert not warning.stop and warning.evidence["fp_start"] == pytest.approx(1.0) and warning.evidence["fp_end"] == 6.0
    assert mon.verdict.diagnosis == "healthy" and [v.diagnosis for v in mon.history()] == ["fp-surge"]
    assert "FP/image 1.00 -> 6.00" in warning.message()


def test_a_one_off_burst_of_false_positives_is_not_a_surge() -> None:
    """Real healthy runs have bursts (0.2 -> 2.8 FP/image for one epoch, precision 0.10 -> 0.05)."""
    tail = [late(0.3, precision=p, fp=f) for f, p in ((0.2, 0.3), (6.0, 0.05), (0.5, 0.25), (7.0, 0.04))]
    assert all(v.diagnosis == "healthy" for v in feed_epochs(monitor(warmup_iters=IPE), good_then(tail)))


def test_recall_decline_needs_an_absolute_drop_over_several_evaluations() -> None:
    recalls, aps = (0.3, 0.25, 0.2, 0.15, 0.12), (0.3, 0.29, 0.28, 0.27, 0.26)
    falling = [late(a, recall=r) for r, a in zip(recalls, aps)]
    verdicts = feed_epochs(monitor(warmup_iters=IPE), good_then(falling))
    # Running medians of 3: 0.35 at epochs 6-7 is the best; 0.25, 0.2, 0.15 at epochs 9-11 are 0.1 below it.
    assert [v.diagnosis for v in verdicts] == ["healthy"] * 10 + ["recall-decline"]
    assert verdicts[-1].evidence["best_recall"] == pytest.approx(0.35) and not verdicts[-1].stop
    assert "recall (running median) 0.150 below its best 0.350 (epoch 6)" in verdicts[-1].message()

    # The same recall fall while AP keeps rising is the score calibration moving: no warning.
    rising = [late(a, recall=r) for r, a in zip(recalls, (0.31, 0.33, 0.35, 0.37, 0.39))]
    assert all(v.diagnosis == "healthy" for v in feed_epochs(monitor(warmup_iters=IPE), good_then(rising)))

    # Tiny recalls: 0.02 -> 0.005 is a 75 % fall but far below the minimum absolute drop: noise.
    tiny = [late(0.05, recall=r, fp=0.1) for r in (0.0, 0.02, 0.01, 0.005, 0.005, 0.0, 0.005)]
    assert all(v.diagnosis == "healthy" for v in feed_epochs(monitor(warmup_iters=0), tiny))
    without_minimum = feed_epochs(monitor(warmup_iters=0, recall_min_drop=0.0), tiny)
    assert without_minimum[-1].diagnosis == "recall-decline"


def overfitting_tail(loss_trend: float) -> list[dict[str, float]]:
    """After the best AP 0.3 at epoch 6, AP sinks 0.27 -> 0.16 over eight evaluations."""
    aps = (0.27, 0.24, 0.22, 0.2, 0.19, 0.18, 0.17, 0.16)
    return [late(ap, loss=5.0 + loss_trend * (i + 1)) for i, ap in enumerate(aps)]


def test_overfitting_when_val_ap_falls_while_train_loss_falls() -> None:
    verdicts = feed_epochs(monitor(warmup_iters=IPE), good_then(overfitting_tail(-0.1)))
    # Running medians of 3: best 0.27 (epoch 7); 20 % below it from epoch 11 on, four evaluations at epoch 14.
    assert [v.diagnosis for v in verdicts] == ["healthy"] * 13 + ["overfitting"]
    assert verdicts[-1].evidence["best_ap"] == pytest.approx(0.27) and verdicts[-1].evidence["best_epoch"] == 7
    assert not verdicts[-1].stop  # a warning by default
    # The same AP fall with a rising train loss is not overfitting.
    rising_loss = feed_epochs(monitor(warmup_iters=IPE), good_then(overfitting_tail(0.1)))
    assert all(v.diagnosis == "healthy" for v in rising_loss)


def test_missing_metrics_skip_their_checks() -> None:
    mon = monitor(warmup_iters=0)
    for epoch in range(1, 10):
        assert mon.check_epoch(epoch, {"val/ap": 0.0}).diagnosis == "healthy"
        assert mon.check_epoch(epoch + 100, {}).diagnosis == "healthy"


@pytest.mark.parametrize(("loss", "signal"), [(math.inf, "non-finite training loss"), (3.8e6, "training loss above its ceiling")])
def test_a_diverged_epoch_mean_is_caught_even_during_warm_up(loss: float, signal: str) -> None:
    """An epoch shorter than check_every_steps has no step check: its mean loss still counts."""
    v = monitor().check_epoch(1, {**epoch_metrics(0.0, 0.1), "train/loss": loss})
    assert v.diagnosis == "diverged" and v.stop and v.epoch == 1 and v.signal == signal


# -- real curves ------------------------------------------------------------------------------------
# Recorded on the mini set (tiny SSD, 256 px, batch 16, 25 steps/epoch) by bench/failure_probe.py.
# Per epoch: AP, top score, recall, precision, FP/image, detections/image, loss_cls, loss.

REAL_HEALTHY = {
    0: [
        (0.0021, 0.197, 0.0, 0.0, 0.0, 0.0, 3.725, 7.748),
        (0.0027, 0.967, 0.002, 0.002, 4.43, 4.44, 2.998, 6.185),
        (0.0094, 0.826, 0.033, 0.023, 6.87, 7.06, 3.092, 6.12),
        (0.0169, 0.575, 0.004, 0.1, 0.18, 0.2, 3.298, 6.213),
        (0.016, 0.733, 0.029, 0.048, 2.76, 2.9, 3.136, 5.925),
        (0.0378, 0.593, 0.002, 0.2, 0.04, 0.05, 2.947, 5.58),
        (0.082, 0.6, 0.002, 1.0, 0.0, 0.01, 2.763, 5.281),
        (0.0849, 0.635, 0.002, 0.5, 0.01, 0.02, 2.716, 5.062),
        (0.1125, 0.504, 0.002, 1.0, 0.0, 0.01, 2.534, 4.728),
        (0.1531, 0.537, 0.004, 1.0, 0.0, 0.02, 2.451, 4.602),
        (0.1777, 0.458, 0.0, 0.0, 0.0, 0.0, 2.429, 4.559),
        (0.1878, 0.487, 0.0, 0.0, 0.0, 0.0, 2.4, 4.501),
    ],
    1: [
        (0.0053, 0.106, 0.0, 0.0, 0.0, 0.0, 3.772, 7.476),
        (0.0028, 0.939, 0.012, 0.013, 4.52, 4.59, 3.012, 6.238),
        (0.0078, 0.747, 0.029, 0.037, 3.69, 3.83, 3.044, 5.954),
        (0.0192, 0.927, 0.021, 0.061, 1.53, 1.63, 3.222, 5.964),
        (0.0106, 0.694, 0.025, 0.075, 1.49, 1.61, 3.245, 5.926),
        (0.0726, 0.593, 0.012, 0.545, 0.05, 0.11, 2.895, 5.388),
        (0.0779, 0.581, 0.006, 0.3, 0.07, 0.1, 2.73, 4.999),
        (0.1187, 0.47, 0.0, 0.0, 0.0, 0.0, 2.564, 4.796),
        (0.1422, 0.532, 0.0, 0.0, 0.01, 0.01, 2.494, 4.604),
        (0.1603, 0.413, 0.0, 0.0, 0.0, 0.0, 2.44, 4.51),
        (0.2061, 0.444, 0.0, 0.0, 0.0, 0.0, 2.396, 4.424),
        (0.1978, 0.439, 0.0, 0.0, 0.0, 0.0, 2.372, 4.397),
    ],
}
#: Box weight 10, 30:1 negatives, no warm-up: scores sink to the 1/31 prior, AP stays ~0.
REAL_COLLAPSE = [
    (0.0001, 0.996, 0.0, 0.0, 1.0, 1.0, 5.072, 50.828),
    (0.0, 1.0, 0.0, 0.0, 1.26, 1.26, 4.828, 38.193),
    (0.0, 0.841, 0.0, 0.0, 0.09, 0.09, 4.641, 36.269),
    (0.0, 0.097, 0.0, 0.0, 0.0, 0.0, 4.532, 34.877),
    (0.0, 0.113, 0.0, 0.0, 0.0, 0.0, 4.493, 34.121),
    (0.0026, 0.168, 0.0, 0.0, 0.0, 0.0, 4.473, 33.96),
    (0.0023, 0.113, 0.0, 0.0, 0.0, 0.0, 4.46, 33.444),
    (0.0003, 0.457, 0.0, 0.0, 0.0, 0.0, 4.429, 33.048),
]
#: The healthy run's classification loss over its first 25 steps (the start the stall check compares with).
REAL_HEALTHY_START_CLS = [
    4.598,
    4.608,
    4.55,
    4.558,
    4.496,
    4.406,
    4.36,
    4.249,
    4.264,
    3.975,
    3.852,
    3.855,
    3.821,
    3.402,
    3.324,
    3.222,
    3.27,
    3.072,
    3.058,
    3.187,
    2.825,
    2.976,
    3.106,
    3.028,
    3.055,
]
#: AP and train loss of a noisy but still improving run (32 images, no augmentation, constant lr), epochs 30-60.
REAL_NOISY_PLATEAU = [
    (0.0764, 3.197),
    (0.0819, 3.08),
    (0.1054, 2.954),
    (0.1105, 2.783),
    (0.1054, 2.689),
    (0.1221, 2.599),
    (0.1117, 2.501),
    (0.1155, 2.639),
    (0.1254, 2.527),
    (0.1356, 2.39),
    (0.1215, 2.329),
    (0.1198, 2.301),
    (0.1166, 2.393),
    (0.1019, 2.219),
    (0.1072, 2.301),
    (0.0971, 2.19),
    (0.0905, 2.304),
    (0.1128, 2.255),
    (0.1074, 2.048),
    (0.1139, 1.988),
    (0.112, 1.968),
    (0.0952, 1.886),
    (0.1383, 1.781),
    (0.1349, 1.705),
    (0.1006, 1.734),
    (0.1392, 1.569),
    (0.1466, 1.551),
    (0.1209, 1.397),
    (0.1694, 1.552),
    (0.1584, 1.443),
    (0.114, 1.338),
]
#: lr 1 without warm-up: the loss per step (the first check, at step 5, already sees 483).
REAL_DIVERGING_LOSS = [
    8.8,
    491.5,
    3100.8,
    27317.1,
    483.2,
    8243.8,
    2865.1,
    414.2,
    447.1,
    33420.5,
    1856.8,
    14999.9,
    35747.6,
    93299.4,
    1338041.2,
]


def real_reports(rows: list[tuple[float, ...]]) -> list[dict[str, float]]:
    return [
        epoch_metrics(ap, top, recall=r, precision=p, fp_per_image=fp, dets=dets, loss_cls=cls, loss=loss)
        for ap, top, r, p, fp, dets, cls, loss in rows
    ]


def start_with(mon: HealthMonitor, loss_cls: list[float]) -> None:
    """The first step checks of a run whose classification loss per step is ``loss_cls``."""
    curves = healthy_steps(0, n=len(loss_cls))
    curves["loss_cls"] = np.array(loss_cls)
    feed_steps(mon, curves)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("grace", [0, 2])
def test_real_healthy_runs_are_never_flagged(seed: int, grace: int) -> None:
    """Default warm-up (100 steps = 4 epochs); with no grace at all the rules themselves hold too,
    although the top score falls 0.97 -> 0.44 and recall at 0.5 is 0 while AP rises to ~0.2."""
    mon = monitor(warmup_iters=100, grace_epochs=grace)
    start_with(mon, REAL_HEALTHY_START_CLS)
    assert [v.diagnosis for v in feed_epochs(mon, real_reports(REAL_HEALTHY[seed]))] == ["healthy"] * 12


def test_real_collapse_is_labelled_and_stopped() -> None:
    mon = monitor(warmup_iters=0)
    start_with(mon, [5.2] * 13)
    verdicts = feed_epochs(mon, real_reports(REAL_COLLAPSE))
    assert [v.diagnosis for v in verdicts] == ["healthy"] * 5 + ["background-collapse"]
    assert verdicts[-1].stop and verdicts[-1].evidence["best_top_score"] == 1.0


def test_real_divergence_is_caught_at_the_second_check() -> None:
    curves = healthy_steps(0, n=len(REAL_DIVERGING_LOSS))
    curves["loss"] = np.array(REAL_DIVERGING_LOSS)
    verdict = first_problem(feed_steps(monitor(warmup_iters=0), curves))
    assert verdict is not None and verdict.diagnosis == "diverged" and verdict.step == 10
    assert verdict.signal == "loss above its ceiling"  # 69x the first check, which had already exploded


def test_a_real_noisy_plateau_is_not_overfitting() -> None:
    """AP swings by ~20 % between evaluations; single-point rules would call it overfitting."""
    reports = [late(ap, precision=0.5, recall=0.05, fp=0.3, loss=loss) for ap, loss in REAL_NOISY_PLATEAU]
    assert all(v.diagnosis == "healthy" for v in feed_epochs(monitor(warmup_iters=0), reports))
    naive = monitor(warmup_iters=0, smooth_evaluations=1, overfit_rel_drop=0.1, overfit_patience=3)
    assert "overfitting" in [v.diagnosis for v in feed_epochs(naive, reports)]


def test_tiny_epochs_need_more_evaluations() -> None:
    """Two steps an epoch: the grace and the patience stretch to min_span_steps (50) steps."""
    reports = [epoch_metrics(0.0, 0.0, loss_cls=3.0 * 0.98**e) for e in range(60)]
    mon = HealthMonitor(HealthConfig(), warmup_iters=0, iters_per_epoch=2)
    verdicts = feed_epochs(mon, reports)
    assert mon.first_verdict_epoch == 26
    assert verdicts[-1].diagnosis == "background-collapse" and verdicts[-1].epoch == 50
    loose = HealthMonitor(HealthConfig(min_span_steps=0), warmup_iters=0, iters_per_epoch=2)
    assert feed_epochs(loose, reports)[-1].epoch == 5


# -- issue 16, item 4: a rising loss, a stall under warm-up, an AP hovering at the collapse limit ---


def test_labels_keep_their_codes_and_the_new_warning_does_not_stop() -> None:
    """``health/code`` is the index in LABELS: the new label comes last, and it only warns by default."""
    assert LABELS[:8] == (
        "healthy", "diverged", "background-collapse", "stalled", "fp-surge", "recall-decline", "overfitting", "no-positives"
    )  # fmt: skip
    assert LABELS[8] == "near-collapse" and "near-collapse" not in HealthConfig().stop_on
    assert HealthConfig().interventions["near-collapse"] == HealthConfig().interventions["background-collapse"]


def rising_from_the_start(knots: dict[int, float], n: int = 60, untrained: float = 8.0) -> dict[str, np.ndarray]:
    """A loss (both parts alike) rising from the very first step, log-linearly between ``knots``
    (step -> multiple of the untrained loss): SGD at lr 0.3 without warm-up."""
    curves = healthy_steps(14, n=n)
    t = np.arange(1, n + 1)
    steps, factors = zip(*sorted(knots.items()))
    loss = untrained * np.exp(np.interp(t, steps, np.log(factors)))
    curves.update(loss=loss, loss_cls=0.4 * loss, loss_box=0.6 * loss, grad_norm=np.full(n, 4.0))
    return curves


def test_a_loss_rising_from_the_start_is_named_when_it_passes_100x_the_untrained_loss() -> None:
    """The independent zoo's SGD lr 0.3 without warm-up: the checks at steps 1-20 see 1x, 1.6x, 4x,
    9x and 40x the untrained loss, so their low median (the early reference) is 4x; the loss passes
    100x at step 22 and 400x at step 30, where the early reference alone stopped the run."""
    knots = {1: 1.0, 5: 1.6, 10: 4.0, 15: 9.0, 20: 40.0, 22: 100.0, 25: 150.0, 30: 420.0, 60: 1e4}
    curves = rising_from_the_start(knots)
    checked = [curves["loss"][step - 1] for step in (1, 5, 10, 15, 20)]
    assert statistics.median_low(checked) == pytest.approx(4 * 8.0)  # the inflated early reference
    assert curves["loss"][24] < 100 * statistics.median_low(checked) < curves["loss"][29]
    verdict = first_problem(feed_steps(monitor(warmup_iters=0), curves, step_one=True))
    assert verdict is not None and verdict.diagnosis == "diverged" and verdict.stop
    assert verdict.step == 25  # the first check after the loss passed 100x (step 22)
    assert verdict.signal == "loss explosion over the untrained loss"
    assert verdict.evidence["untrained"] == pytest.approx(8.0) and verdict.evidence["unweighted"] > 100 * 8.0
    assert "the untrained network" in verdict.message() and "1.2e+03 > 100 x 8" in verdict.message()


@pytest.mark.parametrize("passes_at", [12, 22, 38])
def test_a_geometric_rise_is_named_at_the_first_check_past_100x(passes_at: int) -> None:
    """From 1x at step 1 to 100x at ``passes_at`` and on at the same rate: named at the next check."""
    curves = rising_from_the_start({1: 1.0, passes_at: 100.0, 2 * passes_at - 1: 1e4}, n=2 * passes_at)
    verdict = first_problem(feed_steps(monitor(warmup_iters=0, max_loss=1e30), curves, step_one=True))
    assert verdict is not None and verdict.diagnosis == "diverged"
    assert verdict.step == (passes_at // EVERY + 1) * EVERY <= passes_at + 2 * EVERY


@pytest.mark.parametrize("seed", range(4))
def test_healthy_steps_checked_from_step_one_are_never_flagged(seed: int) -> None:
    mon = monitor()
    verdicts = feed_steps(mon, healthy_steps(seed), step_one=True)
    assert all(v.diagnosis == "healthy" for v in verdicts) and mon.history() == []
    assert mon.state_dict()["untrained"] == pytest.approx(healthy_steps(seed)["loss"][0])


def test_the_untrained_loss_is_unweighted_and_from_a_batch_with_positives() -> None:
    """A loss-weight ramp from 1 % (``schedule.*_weight_start_factor``) makes the first weighted
    loss ~0.1: as the anchor it would call every healthy loss of 10+ an explosion. A first batch
    without a positive anchor (its loss is the few mined negatives') is no anchor either."""
    curves = healthy_steps(15, n=400)
    ramp = np.minimum(1.0, 0.01 + np.arange(400) / 100)
    curves["loss"] = curves["loss"] * ramp  # the weighted loss; its parts stay unweighted
    curves["num_pos"][0], curves["loss_cls"][0], curves["loss_box"][0] = 0.0, 0.05, 0.0
    mon = monitor()
    assert first_problem(feed_steps(mon, curves, step_one=True)) is None
    first_with_positives = curves["loss_cls"][EVERY - 1] + curves["loss_box"][EVERY - 1]
    assert mon.state_dict()["untrained"] == pytest.approx(first_with_positives)


def test_single_spikes_below_100x_the_untrained_loss_are_not_divergence() -> None:
    """lr 0.1 without warm-up (zoo, seed 2): isolated checks at 10x-38x the untrained loss."""
    curves = healthy_steps(16, n=300)
    for i, factor in ((24, 38.0), (39, 27.0), (54, 14.0), (119, 20.0)):
        for key in ("loss", "loss_cls", "loss_box"):
            curves[key][i] = factor * curves[key][0]
    assert first_problem(feed_steps(monitor(warmup_iters=0), curves, step_one=True)) is None


def test_a_bad_first_check_in_every_part_still_leaves_the_early_reference() -> None:
    """As test_one_bad_early_value_does_not_poison_the_reference, with the parts (the untrained
    anchor) freak too: the anchor is then useless, the early median still catches the explosion."""
    curves = healthy_steps(3, n=300)
    for key, value in (("loss", 5000.0), ("loss_cls", 2000.0), ("loss_box", 3000.0)):
        curves[key][EVERY - 1] = value
    curves["loss"][200:] = 3000.0
    verdict = first_problem(feed_steps(monitor(), curves))
    assert verdict is not None and verdict.signal == "loss explosion" and verdict.step == 205
    assert verdict.evidence["reference"] < 30


MINI_IPE = 37  # cpu-mini: 300 training images, batch 8


def stall_run(
    drift: float, *, ipe: int = MINI_IPE, warmup: int = 100, epochs: int = 12, seed: int = 0, **change
) -> tuple[dict[str, np.ndarray], list[dict[str, float]]]:
    """A run that learns nothing (lr 1e-6 under the default warm-up, whose lr is 1e-8 to 1e-6):
    from the end of the warm-up both loss parts drift down by ``drift`` per epoch (lr 1e-5: ~0.02),
    with the mini set's per-batch noise (classification 2 %, box 13 %); AP ~0.0002, no face above
    the threshold, a top face score creeping from 0.06. ``change`` alters it (see the tests)."""
    n = epochs * ipe
    rng = np.random.default_rng(seed)
    t = np.arange(1, n + 1)
    level = 1.0 - drift * np.maximum(0, t - warmup) / ipe
    box_level = level * (1.0 - change.get("box_fall", 0.0) * np.maximum(0, t - warmup) / (4 * ipe))
    cls = change.get("cls", 4.6) * level * rng.lognormal(0, 0.02, n)
    box = 4.4 * np.maximum(box_level, 0.2) * rng.lognormal(0, 0.13, n)
    curves = {
        "loss": cls + box,
        "loss_cls": cls,
        "loss_box": box,
        "grad_norm": 4.0 * rng.lognormal(0, 0.3, n),
        "num_pos": rng.poisson(120, n).astype(float),
    }
    aps = change.get("aps", [0.0002 * rng.uniform(0.5, 1.5) for _ in range(epochs)])
    tops = change.get("tops", [0.06 + 0.004 * e for e in range(epochs)])
    reports = []
    for e in range(epochs):
        part = slice(e * ipe, (e + 1) * ipe)
        mean_cls, mean_loss = float(cls[part].mean()), float(curves["loss"][part].mean())
        reports.append(epoch_metrics(aps[e], tops[e], loss=mean_loss, loss_cls=mean_cls, images=60))
    return curves, reports


def train(mon: HealthMonitor, curves: dict[str, np.ndarray], reports: list[dict[str, float]], ipe: int) -> list[Verdict]:
    """Steps (checked at step 1 and every EVERY steps) then validation, epoch by epoch, as the
    trainer does; the epoch verdicts, up to the first stop."""
    verdicts = []
    for epoch, report in enumerate(reports, start=1):
        for step in range((epoch - 1) * ipe + 1, epoch * ipe + 1):
            if step % EVERY == 0 or step == 1:
                values = {key: float(curves[key][step - 1]) for key in curves}
                if mon.check_step(step, epoch, **values).stop:
                    return verdicts
        verdicts.append(mon.check_epoch(epoch, report))
        if verdicts[-1].stop:
            break
    return verdicts


def stall_monitor(ipe: int = MINI_IPE, warmup: int = 100, **cfg) -> HealthMonitor:
    return monitor(warmup_iters=warmup, iters_per_epoch=ipe, prior_cls_loss=constant_predictor_cls_loss(3.0), **cfg)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("ipe", "drift"), [(MINI_IPE, 0.002), (MINI_IPE, 0.02), (25, 0.002)])
def test_a_stall_under_the_default_warm_up_is_named_within_three_epochs_after_it(ipe: int, drift: float, seed: int) -> None:
    """The independent zoo: lr 1e-6 under the default 100-step warm-up was named at epoch 9 of 12.
    The step checks since the warm-up name it within three epochs of the warm-up's end."""
    curves, reports = stall_run(drift, ipe=ipe, seed=seed)
    mon = stall_monitor(ipe)
    verdicts = train(mon, curves, reports, ipe)
    stop = verdicts[-1]
    assert stop.diagnosis == "stalled" and stop.stop
    assert [v.diagnosis for v in verdicts[:-1]] == ["healthy"] * (len(verdicts) - 1)
    assert mon.warmup_epochs < stop.epoch <= mon.warmup_epochs + 3
    assert stop.signal == "classification loss flat since the warm-up"
    assert stop.evidence["first_step"] > mon.warmup_epochs * ipe and stop.evidence["fraction"] >= 0.8
    assert "moved" in stop.message() and "after the warm-up" in stop.message()
    # The evaluation-level rule alone waits for the grace and three evaluations after it.
    slow = train(stall_monitor(ipe, stall_window_steps=10**6), curves, reports, ipe)[-1]
    assert slow.diagnosis == "stalled" and slow.epoch >= mon.first_verdict_epoch + 2 > stop.epoch


def test_a_stall_without_warm_up_is_named_within_three_epochs() -> None:
    curves, reports = stall_run(0.02, warmup=0, epochs=6)
    verdict = train(stall_monitor(warmup=0), curves, reports, MINI_IPE)[-1]
    assert verdict.diagnosis == "stalled" and verdict.epoch <= 3


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"aps": [0.0002, 0.0003, 0.0002, 0.0002, 0.005] + [0.004] * 7}, "AP above an untrained detector's"),
        ({"box_fall": 1.2}, "the box part learns: the loss falls to 70 % of its start"),
        ({"cls": 2.3}, "flat at the class prior (3:1, 2.25)"),
        ({"tops": [0.06, 0.3, 0.6, 0.5, 0.2, 0.1, 0.08, 0.06, 0.05, 0.05, 0.05, 0.05]}, "top score fell: collapse"),
    ],
)
def test_the_step_level_stall_spares_runs_that_moved(change: dict, reason: str) -> None:
    """Each exception on its own keeps the step-level rule quiet in the three epochs after the warm-up."""
    curves, reports = stall_run(0.002, **change)
    mon = stall_monitor()
    verdicts = train(mon, curves, reports, MINI_IPE)
    early = [v for v in verdicts if v.epoch <= mon.warmup_epochs + 3]
    assert all(v.diagnosis == "healthy" for v in early), reason
    assert all(v.signal != "classification loss flat since the warm-up" for v in verdicts), reason


def test_one_validation_is_not_enough_for_the_step_level_stall() -> None:
    """Long epochs without warm-up: the first epoch's checks already fill the window, but one
    validation is one noisy AP; the stall is named at the second."""
    curves, reports = stall_run(0.002, ipe=200, warmup=0, epochs=3)
    verdicts = train(stall_monitor(ipe=200, warmup=0), curves, reports, 200)
    assert [v.diagnosis for v in verdicts] == ["healthy", "stalled"]


def test_a_falling_classification_loss_is_not_a_step_level_stall() -> None:
    """A slow learner: the classification loss falls 8 % an epoch after the warm-up, AP still ~0."""
    curves, reports = stall_run(0.08)
    mon = stall_monitor()
    assert all(v.signal != "classification loss flat since the warm-up" for v in train(mon, curves, reports, MINI_IPE))


def healthy_curves_for(rows: list[tuple[float, ...]], ipe: int, seed: int) -> dict[str, np.ndarray]:
    """Step curves matching a real run's epoch means (5 % noise per batch), the first steps as
    REAL_HEALTHY_START_CLS: the start the stall checks compare with."""
    rng = np.random.default_rng(seed)
    cls = np.concatenate([np.full(ipe, row[6]) for row in rows]) * rng.lognormal(0, 0.05, len(rows) * ipe)
    loss = np.concatenate([np.full(ipe, row[7]) for row in rows]) * rng.lognormal(0, 0.07, len(rows) * ipe)
    cls[: len(REAL_HEALTHY_START_CLS)] = REAL_HEALTHY_START_CLS
    loss[: len(REAL_HEALTHY_START_CLS)] = 2.1 * np.array(REAL_HEALTHY_START_CLS)
    n = len(cls)
    return {
        "loss": loss,
        "loss_cls": cls,
        "loss_box": loss - cls,
        "grad_norm": 4.0 * rng.lognormal(0, 0.3, n),
        "num_pos": rng.poisson(250, n).astype(float),
    }


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("grace", [0, 2])
def test_real_healthy_runs_with_their_step_checks_are_never_flagged(seed: int, grace: int) -> None:
    """REAL_HEALTHY with step checks: the classification loss is flat within a few % for epochs
    after the warm-up (2.95 -> 2.76 -> 2.72), but at ~65 % of its start and with AP > 0.01."""
    rows = REAL_HEALTHY[seed]
    mon = monitor(warmup_iters=100, grace_epochs=grace)
    verdicts = train(mon, healthy_curves_for(rows, IPE, seed), real_reports(rows), IPE)
    assert [v.diagnosis for v in verdicts] == ["healthy"] * 12 and mon.history() == []


#: healthy_neg100_nowarm, seed 0, of the failure zoo (bench/results/failure_zoo.json; cpu-mini):
#: 100 mined negatives per positive, no warm-up: the classification loss sits at the class prior's
#: level (ln 101 + 100 ln 1.01 = 5.61) for three epochs, then the run learns (AP 0.045 at epoch 8).
REAL_PRIOR_THEN_LEARNS = [
    (0.0049, 1.0, 0.0, 0.0, 0.0, 0.0, 5.557, 9.4),
    (0.0097, 0.612, 0.0, 0.0, 0.0, 0.0, 5.314, 8.65),
    (0.01, 0.269, 0.0, 0.0, 0.0, 0.0, 5.21, 8.5),
    (0.0305, 0.324, 0.0, 0.0, 0.0, 0.0, 4.786, 7.96),
    (0.0296, 0.354, 0.0, 0.0, 0.0, 0.0, 4.713, 7.78),
    (0.0374, 0.502, 0.0, 0.0, 0.0, 0.0, 4.524, 7.37),
    (0.0457, 0.596, 0.0, 0.0, 0.0, 0.0, 4.534, 7.32),
    (0.0454, 0.604, 0.0, 0.0, 0.0, 0.0, 4.585, 7.34),
]


@pytest.mark.parametrize("prior_cls_loss", [constant_predictor_cls_loss(100.0), None])
def test_a_run_that_sits_at_the_class_prior_before_learning_is_not_stalled(prior_cls_loss: float | None) -> None:
    """Without the prior's value (focal loss) the other guards still hold: AP 0.0097 at the second
    evaluation, far above an untrained detector's (stall_step_max_ap), and the top score's fall."""
    rows = REAL_PRIOR_THEN_LEARNS
    curves = healthy_curves_for(rows, MINI_IPE, 0)
    curves["loss_cls"][:25] = curves["loss_cls"][25]  # flat from the first step: the prior at once
    mon = monitor(warmup_iters=0, iters_per_epoch=MINI_IPE, prior_cls_loss=prior_cls_loss)
    verdicts = train(mon, curves, real_reports(rows), MINI_IPE)
    assert [v.diagnosis for v in verdicts] == ["healthy"] * 8


def hovering(aps: list[float], tops: list[float], dets: float = 0.0, recall: float = 0.0) -> list[dict[str, float]]:
    """AdamW at lr 0.01 without warm-up: the classification loss falls normally (no stall)."""
    precision = 0.5 if recall else 0.0
    return [
        epoch_metrics(ap, top, dets=dets, recall=recall, precision=precision, loss_cls=3.2 - 0.05 * e, loss=7 - 0.1 * e)
        for e, (ap, top) in enumerate(zip(aps, tops))
    ]


HOVERING_AP = [0.012, 0.028, 0.009, 0.015, 0.006, 0.021, 0.004, 0.011, 0.003, 0.014, 0.005, 0.008]
FALLING_TOP = [0.9, 0.88, 0.8, 0.72, 0.63, 0.55, 0.48, 0.44, 0.4, 0.36, 0.33, 0.3]


def test_ap_hovering_at_the_collapse_limit_with_a_falling_top_score_warns() -> None:
    """The independent zoo's AdamW lr 0.01 without warm-up: AP 0.003-0.028, no detection above the
    threshold, the top score 0.90 -> 0.30. AP above 0.01 every other evaluation breaks every
    collapse streak: no label at all before. A warning from the fourth evaluation with the top
    score at half its peak or less (epoch 8, 0.44 <= 0.45)."""
    mon = monitor(warmup_iters=0)
    verdicts = feed_epochs(mon, hovering(HOVERING_AP, FALLING_TOP))
    assert [v.diagnosis for v in verdicts] == ["healthy"] * 10 + ["near-collapse"] * 2
    warning = verdicts[10]
    assert not warning.stop and warning.epoch == 11 and warning.signal == "AP hovering at the collapse limit"
    assert warning.evidence["aps"] == [0.011, 0.003, 0.014, 0.005] and warning.evidence["top_scores"] == [0.44, 0.4, 0.36, 0.33]
    assert warning.evidence["best_top_score"] == 0.9 and warning.evidence["best_top_epoch"] == 1
    assert "top face score 0.330, down from 0.900 at epoch 1" in warning.message()
    assert mon.verdict.diagnosis == "near-collapse" and not mon.verdict.stop
    # A warning by default; a stop (and a recovery, as for a collapse) when asked for.
    stopped = feed_epochs(monitor(warmup_iters=0, stop_on=["near-collapse"]), hovering(HOVERING_AP, FALLING_TOP))
    assert stopped[-1].diagnosis == "near-collapse" and stopped[-1].stop and stopped[-1].epoch == 11


#: SGD lr 0.03 on the cpu-mini sizes (seed 0, the default 100-step warm-up: epochs 1-3 of 37 steps):
#: (AP, top score, detections per image, recall, train loss) per epoch. Faces at 0.97-1.0 during the
#: warm-up, then never again (top 0.25-0.45, no detection above 0.5, AP 0.003-0.02 for 13 epochs).
REAL_FADED_AFTER_WARMUP = [
    (0.008, 1.0, 24.3, 0.146, 8.04), (0.005, 0.965, 1.48, 0.008, 8.09), (0.008, 0.998, 0.22, 0.0, 8.02),
    (0.012, 0.323, 0.0, 0.0, 6.80), (0.014, 0.37, 0.0, 0.0, 5.82), (0.007, 0.397, 0.0, 0.0, 6.14),
    (0.003, 0.391, 0.0, 0.0, 5.95), (0.009, 0.449, 0.0, 0.0, 5.95), (0.009, 0.444, 0.0, 0.0, 5.76),
    (0.014, 0.27, 0.0, 0.0, 5.62), (0.02, 0.253, 0.0, 0.0, 5.55), (0.011, 0.293, 0.0, 0.0, 5.54),
    (0.014, 0.295, 0.0, 0.0, 5.43), (0.01, 0.285, 0.0, 0.0, 5.43), (0.013, 0.281, 0.0, 0.0, 5.40),
    (0.014, 0.291, 0.0, 0.0, 5.45),
]  # fmt: skip


def test_a_top_score_fallen_from_its_warm_up_peak_warns() -> None:
    """The top score's peak counts the warm-up's evaluations: after it this run's top never passed
    0.45, so judged from the warm-up's end on it never fell by half, and it ended healthy with no
    warning at AP 0.014 (healthy runs reach 0.04-0.1 by epoch 5-8)."""
    reports = [
        epoch_metrics(ap, top, dets=dets, recall=recall, precision=0.1 if recall else 0.0, loss=loss, loss_cls=loss / 2)
        for ap, top, dets, recall, loss in REAL_FADED_AFTER_WARMUP
    ]
    verdicts = feed_epochs(monitor(warmup_iters=100, iters_per_epoch=37), reports)
    first = next(v for v in verdicts if v.diagnosis != "healthy")
    assert first.diagnosis == "near-collapse" and not first.stop and first.epoch == 9
    assert first.evidence["best_top_score"] == 1.0 and first.evidence["best_top_epoch"] == 1
    assert all(v.diagnosis in ("healthy", "near-collapse") for v in verdicts)


@pytest.mark.parametrize(
    ("aps", "tops", "dets", "reason"),
    [
        ([0.004 * (1 + e / 2) for e in range(12)], FALLING_TOP, 0.0, "AP climbing through the range: a slow start"),
        (HOVERING_AP, [0.9, 0.88, 0.8, 0.72, 0.63, 0.6, 0.58, 0.56, 0.55, 0.52, 0.5, 0.5], 0.0, "top score above half its peak"),
        (HOVERING_AP, FALLING_TOP, 0.5, "detections above the threshold"),
        ([0.04 if e % 2 else 0.02 for e in range(12)], FALLING_TOP, 0.0, "AP above the near-collapse limit"),
    ],
)
def test_near_collapse_needs_every_sign(aps: list[float], tops: list[float], dets: float, reason: str) -> None:
    verdicts = feed_epochs(monitor(warmup_iters=0), hovering(aps, tops, dets=dets, recall=0.02 if dets else 0.0))
    assert all(v.diagnosis == "healthy" for v in verdicts), reason


#: healthy_warmup1ep, seed 2, of the failure zoo (cpu-mini, a one-epoch warm-up): no detection above
#: the threshold from epoch 3 and the top score at 0.38-0.48 after 0.92, with AP climbing 0.006 -> 0.06.
REAL_CLIMBING_UNDER_A_FALLEN_TOP = [
    (0.0023, 1.0, 0.0121, 0.0083, 6.0, 6.05, 3.793, 7.58),
    (0.0083, 0.9171, 0.0445, 0.0314, 5.65, 5.85, 4.056, 7.565),
    (0.0058, 0.3829, 0.0, 0.0, 0.0, 0.0, 3.136, 6.406),
    (0.0153, 0.4668, 0.0, 0.0, 0.0, 0.0, 2.901, 5.971),
    (0.0303, 0.4818, 0.0, 0.0, 0.0, 0.0, 2.737, 5.648),
    (0.0456, 0.4119, 0.0, 0.0, 0.0, 0.0, 2.546, 5.493),
    (0.0606, 0.4175, 0.0, 0.0, 0.0, 0.0, 2.53, 5.442),
    (0.0561, 0.4089, 0.0, 0.0, 0.0, 0.0, 2.491, 5.336),
]


@pytest.mark.parametrize("grace", [0, 2])
def test_a_real_healthy_run_under_a_fallen_top_score_gets_no_warning(grace: int) -> None:
    mon = monitor(warmup_iters=MINI_IPE, iters_per_epoch=MINI_IPE, grace_epochs=grace)
    rows = REAL_CLIMBING_UNDER_A_FALLEN_TOP
    verdicts = train(mon, healthy_curves_for(rows, MINI_IPE, 2), real_reports(rows), MINI_IPE)
    assert [v.diagnosis for v in verdicts] == ["healthy"] * 8 and mon.history() == []


def test_a_collapse_is_named_as_such_not_as_its_forewarning() -> None:
    """A run that collapses outright (AP ~0) meets both rules: the collapse stops it, alone."""
    mon = monitor(warmup_iters=0, near_collapse_patience=3)  # as early as the collapse itself
    start_with(mon, [5.2] * 13)
    verdicts = feed_epochs(mon, real_reports(REAL_COLLAPSE))
    assert [v.diagnosis for v in verdicts] == ["healthy"] * 5 + ["background-collapse"]
    assert "also" not in verdicts[-1].evidence


@pytest.mark.parametrize("cut", [3, 4])
def test_a_resumed_run_names_the_stall_at_the_same_epoch(cut: int) -> None:
    curves, reports = stall_run(0.002)
    expected = train(stall_monitor(), curves, reports, MINI_IPE)[-1]
    first = stall_monitor()
    train(first, curves, reports[:cut], MINI_IPE)
    resumed = stall_monitor()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    tail = {key: value[cut * MINI_IPE :] for key, value in curves.items()}
    verdicts = []
    for epoch in range(cut + 1, len(reports) + 1):
        for step in range((epoch - 1) * MINI_IPE + 1, epoch * MINI_IPE + 1):
            if step % EVERY == 0:
                resumed.check_step(step, epoch, **{k: float(v[step - 1 - cut * MINI_IPE]) for k, v in tail.items()})
        verdicts.append(resumed.check_epoch(epoch, reports[epoch - 1]))
        if verdicts[-1].stop:
            break
    assert verdicts[-1].as_dict() == expected.as_dict()


def test_a_state_saved_before_these_checks_still_loads() -> None:
    mon = monitor()
    feed_steps(mon, healthy_steps(0, n=100), step_one=True)
    state = mon.state_dict()
    old = {key: value for key, value in state.items() if key not in ("untrained", "recent")}
    resumed = monitor()
    resumed.load_state_dict(old)
    assert resumed.state_dict()["untrained"] is None and resumed.state_dict()["recent"] == []
    assert resumed.check_step(105, 5, loss=5.0, loss_cls=2.0, loss_box=3.0, grad_norm=4.0, num_pos=9.0).diagnosis == "healthy"


# -- verdict semantics ------------------------------------------------------------------------------


def test_the_first_stop_is_sticky() -> None:
    mon = monitor()
    curves = healthy_steps(10, n=100)
    curves["loss"][50:] = math.nan
    stop = first_problem(feed_steps(mon, curves))
    assert stop is not None and stop.step == 55
    # Later checks, healthy or not, do not change the verdict.
    assert mon.check_step(60, 3, loss=5.0, loss_cls=2.0, loss_box=3.0, grad_norm=3.0, num_pos=100.0) is stop
    assert mon.check_epoch(3, epoch_metrics(0.0, 0.0)) is stop
    assert mon.verdict is stop and mon.history() == [stop]


def test_stop_on_decides_what_stops() -> None:
    curves = healthy_steps(11, n=100)
    curves["loss"][30:] = math.nan
    mon = monitor(stop_on=[])
    verdict = first_problem(feed_steps(mon, curves))
    assert verdict is not None and verdict.diagnosis == "diverged" and not verdict.stop
    assert mon.verdict.diagnosis == "diverged" and not mon.verdict.stop
    assert len(mon.history()) == 1  # a persisting step warning is recorded once, at its onset

    tail = overfitting_tail(-0.1)
    verdicts = feed_epochs(monitor(warmup_iters=IPE, stop_on=["overfitting"]), good_then(tail))
    assert verdicts[-1].diagnosis == "overfitting" and verdicts[-1].stop


def test_a_stopping_diagnosis_wins_over_a_warning() -> None:
    """AP below its best and falling train loss (overfitting, a warning) while the model stops
    predicting faces (collapse, stopping): the stop is reported, the warning is named too."""
    good = [epoch_metrics(0.011, 0.5, loss=6.0) for _ in range(3)]
    gone = [epoch_metrics(0.0, 0.02, loss=5.0 - 0.2 * i, loss_cls=2.5 - 0.2 * i) for i in range(4)]
    mon = monitor(warmup_iters=0, overfit_min_best_ap=0.01, overfit_min_drop=0.005, overfit_patience=2, smooth_evaluations=1)
    verdict = feed_epochs(mon, good + gone)[-1]
    assert verdict.diagnosis == "background-collapse" and verdict.stop
    assert verdict.evidence["also"] == ["overfitting"] and "also: overfitting" in verdict.message()


def test_disabled_monitor_is_always_healthy() -> None:
    mon = monitor(enabled=False)
    nan = math.nan
    verdict = mon.check_step(5, 1, loss=nan, loss_cls=nan, loss_box=0.0, grad_norm=math.inf, num_pos=0.0)
    assert verdict.diagnosis == "healthy"
    assert mon.check_epoch(50, epoch_metrics(0.0, 0.0)).diagnosis == "healthy"


def test_warning_from_validation_survives_healthy_step_checks() -> None:
    tail = fp_surge_tail()
    mon = monitor(warmup_iters=IPE)
    feed_epochs(mon, good_then(tail))
    assert mon.verdict.diagnosis == "fp-surge"
    mon.check_step(1000, 10, loss=5.0, loss_cls=2.5, loss_box=2.5, grad_norm=4.0, num_pos=200.0)
    assert mon.verdict.diagnosis == "fp-surge"


def test_verdict_as_dict_is_flat_and_json_able() -> None:
    evidence = {"loss": math.nan, "loss_cls": 1.0, "loss_box": math.inf, "grad_norm": 2.0}
    v = Verdict("diverged", True, "non-finite loss", evidence, 37, 2)
    flat = v.as_dict()
    assert flat["diagnosis"] == "diverged" and flat["stop"] is True and flat["step"] == 37
    assert math.isnan(flat["evidence.loss"]) and flat["message"] == v.message()
    assert all(not isinstance(value, dict) for value in flat.values())
    json.dumps(flat)
    assert Verdict("healthy", False).message() == "healthy at start"


# -- resume -----------------------------------------------------------------------------------------


def mixed_run() -> tuple[dict[str, np.ndarray], list[dict[str, float]]]:
    """Twelve epochs of steps and validations: an fp-surge warning at epoch 9, then at step 290 a loss
    that only the early reference (epoch 1) shows to be an explosion."""
    curves = healthy_steps(12, n=12 * IPE)
    curves["loss"][289:] = 4000.0
    tail = fp_surge_tail()
    return curves, good_then(tail) + [epoch_metrics(0.3, 0.9, precision=0.5, recall=0.42, fp_per_image=1.0)] * 3


def play(mon: HealthMonitor, curves: dict[str, np.ndarray], reports: list[dict[str, float]], epochs: range) -> list[dict]:
    """Steps then validation, epoch by epoch, as the trainer does; every verdict as a dict."""
    out = []
    for epoch in epochs:
        out.append(mon.verdict.as_dict())  # what a resumed run would report before its first check
        chunk = {k: v[(epoch - 1) * IPE : epoch * IPE] for k, v in curves.items()}
        out += [v.as_dict() for v in feed_steps(mon, chunk, start=(epoch - 1) * IPE + 1)]
        if mon.verdict.stop:
            break
        out.append(mon.check_epoch(epoch, reports[epoch - 1]).as_dict())
        out.append(mon.verdict.as_dict())
    return out


@pytest.mark.parametrize("cut", [1, 4, 8, 9, 11])
def test_state_dict_round_trip_gives_identical_verdicts(cut: int) -> None:
    curves, reports = mixed_run()
    straight = monitor(warmup_iters=IPE)
    expected = play(straight, curves, reports, range(1, 13))
    assert {d["diagnosis"] for d in expected} == {"healthy", "fp-surge", "diverged"}
    assert straight.verdict.signal == "loss explosion" and straight.verdict.step == 290

    first = monitor(warmup_iters=IPE)
    got = play(first, curves, reports, range(1, cut + 1))
    state = json.loads(json.dumps(first.state_dict()))  # it must survive JSON (a checkpoint, a Tune report)
    resumed = monitor(warmup_iters=IPE)
    resumed.load_state_dict(state)
    got += play(resumed, curves, reports, range(cut + 1, 13))
    assert json.dumps(got) == json.dumps(expected)
    history = [json.dumps(v.as_dict()) for v in resumed.history()]
    assert history == [json.dumps(v.as_dict()) for v in straight.history()]


def test_load_state_dict_rejects_an_unknown_version() -> None:
    state = monitor().state_dict()
    with pytest.raises(ValueError, match="version"):
        monitor().load_state_dict({**state, "version": 99})
