"""Helpers for the SegModel tests: images of different sizes and scripted generation."""

from __future__ import annotations

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

EOS = 2


def images() -> list:
    """Two uint8 images of different sizes and layouts: numpy (H, W, 3) and torch (3, H, W)."""
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)
    second = torch.from_numpy(rng.integers(0, 256, (3, 33, 17), dtype=np.uint8))
    return [first, second]


class Scripted(LogitsProcessor):
    """Force sample b to write `scripts[b]` (token ids, then end-of-sequence)."""

    def __init__(self, scripts: list[list[int]], prompt_length: int) -> None:
        self.scripts = scripts
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        forced = torch.full_like(scores, -1e9)
        for b, script in enumerate(self.scripts):
            forced[b, script[step] if step < len(script) else EOS] = 0.0
        return forced


def script_ids(model, texts: list[str]) -> list[list[int]]:
    """Token ids of each answer text, without `<s>`, ending with `</s>`."""
    return [model.tokenizer(text, add_special_tokens=False)["input_ids"] + [EOS] for text in texts]


def ground_scripted(model, pictures, texts: list[str], **kwargs) -> list:
    """Run `model.ground` with the answers forced to `texts`."""
    prompt = model._prompt(model.config.gcg_query)
    length = model._encode(pictures, [prompt] * len(pictures))["input_ids"].shape[1]
    processor = LogitsProcessorList([Scripted(script_ids(model, texts), length)])
    return model.ground(pictures, max_new_tokens=24, logits_processor=processor, **kwargs)
