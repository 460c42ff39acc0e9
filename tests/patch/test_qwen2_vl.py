"""Token plans inside tiny Qwen2-VL and Qwen2.5-VL models: identity, M-RoPE positions, scores, cached
decode, batches, and the methods the family refuses."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_qwen import FAMILIES, IMAGE, patchify, qwen_inputs, qwen_prompt, tiny_qwen

import segprune
from conftest import EXAMPLES
from segprune.families import family_of
from segprune.methods.replay import ReplayConfig
from segprune.pixels import CLIP_MEAN, CLIP_STD

# The methods the family runs (no CLS row), sized for 16 image tokens and 4 layers as in conftest.
APPLICABLE = ["altp", "csp", "fastv", "pdrop"]


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
def test_family_answers_per_image_for_images_of_different_sizes(qwen):
    # 16x8 px: 8x4 patches, 4x2 tokens; 8x12 px: 4x6 patches, 2x3 tokens.
    inputs = qwen_prompt([(16, 8), (8, 12)])
    family = family_of(qwen)
    pixels = (inputs["pixel_values"], inputs["image_grid_thw"])
    assert family.image_grids(pixels) == [(4, 2), (2, 3)]
    assert family.grid(pixels) is None and family.selector_pixels(pixels) is None
    assert family.count_images(pixels) == 2
    boxes = family.token_boxes(pixels, 1)
    assert boxes.tolist() == [
        [0, 0, 4, 4],
        [0, 4, 4, 8],
        [0, 8, 4, 12],
        [4, 0, 8, 4],
        [4, 4, 8, 8],
        [4, 8, 8, 12],
    ]
    first, second = family.image_pixels(pixels, 0), family.image_pixels(pixels, 1)
    assert first.shape == (1, 3, 16, 8) and second.shape == (1, 3, 8, 12)
    assert torch.equal(patchify(first), inputs["pixel_values"][:32])  # 8x4 patches of the first
    assert torch.equal(patchify(second), inputs["pixel_values"][32:])
    with pytest.raises(ValueError, match="image 0 has image_grid_thw t=2; images have t=1"):
        family.image_grids((inputs["pixel_values"], torch.tensor([[2, 8, 4]])))


@torch.no_grad()
def test_video_inputs_are_refused(qwen):
    """Images of different sizes and several images per prompt run (test_per_sample.py); videos do not."""
    segprune.prune_(qwen, EXAMPLES["fastv"])
    inputs = qwen_inputs()
    with pytest.raises(ValueError, match="video inputs are not supported"):
        qwen(**inputs, video_grid_thw=torch.tensor([[2, 4, 4]]))
    with pytest.raises(ValueError, match="video inputs are not supported"):
        qwen(**inputs, pixel_values_videos=torch.zeros(32, 24))
