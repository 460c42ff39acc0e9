"""Instance masks to per-token instance ids, checked by hand."""

from __future__ import annotations

import pytest
import torch

from segprune.methods.regions import masks_to_token_ids


def test_masks_to_token_ids():
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    masks[0, 0, :2, :2] = True  # instance 0 fills patch 0
    masks[0, 1, :3, 2:] = True  # instance 1 fills patch 1 and half of patch 3
    masks[0, 0, 2:, :1] = True  # instance 0 covers half of patch 2: a tie with "none" -> none
    assert masks_to_token_ids(masks, (2, 2)).tolist() == [[0, 1, -1, -1]]
    # Overlap: the lower instance index wins the pixel.
    both = torch.ones(1, 2, 4, 4, dtype=torch.bool)
    assert masks_to_token_ids(both, (2, 2)).tolist() == [[0, 0, 0, 0]]
    with pytest.raises(ValueError, match="does not divide"):
        masks_to_token_ids(torch.ones(1, 1, 5, 4, dtype=torch.bool), (2, 2))


def test_masks_to_token_ids_per_image():
    """A sequence of `(K_b, H, W)` masks, one per image: each image as if stacked alone."""
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 4, 8, 8, generator=generator) < 0.4
    stacked = masks_to_token_ids(masks, (2, 4))
    assert torch.equal(masks_to_token_ids(list(masks), (2, 4)), stacked)
    # Fewer instances in one image (none at all in another): the first instances keep their ids.
    uneven = masks_to_token_ids([masks[0], masks[1, :2], masks[2, :0]], (2, 4))
    assert torch.equal(uneven[0], stacked[0])
    assert torch.equal(uneven[1], masks_to_token_ids(masks[1:2, :2], (2, 4))[0])
    assert uneven[2].tolist() == [-1] * 8
