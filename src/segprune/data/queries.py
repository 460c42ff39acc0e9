"""Referring expressions for a scene's objects, each verified to single out exactly one object.

Every template comes with a margin so that the answer is clear to a viewer, not merely unique by a
pixel: positions differ by at least `MARGIN` pixels (one 14-px patch), "largest" beats the runner-up
by `AREA_RATIO`, and a size word only separates objects whose areas are clear of the size thresholds.
Positions are judged by object centres.
"""

from __future__ import annotations

import math
from collections import Counter

from segprune.data.scene import CORNERS, SMALL_OBJECT_FRACTION, Obj, Query, size_is_clear

MARGIN = 14.0
# Occlusion hides at most 30% of an object, so a visible area 1.5 times another's (> 1 / 0.7) also
# means a larger drawn shape: "largest" holds whether a viewer judges the visible or the whole shape.
AREA_RATIO = 1.5
# Attribute sets tried for a description, shortest first ("shape" here is the kind: star, ring, ...).
ATTRIBUTE_SETS = (
    ("shape",),
    ("colour",),
    ("colour", "shape"),
    ("size", "shape"),
    ("size", "colour"),
    ("size", "colour", "shape"),
)
# Implicit references to a kind, in the spirit of ReasonSeg: the kind is never named.
IMPLICIT = {
    "triangle": "the shape with three sides",
    "hexagon": "the shape with six sides",
    "cross": "the shape that looks like a plus sign",
    "ring": "the shape with a hole in the middle",
    "star": "the shape with five points",
    "square": "the shape with four right angles",
    "circle": "the round shape without a hole",
    "diamond": "the shape like the diamond suit on playing cards",
}
# name: (axis of the centre, sign): the extreme one minimises sign * coordinate.
EXTREMES = {"leftmost": (0, 1), "rightmost": (0, -1), "topmost": (1, 1), "bottommost": (1, -1)}
SIDES = {"left": (0, 1), "right": (0, -1), "top": (1, 1), "bottom": (1, -1)}
# relation: (axis, sign): candidate c stands in the relation to anchor a when sign * (a - c) > 0.
RELATIONS = {"left of": (0, 1), "right of": (0, -1), "above": (1, 1), "below": (1, -1)}


def _value(obj: Obj, key: str) -> str:
    return {"shape": obj.shape, "colour": obj.colour, "size": obj.size_word}[key]


def describe(obj: Obj, keys: tuple[str, ...]) -> str:
    """Return the words for `obj` under an attribute set, e.g. ("size", "colour") -> "small red shape"."""
    words = [_value(obj, k) for k in ("size", "colour") if k in keys]
    return " ".join([*words, obj.shape if "shape" in keys else "shape"])


def is_unique(objects: list[Obj], i: int, keys: tuple[str, ...], image_area: int) -> bool:
    """Return whether attribute set `keys` singles out object i (size words only where clearly so)."""
    target = objects[i]

    def clear(o: Obj) -> bool:
        return size_is_clear(o.area / image_area)

    if "size" in keys and not clear(target):
        return False
    rest = [k for k in keys if k != "size"]
    others = [
        o for j, o in enumerate(objects) if j != i and all(_value(o, k) == _value(target, k) for k in rest)
    ]
    if "size" in keys:
        return all(clear(o) and o.size_word != target.size_word for o in others)
    return not others


def descriptions(objects: list[Obj], i: int, image_area: int, exclude: str | None = None) -> list[tuple]:
    """Return the minimal attribute sets that single out object i, optionally avoiding one attribute."""
    found: list[tuple] = []
    for keys in ATTRIBUTE_SETS:
        if exclude in keys or any(set(f) <= set(keys) for f in found):
            continue
        if is_unique(objects, i, keys, image_area):
            found.append(keys)
    return found


def _attribute(objects: list[Obj], image_area: int) -> list[tuple[str, int]]:
    """ "the red star", "the small shape": every minimal attribute description of every object."""
    return [
        (f"the {describe(obj, keys)}", i)
        for i, obj in enumerate(objects)
        for keys in descriptions(objects, i, image_area)
    ]


def _single_winner(scores: list[tuple[float, int]], margin: float) -> int | None:
    """Return the index with the lowest score if it beats every other by `margin`, else None."""
    if len(scores) < 2:
        return None
    ranked = sorted(scores)
    return ranked[0][1] if ranked[1][0] - ranked[0][0] >= margin else None


