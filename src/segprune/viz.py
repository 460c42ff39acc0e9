"""Pictures of what a pruning method kept: dropped patches dimmed, optional region outlines and quotas.

Needs Pillow (`pip install segprune[viz]`), imported only when a picture is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from segprune.pixels import CLIP_MEAN, CLIP_STD

MIN_SIDE = 336  # small images are enlarged (nearest neighbour) to at least this many pixels a side
DIM = 0.3  # brightness left to dropped patches
BOUNDARY = (255, 214, 0)


def to_uint8(
    image: torch.Tensor | np.ndarray,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> np.ndarray:
    """Return `(H, W, 3)` uint8 RGB from an `(H, W, 3)` uint8 / [0, 1] float image or a `(3, H, W)`
    (or `(1, 3, H, W)`) processor-normalised pixel tensor, de-normalised with `mean` / `std`."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu()
        if image.dim() == 4 and image.shape[0] == 1:
            image = image[0]
        if image.dim() == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
            pixels = image * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
            return (pixels.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        image = image.numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image or a (3, H, W) pixel tensor, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def draw_regions(
    image: torch.Tensor | np.ndarray,
    labels: torch.Tensor | None,
    grid: tuple[int, int],
    kept: torch.Tensor,
    quotas: torch.Tensor | None = None,
    path: str | Path | None = None,
    *,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
):
    """Draw kept tokens (dropped patches dimmed), region boundaries and quotas; return a PIL image.

    Args:
        image: the image (see `to_uint8`); its sides must be multiples of the grid's.
        labels: `(N,)` region of each token, or None to draw kept tokens only (any method).
        grid: `(rows, cols)` of the patch grid, tokens in row-major order.
        kept: `(n,)` indices (0..N-1) of the kept tokens.
        quotas: `(K,)` tokens granted to each region, written at the region's centre; needs `labels`.
        path: where to save the picture as PNG, if given.
    """
    from PIL import Image, ImageDraw, ImageFont

    pixels = to_uint8(image, mean, std)
    height, width = pixels.shape[:2]
    rows, cols = grid
    if height % rows or width % cols:
        raise ValueError(f"image of {height}x{width} pixels does not divide into the {rows}x{cols} grid")
    n = rows * cols
    kept_mask = np.zeros(n, dtype=bool)
    kept_mask[_numpy(kept).astype(np.int64)] = True
    scale = max(1, math.ceil(MIN_SIDE / max(height, width)))
    ph, pw = height // rows * scale, width // cols * scale
    big = pixels.repeat(scale, axis=0).repeat(scale, axis=1).astype(np.float32)
    # Dim the dropped patches: brightness per patch, blown up to pixels.
    shade = np.where(kept_mask, 1.0, DIM).reshape(rows, cols)
    big *= shade.repeat(ph, axis=0).repeat(pw, axis=1)[..., None]
    picture = Image.fromarray(big.round().astype(np.uint8))
    if labels is None:
        if quotas is not None:
            raise ValueError("quotas are per region; give labels too")
    else:
        region = _numpy(labels).astype(np.int64).reshape(rows, cols)
        draw = ImageDraw.Draw(picture)
        line = max(2, min(ph, pw) // 8)
        _draw_boundaries(draw, region, ph, pw, line)
        if quotas is not None:
            _draw_quotas(draw, ImageFont, region, _numpy(quotas), ph, pw)
    if path is not None:
        picture.save(path, format="PNG")
    return picture


def draw_kept(image, grid: tuple[int, int], kept: torch.Tensor, path: str | Path | None = None, **kwargs):
    """Draw which tokens a method kept (dropped patches dimmed); see `draw_regions`."""
    return draw_regions(image, None, grid, kept, path=path, **kwargs)


def draw_token_life(
    image,
    grid: tuple[int, int],
    live_fraction: torch.Tensor | np.ndarray,
    path: str | Path | None = None,
    *,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
):
    """Shade each patch by the fraction of decoder layers its token was live in; return a PIL image.

    A token live in every layer keeps full brightness, one never live gets `DIM`; in between the
    brightness grows linearly, so FastV shows two levels and PyramidDrop or CSP one per stage.
    `live_fraction` is `(N,)` in [0, 1], tokens in row-major grid order (see `draw_regions`).
    """
    from PIL import Image

    pixels = to_uint8(image, mean, std)
    height, width = pixels.shape[:2]
    rows, cols = grid
    if height % rows or width % cols:
        raise ValueError(f"image of {height}x{width} pixels does not divide into the {rows}x{cols} grid")
    fraction = np.clip(_numpy(live_fraction).astype(np.float32), 0, 1).reshape(rows, cols)
    scale = max(1, math.ceil(MIN_SIDE / max(height, width)))
    ph, pw = height // rows * scale, width // cols * scale
    big = pixels.repeat(scale, axis=0).repeat(scale, axis=1).astype(np.float32)
    shade = DIM + (1 - DIM) * fraction
    big *= shade.repeat(ph, axis=0).repeat(pw, axis=1)[..., None]
    picture = Image.fromarray(big.round().astype(np.uint8))
    if path is not None:
        picture.save(path, format="PNG")
    return picture


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _draw_boundaries(draw, region: np.ndarray, ph: int, pw: int, width: int) -> None:
    # A boundary runs along every patch edge whose two sides lie in different regions.
    for r, c in zip(*np.nonzero(region[:, 1:] != region[:, :-1]), strict=True):
        x = (c + 1) * pw
        draw.line([(x, r * ph), (x, (r + 1) * ph)], fill=BOUNDARY, width=width)
    for r, c in zip(*np.nonzero(region[1:, :] != region[:-1, :]), strict=True):
        y = (r + 1) * ph
        draw.line([(c * pw, y), ((c + 1) * pw, y)], fill=BOUNDARY, width=width)


def _draw_quotas(draw, font_module, region: np.ndarray, quotas: np.ndarray, ph: int, pw: int) -> None:
    size = max(12, min(ph, pw) // 2)
    try:
        font = font_module.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        font = font_module.load_default()
    for k, quota in enumerate(quotas):
        rs, cs = np.nonzero(region == k)
        if rs.size == 0:
            continue
        # Write on the region's patch nearest its centroid, so the number sits inside the region
        # even when the region is not convex.
        nearest = np.argmin((rs - rs.mean()) ** 2 + (cs - cs.mean()) ** 2)
        centre = ((cs[nearest] + 0.5) * pw, (rs[nearest] + 0.5) * ph)
        draw.text(
            centre, str(int(quota)), fill="white", font=font, anchor="mm", stroke_width=2, stroke_fill="black"
        )
