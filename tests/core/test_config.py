"""StoredConfig: the one to_dict / from_dict of the configs stored in checkpoints."""

import json

import pytest

from ddpm_core.evaluation.classifier import ClassifierConfig
from ddpm_core.models import MLPConfig, UNetConfig


@pytest.mark.parametrize(
    "config",
    [
        UNetConfig(),
        UNetConfig(image_size=8, base_channels=8, channel_mult=(1, 2), attention_resolutions=(), norm_groups=4),
        MLPConfig(hidden_dim=32, num_classes=3),
        ClassifierConfig(channels=(8, 16, 16), blocks=(1, 1, 1)),
    ],
)
def test_round_trip_through_json(config):
    data = config.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert all(not isinstance(value, tuple) for value in data.values())
    assert type(config).from_dict(json.loads(json.dumps(data))) == config


def test_lists_become_tuples_and_defaults_fill_missing_keys():
    config = UNetConfig.from_dict({"channel_mult": [1, 2], "image_size": 8, "attention_resolutions": [4]})
    assert config.channel_mult == (1, 2) and config.attention_resolutions == (4,)
    assert config.base_channels == UNetConfig().base_channels
    assert ClassifierConfig.from_dict({"channels": [4, 8, 8]}).channels == (4, 8, 8)


def test_int_is_accepted_for_a_float_field():
    assert MLPConfig.from_dict({}) == MLPConfig()
    assert UNetConfig.from_dict({"dropout": 0}).dropout == 0.0


@pytest.mark.parametrize(
    "data, message",
    [
        ({"base_channel": 8}, "unknown UNetConfig keys: base_channel"),
        ({"base_channels": "8"}, r"base_channels='8' \(expected int\)"),
        ({"base_channels": 8.0}, "base_channels=8.0"),
        ({"num_classes": True}, "num_classes=True"),
        ({"channel_mult": 2}, r"channel_mult=2 \(expected a list of int\)"),
        ({"channel_mult": [1, "2"]}, "channel_mult"),
        ({"dropout": "0.1"}, "dropout"),
        ([1, 2], "must be a JSON object"),
        ({"base_channels": 0}, "must be positive"),  # the dataclass's own validation
    ],
)
def test_bad_dicts_are_refused_naming_the_key(data, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig.from_dict(data)


def test_every_bad_key_is_named():
    with pytest.raises(ValueError, match="hidden_dim=.*num_layers="):
        MLPConfig.from_dict({"hidden_dim": "wide", "num_layers": None})
