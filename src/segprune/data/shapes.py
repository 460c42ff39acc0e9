"""A procedurally generated grounding benchmark: scenes of coloured shapes with exact masks.

    from segprune.data import generate_split
    split = generate_split(1000, seed=0)        # lazy: scene i is generated when indexed
    scene = split[0]
    scene.image, scene.objects, scene.queries, scene.caption.tagged, scene.qa

Each scene is a pure function of (seed, index): scene i of a split draws from its own
`numpy.random.Generator`, so scenes can be generated in any order, in parallel, or again later.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from segprune.data import draw
from segprune.data.captions import grounded_caption, qa_pairs
from segprune.data.queries import referring_queries
from segprune.data.scene import COLOURS, SHAPES, Obj, Scene, size_word

MIN_OBJECTS, MAX_OBJECTS = 3, 10
# Drawn area as a fraction of the image, per intended size word, from one 14-px patch (at 336 px) to
# 40%. The bands stay clear of the size thresholds (1%, 6%), so most objects get an unambiguous size
# word even after some occlusion.
SIZE_BANDS = {"small": (196 / 336**2, 0.0083), "medium": (0.012, 0.05), "large": (0.072, 0.40)}
AREA_BUDGET = 0.8  # total drawn area of a scene, as a fraction of the image
MIN_VISIBLE_FRACTION = 0.7  # occlusion may hide at most 30% of any object...
MIN_VISIBLE_PIXELS = 100  # ...and must leave it at least this many pixels
PLACEMENT_TRIES = 25  # positions tried per object (then once more as a small one) before dropping it
MAX_TILT = math.radians(15)  # rotation of the angular shapes, small so a square never reads as a diamond


@dataclass
class _Spec:
    shape: str
    colour: str
    radius: float


def _specs(rng: np.random.Generator, size: tuple[int, int]) -> list[_Spec]:
    """Draw the objects' kinds, colours and radii, largest first (with some shuffling).

    Kinds and colours come from small per-scene palettes so duplicates are common: telling two red
    stars apart then needs their size or position, which is what the queries are for.
    """
    n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    kinds = rng.choice(SHAPES, size=int(rng.integers(2, 6)), replace=False)
    colours = rng.choice(list(COLOURS), size=int(rng.integers(2, 7)), replace=False)
    words = [str(w) for w in rng.choice(list(SIZE_BANDS), size=n)]
    fractions = [math.exp(rng.uniform(*np.log(SIZE_BANDS[w]))) for w in words]
    while sum(fractions) > AREA_BUDGET:  # shrink the biggest object to the next smaller band
        i = int(np.argmax(fractions))
        lo, hi = SIZE_BANDS["medium" if fractions[i] > SIZE_BANDS["medium"][1] else "small"]
        fractions[i] = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    specs = []
    for f in fractions:
        kind = str(rng.choice(kinds))
        specs.append(_Spec(kind, str(rng.choice(colours)), _radius(kind, f, size)))
    # Big shapes first, so small ones mostly land on top; the jitter lets some small ones be covered.
    order = np.argsort([-(s.radius**2) * draw.unit_area(s.shape) * rng.lognormal(0, 0.5) for s in specs])
    return [specs[i] for i in order]


def _radius(kind: str, fraction: float, size: tuple[int, int]) -> float:
    """Return the radius that gives `kind` an area of `fraction` of the image, capped to fit inside it."""
    height, width = size
    return min(math.sqrt(fraction * height * width / draw.unit_area(kind)), min(height, width) / 2 - 2)


def _place(
    specs: list[_Spec], rng: np.random.Generator, size: tuple[int, int]
) -> tuple[list[_Spec], list[tuple[np.ndarray, tuple[int, int]]], np.ndarray, list[tuple[float, float]]]:
    """Position the shapes one by one, re-drawing a position that would hide too much of an earlier one.

    Returns the placed specs, their (mask window, corner) rasters, the label image (index of the
    object that owns each pixel, -1 for background) and their centres.
    """
    height, width = size
    labels = np.full(size, -1, dtype=np.int16)
    placed, rasters, centres, drawn, visible, boxes = [], [], [], [], [], []

    def attempt(spec: _Spec) -> bool:
        nonlocal visible
        r = spec.radius
        for _ in range(PLACEMENT_TRIES):
            cx, cy = rng.uniform(r + 1, width - r - 1), rng.uniform(r + 1, height - r - 1)
            tilt = 0.0 if spec.shape in ("circle", "ring") else rng.uniform(-MAX_TILT, MAX_TILT)
            box = (cx - r, cy - r, cx + r, cy + r)
            # Same-coloured shapes must not touch: their shared edge, so both masks, would be invisible.
            if any(
                p.colour == spec.colour and _boxes_touch(box, b) for p, b in zip(placed, boxes, strict=True)
            ):
                continue
            inside, (top, left) = draw.rasterise(spec.shape, (cx, cy), r, tilt, size)
            window = labels[top : top + inside.shape[0], left : left + inside.shape[1]]
            lost = np.bincount(window[inside] + 1, minlength=len(placed) + 1)[1:]
            left_over = np.asarray(visible, dtype=np.int64) - lost
            drawn_px = np.asarray(drawn)
            need = np.maximum(MIN_VISIBLE_FRACTION * drawn_px, np.minimum(MIN_VISIBLE_PIXELS, drawn_px))
            if np.any(left_over < need):
                continue
            window[inside] = len(placed)
            visible = [*left_over.tolist(), int(inside.sum())]
            drawn.append(int(inside.sum()))
            placed.append(spec)
            rasters.append((inside, (top, left)))
            centres.append((cx, cy))
            boxes.append(box)
            return True
        return False

    for spec in specs:
        # A crowded scene may have no room left for a big shape: try it once more as a small one.
        if not attempt(spec):
            fraction = math.exp(rng.uniform(*np.log(SIZE_BANDS["small"])))
            attempt(_Spec(spec.shape, spec.colour, _radius(spec.shape, fraction, size)))
    return placed, rasters, labels, centres


def _boxes_touch(a: tuple[float, ...], b: tuple[float, ...], gap: float = 3) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def generate_scene(
    seed: int | Sequence[int] | np.random.Generator, size: int = 336, scene_id: str | None = None
) -> Scene:
    """Generate one scene of `size` x `size` pixels, deterministically from `seed`."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    hw = (size, size)
    canvas, background = draw.background(rng, hw)
    while True:  # a crowded draw can drop objects; start over until at least MIN_OBJECTS remain
        placed, rasters, labels, centres = _place(_specs(rng, hw), rng, hw)
        if len(placed) >= MIN_OBJECTS:
            break
    for spec, (inside, corner) in zip(placed, rasters, strict=True):
        draw.paint(canvas, inside, corner, COLOURS[spec.colour], rng)
    image = draw.finish(canvas, rng)

    objects = []
    for j, (spec, centre) in enumerate(zip(placed, centres, strict=True)):
        mask = labels == j
        ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        bbox = (int(xs[0]), int(ys[0]), int(xs[-1] - xs[0]) + 1, int(ys[-1] - ys[0]) + 1)
        area = int(np.count_nonzero(mask))
        objects.append(
            Obj(spec.shape, spec.colour, size_word(area / (size * size)), bbox, mask, area, centre)
        )
    return Scene(
        scene_id=scene_id or "shapes",
        image=image,
        objects=objects,
        queries=referring_queries(objects, hw),
        caption=grounded_caption(objects, hw, background),
        qa=qa_pairs(objects, hw, rng),
        background=background,
    )


class ShapesSplit(Sequence):
    """A lazy split: `split[i]` generates scene i from (seed, i) each time it is asked for."""

    def __init__(self, n_scenes: int, seed: int, size: int = 336):
        if n_scenes < 0 or seed < 0:
            raise ValueError(f"n_scenes={n_scenes} and seed={seed} must be non-negative")
        self.n_scenes, self.seed, self.size = n_scenes, seed, size

    def __len__(self) -> int:
        return self.n_scenes

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n_scenes))]
        if not -self.n_scenes <= i < self.n_scenes:
            raise IndexError(f"scene {i} of a split of {self.n_scenes}")
        i %= self.n_scenes
        return generate_scene(np.random.default_rng([self.seed, i]), self.size, f"shapes-{self.seed}-{i:06d}")

    def __iter__(self) -> Iterator[Scene]:
        return (self[i] for i in range(self.n_scenes))


def generate_split(n_scenes: int, seed: int, size: int = 336) -> ShapesSplit:
    """Return `n_scenes` scenes as a lazy sequence (about 1 MB of masks per scene is made on access)."""
    return ShapesSplit(n_scenes, seed, size)
