"""PyramidDrop's position ids: renumbered after each drop (its reference code) or kept (segprune's rule)."""

from __future__ import annotations

import pytest
import torch

import segprune
from conftest import INVALID
from segprune import PDropConfig
from segprune.models import tiny_llava_inputs

N_IMAGE = 16


@pytest.fixture(autouse=True)
def _unpruned(model):
    yield
    segprune.unprune(model)


def positions_per_layer(model, run) -> list[list[list[int]]]:
    """Run `run()` and return, per decoder call, each layer's `position_ids` (batch 1)."""
    seen: dict[int, list] = {}
    hooks = []
    for idx, layer in enumerate(model.model.language_model.layers):

        def grab(module, args, kwargs, idx=idx):
            seen.setdefault(idx, []).append(kwargs["position_ids"][0].tolist())

        hooks.append(layer.register_forward_pre_hook(grab, with_kwargs=True))
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return [seen[i] for i in sorted(seen)]


@torch.no_grad()
@pytest.mark.parametrize("positions", ["renumber", "original"])
def test_position_ids_after_each_stage(model, positions):
    inputs = tiny_llava_inputs(model, batch=1, prompt_lengths=(6,))  # 2 text, 16 image, 6 text tokens
    length = inputs["input_ids"].shape[1]
    config = PDropConfig(layers=(1, 3), ratio=0.5, positions=positions)  # 16 -> 8 at layer 1 -> 4 at 3
    segprune.prune_(model, config)
    seen = positions_per_layer(
        model, lambda: model.generate(**inputs, max_new_tokens=3, do_sample=False, min_new_tokens=3)
    )
    kept = segprune.stats(model).kept_indices
    assert segprune.stats(model).renumbered == (positions == "renumber")
    for layer, live in enumerate([16, 8, 8, 4]):
        prefill, first_step, second_step = seen[layer]
        if positions == "renumber":
            assert prefill == list(range(length - N_IMAGE + live))  # contiguous: no gap where drops were
            dropped = N_IMAGE - live
        else:
            image = [2 + int(i) for i in kept[layer][0]]  # image tokens start at sequence index 2
            assert prefill == sorted([0, 1, *image, *range(2 + N_IMAGE, length)])
            dropped = 0
        # Decode steps continue from the length this layer saw.
        assert first_step == [length - dropped] and second_step == [length + 1 - dropped]


@torch.no_grad()
def test_renumbering_keeps_the_same_tokens_and_changes_the_output(model):
    """The first stage ranks before any drop, so both rules keep the same set; only later positions differ."""
    inputs = tiny_llava_inputs(model, batch=2, prompt_lengths=(5, 8), left_pad=True)
    results = {}
    for positions in ("original", "renumber"):
        segprune.prune_(model, PDropConfig(layers=(2,), ratio=0.5, positions=positions))
        results[positions] = (model(**inputs).logits, segprune.stats(model).kept_indices)
    (original, kept_original), (renumbered, kept_renumbered) = results["original"], results["renumber"]
    for a, b in zip(kept_original, kept_renumbered, strict=True):
        assert torch.equal(a, b)
    assert (renumbered - original)[:, -1].abs().max() > 1e-3


def test_positions_must_be_a_known_rule():
    assert ({"positions": "compress"}, "positions='compress'") in INVALID["pdrop"]
    with pytest.raises(ValueError, match=r"positions='compress'.*'renumber', 'original'"):
        PDropConfig(positions="compress")
