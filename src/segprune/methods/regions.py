"""Turn instance masks into one instance id per image token (patch)."""

from __future__ import annotations

import torch

from segprune.methods.superpixels import token_majority


def masks_to_token_ids(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Return `(batch, N)` long instance ids per image token from `(batch, K, H, W)` boolean masks.

    A token takes the instance that covers most of its patch's pixels, or -1 when most of the
    patch is covered by none. Where masks overlap, the lower instance index wins the pixel. This is
    how a detector's masks plug into instance-aware selection (CSP Seg-First): resize the masks to
    the vision tower's input size first.
    """
    if masks.dim() != 4:
        raise ValueError(f"masks must be (batch, K, H, W), got shape {tuple(masks.shape)}")
    masks = masks.bool()
    covered = masks.any(dim=1)
    first = masks.int().argmax(dim=1)  # the lowest covering instance (0 where none covers)
    pixel_labels = torch.where(covered, first + 1, torch.zeros_like(first))
    return token_majority(pixel_labels, grid, masks.shape[1] + 1) - 1
