"""Mask encodings: COCO RLE (RefCOCO, GranDf) and ReasonSeg's polygons as LISA reads them.

COCO RLE goes through pycocotools and is exact. For ReasonSeg, LISA rasterises each polygon with
OpenCV's `fillPoly` plus a 1-px `polylines` outline on vertices cast to int32: every pixel whose
centre is inside or on the outline is set. `fill_polygon` does the same with PIL. `mask_to_polygons`
writes masks so that this rasterisation returns them exactly: it cuts the mask into stacks of row
runs that enclose no hole and walks each stack's outline through pixel centres with horizontal and
vertical steps only, so no outline segment crosses a pixel outside the mask.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

# --- COCO masks -------------------------------------------------------------------------------


def as_bool_mask(mask: Any, name: str = "mask") -> np.ndarray:
    """Return `mask` (NumPy, torch or an RLE dict) as a NumPy bool array; values must already be 0/1."""
    if isinstance(mask, Mapping):
        return decode_rle(mask)
    if hasattr(mask, "detach"):  # torch tensor, any dtype or device: check it where it lives
        tensor = mask.detach()
        binary = tensor != 0
        exact = bool((tensor == binary).all())
        binary = binary.cpu().numpy()
    else:
        array = np.asarray(mask)
        binary = array.astype(bool)
        exact = np.array_equal(binary, array)
    # A cast alone would silently turn LISA's ignore label 255, or logits, into foreground.
    if not exact:
        raise ValueError(
            f"{name} must be boolean or 0/1: threshold logits first (mask = logits > 0)"
            " and pass ignored pixels separately (LISA marks them 255: ignore=target == 255)"
        )
    return binary


def to_rle(mask: Any) -> dict[str, Any]:
    """Return the compressed COCO RLE `{"size": [H, W], "counts": str}` of a mask (JSON-ready).

    `mask` is a 0/1 array or tensor of shape `(H, W)`, or an RLE dict (an uncompressed one, with
    `counts` a list as GLaMM's `mask_to_rle_*` write it, is compressed).
    """
    if isinstance(mask, Mapping):
        height, width = (int(v) for v in mask["size"])
        counts = mask["counts"]
        if isinstance(counts, list):
            counts = mask_utils.frPyObjects(dict(mask), height, width)["counts"]
    else:
        array = as_bool_mask(mask)
        if array.ndim != 2:
            raise ValueError(f"mask must be 2-D (H, W), got shape {array.shape}")
        height, width = array.shape
        counts = mask_utils.encode(np.asfortranarray(array.astype(np.uint8)))["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [height, width], "counts": counts}


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """Return the `(H, W)` bool array of a COCO RLE dict."""
    with warnings.catch_warnings():
        # pycocotools' Cython array predates NumPy 2's `copy` keyword and warns on every decode.
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(to_rle(rle)).astype(bool)


def rle_area(rle: Mapping[str, Any]) -> int:
    """Return the number of foreground pixels of a COCO RLE dict."""
    return int(mask_utils.area(to_rle(rle)))


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation to a bool (H, W) mask: polygons, an RLE, or a list of RLEs (LISA's form).

    Several parts (polygons or RLEs) are joined by union; uncompressed RLEs (`counts` a list) are
    compressed first.
    """
    if isinstance(segmentation, dict):
        parts = [segmentation]
    elif segmentation and isinstance(segmentation[0], dict):
        parts = list(segmentation)
    elif segmentation:
        parts = mask_utils.frPyObjects(segmentation, height, width)
    else:
        return np.zeros((height, width), dtype=bool)
    rles = [mask_utils.frPyObjects(p, *p["size"]) if isinstance(p.get("counts"), list) else p for p in parts]
    return mask_utils.decode(rles).any(axis=2)


# --- polygons --------------------------------------------------------------------------------


def _row_runs(row: np.ndarray) -> list[tuple[int, int]]:
    """Return the [start, end) column ranges of the set pixels of one boolean row."""
    edges = np.flatnonzero(np.diff(np.concatenate([[False], row, [False]]).astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _stacks(mask: np.ndarray) -> list[list[tuple[int, int, int]]]:
    """Cut a mask into stacks of (row, start, end) runs, one run per row, each overlapping the next.

    A run continues the stack of the run above when the two overlap and neither overlaps any other
    run; a split or a merge starts new stacks, so no stack ever encloses a hole.
    """
    stacks: list[list[tuple[int, int, int]]] = []
    above: list[tuple[int, int]] = []  # the runs of row y - 1, and the stacks they belong to
    open_stacks: list[list[tuple[int, int, int]]] = []
    for y in range(mask.shape[0]):
        runs = _row_runs(mask[y])
        links = [[j for j, (s, e) in enumerate(above) if s < end and start < e] for start, end in runs]
        fan_out = [sum(j in link for link in links) for j in range(len(above))]
        new_open = []
        for (start, end), link in zip(runs, links, strict=True):
            if len(link) == 1 and fan_out[link[0]] == 1:
                stack = open_stacks[link[0]]
            else:
                stack = []
                stacks.append(stack)
            stack.append((y, start, end))
            new_open.append(stack)
        above, open_stacks = runs, new_open
    return stacks


def _outline(stack: list[tuple[int, int, int]]) -> list[list[int]]:
    """Walk a stack's outline through pixel centres: down its left side, up its right side.

    Between two rows each side first moves along the narrower of the two runs and then steps to the
    other row, so every outline point lies on a pixel of the stack.
    """
    left, right = [], []
    for k, (y, start, end) in enumerate(stack):
        last = end - 1
        if k == 0:
            left.append((start, y))
            right.append((last, y))
            continue
        _, prev_start, prev_end = stack[k - 1]
        prev_last = prev_end - 1
        # Left side: step right along the upper row, or down first and then left along this row.
        left += [(start, y - 1), (start, y)] if start >= prev_start else [(prev_start, y), (start, y)]
        right += [(last, y - 1), (last, y)] if last <= prev_last else [(prev_last, y), (last, y)]
    points = left + right[::-1]
    # Drop repeated points, and the middle point of three on a line when it lies between the other two
    # (a side can double back along a row, and that spike must stay in the outline).
    out: list[tuple[int, int]] = []
    for p in points:
        if out and p == out[-1]:
            continue
        if len(out) >= 2 and _between(out[-2], out[-1], p):
            out[-1] = p
            continue
        out.append(p)
    return [list(p) for p in out]


def _between(a: tuple[int, int], b: tuple[int, int], c: tuple[int, int]) -> bool:
    """Return whether b lies on the axis-parallel segment from a to c."""
    if a[0] == b[0] == c[0]:
        return (b[1] - a[1]) * (c[1] - b[1]) >= 0
    if a[1] == b[1] == c[1]:
        return (b[0] - a[0]) * (c[0] - b[0]) >= 0
    return False


def mask_to_polygons(mask: np.ndarray) -> list[list[list[int]]]:
    """Return polygons of integer [x, y] pixel centres whose boundary-inclusive fill is exactly `mask`."""
    return [_outline(stack) for stack in _stacks(np.asarray(mask, dtype=bool))]


def fill_polygon(points: list, size: tuple[int, int]) -> np.ndarray:
    """Rasterise one polygon like LISA does: vertices cast to int, inside and outline pixels set."""
    height, width = size
    canvas = Image.new("L", (width, height), 0)
    xy = [(int(x), int(y)) for x, y in points]
    if len(xy) == 1:
        ImageDraw.Draw(canvas).point(xy, fill=1)
    else:
        ImageDraw.Draw(canvas).polygon(xy, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def paint_labelled_polygons(shapes: list[dict], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Return (target, ignore) masks of ReasonSeg-style shapes, painted as LISA paints them.

    Shapes are painted largest first, each over the ones before; a label containing "ignore" paints
    the ignore value and any other label the target, and "flag" shapes are skipped. So a small target
    inside a large ignore region stays a target, and a small ignore region inside a target is cut out.
    """
    filled = [
        (fill_polygon(s["points"], size), "ignore" in s["label"].lower())
        for s in shapes
        if s["label"].lower() != "flag" and s["points"]
    ]
    target, ignore = np.zeros(size, dtype=bool), np.zeros(size, dtype=bool)
    # A stable sort keeps file order among equal areas, as numpy's argsort on LISA's list does not promise.
    for region, is_ignore in sorted(filled, key=lambda f: -int(f[0].sum())):
        (ignore if is_ignore else target)[region] = True
        (target if is_ignore else ignore)[region] = False
    return target, ignore
