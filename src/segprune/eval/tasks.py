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

TASKS = ("refseg", "gcg")
# LISA's validation wording (utils/dataset.py, ValDataset): phrases are asked about, sentences are
# followed by the instruction.
PHRASE_QUERY = "What is {text} in this image? Please output segmentation mask."
SENTENCE_QUERY = "{text} Please output segmentation mask."


def lisa_query(text: str, tags: Sequence[str]) -> str:
    """Return the query LISA asks for a referring expression (its sentence form for ReasonSeg sentences)."""
    template = SENTENCE_QUERY if "type:sentence" in tags else PHRASE_QUERY
    return template.format(text=text)


def predict(model: Any, task: str, loaded: list[tuple], *, max_new_tokens: int) -> list[Any]:
    """Run the model on one loaded batch: masks (refseg) or `GroundedAnswer`s (gcg)."""
    images = [sample[0] for sample in loaded]
    if task == "refseg":
        queries = [lisa_query(query, tags) for _, query, _, _, tags in loaded]
        return model.segment(images, queries)
    if task == "gcg":
        return model.ground(images, max_new_tokens=max_new_tokens)
    raise ValueError(f"unknown task {task!r}; valid: {list(TASKS)}")


def score(task: str, ids: Sequence[str], loaded: list[tuple], outputs: list[Any]) -> list[dict[str, Any]]:
    """Turn one batch's outputs into JSON-ready per-sample records (no cost or timing fields)."""
    from segprune.eval.metrics import GCGAnnotation, mask_counts

    records = []
    for sample_id, sample, output in zip(ids, loaded, outputs, strict=True):
        if task == "refseg":
            _, query, target, ignore, tags = sample
            counts = mask_counts(output.cpu().numpy(), target, ignore=ignore)
            record = {"query": query, "intersection": counts.intersection, "union": counts.union}
            records.append({"id": sample_id, **record, "tags": list(tags)})
        else:
            _, reference = sample
            masks = output.masks.cpu().numpy()
            # A [SEG] without a phrase keeps its mask with an empty phrase: it counts for AP and mIoU.
            phrases = ["" if p is None else p for p in output.phrases]
            prediction = GCGAnnotation(sample_id, caption_text(output.text), phrases, list(masks))
            records.append(
                {
                    "id": sample_id,
                    "text": output.text,
                    "errors": list(output.errors),
                    "pred": prediction.to_dict(),
                    "ref": reference.to_dict(),
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
