"""Tiny random `LlavaForConditionalGeneration` models, built in-process, for tests and examples."""

from __future__ import annotations

import torch

IMAGE_TOKEN_ID = 3
SEG_TOKEN_ID = 4
PAD_TOKEN_ID = 0


def tiny_llava(
    num_layers: int = 4,
    hidden_size: int = 32,
    image_size: int = 16,
    patch_size: int = 4,
    attn_implementation: str = "sdpa",
    num_key_value_heads: int = 2,
    seed: int = 0,
) -> torch.nn.Module:
    """Return a random fp32 LLaVA with a Llama decoder: (image_size / patch_size)² image tokens per image."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=64,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=512,
        pad_token_id=PAD_TOKEN_ID,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE_TOKEN_ID,
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.config._attn_implementation = attn_implementation
    for sub in (model.config.text_config, model.config.vision_config):
        sub._attn_implementation = attn_implementation
    # The default init (std 0.02) makes every attention row nearly uniform, so positions and the
    # choice of kept tokens would barely move the output; sharper q/k make the tests discriminate.
    with torch.no_grad():
        model.model.language_model.embed_tokens.weight.normal_(0, 1.0)
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight.normal_(0, 0.3)
            layer.self_attn.k_proj.weight.normal_(0, 0.3)
    model.generation_config.pad_token_id = PAD_TOKEN_ID
    return model.eval()


def tiny_llava_inputs(
    model: torch.nn.Module,
    batch: int = 2,
    prompt_lengths: tuple[int, ...] = (5, 8),
    seed: int = 1,
    left_pad: bool = True,
) -> dict[str, torch.Tensor]:
    """Return `input_ids`, `attention_mask` and `pixel_values` for `model`: a few text tokens, the
    image tokens, more text; samples padded to one length (left padding by default)."""
    gen = torch.Generator().manual_seed(seed)
    config = model.config
    n_image = config.image_seq_length
    rows = []
    for b in range(batch):
        n_text = prompt_lengths[b % len(prompt_lengths)]
        head = torch.randint(5, config.text_config.vocab_size, (2,), generator=gen)
        tail = torch.randint(5, config.text_config.vocab_size, (n_text,), generator=gen)
        rows.append(torch.cat([head, torch.full((n_image,), IMAGE_TOKEN_ID), tail]))
    length = max(len(r) for r in rows)
    input_ids = torch.full((batch, length), PAD_TOKEN_ID)
    attention_mask = torch.zeros(batch, length, dtype=torch.long)
    for b, row in enumerate(rows):
        sl = slice(length - len(row), length) if left_pad else slice(0, len(row))
        input_ids[b, sl] = row
        attention_mask[b, sl] = 1
    size = config.vision_config.image_size
    pixel_values = torch.randn(batch, 3, size, size, generator=gen)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
