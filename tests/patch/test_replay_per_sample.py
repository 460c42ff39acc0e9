"""`ReplayConfig.from_stats` on a batch that ran in masked slots (Qwen2-VL images of different sizes, a
multi-image prompt): the replay gives the same logits, live sets and greedy tokens as the forward it
recorded; samples it cannot tell apart (the same image-token count) raise, and replay one at a time."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_qwen import left_padded_batch, qwen_prompt, tiny_qwen

import segprune
from conftest import EXAMPLES
from segprune.methods.replay import ReplayConfig

BIG, SMALL, WIDE = (16, 16), (12, 8), (8, 12)  # 16, 6 and 6 image tokens
CASES = {
    "fastv": EXAMPLES["fastv"],
    "pdrop-renumber": EXAMPLES["pdrop"],
    "altp-ddc": dataclasses.replace(EXAMPLES["altp"], allocation="ddc"),
    "csp-uniform": EXAMPLES["csp"],  # keep, reactivate, keep
}


@pytest.fixture(scope="module")
def qwen_model():
    return tiny_qwen("qwen2_vl")


@pytest.fixture
def qwen(qwen_model):
    yield qwen_model
    segprune.unprune(qwen_model)


def run(model, config, inputs):
    segprune.prune_(model, config)
    logits = model(**inputs).logits
    stats = segprune.stats(model)
    tokens = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    return logits, stats, tokens


def assert_same_forward(first, second, valid):
    (logits, stats, tokens), (logits2, stats2, tokens2) = first, second
    assert (logits[valid] - logits2[valid]).abs().max() <= 1e-5
    assert torch.equal(stats.live_tokens, stats2.live_tokens)
    assert len(stats.kept_indices) == len(stats2.kept_indices)
    for layer, (kept, kept2) in enumerate(zip(stats.kept_indices, stats2.kept_indices, strict=True)):
        assert torch.equal(kept, kept2), f"layer {layer}"
    assert torch.equal(tokens, tokens2)


@torch.no_grad()
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_replay_of_images_of_different_sizes_is_the_same_forward(qwen, name):
    batch = left_padded_batch([qwen_prompt([BIG], n_text=5, seed=1), qwen_prompt([SMALL], n_text=8, seed=2)])
    original = run(qwen, CASES[name], batch)
    stats = original[1]
    assert stats.image_counts.tolist() == [16, 6]
    assert any((k == -1).any() for k in stats.kept_indices), "the smaller sample must sit in masked slots"
    replay = ReplayConfig.from_stats(stats)
    assert replay.image_counts == (16, 6)
    segprune.unprune(qwen)
    assert_same_forward(original, run(qwen, replay, batch), batch["attention_mask"].bool())
    assert torch.equal(run(qwen, replay, batch)[1].image_counts, stats.image_counts)


@torch.no_grad()
def test_a_replay_of_a_multi_image_prompt_beside_a_prompt_without_one(qwen):
    samples = [
        qwen_prompt([BIG, SMALL], n_text=4, seed=3),
        qwen_prompt([], n_text=9, seed=4),
        qwen_prompt([SMALL], n_text=6, seed=5),
    ]
    batch = left_padded_batch(samples)
    original = run(qwen, CASES["csp-uniform"], batch)
    assert original[1].image_counts.tolist() == [22, 0, 6]
    segprune.unprune(qwen)
    replay = ReplayConfig.from_stats(original[1])
    assert_same_forward(original, run(qwen, replay, batch), batch["attention_mask"].bool())


@torch.no_grad()
def test_samples_with_the_same_count_raise_and_replay_one_at_a_time(qwen):
    samples = [
        qwen_prompt([BIG], n_text=5, seed=1),
        qwen_prompt([SMALL], n_text=8, seed=2),
        qwen_prompt([WIDE], n_text=3, seed=6),
    ]
    batch = left_padded_batch(samples)
    config = CASES["fastv"]
    logits, stats, _ = run(qwen, config, batch)
    assert stats.image_counts.tolist() == [16, 6, 6]
    with pytest.raises(
        ValueError, match=r"samples 1 and 2 both hold 6 image tokens.*sample=b\) \(valid b: 0 to 2\)"
    ):
        ReplayConfig.from_stats(stats)
    for b, sample in enumerate(samples):
        replay = ReplayConfig.from_stats(stats, sample=b)
        segprune.unprune(qwen)
        segprune.prune_(qwen, replay)
        alone = qwen(**sample).logits
        alone_stats = segprune.stats(qwen)
        valid = batch["attention_mask"][b].bool()
        assert (logits[b, valid] - alone[0]).abs().max() <= 1e-4, f"sample {b}"
        for layer, kept in enumerate(stats.kept_of(b)):
            assert torch.equal(alone_stats.kept_indices[layer][0], kept), f"sample {b}, layer {layer}"
    for bad in (3, -1, True):
        with pytest.raises(
            ValueError, match=rf"sample={bad!r} is not a sample of the recorded batch of 3; valid: 0 to 2"
        ):
            ReplayConfig.from_stats(stats, sample=bad)


def test_replay_config_errors_name_the_counts():
    kept = (torch.tensor([[0, 1, 2], [0, 1, -1]]),)
    with pytest.raises(
        ValueError, match=r"image_counts=\(3,\) has 1 entries; the live sets are of a batch of 2"
    ):
        ReplayConfig(kept=kept, image_counts=(3,))
    config = ReplayConfig(kept=kept, image_counts=(3, 2))
    with pytest.raises(ValueError, match=r"recorded samples with \[2, 3\] image tokens, not 4"):
        config.plan(4, 1)
    assert config.plan(3, 1).steps == () and config.plan(2, 1).steps == ()