def _spatial(objects: list[Obj], anchors: dict[int, str]) -> list[tuple[str, int]]:
    """ "the leftmost star", "the red shape nearest to the top", "the star left of / nearest to the ring"."""
    out = []
    by_kind = _groups(objects, "shape")
    by_colour = _groups(objects, "colour")
    for kind, members in by_kind.items():
        for word, (axis, sign) in EXTREMES.items():
            win = _single_winner([(sign * objects[i].center[axis], i) for i in members], MARGIN)
            if win is not None:
                out.append((f"the {word} {kind}", win))
    for colour, members in by_colour.items():
        for side, (axis, sign) in SIDES.items():
            win = _single_winner([(sign * objects[i].center[axis], i) for i in members], MARGIN)
            if win is not None:
                out.append((f"the {colour} shape nearest to the {side}", win))
    for a, anchor in anchors.items():
        ax, ay = objects[a].center
        for kind, members in by_kind.items():
            cands = [i for i in members if i != a]
            if len(cands) < 2:
                continue
            for rel, (axis, sign) in RELATIONS.items():
                offsets = {i: sign * (objects[a].center[axis] - objects[i].center[axis]) for i in cands}
                hits = [i for i in cands if offsets[i] >= MARGIN]
                # The rest must be clearly on the other side of the anchor's centre, not just short of it.
                if len(hits) == 1 and all(offsets[i] <= 0 for i in cands if i != hits[0]):
                    out.append((f"the {kind} {rel} the {anchor}", hits[0]))
            dists = [(math.dist(objects[i].center, (ax, ay)), i) for i in cands]
            win = _single_winner(dists, MARGIN)
            if win is not None:
                out.append((f"the {kind} nearest to the {anchor}", win))
    return out


def _superlative(objects: list[Obj]) -> list[tuple[str, int]]:
    """ "the largest star", "the smallest red shape", "the largest shape", by visible area."""
    groups = [(kind, m) for kind, m in _groups(objects, "shape").items()]
    groups += [(f"{colour} shape", m) for colour, m in _groups(objects, "colour").items()]
    groups.append(("shape", list(range(len(objects)))))
    out = []
    for noun, members in groups:
        if len(members) < 2:
            continue
        ranked = sorted(members, key=lambda i: objects[i].area)
        if objects[ranked[-1]].area >= AREA_RATIO * objects[ranked[-2]].area:
            out.append((f"the largest {noun}", ranked[-1]))
        if objects[ranked[1]].area >= AREA_RATIO * objects[ranked[0]].area:
            out.append((f"the smallest {noun}", ranked[0]))
    return out


def _reasoning(objects: list[Obj], image_area: int) -> list[tuple[str, int]]:
    """References that name no attribute of the target: same colour or kind as another, corners, implicit."""
    out = []
    kinds = Counter(o.shape for o in objects)
    colours = Counter(o.colour for o in objects)
    for a, anchor in enumerate(objects):
        # The anchor is named without the attribute the query asks about, so it cannot be read off the text.
        for exclude, key, template in (
            ("colour", "colour", "the shape with the same colour as the {}"),
            ("shape", "shape", "the shape of the same kind as the {}"),
        ):
            same = [j for j, o in enumerate(objects) if j != a and _value(o, key) == _value(anchor, key)]
            names = descriptions(objects, a, image_area, exclude=exclude)
            if len(same) == 1 and names:
                out.append((template.format(describe(anchor, names[0])), same[0]))
    corners = [CORNERS[o.shape] for o in objects]
    for text, best in (
        ("the object that has the most corners", max(corners)),
        ("the object with the fewest corners", min(corners)),
    ):
        if corners.count(best) == 1:
            out.append((text, corners.index(best)))
    lone = [i for i, o in enumerate(objects) if colours[o.colour] == 1]
    if len(lone) == 1:
        out.append(("the shape whose colour no other shape has", lone[0]))
    for i, o in enumerate(objects):
        if kinds[o.shape] == 1:
            out.append((IMPLICIT[o.shape], i))
    return out


def _groups(objects: list[Obj], key: str) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, o in enumerate(objects):
        groups.setdefault(_value(o, key), []).append(i)
    return groups


def referring_queries(objects: list[Obj], size: tuple[int, int]) -> list[Query]:
    """Return every referring query the templates can make unambiguous for these objects."""
    image_area = size[0] * size[1]
    anchors = {}
    for i in range(len(objects)):
        names = descriptions(objects, i, image_area)
        if names:
            anchors[i] = describe(objects[i], names[0])
    made = {
        "attribute": _attribute(objects, image_area),
        "spatial": _spatial(objects, anchors),
        "superlative": _superlative(objects),
        "reasoning": _reasoning(objects, image_area),
    }
    queries, seen = [], set()
    for kind, items in made.items():
        for text, target in items:
            if text in seen:
                continue
            seen.add(text)
            obj = objects[target]
            small = obj.area < SMALL_OBJECT_FRACTION * image_area
            queries.append(Query(text=text, type=kind, target=target, mask=obj.mask, small=small))
    return queries
