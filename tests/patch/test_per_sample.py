"""Batches whose samples differ, in masked slots: Qwen2-VL / Qwen2.5-VL images of different sizes,
several images in one prompt, and a prompt without an image beside one with; each sample of a
left-padded batch must equal that sample alone (logits of its valid positions, live sets, greedy
tokens and cached decode), and a multi-image prompt must equal an independent reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_qwen import FAMILIES, IMAGE, left_padded_batch, llava_prompt, qwen_prompt, tiny_qwen

import segprune
from conftest import EXAMPLES
from segprune.families import family_of
from segprune.methods.altp import ALTPSelector
from segprune.methods.counts import keep_count
from segprune.methods.plan import Keep, SelectContext
from segprune.methods.select import TopK
from segprune.patch.samples import select_sample
from segprune.patch.state import ImagePart, SampleLayout

# Every method the family runs (no CLS row), with its variants, and each one's keep-all.
CASES = {
    "fastv": EXAMPLES["fastv"],
    "pdrop-renumber": EXAMPLES["pdrop"],
    "pdrop-original": dataclasses.replace(EXAMPLES["pdrop"], positions="original"),
    "altp-ddf": EXAMPLES["altp"],
    "altp-ddc": dataclasses.replace(EXAMPLES["altp"], allocation="ddc"),
    "csp-uniform": EXAMPLES["csp"],
    "csp-random": dataclasses.replace(EXAMPLES["csp"], cluster="random"),
    "csp-seg_first": dataclasses.replace(EXAMPLES["csp"], cluster="seg_first", instance_regions=3),
}
CASES.update({f"keep-all-{name}": EXAMPLES[name].keep_all() for name in ("altp", "csp", "fastv", "pdrop")})
# 16x16 px: 8x8 patches of 2 px merged into 4x4 = 16 tokens; 12x8 px: 3x2 = 6 tokens.
BIG, SMALL = (16, 16), (12, 8)


@pytest.fixture(scope="module", params=FAMILIES)
def qwen_model(request):
    return tiny_qwen(request.param)


@pytest.fixture
def qwen(qwen_model):
    yield qwen_model
    segprune.unprune(qwen_model)


@pytest.fixture(scope="module")
def eager_qwen(qwen_model):
    """The same weights on eager attention (for attention maps and the backend check)."""
    eager = tiny_qwen(qwen_model.config.model_type, attn_implementation="eager")
    eager.load_state_dict(qwen_model.state_dict())
    return eager


def greedy(model, inputs, steps=4):
    out = model.generate(
        **inputs, max_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    return out.sequences[:, inputs["input_ids"].shape[1] :], torch.stack(out.logits, dim=1)


def assert_each_sample_alone(model, config, samples, steps=2):
    """The left-padded batch of `samples` equals each sample run alone, prefill and cached decode."""
    batch = left_padded_batch(samples)
    assert not batch["attention_mask"].all(), "the batch must hold left padding"
    segprune.prune_(model, config)
    logits = model(**batch).logits
    stats = segprune.stats(model)
    tokens, step_logits = greedy(model, batch, steps)
    for b, sample in enumerate(samples):
        valid = batch["attention_mask"][b].bool()
        alone = model(**sample).logits
        alone_stats = segprune.stats(model)
        assert (logits[b, valid] - alone[0]).abs().max() <= 1e-4, f"sample {b}"
        assert stats.live_tokens[:, b].tolist() == alone_stats.live_tokens[:, 0].tolist()
        for layer, kept in enumerate(stats.kept_of(b)):
            assert torch.equal(kept, alone_stats.kept_indices[layer][0]), f"sample {b}, layer {layer}"
        alone_tokens, alone_logits = greedy(model, sample, steps)
        assert torch.equal(tokens[b], alone_tokens[0]), f"sample {b}"
        assert (step_logits[b] - alone_logits[0]).abs().max() <= 1e-4, f"sample {b}"
    return stats


@torch.no_grad()
@pytest.mark.parametrize("name", sorted(CASES))
def test_images_of_different_sizes_equal_each_sample_alone(qwen, name):
    config = CASES[name]
    samples = [qwen_prompt([BIG], n_text=5, seed=1), qwen_prompt([SMALL], n_text=8, seed=2)]
    stats = assert_each_sample_alone(qwen, config, samples)
    # Exact budgets per sample: each follows the plan for its own N.
    assert stats.image_counts.tolist() == [16, 6] and stats.image_tokens == 16
    expected = [config.plan(16, 4).live_counts(), config.plan(6, 4).live_counts()]
    assert stats.live_tokens.t().tolist() == expected
    assert stats.kept_indices[-1].shape[1] == max(expected[0][-1], expected[1][-1])
    assert 0 < stats.flops_fraction() <= 1


@torch.no_grad()
@pytest.mark.parametrize("name", ["fastv", "altp-ddf", "csp-seg_first", "pdrop-renumber"])
def test_a_multi_image_prompt_in_a_batch_equals_each_sample_alone(qwen, name):
    samples = [qwen_prompt([BIG, SMALL], n_text=4, seed=3), qwen_prompt([SMALL], n_text=9, seed=4)]
    stats = assert_each_sample_alone(qwen, CASES[name], samples)
    assert stats.image_counts.tolist() == [22, 6]


@torch.no_grad()
def test_a_prompt_without_an_image_beside_one_with(qwen):
    samples = [qwen_prompt([BIG], n_text=3, seed=5), qwen_prompt([], n_text=12, seed=6)]
    stats = assert_each_sample_alone(qwen, CASES["fastv"], samples)
    assert stats.live_tokens[:, 1].tolist() == [0] * 4


def hidden_inputs(model, inputs):
    """The decoder's input embeddings and `(3, 1, L)` M-RoPE ids, as the unpruned model builds them."""
    seen = {}

    def grab(module, args, kwargs):
        seen.update(embeds=kwargs["inputs_embeds"], positions=kwargs["position_ids"][-3:])

    hook = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(**inputs)
    finally:
        hook.remove()
    return seen["embeds"], seen["positions"]


