"""Budget rules on both axes, on cases small enough to check by hand (the sweep tests cover the grid)."""

from __future__ import annotations

import pytest

from segprune import METHODS
from segprune.eval.budgets import (
    PAPER_LAYERS,
    achieved_reduction,
    budget_config,
    check_budget,
    config_for,
    paper_config,
    variants,
)
from segprune.methods import CSPConfig, FastVConfig, PDropConfig, PruMergeConfig, VisionZipConfig
from segprune.methods.counts import keep_count, paper_count, ratio_for_count, round_half_up, shortest


def test_counts_round_halves_up():
    assert round(28.5) == 28 and round_half_up(28.5) == 29
    assert keep_count(0.5, 57) == 29
    assert keep_count(0.001, 16) == 1  # at least one token
    assert paper_count(0.9, 576) == 57  # floor(57.6): ALTP Table 1's 57 of 576
    assert paper_count(0.75, 576) == 144
    # 57 / 576 = 0.0989...; 0.1 would keep 58 (57.6 rounds up), 0.099 keeps 57.
    assert ratio_for_count(57, 576) == 0.099
    assert shortest(0.4670138888888889, lambda r: keep_count(r, 576) == 269) == 0.467


def test_fastv_on_the_tiny_model():
    # K = 2 of 32 at 4 layers is 0.25, at least 1: K = 1. N_avg = 8 = (16 + 3 * kept) / 4 -> kept = 5.33 -> 5.
    config = config_for("fastv", 0.5, 4, 16)
    assert config == FastVConfig(layer=1, keep_ratio=0.3)  # round(0.3 * 16) = round(4.8) = 5
    assert config.plan(16, 4).live_counts() == [16, 5, 5, 5]
    assert achieved_reduction(config, 4, 16) == 1 - 7.75 / 16


def test_fastv_on_llava_7b():
    # N_avg = 144 = (2 * 576 + 30 * kept) / 32 -> kept = 115.2 -> 115, kept by ratio 0.2 (115.2 rounds down).
    config = config_for("fastv", 0.75, 32, 576)
    assert config == FastVConfig(layer=2, keep_ratio=0.2)
    assert achieved_reduction(config, 32, 576) == pytest.approx(1 - (2 * 576 + 30 * 115) / 32 / 576)


def test_pdrop_solves_one_ratio_for_three_stages():
    # Stages at 1/4, 1/2, 3/4 of 4 layers: 1, 2, 3. N_avg = 8 needs 16 + a + b + c = 32.
    config = config_for("pdrop", 0.5, 4, 16)
    assert config.layers == (1, 2, 3)
    assert config.plan(16, 4).live_counts() == [16, 9, 5, 2]  # 0.532 * 16 = 8.5, 0.283 * 16 = 4.5, 2.4
    assert config.ratio == 0.532


def test_csp_splits_the_decoder_in_three_stages():
    config = config_for("csp", 0.5, 4, 16, cluster="uniform")
    assert (config.cluster_layers, config.scatter_layers) == (1, 1)
    assert config.cluster == "uniform"
    assert sum(config.plan(16, 4).live_counts()) == 32  # N_avg = 8 exactly


def test_methods_before_the_decoder_keep_the_target_count():
    # (1 - 0.71875) * 16 = 4.5 tokens: rounds up to 5, split 54 : 10 -> contextual round(0.78) = 1.
    assert config_for("visionzip", 0.71875, 4, 16) == VisionZipConfig(dominant=4, contextual=1)
    assert config_for("prumerge", 0.5, 4, 16) == PruMergeConfig(plus=True, keep_ratio=0.5)


def test_paper_axis_leaves_floor_of_the_budget():
    assert paper_config("fastv", 0.9, 576) == FastVConfig(layer=2, keep_ratio=0.099)
    assert paper_config("visionzip", 0.9, 576) == VisionZipConfig(dominant=48, contextual=9)  # 57 tokens
    pdrop = paper_config("pdrop", 0.9, 576, pdrop_rule="last_stage")
    assert pdrop.plan(576, PAPER_LAYERS).live_counts()[::8] == [576, 267, 123, 57]
    assert paper_config("csp", 0.75, 576) == CSPConfig.preset("llava-1.5-7b-336", 0.75)
    # The paper axis maps the 32-layer setting to the model's depth: K = 2 of 32 is 1 of 8.
    assert budget_config("paper", "fastv", 0.75, 8, 576) == FastVConfig(layer=1, keep_ratio=0.25)
    assert budget_config("navg", "fastv", 0.75, 32, 576) == config_for("fastv", 0.75, 32, 576)


def test_every_method_has_rules_on_both_axes():
    for name in METHODS:
        assert isinstance(config_for(name, 0.5, 32, 576), METHODS[name])
        assert isinstance(paper_config(name, 0.5, 576, pdrop_rule="last_stage"), METHODS[name])
    assert variants()["pdrop-last_stage"] == ("pdrop", {"pdrop_rule": "last_stage"})


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: config_for("fastv", 0.0, 32, 576), r"reduction=0\.0 must lie strictly between 0 and 1"),
        (lambda: paper_config("fastv", 1.5, 576), r"reduction=1\.5 must lie strictly between 0 and 1"),
        (lambda: config_for("nope", 0.5, 32, 576), r"no budget rule for method 'nope'; config_for knows \["),
        (lambda: paper_config("nope", 0.5, 576), r"no budget rule for method 'nope'; paper_config knows \["),
        (lambda: config_for("csp", 0.5, 2, 16), "csp needs at least 3 decoder layers .*got 2"),
        (lambda: config_for("pdrop", 0.5, 1, 16), "pdrop needs at least 2 decoder layers, got 1"),
        (lambda: config_for("pdrop", 0.5, 32, 576, pdrop_rule="flops"), "pdrop_rule sets PyramidDrop"),
        (
            lambda: paper_config("pdrop", 0.5, 576, pdrop_rule="x"),
            r"pdrop_rule='x'; valid: \['flops', 'last_stage'\]",
        ),
        (lambda: paper_config("pdrop", 0.9, 576), r"cannot reach FastV's 19\.6% .*lowest is 29\.0%"),
        (lambda: config_for("fastv", 0.99, 4, 16), r"fastv cannot reach .* 0\.99 .*closest: 0\.703"),
        (lambda: check_budget("x"), r"budget='x'; valid: \['paper', 'navg'\]"),
        (lambda: budget_config("x", "fastv", 0.5, 4, 16), r"budget='x'"),
    ],
)
def test_errors_name_the_value_and_the_valid_range(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_pdrop_rule_is_ignored_by_other_methods():
    assert paper_config("fastv", 0.75, 576, pdrop_rule="last_stage") == paper_config("fastv", 0.75, 576)
    assert PDropConfig.paper_fields(0.75, PAPER_LAYERS, 576, pdrop_rule="last_stage")["layers"] == (8, 16, 24)
