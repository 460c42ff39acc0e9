"""Tokens and regions: the pixels of each patch, labels per token, region statistics, and instance
masks turned into one instance id per image token (patch).

Superpixels themselves (SLIC) are cut in `segprune.methods.superpixels`.
"""

from __future__ import annotations

from collections.abc import Sequence

import lazy_loader

torch = lazy_loader.load("torch")  # configs are built where torch is not imported (the CLI's --help)


def masks_to_token_ids(masks: torch.Tensor | Sequence[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    """Return `(batch, N)` long instance ids per image token from `(batch, K, H, W)` boolean masks.

    A token takes the instance that covers most of its patch's pixels, or -1 when most of the
    patch is covered by none. Where masks overlap, the lower instance index wins the pixel. This is
    how a detector's masks plug into instance-aware selection (CSP Seg-First): resize the masks to
    the vision tower's input size first. `masks` may also be a sequence of `(K_b, H, W)` masks, one
    per image, where the images hold different numbers of instances (`K_b`, 0 included).
    """
    if isinstance(masks, torch.Tensor):
        if masks.dim() != 4:
            raise ValueError(f"masks must be (batch, K, H, W), got shape {tuple(masks.shape)}")
        device, size, n_labels = masks.device, masks.shape[-2:], masks.shape[1] + 1
    else:
        device, size, n_labels = masks[0].device, masks[0].shape[-2:], 1 + max(len(m) for m in masks)
    # Pixel labels painted mask by mask, lower instances last so they win: an argmax over a
    # `(batch, K, H, W)` stack took most of a second per batch of 16 on one CPU thread.
    pixel_labels = torch.zeros(len(masks), *size, dtype=torch.long, device=device)
    for labels, image in zip(pixel_labels, masks, strict=True):
        image = image.to(device).bool()
        for k in reversed(range(len(image))):
            labels.masked_fill_(image[k], k + 1)
    return token_majority(pixel_labels, grid, n_labels) - 1


def patch_view(images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Return `(batch, N, C, p_h * p_w)`: the pixels of each patch, patches in row-major token order."""
    batch, channels, height, width = images.shape
    rows, cols = grid
    if height % rows or width % cols:
        raise ValueError(
            f"image of {height}x{width} pixels does not divide into the {rows}x{cols} patch grid"
        )
    ph, pw = height // rows, width // cols
    x = images.reshape(batch, channels, rows, ph, cols, pw).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(batch, rows * cols, channels, ph * pw)


def one_hot(labels: torch.Tensor, n_labels: int) -> torch.Tensor:
    """Return float `(..., n_labels)` indicators of `labels` (a comparison: no range check, no host sync)."""
    return (labels[..., None] == torch.arange(n_labels, device=labels.device)).float()


def relabel(labels: torch.Tensor, n_labels: int) -> torch.Tensor:
    """Renumber `(batch, N)` labels in 0..n_labels-1 to 0..K_b-1 per sample, keeping their order."""
    used = torch.zeros(labels.shape[0], n_labels, dtype=torch.long, device=labels.device)
    used.scatter_(1, labels, 1)
    return (used.cumsum(dim=1) - 1).gather(1, labels)


def token_majority(
    pixel_labels: torch.Tensor, grid: tuple[int, int], n_labels: int | None = None
) -> torch.Tensor:
    """Return `(batch, N)`: the most frequent label among each patch's pixels (ties: the lower label).

    Args:
        pixel_labels: `(batch, H, W)` long, non-negative.
        grid: `(rows, cols)` of the patch grid; tokens in row-major order.
        n_labels: an upper bound on the labels; read from the labels when omitted (a host sync).
    """
    per_patch = patch_view(pixel_labels[:, None], grid)[:, :, 0]  # (batch, N, pixels per patch)
    if n_labels is None:
        n_labels = int(pixel_labels.max()) + 1
    votes = one_hot(per_patch, n_labels).sum(dim=2)
    return votes.argmax(dim=-1)  # argmax returns the first maximum


def region_stats(
    images: torch.Tensor, labels: torch.Tensor, grid: tuple[int, int], n_labels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the colour variance and the area fraction of each region, each `(batch, n_labels)`.

    A region is the union of its tokens' patches. The variance is over all the region's pixels,
    per RGB channel, averaged over the channels; the area is its share of the image's pixels (equal
    patches make that its share of tokens). Absent labels get 0 for both.

    Args:
        images: `(batch, 3, H, W)` RGB in [0, 1].
        labels: `(batch, N)` long region of each token, in 0..n_labels-1.
    """
    patches = patch_view(images.float(), grid)  # (batch, N, 3, P)
    mean = patches.mean(dim=-1)
    within = patches.var(dim=-1, unbiased=False)
    member = one_hot(labels, n_labels)  # (batch, N, R)
    count = member.sum(dim=1)  # (batch, R)
    safe = count.clamp(min=1)[..., None]
    # Law of total variance over equal-size patches: the mean within-patch variance plus the
    # variance of the patch means, which avoids E[x^2] - E[x]^2 over raw pixels.
    region_mean = member.transpose(1, 2) @ mean / safe
    region_within = member.transpose(1, 2) @ within / safe
    region_square = member.transpose(1, 2) @ mean.square() / safe
    variance = (region_within + (region_square - region_mean.square()).clamp(min=0)).mean(dim=-1)
    return variance, count / labels.shape[1]
