"""What a synthetic grounding scene is: its vocabulary, its objects and its annotations.

Generation lives in `shapes.py`; this module only defines the data and the few word rules
(size words, position words) that queries, captions and tests must all agree on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross", "ring", "diamond")
PLURALS = {kind: kind + "es" if kind.endswith("s") else kind + "s" for kind in SHAPES}
# Corners a viewer can count on the outline; the reasoning queries ("the object that has the most
# corners") are defined by this table. Circles and rings have none; a star has 5 tips and 5 notches.
CORNERS = {
    "circle": 0,
    "ring": 0,
    "triangle": 3,
    "square": 4,
    "diamond": 4,
    "hexagon": 6,
    "star": 10,
    "cross": 12,
}
# Saturated colours, far apart in hue, so that a name never depends on the muted background.
COLOURS = {
    "red": (215, 35, 35),
    "orange": (245, 135, 15),
    "yellow": (235, 215, 25),
    "green": (35, 165, 55),
    "cyan": (25, 195, 205),
    "blue": (35, 70, 215),
    "purple": (135, 45, 185),
    "pink": (245, 115, 185),
}
SIZE_WORDS = ("small", "medium", "large")
# Size words are fixed thresholds on the visible area as a fraction of the image: below 1% is
# small (also the small-object flag), 1-6% medium, above 6% large. One 14-px patch is 0.17%.
SIZE_THRESHOLDS = (0.01, 0.06)
SMALL_OBJECT_FRACTION = 0.01
# A size word is only used to tell objects apart when the area is this factor away from a threshold.
SIZE_CLEAR_FACTOR = 1.2
QUERY_TYPES = ("attribute", "spatial", "superlative", "reasoning")


def size_word(area_fraction: float) -> str:
    """Return the size word ("small", "medium", "large") of a visible area, as a fraction of the image."""
    low, high = SIZE_THRESHOLDS
    return "small" if area_fraction < low else "medium" if area_fraction < high else "large"


def size_is_clear(area_fraction: float) -> bool:
    """Return whether an area is far enough from both size thresholds for its size word to be unambiguous."""
    return all(not (t / SIZE_CLEAR_FACTOR <= area_fraction <= t * SIZE_CLEAR_FACTOR) for t in SIZE_THRESHOLDS)


def position_word(center: tuple[float, float], size: tuple[int, int]) -> str:
    """Return the 3x3-grid cell that holds `center` (x, y), e.g. "top left", "top", "centre", "right"."""
    (x, y), (height, width) = center, size
    row = ("top", "", "bottom")[min(int(3 * y / height), 2)]
    col = ("left", "", "right")[min(int(3 * x / width), 2)]
    return f"{row} {col}".strip() or "centre"


def position_is_clear(center: tuple[float, float], size: tuple[int, int], margin: float) -> bool:
    """Return whether `center` lies at least `margin` pixels from the lines of the 3x3 position grid."""
    (x, y), (height, width) = center, size
    return all(abs(x - width * k / 3) >= margin for k in (1, 2)) and all(
        abs(y - height * k / 3) >= margin for k in (1, 2)
    )


@dataclass(frozen=True, eq=False)
class Obj:
    """One shape of a scene. `mask` holds its visible pixels (later objects drawn over it removed).

    `bbox` is (x, y, w, h) of the visible pixels, as in COCO; `area` counts them; `center` (x, y) is
    where the shape was drawn (its geometric centre), which positions and relations are judged by.
    """

    shape: str
    colour: str
    size_word: str
    bbox: tuple[int, int, int, int]
    mask: np.ndarray = field(repr=False)
    area: int
    center: tuple[float, float]


@dataclass(frozen=True, eq=False)
class Query:
    """A referring expression for exactly one object; `mask` is that object's visible mask."""

    text: str
    type: str  # one of QUERY_TYPES
    target: int  # index into Scene.objects
    mask: np.ndarray = field(repr=False)
    small: bool  # visible area below 1% of the image


@dataclass(frozen=True, eq=False)
class Phrase:
    """One grounded phrase of a caption: `span` is its (start, end) in the plain caption text."""

    text: str
    target: int
    mask: np.ndarray = field(repr=False)
    small: bool
    span: tuple[int, int]


@dataclass(frozen=True)
class Caption:
    """A grounded caption (GCG): plain text plus one phrase per object, in left-to-right order."""

    text: str
    phrases: list[Phrase]

    @property
    def tagged(self) -> str:
        """Return the GLaMM form: each phrase wrapped as `<p> phrase </p> [SEG]`."""
        return tag_caption(self.text, [p.span for p in self.phrases])

    @property
    def pairs(self) -> list[tuple[str, np.ndarray]]:
        """Return the (phrase, mask) pairs in caption order."""
        return [(p.text, p.mask) for p in self.phrases]


@dataclass(frozen=True)
class QA:
    """A short question whose answer only the image supplies ("How many stars are there?" -> "2")."""

    question: str
    answer: str
    type: str  # "count", "colour", "shape" or "position"


@dataclass(frozen=True, eq=False)
class Scene:
    """A generated image, its objects (in drawing order) and the annotations derived from them."""

    scene_id: str
    image: np.ndarray = field(repr=False)  # (H, W, 3) uint8
    objects: list[Obj]
    queries: list[Query]
    caption: Caption
    qa: list[QA]
    background: str  # "gradient", "stripes" or "noise"

    @property
    def size(self) -> tuple[int, int]:
        """Return (height, width)."""
        return self.image.shape[0], self.image.shape[1]


def tag_caption(text: str, spans: list[tuple[int, int]]) -> str:
    """Wrap each (start, end) span of `text` as `<p> phrase </p> [SEG]`, GLaMM's grounded-caption form."""
    out, last = [], 0
    for start, end in sorted(spans):
        out += [text[last:start], f"<p> {text[start:end]} </p> [SEG]"]
        last = end
    return "".join([*out, text[last:]])
