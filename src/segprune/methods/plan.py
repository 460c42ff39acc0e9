"""Token plans: which image tokens are live at each decoder layer, as data.

A plan is a list of steps in layer order. Before decoder layer `step.layer` runs:

* `Keep` shrinks the live image tokens to exactly `count` per sample, chosen by `select` from the
  currently live ones, optionally ranked by an attention row (`score`) taken at `score.layer`
  (an `adaptive` step lets the selector decide how many, at most `count`);
* `Reactivate` makes every image token live again; tokens that were not live re-enter with their
  input embeddings (the projector's output) and their original position ids.

Layer 0 means "before the language model": the first layer sees only the kept tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import lazy_loader

torch = lazy_loader.load("torch")  # configs are built where torch is not imported (the CLI's --help)

SCORE_TOKENS = ("last", "seg")


@dataclass(frozen=True)
class AttentionScore:
    """Rank image tokens by one attention row of decoder layer `layer`, mean over heads.

    The row is recomputed from the hidden states entering `layer` with that layer's own input norm,
    q/k projections and RoPE (no eager attention). `token` picks the query: "last" is the last
    non-padding token, "seg" the `[SEG]` token.
    """

    layer: int
    token: str = "last"

    def __post_init__(self) -> None:
        if self.token not in SCORE_TOKENS:
            raise ValueError(
                f"AttentionScore.token={self.token!r} is not valid; choose one of {list(SCORE_TOKENS)}"
            )


class Selector(Protocol):
    """Choose `count` image tokens per sample from the live ones.

    Args:
        scores: `(batch, n_live)` importance of each live token, or None for score-free selectors.
        live: `(batch, n_live)` sorted image-token indices (0..N-1) that are live now.
        count: how many to keep.
        context: per-forward inputs a selector may need (pixel values, grid size, generator).
    Returns:
        `(batch, count)` sorted image-token indices, a subset of `live`; for an `adaptive` step,
        which the runner calls one sample at a time, `(1, c)` with 1 <= c <= count.
    """

    def __call__(
        self, scores: torch.Tensor | None, live: torch.Tensor, count: int, context: SelectContext
    ) -> torch.Tensor: ...


class VisionFeatures(Protocol):
    """Read-only access to the vision tower's layers during one prefill (CLS-based methods).

    Layer indices count the vision encoder's layers; negative ones count from the end. Only the
    layers a config lists in `vision_layers()` are available.
    """

    def cls_attention(self, layer: int) -> torch.Tensor:
        """`(batch, N)` attention of the CLS token to each patch token in `layer`, mean over heads."""
        ...

    def keys(self, layer: int) -> torch.Tensor:
        """`(batch, heads, N, head_dim)` keys of the patch tokens in `layer`."""
        ...


@dataclass
class SelectContext:
    """What a selector may read during one prefill.

    Attributes:
        n_image: N, image tokens per sample.
        grid: `(rows, cols)` of the patch grid (rows * cols == N for square LLaVA images); None when
            the image tokens form no one grid (several images in a prompt).
        pixel_values: the `(batch, 3, H, W)` pixels the vision tower saw (processor-normalised).

    In a batch whose samples differ (image tokens, images, or an adaptive step's counts) the runner
    calls selectors one sample at a time, each with a context of batch 1 that describes that
    sample's own image (its grid and pixels) and a generator seeded afresh, as if it ran alone.
        generator: seeded from the config's `seed` at every prefill, for random selectors.
        vision: the vision tower's CLS attention and keys, when the config asked for layers.
        instance_masks: `(batch, N)` long instance id per image token (-1: none), from the detector
            the caller passed as `prune_(..., instance_masks=)`; None otherwise.
    """

    n_image: int
    grid: tuple[int, int] | None = None
    pixel_values: torch.Tensor | None = None
    generator: torch.Generator | None = None
    vision: VisionFeatures | None = None
    instance_masks: torch.Tensor | None = None


class Merger(Protocol):
    """Compute the hidden states of the kept tokens from all live ones (token merging).

    Args:
        hidden: `(batch, n_live, D)` hidden states of the live image tokens.
        live: `(batch, n_live)` their image-token indices.
        kept: `(batch, count)` the indices the selector kept (a subset of `live`).
        context: as for selectors.
    Returns:
        `(batch, count, D)` hidden states that replace the kept tokens' own. Each merged token
        keeps its kept token's position id.
    """

    def __call__(
        self, hidden: torch.Tensor, live: torch.Tensor, kept: torch.Tensor, context: SelectContext
    ) -> torch.Tensor: ...


MERGE_SPACES = ("vision", "llm")


@dataclass(frozen=True)
class Keep:
    """Before `layer`, keep exactly `count` image tokens per sample; optionally merge the rest in.

    `merge_space`: what `merge` averages. "llm": the live tokens' hidden states in the language
    model (at layer 0 the projector's outputs). "vision": the vision tower's features the projector
    receives; the adapter projects the merged features, so a merged token is the projection of a
    mean, not the mean of projections (the projector is an MLP). Only steps at layer 0 can.

    `adaptive`: `count` is an upper bound and the selector decides how many tokens each sample
    keeps (PruMerge's outlier count); the runner then calls it one sample at a time and lays the
    batch out in masked slots (docs/design.md), and `TokenPlan.live_counts` reports the bound.
    """

    layer: int
    count: int
    select: Selector
    score: AttentionScore | None = None
    merge: Merger | None = None
    merge_space: str = "llm"
    adaptive: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.adaptive, bool):
            raise ValueError(f"Keep.adaptive={self.adaptive!r} must be True or False")
        if self.merge_space not in MERGE_SPACES:
            raise ValueError(f"merge_space={self.merge_space!r}; valid: {list(MERGE_SPACES)}")
        if self.merge_space == "vision" and self.layer != 0:
            raise ValueError(
                f"a step at layer {self.layer} cannot merge vision features; valid: layer 0 (before the LLM)"
            )


@dataclass(frozen=True)
class Reactivate:
    """Before `layer`, make all image tokens live again (CSP's scattering stage)."""

    layer: int


Step = Keep | Reactivate


@dataclass(frozen=True)
class TokenPlan:
    """The validated schedule of live image tokens for one model and image-token count.

    `renumber`: after each step, live tokens get contiguous position ids (a token's id drops by the
    number of image tokens dropped before it, and decode steps continue from the shorter length),
    as PyramidDrop's reference code does; otherwise every token keeps its original position id.
    """

    n_image: int
    n_layers: int
    steps: tuple[Step, ...]
    renumber: bool = False

    def __post_init__(self) -> None:
        if self.n_image < 1:
            raise ValueError(f"n_image={self.n_image} must be >= 1")
        if self.n_layers < 1:
            raise ValueError(f"n_layers={self.n_layers} must be >= 1")
        live = self.n_image
        prev_layer = -1
        for i, step in enumerate(self.steps):
            if not 0 <= step.layer < self.n_layers:
                raise ValueError(
                    f"step {i} acts before layer {step.layer}; valid: 0 <= layer <= {self.n_layers - 1}"
                )
            if step.layer <= prev_layer:
                raise ValueError(f"step {i} at layer {step.layer} must come after layer {prev_layer}")
            if isinstance(step, Keep):
                if not 1 <= step.count <= live:
                    raise ValueError(
                        f"step {i} keeps {step.count} tokens at layer {step.layer}; "
                        f"valid: 1 <= count <= {live}"
                    )
                if step.score is not None and not max(prev_layer, 0) <= step.score.layer <= step.layer:
                    raise ValueError(
                        f"step {i} scores at layer {step.score.layer}; valid: "
                        f"{max(prev_layer, 0)} <= score layer <= {step.layer} "
                        "(the live set must not change between)"
                    )
                live = step.count
            else:
                live = self.n_image
            prev_layer = step.layer

    def live_counts(self) -> list[int]:
        """Return the number of live image tokens in each decoder layer (an adaptive step's bound)."""
        counts = []
        live = self.n_image
        steps = {s.layer: s for s in self.steps}
        for layer in range(self.n_layers):
            step = steps.get(layer)
            if isinstance(step, Keep):
                live = step.count
            elif isinstance(step, Reactivate):
                live = self.n_image
            counts.append(live)
        return counts

    def events(self) -> list[tuple[int, str, int]]:
        """Return `(layer, kind, step index)` in execution order; kind is "score" or "apply".

        At one layer a step's score is taken after every earlier step has been applied and before
        the step itself is applied, so the score sees exactly the live set the step chooses from.
        """
        out = []
        for i, step in enumerate(self.steps):
            if isinstance(step, Keep) and step.score is not None:
                out.append((step.score.layer, i, 0, "score"))
            out.append((step.layer, i, 1, "apply"))
        out.sort()
        return [(layer, kind, i) for layer, i, _, kind in out]

    @property
    def adaptive(self) -> bool:
        """Whether a step's selector decides its own count per sample."""
        return any(isinstance(s, Keep) and s.adaptive for s in self.steps)

    @property
    def needs_scores(self) -> bool:
        """Whether any step ranks tokens by attention."""
        return any(isinstance(s, Keep) and s.score is not None for s in self.steps)
