"""Patch-grid SLIC, the skimage reference path, and per-region pixel statistics."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from segprune.methods import superpixels
from segprune.methods.regions import patch_view, region_stats, relabel, token_majority
from segprune.methods.superpixels import (
    blurred_patch_means,
    fused_grid_slic,
    gaussian_blur,
    grid_slic,
    merge_fragments,
    rgb_to_lab,
    seed_lattice,
    skimage_slic,
    slic_regions,
)

skimage = pytest.importorskip("skimage")

SIZE = 336
GRID = (24, 24)


def paint(colours, masks) -> torch.Tensor:
    """Return a `(1, 3, SIZE, SIZE)` image: each mask, in order, filled with its colour."""
    image = torch.zeros(3, SIZE, SIZE)
    for colour, mask in zip(colours, masks, strict=True):
        image[:, mask] = torch.tensor(colour, dtype=torch.float)[:, None]
    return image[None]


def quadrants_and_disc(disc: bool = True) -> torch.Tensor:
    """Four flat quadrants (red, green, blue, yellow) and, optionally, a white disc in the middle."""
    ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    h = SIZE // 2
    masks = [(ys < h) & (xs < h), (ys < h) & (xs >= h), (ys >= h) & (xs < h), (ys >= h) & (xs >= h)]
    colours = [(0.9, 0.1, 0.1), (0.1, 0.8, 0.2), (0.1, 0.2, 0.9), (0.9, 0.9, 0.2)]
    if disc:
        masks.append((ys - h) ** 2 + (xs - h) ** 2 < 70**2)
        colours.append((1.0, 1.0, 1.0))
    return paint(colours, masks)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of tokens in matching regions after the best one-to-one matching of labels."""
    from scipy.optimize import linear_sum_assignment

    table = np.zeros((int(a.max()) + 1, int(b.max()) + 1))
    np.add.at(table, (a.numpy(), b.numpy()), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return table[rows, cols].sum() / a.numel()


# -- building blocks against skimage ----------------------------------------------------------------


def test_rgb_to_lab_matches_skimage():
    from skimage.color import rgb2lab

    rgb = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    rgb[0, :, 0, 0] = 0.0  # black and the linear part of the sRGB curve
    rgb[0, :, 0, 1] = 0.01
    expected = np.stack([rgb2lab(x.permute(1, 2, 0).numpy()) for x in rgb])
    assert np.abs(rgb_to_lab(rgb).permute(0, 2, 3, 1).numpy() - expected).max() < 1e-6


@pytest.mark.parametrize(("size", "sigma"), [(20, 1.0), (7, 2.5), (2, 1.0)])
def test_gaussian_blur_matches_skimage(size, sigma):
    from skimage.filters import gaussian

    image = torch.rand(1, 3, size, size + 3, dtype=torch.float64)
    expected = gaussian(image[0].permute(1, 2, 0).numpy(), sigma=sigma, channel_axis=-1, mode="reflect")
    assert np.abs(gaussian_blur(image, sigma)[0].permute(1, 2, 0).numpy() - expected).max() < 1e-12


@pytest.mark.parametrize("sigma", [0.0, 1.0, 3.0])
def test_blurred_patch_means_equal_blur_then_average(sigma):
    image = torch.rand(2, 3, 12, 24, dtype=torch.float64)
    expected = patch_view(gaussian_blur(image, sigma), (3, 4)).mean(-1).transpose(1, 2).reshape(2, 3, 3, 4)
    assert torch.allclose(blurred_patch_means(image, (3, 4), sigma), expected, atol=1e-12)


@pytest.mark.parametrize("shape", [(336, 336), (16, 16), (100, 400), (400, 100), (3, 3)])
@pytest.mark.parametrize("n_regions", [1, 4, 7, 10, 15, 100])
def test_seed_lattice_is_skimages(shape, n_regions):
    from skimage.util import regular_grid

    slices = regular_grid((1, *shape), n_regions)[1:]
    expected = tuple(
        (s.start or 0, s.step or 1, len(range(*s.indices(size))))
        for s, size in zip(slices, shape, strict=True)
    )
    assert seed_lattice(*shape, n_regions) == expected


def test_patch_view_orders_patches_like_tokens():
    image = torch.arange(16.0).view(1, 1, 4, 4)
    patches = patch_view(image, (2, 2))
    assert patches[0, :, 0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    with pytest.raises(ValueError, match="does not divide"):
        patch_view(torch.zeros(1, 3, 10, 10), (3, 3))


def test_relabel_and_token_majority():
    assert relabel(torch.tensor([[5, 2, 5, 7], [0, 0, 1, 1]]), 8).tolist() == [[1, 0, 1, 2], [0, 0, 1, 1]]
    pixels = torch.tensor([[[3, 3, 1, 1], [3, 0, 1, 2], [0, 0, 2, 2], [0, 0, 2, 1]]])  # 2x2 patches of 2x2
    # Patch by patch: three 3s, three 1s, four 0s, three 2s.
    assert token_majority(pixels, (2, 2)).tolist() == [[3, 1, 0, 2]]
    tie = torch.tensor([[[4, 4], [2, 2]]])  # one patch, 2 vs 2: the lower label
    assert token_majority(tie, (1, 1)).tolist() == [[2]]


# -- grid_slic ------------------------------------------------------------------------------------


def test_grid_slic_is_deterministic_and_labels_cover_0_to_k():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, SIZE, SIZE, generator=gen)
    images[1] = quadrants_and_disc()[0]
    first = grid_slic(images, GRID, 10, 5.0, 1.0)
    assert first.shape == (3, 576) and first.dtype == torch.long
    assert torch.equal(first, grid_slic(images, GRID, 10, 5.0, 1.0))
    for labels in first:
        k = int(labels.max()) + 1
        assert sorted(set(labels.tolist())) == list(range(k))
        assert k <= 9  # skimage's lattice puts 3 x 3 seeds on a square image for 10 regions
    # A sample's labels do not depend on the rest of the batch.
    for b in range(3):
        assert torch.equal(grid_slic(images[b : b + 1], GRID, 10, 5.0, 1.0)[0], first[b])


@pytest.mark.parametrize("n_regions", [4, 10, 15])
def test_grid_slic_splits_a_two_colour_image_along_the_edge(n_regions):
    xs = torch.arange(SIZE).expand(SIZE, SIZE)
    edge = 140  # off the seed lattice and through the middle of patch column 10
    image = paint([(0.9, 0.2, 0.1), (0.1, 0.3, 0.9)], [xs < edge, xs >= edge])
    labels = grid_slic(image, GRID, n_regions, 5.0, 1.0)[0].view(GRID)
    left, right = labels[:, :10], labels[:, 11:]  # column 10 holds both colours
    assert not set(left.flatten().tolist()) & set(right.flatten().tolist()), labels


@pytest.mark.parametrize("n_regions", [7, 10])
def test_grid_slic_does_not_cut_up_flat_areas(n_regions):
    """Nine seeds on four flat quadrants: seeds whose first cell straddles an edge die (their centre
    starts at the cell's mixed colour, as in skimage), so each quadrant is exactly one region."""
    labels = grid_slic(quadrants_and_disc(disc=False), GRID, n_regions, 5.0, 1.0)[0].view(GRID)
    expected = torch.tensor([[0, 1], [2, 3]]).repeat_interleave(12, 0).repeat_interleave(12, 1)
    assert torch.equal(labels, expected)


def test_grid_slic_agrees_with_skimage_on_a_constructed_scene():
    gen = torch.Generator().manual_seed(0)
    clean = quadrants_and_disc()
    noisy = (clean + 0.05 * torch.randn(clean.shape, generator=gen)).clamp(0, 1)
    for image in (clean, noisy):
        ours = grid_slic(image, GRID, 10, 5.0, 1.0)[0]
        theirs = skimage_slic(image, GRID, 10, 5.0, 1.0)[0]
        assert int(ours.max()) + 1 == int(theirs.max()) + 1 == 5  # four quadrants and the disc
        assert agreement(ours, theirs) >= 0.9


@pytest.mark.parametrize("components", ["propagate", "square"])
def test_merge_fragments_folds_small_islands_into_the_region_before_them(components):
    labels = torch.zeros(6, 6, dtype=torch.long)
    labels[:, 3:] = 1
    labels[2, 1] = 2  # a one-patch island inside region 0
    labels[4:, 4:] = 3  # a 2 x 2 block inside region 1
    labels[0, 5] = 0  # a fragment of region 0 inside region 1: folded into its left neighbour's 1
    merged = merge_fragments(labels.view(1, -1), (6, 6), min_size=3, components=components).view(6, 6)
    expected = torch.zeros(6, 6, dtype=torch.long)
    expected[:, 3:] = 1
    expected[4:, 4:] = 3  # 4 patches >= min_size: kept
    assert torch.equal(merged, expected)
    # A snake that needs many rounds of propagation is still one fragment.
    snake = torch.ones(5, 5, dtype=torch.long)
    snake[1, :4] = 0
    snake[3, 1:] = 0
    merged = merge_fragments(snake.view(1, -1), (5, 5), min_size=2, components=components)
    assert torch.equal(merged, snake.view(1, -1))
    with pytest.raises(ValueError, match="components='bfs'"):
        merge_fragments(snake.view(1, -1), (5, 5), min_size=2, components="bfs")


def test_both_fragment_computations_agree_on_slic_like_labels():
    # Blocky random labels with speckle: many fragments of all sizes, on the 24 x 24 grid.
    gen = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 9, (8, 1, 6, 6), generator=gen).float()
    labels = torch.nn.functional.interpolate(coarse, size=(24, 24)).long().view(8, -1)
    speckle = torch.rand(8, 576, generator=gen) < 0.1
    labels = torch.where(speckle, torch.randint(0, 9, (8, 576), generator=gen), labels)
    for min_size in (2, 30):
        propagated = merge_fragments(labels, (24, 24), min_size, components="propagate")
        squared = merge_fragments(labels, (24, 24), min_size, components="square")
        assert torch.equal(propagated, squared)
    assert not torch.equal(propagated, labels)  # something was folded


