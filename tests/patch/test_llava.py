"""Token plans inside tiny transformers LLaVA models: identity, KV cache, scores, budgets, undo."""

from __future__ import annotations

import pytest
import torch

import segprune
from conftest import EXAMPLES, HostSyncCounter, method_names, position_ids_of
from segprune import METHODS, flops
from segprune.methods.plan import Keep
from segprune.methods.replay import ReplayConfig
from segprune.models import tiny_llava, tiny_llava_inputs
from segprune.patch.transformers_api import cache_kwargs, output_cache

N_IMAGE = 16


@pytest.fixture(autouse=True)
def _unpruned(model, eager_model):
    yield
    segprune.unprune(model)
    segprune.unprune(eager_model)


def uncached_step_logits(model, inputs, sequences, steps):
    """Logits that predicted each of the last `steps` tokens of `sequences`, from one uncached forward."""
    batch = sequences.shape[0]
    mask = torch.cat([inputs["attention_mask"], torch.ones(batch, steps, dtype=torch.long)], dim=1)
    full = model(
        input_ids=sequences,
        attention_mask=mask,
        pixel_values=inputs["pixel_values"],
        position_ids=position_ids_of(mask),
        use_cache=False,
    ).logits
    prompt = inputs["input_ids"].shape[1]
    return full[:, prompt - 1 : prompt + steps - 1]


