"""SegModel referring segmentation (LISA protocol): shapes, the [SEG] state, pruning, saving."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from seg_helpers import images

import segprune
from conftest import EXAMPLES, method_names
from segprune import METHODS
from segprune.models import SegModel
from segprune.models.prompts import SCORE_TOKENS

QUERIES = ["the red car", "a small dog"]


@pytest.fixture(autouse=True)
def _unpruned(seg_model):
    yield
    segprune.unprune(seg_model)


def logits(model, answer=None, queries=QUERIES):
    return model.segment(images(), queries, answer=answer, threshold=None)


def assert_same_masks(got, expected, atol=1e-4):
    """Logits agree to `atol`; thresholded masks agree wherever the logit is not within `atol` of 0."""
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= atol
        clear = b.abs() > atol
        assert torch.equal((a > 0)[clear], (b > 0)[clear])


@torch.no_grad()
def test_one_mask_per_query_at_the_original_size(seg_model):
    from PIL import Image

    pictures = [*images(), Image.fromarray(np.full((9, 40, 3), 128, dtype=np.uint8))]
    masks = seg_model.segment(pictures, [*QUERIES, "the sky"])
    assert [m.shape for m in masks] == [(20, 28), (33, 17), (9, 40)]
    assert all(m.dtype == torch.bool for m in masks)
    mask_logits = seg_model.segment(pictures, [*QUERIES, "the sky"], threshold=None)
    assert all(torch.equal(m, x > 0) for m, x in zip(masks, mask_logits, strict=True))


@torch.no_grad()
def test_masks_depend_on_the_query(seg_model):
    first = logits(seg_model, queries=["the red car", "the red car"])
    second = logits(seg_model, queries=["a big tree", "a big tree"])
    assert (first[0] - second[0]).abs().max() > 1e-3


@torch.no_grad()
def test_seg_state_is_the_one_that_predicts_seg(seg_model):
    """LISA reads the last-layer state one token before [SEG]: it cannot see [SEG] or what follows."""
    reference = logits(seg_model, answer="Sure, it is [SEG].")
    assert_same_masks(logits(seg_model, answer="Sure, it is [SEG] and the tree."), reference, atol=1e-5)
    embedding = seg_model.get_input_embeddings().weight
    saved = embedding[seg_model.seg_token_id].clone()
    try:
        embedding[seg_model.seg_token_id] += 3.0
        assert_same_masks(logits(seg_model, answer="Sure, it is [SEG]."), reference, atol=1e-5)
    finally:
        embedding[seg_model.seg_token_id] = saved
    # The token right before [SEG] does change it, so the checks above can fail.
    changed = logits(seg_model, answer="Sure, it holds [SEG].")
    assert max(float((a - b).abs().max()) for a, b in zip(changed, reference, strict=True)) > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("name", method_names())
def test_keep_all_equals_the_unpatched_model(seg_model, name):
    reference = logits(seg_model)
    segprune.prune_(seg_model, METHODS[name].keep_all())
    assert_same_masks(logits(seg_model), reference)


@torch.no_grad()
@pytest.mark.parametrize("name", method_names())
def test_every_method_prunes_the_llm_image_tokens(seg_model, name):
    reference = logits(seg_model)
    segprune.prune_(seg_model, EXAMPLES[name])
    pruned = logits(seg_model)
    stats = segprune.stats(seg_model)
    assert stats.image_tokens == 16
    assert stats.live_tokens.shape == (4, 2)
    assert int(stats.live_tokens.min()) < 16, "no layer dropped an image token"
    assert [m.shape for m in pruned] == [(20, 28), (33, 17)]
    assert max(float((a - b).abs().max()) for a, b in zip(pruned, reference, strict=True)) > 1e-3


@torch.no_grad()
def test_prune_reads_the_seg_token_id_from_the_model(seg_model):
    """CSP can rank image tokens by the [SEG] row; `prune_` finds the id on the SegModel itself."""
    config = dataclasses.replace(EXAMPLES["csp"], score_token="seg")
    segprune.prune_(seg_model, config)
    masks = seg_model.segment(images(), QUERIES)
    assert len(masks) == 2
    assert segprune.stats(seg_model).scores[-1] is not None
    with pytest.raises(ValueError, match="no \\[SEG\\] token"):
        seg_model.ground(images(), max_new_tokens=2)  # the GCG prompt holds no [SEG] to score by


@torch.no_grad()
def test_save_and_load_round_trip(seg_model, tmp_path):
    seg_model.save_pretrained(tmp_path)
    loaded = SegModel.from_pretrained(tmp_path).eval()
    expected = seg_model.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert loaded.seg_token_id == seg_model.seg_token_id
    assert loaded.config.prompt_template == seg_model.config.prompt_template
    assert loaded.tokenizer("a man [SEG]")["input_ids"] == seg_model.tokenizer("a man [SEG]")["input_ids"]
    assert_same_masks(logits(loaded), logits(seg_model), atol=1e-6)


@torch.no_grad()
def test_bad_inputs_raise_clear_errors(seg_model):
    with pytest.raises(ValueError, match="no \\[SEG\\]"):
        seg_model.segment(images(), QUERIES, answer="Sure.")
    with pytest.raises(ValueError, match="one text per image"):
        seg_model.segment(images(), QUERIES[:1])
    with pytest.raises(TypeError, match="uint8"):
        seg_model.segment([np.zeros((8, 8, 3), dtype=np.float32)], QUERIES[:1])
    tokenizer, seg_model.tokenizer = seg_model.tokenizer, None
    try:
        with pytest.raises(RuntimeError, match="no tokenizer"):
            seg_model.segment(images(), QUERIES)
    finally:
        seg_model.tokenizer = tokenizer


@torch.no_grad()
def test_without_image_tokens_the_text_keeps_its_positions(seg_model):
    """`image_tokens=False`: the LLM sees the text alone, numbered as with the image in place."""
    seen = {}

    def capture(module, args, kwargs):
        seen.update(embeds=kwargs["inputs_embeds"], positions=kwargs["position_ids"])

    full = seg_model._encode(
        images(), [seg_model._prompt(q) + " " + seg_model.config.seg_answer for q in QUERIES]
    )
    llava = seg_model.config.llava_config
    handle = seg_model.mllm.model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        blind = seg_model.segment(images(), QUERIES, image_tokens=False, threshold=None)
    finally:
        handle.remove()
    length = full["input_ids"].shape[1]
    assert seen["embeds"].shape[:2] == (2, length - llava.image_seq_length)
    for row in range(2):
        ids, mask = full["input_ids"][row], full["attention_mask"][row]
        kept = mask[ids != llava.image_token_id].bool()
        positions = seen["positions"][row][kept].tolist()
        # Real (unpadded) tokens before the image.
        before = int((ids == llava.image_token_id).int().argmax() - (1 - mask).sum())
        steps = [b - a for a, b in itertools.pairwise(positions)]
        # One step over the image's span, every other step 1.
        assert steps == [1] * (before - 1) + [llava.image_seq_length + 1] + [1] * (len(steps) - before)
    # The LLM's input differs from the unpruned forward's, so the [SEG] state and the masks do too.
    assert any((a - b).abs().max() > 0 for a, b in zip(blind, logits(seg_model), strict=True))


@torch.no_grad()
@pytest.mark.parametrize("name", method_names())
def test_score_token_prompt_ranks_by_the_last_prompt_token(seg_model, name):
    """score_token="prompt": a last-token method keeps the image tokens a prefill of the prompt alone
    keeps, and the answer then runs against them (a one-pass replay of those sets gives the same masks).
    Methods that rank elsewhere give the same masks with either score token."""
    from segprune.methods.replay import ReplayConfig
    from segprune.models import seg_inputs

    config = EXAMPLES[name]
    segprune.prune_(seg_model, config)
    prompt = seg_model.segment(images(), QUERIES, threshold=None, score_token="prompt")
    stats = segprune.stats(seg_model)
    answer = seg_model.segment(images(), QUERIES, threshold=None, score_token="answer")
    if not config.ranks_by_last_token:
        assert_same_masks(prompt, answer, atol=1e-5)
        return
    batch = seg_model._encode(images(), [seg_model._prompt(q) for q in QUERIES])
    seg_model.mllm.model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=seg_inputs.positions(batch["attention_mask"]),
        pixel_values=batch["pixel_values"],
        use_cache=False,
    )
    prompt_only = segprune.stats(seg_model).kept_indices
    assert all(torch.equal(a, b) for a, b in zip(stats.kept_indices, prompt_only, strict=True))
    if config.replayable:
        segprune.prune_(seg_model, ReplayConfig.from_stats(stats))
        assert_same_masks(seg_model.segment(images(), QUERIES, threshold=None, score_token="answer"), prompt)


@torch.no_grad()
def test_score_token_moves_fastv_and_not_the_unpruned_model(seg_model):
    """The "." after [SEG] and the last prompt token rank differently (so the choice matters), and without
    pruning both score tokens are the same one forward."""
    unpruned = [seg_model.segment(images(), QUERIES, threshold=None, score_token=t) for t in SCORE_TOKENS]
    assert all(torch.equal(a, b) for a, b in zip(*unpruned, strict=True))
    segprune.prune_(seg_model, segprune.FastVConfig(layer=1, keep_ratio=0.25))
    kept = []
    for token in SCORE_TOKENS:
        seg_model.segment(images(), QUERIES, score_token=token)
        kept.append(segprune.stats(seg_model).kept_indices[1])
    assert not torch.equal(*kept)
    with pytest.raises(ValueError, match=r"score_token='last' is not valid; valid: \['prompt', 'answer'\]"):
        seg_model.segment(images(), QUERIES, score_token="last")
