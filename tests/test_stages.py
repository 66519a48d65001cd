"""``hpo/stages.py``: the seed study's stages read from hand-built curves, and the sweep figures."""

import pytest
from matplotlib.figure import Figure

from hpo import plots
from hpo.stages import monitor_verdicts, read_stages
from model.health import LABELS


def _history(**series: list[float]) -> dict[str, list[tuple[int, float]]]:
    """``val_ap=[...]`` -> ``{"val/ap": [(1, ...), (2, ...)]}`` (first underscore is the slash)."""
    return {key.replace("_", "/", 1): list(enumerate(values, start=1)) for key, values in series.items()}


def _names(history: dict) -> list[tuple[str, str]]:
    return [(s.name, s.span) for s in read_stages(history)]


def test_avoidance_after_the_random_start_and_how_it_ends() -> None:
    # The seed study's early stage as the mini set shows it: boxes everywhere at epoch 1, then the
    # detections fall away while AP rises, then they come back.
    healthy = _history(
        val_ap=[0.005, 0.008, 0.02, 0.05, 0.08, 0.09],
        val_detections_per_image=[33.0, 5.0, 2.0, 8.0, 20.0, 30.0],
        val_top_score=[0.9, 0.3, 0.2, 0.4, 0.6, 0.7],
        train_loss=[9.0, 7.0, 6.0, 5.5, 5.0, 4.8],
    )
    (stage,) = read_stages(healthy)
    assert (stage.name, stage.span, stage.ongoing) == ("avoidance", "2-4", False)
    assert stage.detail.startswith("detections/image 33 at epoch 1 -> 2; top face score 0.9 -> 0.4")
    assert "the ranking still learns" in stage.detail and stage.detail.endswith("left at epoch 5 (20 detections/image)")
    collapsed = _history(val_ap=[0.004, 0.002, 0.001, 0.0], val_detections_per_image=[0.0] * 4, train_loss=[5.0, 4.9, 4.9, 4.9])
    (stage,) = read_stages(collapsed)
    assert (stage.name, stage.span, stage.ongoing) == ("avoidance", "2-4", True)
    assert "(at the collapse level)" in stage.detail and stage.detail.endswith("never left")
    # Detections that never fall to half the start, or fall only late in the run: no early avoidance.
    always = _history(val_ap=[0.01, 0.05, 0.1], val_detections_per_image=[5.0, 3.0, 2.0], train_loss=[3.0, 2.0, 1.0])
    late = _history(val_ap=[0.01] * 6, val_detections_per_image=[9.0, 8.0, 9.0, 8.0, 1.0, 1.0], train_loss=[3.0] * 6)
    assert _names(always) == _names(late) == []


def test_fp_growth_is_a_sustained_rise_of_the_monitors_size() -> None:
    base = {"val_ap": [0.05] * 8, "val_num_images": [10.0] * 8, "train_loss": [5.0] * 8}
    # FP per image 0.8 0.5 0.6 1.2 2.5 3.0 0.2 0.2; its running median of 3 rises 0.6 -> 2.5 over epochs 3-7.
    rising = _history(**base, val_fp=[8.0, 5.0, 6.0, 12.0, 25.0, 30.0, 2.0, 2.0],
                      val_precision=[0.2, 0.5, 0.45, 0.3, 0.2, 0.15, 0.1, 0.6])  # fmt: skip
    (stage,) = read_stages(rising)
    assert (stage.name, stage.span, stage.ongoing) == ("fp-growth", "3-7", False)
    assert "0.6 -> 2.5" in stage.detail and "precision 0.45 -> 0.1" in stage.detail
    # One evaluation swinging around the score threshold is not growth.
    swing = _history(**base, val_fp=[5.0, 5.0, 50.0, 5.0, 5.0, 5.0, 5.0, 5.0])
    assert _names(swing) == []
    # Growth by 1.5x but less than one false positive per image: not counted.
    small = _history(**base, val_fp=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    assert _names(small) == []


def test_overfitting_needs_an_ap_drop_while_the_loss_falls() -> None:
    ap = [0.01, 0.05, 0.10, 0.09, 0.07, 0.06]
    falling_loss = _history(val_ap=ap, val_detections_per_image=[1.0] * 6, train_loss=[6.0, 5.0, 4.0, 3.0, 2.5, 2.0])
    (stage,) = read_stages(falling_loss)
    assert (stage.name, stage.span, stage.ongoing) == ("overfitting", "4-6", True)
    assert "AP 0.1 at epoch 3 -> 0.06" in stage.detail
    flat_loss = _history(val_ap=ap, val_detections_per_image=[1.0] * 6, train_loss=[6.0, 5.0, 4.0, 4.0, 4.0, 4.0])
    assert _names(flat_loss) == []  # the model is not fitting the training set harder: not overfitting
    small_drop = _history(val_ap=[0.01, 0.05, 0.10, 0.09, 0.09, 0.085], val_detections_per_image=[1.0] * 6,
                          train_loss=[6.0, 5.0, 4.0, 3.0, 2.5, 2.0])  # fmt: skip
    assert _names(small_drop) == []  # 15 % below the best: within the mini set's noise


def test_no_ap_no_stages_and_monitor_codes_map_to_labels() -> None:
    assert read_stages({"train/loss": [(1, 3.0)]}) == []
    codes = [(1, 0.0), (2, float(LABELS.index("fp-surge"))), (3, float(LABELS.index("overfitting"))), (4, float("nan"))]
    assert monitor_verdicts({"health/code": codes}) == [(2, "fp-surge"), (3, "overfitting")]


def test_sweep_figures() -> None:
    h = _history(val_ap=[0.0, 0.02, 0.05], train_loss_cls=[3.0, 2.0, 1.5], val_fp=[0.0, 4.0, 9.0], val_num_images=[4.0] * 3)
    rows = [
        plots.SettingRow("box_weight=0.01", "healthy", h, [("avoidance", 1, 1)], [(2, "fp-surge")]),
        plots.SettingRow("box_weight=10", "stopped:background-collapse", _history(val_ap=[0.0, 0.0])),
    ]
    fig = plots.setting_curves(rows, title="sweep")
    assert isinstance(fig, Figure) and len(fig.axes) == 2 * 3  # loss, AP, per image (no recall or IoU logged)
    assert plots.png_bytes(fig)[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no setting logged"):
        plots.setting_curves([plots.SettingRow("x", "healthy", {"train/lr": [(1, 0.1)]})])
    summary = plots.sweep_summary(
        "loss.box_weight", [(0.01, 0.05, 0.04, "healthy"), (10.0, None, None, "stopped:diverged")], log=True
    )
    assert summary.axes[0].get_xscale() == "log"
    with pytest.raises(ValueError):
        plots.sweep_summary("loss.box_weight", [], log=False)
