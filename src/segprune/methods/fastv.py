"""FastV: after layer K-1, keep the image tokens the last token attends to most."""

from __future__ import annotations

from dataclasses import dataclass

from segprune.methods.base import MethodConfig, check_fits, register
from segprune.methods.plan import AttentionScore, Keep, TokenPlan
from segprune.methods.select import TopK


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up (Python's round() would send 28.5 to 28)."""
    return int(x + 0.5)


def keep_count(ratio: float, n: int) -> int:
    """Return round(ratio * n), at least 1: the exact per-sample budget for a keep ratio."""
    return max(1, round_half_up(ratio * n))


@register
@dataclass(frozen=True)
class FastVConfig(MethodConfig):
    """FastV (Chen et al., 2024).

    Attributes:
        layer: K, the first decoder layer that sees only the kept tokens (K >= 1). Tokens are ranked
            by the last token's attention row in layer K-1, mean over heads.
        keep_ratio: fraction of the N image tokens kept from layer K on; exactly
            round(keep_ratio * N) per sample.
    """

    name = "fastv"
    layer: int = 2
    keep_ratio: float = 0.5

    def validate(self) -> None:
        self.check_int("layer", lo=1)
        self.check_fraction("keep_ratio")

    def plan(self, n_image: int, n_layers: int) -> TokenPlan:
        check_fits(self, "layer", self.layer, n_layers)
        step = Keep(
            self.layer, keep_count(self.keep_ratio, n_image), TopK(), AttentionScore(self.layer - 1, "last")
        )
        return TokenPlan(n_image, n_layers, (step,))

    @classmethod
    def keep_all(cls) -> FastVConfig:
        return cls(layer=1, keep_ratio=1.0)
