"""What one pruned forward did: the per-forward state an adapter keeps, and the stats users read."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from segprune import flops
from segprune.methods.plan import TokenPlan


@dataclass
class PruneStats:
    """The live image tokens of the last prefill, and what they cost.

    Attributes:
        image_tokens: N, image tokens per sample before pruning.
        live_tokens: `(n_layers, batch)` live image tokens in each decoder layer.
        kept_indices: per layer, a `(batch, n_live)` LongTensor of the live image-token indices
            (0..N-1, sorted).
        text_tokens: `(batch,)` non-image, non-padding tokens of each sample.
        scores: per plan step that ranks by attention, the `(batch, n_live_before)` scores it used
            (None for score-free steps).
        dims: the decoder's sizes, for the FLOPs formulas.
        renumbered: whether live tokens got contiguous position ids after each drop (PyramidDrop's
            default) rather than keeping their original ones.
    """

    image_tokens: int
    live_tokens: torch.Tensor
    kept_indices: list[torch.Tensor]
    text_tokens: torch.Tensor
    scores: list[torch.Tensor | None]
    dims: flops.ModelDims
    renumbered: bool = False

    @property
    def n_avg(self) -> float:
        """Average live image tokens per layer (CSP Eq. 9), over layers and samples."""
        return float(self.live_tokens.float().mean())

    def _per_layer(self) -> list[float]:
        return self.live_tokens.float().mean(dim=1).tolist()

    @property
    def flops_csp(self) -> float:
        """Decoder FLOPs of this prefill by the CSP paper's formula (Eqs. 10-11), mean over samples."""
        return flops.decoder_flops(
            self._per_layer(), self.dims, float(self.text_tokens.float().mean()), "csp"
        )

    @property
    def flops_altp(self) -> float:
        """Decoder FLOPs of this prefill by the ALTP paper's formula (Eq. 5's f_l), mean over samples."""
        return flops.decoder_flops(
            self._per_layer(), self.dims, float(self.text_tokens.float().mean()), "altp"
        )

    def flops_fraction(self, formula: str = "csp") -> float:
        """FLOPs of this prefill as a fraction of the same input unpruned."""
        text = float(self.text_tokens.float().mean())
        dense = flops.decoder_flops([self.image_tokens] * self.dims.num_layers, self.dims, text, formula)
        return flops.decoder_flops(self._per_layer(), self.dims, text, formula) / dense


@dataclass(frozen=True)
class StaticLayout:
    """What an adapter's prefill would otherwise read on the host, fixed in advance (CUDA graphs).

    Attributes:
        n_image: N, image tokens per sample.
        generator: the generator random selectors draw from, seeded by the owner before each run.
    """

    n_image: int
    generator: torch.Generator | None = None


@dataclass
class ForwardState:
    """Per-prefill bookkeeping of an adapter; replaced at every new prefill, extended by decode steps.

    Attributes:
        plan: the token plan that ran (None when the input had no image tokens).
        cache: the KV cache this prefill filled (None without caching).
        seq_len: tokens seen so far, counted without pruning: the next token's sequence index.
        key_seq: per layer, `(batch, n_keys)` sequence indices of the tokens in that layer's cache.
        kept: per layer, `(batch, n_live)` live image-token indices.
        padded: whether the prefill's attention mask had any padding.
        continuation: what the model's family keeps to continue position ids while decoding.
    """

    plan: TokenPlan | None
    cache: object | None
    seq_len: int
    key_seq: list[torch.Tensor] = field(default_factory=list)
    kept: list[torch.Tensor] = field(default_factory=list)
    scores: list[torch.Tensor | None] = field(default_factory=list)
    text_tokens: torch.Tensor | None = None
    padded: bool = False
    continuation: object | None = None