# -- the fused (compiled) path ----------------------------------------------------------------------


def fused_scenes() -> dict[str, torch.Tensor]:
    """Fixed inputs for the fused path: flat regions (exact ties) and smooth random colour fields."""
    gen = torch.Generator().manual_seed(0)
    coarse = torch.rand(2, 3, 6, 6, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=SIZE, mode="bilinear")
    return {"quadrants + disc": quadrants_and_disc(), "smooth": smooth}


def test_fused_paths_compile_the_same_functions(monkeypatch):
    # Without compiling (that is the slow test below): "grid-fused" and `fused_grid_slic()` route the
    # colours and every k-means round through `_fused`, which compiles the eager functions themselves.
    compiled = []

    def record(fn):
        compiled.append(fn.__name__)
        return fn

    monkeypatch.setattr(superpixels, "_fused", record)
    image = quadrants_and_disc()
    eager, bound = slic_regions(image, GRID, 10, 5.0, 1.0, "grid")
    assert compiled == []
    fused, fused_bound = slic_regions(image, GRID, 10, 5.0, 1.0, "grid-fused")
    assert compiled == ["_patch_colours", "kmeans_round"]
    assert torch.equal(fused, eager) and fused_bound == bound
    compiled.clear()
    with fused_grid_slic():
        slic_regions(image, GRID, 10, 5.0, 1.0, "grid")
        assert grid_slic(image, GRID, 10, 5.0, fused=False) is not None
    assert compiled == ["_patch_colours", "kmeans_round"]
    grid_slic(image, GRID, 10, 5.0)  # the switch is off again
    assert len(compiled) == 2
    with pytest.raises(ValueError, match=r"superpixels='fast' is not valid; valid: \['grid', 'grid-fused'"):
        slic_regions(image, GRID, 10, 5.0, 1.0, "fast")


