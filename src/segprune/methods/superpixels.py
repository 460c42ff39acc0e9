"""Superpixel regions at the resolution of the vision encoder's patch grid, and their pixel statistics.

ALTP only needs to know which *tokens* form a region, so regions need be no finer than the patch
grid. `grid_slic` runs SLIC's k-means directly on patches (one sample per patch: its mean colour in
Lab and its position) in batched torch on the pixels' device; `skimage_slic` runs the reference
pixel-level `skimage.segmentation.slic` on CPU and gives each token the region that holds most of
its pixels. Both return `(batch, N)` labels 0..K-1 with no empty label; `slic_regions` picks one by name.
Helpers that work on tokens and regions rather than pixels (patch views, majority labels, region
statistics) live in `segprune.methods.regions`.

`grid_slic` follows skimage's conventions so that `n_regions`, `compactness` and `sigma` mean the
same thing in both: each image is min-max rescaled to [0, 1] and smoothed with a Gaussian of
`sigma` pixels; seeds lie on skimage's lattice; the distance is (Δlab)² + (compactness / S)² (Δxy)²
with positions in pixels and S the seed stride, each centre searching ±2S; fragments under half the
expected region size are folded into a neighbour, as skimage's `enforce_connectivity` does.

The fused path (`fused=True`, "grid-fused", or any "grid" call inside `with fused_grid_slic():`)
runs the same functions through `torch.compile`: the patch colours (rescale, blur, Lab: some forty
small kernels) and each k-means round (a dozen) become a few generated kernels each. The eager
functions are its reference (tests compare labels). The first call per shape compiles (seconds on
a CPU; a C++ compiler is needed there, Triton on CUDA), so the path is opt-in.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import lazy_loader

from segprune.methods.regions import one_hot, relabel, token_majority

torch = lazy_loader.load("torch")  # configs are built where torch is not imported (the CLI's --help)

SLIC_ITERS = 10  # skimage's default max_num_iter
MIN_SIZE_FACTOR = 0.5  # skimage's default: fragments under half a region's expected size are folded
# A finite penalty for patches outside a centre's search window: a patch outside every window (a
# rare case once centres move) still joins the least distant centre instead of none.
_OUTSIDE_WINDOW = 1e8
SUPERPIXEL_PATHS = ("grid", "grid-fused", "skimage")
_fuse_grid = False  # set by `fused_grid_slic`
_compiled_fns: dict[Callable[..., Any], Callable[..., Any]] = {}


@contextlib.contextmanager
def fused_grid_slic(enabled: bool = True) -> Iterator[None]:
    """Within the block, every "grid" SLIC (ALTP's, CSP's Seg-First fallback) takes the fused path."""
    global _fuse_grid
    previous, _fuse_grid = _fuse_grid, bool(enabled)
    try:
        yield
    finally:
        _fuse_grid = previous


def _fused(fn: Callable[..., Any]) -> Callable[..., Any]:
    # One compiled function per Python function, shapes static: ALTP calls it with one shape per model.
    if fn not in _compiled_fns:
        _compiled_fns[fn] = torch.compile(fn, dynamic=False)
    return _compiled_fns[fn]


def _use_fused(fused: bool | None) -> bool:
    return _fuse_grid if fused is None else bool(fused)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """Convert `(batch, 3, H, W)` sRGB in [0, 1] to CIE Lab (D65 white, 2° observer), as skimage does."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    r, g, b = linear.unbind(1)
    # sRGB -> XYZ, each row divided by the D65 white point. Python constants rather than a matrix
    # tensor: no host-to-device copy, so this also runs under CUDA graph capture.
    xyz = torch.stack(
        [
            (0.412453 * r + 0.357580 * g + 0.180423 * b) / 0.95047,
            0.212671 * r + 0.715160 * g + 0.072169 * b,
            (0.019334 * r + 0.119193 * g + 0.950227 * b) / 1.08883,
        ],
        dim=1,
    )
    # skimage's rounded CIE constants (0.008856 for (6/29)^3, 7.787 for 1 / (3 (6/29)^2)), so that
    # both superpixel paths see the same colours.
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0.008856) ** (1 / 3), 7.787 * xyz + 16 / 116)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Smooth `(batch, C, H, W)` with a separable Gaussian of `sigma` pixels, truncated at 4 sigma.

    Borders are mirrored including the edge pixel (scipy's and skimage's "reflect"), so the result
    matches `skimage.filters.gaussian(..., mode="reflect")`.
    """
    if sigma <= 0:
        return images
    kernel = _gaussian_kernel(sigma, images)
    return _separable(images, kernel, kernel, stride=(1, 1))


def blurred_patch_means(images: torch.Tensor, grid: tuple[int, int], sigma: float) -> torch.Tensor:
    """Return `(batch, C, rows, cols)`: each patch's mean of the image smoothed by a Gaussian of `sigma` px.

    Equals the patch means of `gaussian_blur(images, sigma)`, but blur and average are both linear,
    so one strided pass with their combined kernel does the work at patch resolution.
    """
    height, width = images.shape[-2:]
    rows, cols = grid
    if height % rows or width % cols:
        raise ValueError(
            f"image of {height}x{width} pixels does not divide into the {rows}x{cols} patch grid"
        )
    gauss = _gaussian_kernel(sigma, images) if sigma > 0 else images.new_ones(1)
    pad = (gauss.shape[0] - 1) // 2

    def combined(size: int) -> torch.Tensor:
        # The patch average (a box) convolved with the Gaussian: size + 2 * radius taps.
        box = images.new_full((1, 1, size), 1.0 / size)
        return torch.nn.functional.conv1d(box, gauss.view(1, 1, -1), padding=2 * pad).flatten()

    return _separable(
        images, combined(height // rows), combined(width // cols), (height // rows, width // cols)
    )


def _gaussian_kernel(sigma: float, like: torch.Tensor) -> torch.Tensor:
    radius = max(1, int(4 * sigma + 0.5))  # skimage's truncate=4
    taps = torch.arange(-radius, radius + 1, dtype=like.dtype, device=like.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    return kernel / kernel.sum()


def _separable(
    images: torch.Tensor, kernel_h: torch.Tensor, kernel_w: torch.Tensor, stride: tuple[int, int]
) -> torch.Tensor:
    # Correlate with kernel_h along H, then kernel_w along W, each over a mirrored border.
    channels = images.shape[1]
    x = _mirror(images, (kernel_h.shape[0] - stride[0]) // 2, dim=2)
    x = torch.nn.functional.conv2d(
        x, kernel_h.view(1, 1, -1, 1).expand(channels, 1, -1, 1), stride=(stride[0], 1), groups=channels
    )
    x = _mirror(x, (kernel_w.shape[0] - stride[1]) // 2, dim=3)
    return torch.nn.functional.conv2d(
        x, kernel_w.view(1, 1, 1, -1).expand(channels, 1, 1, -1), stride=(1, stride[1]), groups=channels
    )


def _mirror(x: torch.Tensor, pad: int, dim: int) -> torch.Tensor:
    # Mirror `pad` samples at both ends of `dim`; tiles the mirrored image when `pad` exceeds it.
    while pad > 0:
        step = min(pad, x.shape[dim])
        first, last = x.narrow(dim, 0, step).flip(dim), x.narrow(dim, x.shape[dim] - step, step).flip(dim)
        x = torch.cat([first, x, last], dim=dim)
        pad -= step
    return x


def rescale(images: torch.Tensor) -> torch.Tensor:
    """Min-max rescale each image to [0, 1] over all its pixels and channels (skimage's slic does this)."""
    flat = images.flatten(1)
    # amin and amax separately: on CPU they are ten times faster than the fused aminmax.
    low, high = flat.amin(dim=1)[:, None, None, None], flat.amax(dim=1)[:, None, None, None]
    span = high - low
    return (images - low) / torch.where(span > 0, span, torch.ones_like(span))


def seed_lattice(height: int, width: int, n_regions: int) -> tuple[tuple[int, int, int], ...]:
    """Return `((start, stride, count) for rows, for columns)`: SLIC's seed pixels on an H x W image.

    The lattice of `skimage.util.regular_grid`, which skimage's slic starts from: a stride of
    sqrt(H * W / n_regions) pixels (a side too short for it gets one seed and the other side the
    rest), seeds from stride // 2 on. So the seed count is near, not always at most, `n_regions`:
    on a 336 px square, 9 seeds for 7 to 12 regions and 16 for 13 to 20.
    """
    if height * width <= n_regions:
        return (0, 1, height), (0, 1, width)
    short, long_ = sorted((height, width))
    step_short = step_long = math.sqrt(height * width / n_regions)
    if short < step_short:
        step_short, step_long = short, long_ / n_regions
    steps = (step_short, step_long) if height <= width else (step_long, step_short)
    out = []
    for size, step in zip((height, width), steps, strict=True):
        start, stride = int(step // 2), max(1, round(step))
        out.append((start, stride, len(range(start, size, stride))))
    return tuple(out)


def grid_slic(
    images: torch.Tensor,
    grid: tuple[int, int],
    n_regions: int,
    compactness: float,
    sigma: float = 0.0,
    iters: int = SLIC_ITERS,
    fused: bool | None = None,
) -> torch.Tensor:
    """Return `(batch, N)` long region labels from SLIC k-means on the patch grid.

    Args:
        images: `(batch, 3, H, W)` RGB in [0, 1]; H and W multiples of the grid.
        grid: `(rows, cols)` of the patch grid, N = rows * cols tokens in row-major order.
        n_regions: target number of regions; seeds lie on skimage's lattice (`seed_lattice`).
        compactness: SLIC's C, the weight of position against colour (as in skimage).
        sigma: Gaussian smoothing of the image in pixels before clustering (0: none).
        iters: assignment/update rounds (skimage's default is 10).
        fused: run colours and k-means rounds compiled (None: as `fused_grid_slic` says; off by default).
    Returns:
        Labels 0..K_b-1 per sample with every label used, K_b at most the number of seeds, numbered
        by the seed they grew from (row-major), so label order follows the image's layout.
    """
    fused = _use_fused(fused)
    colour = patch_colours(images, grid, sigma, fused=fused)
    return cluster_patches(colour, grid, images.shape[-2:], n_regions, compactness, iters, fused=fused)


def patch_colours(
    images: torch.Tensor, grid: tuple[int, int], sigma: float = 0.0, fused: bool = False
) -> torch.Tensor:
    """Return `(batch, N, 3)`: the Lab colour of each patch's mean RGB, after rescaling and smoothing.

    Lab, so that colour distances and thus `compactness` mean what they do in skimage. Converting the
    N patch means rather than every pixel (skimage's order) took 7 ms instead of 11 per 336 px image
    on 2 CPU cores and agreed with skimage as well (benchmarks/superpixels.py measures both).
    `fused`: the same computation compiled (float results agree to rounding, not bit for bit).
    """
    if fused:
        return _fused(_patch_colours)(images, grid, sigma)
    return _patch_colours(images, grid, sigma)


def _patch_colours(images: torch.Tensor, grid: tuple[int, int], sigma: float) -> torch.Tensor:
    patch_rgb = blurred_patch_means(rescale(images.float()), grid, sigma)  # (batch, 3, rows, cols)
    return rgb_to_lab(patch_rgb).flatten(2).transpose(1, 2)


def cluster_patches(
    colour: torch.Tensor,
    grid: tuple[int, int],
    image_size: tuple[int, int],
    n_regions: int,
    compactness: float,
    iters: int = SLIC_ITERS,
    fused: bool = False,
) -> torch.Tensor:
    """Return `(batch, N)` labels from SLIC's k-means over patches with `(batch, N, 3)` Lab colours.

    Positions are patch centres in pixels of an image of `image_size` `(H, W)`, so seeds, compactness
    and search windows mean what they do in skimage, which clusters the pixels themselves. `fused`:
    each k-means round compiled (`kmeans_round`).
    """
    if iters < 1:
        raise ValueError(f"iters={iters} must be >= 1")
    rows, cols = grid
    height, width = image_size
    batch, device = colour.shape[0], colour.device
    ph, pw = height // rows, width // cols
    ys = torch.arange(rows, device=device, dtype=torch.float32) * ph + (ph - 1) / 2
    xs = torch.arange(cols, device=device, dtype=torch.float32) * pw + (pw - 1) / 2
    position = torch.cartesian_prod(ys, xs)  # (N, 2), row-major like the tokens

    (y0, sy, ny), (x0, sx, nx) = seed_lattice(height, width, n_regions)
    seed_y = y0 + sy * torch.arange(ny, device=device, dtype=torch.float32)
    seed_x = x0 + sx * torch.arange(nx, device=device, dtype=torch.float32)
    step = max(sy, sx)
    # Squared Euclidean distance of these features is SLIC's (Δlab)² + (C / S)² (Δxy)².
    scale = compactness / step
    features = torch.cat([colour.float(), scale * position.expand(batch, -1, -1)], dim=-1)  # (batch, N, 5)
    # Centres start at the seed pixels with colour zero, as in skimage: the first assignment is then
    # purely spatial and each centre's first colour is the mean of its seed cell. A seed whose cell
    # straddles an edge gets a mixed colour and usually dies, so flat areas are not cut up.
    seeds = torch.cartesian_prod(seed_y, seed_x)  # (K, 2)
    centres = torch.cat([torch.zeros_like(seeds[:, :1]).expand(-1, 3), scale * seeds], dim=-1)
    centres = centres.expand(batch, -1, -1).contiguous()  # (batch, K, 5)
    n_seeds = ny * nx
    reach = 2 * scale * step  # skimage searches a window of +-2 S around each centre
    kmeans = _fused(kmeans_round) if fused else kmeans_round
    for _ in range(iters):
        labels, centres = kmeans(features, centres, reach, n_seeds)
    # skimage folds fragments under half the expected segment area, H * W / n_regions pixels.
    min_size = MIN_SIZE_FACTOR * rows * cols / n_regions
    return relabel(merge_fragments(labels, grid, min_size), n_seeds)


def kmeans_round(
    features: torch.Tensor, centres: torch.Tensor, reach: float, n_centres: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SLIC k-means round: `(batch, N)` labels of the nearest centre, and the updated centres.

    `features` `(batch, N, 5)` and `centres` `(batch, K, 5)` are scaled so that squared Euclidean
    distance is SLIC's; a centre only reaches patches within `reach` on both position axes.
    """
    # Differences rather than |a|² - 2a·b + |b|²: exact zeros in flat areas stay exact ties, so
    # a sample's labels do not depend on what else is in the batch.
    diff = features[:, :, None, :] - centres[:, None, :, :]  # (batch, N, K, 5)
    distance = diff.square().sum(-1)
    outside = (diff[..., 3:].abs() > reach).any(dim=-1)
    labels = (distance + _OUTSIDE_WINDOW * outside).argmin(dim=-1)
    # Centre update as a matmul with the one-hot assignment: deterministic on every backend,
    # unlike scatter_add, whose float atomics on CUDA sum in a different order each run.
    member = one_hot(labels, n_centres)  # (batch, N, K)
    count = member.sum(dim=1)[..., None]  # (batch, K, 1)
    # An empty cluster keeps its old centre.
    centres = torch.where(count > 0, member.transpose(1, 2) @ features / count.clamp(min=1), centres)
    return labels, centres


def merge_fragments(
    labels: torch.Tensor, grid: tuple[int, int], min_size: float, components: str | None = None
) -> torch.Tensor:
    """Give every connected fragment smaller than `min_size` patches the label of the region before it.

    SLIC's k-means leaves small islands where colour varies fast (texture); skimage's
    `enforce_connectivity` folds each into the segment it touches first in raster order, and so
    does this: a fragment takes the label of the patch left of (else above) its first patch, after
    that patch's own fragment has been folded. Unlike skimage, two large fragments of one cluster
    keep one label, so the number of labels never exceeds the number of clusters.

    Fragments are found by one of two computations of the same thing (each patch's root, the first
    patch of its fragment): "propagate" spreads the smallest index over same-label neighbours and
    stops when nothing changes, which needs a host check per round, so it is the CPU default;
    "square" squares the `(N, N)` same-label adjacency ceil(log2 N) times, a fixed few large
    matrix products with no host check, the default on other devices (under a CUDA graph the
    propagation's fixed worst case, rows + cols rounds of small kernels, cost far more).

    Args:
        labels: `(batch, N)` long, row-major over the `(rows, cols)` grid.
        components: "propagate" or "square"; None picks by device as above.
    Returns:
        `(batch, N)` long labels, a subset of the input labels per sample.
    """
    rows, cols = grid
    batch, n = labels.shape
    device = labels.device
    index = torch.arange(n, device=device)
    row, col = index // cols, index % cols
    # 4-neighbours of each patch (itself where the grid ends), for min-label propagation.
    neighbours = torch.stack(
        [
            torch.where(col > 0, index - 1, index),
            torch.where(col < cols - 1, index + 1, index),
            torch.where(row > 0, index - cols, index),
            torch.where(row < rows - 1, index + cols, index),
        ],
        dim=1,
    ).flatten()
    same = labels.gather(1, neighbours.expand(batch, -1)).view(batch, n, 4) == labels[:, :, None]
    if components is None:
        components = "propagate" if device.type == "cpu" else "square"
    if components == "propagate":
        root = _roots_by_propagation(same, neighbours, index, rows + cols)
    elif components == "square":
        root = _roots_by_squaring(same, neighbours, index)
    else:
        raise ValueError(f"components={components!r}; valid: 'propagate', 'square'")
    size = torch.zeros_like(root).scatter_add_(1, root, torch.ones_like(root))
    # The fragment rooted at r is folded into the fragment of the patch before r: left, else above.
    before = torch.where(col > 0, index - 1, torch.where(row > 0, index - cols, index))
    small = (size < min_size) & (root == index)
    target = torch.where(small, root.gather(1, before.expand(batch, -1)), index)
    # Targets always point to an earlier root, so doubling resolves chains of folds in log2 N rounds.
    for _ in range(max(1, (n - 1).bit_length())):
        target = target.gather(1, target)
    return labels.gather(1, target.gather(1, root))


def _roots_by_propagation(
    same: torch.Tensor, neighbours: torch.Tensor, index: torch.Tensor, rounds: int
) -> torch.Tensor:
    """Each patch's smallest same-fragment index by min-label propagation with pointer jumping.

    Min over same-label neighbours spreads the root, pointer jumping (root = root[root]) shortcuts
    long chains; `rounds` (rows + cols) cover any fragment whose in-fragment path to its first patch
    is that short (longer, snake-like fragments would stay split: harmless, they are only folded
    more eagerly). On CPU a round that changes nothing ends the loop (typical images converge in
    about 10 rounds); elsewhere that check would be a host sync, so every round runs: same result.
    """
    batch, n, _ = same.shape
    root = index.expand(batch, n)
    for _ in range(rounds):
        reach = root.gather(1, neighbours.expand(batch, -1)).view(batch, n, 4)
        update = torch.minimum(root, torch.where(same, reach, n).amin(dim=-1))
        update = update.gather(1, update)
        if update.device.type == "cpu" and torch.equal(update, root):
            break
        root = update
    return root


def _roots_by_squaring(same: torch.Tensor, neighbours: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Each patch's smallest same-fragment index from the transitive closure of the adjacency.

    After k squarings of (A + I), clamped to 0/1, entry (i, j) says whether j is reachable from i
    in at most 2^k steps; ceil(log2 N) squarings reach every patch of a fragment. Entries are 0/1
    and sums at most N, exact in float32 accumulation (and in TF32, whose inputs 0 and 1 are exact).
    """
    batch, n, _ = same.shape
    reach = torch.zeros(batch, n, n, device=same.device)
    reach.scatter_(2, neighbours.view(1, n, 4).expand(batch, -1, -1), same.float())
    reach = torch.maximum(reach, torch.eye(n, device=same.device))
    for _ in range(max(1, (n - 1).bit_length())):
        reach = (reach @ reach).clamp_(max=1)
    return torch.where(reach > 0, index, n).amin(dim=-1)


def skimage_slic(
    images: torch.Tensor,
    grid: tuple[int, int],
    n_regions: int,
    compactness: float,
    sigma: float = 0.0,
) -> torch.Tensor:
    """Return `(batch, N)` long token labels from pixel-level `skimage.segmentation.slic`.

    Each token takes the superpixel that covers most of its patch (ties to the lower label); labels
    are then renumbered 0..K_b-1. skimage may return more regions than `n_regions`. Runs on CPU,
    one image at a time; the result is moved back to `images.device`.
    """
    try:
        from skimage.segmentation import slic
    except ImportError as err:
        raise ImportError(
            "superpixels='skimage' needs scikit-image; install it with `pip install segprune[skimage]` "
            "or use superpixels='grid'"
        ) from err
    pixels = images.detach().float().cpu()
    out = []
    for image in pixels:
        labels = slic(
            image.permute(1, 2, 0).numpy(),
            n_segments=n_regions,
            compactness=compactness,
            sigma=sigma,
            start_label=0,
        )
        out.append(token_majority(torch.from_numpy(labels).long()[None], grid)[0])
    tokens = torch.stack(out)
    return relabel(tokens, int(tokens.max()) + 1).to(images.device)


def slic_regions(
    images: torch.Tensor,
    grid: tuple[int, int],
    n_regions: int,
    compactness: float,
    sigma: float,
    superpixels: str = "grid",
) -> tuple[torch.Tensor, int]:
    """Return `(batch, N)` token labels by `grid_slic` ("grid"; "grid-fused" compiled) or
    `skimage_slic` ("skimage") and a bound above every label (the seed count for the grid paths,
    so they read nothing on the host)."""
    if superpixels in ("grid", "grid-fused"):
        fused = True if superpixels == "grid-fused" else None
        labels = grid_slic(images, grid, n_regions, compactness, sigma, fused=fused)
        (_, _, seed_rows), (_, _, seed_cols) = seed_lattice(*images.shape[-2:], n_regions)
        return labels, seed_rows * seed_cols
    if superpixels == "skimage":
        labels = skimage_slic(images, grid, n_regions, compactness, sigma)
        return labels, int(labels.max()) + 1  # the CPU path has synced already
    raise ValueError(f"superpixels={superpixels!r} is not valid; valid: {list(SUPERPIXEL_PATHS)}")
