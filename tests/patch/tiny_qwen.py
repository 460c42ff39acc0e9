"""Tiny Qwen2-VL / Qwen2.5-VL models and inputs built in-process, for the family's tests; also the
multi-image LLaVA prompts (`llava_prompt`) that batches of samples which differ are built from."""

from __future__ import annotations

import torch

from segprune.pixels import CLIP_MEAN, CLIP_STD

IMAGE, VIDEO, START, END, PAD = 3, 4, 5, 6, 0
PATCH, MERGE, TEMPORAL = 2, 2, 2
FAMILIES = ["qwen2_vl", "qwen2_5_vl"]


def tiny_qwen(kind: str, attn_implementation: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    """A random fp32 Qwen2-VL / Qwen2.5-VL: 4 decoder layers 32 wide, a 2-layer vision tower."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    text = {
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
        "pad_token_id": PAD,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    common = {"depth": 2, "num_heads": 2, "patch_size": PATCH, "spatial_merge_size": MERGE}
    common["temporal_patch_size"] = TEMPORAL
    if kind == "qwen2_vl":
        vision = {**common, "embed_dim": 16, "hidden_size": 32, "mlp_ratio": 2}
        config_class, model_class = Qwen2VLConfig, Qwen2VLForConditionalGeneration
    else:
        vision = {**common, "hidden_size": 16, "intermediate_size": 32, "out_hidden_size": 32}
        vision.update(window_size=8, fullatt_block_indexes=[1])
        config_class, model_class = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    config = config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=START,
        vision_end_token_id=END,
    )
    torch.manual_seed(seed)
    model = model_class(config)
    model.config._attn_implementation = attn_implementation
    for sub in (model.config.text_config, model.config.vision_config):
        sub._attn_implementation = attn_implementation
    with torch.no_grad():  # sharper attention, as tiny_llava does, so kept sets matter
        model.model.language_model.embed_tokens.weight.normal_(0, 1.0)
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight.normal_(0, 0.3)
            layer.self_attn.k_proj.weight.normal_(0, 0.3)
    model.generation_config.pad_token_id = PAD
    return model.eval()


def patchify(images: torch.Tensor) -> torch.Tensor:
    """The Qwen2-VL processor's flattened patches of `(n, 3, H, W)` images, each repeated over time."""
    n, c, height, width = images.shape
    h, w = height // PATCH, width // PATCH
    x = images[:, None].expand(n, TEMPORAL, c, height, width)
    x = x.reshape(n, 1, TEMPORAL, c, h // MERGE, MERGE, PATCH, w // MERGE, MERGE, PATCH)
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    return x.reshape(n * h * w, c * TEMPORAL * PATCH * PATCH)


def qwen_inputs(batch=2, prompt_lengths=(5, 8), size=(16, 16), seed=1, left_pad=True):
    """input_ids, attention_mask, mm_token_type_ids, pixel_values, image_grid_thw: text, one image, text."""
    gen = torch.Generator().manual_seed(seed)
    h, w = size[0] // PATCH, size[1] // PATCH
    n_image = h * w // MERGE**2
    rows = []
    for b in range(batch):
        n_text = prompt_lengths[b % len(prompt_lengths)]
        before = torch.randint(7, 64, (2,), generator=gen).tolist()
        after = torch.randint(7, 64, (n_text,), generator=gen).tolist()
        rows.append([1, *before, START, *[IMAGE] * n_image, END, *after])
    length = max(map(len, rows))
    ids = torch.full((batch, length), PAD)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for b, row in enumerate(rows):
        span = slice(length - len(row), length) if left_pad else slice(0, len(row))
        ids[b, span] = torch.tensor(row)
        mask[b, span] = 1
    images = torch.rand(batch, 3, *size, generator=gen)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "mm_token_type_ids": (ids == IMAGE).int(),
        "pixel_values": patchify((images - mean) / std),
        "image_grid_thw": torch.tensor([[1, h, w]] * batch),
    }


def qwen_prompt(sizes, n_text=5, seed=1, n_before=2):
    """One sample's inputs: text, then one image per entry of `sizes` (each (H, W) px), then text."""
    gen = torch.Generator().manual_seed(seed)
    row = [1, *torch.randint(7, 64, (n_before,), generator=gen).tolist()]
    grids, pixels = [], []
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    for k, (height, width) in enumerate(sizes):
        h, w = height // PATCH, width // PATCH
        if k:
            row += torch.randint(7, 64, (2,), generator=gen).tolist()
        row += [START, *[IMAGE] * (h * w // MERGE**2), END]
        grids.append([1, h, w])
        pixels.append(patchify((torch.rand(1, 3, height, width, generator=gen) - mean) / std))
    row += torch.randint(7, 64, (n_text,), generator=gen).tolist()
    ids = torch.tensor([row])
    out = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == IMAGE).int(),
    }
    if sizes:
        out.update(pixel_values=torch.cat(pixels), image_grid_thw=torch.tensor(grids))
    return out


def left_padded_batch(samples):
    """Stack single-sample inputs (`qwen_prompt`) into one left-padded batch."""
    length = max(s["input_ids"].shape[1] for s in samples)

    def pad(x):
        return torch.cat([torch.zeros(1, length - x.shape[1], dtype=x.dtype), x], dim=1)

    keys = ("input_ids", "attention_mask", "mm_token_type_ids")
    out = {key: torch.cat([pad(s[key]) for s in samples]) for key in keys if key in samples[0]}
    out["input_ids"][out["attention_mask"] == 0] = PAD
    for key in ("pixel_values", "image_grid_thw"):
        if any(key in s for s in samples):
            out[key] = torch.cat([s[key] for s in samples if key in s])
    return out


def llava_prompt(model, n_images: int, n_text: int, seed: int) -> dict[str, torch.Tensor]:
    """One LLaVA prompt: text, then `n_images` images' tokens each followed by two text tokens."""
    from segprune.models.tiny_llava import IMAGE_TOKEN_ID

    gen = torch.Generator().manual_seed(seed)
    vocab, n_image = model.config.text_config.vocab_size, model.config.image_seq_length
    row = torch.randint(5, vocab, (2,), generator=gen).tolist()
    for _ in range(n_images):
        row += [IMAGE_TOKEN_ID] * n_image + torch.randint(5, vocab, (2,), generator=gen).tolist()
    row += torch.randint(5, vocab, (n_text,), generator=gen).tolist()
    ids = torch.tensor([row])
    size = model.config.vision_config.image_size
    pixels = torch.randn(n_images, 3, size, size, generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}
