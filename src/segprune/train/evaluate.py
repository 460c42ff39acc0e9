"""Referring-segmentation scores of a tiny model on a fixed shapes split, with and without image tokens.

`validation_set(n, seed)` picks one query per scene, cycling through the four query types so each
is a quarter of the set. `evaluate_refseg` runs `SegModel.segment` (LISA's protocol: one teacher-
forced forward, mask = logits > 0) and returns gIoU/cIoU overall and per type. With `blind=True`
the image tokens never reach the LLM (`segment(..., image_tokens=False)`): the text runs alone, at
the positions it has with the image in place, while SAM still sees the image. The gap between the
two says how much the LLM reads its image tokens, which is what token pruning acts on. The cases
are the evaluation's `RefSample`s (`segprune.eval.datasets`), worded as its refseg task words them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from segprune.data import generate_split
from segprune.data.scene import QUERY_TYPES
from segprune.eval.datasets import RefSample
from segprune.eval.metrics import RefSegAccumulator, RefSegScores
from segprune.models.prompts import lisa_query

VAL_SEED = 2024  # training draws scenes from 3-part seeds (seed, step, row), so they never collide


def validation_set(n: int, seed: int = VAL_SEED) -> list[RefSample]:
    """Return `n` cases from scenes 0..n-1 of split `seed`: case i asks a query of type i mod 4 (if the
    scene has one, else the next type), picked by a generator seeded with (seed, i)."""
    out = []
    for i, scene in enumerate(generate_split(n, seed)):
        rng = np.random.default_rng([seed, i, 7])
        for k in range(len(QUERY_TYPES)):
            kind = QUERY_TYPES[(i + k) % len(QUERY_TYPES)]
            queries = [q for q in scene.queries if q.type == kind]
            if queries:
                query = queries[int(rng.integers(len(queries)))]
                out.append(
                    RefSample(scene.scene_id, scene.image, query.text, query.mask, tags=(f"type:{kind}",))
                )
                break
    return out


def segment_blind(model: Any, images: Sequence[Any], queries: Sequence[str]) -> list[torch.Tensor]:
    """`SegModel.segment` with no image token reaching the LLM: `segment(..., image_tokens=False)`."""
    return model.segment(images, queries, image_tokens=False)


@torch.no_grad()
def evaluate_refseg(
    model: Any, samples: Sequence[RefSample], batch_size: int = 8, blind: bool = False
) -> dict[str, RefSegScores]:
    """Return gIoU/cIoU over `samples` (key "all") and per query type (keys "attribute", ...)."""
    acc = RefSegAccumulator()
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        queries = [lisa_query(s.query, s.tags) for s in chunk]
        masks = model.segment([s.image for s in chunk], queries, image_tokens=not blind)
        for s, mask in zip(chunk, masks, strict=True):
            acc.add(mask.cpu().numpy(), s.target, tags=(s.type,))
    return acc.summary()


def score_report(model: Any, n: int = 200, seed: int = VAL_SEED) -> dict[str, dict[str, float]]:
    """Return gIoU/cIoU per query type and overall, with all 576 image tokens and with none."""
    samples = validation_set(n, seed)
    out = {}
    for name, blind in (("full", False), ("no_image_tokens", True)):
        scores = evaluate_refseg(model, samples, blind=blind)
        out[name] = {key: round(s.giou, 4) for key, s in scores.items()}
        out[name]["ciou"] = round(scores["all"].ciou, 4)
    out["n"] = {"cases": len(samples), "seed": seed}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m segprune.train.evaluate [MODEL_DIR] [N] [--device D] [--out FILE]`: print the report."""
    import argparse
    import json
    from pathlib import Path

    from segprune.checks import check_device
    from segprune.models.tiny import tiny

    parser = argparse.ArgumentParser(
        prog="python -m segprune.train.evaluate", description=score_report.__doc__
    )
    parser.add_argument(
        "model", nargs="?", default=None, help="a saved tiny model (default: the bundled one)"
    )
    parser.add_argument("n", nargs="?", type=int, default=200, help="validation cases, one per scene")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--out", default=None, help="also write the report to this JSON file")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"N={args.n} is out of range; valid: >= 1")
    model = tiny(args.model).to(check_device(args.device)).eval()
    report = json.dumps(score_report(model, args.n), indent=2)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
