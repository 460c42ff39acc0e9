"""PruMerge / PruMerge+: before the LLM, keep CLS-attention outliers (plus spatially even tokens)
and merge each kept token with its nearest neighbours by key similarity.

Two ways to count: an exact budget (`count="fixed"`, round(keep_ratio * N) per sample, so sweeps
compare methods at equal cost) and the reference's own data-dependent count (`count="adaptive"`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lazy_loader

from segprune.methods.base import MethodConfig, register
from segprune.methods.counts import keep_count, paper_count, ratio_for_count, total_count
from segprune.methods.merge import (
    live_cls_attention,
    live_keys,
    mask_to_indices,
    nearest_neighbours,
    spread,
    weighted_average,
)
from segprune.methods.plan import MERGE_SPACES, Keep, SelectContext, TokenPlan

torch = lazy_loader.load("torch")  # configs are built where torch is not imported (the CLI's --help)

# PruMerge takes CLS attention and keys from the vision tower's last layer, whose input is the
# second-to-last layer's output: the features LLaVA projects.
VISION_LAYER = -1
IQR_FACTOR = 1.5
COUNTS = ("fixed", "adaptive")
# PruMerge+'s adaptive grid: every (floor(1 / r) // GRID_DIVISOR)-th token, r the outlier ratio.
GRID_DIVISOR = 3


def iqr_outliers(attention: torch.Tensor) -> torch.Tensor:
    """Mark the tokens whose CLS attention lies above Q3 + 1.5 * IQR of their own row (PruMerge).

    Args:
        attention: `(batch, n)` CLS attention of each token.
    Returns:
        `(batch, n)` bool. Quartiles interpolate linearly, as `numpy.percentile` does.
    """
    q1, q3 = row_quantiles(attention.float(), (0.25, 0.75))
    return attention > (q3 + IQR_FACTOR * (q3 - q1))[:, None]


def row_quantiles(x: torch.Tensor, qs: tuple[float, ...]) -> list[torch.Tensor]:
    """Return each `(batch,)` row quantile of `(batch, n)` `x`, interpolated linearly (`torch.quantile`'s
    default). The positions are computed in Python from the shape, so nothing is copied to the device
    (`torch.quantile` with a tensor of levels would be a host-to-device copy, which a CUDA graph
    cannot hold)."""
    ordered = torch.sort(x, dim=1).values
    n = x.shape[1]
    out = []
    for q in qs:
        position = q * (n - 1)
        low = int(position)
        high = min(low + 1, n - 1)
        out.append(torch.lerp(ordered[:, low], ordered[:, high], position - low))
    return out


def top_by_rank(attention: torch.Tensor, n_top: torch.Tensor) -> torch.Tensor:
    """Return a `(batch, n)` mask of each sample's `n_top` tokens with the highest CLS attention.

    Ranks come from a stable descending sort, so among equal attentions the lower index ranks first.

    Args:
        attention: `(batch, n)` CLS attention of each token.
        n_top: `(batch,)` how many tokens each sample keeps.
    """
    batch, n = attention.shape
    order = torch.sort(attention, dim=1, descending=True, stable=True).indices
    ranks = torch.arange(n, device=attention.device).expand(batch, n)
    top = torch.zeros(batch, n, dtype=torch.bool, device=attention.device)
    top.scatter_(1, order, ranks < n_top[:, None])
    return top


def prumerge_keep(attention: torch.Tensor, count: int, plus: bool) -> torch.Tensor:
    """Return PruMerge's `count` kept tokens per sample as a `(batch, n)` mask.

    With `plus`, the IQR outliers of the CLS attention are kept (the highest-ranked ones if there
    are more than `count`) and the rest of the budget is filled with tokens spread evenly over the
    other tokens (`spread`), PruMerge+'s spatially uniform sample. Without `plus` the outliers are
    filled up by CLS rank, which is the top `count` by CLS attention.
    """
    if plus:
        # Outliers are exactly the top-ranked tokens, so "top n_top by rank" is the outlier set.
        n_top = iqr_outliers(attention).sum(dim=1).clamp(max=count)
    else:
        n_top = torch.full((attention.shape[0],), count, device=attention.device)
    top = top_by_rank(attention, n_top)
    return top | spread(~top, count - n_top)


def adaptive_keep(attention: torch.Tensor, plus: bool) -> torch.Tensor:
    """Return the reference's adaptive keep set per sample as a `(batch, n)` mask (PruMerge's own count).

    The IQR outliers give the ratio r = n_outliers / n. PruMerge keeps the top int(n * r) tokens by
    CLS attention, which are the outliers themselves (counted exactly rather than through the float
    r). PruMerge+ adds a spatially uniform sample: indices 0, s, 2s, ... below n - 1 with
    s = int(int(1 / r) / 3) = (n // n_outliers) // 3, those already kept counted once. Two guards
    where the reference would fail: with no outlier (r = 0, a division by zero there) the single
    top-ranked token stands in for one, so r = 1 / n; a stride of 0 (more than a third of the tokens
    are outliers) becomes 1, every token, the limit the stride approaches as r grows.

    Args:
        attention: `(batch, n)` CLS attention of each token.
    """
    batch, n = attention.shape
    n_top = iqr_outliers(attention).sum(dim=1).clamp(min=1)
    keep = top_by_rank(attention, n_top)
    if not plus:
        return keep
    index = torch.arange(n, device=attention.device).expand(batch, n)
    # The reference's grid ends at 575 for 576 tokens: index n - 1 is never a grid point.
    stride = (n // n_top) // GRID_DIVISOR
    grid = (index % stride.clamp(min=1)[:, None] == 0) & (index < n - 1)
    return keep | grid


def prumerge_weights(
    attention: torch.Tensor, keys: torch.Tensor, kept: torch.Tensor, neighbours: int
) -> torch.Tensor:
    """Return PruMerge's merge weights: each kept token averages itself and its nearest tokens.

    Args:
        attention: `(batch, n)` CLS attention, the weight of each token.
        keys: `(batch, n, d)` keys (PruMerge: all heads concatenated).
        kept: `(batch, c)` positions of the kept tokens.
        neighbours: k; each kept token takes its k most similar other tokens (cosine of keys; kept
            or not), at most n - 1.
    Returns:
        `(batch, c, n)` weights: the CLS attention of the kept token and of its neighbours, 0 elsewhere.
    """
    members = nearest_neighbours(keys, kept, min(neighbours, keys.shape[1] - 1))
    members.scatter_(2, kept[..., None], True)
    return members * attention[:, None, :].float()


@dataclass(frozen=True)
class PruMergeTokens:
    """PruMerge's selector (`select`) and merger (`merge`), on vision layer `layer`.

    `adaptive`: keep `adaptive_keep`'s data-dependent set (at most `count`), one sample at a time."""

    plus: bool
    neighbours: int
    layer: int = VISION_LAYER
    adaptive: bool = False

    def select(
        self, scores: torch.Tensor | None, live: torch.Tensor, count: int, context: SelectContext
    ) -> torch.Tensor:
        """Keep `prumerge_keep`'s tokens, or `adaptive_keep`'s (a `Selector`)."""
        attention = live_cls_attention(context, self.layer, live)
        if not self.adaptive:
            return live.gather(1, mask_to_indices(prumerge_keep(attention, count, self.plus), count))
        if live.shape[0] != 1:
            raise ValueError(
                f"adaptive PruMerge keeps a different number of tokens per sample; select one sample at a "
                f"time (batch 1), got a batch of {live.shape[0]}"
            )
        keep = adaptive_keep(attention, self.plus)[0]
        return live[:, keep][:, :count]

    def merge(
        self, hidden: torch.Tensor, live: torch.Tensor, kept: torch.Tensor, context: SelectContext
    ) -> torch.Tensor:
        """Replace each kept token by its CLS-attention-weighted neighbourhood average (a `Merger`)."""
        attention = live_cls_attention(context, self.layer, live)
        keys = live_keys(context, self.layer, live)
        keys = keys.transpose(1, 2).flatten(2)  # (batch, n, heads * head_dim): the k_proj output
        weights = prumerge_weights(attention, keys, torch.searchsorted(live, kept), self.neighbours)
        return weighted_average(hidden, weights)


@register
@dataclass(frozen=True)
class PruMergeConfig(MethodConfig):
    """PruMerge and PruMerge+ (Shang et al., 2024), at an exact budget, before the LLM.

    Attributes:
        plus: PruMerge+: keep the IQR outliers of the CLS attention (last vision layer, mean over
            heads; above Q3 + 1.5 IQR) and fill the budget with tokens spread evenly over the
            rest. Without it the IQR rule drops out: outliers are the top-ranked tokens, so filling
            them up by CLS rank to the budget is a plain top-k by CLS attention.
        keep_ratio: exactly round(keep_ratio * N) image tokens per sample enter the LLM (with
            `count="fixed"`). The papers' adaptive counts average about 5.5% of N (PruMerge) and 25%
            (PruMerge+); a fixed count compares methods at equal cost and keeps batches rectangular.
        count: "fixed" (default): the exact budget of `keep_ratio`. "adaptive": the reference's own
            count per sample (`adaptive_keep`; `keep_ratio` is not read): the IQR outliers' ratio r
            sets how many tokens stay (PruMerge: the outliers; PruMerge+: plus every
            ((N // outliers) // 3)-th token). Samples then keep different numbers, which the runner
            lays out in masked slots; `segprune.stats(model).live_tokens` holds each sample's.
        neighbours: k. Each kept token becomes the CLS-attention-weighted average of itself and
            its k nearest tokens by cosine similarity of the last vision layer's keys (all heads
            concatenated), at most N - 1; 0 merges nothing.
        merge_space: "vision" (default, as PruMerge's code): average the vision tower's features and
            project the result; "llm": average the projector's outputs.

    Merged tokens keep their own position ids (see VisionZipConfig for why).
    """

    name = "prumerge"
    label = "PruMerge+"
    display_order = 5
    prunes_before_decoder = True
    plus: bool = True
    keep_ratio: float = 0.25
    neighbours: int = 32
    merge_space: str = "vision"
    count: str = "fixed"

    def validate(self) -> None:
        if not isinstance(self.plus, bool):
            raise ValueError(f"PruMergeConfig.plus={self.plus!r} must be True or False")
        self.check_fraction("keep_ratio")
        self.check_int("neighbours", lo=0)
        self.check_choice("merge_space", MERGE_SPACES)
        self.check_choice("count", COUNTS)

    def vision_layers(self) -> tuple[int, ...]:
        return (VISION_LAYER,)

    def plan(self, n_image: int, n_layers: int) -> TokenPlan:
        adaptive = self.count == "adaptive"
        tokens = PruMergeTokens(self.plus, self.neighbours, adaptive=adaptive)
        merge = tokens.merge if self.neighbours else None
        count = n_image if adaptive else keep_count(self.keep_ratio, n_image)
        step = Keep(0, count, tokens.select, merge=merge, merge_space=self.merge_space, adaptive=adaptive)
        return TokenPlan(n_image, n_layers, (step,))

    @classmethod
    def keep_all(cls) -> PruMergeConfig:
        return cls(keep_ratio=1.0, neighbours=0)

    @property
    def replayable(self) -> bool:
        return self.neighbours == 0  # merged tokens carry neighbourhood averages, which a replay lacks

    @property
    def sync_free(self) -> bool:
        return self.count == "fixed"  # adaptive counts are read on the host to lay out the batch

    @classmethod
    def budget_fields(cls, reduction: float, n_layers: int, n_image: int) -> dict[str, Any]:
        """PruMerge+ keeping exactly the target's tokens."""
        return {"plus": True, "keep_ratio": ratio_for_count(total_count(reduction, n_image), n_image)}

    @classmethod
    def paper_fields(cls, reduction: float, n_layers: int, n_image: int, **options: Any) -> dict[str, Any]:
        return {"plus": True, "keep_ratio": ratio_for_count(paper_count(reduction, n_image), n_image)}
