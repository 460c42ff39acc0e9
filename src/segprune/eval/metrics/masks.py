"""Binary masks of the metrics: the small-object threshold and pairwise IoU.

A mask is a boolean (or 0/1) array of shape `(H, W)`, NumPy or torch, or a COCO RLE dict
`{"size": [H, W], "counts": ...}` as pycocotools and GLaMM's prediction files store it; the
encoding (`to_rle`, `decode_rle`, `rle_area`, `as_bool_mask`) is `segprune.data.masks`'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from segprune.data.masks import to_rle

SMALL_FRACTION = 0.01  # a "small object" covers less than 1% of its image (both tasks)

# An RLE dict, or anything np.asarray / torch can turn into a 0/1 array; checked at run time.
Mask = Any


def pairwise_iou(masks_a: Sequence[Mask], masks_b: Sequence[Mask]) -> np.ndarray:
    """Return the `(len(a), len(b))` IoU matrix of two lists of masks of one image.

    Two empty masks have IoU 0 here (pycocotools' convention; GLaMM's NumPy IoU gives NaN, which
    never arises there because ground-truth masks are never empty).
    """
    rles_a = [to_rle(m) for m in masks_a]
    rles_b = [to_rle(m) for m in masks_b]
    if not rles_a or not rles_b:
        return np.zeros((len(rles_a), len(rles_b)))
    sizes = {tuple(r["size"]) for r in rles_a + rles_b}
    if len(sizes) > 1:
        raise ValueError(f"masks of one image must share one size, got {sorted(sizes)}")
    # iscrowd=0 everywhere: plain intersection over union.
    iou = mask_utils.iou(rles_a, rles_b, [0] * len(rles_b))
    return np.asarray(iou, dtype=np.float64).reshape(len(rles_a), len(rles_b))
