"""Convert an official LLaVA + SAM segmentation checkpoint (LISA, GLaMM) into a `SegModel` directory.

LISA (dvlab-research/LISA) and GLaMM (mbzuai-oryx/groundingLMM) both save one state dict holding the
LLaVA-v1 language model (`model.layers.*`, `model.embed_tokens`, `model.norm`, `lm_head`), its linear
or MLP projector (`model.mm_projector.*`), the CLIP tower (`model.vision_tower.vision_tower.vision_model.*`,
left out of GLaMM's released checkpoints), SAM with segment-anything's own names under a prefix of the
family (`model.visual_model.` in LISA, `model.grounding_encoder.` in GLaMM) and the `[SEG]` projector
(`model.text_hidden_fcs.0.*`). A `CheckpointFamily` says what differs: the SAM prefix, the tokens the
tokenizer must hold, the parts that are not converted, and the prompt. Every key is mapped to the
transformers LLaVA / SAM names by the rules below; sizes are read from the tensors and from the
checkpoint's `config.json`. Any key no rule maps, any model weight no key fills and any shape that does
not fit stops the conversion with the names listed. The per-family entry points are
`convert_lisa.convert_lisa` and `convert_glamm.convert_glamm`.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from segprune.models.seg_model import SegModel, SegModelConfig

# The llava_v1 conversation's system sentence, which LISA and GLaMM both prompt with.
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
CLIP_PREFIX = "model.vision_tower.vision_tower.vision_model."


class ConversionError(ValueError):
    """The checkpoint cannot be converted; the message names the keys or files at fault."""


@dataclass(frozen=True)
class CheckpointFamily:
    """What one checkpoint family's layout adds to the shared rules.

    Fields:
        name: shown in messages ("LISA", "GLaMM").
        sam_prefix: where SAM's segment-anything keys live, e.g. "model.visual_model.".
        tokens: tokens the checkpoint's tokenizer must hold (`[SEG]` first).
        prompt: `(tokenizer, config.json dict) -> SegModelConfig fields` (prompt, answers, tokens).
        skipped: key prefix -> why that part is not converted; its keys are dropped and the reason is
            logged once.
    """

    name: str
    sam_prefix: str
    tokens: tuple[str, ...]
    prompt: Callable[[Any, dict[str, Any]], dict[str, Any]]
    skipped: dict[str, str] = field(default_factory=dict)

    def ignored(self) -> tuple[re.Pattern[str], ...]:
        """Buffers that old transformers versions saved and current models recompute."""
        return (
            re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"),
            re.compile(re.escape(CLIP_PREFIX) + r"embeddings\.position_ids"),
            re.compile(re.escape(self.sam_prefix) + r"pixel_(mean|std)"),
        )


# -- reading -------------------------------------------------------------------------------------


def load_checkpoint(src: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read every tensor of a checkpoint: one `.bin` / `.safetensors` file, or a directory of shards."""
    src = os.fspath(src)
    if os.path.isfile(src):
        files = [src]
    elif os.path.isdir(src):
        files = _shard_files(src)
    else:
        raise ConversionError(f"no checkpoint at {src!r}")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        part = _load_file(path)
        repeated = sorted(set(part) & set(state))
        if repeated:
            raise ConversionError(f"{path} repeats keys of an earlier shard: {repeated[:5]}")
        state.update(part)
    return state


def _shard_files(directory: str) -> list[str]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        path = os.path.join(directory, index)
        if os.path.isfile(path):
            with open(path) as f:
                names = sorted(set(json.load(f)["weight_map"].values()))
            return [os.path.join(directory, name) for name in names]
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = sorted(glob.glob(os.path.join(directory, pattern)))
        if files:
            return files
    raise ConversionError(f"{directory!r} holds no *.safetensors or pytorch_model*.bin weights")


