"""What one pruned forward did: the per-forward state an adapter keeps, and the stats users read."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from segprune import flops
from segprune.methods.plan import TokenPlan

# The sequence index of a masked slot: it sorts after every token and no query ever sees it, since
# causality lets a query see only keys at indices up to its own.
SLOT = 1 << 62


@dataclass
class PruneStats:
    """The live image tokens of the last prefill, and what they cost.

    Attributes:
        image_tokens: N, image tokens per sample before pruning (in a batch whose samples differ,
            the largest; `image_counts` holds each sample's).
        live_tokens: `(n_layers, batch)` live image tokens of each sample in each decoder layer.
        kept_indices: per layer, a `(batch, n_live)` LongTensor of the live image-token indices
            (0..N_b-1, sorted); where samples keep different numbers, rows are padded with -1 at
            the end (`kept_of` gives one sample's without padding).
        text_tokens: `(batch,)` non-image, non-padding tokens of each sample.
        scores: per plan step that ranks by attention, the `(batch, n_live_before)` scores it used
            (None for score-free steps; padding slots hold 0).
        dims: the decoder's sizes, for the FLOPs formulas.
        renumbered: whether live tokens got contiguous position ids after each drop (PyramidDrop's
            default) rather than keeping their original ones.
        image_counts: `(batch,)` N_b, each sample's image tokens (None: all `image_tokens`).
    """

    image_tokens: int
    live_tokens: torch.Tensor
    kept_indices: list[torch.Tensor]
    text_tokens: torch.Tensor
    scores: list[torch.Tensor | None]
    dims: flops.ModelDims
    renumbered: bool = False
    image_counts: torch.Tensor | None = None

    def kept_of(self, sample: int) -> list[torch.Tensor]:
        """Return, per layer, the sorted live image-token indices of one sample (no padding)."""
        return [
            k[sample, : int(n)] for k, n in zip(self.kept_indices, self.live_tokens[:, sample], strict=True)
        ]

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
        counts = self.image_counts
        n_image = self.image_tokens if counts is None else float(counts.float().mean())
        dense = flops.decoder_flops([n_image] * self.dims.num_layers, self.dims, text, formula)
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
        plan: the token plan that ran (None when the input had no image tokens); in a batch whose
            samples differ, the plan of the sample with the most image tokens.
        cache: the KV cache this prefill filled (None without caching).
        seq_len: tokens seen so far, counted without pruning: the next token's sequence index.
        key_seq: per layer, `(batch, n_keys)` sequence indices of the tokens in that layer's cache;
            a masked slot (a sample with fewer live tokens than the widest) holds `SLOT`.
        kept: per layer, `(batch, n_live)` live image-token indices (-1 in masked slots).
        padded: whether attention needs a padding mask (padding, or masked slots).
        continuation: what the model's family keeps to continue position ids while decoding.
        image_counts: per sample N_b when the batch ran in masked slots (else None).
        live: per layer, each sample's live image tokens, when the batch ran in masked slots.
        shifts: per layer, how far a renumbering plan moves decode tokens' positions down (the image
            tokens that layer had dropped): an int, or in masked slots a tuple of one int per
            sample; all 0 when positions are the original ones. Set when the prefill ends.
        shift_by: each distinct shift as decode subtracts it from position ids: the int, or a
            `(batch, 1)` device tensor of a per-sample tuple, made once when the prefill ends.
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
    image_counts: list[int] | None = None
    live: list[list[int]] = field(default_factory=list)
    shifts: list[int | tuple[int, ...]] = field(default_factory=list)
    shift_by: dict[int | tuple[int, ...], int | torch.Tensor] = field(default_factory=dict)


@dataclass
class ImagePart:
    """What one selector call sees of a sample: some of its image tokens and their context.

    Attributes:
        offset: the sample's image-token index of the part's first token.
        context: the part's `SelectContext` (batch 1): its own grid and pixels when it is one image;
            its `n_image` counts the part's image tokens (a contiguous run of the sample's).
        image: the index of its image in the batch when it is one image (for vision features).
    """

    offset: int
    context: object
    image: int | None = None


@dataclass
class SampleLayout:
    """One sample of a batch that runs in masked slots.

    Attributes:
        n_image: N_b, the sample's image tokens.
        plan: its token plan, for N_b (None without image tokens).
        parts: its selector calls: the whole image set in one part, or one part per image when a
            method reads the image and the prompt holds several (the budget split over them).
    """

    n_image: int
    plan: TokenPlan | None
    parts: list[ImagePart] = field(default_factory=list)