def greedy(model, inputs, steps=4):
    out = model.generate(
        **inputs, max_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    return out.sequences, torch.stack(out.logits, dim=1)


@torch.no_grad()
@pytest.mark.parametrize("name", method_names())
def test_keep_all_is_identity(model, inputs, name):
    reference = model(**inputs).logits
    ref_tokens, _ = greedy(model, inputs)
    segprune.prune_(model, METHODS[name].keep_all())
    logits = model(**inputs).logits
    valid = inputs["attention_mask"].bool()
    assert logits.shape == reference.shape
    assert (logits - reference)[valid].abs().max() <= 1e-5
    tokens, _ = greedy(model, inputs)
    assert torch.equal(tokens, ref_tokens)


@torch.no_grad()
@pytest.mark.parametrize("name", method_names())
def test_pruning_changes_the_output(model, inputs, name):
    reference = model(**inputs).logits
    segprune.prune_(model, EXAMPLES[name])
    logits = model(**inputs).logits
    last = (logits - reference)[:, -1].abs().max()
    assert last > 1e-3, "pruning left the last token's logits unchanged: the plan did not run"


@torch.no_grad()
@pytest.mark.parametrize("name", method_names())
def test_cached_decode_equals_recompute_with_same_live_sets(model, inputs, name):
    if not EXAMPLES[name].replayable:
        pytest.skip("ReplayConfig replays live sets, not merged hidden states; see the merging-method test")
    segprune.prune_(model, EXAMPLES[name])
    sequences, step_logits = greedy(model, inputs, steps=4)
    kept = segprune.stats(model)  # stats of the prefill; decode steps do not replace them
    assert kept.live_tokens.shape == (4, 2)

    # Recompute the whole sequence in one uncached forward with the prefill's live sets replayed.
    segprune.prune_(model, ReplayConfig.from_stats(kept))
    assert (uncached_step_logits(model, inputs, sequences, steps=4) - step_logits).abs().max() <= 1e-4
    for layer, indices in enumerate(segprune.stats(model).kept_indices):
        assert torch.equal(indices, kept.kept_indices[layer])


@torch.no_grad()
@pytest.mark.parametrize("name", method_names())
def test_cached_decode_equals_uncached_forward_for_merging_methods(model, inputs, name):
    """A method that only acts before the LLM chooses and merges from the image alone, so one uncached
    forward of the same pruned model on prompt + generated tokens has the prefill's live sets and merged
    states: cached decode must reproduce its logits."""
    config = EXAMPLES[name]
    if config.replayable:
        pytest.skip("checked against a replay by test_cached_decode_equals_recompute_with_same_live_sets")
    assert all(step.layer == 0 for step in config.plan(N_IMAGE, 4).steps), (
        "steps after layer 0 may depend on the text; this method needs a replay of merged states"
    )
    segprune.prune_(model, config)
    sequences, step_logits = greedy(model, inputs, steps=4)
    kept = segprune.stats(model).kept_indices
    assert (uncached_step_logits(model, inputs, sequences, steps=4) - step_logits).abs().max() <= 1e-4
    for layer, indices in enumerate(segprune.stats(model).kept_indices):
        assert torch.equal(indices, kept[layer])


@torch.no_grad()
@pytest.mark.parametrize("name", method_names())
def test_batch_equals_single_samples(model, inputs, name):
    """Each sample of a left-padded batch is pruned and scored as if it ran alone."""
    segprune.prune_(model, EXAMPLES[name])
    batched = model(**inputs).logits
    batched_kept = segprune.stats(model).kept_indices
    for b in range(2):
        valid = inputs["attention_mask"][b].bool()
        single = {
            "input_ids": inputs["input_ids"][b : b + 1, valid],
            "attention_mask": inputs["attention_mask"][b : b + 1, valid],
            "pixel_values": inputs["pixel_values"][b : b + 1],
        }
        logits = model(**single).logits
        assert (logits[0] - batched[b, valid]).abs().max() <= 1e-4
        for layer, indices in enumerate(segprune.stats(model).kept_indices):
            assert torch.equal(indices[0], batched_kept[layer][b])


@torch.no_grad()
@pytest.mark.parametrize("name", method_names())
def test_live_counts_kept_indices_and_cache_follow_the_plan(model, inputs, name):
    config = EXAMPLES[name]
    segprune.prune_(model, config)
    out = model(**inputs, use_cache=True)
    stats = segprune.stats(model)
    expected = config.plan(N_IMAGE, 4).live_counts()
    assert stats.image_tokens == N_IMAGE
    assert stats.live_tokens.tolist() == [[c, c] for c in expected]
    length = inputs["input_ids"].shape[1]
    for layer, indices in enumerate(stats.kept_indices):
        assert indices.shape == (2, expected[layer])
        assert indices.dtype == torch.long
        assert bool((indices[:, 1:] > indices[:, :-1]).all()), "indices must be sorted and unique"
        assert int(indices.min()) >= 0 and int(indices.max()) < N_IMAGE
        # The layer's KV cache holds only its live tokens (all text tokens, padding included).
        keys = output_cache(model, out).layers[layer].keys
        assert keys.shape[-2] == length - N_IMAGE + expected[layer]
    assert stats.n_avg == sum(expected) / len(expected)
    dense = flops.decoder_flops([N_IMAGE] * 4, stats.dims, float(stats.text_tokens.float().mean()), "csp")
    assert 0 < stats.flops_csp < dense
    assert stats.flops_fraction("csp") == pytest.approx(stats.flops_csp / dense)
    assert 0 < stats.flops_fraction("csp") < 1


@torch.no_grad()
@pytest.mark.parametrize("name", method_names())
def test_scores_equal_eager_attention_rows(model, eager_model, inputs, name):
    """The single-row recompute gives exactly the eager attention row the method ranks by."""
    config = EXAMPLES[name]
    plan = config.plan(N_IMAGE, 4)
    first = plan.steps[0]
    if not (isinstance(first, Keep) and first.score is not None):
        pytest.skip(f"{name}'s first step does not rank by LLM attention; its own tests check its scores")
    score = plan.steps[0].score
    eager_model.load_state_dict(model.state_dict())
    out = eager_model(**inputs, output_attentions=True)
    attention = out.attentions[score.layer]  # (batch, heads, L, L)
    image = inputs["input_ids"] == eager_model.config.image_token_id
    expected = torch.stack([attention[b, :, -1, image[b]].mean(0) for b in range(2)])

    segprune.prune_(model, config)
    model(**inputs)
    scores = segprune.stats(model).scores[0]
    assert scores.shape == (2, N_IMAGE)
    assert torch.allclose(scores, expected, atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_fastv_keeps_the_top_tokens_of_the_scores(model, inputs):
    segprune.prune_(model, EXAMPLES["fastv"])
    model(**inputs)
    stats = segprune.stats(model)
    expected = stats.scores[0].topk(4).indices.sort().values
    assert torch.equal(stats.kept_indices[2], expected)
    assert torch.equal(stats.kept_indices[0], torch.arange(N_IMAGE).expand(2, -1))


@torch.no_grad()
def test_pdrop_stages_nest(model, inputs):
    segprune.prune_(model, EXAMPLES["pdrop"])
    model(**inputs)
    kept = segprune.stats(model).kept_indices
    assert [k.shape[1] for k in kept] == [16, 8, 8, 4]
    for b in range(2):
        assert set(kept[3][b].tolist()) <= set(kept[1][b].tolist())


@torch.no_grad()
def test_unprune_restores_exactly(model, inputs):
    reference = model(**inputs).logits
    segprune.prune_(model, EXAMPLES["fastv"])
    model(**inputs)
    segprune.prune_(model, EXAMPLES["pdrop"])  # re-pruning replaces the config
    assert segprune.pruning_config(model) == EXAMPLES["pdrop"]
    segprune.unprune(model)
    assert segprune.pruning_config(model) is None
    assert "forward" not in vars(model.model.language_model)
    assert torch.equal(model(**inputs).logits, reference)
    segprune.unprune(model)  # a no-op when nothing is patched


@torch.no_grad()
def test_output_hidden_states_have_unpruned_length(model, inputs):
    reference = model(**inputs, output_hidden_states=True).hidden_states
    segprune.prune_(model, EXAMPLES["fastv"])
    hidden = model(**inputs, output_hidden_states=True).hidden_states
    assert len(hidden) == len(reference) == 5
    valid = inputs["attention_mask"].bool()
    for ours, theirs in zip(hidden[:3], reference[:3], strict=True):  # layers before the drop are unchanged
        assert ours.shape == theirs.shape
        assert (ours - theirs)[valid].abs().max() <= 1e-5
    assert hidden[-1].shape == reference[-1].shape


@torch.no_grad()
def test_eager_attention_backend_matches_sdpa(model, eager_model, inputs):
    eager_model.load_state_dict(model.state_dict())
    segprune.prune_(model, EXAMPLES["pdrop"])
    segprune.prune_(eager_model, EXAMPLES["pdrop"])
    assert (model(**inputs).logits - eager_model(**inputs).logits)[
        inputs["attention_mask"].bool()
    ].abs().max() < 1e-4


@torch.no_grad()
def test_errors_are_clear(model, inputs):
    segprune.prune_(model, EXAMPLES["fastv"])
    with pytest.raises(ValueError, match="never materialises attention maps"):
        model(**inputs, output_attentions=True)
    uneven = dict(inputs)
    uneven["input_ids"] = inputs["input_ids"].clone()
    uneven["input_ids"][0, -1] = model.config.image_token_id
    # transformers' own check or the adapter's, whichever runs first: both name the image tokens.
    with pytest.raises(ValueError, match="image tokens"):
        model(**uneven)
    with pytest.raises(TypeError, match="holds no transformers LlavaModel"):
        segprune.prune_(torch.nn.Linear(2, 2), EXAMPLES["fastv"])
    with pytest.raises(ValueError, match="does not fit this model"):
        segprune.prune_(model, segprune.FastVConfig(layer=9))
    with pytest.raises(RuntimeError, match="not pruned"):
        segprune.stats(tiny_llava(num_layers=2))


@torch.no_grad()
def test_right_padding_and_text_only_inputs(model):
    inputs = tiny_llava_inputs(model, batch=2, prompt_lengths=(3, 7), left_pad=False)
    reference = model(**inputs).logits
    segprune.prune_(model, METHODS["fastv"].keep_all())
    valid = inputs["attention_mask"].bool()
    assert (model(**inputs).logits - reference)[valid].abs().max() <= 1e-5
    text = {"input_ids": torch.tensor([[5, 6, 7, 8]])}
    segprune.unprune(model)
    reference = model(**text).logits
    segprune.prune_(model, EXAMPLES["fastv"])
    assert (model(**text).logits - reference).abs().max() <= 1e-5
    assert segprune.stats(model).image_tokens == 0


@torch.no_grad()
def test_kept_tokens_keep_their_original_positions(model, inputs):
    """Dropping image tokens before the LLM equals hiding them with the padding mask while every
    other token keeps its position id; compressed positions would change the logits."""
    gen = torch.Generator().manual_seed(3)
    kept = torch.stack([torch.randperm(N_IMAGE, generator=gen)[:5].sort().values for _ in range(2)])
    replay = ReplayConfig(kept=(kept,) * 4)
    segprune.prune_(model, replay)
    logits = model(**inputs, position_ids=position_ids_of(inputs["attention_mask"])).logits
    segprune.unprune(model)

    hidden = inputs["attention_mask"].clone()
    image = inputs["input_ids"] == model.config.image_token_id
    for b in range(2):
        image_seq = image[b].nonzero().squeeze(1)
        dropped = torch.ones(N_IMAGE, dtype=torch.bool)
        dropped[kept[b]] = False
        hidden[b, image_seq[dropped]] = 0
    reference = model(
        input_ids=inputs["input_ids"],
        attention_mask=hidden,
        pixel_values=inputs["pixel_values"],
        position_ids=position_ids_of(inputs["attention_mask"]),
    ).logits
    rows = hidden.bool()
    assert (logits - reference)[rows].abs().max() <= 1e-5


@torch.no_grad()
def test_decode_without_position_ids_continues_from_unpruned_length(model):
    inputs = tiny_llava_inputs(model, batch=2, prompt_lengths=(6,), left_pad=True)  # no padding
    segprune.prune_(model, EXAMPLES["fastv"])
    out = model(**inputs, use_cache=True)
    next_token = out.logits[:, -1].argmax(-1, keepdim=True)
    cache = cache_kwargs(model, output_cache(model, out))
    step = model(input_ids=next_token, use_cache=True, **cache).logits[:, -1]
    replay = ReplayConfig.from_stats(segprune.stats(model))
    segprune.prune_(model, replay)
    full = model(
        input_ids=torch.cat([inputs["input_ids"], next_token], dim=1), pixel_values=inputs["pixel_values"]
    ).logits[:, -1]
    assert (step - full).abs().max() <= 1e-4


# Methods whose whole prefill inside the language model needs one host sync (the prologue that
# reads N): selection, scoring and merging stay on the device (merging's checks are device-side).
SYNC_FREE = [name for name in method_names() if EXAMPLES[name].sync_free]


@torch.no_grad()
@pytest.mark.parametrize("name", SYNC_FREE)
def test_prefill_has_one_host_sync(model, inputs, name, monkeypatch):
    segprune.prune_(model, EXAMPLES[name])
    counter = HostSyncCounter(monkeypatch)
    lm = model.model.language_model
    hooks = [
        lm.register_forward_pre_hook(lambda *a: setattr(counter, "active", True)),
        lm.register_forward_hook(lambda *a: setattr(counter, "active", False)),
    ]
    model(**inputs)
    for hook in hooks:
        hook.remove()
    assert counter.calls == ["tolist"], counter.calls
