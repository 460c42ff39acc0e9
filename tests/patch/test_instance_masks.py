"""`segprune.patch.instance_masks`: a per-call instance detector, set for a block and restored after."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import segprune
from conftest import EXAMPLES
from segprune.models import tiny_llava_inputs
from segprune.patch import instance_detector, instance_masks

SEG_FIRST = dataclasses.replace(EXAMPLES["csp"], cluster="seg_first", instance_regions=3)


@pytest.fixture
def pruned(model):
    segprune.prune_(model, SEG_FIRST)
    yield model
    segprune.unprune(model)


def _detector(calls):
    def detect(pixel_values, grid):
        calls.append((tuple(pixel_values.shape), grid))
        n = grid[0] * grid[1]
        return (torch.arange(n) % 2).expand(pixel_values.shape[0], n).clone()

    return detect


@torch.no_grad()
def test_the_block_sets_the_detector_and_restores_it(pruned):
    inputs = tiny_llava_inputs(pruned, batch=2, prompt_lengths=(5, 8), left_pad=True)
    calls = []
    detect = _detector(calls)
    with instance_masks(pruned, detect):
        assert instance_detector(pruned) is detect
        pruned(**inputs)
    assert len(calls) == 1 and calls[0][0][0] == 2
    assert instance_detector(pruned) is None
    pruned(**inputs)  # outside the block the runner no longer calls it
    assert len(calls) == 1


def test_the_previous_detector_comes_back_also_on_error(model):
    before = _detector([])
    segprune.prune_(model, SEG_FIRST, instance_masks=before)
    try:
        with pytest.raises(KeyError), instance_masks(model, _detector([])):
            raise KeyError("inside")
        assert instance_detector(model) is before
    finally:
        segprune.unprune(model)


def test_errors(model):
    with (
        pytest.raises(RuntimeError, match="instance_masks needs a pruned model"),
        instance_masks(model, _detector([])),
    ):
        pass
    with pytest.raises(RuntimeError, match="instance_detector needs a pruned model"):
        instance_detector(model)
    segprune.prune_(model, SEG_FIRST)
    try:
        with (
            pytest.raises(TypeError, match="detector must be a callable"),
            instance_masks(model, torch.zeros(2, 16)),
        ):
            pass
    finally:
        segprune.unprune(model)
