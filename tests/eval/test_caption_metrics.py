"""METEOR and CIDEr through pycocoevalcap: CIDEr by hand, METEOR/tokenisation where Java exists."""

from __future__ import annotations

import pytest

import segprune.eval.metrics.captions as captions_module
from segprune.eval.metrics import (
    JavaNotFoundError,
    caption_scores,
    cider_score,
    java_available,
    meteor_score,
    ptb_tokenize,
)

requires_java = pytest.mark.skipif(
    not java_available(), reason="no `java` on PATH: METEOR and PTB tokenisation run pycocoevalcap's jars"
)


def test_cider_two_image_corpus_by_hand():
    # Document frequency over the two images' references: "a" in both (idf log(2/2) = 0); every
    # other n-gram, and any n-gram no reference has, gets idf log(2/1) = L. Each n-gram order
    # n = 1..4 scores the cosine of tf-idf vectors (clipped), and the image score is 10 x their mean.
    # Image 1, "a red bus" vs "a red car":
    #   1-grams {red: L, bus: L} vs {red: L, car: L} -> L² / (√2 L · √2 L) = 1/2
    #   2-grams {a red, red bus} vs {a red, red car} -> 1/2; 3-grams differ -> 0; no 4-grams -> 0
    #   -> 10 · (1/2 + 1/2 + 0 + 0) / 4 = 2.5
    # Image 2, "a blue bus" vs itself: 1, 1, 1 and no 4-grams -> 10 · 3/4 = 7.5. Corpus: 5.0.
    # Equal lengths, so the Gaussian length penalty is 1.
    score = cider_score(["a red bus", "a blue bus"], ["a red car", ["a blue bus"]], tokenize=False)
    assert score.per_caption == pytest.approx([2.5, 7.5])
    assert score.score == pytest.approx(5.0)


def test_cider_needs_a_corpus():
    # With one image every reference n-gram has idf log(1/1) = 0: CIDEr is 0 even for a match.
    assert cider_score(["a cat on a mat"], ["a cat on a mat"], tokenize=False).score == 0.0


def test_caption_input_errors():
    with pytest.raises(ValueError, match="2 predictions for 1 reference sets"):
        cider_score(["a", "b"], ["a"], tokenize=False)
    with pytest.raises(ValueError, match="at least one reference"):
        cider_score(["a"], [[]], tokenize=False)


def test_missing_java_is_named(monkeypatch):
    monkeypatch.setattr(captions_module.shutil, "which", lambda name: None)
    with pytest.raises(JavaNotFoundError, match="METEOR runs Java"):
        meteor_score(["a cat"], ["a cat"])
    with pytest.raises(JavaNotFoundError, match="PTB tokenisation runs Java"):
        cider_score(["a cat", "a dog"], ["a cat", "a dog"])
    # Pre-tokenised CIDEr is pure Python.
    assert cider_score(["a cat", "a dog"], ["a cat", "a dog"], tokenize=False).score >= 0


@requires_java
def test_ptb_tokenize_lowercases_and_drops_punctuation():
    assert ptb_tokenize(["A man, riding a horse!", "Two\ndogs."]) == ["a man riding a horse", "two dogs"]


@requires_java
def test_meteor_and_cider_rank_identical_over_related_over_unrelated():
    predictions = [
        "A man is riding a horse.",
        "Two dogs play in the snow!",
        "A red car parked on the street.",
    ]
    references = [
        "a man is riding a horse",  # identical after tokenisation
        "Two dogs are playing in the snow.",  # related
        "The chef slices onions in a kitchen.",  # unrelated
    ]
    scores = caption_scores(predictions, references)
    meteor, cider = scores["METEOR"].per_caption, scores["CIDEr"].per_caption
    assert meteor[0] > 0.95
    assert meteor[0] > meteor[1] > meteor[2]
    assert meteor[2] < 0.15
    assert cider[0] > cider[1] > cider[2]
    assert cider[2] < 1.0
    assert 0 < scores["METEOR"].score < 1
