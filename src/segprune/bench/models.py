"""The benchmark's models and inputs: preset LLaVA-1.5 architectures with random weights, and prompts."""

from __future__ import annotations

from typing import Any

import torch

from segprune.flops import TEXT_TOKENS
from segprune.presets import CLIP_PATCH, CLIP_VIT_L14, PRESETS, TINY

# Text tokens around the image: the count that reproduces CSP Table 6's TFLOPs (docs/flops.md),
# split like a LLaVA-1.5 prompt (system prompt before, question after).
TEXT_BEFORE = 35
TEXT_AFTER = TEXT_TOKENS["csp"] - TEXT_BEFORE


def llava_config(preset: str) -> Any:
    """Return the `LlavaConfig` of a preset (`llava-1.5-7b-224`, `llava-1.5-7b-336`, `llava-1.5-13b-224`)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {[*sorted(PRESETS), TINY]}")
    model = PRESETS[preset]
    tower, decoder = CLIP_VIT_L14, model.decoder
    vision = CLIPVisionConfig(
        hidden_size=tower.hidden,
        intermediate_size=tower.intermediate,
        num_hidden_layers=tower.layers,
        num_attention_heads=tower.heads,
        image_size=model.image_size,
        patch_size=CLIP_PATCH,
        projection_dim=768,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        vocab_size=32064,
        hidden_size=decoder.hidden,
        intermediate_size=decoder.intermediate,
        num_hidden_layers=decoder.layers,
        num_attention_heads=decoder.heads,
        num_key_value_heads=decoder.heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        pad_token_id=0,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=32000,
        image_seq_length=model.image_tokens,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )


def build_model(preset: str, device: str, dtype: torch.dtype, attn: str = "sdpa") -> torch.nn.Module:
    """Build a preset LLaVA with random weights directly on `device` in `dtype`."""
    from transformers import LlavaForConditionalGeneration

    if preset == TINY:
        from segprune.models import tiny_llava

        model = tiny_llava(num_layers=16, image_size=56, patch_size=7, attn_implementation=attn)
        return model.to(device=device, dtype=dtype)
    config = llava_config(preset)
    config._attn_implementation = attn
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.set_attn_implementation(attn)
    return model.eval()


def bench_inputs(model: torch.nn.Module, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Return a batch of prompts (text, the image tokens, text; no padding) and random pixels."""
    config = model.config
    device = model.device
    gen = torch.Generator().manual_seed(seed)
    # Ordinary text ids: above the few special ids, below the image token where it ends the vocabulary.
    image_id = config.image_token_id
    vocab = image_id if image_id > 5 else config.text_config.vocab_size
    before = torch.randint(5, vocab, (batch, TEXT_BEFORE), generator=gen)
    after = torch.randint(5, vocab, (batch, TEXT_AFTER), generator=gen)
    image = torch.full((batch, config.image_seq_length), config.image_token_id)
    size = config.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size, generator=gen)
    # The prompt ends in a [SEG] token, as in LISA's teacher-forced referring-segmentation forward,
    # so methods that score by [SEG] attention (CSP) run as they would there.
    after[:, -1] = seg_token_id(model)
    return {
        "input_ids": torch.cat([before, image, after], dim=1).to(device),
        "pixel_values": pixels.to(device=device, dtype=model.dtype),
    }


def seg_token_id(model: torch.nn.Module) -> int:
    """Return the id the benchmark uses as `[SEG]`: the last id of the vocabulary."""
    return model.config.text_config.vocab_size - 1
