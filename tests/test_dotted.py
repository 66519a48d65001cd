"""Dotted keys: one walk over dicts and models for the config, the search spaces and the trainer."""

import pytest

from model.config import TrainConfig
from model.dotted import KeyPathError, did_you_mean, dotted_path, field_at, flatten, get_dotted, set_dotted


def test_set_get_and_flatten_agree() -> None:
    tree = TrainConfig().model_dump(mode="json")
    set_dotted(tree, "loss.box_weight", 0.25)
    assert flatten(tree)["loss.box_weight"] == 0.25
    assert get_dotted(TrainConfig.model_validate(tree), "loss.box_weight") == 0.25
    with pytest.raises(KeyPathError, match="^epochs$"):
        set_dotted(tree, "epochs.value", 3)


def test_field_at_names_where_a_key_goes_wrong() -> None:
    assert field_at(TrainConfig, "optim.lr").annotation is float
    with pytest.raises(KeyPathError, match=r"the top level has no 'los' \(did you mean 'loss'\?\)"):
        field_at(TrainConfig, "los.box_weight")
    with pytest.raises(KeyPathError, match="seed is a setting, not a section"):
        field_at(TrainConfig, "seed.value")
    with pytest.raises(KeyPathError, match="loss is a section; name a key inside it"):
        field_at(TrainConfig, "loss")


def test_messages() -> None:
    assert did_you_mean("grace", ["grace_period", "type"]) == " (did you mean 'grace_period'?)"
    assert did_you_mean("zzz", ["grace_period"]) == ""
    assert dotted_path(("params", "loss.box_loss", "choices", 1)) == "params.loss.box_loss.choices[1]"