def reference_logits(model, inputs, kept: list[torch.Tensor]) -> torch.Tensor:
    """Logits of one prompt run through the stock decoder layers by hand: layer l sees the text and
    the image tokens `kept[l]` (indices over all the prompt's image tokens), at their own M-RoPE ids;
    a row not live at l keeps the hidden state it had."""
    lm = model.model.language_model
    embeds, positions = hidden_inputs(model, inputs)
    image = (inputs["input_ids"] == IMAGE)[0]
    image_seq = image.nonzero().squeeze(1)
    full = embeds.clone()
    for layer, indices in zip(lm.layers, kept, strict=True):
        live_mask = ~image
        live_mask[image_seq[indices]] = True
        live = live_mask.nonzero().squeeze(1)
        hidden, pos = full[:, live], positions[:, :, live]
        allowed = live[None, :] <= live[:, None]
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
        out = layer(hidden, attention_mask=mask[None, None], position_embeddings=lm.rotary_emb(hidden, pos))
        full[:, live] = out[0] if isinstance(out, tuple) else out
    return model.lm_head(lm.norm(full))


def eager_scores(eager, inputs, layer: int) -> torch.Tensor:
    """`(n_image,)` attention of the last token to each image token in `layer`, eager, mean over heads."""
    attention = eager(**inputs, output_attentions=True).attentions[layer]
    image = (inputs["input_ids"] == IMAGE)[0]
    return attention[0, :, -1, image].mean(0)


@torch.no_grad()
def test_a_multi_image_prompt_ranks_all_its_image_tokens_together(qwen, eager_qwen):
    """FastV on two images: one top-k over both images' 22 tokens, round(0.25 * 22) = 6 kept."""
    config = CASES["fastv"]
    inputs = qwen_prompt([BIG, SMALL], n_text=4, seed=3)
    scores = eager_scores(eager_qwen, inputs, config.layer - 1)
    count = keep_count(config.keep_ratio, 22)
    assert count == 6
    top = torch.sort(scores, descending=True, stable=True).indices[:count].sort().values
    kept = [torch.arange(22)] * config.layer + [top] * (4 - config.layer)
    reference = reference_logits(qwen, inputs, kept)
    segprune.prune_(qwen, config)
    logits = qwen(**inputs).logits
    stats = segprune.stats(qwen)
    assert torch.allclose(stats.scores[0][0], scores, atol=1e-6, rtol=1e-5)
    assert torch.equal(stats.kept_indices[-1][0], top)
    live = torch.ones(inputs["input_ids"].shape[1], dtype=torch.bool)
    live[(inputs["input_ids"][0] == IMAGE).nonzero().squeeze(1)] = False
    assert (logits[0, -1] - reference[0, -1]).abs().max() <= 1e-5
    assert (logits[0, live] - reference[0, live]).abs().max() <= 1e-5