def _load_file(path: str) -> dict[str, torch.Tensor]:
    """Read one weights file; a missing, cut or foreign file is a `ConversionError` naming it."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        try:  # mmap keeps a 15 GB checkpoint out of memory until each tensor is used
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # pre-zipfile format: no mmap
            return torch.load(path, map_location="cpu", weights_only=True)
    except ConversionError:
        raise
    except Exception as err:  # safetensors, pickle and zip errors have no common base class
        raise ConversionError(f"cannot read weights file {path!r}: {err}") from err


# -- key mapping ---------------------------------------------------------------------------------


P = r"(?P<p>weight|bias)"  # a parameter's name
N = r"(?P<n>\d+)"  # a layer index
# Two-way transformer weights whose names transformers kept.
KEPT = (
    r"((self_attn|cross_attn_token_to_image|cross_attn_image_to_token)\.([qkv]|out)_proj|mlp\.lin[12])"
    r"\.(weight|bias)"
)

# segment-anything -> transformers SamModel, per part: (source prefix, target prefix, rules).
SAM_PARTS = (
    ("image_encoder.", "vision_encoder.", (
        (rf"patch_embed\.proj\.{P}", r"patch_embed.projection.\g<p>"),
        (r"pos_embed", r"pos_embed"),
        (rf"blocks\.{N}\.norm(?P<k>[12])\.{P}", r"layers.\g<n>.layer_norm\g<k>.\g<p>"),
        (rf"blocks\.{N}\.(?P<x>attn\.(qkv|proj)\.(weight|bias)|attn\.rel_pos_[hw])", r"layers.\g<n>.\g<x>"),
        (rf"blocks\.{N}\.mlp\.lin(?P<k>[12])\.{P}", r"layers.\g<n>.mlp.lin\g<k>.\g<p>"),
        (rf"neck\.0\.{P}", r"neck.conv1.\g<p>"),
        (rf"neck\.1\.{P}", r"neck.layer_norm1.\g<p>"),
        (rf"neck\.2\.{P}", r"neck.conv2.\g<p>"),
        (rf"neck\.3\.{P}", r"neck.layer_norm2.\g<p>"),
    )),
    ("prompt_encoder.", "prompt_encoder.", (
        (r"pe_layer\.positional_encoding_gaussian_matrix", r"shared_embedding.positional_embedding"),
        (rf"point_embeddings\.{N}\.weight", r"point_embed.\g<n>.weight"),
        (r"(?P<e>not_a_point_embed|no_mask_embed)\.weight", r"\g<e>.weight"),
        (rf"mask_downscaling\.0\.{P}", r"mask_embed.conv1.\g<p>"),
        (rf"mask_downscaling\.1\.{P}", r"mask_embed.layer_norm1.\g<p>"),
        (rf"mask_downscaling\.3\.{P}", r"mask_embed.conv2.\g<p>"),
        (rf"mask_downscaling\.4\.{P}", r"mask_embed.layer_norm2.\g<p>"),
        (rf"mask_downscaling\.6\.{P}", r"mask_embed.conv3.\g<p>"),
    )),
    ("mask_decoder.", "mask_decoder.", (
        (r"(?P<t>iou_token|mask_tokens)\.weight", r"\g<t>.weight"),
        (rf"(?P<x>transformer\.layers\.\d+\.)norm(?P<k>[1-4])\.{P}", r"\g<x>layer_norm\g<k>.\g<p>"),
        (rf"(?P<x>transformer\.layers\.\d+\.{KEPT})", r"\g<x>"),
        (rf"(?P<x>transformer\.final_attn_token_to_image\.([qkv]|out)_proj\.{P})", r"\g<x>"),
        (rf"transformer\.norm_final_attn\.{P}", r"transformer.layer_norm_final_attn.\g<p>"),
        (rf"output_upscaling\.0\.{P}", r"upscale_conv1.\g<p>"),
        (rf"output_upscaling\.1\.{P}", r"upscale_layer_norm.\g<p>"),
        (rf"output_upscaling\.3\.{P}", r"upscale_conv2.\g<p>"),
    )),
)  # fmt: skip
# segment-anything name (the family's prefix removed) -> sam.<transformers name>.
SAM_RULES = tuple(
    (re.escape(source) + pattern, "sam." + target + replacement)
    for source, target, rules in SAM_PARTS
    for pattern, replacement in rules
)

LM = "mllm.model.language_model."
PROJECTOR = "mllm.model.multi_modal_projector."
# LLaVA-v1 name (LISA's, GLaMM's) -> SegModel name, for everything outside SAM.
LLAVA_RULES = (
    (r"model\.embed_tokens\.weight", LM + "embed_tokens.weight"),
    (r"model\.layers\.(?P<x>\d+\.self_attn\.[qkvo]_proj\.weight)", LM + r"layers.\g<x>"),
    (r"model\.layers\.(?P<x>\d+\.mlp\.(gate|up|down)_proj\.weight)", LM + r"layers.\g<x>"),
    (r"model\.layers\.(?P<x>\d+\.(input|post_attention)_layernorm\.weight)", LM + r"layers.\g<x>"),
    (r"model\.norm\.weight", LM + "norm.weight"),
    (r"lm_head\.weight", "mllm.lm_head.weight"),
    (rf"model\.mm_projector\.(0\.)?{P}", PROJECTOR + r"linear_1.\g<p>"),  # a Linear, or an MLP's first layer
    (rf"model\.mm_projector\.2\.{P}", PROJECTOR + r"linear_2.\g<p>"),
    (re.escape(CLIP_PREFIX) + r"(?P<x>.+)", r"mllm.model.vision_tower.\g<x>"),
    (rf"model\.text_hidden_fcs\.0\.(?P<n>[02])\.{P}", r"seg_projector.\g<n>.\g<p>"),
)

# segment-anything's MLP heads (`layers.0` .. `layers.d-1`) -> transformers' SamFeedForward
# (`proj_in`, `layers.0` .. `layers.d-3`, `proj_out`); the depth d comes from the checkpoint.
SAM_MLP = re.compile(
    r"mask_decoder\.(?P<head>output_hypernetworks_mlps\.\d+|iou_prediction_head)"
    r"\.layers\.(?P<i>\d+)\.(?P<p>weight|bias)"
)


def map_keys(
    state: dict[str, torch.Tensor], family: CheckpointFamily
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Rename a `family` checkpoint's keys to `SegModel` keys; return the renamed tensors and each new
    key's checkpoint key. Keys under `family.skipped` prefixes and ignored buffers are dropped.

    Raises `ConversionError` naming every key no rule maps.
    """
    prefix = family.sam_prefix
    depths: dict[str, int] = {}
    for key in state:
        if key.startswith(prefix) and (match := SAM_MLP.fullmatch(key[len(prefix) :])):
            depths[match["head"]] = max(depths.get(match["head"], 0), int(match["i"]) + 1)
    ignored = family.ignored()
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unexpected = []
    for key, value in state.items():
        if any(pattern.fullmatch(key) for pattern in ignored) or key.startswith(tuple(family.skipped)):
            continue
        if key.startswith(prefix):
            new = _map_sam_key(key[len(prefix) :], depths)
        else:
            new = next((re.sub(p, r, key) for p, r in LLAVA_RULES if re.fullmatch(p, key)), None)
        if new is None:
            unexpected.append(key)
        else:
            mapped[new], origin[new] = value, key
    if unexpected:
        raise ConversionError(
            f"{len(unexpected)} checkpoint key(s) match no {family.name} layout rule: "
            f"{sorted(unexpected)[:20]}"
        )
    gaussian = "sam.prompt_encoder.shared_embedding.positional_embedding"
    if gaussian in mapped:  # transformers' SamModel keeps a tied copy for the image-wide encoding
        mapped["sam.shared_image_embedding.positional_embedding"] = mapped[gaussian]
        origin["sam.shared_image_embedding.positional_embedding"] = origin[gaussian]
    return mapped, origin


