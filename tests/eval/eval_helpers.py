"""Shared pieces of the runner and sweep tests; run as a script, one torchrun worker of a sharded run.

torchrun --nproc-per-node 2 tests/eval/eval_helpers.py OUT
"""

from __future__ import annotations

import sys
from typing import Any

from segprune import FastVConfig
from segprune.eval.datasets import parse_data
from segprune.eval.runner import EvalSpec
from segprune.models.load import load_model

SPEC = EvalSpec(
    "refseg",
    parse_data("shapes:0:3", queries_per_scene=2),  # 6 queries
    "tiny-random",
    FastVConfig(layer=1, keep_ratio=0.25),
    batch_size=2,
)


def centred_model() -> Any:
    """Return the tiny random SegModel with each mask's logits centred on 0.

    Its raw logits are negative everywhere, so every mask would be empty and every IoU 0, and a
    test comparing two runs could not tell them apart. Centred, about half the pixels are in, and
    the counts move with the [SEG] state, the query and the pruning.
    """
    model = load_model("tiny-random")

    def centre(module: Any, args: Any, output: Any) -> Any:
        masks = output[0]
        return (masks - masks.mean(dim=(-2, -1), keepdim=True), *output[1:])

    model.sam.mask_decoder.register_forward_hook(centre)
    return model


def without_timing(records: list[dict]) -> list[dict]:
    """Return records without their batch timing, the one part that differs between runs."""
    return [{k: v for k, v in r.items() if k != "batch"} for r in records]


if __name__ == "__main__":
    from segprune.eval.runner import evaluate

    evaluate(centred_model(), SPEC, sys.argv[1], progress=False)