@torch.no_grad()
def test_a_multi_image_prompt_cuts_superpixels_per_image(qwen, eager_qwen):
    """ALTP on two images: the budget of 6 split 4 : 2 over 16 and 6 tokens (largest remainder of
    6 * 16/22 = 4.36 and 6 * 6/22 = 1.64), then ALTP on each image's own grid and pixels."""
    config = CASES["altp-ddf"]
    inputs = qwen_prompt([BIG, SMALL], n_text=4, seed=3)
    scores = eager_scores(eager_qwen, inputs, config.layer - 1)
    pixels = (inputs["pixel_values"], inputs["image_grid_thw"])
    kept = []
    for i, (grid, quota, offset) in enumerate([((4, 4), 4, 0), ((3, 2), 2, 16)]):
        image = family_of(qwen).image_pixels(pixels, i)  # its own size: 4 px per token
        assert image.shape == (1, 3, 4 * grid[0], 4 * grid[1])
        n = grid[0] * grid[1]
        context = SelectContext(n_image=n, grid=grid, pixel_values=image)
        own = scores[offset : offset + n][None]
        kept.append(ALTPSelector(config)(own, torch.arange(n)[None], quota, context)[0] + offset)
    kept = torch.cat(kept)
    segprune.prune_(qwen, config)
    logits = qwen(**inputs).logits
    stats = segprune.stats(qwen)
    assert torch.equal(stats.kept_indices[-1][0], kept)
    reference = reference_logits(qwen, inputs, [torch.arange(22)] * config.layer + [kept] * 2)
    assert (logits[0, -1] - reference[0, -1]).abs().max() <= 1e-5


@torch.no_grad()
def test_eager_attention_runs_masked_slots_as_sdpa_does(qwen, eager_qwen):
    eager = eager_qwen
    batch = left_padded_batch([qwen_prompt([BIG], n_text=5, seed=1), qwen_prompt([SMALL], n_text=8, seed=2)])
    valid = batch["attention_mask"].bool()
    outputs = []
    for model in (qwen, eager):
        segprune.prune_(model, CASES["pdrop-renumber"])
        outputs.append(model(**batch).logits)
        segprune.unprune(model)
    assert (outputs[0] - outputs[1])[valid].abs().max() <= 1e-4


@torch.no_grad()
def test_layout_errors_name_the_limit(qwen):
    segprune.prune_(qwen, dataclasses.replace(EXAMPLES["csp"], cluster_tokens=8))
    batch = left_padded_batch([qwen_prompt([BIG], seed=1), qwen_prompt([SMALL], seed=2)])
    with pytest.raises(
        ValueError, match=r"cluster_tokens=8 exceeds the 6 image tokens; valid: 1 <= value <= 6"
    ):
        qwen(**batch)


@torch.no_grad()
@pytest.mark.parametrize("name", ["fastv", "altp-ddf"])
def test_llava_prompts_with_several_images(model, name):
    samples = [llava_prompt(model, 2, n_text=3, seed=7), llava_prompt(model, 1, n_text=6, seed=8)]
    batch = left_padded_batch(samples)
    try:
        stats = assert_each_sample_alone(model, CASES[name], samples, steps=3)
    finally:
        segprune.unprune(model)
    assert stats.image_counts.tolist() == [32, 16]
    assert stats.live_tokens[-1].tolist() == [8, 4]  # round(0.25 * 32), round(0.25 * 16)
    assert batch["pixel_values"].shape[0] == 3


@torch.no_grad()
def test_cls_methods_need_one_image_per_prompt(model):
    samples = [llava_prompt(model, 2, n_text=3, seed=7), llava_prompt(model, 1, n_text=6, seed=8)]
    segprune.prune_(model, EXAMPLES["visionzip"])
    try:
        with pytest.raises(
            ValueError, match="sample 0 holds 2 images; methods that read the vision tower's CLS"
        ):
            model(**left_padded_batch(samples))
    finally:
        segprune.unprune(model)


def test_a_step_that_chooses_its_own_count_names_the_sample_of_several_images():
    parts = [ImagePart(0, SelectContext(n_image=4)), ImagePart(4, SelectContext(n_image=2))]
    step = Keep(layer=1, count=3, select=TopK(), adaptive=True)
    with pytest.raises(
        ValueError, match="sample 1 holds 2 images; steps that choose their own count or merge need one"
    ):
        select_sample(
            None,
            step,
            torch.rand(1, 6),
            torch.arange(6)[None],
            SampleLayout(6, None, parts),
            None,
            None,
            index=1,
        )


@torch.no_grad()
def test_masked_slots_fix_each_layers_shift_when_the_prefill_ends(qwen):
    segprune.prune_(qwen, CASES["pdrop-renumber"])
    qwen(**left_padded_batch([qwen_prompt([BIG], n_text=5, seed=1), qwen_prompt([SMALL], n_text=8, seed=2)]))
    adapter = segprune.patch._adapter(qwen)
    state, stats = adapter.state, segprune.stats(qwen)
    expected = [
        tuple(n - c for n, c in zip([16, 6], live, strict=True)) for live in stats.live_tokens.tolist()
    ]
    assert state.shifts == expected
    for shift, by in state.shift_by.items():  # made once, (batch, 1) on the model's device
        assert by.shape == (2, 1) and by[:, 0].tolist() == list(shift)
    assert set(state.shift_by) == set(expected)
    assert not hasattr(adapter, "_vision_rows")  # nothing of a prefill's layout outlives it
