"""The shapes benchmark: determinism, exact masks, and queries that each single out one object.

Query semantics are restated here independently of `segprune.data.queries`: every query text is
parsed back and its referents recomputed from the objects alone, without the generator's margins.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest

from segprune.data import COLOURS, QUERY_TYPES, SHAPES, generate_scene, generate_split
from segprune.data.draw import rasterise, unit_area
from segprune.data.scene import position_word

N_SCENES = 40
KINDS = "|".join(SHAPES)
COLS = "|".join(COLOURS)
# The corner counts and implicit references, restated rather than imported.
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
IMPLICIT = {
    "the shape with three sides": "triangle",
    "the shape with six sides": "hexagon",
    "the shape that looks like a plus sign": "cross",
    "the shape with a hole in the middle": "ring",
    "the shape with five points": "star",
    "the shape with four right angles": "square",
    "the round shape without a hole": "circle",
    "the shape like the diamond suit on playing cards": "diamond",
}


@pytest.fixture(scope="module")
def scenes():
    return list(generate_split(N_SCENES, seed=11))


def _described(objects, desc: str) -> list[int]:
    """Objects matching "[size] [colour] (kind | shape)"."""
    m = re.fullmatch(rf"(?:(small|medium|large) )?(?:({COLS}) )?({KINDS}|shape)", desc)
    assert m, desc
    size, colour, kind = m.groups()
    return [
        i
        for i, o in enumerate(objects)
        if size in (None, o.size_word) and colour in (None, o.colour) and kind in ("shape", o.shape)
    ]


def _anchor(objects, desc: str) -> int:
    (a,) = _described(objects, desc)  # an anchor must itself be unique
    return a


def _argbest(indices, key) -> list[int]:
    """All indices sharing the minimum of `key` (more than one means a tie, so not unique)."""
    best = min(key(i) for i in indices)
    return [i for i in indices if key(i) == best]


def resolve(objects, text: str) -> tuple[str, list[int]]:
    """Return the query type a text belongs to and every object it can refer to."""
    x = {i: o.center[0] for i, o in enumerate(objects)}
    y = {i: o.center[1] for i, o in enumerate(objects)}
    of_kind = {k: [i for i, o in enumerate(objects) if o.shape == k] for k in SHAPES}
    of_colour = {c: [i for i, o in enumerate(objects) if o.colour == c] for c in COLOURS}
    extreme = {"leftmost": x, "left": x, "topmost": y, "top": y}
    extreme |= {w: {i: -v for i, v in c.items()} for w, c in (("rightmost", x), ("right", x))}
    extreme |= {w: {i: -v for i, v in c.items()} for w, c in (("bottommost", y), ("bottom", y))}
    if m := re.fullmatch(rf"the (leftmost|rightmost|topmost|bottommost) ({KINDS})", text):
        return "spatial", _argbest(of_kind[m[2]], extreme[m[1]].get)
    if m := re.fullmatch(rf"the ({COLS}) shape nearest to the (top|bottom|left|right)", text):
        return "spatial", _argbest(of_colour[m[1]], extreme[m[2]].get)
    if m := re.fullmatch(rf"the ({KINDS}) (left of|right of|above|below) the (.+)", text):
        a = _anchor(objects, m[3])
        rel = {
            "left of": lambda i: x[i] < x[a],
            "right of": lambda i: x[i] > x[a],
            "above": lambda i: y[i] < y[a],
            "below": lambda i: y[i] > y[a],
        }[m[2]]
        return "spatial", [i for i in of_kind[m[1]] if i != a and rel(i)]
    if m := re.fullmatch(rf"the ({KINDS}) nearest to the (.+)", text):
        a = _anchor(objects, m[2])
        cands = [i for i in of_kind[m[1]] if i != a]
        return "spatial", _argbest(cands, lambda i: math.dist(objects[i].center, objects[a].center))
    if m := re.fullmatch(rf"the (largest|smallest) (?:({COLS}) )?({KINDS}|shape)", text):
        group = _described(objects, (f"{m[2]} " if m[2] else "") + m[3])
        sign = -1 if m[1] == "largest" else 1
        return "superlative", _argbest(group, lambda i: sign * objects[i].area)
    if m := re.fullmatch(r"the shape with the same colour as the (.+)", text):
        a = _anchor(objects, m[1])
        return "reasoning", [i for i in of_colour[objects[a].colour] if i != a]
    if m := re.fullmatch(r"the shape of the same kind as the (.+)", text):
        a = _anchor(objects, m[1])
        return "reasoning", [i for i in of_kind[objects[a].shape] if i != a]
    corners = {i: CORNERS[o.shape] for i, o in enumerate(objects)}
    if text == "the object that has the most corners":
        return "reasoning", _argbest(list(corners), lambda i: -corners[i])
    if text == "the object with the fewest corners":
        return "reasoning", _argbest(list(corners), corners.get)
    if text == "the shape whose colour no other shape has":
        return "reasoning", [i for c, members in of_colour.items() if len(members) == 1 for i in members]
    if text in IMPLICIT:
        return "reasoning", of_kind[IMPLICIT[text]]
    m = re.fullmatch(r"the (.+)", text)
    return "attribute", _described(objects, m[1])


def test_same_seed_same_scenes_and_different_seed_different():
    a, b, c = generate_split(3, seed=5), generate_split(3, seed=5), generate_split(3, seed=6)
    for i in range(3):
        sa, sb = a[i], b[i]
        assert np.array_equal(sa.image, sb.image)
        assert sa.scene_id == sb.scene_id and sa.caption.text == sb.caption.text and sa.qa == sb.qa
        assert [(q.text, q.type, q.target) for q in sa.queries] == [
            (q.text, q.type, q.target) for q in sb.queries
        ]
        for oa, ob in zip(sa.objects, sb.objects, strict=True):
            assert (oa.shape, oa.colour, oa.size_word, oa.bbox, oa.area, oa.center) == (
                ob.shape,
                ob.colour,
                ob.size_word,
                ob.bbox,
                ob.area,
                ob.center,
            )
            assert np.array_equal(oa.mask, ob.mask)
        assert not np.array_equal(sa.image, c[i].image)
    # Random access and iteration give the same scene.
    assert np.array_equal(list(a)[2].image, a[-1].image)


def test_objects_are_consistent(scenes):
    kinds, colours = Counter(), Counter()
    for scene in scenes:
        h, w = scene.size
        assert scene.image.shape == (h, w, 3) and scene.image.dtype == np.uint8
        assert 3 <= len(scene.objects) <= 10
        union = np.zeros((h, w), dtype=int)
        for obj in scene.objects:
            kinds[obj.shape] += 1
            colours[obj.colour] += 1
            assert obj.mask.dtype == bool and obj.mask.shape == (h, w)
            assert obj.area == obj.mask.sum() >= 100
            ys, xs = np.nonzero(obj.mask)
            assert obj.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            fraction = obj.area / (h * w)
            assert obj.size_word == ("small" if fraction < 0.01 else "medium" if fraction < 0.06 else "large")
            # The pixels under the mask show the named colour: their mean is nearest to it.
            mean = scene.image[obj.mask].mean(axis=0)
            nearest = min(COLOURS, key=lambda c: np.sum((mean - np.asarray(COLOURS[c])) ** 2))
            assert nearest == obj.colour
            union += obj.mask
        assert union.max() == 1  # visible masks never overlap
    assert len(kinds) == len(SHAPES) and len(colours) == len(COLOURS)
    assert Counter(o.size_word for s in scenes for o in s.objects).keys() == {"small", "medium", "large"}


def test_every_query_refers_to_exactly_its_target(scenes):
    counts = Counter()
    for scene in scenes:
        area = scene.size[0] * scene.size[1]
        assert len({q.text for q in scene.queries}) == len(scene.queries)
        for q in scene.queries:
            obj = scene.objects[q.target]
            assert q.mask is obj.mask and q.mask.any()
            assert q.small == (obj.area < 0.01 * area)
            kind, referents = resolve(scene.objects, q.text)
            assert (kind, referents) == (q.type, [q.target]), (scene.scene_id, q.text)
            counts[q.type] += 1
    assert set(counts) == set(QUERY_TYPES)
    assert min(counts.values()) >= 50
    assert any(q.small for s in scenes for q in s.queries) and not all(
        q.small for s in scenes for q in s.queries
    )


def test_grounded_caption_lists_every_object_left_to_right(scenes):
    for scene in scenes:
        caption, objects = scene.caption, scene.objects
        assert sorted(p.target for p in caption.phrases) == list(range(len(objects)))
        xs = [objects[p.target].center[0] for p in caption.phrases]
        assert xs == sorted(xs)
        tagged = re.findall(r"<p> (.*?) </p> \[SEG\]", caption.tagged)
        assert tagged == [p.text for p in caption.phrases]
        assert re.sub(r"<p> (.*?) </p> \[SEG\]", r"\1", caption.tagged) == caption.text
        for p in caption.phrases:
            obj = objects[p.target]
            assert (
                caption.text[p.span[0] : p.span[1]] == p.text == f"a {obj.size_word} {obj.colour} {obj.shape}"
            )
            assert p.mask is obj.mask
            assert p.small == (obj.area < 0.01 * scene.size[0] * scene.size[1])
            where = position_word(obj.center, scene.size)
            assert caption.text[p.span[1] :].startswith(
                f" {'in' if where == 'centre' else 'on' if where in ('left', 'right') else 'at'} the {where}"
            )
        assert [t for t, _ in caption.pairs] == tagged


def test_qa_answers_follow_from_the_objects(scenes):
    plural = {k: k + "es" if k.endswith("s") else k + "s" for k in SHAPES}
    types = Counter()
    for scene in scenes:
        objs = scene.objects
        for qa in scene.qa:
            types[qa.type] += 1
            q = qa.question
            if m := re.fullmatch(r"How many (\w+) are there\?", q):
                kind = {v: k for k, v in plural.items()}.get(m[1])
                expected = len(objs) if m[1] == "shapes" else sum(o.shape == kind for o in objs)
            elif m := re.fullmatch(r"How many (\w+) shapes are there\?", q):
                expected = sum(o.colour == m[1] for o in objs)
            elif m := re.fullmatch(r"What colour is the (\w+)\?", q):
                (o,) = [o for o in objs if o.shape == m[1]]
                expected = o.colour
            elif m := re.fullmatch(r"What shape is the (\w+) object\?", q):
                (o,) = [o for o in objs if o.colour == m[1]]
                expected = o.shape
            else:
                m = re.fullmatch(r"Where is the (.+)\?", q)
                (i,) = _described(objs, m[1])
                expected = position_word(objs[i].center, scene.size)
            assert qa.answer == str(expected), q
    assert set(types) == {"count", "colour", "shape", "position"}


@pytest.mark.parametrize("kind", SHAPES)
def test_rasterised_area_matches_the_outline(kind):
    inside, _ = rasterise(kind, (100.0, 100.0), 80.0, 0.2, (200, 200))
    assert inside.sum() / 80.0**2 == pytest.approx(unit_area(kind), rel=0.01)


def test_size_is_configurable():
    scene = generate_scene(3, size=224)
    assert scene.image.shape == (224, 224, 3)
    assert all(o.mask.shape == (224, 224) for o in scene.objects)
