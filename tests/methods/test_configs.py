"""Method configs: validation, dict/JSON round-trip, the registry."""

from __future__ import annotations

import dataclasses
import json

import pytest

from conftest import EXAMPLES, INVALID, method_names
from segprune import METHODS, FastVConfig, MethodConfig, PDropConfig
from segprune.methods import ALTPConfig, CSPConfig, PruMergeConfig, VisionZipConfig, get_config_class
from segprune.methods.plan import Keep


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


# -- what each config says about itself agrees with its plan ----------------------------------------


def _examples_and_defaults(name):
    return [EXAMPLES[name], METHODS[name](), METHODS[name].keep_all()]


@pytest.mark.parametrize("name", method_names())
def test_declared_needs_match_the_plan(name):
    cls = METHODS[name]
    assert cls.label and cls.variants(), "every method needs a display label and at least one sweep row"
    for config in _examples_and_defaults(name):
        try:
            steps = config.plan(576, 32).steps
        except ValueError:
            steps = config.plan(16, 4).steps
        scores = [s.score.token for s in steps if isinstance(s, Keep) and s.score is not None]
        assert config.needs_seg_token == ("seg" in scores), config
        assert config.ranks_by_last_token == ("last" in scores), config
        merges = any(isinstance(s, Keep) and s.merge is not None for s in steps)
        assert config.replayable == (not merges), config
        if cls.prunes_before_decoder:
            assert all(step.layer == 0 for step in steps), config
        assert config.needs_vision_cls == bool(config.vision_layers())


def test_what_methods_need_from_the_model():
    assert ALTPConfig().needs_pixels and not FastVConfig().needs_pixels
    assert CSPConfig().needs_pixels and not CSPConfig(cluster="uniform").needs_pixels  # Seg-First's regions
    assert CSPConfig(cluster="cls").needs_vision_cls and VisionZipConfig().needs_vision_cls
    assert not CSPConfig(score_token="last").needs_seg_token
    assert CSPConfig.seg_free_fields == {"score_token": "last"} and FastVConfig.seg_free_fields == {}
    assert ALTPConfig().sync_free and not ALTPConfig(superpixels="skimage").sync_free
    assert PruMergeConfig(neighbours=0).replayable and not PruMergeConfig().replayable


def test_scale_layers_needs_declared_layer_fields():
    @dataclasses.dataclass(frozen=True)
    class Undeclared(MethodConfig):
        name = "undeclared"
        layer: int = 2

    with pytest.raises(ValueError, match=r"does not know the decoder-layer fields of method 'undeclared'"):
        Undeclared().scale_layers(32, 8)
    with pytest.raises(ValueError, match=r"no budget rule for method 'undeclared'"):
        Undeclared.budget_fields(0.5, 32, 576)
    assert Undeclared.paper_fields(0.5, 32, 576) is None and Undeclared.variants() == {"undeclared": {}}
