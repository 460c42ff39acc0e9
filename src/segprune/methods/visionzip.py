"""VisionZip: before the LLM, keep the tokens CLS attends to most and merge the rest into a few."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lazy_loader

from segprune.methods.base import MethodConfig, register
from segprune.methods.counts import paper_count, round_half_up, total_count
from segprune.methods.merge import (
    assign_to_targets,
    live_cls_attention,
    live_keys,
    mask_to_indices,
    spread,
    weighted_average,
)
from segprune.methods.plan import MERGE_SPACES, Keep, SelectContext, TokenPlan

torch = lazy_loader.load("torch")  # configs are built where torch is not imported (the CLI's --help)

# LLaVA feeds the projector the output of the vision tower's second-to-last layer; VisionZip ranks
# by that layer's CLS attention and groups by that layer's keys.
VISION_LAYER = -2


def visionzip_groups(
    attention: torch.Tensor, keys: torch.Tensor, dominant: int, contextual: int
) -> torch.Tensor:
    """Return each token's group owner under VisionZip, or -1 for tokens that are dropped.

    The `dominant` tokens with the highest CLS attention own themselves. From the rest (in index
    order) `contextual` targets are spread evenly (`spread`); every other remaining token joins
    the target whose key is most similar (cosine). Without targets the remaining tokens are dropped.

    Args:
        attention: `(batch, n)` CLS attention of each token.
        keys: `(batch, n, d)` one key per token (VisionZip: the layer's keys, mean over heads).
        dominant, contextual: the two budgets, dominant + contextual <= n.
    Returns:
        `(batch, n)` long owner positions; the kept tokens are exactly those that own themselves.
    """
    batch, n = attention.shape
    order = torch.sort(attention, dim=1, descending=True, stable=True).indices
    top = torch.arange(n, device=attention.device).expand(batch, n) < dominant
    is_dominant = torch.zeros_like(top).scatter_(1, order, top)
    remaining = ~is_dominant
    if contextual == 0:
        own = torch.arange(n, device=attention.device).expand(batch, n)
        return torch.where(remaining, -1, own)
    return assign_to_targets(keys, spread(remaining, contextual), remaining)


def split_visionzip(count: int) -> dict[str, Any]:
    """Return VisionZip's own split of 64 tokens, 54 dominant : 10 contextual, for `count` tokens."""
    contextual = round_half_up(count * 10 / 64)
    return {"dominant": count - contextual, "contextual": contextual}


@dataclass(frozen=True)
class VisionZipTokens:
    """VisionZip's selector (`select`) and merger (`merge`) for one budget, on vision layer `layer`."""

    dominant: int
    contextual: int
    layer: int = VISION_LAYER

    def groups(self, live: torch.Tensor, context: SelectContext) -> torch.Tensor:
        """Return `visionzip_groups` over the live tokens, from the vision tower's features."""
        attention = live_cls_attention(context, self.layer, live)
        keys = live_keys(context, self.layer, live).mean(dim=1)
        return visionzip_groups(attention, keys, self.dominant, self.contextual)

    def select(
        self, scores: torch.Tensor | None, live: torch.Tensor, count: int, context: SelectContext
    ) -> torch.Tensor:
        """Keep the dominant tokens and the contextual targets (a `Selector`)."""
        owner = self.groups(live, context)
        positions = torch.arange(live.shape[1], device=live.device)
        return live.gather(1, mask_to_indices(owner == positions, count))

    def merge(
        self, hidden: torch.Tensor, live: torch.Tensor, kept: torch.Tensor, context: SelectContext
    ) -> torch.Tensor:
        """Give each kept token the mean hidden state of its group (a `Merger`); dominant ones keep theirs."""
        # Recomputing the groups repeats the selector's deterministic steps on the same features,
        # so they are the groups the selector kept.
        owner = self.groups(live, context)
        kept_positions = torch.searchsorted(live, kept)
        return weighted_average(hidden, owner[:, None, :] == kept_positions[:, :, None])


@register
@dataclass(frozen=True)
class VisionZipConfig(MethodConfig):
    """VisionZip (Yang et al., 2024), applied to the projector's outputs before the LLM.

    Attributes:
        dominant: image tokens kept unchanged: the top by CLS attention in the vision tower's
            second-to-last layer (mean over heads). None keeps every token (then contextual
            must be 0).
        contextual: merged tokens: targets spread evenly over the remaining tokens, each the mean
            embedding of its group (itself and the remaining tokens whose keys, mean over heads,
            are most similar to its own by cosine similarity).
        merge_space: "vision" (default, as VisionZip's code): the group means are taken over the
            vision tower's features, which the projector then maps to LLM inputs; "llm": over the
            projector's outputs (segprune's rule before; the projector is an MLP, so they differ).

    Exactly dominant + contextual image tokens enter the LLM per sample. A merged token keeps its
    target's position id: the target is one real patch of the grid, so the position stays an
    index in the original image, the RoPE distance from every kept token to the text is the one
    the model saw without pruning, and nothing is renumbered (decode steps continue from the
    unpruned length, as for every segprune method).
    """

    name = "visionzip"
    label = "VisionZip"
    display_order = 4
    prunes_before_decoder = True
    dominant: int | None = 54
    contextual: int = 10
    merge_space: str = "vision"

    def validate(self) -> None:
        if self.dominant is not None:
            self.check_int("dominant", lo=0)
        self.check_int("contextual", lo=0)
        self.check_choice("merge_space", MERGE_SPACES)
        if self.dominant is None and self.contextual:
            raise ValueError(
                f"VisionZipConfig.contextual={self.contextual!r} must be 0 when dominant=None "
                "(every token is dominant, none is left to merge); valid: contextual=0"
            )
        if self.dominant == 0 and self.contextual == 0:
            raise ValueError(
                "VisionZipConfig.dominant=0 with contextual=0 keeps no image token; "
                "valid: dominant + contextual >= 1"
            )

    def vision_layers(self) -> tuple[int, ...]:
        return (VISION_LAYER,)

    def plan(self, n_image: int, n_layers: int) -> TokenPlan:
        dominant = n_image if self.dominant is None else self.dominant
        count = dominant + self.contextual
        if count > n_image:
            raise ValueError(
                f"VisionZipConfig.dominant + contextual = {count} exceeds the {n_image} image tokens; "
                f"valid: dominant + contextual <= {n_image}"
            )
        tokens = VisionZipTokens(dominant, self.contextual)
        merge = tokens.merge if self.contextual else None
        step = Keep(0, count, tokens.select, merge=merge, merge_space=self.merge_space)
        return TokenPlan(n_image, n_layers, (step,))

    @classmethod
    def keep_all(cls) -> VisionZipConfig:
        return cls(dominant=None, contextual=0)

    @property
    def replayable(self) -> bool:
        return self.contextual == 0  # merged tokens carry group means, which a replay of indices lacks

    @classmethod
    def budget_fields(cls, reduction: float, n_layers: int, n_image: int) -> dict[str, Any]:
        return split_visionzip(total_count(reduction, n_image))

    @classmethod
    def paper_fields(cls, reduction: float, n_layers: int, n_image: int, **options: Any) -> dict[str, Any]:
        return split_visionzip(paper_count(reduction, n_image))
