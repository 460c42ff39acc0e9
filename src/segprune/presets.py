"""The models the papers measure on, and Qwen2.5-VL: one table read by FLOPs accounting and the benchmarks.

LLaVA-1.5 puts a CLIP ViT-L/14 vision tower (224 or 336 px images) before a Vicuna decoder (7B or
13B). Qwen2.5-VL-7B puts a ViT with 14-px patches, merged 2x2 into one token per 28x28 px, before
a Qwen2 decoder with grouped-query attention. Only the standard library is imported:
`segprune.flops` and the command line read this table without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Transformer:
    """The sizes of a transformer stack.

    Attributes:
        layers: number of layers.
        hidden: hidden state size.
        intermediate: FFN intermediate size.
        heads: attention heads.
        kv_heads: key/value heads (grouped-query attention); None: as many as `heads` (LLaVA-1.5).
    """

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int | None = None

    @property
    def kv_size(self) -> int:
        """The width of the k and v projections: key/value heads times the head size."""
        return self.hidden // self.heads * (self.heads if self.kv_heads is None else self.kv_heads)


CLIP_VIT_L14 = Transformer(layers=24, hidden=1024, intermediate=4096, heads=16)
CLIP_PATCH = 14
VICUNA_7B = Transformer(layers=32, hidden=4096, intermediate=11008, heads=32)
VICUNA_13B = Transformer(layers=40, hidden=5120, intermediate=13824, heads=40)
# Qwen2.5-VL-7B-Instruct's text config: 28 layers, hidden 3584, 28 heads of 128, 4 key/value heads,
# intermediate 18944, vocabulary 152064 (the LM head, which no formula here counts).
QWEN25_7B = Transformer(layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4)
QWEN_VOCAB = 152064
QWEN_TOKEN_SIDE = 28  # 14-px patches merged 2x2: one image token per 28x28 px


@dataclass(frozen=True)
class LlavaPreset:
    """One LLaVA-1.5 model: its decoder and the image size of its CLIP ViT-L/14 tower.

    Attributes:
        decoder: the Vicuna decoder's sizes.
        image_size: the tower's input side in pixels (224 or 336).
    """

    decoder: Transformer
    image_size: int

    @property
    def image_tokens(self) -> int:
        """Image tokens per sample: one per 14-px patch."""
        return (self.image_size // CLIP_PATCH) ** 2


@dataclass(frozen=True)
class QwenVLPreset:
    """One Qwen2-VL-family model at one square image size (its processor resizes to multiples of 28 px).

    Attributes:
        decoder: the Qwen2 decoder's sizes.
        image_size: the image side in pixels, a multiple of 28.
    """

    decoder: Transformer
    image_size: int

    @property
    def image_tokens(self) -> int:
        """Image tokens per sample after the 2x2 merger: one per 28x28 px."""
        return (self.image_size // QWEN_TOKEN_SIDE) ** 2


TINY = "tiny"  # not a paper's model: `segprune bench`'s small random LLaVA, for CPU runs and tests

PRESETS: dict[str, LlavaPreset] = {
    "llava-1.5-7b-224": LlavaPreset(VICUNA_7B, 224),
    "llava-1.5-7b-336": LlavaPreset(VICUNA_7B, 336),
    "llava-1.5-13b-224": LlavaPreset(VICUNA_13B, 224),
}
"""The LLaVA-1.5 models, which `segprune bench` builds with random weights."""

QWEN_PRESETS: dict[str, QwenVLPreset] = {
    # 448x448 px: 16x16 = 256 tokens; 672x672 px: 24x24 = 576 tokens, LLaVA-1.5-336's count.
    "qwen2.5-vl-7b-448": QwenVLPreset(QWEN25_7B, 448),
    "qwen2.5-vl-7b-672": QwenVLPreset(QWEN25_7B, 672),
}
"""Qwen2.5-VL-7B at two image sizes: `segprune flops` and `segprune bench` presets."""

TINY_QWEN = "tiny-qwen"  # `segprune bench`'s small random Qwen2.5-VL, for CPU runs and tests
BENCH_PRESETS = [*sorted(PRESETS), *sorted(QWEN_PRESETS), TINY, TINY_QWEN]
"""Every preset `segprune bench` builds."""


def is_qwen(preset: str) -> bool:
    """Whether `segprune bench` builds `preset` as a Qwen2.5-VL (no vision CLS row, no graphed prefill)."""
    return preset in QWEN_PRESETS or preset == TINY_QWEN
