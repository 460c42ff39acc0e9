"""Token plans inside tiny Qwen2-VL and Qwen2.5-VL models: identity, M-RoPE positions, scores, cached
decode, batches, and the methods the family refuses."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import segprune
from conftest import EXAMPLES
from segprune.families import family_of
from segprune.methods.replay import ReplayConfig
from segprune.pixels import CLIP_MEAN, CLIP_STD

IMAGE, VIDEO, START, END, PAD = 3, 4, 5, 6, 0
PATCH, MERGE, TEMPORAL = 2, 2, 2
FAMILIES = ["qwen2_vl", "qwen2_5_vl"]
# The methods the family runs (no CLS row), sized for 16 image tokens and 4 layers as in conftest.
APPLICABLE = ["altp", "csp", "fastv", "pdrop"]


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


@pytest.fixture(scope="module", params=FAMILIES)
def qwen(request):
    return tiny_qwen(request.param)


@pytest.fixture(autouse=True)
def _unpruned(qwen):
    yield
    segprune.unprune(qwen)


def greedy(model, inputs, steps=4):
    out = model.generate(
        **inputs, max_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    return out.sequences, torch.stack(out.logits, dim=1)


def extended(inputs, sequences):
    """The inputs of one uncached forward over prompt + generated tokens."""
    batch, new = sequences.shape[0], sequences.shape[1] - inputs["input_ids"].shape[1]
    ones = torch.ones(batch, new, dtype=torch.long)
    return {
        **inputs,
        "input_ids": sequences,
        "attention_mask": torch.cat([inputs["attention_mask"], ones], dim=1),
        "mm_token_type_ids": torch.cat([inputs["mm_token_type_ids"], 0 * ones.int()], dim=1),
    }


@torch.no_grad()
@pytest.mark.parametrize("name", APPLICABLE)
def test_keep_all_is_identity(qwen, name):
    inputs = qwen_inputs()
    reference = qwen(**inputs).logits
    ref_tokens, _ = greedy(qwen, inputs)
    segprune.prune_(qwen, EXAMPLES[name].keep_all())
    logits = qwen(**inputs).logits
    valid = inputs["attention_mask"].bool()
    assert (logits - reference)[valid].abs().max() <= 1e-5
    tokens, _ = greedy(qwen, inputs)
    assert torch.equal(tokens, ref_tokens)


@torch.no_grad()
@pytest.mark.parametrize("name", APPLICABLE)
def test_pruning_changes_the_output(qwen, name):
    inputs = qwen_inputs()
    reference = qwen(**inputs).logits
    segprune.prune_(qwen, EXAMPLES[name])
    assert (qwen(**inputs).logits - reference)[:, -1].abs().max() > 1e-3
    assert segprune.stats(qwen).image_tokens == 16


@torch.no_grad()
@pytest.mark.parametrize("name", APPLICABLE)
def test_cached_decode_equals_recompute_with_same_live_sets(qwen, name):
    inputs = qwen_inputs()
    segprune.prune_(qwen, EXAMPLES[name])
    sequences, step_logits = greedy(qwen, inputs, steps=4)
    kept = segprune.stats(qwen)
    segprune.prune_(qwen, ReplayConfig.from_stats(kept))
    full = qwen(**extended(inputs, sequences), use_cache=False).logits
    prompt = inputs["input_ids"].shape[1]
    assert (full[:, prompt - 1 : prompt + 3] - step_logits).abs().max() <= 1e-4
    for layer, indices in enumerate(segprune.stats(qwen).kept_indices):
        assert torch.equal(indices, kept.kept_indices[layer])


@torch.no_grad()
@pytest.mark.parametrize("name", APPLICABLE)
def test_batch_equals_single_samples(qwen, name):
    inputs = qwen_inputs()
    segprune.prune_(qwen, EXAMPLES[name])
    batched = qwen(**inputs).logits
    batched_kept = segprune.stats(qwen).kept_indices
    per_image = inputs["pixel_values"].shape[0] // 2
    for b in range(2):
        valid = inputs["attention_mask"][b].bool()
        single = {
            key: inputs[key][b : b + 1, valid] for key in ("input_ids", "attention_mask", "mm_token_type_ids")
        }
        single["pixel_values"] = inputs["pixel_values"][b * per_image : (b + 1) * per_image]
        single["image_grid_thw"] = inputs["image_grid_thw"][b : b + 1]
        logits = qwen(**single).logits
        assert (logits[0] - batched[b, valid]).abs().max() <= 1e-4
        for layer, indices in enumerate(segprune.stats(qwen).kept_indices):
            assert torch.equal(indices[0], batched_kept[layer][b])


@torch.no_grad()
def test_scores_equal_eager_attention_rows(qwen):
    kind = qwen.config.model_type
    eager = tiny_qwen(kind, attn_implementation="eager")
    eager.load_state_dict(qwen.state_dict())
    inputs = qwen_inputs()
    config = EXAMPLES["fastv"]
    score = config.plan(16, 4).steps[0].score
    attention = eager(**inputs, output_attentions=True).attentions[score.layer]
    image = inputs["input_ids"] == IMAGE
    expected = torch.stack([attention[b, :, -1, image[b]].mean(0) for b in range(2)])
    segprune.prune_(qwen, config)
    qwen(**inputs)
    assert torch.allclose(segprune.stats(qwen).scores[0], expected, atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_a_drop_before_the_llm_keeps_the_original_3d_positions(qwen):
    """Replaying a layer-0 drop equals the stock decoder fed only the kept tokens at their own M-RoPE ids."""
    inputs = qwen_inputs(prompt_lengths=(6,))  # no padding
    gen = torch.Generator().manual_seed(3)
    kept = torch.stack([torch.randperm(16, generator=gen)[:5].sort().values for _ in range(2)])
    segprune.prune_(qwen, ReplayConfig(kept=(kept,) * 4))
    logits = qwen(**inputs).logits
    segprune.unprune(qwen)

    seen = {}

    def grab(module, args, kwargs):
        seen.update(embeds=kwargs["inputs_embeds"], positions=kwargs["position_ids"])

    hook = qwen.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    qwen(**inputs)
    hook.remove()
    positions = seen["positions"][-3:]  # (3, batch, L), without generate's text row
    image = inputs["input_ids"] == IMAGE
    live = []
    for b in range(2):
        row = torch.ones(image.shape[1], dtype=torch.bool)
        image_seq = image[b].nonzero().squeeze(1)
        row[image_seq] = False
        row[image_seq[kept[b]]] = True
        live.append(row.nonzero().squeeze(1))
    live = torch.stack(live)
    out = qwen.model.language_model(
        inputs_embeds=seen["embeds"].gather(1, live[..., None].expand(-1, -1, 32)),
        position_ids=positions.gather(2, live[None].expand(3, -1, -1)),
        use_cache=False,
    ).last_hidden_state
    reference = qwen.lm_head(out)
    assert (logits.gather(1, live[..., None].expand(-1, -1, 64)) - reference)[:, -1].abs().max() <= 1e-5
    assert (logits[:, -1] - reference[:, -1]).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["visionzip", "prumerge", "csp-cls"])
def test_methods_needing_a_cls_row_are_refused(qwen, name):
    config = dataclasses.replace(EXAMPLES["csp"], cluster="cls") if name == "csp-cls" else EXAMPLES[name]
    method = config.name
    with pytest.raises(
        ValueError, match=rf"method '{method}' .*'qwen2_vl' family's vision tower does not have"
    ):
        segprune.prune_(qwen, config)


@torch.no_grad()
def test_family_answers(qwen):
    inputs = qwen_inputs(size=(16, 8))  # 8x4 patches of 2 px, merged into 4x2 tokens of 4 px
    family = family_of(qwen)
    pixels = (inputs["pixel_values"], inputs["image_grid_thw"])
    assert family.grid(pixels) == (4, 2)
    boxes = family.token_boxes(pixels)
    assert boxes[:3].tolist() == [[0, 0, 4, 4], [0, 4, 4, 8], [4, 0, 8, 4]]
    assert family.count_images(pixels) == 2
    rgb = family.rgb(pixels)
    assert rgb.shape == (2, 3, 16, 8)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert torch.allclose(patchify((rgb - mean) / std), inputs["pixel_values"], atol=1e-5)


@torch.no_grad()
def test_unsupported_inputs_are_refused(qwen):
    segprune.prune_(qwen, EXAMPLES["fastv"])
    small, large = qwen_inputs(batch=1, size=(8, 8)), qwen_inputs(batch=1, size=(16, 16))
    length = max(small["input_ids"].shape[1], large["input_ids"].shape[1])

    def left_pad(x):
        return torch.cat([torch.zeros(1, length - x.shape[1], dtype=x.dtype), x], dim=1)

    mixed = {
        key: torch.cat([left_pad(small[key]), left_pad(large[key])])
        for key in ("input_ids", "attention_mask", "mm_token_type_ids")
    }
    mixed["pixel_values"] = torch.cat([small["pixel_values"], large["pixel_values"]])
    mixed["image_grid_thw"] = torch.cat([small["image_grid_thw"], large["image_grid_thw"]])
    with pytest.raises(ValueError, match=r"same number of image tokens.*got \[4, 16\]"):
        qwen(**mixed)
    inputs = qwen_inputs()
    with pytest.raises(ValueError, match="video inputs are not supported"):
        qwen(**inputs, video_grid_thw=torch.tensor([[2, 4, 4]]))
