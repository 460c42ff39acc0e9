"""Time ALTP's superpixel step (grid vs skimage) at 336x336 and measure how well the two agree.

    .venv/bin/python benchmarks/superpixels.py [--repeats 30] [--threads 2]

Prints markdown tables; docs/altp.md quotes the output. The scenes are synthetic and seeded (see
`scenes`), so every run sees the same images. Timings are medians over `--repeats` calls after one
warm-up call, with the 25th-75th percentile range.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from segprune import pixels
from segprune.methods.altp import ALTPSelector
from segprune.methods.plan import SelectContext
from segprune.methods.regions import patch_view
from segprune.methods.select import TopK
from segprune.methods.superpixels import (
    cluster_patches,
    gaussian_blur,
    grid_slic,
    rescale,
    rgb_to_lab,
    skimage_slic,
)

SIZE, GRID = 336, (24, 24)  # LLaVA-1.5: 336 px images, 14 px patches, 576 tokens
CLIP_MEAN = torch.tensor(pixels.CLIP_MEAN)[:, None, None]
CLIP_STD = torch.tensor(pixels.CLIP_STD)[:, None, None]


def scenes(size: int = SIZE, seed: int = 0) -> dict[str, torch.Tensor]:
    """Return named `(1, 3, size, size)` RGB images in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    half = size // 2

    def paint(colours, masks) -> torch.Tensor:
        image = torch.zeros(3, size, size)
        for colour, mask in zip(colours, masks, strict=True):
            image[:, mask] = torch.tensor(colour)[:, None]
        return image

    quarters = [(ys < half) & (xs < half), (ys < half) & (xs >= half), (ys >= half) & (xs < half)]
    quarters.append((ys >= half) & (xs >= half))
    four = [(0.9, 0.1, 0.1), (0.1, 0.8, 0.2), (0.1, 0.2, 0.9), (0.9, 0.9, 0.2)]
    disc = (ys - half) ** 2 + (xs - half) ** 2 < (size * 5 // 24) ** 2
    out = {
        "quadrants": paint(four, quarters),
        "quadrants + disc": paint([*four, (1.0, 1.0, 1.0)], [*quarters, disc]),
        "three stripes": paint(
            four[:3], [xs < size // 3, (xs >= size // 3) & (xs < 2 * size // 3), xs >= 2 * size // 3]
        ),
    }
    flat_texture = torch.full((3, size, size), 0.5)
    flat_texture[:, :, half:] = torch.rand(3, size, size - half, generator=gen)
    out["flat grey and noise halves"] = flat_texture
    blobs = torch.stack([xs / size, ys / size, torch.full((size, size), 0.4)]) * 0.6
    for _ in range(6):
        cy, cx = torch.randint(0, size, (2,), generator=gen).tolist()
        ry, rx = torch.randint(size // 10, size // 4, (2,), generator=gen).tolist()
        blobs[:, ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1] = torch.rand(3, 1, generator=gen)
    out["ellipses + noise"] = (blobs + 0.03 * torch.randn(3, size, size, generator=gen)).clamp(0, 1)
    return {name: image[None] for name, image in out.items()}


def grid_slic_pixel_lab(images, grid, n_regions, compactness, sigma):
    """The ablation: Lab per pixel, smoothed, then averaged per patch (skimage's order of steps)."""
    lab = gaussian_blur(rgb_to_lab(rescale(images)), sigma)
    return cluster_patches(patch_view(lab, grid).mean(-1), grid, images.shape[-2:], n_regions, compactness)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Return the fraction of tokens whose labels match after the best one-to-one label matching."""
    from scipy.optimize import linear_sum_assignment

    table = torch.zeros(int(a.max()) + 1, int(b.max()) + 1)
    table.index_put_((a, b), torch.ones_like(a, dtype=torch.float), accumulate=True)
    rows, cols = linear_sum_assignment(table.numpy(), maximize=True)
    return float(table[rows, cols].sum()) / a.numel()


def timed(fn, repeats: int) -> str:
    fn()  # warm-up: first-call allocations and lazy imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    q1, median, q3 = statistics.quantiles(times, n=4)
    return f"{median:.2f} ({q1:.2f}-{q3:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compactness", type=float, default=5.0)
    parser.add_argument("--sigma", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    c, s = args.compactness, args.sigma
    images = scenes()
    image = images["ellipses + noise"]
    batch8 = torch.cat([images[name] for name in list(images) * 2][:8])

    print(f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads")
    print(f"load average before: {os.getloadavg()[0]:.2f}; compactness {c}, sigma {s}, n_regions 10")
    print()
    print(f"| step (336x336 image, 24x24 grid) | ms, median of {args.repeats} (25th-75th pct) |")
    print("| --- | --- |")
    live = torch.arange(576)[None]
    scores = torch.rand(1, 576, generator=torch.Generator().manual_seed(0))
    ctx = SelectContext(n_image=576, grid=GRID, pixel_values=(image - CLIP_MEAN) / CLIP_STD)
    rows = [
        ("grid_slic, batch 1", lambda: grid_slic(image, GRID, 10, c, s), 1),
        ("grid_slic, batch 8, per image", lambda: grid_slic(batch8, GRID, 10, c, s), 8),
        (
            "grid_slic with per-pixel Lab (ablation), batch 1",
            lambda: grid_slic_pixel_lab(image, GRID, 10, c, s),
            1,
        ),
        ("skimage_slic (slic + token vote), batch 1", lambda: skimage_slic(image, GRID, 10, c, s), 1),
        ("ALTPSelector, grid, DDF, 144 of 576 tokens", lambda: ALTPSelector()(scores, live, 144, ctx), 1),
        ("FastV's TopK, 144 of 576 tokens (reference)", lambda: TopK()(scores, live, 144, ctx), 1),
    ]
    for name, fn, per in rows:
        if per == 1:
            print(f"| {name} | {timed(fn, args.repeats)} |")
        else:
            result = timed(fn, args.repeats)
            median = float(result.split()[0]) / per
            print(f"| {name} | {median:.2f} (batch of 8: {result}) |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    print()
    print("Agreement with skimage_slic: tokens in matching regions after the best one-to-one matching")
    print("(regions: grid / skimage). Ablation column: grid_slic with per-pixel Lab.")
    print()
    print("| scene | n_regions | regions | grid_slic | per-pixel Lab |")
    print("| --- | --- | --- | --- | --- |")
    for name, scene in images.items():
        for n in (7, 10, 15):
            ours = grid_slic(scene, GRID, n, c, s)[0]
            theirs = skimage_slic(scene, GRID, n, c, s)[0]
            ablation = grid_slic_pixel_lab(scene, GRID, n, c, s)[0]
            count = f"{int(ours.max()) + 1} / {int(theirs.max()) + 1}"
            print(
                f"| {name} | {n} | {count} | {100 * agreement(ours, theirs):.1f}% "
                f"| {100 * agreement(ablation, theirs):.1f}% |"
            )


if __name__ == "__main__":
    main()
