"""PyramidDrop: shrink the image tokens stage by stage, ranked by the last instruction token."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from segprune import flops
from segprune.methods.base import MethodConfig, check_fits, register
from segprune.methods.counts import bisect_ratio, keep_count, paper_count, round_half_up, shortest
from segprune.methods.plan import AttentionScore, Keep, TokenPlan
from segprune.methods.scale import PAPER_LAYERS, PAPER_MODEL, scale_layer
from segprune.methods.select import TopK

POSITIONS = ("renumber", "original")
PAPER_STAGES = (8, 16, 24)  # PyramidDrop's stages on LLaVA-1.5-7B
PDROP_RULES = ("flops", "last_stage")  # paper_fields' `pdrop_rule`
FLOPS_TOLERANCE = 0.01  # the "flops" rule: accepted |FLOPs fraction - FastV's|


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
    label = "PDrop"
    display_order = 1
    layers: tuple[int, ...] = PAPER_STAGES
    ratio: float = 0.5
    positions: str = "renumber"

    def validate(self) -> None:
        self.check_layers("layers")
        self.check_fraction("ratio")
        self.check_choice("positions", POSITIONS)

    @property
    def ranks_by_last_token(self) -> bool:
        return True

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

    def scale_layers(self, from_layers: int, to_layers: int) -> PDropConfig:
        layers = tuple(scale_layer(layer, from_layers, to_layers) for layer in self.layers)
        if len(set(layers)) != len(layers) or layers[-1] >= to_layers:
            raise ValueError(
                f"PDropConfig.layers={self.layers} map to {layers} on {to_layers} layers: stages collide "
                "or do not fit; choose the stages by hand"
            )
        return dataclasses.replace(self, layers=layers)

    @classmethod
    def variants(cls) -> dict[str, dict[str, Any]]:
        return {"pdrop": {}, "pdrop-last_stage": {"pdrop_rule": "last_stage"}}

    @classmethod
    def budget_fields(cls, reduction: float, n_layers: int, n_image: int) -> dict[str, Any]:
        """Stages at 1/4, 1/2 and 3/4 of the depth; the per-stage ratio solved for N_avg."""
        layers = tuple(sorted({max(1, round_half_up(n_layers * f)) for f in (0.25, 0.5, 0.75)} - {n_layers}))
        if not layers:
            raise ValueError(f"pdrop needs at least 2 decoder layers, got {n_layers}")

        def live_at(ratio: float) -> list[int]:
            return cls(layers=layers, ratio=ratio).plan(n_image, n_layers).live_counts()

        def reduction_at(ratio: float) -> float:
            return 1 - flops.n_avg(live_at(ratio)) / n_image

        # The reduction falls as the ratio grows (in integer steps).
        ratio = bisect_ratio(reduction_at, reduction, rising=False)
        live = live_at(ratio)
        return {"layers": layers, "ratio": shortest(ratio, lambda r: r <= 1 and live_at(r) == live)}

    @classmethod
    def paper_fields(
        cls, reduction: float, n_layers: int, n_image: int, *, pdrop_rule: str = "flops", **options: Any
    ) -> dict[str, Any]:
        """Stages 8/16/24 with one ratio: FastV's FLOPs at `reduction` ("flops", ALTP Table 1's
        comparison) or floor((1 - r) * N) tokens at the last stage ("last_stage")."""
        if pdrop_rule not in PDROP_RULES:
            raise ValueError(f"pdrop_rule={pdrop_rule!r}; valid: {list(PDROP_RULES)}")
        count = paper_count(reduction, n_image)
        layers = PAPER_STAGES

        def live(ratio: float) -> list[int]:
            return cls(layers=layers, ratio=ratio).plan(n_image, PAPER_LAYERS).live_counts()

        if pdrop_rule == "last_stage":
            ratio = shortest((count / n_image) ** (1 / 3), lambda r: live(r)[-1] == count)
            return {"layers": layers, "ratio": ratio}
        dims = dataclasses.replace(flops.preset(PAPER_MODEL), image_tokens=n_image)
        # FastV at K = 2 keeping `count`: the cost PyramidDrop is matched to.
        target = flops.altp_fraction([n_image] * 2 + [count] * (PAPER_LAYERS - 2), dims)

        def cost(ratio: float) -> float:
            return flops.altp_fraction(live(ratio), dims)

        lowest = cost(1e-9)
        if target < lowest - FLOPS_TOLERANCE:
            raise ValueError(
                f"pdrop with stages {list(layers)} cannot reach FastV's {target:.1%} of dense FLOPs "
                f"(its lowest is {lowest:.1%}); pdrop_rule='last_stage' keeps {count} tokens at its "
                "last stage"
            )
        ratio = bisect_ratio(cost, target, rising=True)  # the cost grows with the ratio
        counts = live(ratio)
        return {"layers": layers, "ratio": shortest(ratio, lambda r: r <= 1 and live(r) == counts)}
