"""GLaMM-protocol GCG metrics (AP50, mIoU, recall), checked against hand-computed values.

Masks are 1-pixel-high strips, so every IoU is a ratio of interval lengths.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import segprune.eval.metrics.gcg as gcg_module
from segprune.eval.metrics import (
    CorpusScore,
    GCGAnnotation,
    decode_rle,
    evaluate_gcg,
    evaluate_gcg_small,
    gcg_miou,
    gcg_recall,
    image_miou,
    mask_ap50,
    match_phrases,
    pairwise_iou,
    to_rle,
)


def strip(width: int, start: int, stop: int) -> np.ndarray:
    """Return a (1, width) mask with pixels [start, stop) set."""
    mask = np.zeros((1, width), bool)
    mask[0, start:stop] = True
    return mask


def ann(image_id, masks, phrases=None, scores=None, caption="") -> GCGAnnotation:
    phrases = phrases if phrases is not None else [f"thing {i}" for i in range(len(masks))]
    return GCGAnnotation(image_id, caption, phrases, masks, scores)


class FixedSimilarity:
    """A TextSimilarity returning one given (gt, pred) matrix."""

    def __init__(self, matrix):
        self.matrix = np.asarray(matrix, dtype=float)
        self.calls = 0

    def similarity(self, a, b):
        self.calls += 1
        assert self.matrix.shape == (len(a), len(b))
        return self.matrix


class EqualTextSimilarity:
    """A TextSimilarity scoring 1 for equal phrases and 0 otherwise."""

    def similarity(self, a, b):
        return np.array([[float(x == y) for y in b] for x in a])


def test_rle_round_trip_and_pairwise_iou():
    a, b = strip(20, 0, 10), strip(20, 5, 20)
    rle = to_rle(a)
    assert isinstance(rle["counts"], str)
    assert json.loads(json.dumps(rle)) == rle
    assert np.array_equal(decode_rle(rle), a)
    # GLaMM's uncompressed RLE (column-major runs, zeros first): 0 zeros, 10 ones, 10 zeros.
    assert to_rle({"size": [1, 20], "counts": [0, 10, 10]}) == rle
    # a and b share [5, 10): 5 px; union [0, 20): 20 px -> 1/4. An empty mask has IoU 0 with both.
    iou = pairwise_iou([a, rle, np.zeros((1, 20), bool)], [b])
    assert iou == pytest.approx(np.array([[0.25], [0.25], [0.0]]))
    with pytest.raises(ValueError, match="one size"):
        pairwise_iou([a], [strip(21, 0, 3)])


# mIoU: greedy differs from the naive and the optimal pairing.
#   g0 = [0, 10), g1 = [10, 20), p0 = [1, 16), p1 = [0, 5)
#   IoU(p0, g0) = |[1,10)| / |[0,16)| = 9/16      IoU(p0, g1) = |[10,16)| / |[0,10) ∪ ...| = 6/19
#   IoU(p1, g0) = 5/10                             IoU(p1, g1) = 0
# Greedy takes 9/16 (p0, g0); the only pair left, (p1, g1), has IoU 0 and is not formed.
G0, G1 = strip(20, 0, 10), strip(20, 10, 20)
P0, P1 = strip(20, 1, 16), strip(20, 0, 5)


def test_greedy_miou_by_hand():
    iou = pairwise_iou([P0, P1], [G0, G1])
    assert iou == pytest.approx(np.array([[9 / 16, 6 / 19], [1 / 2, 0.0]]))
    # GLaMM averages over the pairs formed: one pair -> 9/16.
    assert image_miou([P0, P1], [G0, G1]) == pytest.approx(9 / 16)
    # Counting the missed g1 as 0: 9/16 / 2.
    assert image_miou([P0, P1], [G0, G1], count_unmatched_gt=True) == pytest.approx(9 / 32)
    # Neither the optimal pairing ((6/19 + 1/2) / 2) nor each GT's best ((9/16 + 6/19) / 2) is used.
    assert image_miou([P0, P1], [G0, G1], count_unmatched_gt=True) < (6 / 19 + 1 / 2) / 2
    assert image_miou([], [G0]) == 0.0


def test_dataset_miou_averages_images():
    preds = [ann("x", [P0, P1]), ann("y", [])]
    refs = [ann("x", [G0, G1]), ann("y", [G0])]
    # Image x: 9/16; image y has no prediction: 0. Mean 9/32.
    assert gcg_miou(preds, refs) == pytest.approx(9 / 32)


# Recall: three ground-truth objects, one prediction each.
#   g0 = [0,10), g1 = [10,20), g2 = [20,30); p0 = [0,10) (IoU 1), p1 = [10,18) (IoU 8/10),
#   p2 = [20,25) (IoU 5/10, exactly the threshold). Phrase similarities on the diagonal:
#   0.9, 0.2 (fails), 0.5 (exactly the threshold); off-diagonal pairs have IoU 0.
STRIPS_GT = [strip(30, 0, 10), strip(30, 10, 20), strip(30, 20, 30)]
STRIPS_PRED = [strip(30, 0, 10), strip(30, 10, 18), strip(30, 20, 25)]
TEXT = [[0.9, 0.9, 0.9], [0.9, 0.2, 0.9], [0.9, 0.9, 0.5]]
NAMES = ["a", "b", "c"]


def test_recall_stops_at_first_text_mismatch_like_glamm():
    # Visit by IoU: (g0,p0) 1.0 hit; (g1,p1) 0.8 fails text -> GLaMM stops: 1 hit.
    hits = match_phrases(STRIPS_PRED, NAMES, STRIPS_GT, NAMES, FixedSimilarity(TEXT))
    assert hits == [(0, 0)]
    # Setting (g1,p1) aside instead reaches (g2,p2): IoU 0.5 and text 0.5 pass (>=): 2 hits.
    hits = match_phrases(
        STRIPS_PRED, NAMES, STRIPS_GT, NAMES, FixedSimilarity(TEXT), stop_on_text_mismatch=False
    )
    assert hits == [(0, 0), (2, 2)]


def test_recall_is_one_to_one():
    # Overlapping ground truths g0 = [0,10), g1 = [0,8); one prediction p0 = [0,10):
    # IoU(g0,p0) = 1, IoU(g1,p0) = 0.8, both phrases similar. p0 can hit only one: g0.
    gts, preds = [strip(10, 0, 10), strip(10, 0, 8)], [strip(10, 0, 10)]
    hits = match_phrases(preds, ["a"], gts, ["a", "b"], FixedSimilarity([[0.9], [0.9]]))
    assert hits == [(0, 0)]


def test_recall_pairs_pred_masks_and_phrases_by_position():
    # Three predicted masks but two phrases: p2 has no phrase and cannot hit g2.
    similarity = FixedSimilarity([[0.9, 0.9], [0.9, 0.9], [0.9, 0.9]])
    hits = match_phrases(STRIPS_PRED, ["a", "b"], STRIPS_GT, NAMES, similarity)
    assert hits == [(0, 0), (1, 1)]
    with pytest.raises(ValueError, match="ground-truth masks"):
        match_phrases(STRIPS_PRED, NAMES, STRIPS_GT, ["a"], similarity)


def test_recall_skips_text_encoder_without_mask_overlap():
    similarity = FixedSimilarity([[1.0]])
    assert match_phrases([strip(10, 0, 2)], ["a"], [strip(10, 5, 10)], ["a"], similarity) == []
    assert similarity.calls == 0


def test_dataset_recall_pools_phrases():
    # Image x: GT phrases a, b, c vs predicted a, z, c on the strips above: (g0,p0) hit, then
    # (g1,p1) has similarity 0 -> stop. 1 hit of 3.
    # Image y: GT phrases a, b on [0,10), [10,20); predictions a on [0,9) (IoU 0.9), b on [12,14)
    # (IoU 0.2): 1 hit of 2. Recall = 2/5.
    preds = [
        ann("x", STRIPS_PRED, ["a", "z", "c"]),
        ann("y", [strip(20, 0, 9), strip(20, 12, 14)], ["a", "b"]),
    ]
    refs = [ann("x", STRIPS_GT, NAMES), ann("y", [G0, G1], ["a", "b"])]
    assert gcg_recall(preds, refs, text_similarity=EqualTextSimilarity()) == pytest.approx(2 / 5)


# AP50: one image, two ground truths, three predictions in generation order:
#   g0 = [0,10), g1 = [20,30); p0 = [0,10) -> g0 (IoU 1) TP; p1 = [0,8) -> g0 again (IoU 0.8),
#   a duplicate -> FP; p2 = [20,28) -> g1 (IoU 0.8) TP.
AP_GT = [strip(40, 0, 10), strip(40, 20, 30)]
AP_PRED = [strip(40, 0, 10), strip(40, 0, 8), strip(40, 20, 28)]


def test_ap50_by_hand_with_glamm_constant_scores():
    # Score 1.0 each keeps that order: TP, FP, TP. Recall 1/2, 1/2, 1; precision 1, 1/2, 2/3.
    # COCO makes precision non-increasing from the right: 1, 2/3, 2/3, then reads it at 101 recall
    # points: r in {0, .01, ..., .50} (51 points) -> 1; r in {.51, ..., 1} (50 points) -> 2/3.
    # AP50 = (51 * 1 + 50 * 2/3) / 101 = 253/303.
    assert mask_ap50([ann(1, AP_PRED)], [ann(1, AP_GT)]) == pytest.approx(253 / 303)


def test_ap50_uses_scores_when_given():
    # Ranked p0, p2, p1: TP, TP, FP -> precision 1 up to recall 1 -> AP50 = 1.
    preds = [ann(1, AP_PRED, scores=[0.9, 0.1, 0.8])]
    assert mask_ap50(preds, [ann(1, AP_GT)]) == pytest.approx(1.0)


def test_ap50_ties_rank_by_sorted_image_id():
    # Image "a": a miss (FP); image "b": a hit (TP); 2 GT in all. Listed b first, but COCOeval
    # sorts image ids, so the ranking is FP, TP: recall 0, 1/2 with precision 0, 1/2 -> 1/2 at the
    # 51 recall points up to 0.5 and 0 beyond: AP50 = 51 * 0.5 / 101.
    gt = strip(20, 0, 10)
    preds = [ann("b", [gt]), ann("a", [strip(20, 10, 20)])]
    refs = [ann("b", [gt]), ann("a", [gt])]
    assert mask_ap50(preds, refs) == pytest.approx(25.5 / 101)


# Small objects: 1 x 400 images, so 1% is 4 pixels; SMALL covers 3, BIG 100.
SMALL, BIG = strip(400, 0, 3), strip(400, 100, 200)


def test_small_object_ap50_follows_cocos_area_rule():
    refs = [ann(1, [SMALL, BIG])]
    # Both found: the big pair is ignored (its ground truth is out of range), the small one is a TP.
    assert mask_ap50([ann(1, [BIG, SMALL])], refs, small_fraction=0.01) == pytest.approx(1.0)
    # A big false positive is ignored too (unmatched and out of range), though it costs overall AP.
    preds = [ann(1, [strip(400, 250, 350), SMALL])]
    assert mask_ap50(preds, refs, small_fraction=0.01) == pytest.approx(1.0)
    assert mask_ap50(preds, refs) < 1.0
    # A small false positive counts, and the missed small object leaves recall at 0.
    assert mask_ap50([ann(1, [BIG, strip(400, 300, 303)])], refs, small_fraction=0.01) == 0.0
    # Exactly 1% is not small: no ground truth in range.
    assert np.isnan(
        mask_ap50([ann(1, [strip(400, 0, 4)])], [ann(1, [strip(400, 0, 4)])], small_fraction=0.01)
    )


def test_small_object_miou_and_recall_by_hand():
    # Image 1: the small object is found with IoU 2/3 (pixels 0-1 of 0-2) under the right phrase;
    # image 2 holds no small object and is left out.
    preds = [ann(1, [strip(400, 0, 2), BIG], ["dot", "bar"]), ann(2, [BIG], ["bar"])]
    refs = [ann(1, [SMALL, BIG], ["dot", "bar"]), ann(2, [BIG], ["bar"])]
    small = evaluate_gcg_small(preds, refs, text_similarity=EqualTextSimilarity())
    assert (small["n_images"], small["n_objects"]) == (1, 1)
    assert small["miou"] == pytest.approx(2 / 3)
    assert small["recall"] == pytest.approx(1.0)
    assert small["ap50"] == pytest.approx(1.0)
    renamed = [ann(1, [strip(400, 0, 2), BIG], ["bar", "dot"]), preds[1]]
    assert evaluate_gcg_small(renamed, refs, text_similarity=EqualTextSimilarity())["recall"] == 0.0


def test_ap50_edge_cases():
    assert mask_ap50([ann(1, [])], [ann(1, AP_GT)]) == 0.0
    assert np.isnan(mask_ap50([ann(1, AP_PRED)], [ann(1, [])]))


def test_ap50_matches_coco_summarize_on_random_masks():
    rng = np.random.default_rng(0)
    preds, refs, dts, gts, images = [], [], [], [], []
    for image in range(1, 6):
        gt_masks = [rng.random((12, 16)) < 0.3 for _ in range(int(rng.integers(1, 4)))]
        # Noisy copies of some ground truths plus random blobs, with random scores.
        pred_masks = [m ^ (rng.random(m.shape) < 0.15) for m in gt_masks[: int(rng.integers(0, 4))]]
        pred_masks += [rng.random((12, 16)) < 0.3 for _ in range(int(rng.integers(0, 3)))]
        scores = rng.random(len(pred_masks)).tolist()
        preds.append(ann(image, pred_masks, scores=scores))
        refs.append(ann(image, gt_masks))
        images.append({"id": image, "height": 12, "width": 16})
        for m in gt_masks:
            rle = to_rle(m)
            gts.append(
                {"id": len(gts) + 1, "image_id": image, "category_id": 1, "segmentation": rle}
                | {"area": int(m.sum()), "iscrowd": 0}
            )
        dts += [
            {"image_id": image, "category_id": 1, "segmentation": to_rle(m), "score": s}
            for m, s in zip(pred_masks, scores, strict=True)
        ]
    # The standard pycocotools recipe, all ten IoU thresholds, read from summarize()'s AP50.
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": gts, "categories": [{"id": 1}]}
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(dts), iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert mask_ap50(preds, refs) == pytest.approx(evaluator.stats[1])


def test_annotation_json_round_trip():
    original = ann("img", AP_PRED, ["a", "b", "c"], scores=[0.5, 0.25, 1.0], caption="A cat.")
    restored = GCGAnnotation.from_dict(json.loads(json.dumps(original.to_dict())))
    assert restored == original
    with pytest.raises(ValueError, match="2 scores for 3 masks"):
        ann("img", AP_PRED, scores=[0.5, 0.25])


def test_evaluate_gcg_combines_the_metrics(monkeypatch):
    preds = [ann("x", [P0, P1], ["a", "b"], caption="a cat"), ann("y", AP_PRED, caption="a dog")]
    refs = [ann("x", [G0, G1], ["a", "b"], caption="the cat"), ann("y", AP_GT, caption="a dog")]
    seen = {}

    def fake_caption_scores(predictions, references):
        seen["args"] = (predictions, references)
        return {"METEOR": CorpusScore(0.25, []), "CIDEr": CorpusScore(1.5, [])}

    monkeypatch.setattr(gcg_module, "caption_scores", fake_caption_scores)
    similarity = EqualTextSimilarity()
    scores = evaluate_gcg(list(reversed(preds)), refs, text_similarity=similarity)
    assert seen["args"] == (["a cat", "a dog"], ["the cat", "a dog"])  # in reference order
    assert scores.n_images == 2 and json.loads(json.dumps(scores.to_dict()))["n_images"] == 2
    assert (scores.meteor, scores.cider) == (0.25, 1.5)
    assert scores.ap50 == mask_ap50(preds, refs)
    assert scores.miou == gcg_miou(preds, refs)
    assert scores.recall == gcg_recall(preds, refs, text_similarity=similarity)
    assert evaluate_gcg(preds, refs, text_similarity=similarity, captions=False).meteor is None


def test_mismatched_image_sets_are_an_error():
    with pytest.raises(ValueError, match=r"no prediction for \['y'\]"):
        gcg_miou([ann("x", [])], [ann("x", []), ann("y", [])])
    with pytest.raises(ValueError, match="two predictions"):
        gcg_miou([ann("x", []), ann("x", [])], [ann("x", [])])
