"""Method configs: validation, dict/JSON round-trip, the registry."""

from __future__ import annotations

import dataclasses
import json

import pytest

from conftest import EXAMPLES, INVALID, method_names
from segprune import METHODS, FastVConfig, MethodConfig, PDropConfig
from segprune.methods import get_config_class


@pytest.mark.parametrize("name", method_names())
def test_round_trip(name):
    config = EXAMPLES[name]
    data = json.loads(json.dumps(config.to_dict()))
    assert data["method"] == name
    assert MethodConfig.from_dict(data) == config
    assert METHODS[name].from_dict(data) == config
    assert METHODS[name]() == MethodConfig.from_dict(METHODS[name]().to_dict())


@pytest.mark.parametrize("name", method_names())
def test_invalid_values_raise(name):
    cls = METHODS[name]
    for kwargs, text in INVALID[name]:
        with pytest.raises(ValueError) as err:
            cls(**kwargs)
        message = str(err.value)
        assert text in message, message
        assert cls.__name__ in message, message


@pytest.mark.parametrize("name", method_names())
def test_keep_all_keeps_everything(name):
    plan = METHODS[name].keep_all().plan(n_image=16, n_layers=4)
    assert plan.live_counts() == [16] * 4


def test_unknown_method_and_fields():
    with pytest.raises(ValueError, match=r"unknown method 'nope'.*fastv"):
        get_config_class("nope")
    with pytest.raises(ValueError, match="unknown field"):
        MethodConfig.from_dict({"method": "fastv", "layer": 2, "ratio": 0.5})
    with pytest.raises(ValueError, match="for method 'pdrop', not 'fastv'"):
        FastVConfig.from_dict({"method": "pdrop"})


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        FastVConfig().layer = 3


def test_fastv_budget_is_rounded_half_up():
    # 0.5 * 57 = 28.5 -> 29 (Python's round() would give 28).
    assert FastVConfig(layer=2, keep_ratio=0.5).plan(57, 32).live_counts()[2] == 29
    assert FastVConfig(layer=2, keep_ratio=0.1).plan(576, 32).live_counts() == [576, 576] + [58] * 30
    # Never fewer than one token.
    assert FastVConfig(layer=2, keep_ratio=0.001).plan(16, 4).live_counts()[-1] == 1


def test_pdrop_schedule():
    counts = PDropConfig().plan(576, 32).live_counts()
    assert counts[:8] == [576] * 8
    assert counts[8:16] == [288] * 8
    assert counts[16:24] == [144] * 8
    assert counts[24:] == [72] * 8


def test_layers_must_fit_the_model():
    with pytest.raises(ValueError, match=r"FastVConfig.layer=4 does not fit.*4 layers"):
        FastVConfig(layer=4).plan(16, 4)
    with pytest.raises(ValueError, match=r"PDropConfig.layers\[2\]=24 does not fit"):
        PDropConfig().plan(16, 20)
