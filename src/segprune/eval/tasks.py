"""The two protocols on one batch (`predict`, then `score` into per-sample records) and their accuracy.

- refseg (LISA): one teacher-forced `SegModel.segment` forward per query; a record keeps the
  intersection and union counts and the tags (query type, "small"), so gIoU and cIoU, overall and
  per tag, are rebuilt from the records alone.
- gcg (GLaMM): greedy `SegModel.ground`; a record keeps the prediction and the reference as
  `GCGAnnotation` dicts (masks in RLE), so AP50, mIoU, recall (and METEOR, CIDEr) are computed from
  the records alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from segprune.models.prompts import lisa_query

TASKS = ("refseg", "gcg")
__all__ = ["TASKS", "accuracy", "caption_text", "lisa_query", "predict", "score"]


def predict(
    model: Any,
    task: str,
    samples: Sequence[Any],
    *,
    max_new_tokens: int,
    score_token: str = "prompt",
    instances: bool = False,
) -> list[Any]:
    """Run the model on one batch: masks for `RefSample`s (refseg), `GroundedAnswer`s for `CaptionSample`s.

    `score_token` is `SegModel.segment`'s (refseg only). `instances`: pass each sample's object
    masks (`RefSample.instances`) as CSP Seg-First's instances, the ground-truth oracle."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {list(TASKS)}")
    images = [sample.image for sample in samples]
    options: dict[str, Any] = {}
    if instances:
        missing = [s.sample_id for s in samples if s.instances is None]
        if missing:
            raise ValueError(f"sample {missing[0]!r} carries no instance masks for ground-truth instances")
        options["instance_masks"] = [s.instances for s in samples]
    if task == "refseg":
        queries = [lisa_query(s.query, s.tags) for s in samples]
        return model.segment(images, queries, score_token=score_token, **options)
    return model.ground(images, max_new_tokens=max_new_tokens, **options)


def score(task: str, samples: Sequence[Any], outputs: Sequence[Any]) -> list[dict[str, Any]]:
    """Turn one batch's outputs into JSON-ready per-sample records (no cost or timing fields)."""
    from segprune.eval.metrics import GCGAnnotation, mask_counts

    records = []
    for sample, output in zip(samples, outputs, strict=True):
        if task == "refseg":
            counts = mask_counts(output.cpu().numpy(), sample.target, ignore=sample.ignore)
            record = {"query": sample.query, "intersection": counts.intersection, "union": counts.union}
            records.append({"id": sample.sample_id, **record, "tags": list(sample.tags)})
        else:
            masks = output.masks.cpu().numpy()
            # A [SEG] without a phrase keeps its mask with an empty phrase: it counts for AP and mIoU.
            phrases = ["" if p is None else p for p in output.phrases]
            prediction = GCGAnnotation(sample.sample_id, caption_text(output.text), phrases, list(masks))
            records.append(
                {
                    "id": sample.sample_id,
                    "text": output.text,
                    "errors": list(output.errors),
                    "pred": prediction.to_dict(),
                    "ref": sample.reference.to_dict(),
                }
            )
    return records


def caption_text(answer: str) -> str:
    """Return a grounded answer as a plain caption: tags and `[SEG]` removed, as GLaMM's inference does."""
    text = re.sub(r"<[^>]*>", "", answer).replace("[SEG]", "")
    return " ".join(text.split())


def accuracy(task: str, records: Sequence[dict[str, Any]], *, captions: bool = False) -> dict[str, Any]:
    """Return the task's accuracy over `records`: gIoU/cIoU per tag, or the GCG scores."""
    if task == "refseg":
        from segprune.eval.metrics import RefSegAccumulator

        summary = RefSegAccumulator.from_records(records).summary()
        return {tag: scores.to_dict() for tag, scores in summary.items()}
    from segprune.eval.metrics import GCGAnnotation, evaluate_gcg, evaluate_gcg_small

    if not records:
        return {"n_images": 0}
    predictions = [GCGAnnotation.from_dict(r["pred"]) for r in records]
    references = [GCGAnnotation.from_dict(r["ref"]) for r in records]
    scores = evaluate_gcg(predictions, references, captions=captions).to_dict()
    scores["small"] = evaluate_gcg_small(predictions, references)
    scores["answers_with_errors"] = sum(bool(r["errors"]) for r in records)
    scores["masks_per_image"] = float(np.mean([len(p.masks) for p in predictions]))
    return scores
