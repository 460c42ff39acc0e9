"""SegModel grounded conversation (GLaMM GCG protocol): cached decoding, phrases, masks, pruning."""

from __future__ import annotations

import pytest
import torch
from seg_helpers import ground_scripted, images

import segprune
from conftest import EXAMPLES, method_names
from segprune.methods.replay import ReplayConfig

GROUNDED = "<p> a man </p> [SEG] sits near <p> a small dog </p> [SEG] ."
TWO_PHRASES = ["a man", "a small dog"]


@pytest.fixture(autouse=True)
def _unpruned(seg_model):
    yield
    segprune.unprune(seg_model)


@torch.no_grad()
def test_one_mask_per_generated_seg_paired_with_its_phrase(seg_model):
    answers = ground_scripted(seg_model, images(), [GROUNDED, "<p> the car </p> [SEG] ."])
    first, second = answers
    assert first.phrases == TWO_PHRASES
    assert second.phrases == ["the car"]
    assert first.masks.shape == (2, 20, 28) and first.masks.dtype == torch.bool
    assert second.masks.shape == (1, 33, 17)
    assert first.errors == [] and second.errors == []
    assert first.text == "<p> a man </p> [SEG] sits near <p> a small dog </p> [SEG] ."


@torch.no_grad()
def test_each_mask_comes_from_its_own_seg_state(seg_model):
    """The two [SEG]s of one answer follow different text, so their masks differ."""
    (answer,) = ground_scripted(seg_model, images()[:1], [GROUNDED], threshold=None)
    assert (answer.masks[0] - answer.masks[1]).abs().max() > 1e-3


@torch.no_grad()
def test_malformed_answers_are_reported_not_raised(seg_model):
    texts = ["a man [SEG] .", "<p> a man [SEG] <p> the dog </p> ."]
    first, second = ground_scripted(seg_model, images(), texts)
    assert first.phrases == [None] and first.masks.shape == (1, 20, 28)
    assert first.errors == ["[SEG] at token 2 has no phrase"]
    assert second.phrases == [None] and second.masks.shape == (1, 33, 17)
    assert second.errors == [
        "[SEG] at token 3 is inside the <p> opened at token 0",
        "phrase at tokens 5-7 has no [SEG] (the answer ends)",
    ]


@torch.no_grad()
def test_answer_without_seg_has_no_masks(seg_model):
    (answer,) = ground_scripted(seg_model, images()[:1], ["a man sits ."])
    assert answer.phrases == [] and answer.errors == []
    assert answer.masks.shape == (0, 20, 28)


@torch.no_grad()
def test_generation_uses_the_kv_cache(seg_model):
    """The prompt runs once; each later step feeds only the newest token."""
    lengths = []
    hook = seg_model.mllm.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    try:
        ground_scripted(seg_model, images()[:1], ["<p> a man </p> [SEG] ."])
    finally:
        hook.remove()
    generated = len(seg_model.tokenizer("<p> a man </p> [SEG] .", add_special_tokens=False)["input_ids"]) + 1
    assert len(lengths) == generated
    assert lengths[0] > 16 and lengths[1:] == [1] * (generated - 1)


def test_beam_search_is_refused(seg_model):
    with pytest.raises(ValueError, match="beam search"):
        seg_model.ground(images(), num_beams=2)


@torch.no_grad()
@pytest.mark.parametrize("name", [None, *method_names()])
def test_ground_and_segment_use_the_same_seg_state(seg_model, name):
    """LISA's teacher-forced forward and our cached decode must pick the same [SEG] state, under pruning
    too: the forward reads the row before [SEG] in the unpruned-length output, the decode keeps the
    state that produced [SEG]. Pruned runs compare with the decode's own live sets replayed."""
    config = EXAMPLES.get(name)
    if config is not None:
        image_only = all(step.layer == 0 for step in config.plan(16, 4).steps)
        if not (config.replayable or image_only):
            pytest.skip("merged states after layer 0 depend on the text: no replay reproduces them")
        segprune.prune_(seg_model, config)
    answers = ground_scripted(seg_model, images(), ["Sure , it is [SEG] ."] * 2, threshold=None)
    if config is not None:
        assert int(segprune.stats(seg_model).live_tokens.min()) < 16
        if config.replayable:
            segprune.prune_(seg_model, ReplayConfig.from_stats(segprune.stats(seg_model)))
    query = seg_model.config.gcg_query
    masks = seg_model.segment(images(), [query] * 2, answer="Sure, it is [SEG].", threshold=None)
    for answer, expected in zip(answers, masks, strict=True):
        assert answer.phrases == [None]
        assert (answer.masks[0] - expected).abs().max() <= 1e-4


@torch.no_grad()
@pytest.mark.parametrize("name", method_names())
def test_every_method_grounds_a_batch(seg_model, name):
    reference = ground_scripted(seg_model, images(), [GROUNDED] * 2, threshold=None)
    segprune.prune_(seg_model, EXAMPLES[name])
    answers = ground_scripted(seg_model, images(), [GROUNDED] * 2, threshold=None)
    assert int(segprune.stats(seg_model).live_tokens.min()) < 16
    for answer, unpruned in zip(answers, reference, strict=True):
        assert answer.phrases == TWO_PHRASES and answer.errors == []
        assert answer.masks.shape == unpruned.masks.shape
        assert (answer.masks - unpruned.masks).abs().max() > 1e-4, "pruning left the masks unchanged"
