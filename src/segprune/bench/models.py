"""The benchmark's models and inputs: preset LLaVA-1.5 and Qwen2.5-VL architectures with random
weights, and prompts."""

from __future__ import annotations

from typing import Any

import torch

from segprune.flops import TEXT_TOKENS
from segprune.presets import (
    BENCH_PRESETS,
    CLIP_PATCH,
    CLIP_VIT_L14,
    PRESETS,
    QWEN_PRESETS,
    QWEN_VOCAB,
    TINY,
    TINY_QWEN,
    QwenVLPreset,
    Transformer,
    is_qwen,
)

# Text tokens around the image: the count that reproduces CSP Table 6's TFLOPs (docs/flops.md),
# split like a LLaVA-1.5 prompt (system prompt before, question after).
TEXT_BEFORE = 35
TEXT_AFTER = TEXT_TOKENS["csp"] - TEXT_BEFORE


# Qwen2.5-VL-7B-Instruct's vision tower (its public config.json). transformers'
# `Qwen2_5_VLVisionConfig` defaults match it except `hidden_size`, which defaults to 3584.
QWEN25_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "num_heads": 16,
    "intermediate_size": 3420,
    "out_hidden_size": 3584,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "hidden_act": "silu",
}
# Qwen2.5-VL-7B's special ids: image, video, vision start and end (all above the ordinary text ids).
QWEN_SPECIAL = {
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
}
# `tiny-qwen`: a Qwen2.5-VL at toy sizes, for CPU runs and tests (16 decoder layers, like `tiny`,
# and 224 px images: 16x16 patches of 14 px, merged 2x2 into 64 image tokens).
TINY_QWEN_PRESET = QwenVLPreset(Transformer(layers=16, hidden=64, intermediate=128, heads=4, kv_heads=2), 224)
TINY_QWEN_VOCAB = 256
TINY_QWEN_VISION = {
    **QWEN25_VISION,
    "depth": 2,
    "hidden_size": 32,
    "num_heads": 2,
    "intermediate_size": 64,
    "out_hidden_size": 64,
    "fullatt_block_indexes": [1],
}
TINY_QWEN_SPECIAL = {
    "image_token_id": 251,
    "video_token_id": 252,
    "vision_start_token_id": 253,
    "vision_end_token_id": 254,
}


def qwen_config(preset: str) -> Any:
    """Return the `Qwen2_5_VLConfig` of a Qwen preset (`qwen2.5-vl-7b-448`, `qwen2.5-vl-7b-672`, `tiny-qwen`).

    The config also holds `image_seq_length` (merged image tokens per sample) and `image_size` (the
    square image side in pixels), which the benchmark reads as it does LLaVA's.
    """
    from transformers import Qwen2_5_VLConfig

    if not is_qwen(preset):
        raise ValueError(f"{preset!r} is not a Qwen preset; valid: {[*sorted(QWEN_PRESETS), TINY_QWEN]}")
    tiny = preset == TINY_QWEN
    model = TINY_QWEN_PRESET if tiny else QWEN_PRESETS[preset]
    decoder = model.decoder
    head = decoder.hidden // decoder.heads
    # M-RoPE splits each head's rotary half into temporal, height and width sections (Qwen2.5-VL-7B:
    # 16, 24, 24 of 64).
    half = head // 2
    section = [half // 4, 3 * half // 8, half - half // 4 - 3 * half // 8]
    text = {
        "vocab_size": TINY_QWEN_VOCAB if tiny else QWEN_VOCAB,
        "hidden_size": decoder.hidden,
        "intermediate_size": decoder.intermediate,
        "num_hidden_layers": decoder.layers,
        "num_attention_heads": decoder.heads,
        "num_key_value_heads": decoder.kv_heads,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": section},
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        **({"bos_token_id": 1, "eos_token_id": 2} if tiny else {}),
    }
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=TINY_QWEN_VISION if tiny else QWEN25_VISION,
        tie_word_embeddings=False,
        **(TINY_QWEN_SPECIAL if tiny else QWEN_SPECIAL),
    )
    config.image_seq_length = model.image_tokens
    config.image_size = model.image_size
    return config


def llava_config(preset: str) -> Any:
    """Return the `LlavaConfig` of a preset (`llava-1.5-7b-224`, `llava-1.5-7b-336`, `llava-1.5-13b-224`)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for a LLaVA config; valid: {sorted(PRESETS)}")
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
    """Build a preset LLaVA or Qwen2.5-VL with random weights directly on `device` in `dtype`."""
    from transformers import LlavaForConditionalGeneration, Qwen2_5_VLForConditionalGeneration

    if preset not in BENCH_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {BENCH_PRESETS}")
    if preset == TINY:
        from segprune.models import tiny_llava

        model = tiny_llava(num_layers=16, image_size=56, patch_size=7, attn_implementation=attn)
        return model.to(device=device, dtype=dtype)
    qwen = is_qwen(preset)
    config = qwen_config(preset) if qwen else llava_config(preset)
    config._attn_implementation = attn
    model_class = Qwen2_5_VLForConditionalGeneration if qwen else LlavaForConditionalGeneration
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_class(config)
    finally:
        torch.set_default_dtype(previous)
    model.set_attn_implementation(attn)
    return model.eval()


def bench_inputs(model: torch.nn.Module, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Return a batch of prompts (text, the image tokens, text; no padding) and random pixels."""
    if model.config.model_type == "qwen2_5_vl":
        return qwen_bench_inputs(model, batch, seed)
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


def qwen_bench_inputs(model: torch.nn.Module, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Qwen2.5-VL batch: text, vision start, one square image's merged tokens, vision end, text.

    `pixel_values` are the processor's flattened patches (random), `(batch * h * w, 3 * 2 * 14 * 14)`
    for an image of `h x w` patches, with `image_grid_thw` `(1, h, w)` per sample (672 px: 48 x 48
    patches, 576 merged tokens).
    """
    config = model.config
    vision = config.vision_config
    device = model.device
    gen = torch.Generator().manual_seed(seed)
    vocab = min(config.image_token_id, config.video_token_id, config.vision_start_token_id)
    vocab = min(vocab, config.vision_end_token_id)
    before = torch.randint(5, vocab, (batch, TEXT_BEFORE - 1), generator=gen)
    after = torch.randint(5, vocab, (batch, TEXT_AFTER - 1), generator=gen)
    start = torch.full((batch, 1), config.vision_start_token_id)
    end = torch.full((batch, 1), config.vision_end_token_id)
    image = torch.full((batch, config.image_seq_length), config.image_token_id)
    after[:, -1] = seg_token_id(model)
    ids = torch.cat([before, start, image, end, after], dim=1)
    side = config.image_size // vision.patch_size
    width = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    pixels = torch.randn(batch * side * side, width, generator=gen)
    return {
        "input_ids": ids.to(device),
        "mm_token_type_ids": (ids == config.image_token_id).int().to(device),
        "pixel_values": pixels.to(device=device, dtype=model.dtype),
        "image_grid_thw": torch.tensor([[1, side, side]] * batch, device=device),
    }


def seg_token_id(model: torch.nn.Module) -> int:
    """Return the id the benchmark uses as `[SEG]`: the last id of the vocabulary."""
    return model.config.text_config.vocab_size - 1
