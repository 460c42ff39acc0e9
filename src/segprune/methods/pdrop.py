"""PyramidDrop: shrink the image tokens stage by stage, ranked by the last instruction token."""

from __future__ import annotations

from dataclasses import dataclass

from segprune.methods.base import MethodConfig, check_fits, register
from segprune.methods.fastv import keep_count
from segprune.methods.plan import AttentionScore, Keep, TokenPlan
from segprune.methods.select import TopK

POSITIONS = ("renumber", "original")


@register
@dataclass(frozen=True)
class PDropConfig(MethodConfig):
    """PyramidDrop (Xing et al., 2024).

    Attributes:
        layers: the first layer of each new stage, strictly increasing, each >= 1. After stage s
            (that is, from `layers[s-1]` on) round(ratio**s * N) image tokens stay live.
        ratio: the fraction kept at each stage boundary, 0 < ratio <= 1.
        positions: "renumber" (default, as PyramidDrop's reference code): after each drop the
            remaining tokens get contiguous position ids and decoding continues from the shorter
            length; "original": every token keeps its original position id, as segprune's other
            methods do.

    Tokens are ranked by the attention row of the last instruction token (the last token of the
    prefill input) computed from the hidden states entering the new stage's first layer with that
    layer's own input norm and q/k projections, as PyramidDrop does.
    """

    name = "pdrop"
    layers: tuple[int, ...] = (8, 16, 24)
    ratio: float = 0.5
    positions: str = "renumber"

    def validate(self) -> None:
        self.check_layers("layers")
        self.check_fraction("ratio")
        self.check_choice("positions", POSITIONS)

    def plan(self, n_image: int, n_layers: int) -> TokenPlan:
        steps = []
        for s, layer in enumerate(self.layers, start=1):
            check_fits(self, f"layers[{s - 1}]", layer, n_layers)
            steps.append(
                Keep(layer, keep_count(self.ratio**s, n_image), TopK(), AttentionScore(layer, "last"))
            )
        return TokenPlan(n_image, n_layers, tuple(steps), renumber=self.positions == "renumber")

    @classmethod
    def keep_all(cls) -> PDropConfig:
        return cls(layers=(1,), ratio=1.0)
