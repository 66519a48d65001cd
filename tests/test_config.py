"""The training config: one schema, clear errors that name the key, YAML round trip."""

from pathlib import Path

import pytest
import yaml

from model.config import ConfigError, TrainConfig, load_config


def test_defaults_validate_and_round_trip_through_yaml(tmp_path: Path) -> None:
    cfg = TrainConfig().with_overrides({"loss.box_weight": 0.05, "optim.lr": 0.003, "epochs": 3})
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    again = load_config(path)
    assert again == cfg
    assert again.loss.box_weight == 0.05 and again.optim.lr == 0.003 and again.epochs == 3


def test_partial_yaml_takes_defaults_for_missing_sections(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  neg_pos_ratio: 5\n")
    cfg = load_config(path)
    assert cfg.loss.neg_pos_ratio == 5
    assert cfg.optim == TrainConfig().optim


def test_unknown_key_is_named_with_the_allowed_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "optim.lrr" in message and "unknown key" in message
    assert "lr" in message.split("allowed keys here:")[1]
    assert str(path) in message


def test_bad_choice_names_the_key_and_the_allowed_values() -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig().with_overrides({"loss.box_loss": "l2"})
    message = str(err.value)
    assert "loss.box_loss" in message
    for allowed in ("smooth_l1", "giou", "diou", "ciou"):
        assert allowed in message
    assert "'l2'" in message


def test_out_of_range_values_and_bad_sections_are_refused() -> None:
    with pytest.raises(ConfigError, match="optim.lr"):
        TrainConfig().with_overrides({"optim.lr": -1})
    with pytest.raises(ConfigError, match="both be 0"):
        TrainConfig().with_overrides({"loss.class_weight": 0, "loss.box_weight": 0})
    # The weights' one owner is the config (the loss returns its parts unweighted).
    with pytest.raises(ConfigError, match="loss.box_weight"):
        TrainConfig().with_overrides({"loss.box_weight": -1.0})
    with pytest.raises(ConfigError, match="loss.class_weight"):
        TrainConfig().with_overrides({"loss.class_weight": float("nan")})
    with pytest.raises(ConfigError, match="'epochs' is not a config section"):
        TrainConfig().with_overrides({"epochs.value": 3})


def test_malformed_yaml_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("loss: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    path.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_the_official_wider_ap_is_off_by_default_and_its_subset_is_checked() -> None:
    cfg = TrainConfig()
    assert cfg.eval.wider_ap is False and cfg.eval.wider_subset is None and cfg.eval.wider_subset_seed == 0
    on = cfg.with_overrides({"eval.wider_ap": True, "eval.wider_subset": 500})
    assert on.eval.wider_ap and on.eval.wider_subset == 500
    with pytest.raises(ConfigError, match="eval.wider_subset"):
        cfg.with_overrides({"eval.wider_ap": True, "eval.wider_subset": 0})
