"""Mapping a method's decoder layers from the papers' 32 layers to the tiny model's 8."""

from __future__ import annotations

import pytest

from segprune import ALTPConfig, CSPConfig, FastVConfig, PDropConfig
from segprune.methods.prumerge import PruMergeConfig
from segprune.methods.scale import scale_layer, scale_layers
from segprune.methods.visionzip import VisionZipConfig


def test_scale_layer_rounds_halves_up_and_keeps_layer_zero():
    assert [scale_layer(layer, 32, 8) for layer in (0, 1, 2, 3, 6, 8, 14, 24, 31)] == [
        0,
        1,
        1,
        1,
        2,
        2,
        4,
        6,
        8,
    ]


def test_pyramid_drop_stages_map_proportionally():
    assert scale_layers(PDropConfig(layers=(8, 16, 24), ratio=0.5)).layers == (2, 4, 6)
    assert scale_layers(PDropConfig(layers=(8, 16, 24), ratio=0.5), 32, 16).layers == (4, 8, 12)
    with pytest.raises(ValueError, match="collide"):
        scale_layers(PDropConfig(layers=(8, 9, 24)))


@pytest.mark.parametrize(
    ("reduction", "expected"),
    [(0.75, (2, 2)), (0.90, (3, 1)), (0.65, (2, 2)), (0.80, (2, 2)), (0.85, (2, 1))],
)
def test_csp_boundaries_map_proportionally(reduction, expected):
    """Table 6 (7B-336): (7, 7) ends clustering at 1.75 -> 2, scattering at 3.5 -> 4; (11, 3) at 3 and 4."""
    config = scale_layers(CSPConfig.preset("llava-1.5-7b-336", reduction))
    assert (config.cluster_layers, config.scatter_layers) == expected
    original = CSPConfig.preset("llava-1.5-7b-336", reduction)
    assert (config.cluster_tokens, config.prune_tokens) == (original.cluster_tokens, original.prune_tokens)
    config.plan(576, 8)  # fits the 8-layer decoder


def test_csp_keeps_at_least_one_scatter_layer_and_a_pruning_stage():
    assert scale_layers(CSPConfig(cluster_layers=10, scatter_layers=1), 32, 8).scatter_layers == 1
    with pytest.raises(ValueError, match="no pruning stage"):
        scale_layers(CSPConfig(cluster_layers=20, scatter_layers=10), 32, 8)


def test_drop_layer_moves_proportionally():
    assert scale_layers(FastVConfig(layer=2, keep_ratio=0.25)) == FastVConfig(layer=1, keep_ratio=0.25)
    assert scale_layers(ALTPConfig(layer=2)).layer == 1
    assert scale_layers(FastVConfig(layer=16)).layer == 4
    assert scale_layers(FastVConfig(layer=6), 32, 16).layer == 3
    with pytest.raises(ValueError, match="does not fit"):
        scale_layers(FastVConfig(layer=31))


def test_methods_before_the_decoder_are_unchanged():
    for config in (VisionZipConfig(), PruMergeConfig()):
        assert scale_layers(config) is config
