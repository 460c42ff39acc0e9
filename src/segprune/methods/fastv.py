"""FastV: after layer K-1, keep the image tokens the last token attends to most."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from segprune.methods.base import MethodConfig, check_fits, register
from segprune.methods.counts import keep_count, paper_count, ratio_for_count, round_half_up
from segprune.methods.plan import AttentionScore, Keep, TokenPlan
from segprune.methods.scale import PAPER_LAYERS
from segprune.methods.select import TopK

PAPER_LAYER = 2  # FastV's (and ALTP's) K on LLaVA-1.5-7B's 32 layers


def drop_layer(n_layers: int) -> int:
    """Return FastV's K = 2 of the papers' 32 layers at the same relative depth of `n_layers` (at least 1)."""
    return max(1, min(n_layers - 1, round_half_up(PAPER_LAYER * n_layers / PAPER_LAYERS)))


class OneDropBudget:
    """Budget rules of a method that drops once, at layer `layer`, to `keep_ratio` (FastV, ALTP)."""

    @classmethod
    def budget_fields(cls, reduction: float, n_layers: int, n_image: int) -> dict[str, Any]:
        """Return `layer` and `keep_ratio` of one drop at `drop_layer` with N_avg = (1 - reduction) * N."""
        layer = drop_layer(n_layers)
        # N_avg * L = K * N + (L - K) * kept
        kept = ((1 - reduction) * n_image * n_layers - layer * n_image) / (n_layers - layer)
        kept = min(n_image, max(1, round_half_up(kept)))
        return {"layer": layer, "keep_ratio": ratio_for_count(kept, n_image)}

    @classmethod
    def paper_fields(cls, reduction: float, n_layers: int, n_image: int, **options: Any) -> dict[str, Any]:
        """Return FastV's paper setting: K = 2, floor((1 - reduction) * N) tokens kept (ALTP Table 1)."""
        return {"layer": PAPER_LAYER, "keep_ratio": ratio_for_count(paper_count(reduction, n_image), n_image)}


@register
@dataclass(frozen=True)
class FastVConfig(OneDropBudget, MethodConfig):
    """FastV (Chen et al., 2024).

    Attributes:
        layer: K, the first decoder layer that sees only the kept tokens (K >= 1). Tokens are ranked
            by the last token's attention row in layer K-1, mean over heads.
        keep_ratio: fraction of the N image tokens kept from layer K on; exactly
            round(keep_ratio * N) per sample.
    """

    name = "fastv"
    label = "FastV"
    display_order = 0
    layer_fields = ("layer",)
    layer: int = 2
    keep_ratio: float = 0.5

    def validate(self) -> None:
        self.check_int("layer", lo=1)
        self.check_fraction("keep_ratio")

    @property
    def ranks_by_last_token(self) -> bool:
        return True

    def plan(self, n_image: int, n_layers: int) -> TokenPlan:
        check_fits(self, "layer", self.layer, n_layers)
        step = Keep(
            self.layer, keep_count(self.keep_ratio, n_image), TopK(), AttentionScore(self.layer - 1, "last")
        )
        return TokenPlan(n_image, n_layers, (step,))

    @classmethod
    def keep_all(cls) -> FastVConfig:
        return cls(layer=1, keep_ratio=1.0)
