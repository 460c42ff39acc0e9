"""The tiny shapes model: a `SegModel` at LLaVA-1.5-336's token geometry, small enough for a CPU.

336-px images in 14-px patches give 576 image tokens, as in LLaVA-1.5-336, LISA and GLaMM, so the
papers' budgets (57, 144, 288 tokens) mean the same here. Every part is small: a 4-layer CLIP ViT,
an 8-layer Llama decoder (the papers' 32-layer schedules map onto it with
`segprune.methods.scale.scale_layers`), a 2-block SAM on 168-px inputs and a word-level tokenizer
over the shapes benchmark's vocabulary.

    from segprune.models import tiny
    model = tiny()                                  # the bundled CPU-trained model (weights/tiny-shapes)
    masks = model.segment([scene.image], [refer_query("the red star")])

`build_tiny(seed)` makes an untrained one (what `segprune train-tiny` starts from).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segprune.models.prompts import PHRASE_QUERY
from segprune.models.seg_inputs import SPECIAL_TOKENS, word_tokenizer

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "tiny-shapes"
# Words of the prompts and answers that the shapes data does not produce itself.
PROMPT_WORDS = (
    "USER", "ASSISTANT", ":", "What", "is", "in", "this", "image", "Please", "output", "segmentation",
    "mask", "Sure", "it", "Could", "you", "please", "give", "me", "a", "detailed", "description",
    "of", "the", "respond", "with", "interleaved", "masks", "for", "corresponding", "parts", "answer",
)  # fmt: skip
VOCAB_SCENES = 300  # scenes scanned for words: every query template occurs many times in them


def refer_query(phrase: str) -> str:
    """Return the referring-segmentation question for a phrase ("the red star"), as LISA words it."""
    return PHRASE_QUERY.format(text=phrase)


@dataclass(frozen=True)
class TinyDims:
    """Sizes of the tiny model. The defaults are the bundled model's (about 2.5 M parameters).

    Attributes:
        image_size, patch_size: the CLIP tower's input and patch (336 / 14 = 24 x 24 = 576 tokens).
        vision_width, vision_layers, vision_heads: the CLIP ViT. LLaVA feeds the projector the
            second-to-last layer's patch tokens; the last layer only serves CLS (VisionZip, PruMerge).
        llm_width, llm_layers, llm_heads, llm_mlp: the Llama decoder (MHA, no grouped keys).
        sam_image_size, sam_patch_size, sam_width, sam_layers: SAM's encoder (168 / 8 = 21 x 21
            embeddings, masks at 84 x 84) and its prompt/decoder width.
    """

    image_size: int = 336
    patch_size: int = 14
    vision_width: int = 64
    vision_layers: int = 4
    vision_heads: int = 4
    llm_width: int = 128
    llm_layers: int = 8
    llm_heads: int = 4
    llm_mlp: int = 352
    sam_image_size: int = 168
    sam_patch_size: int = 8
    sam_width: int = 32
    sam_layers: int = 2

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TinyDims:
        """Build dims from a dict of field overrides, naming any unknown field."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TinyDims field(s) {unknown}; valid: {sorted(known)}")
        return cls(**data)


@functools.cache
def tiny_vocabulary() -> tuple[str, ...]:
    """Return the tokenizer's words: the prompt words and every word of 300 shapes scenes, sorted."""
    import re

    from segprune.data import generate_split

    words = set(PROMPT_WORDS) | {str(n) for n in range(11)}
    for scene in generate_split(VOCAB_SCENES, seed=12345):
        texts = [q.text for q in scene.queries] + [scene.caption.text]
        texts += [t for qa in scene.qa for t in (qa.question, qa.answer)]
        for text in texts:
            # The tokenizer's pre-tokenizer splits the same way (`\w+|[^\w\s]+`).
            words.update(re.findall(r"\w+|[^\w\s]+", text))
    return tuple(sorted(words - set(SPECIAL_TOKENS)))


def tiny_config(dims: TinyDims, vocab_size: int, seg_token_id: int, image_token_id: int) -> Any:
    """Return the `SegModelConfig` of a tiny model with these sizes and token ids."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    from segprune.models.seg_model import SegModelConfig
    from segprune.models.tiny_seg import tiny_sam_config

    if dims.image_size % dims.patch_size:
        raise ValueError(f"image_size={dims.image_size} is not a multiple of patch_size={dims.patch_size}")
    vision = CLIPVisionConfig(
        hidden_size=dims.vision_width,
        intermediate_size=4 * dims.vision_width,
        num_hidden_layers=dims.vision_layers,
        num_attention_heads=dims.vision_heads,
        image_size=dims.image_size,
        patch_size=dims.patch_size,
        projection_dim=dims.vision_width,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=dims.llm_width,
        intermediate_size=dims.llm_mlp,
        num_hidden_layers=dims.llm_layers,
        num_attention_heads=dims.llm_heads,
        num_key_value_heads=dims.llm_heads,
        max_position_embeddings=2048,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    llava = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        image_seq_length=(dims.image_size // dims.patch_size) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    sam = tiny_sam_config(dims.sam_image_size, dims.sam_patch_size, dims.sam_width)
    sam.vision_config.num_hidden_layers = dims.sam_layers
    sam.vision_config.global_attn_indexes = [dims.sam_layers - 1]
    # Windows must tile the embedding grid (21 = 3 x 7 at the default sizes).
    grid = dims.sam_image_size // dims.sam_patch_size
    sam.vision_config.window_size = next(w for w in (7, 6, 5, 4, 3, 2, 1) if grid % w == 0)
    return SegModelConfig(llava_config=llava, sam_config=sam, seg_token_id=seg_token_id)


def build_tiny(seed: int = 0, dims: TinyDims | None = None, attn_implementation: str = "sdpa") -> Any:
    """Return an untrained tiny `SegModel` (fp32, default init from `seed`) with its word tokenizer."""
    from segprune.models.seg_model import SegModel

    tokenizer = word_tokenizer(tiny_vocabulary())
    vocab = len(tokenizer)
    config = tiny_config(
        dims or TinyDims(),
        vocab_size=-(-vocab // 8) * 8,  # a multiple of 8, as real vocabularies are padded
        seg_token_id=tokenizer.convert_tokens_to_ids("[SEG]"),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = SegModel(config)
    # transformers draws every weight with std 0.02, which suits widths in the thousands. In a 32-wide
    # SAM the mask decoder's hypernetwork then passes on ~1e-3 of its input, the mask logits stay flat
    # and training settles on the background prior everywhere (seen: constant logits after 650 steps).
    # PyTorch's fan-in defaults keep the mask path alive.
    for module in [*model.sam.modules(), *model.seg_projector.modules()]:
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            module.reset_parameters()
    model.tokenizer = tokenizer
    return model


def tiny(
    path: str | Path | None = None, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Any:
    """Load the bundled tiny shapes model (or a `train-tiny` output directory) for inference.

    The bundled weights are stored in fp16 to keep the package small; they are cast to `dtype`.
    """
    from segprune.models.seg_model import SegModel

    path = Path(path) if path is not None else WEIGHTS
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no tiny model at {path}; train one with `segprune train-tiny --out DIR` and pass DIR"
        )
    from transformers.utils import logging

    # A 4 MB model loads instantly; transformers' per-tensor progress bar would only clutter the demo.
    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        model = SegModel.from_pretrained(path, dtype=dtype)
    finally:
        if shown:
            logging.enable_progress_bar()
    return model.to(device).eval()
