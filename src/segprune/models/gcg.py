"""Grounded conversation (GLaMM GCG) answers: pair `<p> phrase </p>` spans with the `[SEG]` that follows.

GLaMM answers interleave text and grounding: "<p> A man </p> [SEG] rides <p> a horse </p> [SEG]."
Each `[SEG]` yields one mask, and the phrase closed just before it names what the mask shows. Parsing
works on token ids, so it never depends on how a tokenizer spaces its text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class GroundedAnswer:
    """One grounded answer: its text, one phrase and one mask per `[SEG]`, and what was malformed.

    `masks` is `(n_seg, H, W)` bool at the original image size (float logits if asked for);
    `phrases[i]` names `masks[i]`, or is None when that `[SEG]` had no phrase. `errors` describes each
    malformed part of the answer.
    """

    text: str
    phrases: list[str | None]
    masks: torch.Tensor
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ParsedAnswer:
    """Token positions of a grounded answer: `segs[i]` is the index of the i-th `[SEG]` and
    `spans[i]` the `(start, end)` token range of its phrase (None without one)."""

    segs: list[int]
    spans: list[tuple[int, int] | None]
    errors: list[str]


def parse_grounded(tokens: Sequence[int], seg_id: int, open_id: int, close_id: int) -> ParsedAnswer:
    """Pair each `[SEG]` in `tokens` with the phrase `<p> … </p>` closed before it; report what is malformed.

    A closed phrase waits for the next `[SEG]`; tokens in between are allowed (GLaMM pairs by order).
    Malformed parts never raise: a `[SEG]` with no waiting phrase gets None, a phrase that meets a new
    `<p>` or the end before any `[SEG]` is dropped, and each is described in `errors`.
    """
    segs: list[int] = []
    spans: list[tuple[int, int] | None] = []
    errors: list[str] = []
    opened: int | None = None  # index of the first token inside an open <p>
    waiting: tuple[int, int] | None = None  # a closed phrase not yet paired with a [SEG]

    def drop_waiting(reason: str) -> None:
        nonlocal waiting
        if waiting is not None:
            errors.append(f"phrase at tokens {waiting[0]}-{waiting[1]} has no [SEG] ({reason})")
            waiting = None

    for i, token in enumerate(tokens):
        if token == open_id:
            if opened is not None:
                errors.append(f"<p> at token {opened - 1} is not closed before the <p> at token {i}")
            drop_waiting(f"a new <p> starts at token {i}")
            opened = i + 1
        elif token == close_id:
            if opened is None:
                errors.append(f"</p> at token {i} closes no <p>")
                continue
            drop_waiting(f"another phrase closes at token {i}")
            waiting, opened = (opened, i), None
        elif token == seg_id:
            segs.append(i)
            if opened is not None:
                errors.append(f"[SEG] at token {i} is inside the <p> opened at token {opened - 1}")
                opened = None
                spans.append(None)
            elif waiting is None:
                errors.append(f"[SEG] at token {i} has no phrase")
                spans.append(None)
            else:
                spans.append(waiting)
                waiting = None
    if opened is not None:
        errors.append(f"<p> at token {opened - 1} is never closed")
    drop_waiting("the answer ends")
    return ParsedAnswer(segs, spans, errors)
