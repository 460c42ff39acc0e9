"""Referring-segmentation scores of a tiny model on a fixed shapes split, with and without image tokens.

`validation_set(n, seed)` picks one query per scene, cycling through the four query types so each
is a quarter of the set. `evaluate_refseg` runs `SegModel.segment` (LISA's protocol: one teacher-
forced forward, mask = logits > 0) and returns gIoU/cIoU overall and per type. With `blind=True`
the image tokens never reach the LLM: the text runs alone, at the positions it has with the image
in place, while SAM still sees the image. The gap between the two says how much the LLM reads its
image tokens, which is what token pruning acts on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from segprune.data import generate_split
from segprune.eval.metrics import RefSegAccumulator, RefSegScores
from segprune.models import seg_inputs
from segprune.models.tiny import refer_query
from segprune.train.samples import QUERY_TYPES

VAL_SEED = 2024  # training draws scenes from 3-part seeds (seed, step, row), so they never collide


@dataclass(frozen=True)
class RefSample:
    """One referring-segmentation case: image, query phrase, target mask, query type."""

    image: np.ndarray
    phrase: str
    mask: np.ndarray
    type: str
    sample_id: str


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
                out.append(RefSample(scene.image, query.text, query.mask, kind, scene.scene_id))
                break
    return out


@torch.no_grad()
def segment_blind(model: Any, images: Sequence[Any], queries: Sequence[str]) -> list[torch.Tensor]:
    """`SegModel.segment` with no image token reaching the LLM: bool masks at the original sizes."""
    config = model.config
    texts = [model._prompt(q) + " " + config.seg_answer for q in queries]
    batch = model._encode(images, texts)
    image_token = config.llava_config.image_token_id
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    # Positions as with the image in place, so the text sits where it always does.
    positions = seg_inputs.positions(attention_mask)
    keep = input_ids != image_token
    n_text = int(keep[0].sum())  # every prompt holds the same number of image tokens
    input_ids = input_ids[keep].view(len(texts), n_text)
    attention_mask = attention_mask[keep].view(len(texts), n_text)
    positions = positions[keep].view(len(texts), n_text)
    language_model = model.mllm.model.language_model
    out = language_model(
        inputs_embeds=language_model.embed_tokens(input_ids),
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=False,
    )
    first = (input_ids == config.seg_token_id).int().argmax(dim=1)
    rows = torch.arange(len(texts), device=first.device)
    hidden = out.last_hidden_state[rows, first - 1][:, None]
    low_res = model.decode_masks(model.sam.get_image_embeddings(batch["sam_pixels"]), hidden)
    return [model._to_original(low_res[b], batch["sam"], b)[0] > 0 for b in range(len(texts))]


@torch.no_grad()
def evaluate_refseg(
    model: Any, samples: Sequence[RefSample], batch_size: int = 8, blind: bool = False
) -> dict[str, RefSegScores]:
    """Return gIoU/cIoU over `samples` (key "all") and per query type."""
    acc = RefSegAccumulator()
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        images = [s.image for s in chunk]
        queries = [refer_query(s.phrase) for s in chunk]
        masks = segment_blind(model, images, queries) if blind else model.segment(images, queries)
        for s, mask in zip(chunk, masks, strict=True):
            acc.add(mask.cpu().numpy(), s.mask, tags=(s.type,))
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


if __name__ == "__main__":  # python -m segprune.train.evaluate [MODEL_DIR] [N]
    import json
    import sys

    from segprune.models.tiny import tiny

    model_dir = sys.argv[1] if len(sys.argv) > 1 else None
    print(json.dumps(score_report(tiny(model_dir), int(sys.argv[2]) if len(sys.argv) > 2 else 200), indent=2))
