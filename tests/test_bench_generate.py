"""The GCG bench's own decode loops against `generate()`: the cached loop and the no-cache loop give
`model.generate(..., do_sample=False)`'s greedy tokens and the same logits at every step, on the tiny
LLaVA and the tiny Qwen2.5-VL (whose decode positions are M-RoPE ids offset by `rope_deltas`, and
whose no-cache calls need `image_grid_thw` and `mm_token_type_ids`)."""

from __future__ import annotations

import pytest
import torch

import segprune
import segprune.bench.gcg as gcg
from segprune.bench.gcg import grow
from segprune.bench.models import TINY_QWEN, build_model
from segprune.methods.fastv import FastVConfig
from segprune.presets import TINY

NEW_TOKENS = 5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=[TINY, TINY_QWEN])
def model(request):
    return build_model(request.param, "cpu", torch.float32)


class HeadLogits:
    """The last position's logits of every LM-head call inside the block, one `(batch, vocab)` each."""

    def __init__(self, model):
        self.model, self.seen = model, []

    def __enter__(self):
        self.hook = self.model.lm_head.register_forward_hook(lambda m, a, out: self.seen.append(out[:, -1]))
        return self.seen

    def __exit__(self, *exc):
        self.hook.remove()


def generated(model, inputs):
    length = inputs["input_ids"].shape[1]
    with HeadLogits(model) as logits:
        # Random weights may pick the EOS id: no stopping, so every sample runs all the steps.
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None)
    assert out.shape[1] == length + NEW_TOKENS
    return out[:, length:], torch.stack(logits, dim=1)


def assert_same(tokens, logits, reference):
    ref_tokens, ref_logits = reference
    assert torch.equal(tokens, ref_tokens)
    assert logits.shape == ref_logits.shape
    assert (logits - ref_logits).abs().max() <= 1e-5


@torch.no_grad()
def test_the_cached_loop_is_generate(model):
    inputs = gcg.gcg_inputs(model, 2)
    reference = generated(model, inputs)
    with HeadLogits(model) as logits:
        tokens, _ = gcg.greedy_cached(model, inputs, NEW_TOKENS)
    assert_same(tokens, torch.stack(logits, dim=1), reference)


@torch.no_grad()
def test_the_no_cache_loop_is_generate(model):
    inputs = gcg.gcg_inputs(model, 2)
    reference = generated(model, inputs)
    with HeadLogits(model) as logits:
        tokens = gcg.greedy_no_cache(model, inputs, NEW_TOKENS)
    assert_same(tokens, torch.stack(logits, dim=1), reference)


@torch.no_grad()
def test_the_pruned_cached_loop_is_the_pruned_generate(model):
    inputs = gcg.gcg_inputs(model, 2)
    segprune.prune_(model, FastVConfig(layer=2, keep_ratio=0.25))
    try:
        reference = generated(model, inputs)
        with HeadLogits(model) as logits:
            tokens, _ = gcg.greedy_cached(model, inputs, NEW_TOKENS)
    finally:
        segprune.unprune(model)
    assert_same(tokens, torch.stack(logits, dim=1), reference)


def test_grow_extends_the_per_token_inputs_only():
    inputs = {
        "input_ids": torch.tensor([[7, 8], [9, 10]]),
        "attention_mask": torch.ones(2, 2, dtype=torch.long),
        "mm_token_type_ids": torch.tensor([[1, 0], [1, 0]], dtype=torch.int32),
        "pixel_values": torch.zeros(8, 12),
        "image_grid_thw": torch.tensor([[1, 2, 2], [1, 2, 2]]),
    }
    out = grow(inputs, torch.tensor([[3], [4]]))
    assert out["input_ids"].tolist() == [[7, 8, 3], [9, 10, 4]]
    assert out["attention_mask"].tolist() == [[1, 1, 1]] * 2
    assert out["mm_token_type_ids"].tolist() == [[1, 0, 0]] * 2
    assert out["mm_token_type_ids"].dtype == torch.int32
    assert out["pixel_values"] is inputs["pixel_values"] and out["image_grid_thw"] is inputs["image_grid_thw"]
    with pytest.raises(
        ValueError, match=r"input 'token_type_ids' has one entry per token \(shape \(2, 2\)\)"
    ):
        grow({**inputs, "token_type_ids": torch.zeros(2, 2)}, torch.tensor([[3], [4]]))


def test_qwen_tables_run_the_no_cache_row():
    gcg_rows = gcg.run_gcg(
        TINY_QWEN,
        ["fastv"],
        [0.75],
        [2],
        device="cpu",
        dtype=torch.float32,
        new_tokens=3,
        kinds=["no-cache", "eager"],
        repeats=1,
        warmup=0,
        progress=lambda _: None,
    )
    assert [(r.method, r.kind) for r in gcg_rows] == [
        ("none", "no-cache"),
        ("none", "eager"),
        ("fastv", "eager"),
    ]
    assert gcg_rows[0].token_match == 1.0 and gcg_rows[0].reference == "none eager"
