"""ALTP (Adaptive Local-Aware Token Pruning): FastV's drop, with the budget split over superpixels."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import lazy_loader

from segprune.methods.allocate import allocate, ddc_weights, ddf_weights, density, select_by_quota
from segprune.methods.base import MethodConfig, check_fits, register
from segprune.methods.counts import keep_count
from segprune.methods.fastv import OneDropBudget
from segprune.methods.plan import AttentionScore, Keep, SelectContext, TokenPlan
from segprune.methods.regions import region_stats
from segprune.methods.superpixels import SUPERPIXEL_PATHS, slic_regions
from segprune.pixels import CLIP_MEAN, CLIP_STD

torch = lazy_loader.load("torch")  # configs are built where torch is not imported (the CLI's --help)

ALLOCATIONS = ("ddf", "ddc")
SUPERPIXELS = SUPERPIXEL_PATHS  # "grid-fused": the same SLIC through torch.compile


def image_regions(
    context: SelectContext,
    n_regions: int,
    compactness: float = 5.0,
    sigma: float = 1.0,
    superpixels: str = "grid",
    image_mean: tuple[float, ...] = CLIP_MEAN,
    image_std: tuple[float, ...] = CLIP_STD,
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Return superpixels of the image the model saw, at the patch grid's resolution.

    Returns `(labels (batch, N), a bound above every label, images (batch, 3, H, W) in [0, 1])`;
    the pixels are `context.pixel_values` de-normalised with `image_mean` / `image_std`.
    """
    images = model_pixels(context, image_mean, image_std)
    labels, n_labels = slic_regions(images, context.grid, n_regions, compactness, sigma, superpixels)
    return labels, n_labels, images


def model_pixels(
    context: SelectContext, image_mean: tuple[float, ...], image_std: tuple[float, ...]
) -> torch.Tensor:
    """Return the model's pixels de-normalised to RGB in [0, 1], checked against the token grid."""
    pixel_values = context.pixel_values
    if pixel_values is None:
        raise ValueError(
            "ALTP needs the image: call the model with pixel_values (inputs_embeds-only calls "
            "carry no pixels to cut into superpixels)"
        )
    if context.grid is None:
        raise ValueError("ALTP needs the grid of the image tokens; the model's family gave none")
    rows, cols = context.grid
    if rows * cols != context.n_image:
        raise ValueError(
            f"ALTP: the {rows}x{cols} patch grid has {rows * cols} patches but the prompt holds "
            f"{context.n_image} image tokens; ALTP needs one image token per grid cell"
        )
    if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
        raise ValueError(
            "ALTP needs the image as (batch, 3, H, W) pixels (the family's selector_pixels), "
            f"got shape {tuple(pixel_values.shape)}"
        )
    x = pixel_values.float()
    # Per-channel constants as Python floats: no host-to-device copy in the hot path.
    channels = [x[:, c] * image_std[c] + image_mean[c] for c in range(3)]
    return torch.stack(channels, dim=1).clamp(0, 1)


@dataclass(frozen=True)
class ALTPSelector:
    """Keep a per-region quota of the best-scoring live tokens (ALTP Algorithm 1, steps 1-3).

    Regions are superpixels of the image the model saw (`context.pixel_values`), at the resolution
    of the patch grid (`context.grid`), cut and weighted as `config` says.
    """

    config: ALTPConfig = dataclasses.field(default_factory=lambda: ALTPConfig())

    def __call__(
        self, scores: torch.Tensor | None, live: torch.Tensor, count: int, context: SelectContext
    ) -> torch.Tensor:
        if count >= live.shape[1]:
            return live  # keeping everything needs no regions (and works without pixels)
        if scores is None:
            raise ValueError("ALTP ranks tokens inside each region by attention; give its Keep step a score")
        labels, n_labels, images = self.regions(context)
        live_labels = labels.gather(1, live)
        quotas = self.quotas(images, labels, n_labels, live_labels, count, context.grid)
        chosen = select_by_quota(scores, live_labels, quotas, count)
        return live.gather(1, chosen)

    def regions(self, context: SelectContext) -> tuple[torch.Tensor, int, torch.Tensor]:
        """Return `image_regions` of the context under this selector's config."""
        c = self.config
        return image_regions(
            context,
            c.n_regions,
            float(c.compactness),
            float(c.sigma),
            c.superpixels,
            c.image_mean,
            c.image_std,
        )

    def pixels(self, context: SelectContext) -> torch.Tensor:
        """Return `model_pixels` of the context, de-normalised with this selector's config."""
        return model_pixels(context, self.config.image_mean, self.config.image_std)

    def quotas(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        n_labels: int,
        live_labels: torch.Tensor,
        count: int,
        grid: tuple[int, int],
    ) -> torch.Tensor:
        """Return `(batch, n_labels)` long quotas summing to `count`, capped by each region's live tokens."""
        sizes = torch.zeros(labels.shape[0], n_labels, dtype=torch.long, device=labels.device)
        sizes.scatter_add_(1, live_labels, torch.ones_like(live_labels))
        if self.config.allocation == "ddc":
            return allocate(ddc_weights(sizes), sizes, count)
        variance, area = region_stats(images, labels, grid, n_labels)
        dense = density(variance, area)
        return allocate(ddf_weights(dense, sizes > 0, float(self.config.alpha)), sizes, count, rank_by=dense)


