"""`SegModel.segment` on images of any size, mode and layout: a mask of the image's own size, or one
clear error for an image with no pixels (a property test over random images)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

QUERY = "What is the star in this image?"
MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "F")
LAYOUTS = ("pil", "numpy-hwc", "numpy-hw", "torch-chw")

# Ordinary sizes, and slivers whose short side would round to 0 pixels when resized (2000 x 3).
sizes = st.one_of(
    st.tuples(st.integers(1, 64), st.integers(1, 64)),
    st.tuples(st.integers(1, 3), st.integers(200, 2000)),
    st.tuples(st.integers(200, 2000), st.integers(1, 3)),
)


def make_image(height: int, width: int, mode: str, layout: str, seed: int):
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    if layout == "numpy-hwc":
        return pixels
    if layout == "numpy-hw":
        return pixels[..., 0].copy()
    if layout == "torch-chw":
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    if mode == "I;16":
        return Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    return Image.fromarray(pixels).convert(mode)


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(size=sizes, mode=st.sampled_from(MODES), layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**16))
def test_any_image_gives_a_mask_of_its_size(seg_model, size, mode, layout, seed):
    height, width = size
    with torch.inference_mode():
        (mask,) = seg_model.segment([make_image(height, width, mode, layout, seed)], [QUERY])
    assert tuple(mask.shape) == (height, width) and mask.dtype == torch.bool


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 7, 3), (5, 0)])
def test_an_image_without_pixels_is_one_clear_error(seg_model, shape):
    with pytest.raises(ValueError, match=rf"{shape[0]}x{shape[1]} pixels"):
        seg_model.segment([np.zeros(shape, np.uint8)], [QUERY])
