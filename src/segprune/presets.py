"""The LLaVA-1.5 models the papers measure on: one table read by FLOPs accounting and the benchmarks.

LLaVA-1.5 puts a CLIP ViT-L/14 vision tower (224 or 336 px images) before a Vicuna decoder (7B or
13B). Only the standard library is imported: `segprune.flops` and the command line read this table
without loading torch.
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
        heads: attention heads (as many key/value heads: no grouped-query attention in LLaVA-1.5).
    """

    layers: int
    hidden: int
    intermediate: int
    heads: int


CLIP_VIT_L14 = Transformer(layers=24, hidden=1024, intermediate=4096, heads=16)
CLIP_PATCH = 14
VICUNA_7B = Transformer(layers=32, hidden=4096, intermediate=11008, heads=32)
VICUNA_13B = Transformer(layers=40, hidden=5120, intermediate=13824, heads=40)


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


TINY = "tiny"  # not a paper's model: `segprune bench`'s small random LLaVA, for CPU runs and tests

PRESETS: dict[str, LlavaPreset] = {
    "llava-1.5-7b-224": LlavaPreset(VICUNA_7B, 224),
    "llava-1.5-7b-336": LlavaPreset(VICUNA_7B, 336),
    "llava-1.5-13b-224": LlavaPreset(VICUNA_13B, 224),
}
