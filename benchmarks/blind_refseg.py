"""The blind baseline of a sweep: referring segmentation with no image token reaching the LLM.

    python benchmarks/blind_refseg.py OUT [--data shapes:2024:300] [--queries-per-scene 4] [--model DIR]

Writes OUT/refseg/blind/dense/samples.jsonl (index, intersection, union, tags: the records
`segprune eval` writes) for the bundled tiny model on the sweep's refseg samples, so
`sweep_report.py` can compare any cell with it (`--model`: a `train-tiny` output's model directory
instead of the bundled model). Uses `SegModel.segment(..., image_tokens=False)`
(image tokens removed, text at its usual positions, mask decoder unchanged).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from segprune.eval.datasets import load_items, parse_data
from segprune.eval.metrics import mask_counts
from segprune.models.prompts import lisa_query
from segprune.models.tiny import tiny


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", default="shapes:2024:300")
    parser.add_argument("--queries-per-scene", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", default=None, help="a saved tiny model directory (default: bundled)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = tiny(args.model).eval()
    items = load_items(parse_data(args.data, queries_per_scene=args.queries_per_scene), "refseg")
    cell = args.out / "refseg" / "blind" / "dense"
    cell.mkdir(parents=True, exist_ok=True)
    partial = cell / "samples.jsonl.partial"  # renamed when complete: no half-written records file
    with open(partial, "w") as f:
        for start in range(0, len(items), args.batch_size):
            loaded = [item.load() for item in items[start : start + args.batch_size]]
            images = [sample.image for sample in loaded]
            queries = [lisa_query(s.query, s.tags) for s in loaded]
            masks = model.segment(images, queries, image_tokens=False)
            for k, (sample, mask) in enumerate(zip(loaded, masks, strict=True)):
                counts = mask_counts(mask.cpu().numpy(), sample.target, ignore=sample.ignore)
                record = {"index": start + k, "intersection": counts.intersection, "union": counts.union}
                f.write(json.dumps({**record, "tags": list(sample.tags)}) + "\n")
    partial.replace(cell / "samples.jsonl")
    print(f"wrote {cell / 'samples.jsonl'} ({len(items)} samples)")


if __name__ == "__main__":
    main()
