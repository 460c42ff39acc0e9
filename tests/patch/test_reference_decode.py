"""Pruned `generate()` against an independent reference: a hand-written greedy loop over the untouched
model's decoder layers, with no KV cache and no segprune code on the path.

The reference recomputes the whole pruned sequence at every step. At decoder layer l it runs only the
tokens live there: every text and generated token plus the image tokens the prefill kept at l (read
from `segprune.stats`), each at its original position id or, for a plan that renumbers (PyramidDrop's
default), at its rank among the tokens live there. A row that is not live keeps the hidden
state it last had, which is where a re-activated token (CSP) comes back from. Cached decoding must give
the same tokens and logits; a cache that is dropped, renamed or filled wrongly does not.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import segprune
from conftest import EXAMPLES, method_names, position_ids_of
from segprune.methods.plan import Keep
from segprune.models import tiny_llava_inputs

STEPS = 5
N_IMAGE = 16


def replayable(config) -> bool:
    """Whether `config`'s live sets describe its prefill (no merged hidden states)."""
    plan = config.plan(N_IMAGE, 4)
    return not any(isinstance(step, Keep) and step.merge is not None for step in plan.steps)


# Every registered method whose live sets can be replayed, and PyramidDrop with either position rule.
CASES = {name: EXAMPLES[name] for name in method_names() if replayable(EXAMPLES[name])}
CASES["pdrop-original"] = dataclasses.replace(EXAMPLES["pdrop"], positions="original")


def prompt_embeddings(model, inputs) -> torch.Tensor:
    """The decoder's input embeddings of the prompt, as the unpruned LLaVA builds them."""
    seen = {}

    def grab(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]

    hook = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(**inputs, use_cache=False)
    finally:
        hook.remove()
    return seen["embeds"]


def reference_greedy(model, inputs, kept: list[torch.Tensor], steps: int, renumber: bool = False):
    """Greedy tokens and logits of each step, recomputing the pruned sequence from scratch every step."""
    lm = model.model.language_model
    batch = inputs["input_ids"].shape[0]
    image = inputs["input_ids"] == model.config.image_token_id
    image_seq = torch.stack([row.nonzero().squeeze(1) for row in image])  # (batch, N)
    embeds = prompt_embeddings(model, inputs)
    valid = inputs["attention_mask"].bool()
    tokens, logits = [], []
    for _ in range(steps):
        length = embeds.shape[1]
        positions = position_ids_of(valid.long())
        full = embeds.clone()
        for layer_idx, layer in enumerate(lm.layers):
            live_mask = torch.ones(batch, length, dtype=torch.bool)
            live_mask[:, : image.shape[1]] &= ~image
            live_mask.scatter_(1, image_seq.gather(1, kept[layer_idx]), True)
            live = torch.stack([row.nonzero().squeeze(1) for row in live_mask])  # (batch, n_live) sorted
            rows = live[..., None].expand(-1, -1, full.shape[-1])
            hidden = full.gather(1, rows)
            if renumber:  # the live tokens counted afresh, as if the dropped ones had never been there
                live_pos = position_ids_of((valid & live_mask).long()).gather(1, live)
            else:
                live_pos = positions.gather(1, live)
            allowed = (live[:, None, :] <= live[:, :, None]) & valid.gather(1, live)[:, None, :]
            allowed |= live[:, None, :] == live[:, :, None]  # padding rows see themselves only
            mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
            out = layer(
                hidden,
                attention_mask=mask[:, None],
                position_ids=live_pos,
                position_embeddings=lm.rotary_emb(hidden, position_ids=live_pos),
            )
            out = out[0] if isinstance(out, tuple) else out
            full = full.scatter(1, rows, out)
        step_logits = model.lm_head(lm.norm(full[:, -1]))
        token = step_logits.argmax(-1)
        tokens.append(token)
        logits.append(step_logits)
        embeds = torch.cat([embeds, lm.embed_tokens(token)[:, None]], dim=1)
        valid = torch.cat([valid, torch.ones(batch, 1, dtype=torch.bool)], dim=1)
    return torch.stack(tokens, dim=1), torch.stack(logits, dim=1)


@pytest.fixture(autouse=True)
def _unpruned(model):
    yield
    segprune.unprune(model)


@torch.no_grad()
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", sorted(CASES))
def test_generate_equals_a_cache_free_reference_loop(model, name, batch):
    config = CASES[name]
    inputs = tiny_llava_inputs(model, batch=batch, prompt_lengths=(5, 8), left_pad=True)
    if batch == 2:
        assert not inputs["attention_mask"].all(), "batch 2 must hold left padding"
    segprune.prune_(model, config)
    model(**inputs)  # the prefill alone: its live sets are the ones generate() must decode with
    kept = [k.clone() for k in segprune.stats(model).kept_indices]
    out = model.generate(
        **inputs, max_new_tokens=STEPS, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    after = segprune.stats(model)
    segprune.unprune(model)

    tokens, logits = reference_greedy(model, inputs, kept, STEPS, renumber=after.renumbered)
    generated = out.sequences[:, inputs["input_ids"].shape[1] :]
    difference = (torch.stack(out.logits, dim=1) - logits).abs().max()
    assert difference <= 1e-4, f"generate()'s logits differ from the reference by {difference:.3g}"
    assert torch.equal(generated, tokens), f"generate() {generated.tolist()} != reference {tokens.tolist()}"
    # After generate(), stats still describe its prefill: decode steps neither replace nor clear them.
    expected = config.plan(N_IMAGE, 4).live_counts()
    assert after.renumbered == (config.name == "pdrop" and config.positions == "renumber")
    assert after.live_tokens.tolist() == [[c] * batch for c in expected]
    for layer, indices in enumerate(after.kept_indices):
        assert torch.equal(indices, kept[layer])


@torch.no_grad()
def test_reference_loop_equals_the_unpruned_model(model):
    """The reference itself: with every image token kept it is plain greedy decoding."""
    inputs = tiny_llava_inputs(model, batch=2, prompt_lengths=(5, 8), left_pad=True)
    out = model.generate(
        **inputs, max_new_tokens=STEPS, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    everything = [torch.arange(N_IMAGE).expand(2, -1)] * 4
    tokens, logits = reference_greedy(model, inputs, everything, STEPS)
    assert torch.equal(out.sequences[:, inputs["input_ids"].shape[1] :], tokens)
    assert (torch.stack(out.logits, dim=1) - logits).abs().max() <= 1e-4
