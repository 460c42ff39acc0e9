"""The generic runner's decode path: a step of several tokens through the pruned KV cache."""

from __future__ import annotations

import pytest
import torch

import segprune
from conftest import EXAMPLES
from segprune.methods.replay import ReplayConfig
from segprune.models import tiny_llava_inputs
from segprune.patch.transformers_api import cache_kwargs, output_cache


@pytest.fixture(autouse=True)
def _unpruned(model):
    yield
    segprune.unprune(model)


@torch.no_grad()
@pytest.mark.parametrize("left_pad", [False, True])
def test_a_multi_token_decode_step_equals_one_forward_with_the_same_live_sets(model, left_pad):
    """SDPA's `is_causal` would align several new queries to the first keys; the runner masks them."""
    lengths = (6, 9) if left_pad else (6,)
    inputs = tiny_llava_inputs(model, batch=2, prompt_lengths=lengths, left_pad=True)
    segprune.prune_(model, EXAMPLES["fastv"])
    mask = inputs["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    prefill = model(**inputs, position_ids=positions, use_cache=True)
    more = torch.tensor([[5, 6, 7], [8, 9, 10]])
    full_mask = torch.cat([mask, torch.ones_like(more)], dim=1)
    more_positions = positions[:, -1:] + torch.arange(1, 4)
    step = model(
        input_ids=more,
        attention_mask=full_mask,
        position_ids=more_positions,
        use_cache=True,
        **cache_kwargs(model, output_cache(model, prefill)),
    ).logits
    segprune.prune_(model, ReplayConfig.from_stats(segprune.stats(model)))
    full = model(
        input_ids=torch.cat([inputs["input_ids"], more], dim=1),
        attention_mask=full_mask,
        pixel_values=inputs["pixel_values"],
        position_ids=torch.cat([positions, more_positions], dim=1),
    ).logits[:, -3:]
    assert (step - full).abs().max() <= 1e-4