def _map_sam_key(name: str, depths: dict[str, int]) -> str | None:
    if match := SAM_MLP.fullmatch(name):
        i, last = int(match["i"]), depths[match["head"]] - 1
        part = "proj_in" if i == 0 else "proj_out" if i == last else f"layers.{i - 1}"
        return f"sam.mask_decoder.{match['head']}.{part}.{match['p']}"
    return next((re.sub(p, r, name) for p, r in SAM_RULES if re.fullmatch(p, name)), None)


# -- configuration -------------------------------------------------------------------------------


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    found = {int(m[1]) for key in state if (m := re.fullmatch(pattern, key))}
    return max(found) + 1 if found else 0


def infer_config(
    state: dict[str, torch.Tensor],
    source: dict[str, Any],
    seg_token_id: int,
    image_token_id: int,
    vocab: int,
    clip: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build `SegModelConfig` kwargs from mapped tensor shapes and the checkpoint's `config.json`
    (`source`) and, when the tower came from a CLIP directory, its vision config (`clip`).

    Head counts no tensor shows come from `source` (LLM), `clip` or else CLIP's 64-wide heads, SAM's
    relative position tables (image encoder) and SAM's fixed 8 heads (mask decoder).
    """
    clip = clip or {}
    lm = "mllm.model.language_model."
    width = state[lm + "embed_tokens.weight"].shape[1]
    heads = source.get("num_attention_heads", width // 128)  # LLaMA's heads are 128 wide
    if not heads:
        raise ConversionError(
            "cannot tell the LLM's head count: give config.json in SRC or "
            "config_overrides={'text_config': {'num_attention_heads': N}}"
        )
    head_dim = width // heads
    text = {
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": state[lm + "layers.0.mlp.gate_proj.weight"].shape[0],
        "num_hidden_layers": _count(state, re.escape(lm) + r"layers\.(\d+)\.input_layernorm\.weight"),
        "num_attention_heads": heads,
        "num_key_value_heads": state[lm + "layers.0.self_attn.k_proj.weight"].shape[0] // head_dim,
        "rms_norm_eps": source.get("rms_norm_eps", 1e-6),
        "max_position_embeddings": source.get("max_position_embeddings", 2048),
        "hidden_act": source.get("hidden_act", "silu"),
        "tie_word_embeddings": False,
    }
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "rope_theta", "rope_scaling"):
        if source.get(name) is not None and source[name] != -1:  # some LLaMA configs say pad -1
            text[name] = source[name]

    vt = "mllm.model.vision_tower."
    patch = state[vt + "embeddings.patch_embedding.weight"]
    side = math.isqrt(state[vt + "embeddings.position_embedding.weight"].shape[0] - 1)
    vision = {
        "hidden_size": patch.shape[0],
        "num_channels": patch.shape[1],
        "patch_size": patch.shape[-1],
        "image_size": side * patch.shape[-1],
        "intermediate_size": state[vt + "encoder.layers.0.mlp.fc1.weight"].shape[0],
        "num_hidden_layers": _count(state, re.escape(vt) + r"encoder\.layers\.(\d+)\.layer_norm1\.weight"),
        "num_attention_heads": clip.get("num_attention_heads", patch.shape[0] // 64),
        "hidden_act": clip.get("hidden_act", "quick_gelu"),
    }
    linear_projector = "mllm.model.multi_modal_projector.linear_2.weight" not in state
    llava = {
        "text_config": text,
        "vision_config": vision,
        "image_token_index": image_token_id,
        "image_seq_length": side * side,
        "vision_feature_layer": source.get("mm_vision_select_layer", -2),
        "vision_feature_select_strategy": "default",  # LLaVA's "patch": CLS dropped
        # LISA-7B-v1's projector is one Linear; "linear" (identity) activation + an identity linear_2
        # make transformers' two-layer projector compute exactly that.
        "projector_hidden_act": "linear" if linear_projector else "gelu",
    }
    return {"llava_config": llava, "sam_config": _sam_config(state), "seg_token_id": seg_token_id}


def _sam_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    ve, pe, md = "sam.vision_encoder.", "sam.prompt_encoder.", "sam.mask_decoder."
    patch = state[ve + "patch_embed.projection.weight"]
    grid = state[ve + "pos_embed"].shape[1]
    layers = _count(state, re.escape(ve) + r"layers\.(\d+)\.layer_norm1\.weight")
    # A block's relative-position table spans 2s-1 offsets for an s-wide attention window; global
    # blocks attend over the whole grid. Its width is the head dim.
    spans = [state[f"{ve}layers.{i}.attn.rel_pos_h"].shape[0] // 2 + 1 for i in range(layers)]
    head_dim = state[ve + "layers.0.attn.rel_pos_h"].shape[1]
    windows = {s for s in spans if s != grid}
    if len(windows) > 1:
        raise ConversionError(f"SAM blocks use different window sizes {sorted(windows)}")
    width = patch.shape[0]
    vision = {
        "hidden_size": width,
        "output_channels": state[ve + "neck.conv1.weight"].shape[0],
        "num_hidden_layers": layers,
        "num_attention_heads": width // head_dim,
        "num_channels": patch.shape[1],
        "patch_size": patch.shape[-1],
        "image_size": grid * patch.shape[-1],
        "mlp_dim": state[ve + "layers.0.mlp.lin1.weight"].shape[0],
        "window_size": windows.pop() if windows else 0,
        "global_attn_indexes": [i for i, s in enumerate(spans) if s == grid],
        "num_pos_feats": state[pe + "shared_embedding.positional_embedding"].shape[1],
        "qkv_bias": ve + "layers.0.attn.qkv.bias" in state,
    }
    prompt = {
        "hidden_size": vision["output_channels"],
        "image_size": vision["image_size"],
        "patch_size": vision["patch_size"],
        "mask_input_channels": state[pe + "mask_embed.conv2.weight"].shape[0],
        "num_point_embeddings": _count(state, re.escape(pe) + r"point_embed\.(\d+)\.weight"),
    }
    hidden = state[md + "iou_token.weight"].shape[1]
    decoder = {
        "hidden_size": hidden,
        "num_hidden_layers": _count(
            state, re.escape(md) + r"transformer\.layers\.(\d+)\.layer_norm1\.weight"
        ),
        "mlp_dim": state[md + "transformer.layers.0.mlp.lin1.weight"].shape[0],
        "num_attention_heads": 8,
        "attention_downsample_rate": hidden
        // state[md + "transformer.layers.0.cross_attn_token_to_image.q_proj.weight"].shape[0],
        "num_multimask_outputs": state[md + "mask_tokens.weight"].shape[0] - 1,
        "iou_head_depth": 2 + _count(state, re.escape(md) + r"iou_prediction_head\.layers\.(\d+)\.weight"),
        "iou_head_hidden_dim": state[md + "iou_prediction_head.proj_in.weight"].shape[0],
        # segment-anything's two-way transformer uses torch's default LayerNorm eps.
        "layer_norm_eps": 1e-5,
    }
    return {"vision_config": vision, "prompt_encoder_config": prompt, "mask_decoder_config": decoder}


def _apply_overrides(kwargs: dict[str, Any], overrides: dict[str, dict[str, Any]] | None) -> None:
    sections = {
        "text_config": kwargs["llava_config"]["text_config"],
        "vision_config": kwargs["llava_config"]["vision_config"],
        "llava_config": kwargs["llava_config"],
        "sam_vision_config": kwargs["sam_config"]["vision_config"],
        "sam_prompt_encoder_config": kwargs["sam_config"]["prompt_encoder_config"],
        "sam_mask_decoder_config": kwargs["sam_config"]["mask_decoder_config"],
        "seg_config": kwargs,
    }
    for section, values in (overrides or {}).items():
        if section not in sections:
            raise ConversionError(f"unknown override section {section!r}; valid: {sorted(sections)}")
        sections[section].update(values)


# -- tokenizer and vocabulary --------------------------------------------------------------------


def _prepare_tokenizer(tokenizer: Any, family: CheckpointFamily) -> tuple[Any, int, int]:
    """Check the family's tokens; add `<image>` (transformers' LLaVA needs a placeholder token; LISA and
    GLaMM splice a -200 index instead) and a pad token. Return the tokenizer, `[SEG]`'s, `<image>`'s id."""
    from transformers import AddedToken

    absent = [t for t in family.tokens if not _has_token(tokenizer, t)]
    if absent:
        raise ConversionError(
            f"the tokenizer has no {', '.join(absent)} token(s); "
            f"give the {family.name} checkpoint's own tokenizer"
        )
    if not _has_token(tokenizer, "<image>"):
        tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    if tokenizer.pad_token is None:  # as LISA's chat.py and GLaMM's inference: pad with unk
        tokenizer.pad_token = tokenizer.unk_token
    seg, image = (int(tokenizer.convert_tokens_to_ids(t)) for t in (family.tokens[0], "<image>"))
    return tokenizer, seg, image


def _has_token(tokenizer: Any, token: str) -> bool:
    token_id = tokenizer.convert_tokens_to_ids(token)
    return token_id is not None and token_id != tokenizer.unk_token_id


def image_marker(tokenizer: Any, source: dict[str, Any]) -> str:
    """`<im_start><image><im_end>` when the checkpoint was trained with those tokens, else `<image>`."""
    has = all(_has_token(tokenizer, t) for t in ("<im_start>", "<im_end>"))
    return "<im_start><image><im_end>" if source.get("mm_use_im_start_end", has) and has else "<image>"


def _grow_vocab(mapped: dict[str, torch.Tensor], rows: int) -> None:
    """Give the embedding and the LM head `rows` rows; new rows are the mean row (like transformers'
    LLaVA conversion, less the noise). Generation suppresses `<image>`, so its head row never wins."""
    for key in ("mllm.model.language_model.embed_tokens.weight", "mllm.lm_head.weight"):
        weight = mapped[key]
        if weight.shape[0] < rows:
            extra = weight.float().mean(0, keepdim=True).to(weight.dtype).expand(rows - weight.shape[0], -1)
            mapped[key] = torch.cat([weight, extra])


# -- the CLIP tower from a directory -------------------------------------------------------------


def load_vision_tower(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a transformers CLIP directory (a `CLIPModel`, as openai/clip-vit-large-patch14-336, or a
    `CLIPVisionModel`): its `vision_model.*` tensors under the LLaVA-v1 tower names, and its vision config.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ConversionError(f"no CLIP directory at {directory!r}")
    tensors = {
        CLIP_PREFIX + key.removeprefix("vision_model."): value
        for key, value in load_checkpoint(directory).items()
        if key.startswith("vision_model.")
    }
    if not tensors:
        raise ConversionError(f"{directory!r} holds no vision_model.* weights; give a CLIP model directory")
    config: dict[str, Any] = {}
    path = os.path.join(directory, "config.json")
    if os.path.isfile(path):
        with open(path) as f:
            config = json.load(f)
        config = config.get("vision_config", config)
    return tensors, config


# -- conversion ----------------------------------------------------------------------------------


def check_destination(dst: str | os.PathLike, overwrite: bool, src: str | os.PathLike) -> None:
    """Refuse a `dst` that is not a directory, holds `src`, or is not empty (unless `overwrite`)."""
    dst = os.fspath(dst)
    here, source = os.path.realpath(dst), os.path.realpath(src)
    if os.path.commonpath([here, source]) == here:  # save_pretrained may delete shards it finds there
        raise ConversionError(f"destination {dst!r} holds the checkpoint {os.fspath(src)!r}; write elsewhere")
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise ConversionError(f"destination {dst!r} exists and is not a directory")
    if os.path.isdir(dst) and os.listdir(dst) and not overwrite:
        raise ConversionError(
            f"destination {dst!r} is not empty; give an empty or new directory, or --overwrite "
            "(overwrite=True) to write over its files"
        )


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    family: CheckpointFamily,
    *,
    tokenizer: Any = None,
    vision_tower: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
    config_overrides: dict[str, dict[str, Any]] | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> SegModelConfig:
    """Convert the `family` checkpoint at `src` into a `SegModel` saved at `dst`; return its config.

    Args:
        src: a checkpoint directory (shards + `config.json` + tokenizer) or one weights file.
        dst: output directory, new or empty (or any directory with `overwrite`), never one holding
            `src`; load it with `SegModel.from_pretrained(dst)`.
        family: the checkpoint's layout (`convert_lisa.LISA`, `convert_glamm.GLAMM`).
        tokenizer: a tokenizer or a path to one; default: the one in `src`.
        vision_tower: a CLIP directory whose vision weights (and head count) replace any in `src`.
        dtype: cast the weights (default: keep the checkpoint's).
        config_overrides: per-section values the checkpoint cannot tell, e.g.
            `{"vision_config": {"num_attention_heads": 16}}`; sections: text_config, vision_config,
            llava_config, sam_vision_config, sam_prompt_encoder_config, sam_mask_decoder_config,
            seg_config.
        log: receives one line per part of the checkpoint that is dropped or replaced.
    """
    from transformers import AutoTokenizer

    src = os.fspath(src)
    if not os.path.exists(src):
        raise ConversionError(f"no checkpoint at {src!r}")
    check_destination(dst, overwrite, src)
    source: dict[str, Any] = {}
    config_path = os.path.join(src, "config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            source = json.load(f)
    if os.path.isdir(src):
        _shard_files(src)  # no weights: say so before the tokenizer's own, less clear, complaint
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        where = os.fspath(tokenizer) if tokenizer is not None else src
        if not os.path.isdir(where):
            raise ConversionError(f"no tokenizer directory at {where!r}; pass tokenizer=PATH")
        try:
            tokenizer = AutoTokenizer.from_pretrained(where)
        except (OSError, ValueError) as err:
            raise ConversionError(f"cannot load a tokenizer from {where!r}: {err}") from err
    tokenizer, seg_id, image_id = _prepare_tokenizer(tokenizer, family)

    # The checkpoints' config.json uses LLaMA's field names, so text overrides can stand in for it.
    source.update((config_overrides or {}).get("text_config", {}))
    state = load_checkpoint(src)
    for prefix, reason in family.skipped.items():
        if count := sum(key.startswith(prefix) for key in state):
            log(f"not converted: {count} tensors under {prefix}* ({reason})")
    clip = None
    if vision_tower is not None:
        tower, clip = load_vision_tower(vision_tower)
        if replaced := [key for key in state if key.startswith(CLIP_PREFIX)]:
            log(f"the CLIP tower of {os.fspath(vision_tower)} replaces {len(replaced)} CLIP tensors of {src}")
        state = {k: v for k, v in state.items() if not k.startswith(CLIP_PREFIX)} | tower
    elif not any(key.startswith(CLIP_PREFIX) for key in state):
        raise ConversionError(
            f"{src!r} holds no CLIP vision tower ({CLIP_PREFIX}*); give the CLIP directory the "
            f"{family.name} model was trained with as vision_tower= (convert-glamm: --vision-tower CLIP_DIR)"
        )
    mapped, origin = map_keys(state, family)
    rows = max(mapped["mllm.model.language_model.embed_tokens.weight"].shape[0], image_id + 1)
    _grow_vocab(mapped, rows)
    kwargs = infer_config(mapped, source, seg_id, image_id, rows, clip)
    if "mllm.model.multi_modal_projector.linear_2.weight" not in mapped:
        width = kwargs["llava_config"]["text_config"]["hidden_size"]
        like = mapped["mllm.model.multi_modal_projector.linear_1.weight"]
        mapped["mllm.model.multi_modal_projector.linear_2.weight"] = torch.eye(width, dtype=like.dtype)
        mapped["mllm.model.multi_modal_projector.linear_2.bias"] = torch.zeros(width, dtype=like.dtype)
    kwargs.update(family.prompt(tokenizer, source))
    _apply_overrides(kwargs, config_overrides)
    config = SegModelConfig(**kwargs)

    with torch.device("meta"):
        model = SegModel(config)
    expected = set(model.state_dict())
    missing = sorted(expected - set(mapped))
    unexpected = sorted(origin.get(k, k) for k in set(mapped) - expected)
    if missing or unexpected:
        raise ConversionError(
            f"the checkpoint does not fill the model: missing model weights {missing[:20]}, "
            f"checkpoint keys with no model weight {unexpected[:20]}"
        )
    shapes = [
        f"{origin.get(k, k)} -> {k}: checkpoint {tuple(mapped[k].shape)}, model {tuple(t.shape)}"
        for k, t in model.state_dict().items()
        if tuple(mapped[k].shape) != tuple(t.shape)
    ]
    if shapes:
        raise ConversionError(f"shape mismatch (fix with config_overrides): {shapes[:10]}")
    if dtype is not None:
        mapped = {k: v.to(dtype) if v.is_floating_point() else v for k, v in mapped.items()}
    model.load_state_dict(mapped, assign=True, strict=True)
    model.tokenizer = tokenizer
    model.save_pretrained(dst)
    return config
