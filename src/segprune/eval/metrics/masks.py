"""Binary masks: validation, COCO run-length encoding and pairwise IoU.

A mask is a boolean (or 0/1) array of shape `(H, W)`, NumPy or torch, or a COCO RLE dict
`{"size": [H, W], "counts": ...}` as pycocotools and GLaMM's prediction files store it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from segprune.eval.metrics._deps import import_optional

SMALL_FRACTION = 0.01  # a "small object" covers less than 1% of its image (both tasks)

# An RLE dict, or anything np.asarray / torch can turn into a 0/1 array; checked at run time.
Mask = Any


def as_bool_mask(mask: Any, name: str = "mask") -> np.ndarray:
    """Return `mask` as a NumPy bool array; values must already be 0/1 (threshold logits first)."""
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


def to_rle(mask: Mask) -> dict[str, Any]:
    """Return the compressed COCO RLE `{"size": [H, W], "counts": str}` of a mask (JSON-ready)."""
    mask_utils = import_optional("pycocotools.mask")
    if isinstance(mask, Mapping):
        height, width = (int(v) for v in mask["size"])
        counts = mask["counts"]
        if isinstance(counts, list):  # uncompressed RLE, as GLaMM's mask_to_rle_* produce
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
    mask_utils = import_optional("pycocotools.mask")
    with warnings.catch_warnings():
        # pycocotools' Cython array predates NumPy 2's `copy` keyword and warns on every decode.
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(to_rle(rle)).astype(bool)


def rle_area(rle: Mapping[str, Any]) -> int:
    """Return the number of foreground pixels of a COCO RLE dict."""
    mask_utils = import_optional("pycocotools.mask")
    return int(mask_utils.area(to_rle(rle)))


def pairwise_iou(masks_a: Sequence[Mask], masks_b: Sequence[Mask]) -> np.ndarray:
    """Return the `(len(a), len(b))` IoU matrix of two lists of masks of one image.

    Two empty masks have IoU 0 here (pycocotools' convention; GLaMM's NumPy IoU gives NaN, which
    never arises there because ground-truth masks are never empty).
    """
    mask_utils = import_optional("pycocotools.mask")
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