@pytest.mark.slow  # torch.compile on CPU: about 15 s per shape on 2 cores (C++ compilation)
@pytest.mark.parametrize("name", ["quadrants + disc", "smooth"])
def test_fused_grid_slic_gives_the_eager_labels_on_cpu(name):
    image = fused_scenes()[name]
    for n_regions, compactness, sigma in [(10, 5.0, 1.0), (25, 10.0, 0.0)]:
        expected = grid_slic(image, GRID, n_regions, compactness, sigma)
        assert torch.equal(grid_slic(image, GRID, n_regions, compactness, sigma, fused=True), expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_grid_slic_gives_the_eager_labels_on_cuda():
    images = torch.cat(list(fused_scenes().values())).cuda()
    expected = grid_slic(images, GRID, 10, 5.0, 1.0)
    assert torch.equal(grid_slic(images, GRID, 10, 5.0, 1.0, fused=True), expected)
    # and inside a CUDA graph, as GraphedPrefill captures it (compiled before the capture)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = grid_slic(images, GRID, 10, 5.0, 1.0, fused=True)
    graph.replay()
    assert torch.equal(captured, expected)


# -- skimage path and statistics ------------------------------------------------------------------


def test_skimage_slic_gives_each_token_its_majority_superpixel():
    from skimage.segmentation import slic

    image = quadrants_and_disc()
    pixels = slic(image[0].permute(1, 2, 0).numpy(), n_segments=10, compactness=5.0, sigma=1.0, start_label=0)
    expected = relabel(token_majority(torch.from_numpy(pixels)[None].long(), GRID), int(pixels.max()) + 1)
    assert torch.equal(skimage_slic(image, GRID, 10, 5.0, 1.0), expected)


def test_skimage_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)
    with pytest.raises(ImportError, match=r"segprune\[skimage\]"):
        skimage_slic(torch.rand(1, 3, 16, 16), (4, 4), 4, 5.0)


def test_region_stats_by_hand():
    image = torch.zeros(1, 3, 2, 4)
    image[0, :, :, 2:] = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # the right patch: half 0, half 1
    variance, area = region_stats(image, torch.tensor([[0, 1]]), (1, 2), 3)
    assert torch.allclose(variance, torch.tensor([[0.0, 0.25, 0.0]]))
    assert torch.allclose(area, torch.tensor([[0.5, 0.5, 0.0]]))


def test_region_stats_equal_the_variance_of_each_regions_pixels():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 12, 12, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 9), generator=gen)
    variance, area = region_stats(images, labels, (3, 3), 5)
    patches = patch_view(images, (3, 3))  # (batch, N, 3, 16)
    for b in range(2):
        for k in range(5):
            inside = labels[b] == k
            assert area[b, k] == inside.sum() / 9
            if inside.any():
                pixels = patches[b, inside].permute(1, 0, 2).reshape(3, -1)
                expected = pixels.var(dim=1, unbiased=False).mean()
                assert torch.allclose(variance[b, k].double(), expected, atol=1e-6)
            else:
                assert variance[b, k] == 0
