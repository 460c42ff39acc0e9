"""Helpers shared by the static-decode tests of both families: pruning by name, `generate()`'s reference."""

from __future__ import annotations

import torch

import segprune
from conftest import EXAMPLES


def prune_as(model, name: str) -> None:
    """Unprune `model`, then prune it with `EXAMPLES[name]` ("none": leave it unpruned)."""
    segprune.unprune(model)
    if name != "none":
        segprune.prune_(model, EXAMPLES[name])


@torch.no_grad()
def reference(model, inputs, steps: int):
    """`generate()`'s greedy tokens `(batch, steps + 1)` and the logits of its decode steps."""
    out = model.generate(
        **inputs, max_new_tokens=steps + 1, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    tokens = out.sequences[:, inputs["input_ids"].shape[1] :]
    return tokens, torch.stack(out.logits[1:], dim=1)
