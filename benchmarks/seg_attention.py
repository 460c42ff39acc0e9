"""Where the state that decodes `[SEG]` looks: its attention on image tokens, and on the target's.

    python benchmarks/seg_attention.py [--model DIR] [--cases 48]

For validation cases of the shapes benchmark (`segprune.train.validation_set`), one teacher-forced
forward of LISA's prompt + answer with eager attention; for the state one before `[SEG]` (the one
`SegModel.segment` decodes), per decoder layer and averaged over heads and cases: the share of its
attention on image tokens, and the share of that on the tokens whose 14-px patch the target covers
more than half. If the second equals the target's share of the tokens, the LLM reads the image as
a whole, not the object the query names, and no pruning method can lose the target's tokens.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from segprune.models.prompts import lisa_query
from segprune.models.tiny import tiny
from segprune.train.evaluate import validation_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a saved tiny model directory (default: bundled)")
    parser.add_argument("--cases", type=int, default=48)
    args = parser.parse_args()
    if args.cases < 1:
        parser.error(f"--cases must be >= 1, got {args.cases}")
    torch.set_num_threads(1)
    model = tiny(args.model)
    model.mllm.set_attn_implementation("eager")
    config, llava = model.config, model.config.llava_config
    grid = llava.vision_config.image_size // llava.vision_config.patch_size
    on_image, on_target, area = [], [], []
    for sample in validation_set(args.cases):
        text = config.prompt_template.replace("{query}", lisa_query(sample.query)) + " " + config.seg_answer
        batch = model._encode([sample.image], [text])
        with torch.no_grad():
            out = model.mllm.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"],
                output_attentions=True,
            )
        ids = batch["input_ids"][0]
        reader = int((ids == config.seg_token_id).nonzero()[0, 0]) - 1
        image = (ids == llava.image_token_id).nonzero()[:, 0]
        target = torch.from_numpy(sample.target).float()[None, None]
        covered = F.adaptive_avg_pool2d(target, grid).flatten() > 0.5
        rows = torch.stack([a[0, :, reader].mean(0)[image] for a in out.attentions])  # (layers, N)
        on_image.append(rows.sum(1).tolist())
        on_target.append((rows[:, covered].sum(1) / rows.sum(1).clamp(min=1e-12)).tolist())
        area.append(float(covered.float().mean()))
    print(
        json.dumps(
            {
                "model": args.model or "bundled",
                "cases": args.cases,
                "image_share_per_layer": np.round(np.mean(on_image, 0), 3).tolist(),
                "target_share_of_image_attention_per_layer": np.round(np.mean(on_target, 0), 3).tolist(),
                "target_share_of_tokens": round(float(np.mean(area)), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
