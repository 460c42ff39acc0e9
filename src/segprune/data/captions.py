"""Grounded captions (GLaMM's GCG task) and short text QA pairs for a scene's objects."""

from __future__ import annotations

from collections import Counter

import numpy as np

from segprune.data.queries import MARGIN, describe, is_unique
from segprune.data.scene import (
    PLURALS,
    QA,
    SHAPES,
    SMALL_OBJECT_FRACTION,
    Caption,
    Obj,
    Phrase,
    position_is_clear,
    position_word,
)

BACKGROUND_WORDS = {"gradient": "shaded", "stripes": "striped", "noise": "mottled"}


def _where(position: str) -> str:
    """Return the phrase for a position word: "at the top left", "on the left", "in the centre"."""
    if position == "centre":
        return "in the centre"
    if position in ("left", "right"):
        return f"on the {position}"
    return f"at the {position}"


def grounded_caption(objects: list[Obj], size: tuple[int, int], background: str) -> Caption:
    """Describe every object, left to right, as "a <size> <colour> <shape>" followed by where it is."""
    image_area = size[0] * size[1]
    order = sorted(range(len(objects)), key=lambda i: objects[i].center)
    text, phrases = "The image shows ", []
    for n, i in enumerate(order):
        obj = objects[i]
        if n:
            text += " and " if n == len(order) - 1 else ", "
        words = f"a {obj.size_word} {obj.colour} {obj.shape}"
        span = (len(text), len(text) + len(words))
        small = obj.area < SMALL_OBJECT_FRACTION * image_area
        phrases.append(Phrase(text=words, target=i, mask=obj.mask, small=small, span=span))
        text += f"{words} {_where(position_word(obj.center, size))}"
    text += f". The background is {BACKGROUND_WORDS[background]}."
    return Caption(text=text, phrases=phrases)


def qa_pairs(objects: list[Obj], size: tuple[int, int], rng: np.random.Generator) -> list[QA]:
    """Return counting, colour, shape and position questions whose answers are read off the image."""
    image_area = size[0] * size[1]
    kinds = Counter(o.shape for o in objects)
    colours = Counter(o.colour for o in objects)
    qa = [QA("How many shapes are there?", str(len(objects)), "count")]
    qa += [QA(f"How many {PLURALS[k]} are there?", str(kinds[k]), "count") for k in SHAPES if k in kinds]
    absent = [k for k in SHAPES if k not in kinds]
    if absent:  # one question whose answer is zero, so "how many" never implies "at least one"
        qa.append(QA(f"How many {PLURALS[absent[int(rng.integers(len(absent)))]]} are there?", "0", "count"))
    qa += [QA(f"How many {c} shapes are there?", str(n), "count") for c, n in sorted(colours.items())]
    for i, obj in enumerate(objects):
        if kinds[obj.shape] == 1:
            qa.append(QA(f"What colour is the {obj.shape}?", obj.colour, "colour"))
        if colours[obj.colour] == 1:
            qa.append(QA(f"What shape is the {obj.colour} object?", obj.shape, "shape"))
        keys = ("shape",) if kinds[obj.shape] == 1 else ("colour", "shape")
        if is_unique(objects, i, keys, image_area) and position_is_clear(obj.center, size, MARGIN):
            qa.append(QA(f"Where is the {describe(obj, keys)}?", position_word(obj.center, size), "position"))
    return qa
