"""The two protocols on one batch (`segprune.eval.tasks`): prompts, model calls, records, accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segprune.eval.datasets import CaptionSample, RefSample
from segprune.eval.metrics import GCGAnnotation
from segprune.eval.tasks import accuracy, caption_text, lisa_query, predict, score
from segprune.models import GroundedAnswer


class Recorder:
    """A stand-in model that records how it is called and returns fixed outputs."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def segment(self, images, queries, *, score_token):
        self.calls.append(("segment", len(images), list(queries), score_token))
        return ["masks"]

    def ground(self, images, *, max_new_tokens):
        self.calls.append(("ground", len(images), max_new_tokens))
        return ["answers"]


def _ref(sample_id: str, target, tags=(), ignore=None, query="the red star") -> RefSample:
    target = np.asarray(target, dtype=bool)
    return RefSample(sample_id, np.zeros((*target.shape, 3), np.uint8), query, target, ignore, tuple(tags))


def test_lisa_query_words_phrases_and_sentences_as_lisa():
    assert lisa_query("the red star", ["type:spatial"]) == (
        "What is the red star in this image? Please output segmentation mask."
    )
    assert lisa_query("What keeps the rain off?", ["type:sentence", "small"]) == (
        "What keeps the rain off? Please output segmentation mask."
    )


def test_caption_text_drops_grounding_tags():
    assert caption_text("A <p> red star </p> [SEG] and  <p> a ring </p>[SEG].") == "A red star and a ring ."


def test_predict_calls_the_protocol_of_the_task():
    model = Recorder()
    samples = [_ref("a", [[1]], ["type:phrase"]), _ref("b", [[0]], ["type:sentence"], query="Find it.")]
    assert predict(model, "refseg", samples, max_new_tokens=5) == ["masks"]
    question = "What is the red star in this image? Please output segmentation mask."
    assert model.calls == [("segment", 2, [question, "Find it. Please output segmentation mask."], "prompt")]
    predict(model, "refseg", samples[:1], max_new_tokens=5, score_token="answer")
    assert model.calls[-1] == ("segment", 1, [question], "answer")
    reference = GCGAnnotation("x", "", [], [])
    predict(model, "gcg", [CaptionSample("x", np.zeros((1, 1, 3), np.uint8), reference)], max_new_tokens=7)
    assert model.calls[-1] == ("ground", 1, 7)
    with pytest.raises(ValueError, match=r"unknown task 'vqa'; valid: \['refseg', 'gcg'\]"):
        predict(model, "vqa", samples, max_new_tokens=5)


def test_refseg_records_count_pixels_outside_the_ignored_ones():
    target = [[1, 1, 0], [0, 1, 0]]
    ignore = np.array([[0, 0, 0], [0, 1, 1]], dtype=bool)
    pred = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    # Outside the ignored pixels: pred {(0,0), (0,2)}, target {(0,0), (0,1)}: 1 shared, 3 in either.
    [record] = score("refseg", [_ref("s1", target, ["type:spatial", "small"], ignore)], [pred])
    assert record == {
        "id": "s1",
        "query": "the red star",
        "intersection": 1,
        "union": 3,
        "tags": ["type:spatial", "small"],
    }


def test_gcg_records_keep_the_answer_and_both_annotations():
    ring = np.zeros((4, 4), dtype=bool)
    ring[1:3, 1:3] = True
    reference = GCGAnnotation("img", "a ring", ["a ring"], [ring])
    answer = GroundedAnswer(
        text="<p> a ring </p> [SEG] and [SEG].",
        phrases=["a ring", None],
        masks=torch.from_numpy(np.stack([ring, ~ring])),
        errors=["[SEG] without a phrase"],
    )
    [record] = score("gcg", [CaptionSample("img", np.zeros((4, 4, 3), np.uint8), reference)], [answer])
    assert record["id"] == "img" and record["text"] == answer.text
    assert record["errors"] == ["[SEG] without a phrase"]
    pred = GCGAnnotation.from_dict(record["pred"])
    # The caption loses its tags; a [SEG] without a phrase keeps its mask with an empty phrase.
    assert (pred.image_id, pred.caption, pred.phrases) == ("img", "a ring and .", ["a ring", ""])
    assert pred.masks[0] == reference.masks[0] and len(pred.masks) == 2
    assert record["ref"] == reference.to_dict()


def test_refseg_accuracy_per_tag():
    records = [
        {"intersection": 1, "union": 2, "tags": ["type:spatial"]},
        {"intersection": 0, "union": 0, "tags": ["type:attribute", "small"]},
        {"intersection": 0, "union": 4, "tags": ["type:spatial", "small"]},
    ]
    scores = accuracy("refseg", records)
    assert list(scores) == ["all", "small", "type:attribute", "type:spatial"]
    # gIoU: mean of 1/2, 1 (both empty) and 0; cIoU: 1 / (2 + 0 + 4).
    assert scores["all"]["giou"] == pytest.approx(0.5) and scores["all"]["ciou"] == pytest.approx(1 / 6)
    assert scores["small"] == {"n": 2, "giou": 0.5, "ciou": 0.0, "intersection": 0, "union": 4}
    assert scores["type:spatial"]["giou"] == pytest.approx(0.25)


def test_gcg_accuracy_of_no_records_is_empty():
    assert accuracy("gcg", []) == {"n_images": 0}
