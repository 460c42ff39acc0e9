"""A tiny random `SegModel` built in-process: the `tiny_llava` LLM, a tiny SAM and a word tokenizer."""

from __future__ import annotations

import math

import torch

from segprune.models.seg_inputs import word_tokenizer
from segprune.models.tiny_llava import SEG_TOKEN_ID, tiny_llava

# 56 words + 8 special tokens fill tiny_llava's 64-token vocabulary.
TINY_WORDS = (
    "USER", "ASSISTANT", ":", ",", ".", "?", "Sure", "it", "is", "What", "the", "a", "in", "this",
    "image", "Please", "segment", "output", "mask", "describe", "and", "with", "on", "of", "man",
    "woman", "dog", "cat", "car", "tree", "red", "blue", "green", "small", "big", "left", "right",
    "sits", "runs", "holds", "near", "sky", "grass", "road", "ball", "hat", "Could", "you", "give",
    "me", "detailed", "description", "respond", "segmentation", "masks", "parts",
)  # fmt: skip


def tiny_sam_config(image_size: int = 32, patch_size: int = 4, width: int = 16) -> object:
    """Return a `SamConfig` for a 2-layer, `width`-wide SAM on `image_size`-px inputs."""
    from transformers import SamConfig

    vision = {
        "hidden_size": width,
        "output_channels": width,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": patch_size,
        "window_size": 4,
        "global_attn_indexes": [1],
        "num_pos_feats": width // 2,
        "mlp_dim": 2 * width,
    }
    prompt = {
        "hidden_size": width,
        "image_size": image_size,
        "patch_size": patch_size,
        "mask_input_channels": 4,
    }
    # segment-anything's two-way transformer uses torch's LayerNorm default eps (1e-5).
    decoder = {
        "hidden_size": width,
        "mlp_dim": 2 * width,
        "num_attention_heads": 2,
        "iou_head_hidden_dim": width,
        "layer_norm_eps": 1e-5,
    }
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def tiny_seg_model(
    seed: int = 0, sam_image_size: int = 32, attn_implementation: str = "sdpa"
) -> torch.nn.Module:
    """Return a random fp32 `SegModel` with a tokenizer: 16 image tokens, a 4-layer LLM (as `tiny_llava`)."""
    from segprune.models.seg_model import SegModel, SegModelConfig

    llava = tiny_llava(seed=seed, attn_implementation=attn_implementation)
    config = SegModelConfig(
        llava_config=llava.config,
        sam_config=tiny_sam_config(image_size=sam_image_size),
        seg_token_id=SEG_TOKEN_ID,
    )
    config._attn_implementation = attn_implementation
    model = SegModel(config)
    model.mllm.load_state_dict(llava.state_dict())
    # Default inits (std 0.02, zero rel-pos) leave each token's state nearly its own embedding and
    # every mask nearly the same whatever the prompt. Weights of variance 1/fan-in make the [SEG]
    # state depend on the query and the image, and the masks on the [SEG] state, so tests discriminate.
    gen = torch.Generator().manual_seed(seed + 1)
    mixing = [
        (f"llm.{name}", param)
        for name, param in model.mllm.model.language_model.layers.named_parameters()
        if name.endswith(("v_proj.weight", "o_proj.weight", "mlp.down_proj.weight"))
    ]
    with torch.no_grad():
        for name, param in [*mixing, *model.sam.named_parameters(), *model.seg_projector.named_parameters()]:
            if "norm" in name:  # keep LayerNorms at identity
                continue
            fan_in = param[0].numel() if param.dim() > 1 else 1
            # Sharper attention in SAM's two-way transformer lets the single prompt token steer the mask.
            gain = (
                3.0 if "mask_decoder" in name and name.endswith(("q_proj.weight", "k_proj.weight")) else 1.0
            )
            param.copy_(torch.randn(param.shape, generator=gen) * gain / math.sqrt(fan_in))
    model.tokenizer = word_tokenizer(TINY_WORDS)
    return model.eval()