@register
@dataclass(frozen=True)
class ALTPConfig(OneDropBudget, MethodConfig):
    """ALTP (Adaptive Local-Aware Token Pruning): FastV's drop with the budget split over superpixels.

    Before decoder layer `layer`, exactly round(keep_ratio * N) image tokens stay per sample: the
    image is cut into superpixels (Eq. 2), each gets a quota, and inside each the tokens the last
    token attends to most in layer `layer` - 1 (FastV's score) are kept.

    Attributes:
        keep_ratio: fraction of the N image tokens kept, 0 < keep_ratio <= 1.
        layer: K, the first decoder layer that sees only the kept tokens (K >= 1).
        n_regions: target number of superpixels (the paper's N; default 10).
        compactness: SLIC's compactness C (> 0): higher gives squarer regions (default 5).
        sigma: Gaussian smoothing in pixels before SLIC (>= 0; default 1).
        alpha: temperature of the DDF softmax, w = softmax(d / (alpha * max d)) (> 0; paper: 1.5).
        allocation: "ddf" splits the budget by information density (Eqs. 3-4); "ddc" gives every
            region the same keep ratio.
        superpixels: "grid" runs SLIC on the patch grid in torch, on the model's device;
            "grid-fused" runs the same through `torch.compile` (compiles per shape; opt-in); "skimage"
            runs `skimage.segmentation.slic` on the pixels on CPU (needs `segprune[skimage]`).
        image_mean, image_std: the normalisation the image processor applied (CLIP's by default).
    """

    name = "altp"
    label = "ALTP"
    display_order = 2
    layer_fields = ("layer",)
    keep_ratio: float = 0.25
    layer: int = 2
    n_regions: int = 10
    compactness: float = 5.0
    sigma: float = 1.0
    alpha: float = 1.5
    allocation: str = "ddf"
    superpixels: str = "grid"
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD

    def validate(self) -> None:
        self.check_fraction("keep_ratio")
        self.check_int("layer", lo=1)
        self.check_int("n_regions", lo=1)
        self.check_real("compactness", allow_zero=False)
        self.check_real("sigma", allow_zero=True)
        self.check_real("alpha", allow_zero=False)
        self.check_choice("allocation", ALLOCATIONS)
        self.check_choice("superpixels", SUPERPIXELS)
        self.check_rgb("image_mean", positive=False)
        self.check_rgb("image_std", positive=True)

    @property
    def ranks_by_last_token(self) -> bool:
        return True

    def plan(self, n_image: int, n_layers: int) -> TokenPlan:
        check_fits(self, "layer", self.layer, n_layers)
        step = Keep(
            self.layer,
            keep_count(self.keep_ratio, n_image),
            ALTPSelector(self),
            AttentionScore(self.layer - 1),
        )
        return TokenPlan(n_image, n_layers, (step,))

    @classmethod
    def keep_all(cls) -> ALTPConfig:
        return cls(keep_ratio=1.0, layer=1)

    @property
    def needs_pixels(self) -> bool:
        return True

    @property
    def sync_free(self) -> bool:
        return self.superpixels == "grid"  # skimage runs on CPU copies of the pixels

    @classmethod
    def variants(cls) -> dict[str, dict[str, Any]]:
        return {f"altp-{a}": {"allocation": a} for a in ("ddc", "ddf")}
