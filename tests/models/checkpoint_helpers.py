"""Writing synthetic official checkpoints: LLaVA-v1 and segment-anything names, sharded weight files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

# segment-anything's Sam state-dict keys and shapes at tiny_sam_config()'s size (listed by its own module).
SAM_KEYS = Path(__file__).parent / "data" / "lisa_sam_keys.txt"
CLIP_PREFIX = "model.vision_tower.vision_tower.vision_model."

# transformers SamModel name -> segment-anything name, for writing a synthetic checkpoint. Order
# matters: the feed-forward heads' middle layer moves before proj_in takes its place.
SAM_NAMES = [
    (r"vision_encoder\.", "image_encoder."),
    (r"patch_embed\.projection", "patch_embed.proj"),
    (r"image_encoder\.layers\.", "image_encoder.blocks."),
    (r"neck\.conv1", "neck.0"),
    (r"neck\.layer_norm1", "neck.1"),
    (r"neck\.conv2", "neck.2"),
    (r"neck\.layer_norm2", "neck.3"),
    (r"\.layer_norm([1-4])\.", r".norm\1."),
    (r"layer_norm_final_attn", "norm_final_attn"),
    (r"shared_embedding\.positional_embedding", "pe_layer.positional_encoding_gaussian_matrix"),
    (r"prompt_encoder\.point_embed\.", "prompt_encoder.point_embeddings."),
    (r"mask_embed\.conv1", "mask_downscaling.0"),
    (r"mask_embed\.norm1", "mask_downscaling.1"),
    (r"mask_embed\.conv2", "mask_downscaling.3"),
    (r"mask_embed\.norm2", "mask_downscaling.4"),
    (r"mask_embed\.conv3", "mask_downscaling.6"),
    (r"upscale_conv1", "output_upscaling.0"),
    (r"upscale_layer_norm", "output_upscaling.1"),
    (r"upscale_conv2", "output_upscaling.3"),
    (r"(mlps\.\d+|iou_prediction_head)\.layers\.0\.", r"\1.layers.1."),
    (r"\.proj_in\.", ".layers.0."),
    (r"\.proj_out\.", ".layers.2."),
]


def sam_name(name: str) -> str:
    """segment-anything's name for a transformers `SamModel` key (without the `sam.` prefix)."""
    for pattern, replacement in SAM_NAMES:
        name = re.sub(pattern, replacement, name)
    return name


def sam_state(model, prefix: str) -> dict[str, torch.Tensor]:
    """`model.sam`'s weights under segment-anything's names, behind `prefix`, as a checkpoint saves them."""
    return {
        prefix + sam_name(name): tensor
        for name, tensor in model.sam.state_dict().items()
        if not name.startswith("shared_image_embedding")  # a tied copy segment-anything does not have
    }


def segment_anything_keys(prefix: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of segment-anything's own `Sam` at tiny size, behind `prefix`."""
    lines = [line.split() for line in SAM_KEYS.read_text().splitlines() if not line.startswith("#")]
    keys = {name.removeprefix("model.visual_model."): tuple(map(int, shape)) for name, *shape in lines}
    return {prefix + name: shape for name, shape in keys.items()}


def write_shards(directory: Path, state: dict[str, torch.Tensor], kind: str = "safetensors") -> None:
    """Two shards with an index: `model-0000k-of-00002.safetensors` or `pytorch_model-0000k-of-00002.bin`."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    stem, index = (
        ("model", "model.safetensors.index.json")
        if kind == "safetensors"
        else ("pytorch_model", "pytorch_model.bin.index.json")
    )
    suffix = "safetensors" if kind == "safetensors" else "bin"
    weight_map = {}
    for k, names in enumerate((keys[::2], keys[1::2]), start=1):
        file = f"{stem}-{k:05d}-of-00002.{suffix}"
        part = {name: state[name].contiguous() for name in names}
        if kind == "safetensors":
            from safetensors.torch import save_file

            save_file(part, str(directory / file))
        else:
            torch.save(part, directory / file)
        weight_map.update(dict.fromkeys(names, file))
    (directory / index).write_text(json.dumps({"weight_map": weight_map}))


def llava_v1_state(model, rows: int, projector: str, clip: bool = True) -> dict[str, torch.Tensor]:
    """`model`'s LLM, projector, CLIP tower and `[SEG]` projector under the LLaVA-v1 names LISA and
    GLaMM save: the vocabulary cut to `rows` (the checkpoint has no `<image>` row), the projector one
    Linear ("linear", `model.mm_projector.*`) or LLaVA-1.5's MLP ("mlp2x_gelu", `.0`, `.2`), the CLIP
    tower with its `position_ids` buffer (old transformers saved it) or, `clip=False`, left out."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("mllm.model.language_model."):
            rest = name.removeprefix("mllm.model.language_model.")
            out["model." + rest] = tensor[:rows] if rest == "embed_tokens.weight" else tensor
        elif name == "mllm.lm_head.weight":
            out["lm_head.weight"] = tensor[:rows]
        elif name.startswith("mllm.model.vision_tower.") and clip:
            out[CLIP_PREFIX + name.removeprefix("mllm.model.vision_tower.")] = tensor
        elif name.startswith("mllm.model.multi_modal_projector."):
            layer, param = name.split(".")[-2:]
            if projector == "linear" and layer == "linear_1":
                out[f"model.mm_projector.{param}"] = tensor
            elif projector == "mlp2x_gelu":  # nn.Sequential(Linear, GELU, Linear)
                out[f"model.mm_projector.{0 if layer == 'linear_1' else 2}.{param}"] = tensor
        elif name.startswith("seg_projector."):  # text_hidden_fcs = ModuleList([Sequential(...)])
            out["model.text_hidden_fcs.0." + name.removeprefix("seg_projector.")] = tensor
    if clip:
        side = (
            model.config.llava_config.vision_config.image_size
            // model.config.llava_config.vision_config.patch_size
        )
        out[CLIP_PREFIX + "embeddings.position_ids"] = torch.arange(side * side + 1)[None]
    # A buffer the transformers versions LISA and GLaMM pin still saved; current models recompute it.
    out["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    return out


def tiny_llama_config(vocab_size: int) -> dict:
    """The LLaMA fields of a LISA / GLaMM `config.json` for the tiny model (`tiny_llava`'s sizes)."""
    return {
        "model_type": "llava",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 4,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "vocab_size": vocab_size,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "mm_vision_select_layer": -2,
        "mm_use_im_start_end": True,
        "out_dim": 16,
        "train_mask_decoder": True,
    }
