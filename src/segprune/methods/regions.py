"""Turn pixel-level labels or instance masks into one label per image token (patch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def majority_labels(pixel_labels: torch.Tensor, grid: tuple[int, int], n_labels: int) -> torch.Tensor:
    """Return `(batch, N)` long: for each patch, the label that covers most of its pixels.

    Args:
        pixel_labels: `(batch, H, W)` long labels in 0..n_labels-1; H, W divisible by the grid.
        grid: `(rows, cols)` of the patch grid; tokens are in row-major order.
        n_labels: the number of labels.
    Ties go to the lower label.
    """
    batch, height, width = pixel_labels.shape
    rows, cols = grid
    if height % rows or width % cols:
        raise ValueError(f"labels of {height}x{width} pixels do not divide into the {rows}x{cols} patch grid")
    ph, pw = height // rows, width // cols
    patches = (
        pixel_labels.reshape(batch, rows, ph, cols, pw).permute(0, 1, 3, 2, 4).reshape(batch, rows * cols, -1)
    )
    votes = F.one_hot(patches, n_labels).sum(dim=2)  # (batch, N, n_labels)
    return votes.argmax(dim=-1)


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
    return majority_labels(pixel_labels, grid, masks.shape[1] + 1) - 1
