"""LISA-protocol IoU, gIoU and cIoU, checked against hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segprune.eval.metrics import RefSegAccumulator, mask_counts, mask_iou, to_rle


def grid(rows: list[str]) -> np.ndarray:
    """Return a bool mask drawn with '#' for foreground and '.' for background."""
    return np.array([[c == "#" for c in row] for row in rows])


PRED = grid(["##.", "##.", "..."])  # 4 pixels
TARGET = grid([".#.", ".##", "..."])  # 3 pixels


def test_iou_by_hand():
    # Intersection: (0,1), (1,1) = 2. Union: 4 + 3 - 2 = 5. IoU = 2/5.
    counts = mask_counts(PRED, TARGET)
    assert (counts.intersection, counts.union) == (2, 5)
    assert mask_iou(PRED, TARGET) == pytest.approx(0.4)


def test_empty_cases():
    empty = np.zeros((3, 3), bool)
    assert mask_iou(empty, empty) == 1.0  # LISA's no-object target predicted as empty
    assert mask_iou(PRED, empty) == 0.0  # object predicted where there is none
    assert mask_iou(empty, TARGET) == 0.0


def test_ignore_pixels_leave_both_counts():
    # Ignoring column 0 drops pred pixels (0,0) and (1,0): pred 2 px, target 3 px, intersection 2,
    # union 3 -> IoU 2/3.
    ignore = grid(["#..", "#..", "#.."])
    assert mask_counts(PRED, TARGET, ignore=ignore).union == 3
    assert mask_iou(PRED, TARGET, ignore=ignore) == pytest.approx(2 / 3)


def test_accepts_torch_and_01_ints():
    assert mask_iou(torch.from_numpy(PRED), TARGET.astype(np.uint8)) == pytest.approx(0.4)


def test_rejects_logits_and_ignore_label():
    with pytest.raises(ValueError, match="logits > 0"):
        mask_iou(PRED.astype(float) * 3.5, TARGET)
    with pytest.raises(ValueError, match="ignore=target == 255"):
        mask_iou(PRED, TARGET.astype(np.uint8) * 255)
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(PRED, TARGET[:2])


def filled_accumulator() -> RefSegAccumulator:
    acc = RefSegAccumulator()
    acc.add(PRED, TARGET, tags=("phrase",), sample_id="a")  # I=2, U=5, IoU 0.4
    empty = np.zeros((3, 3), bool)
    acc.add(empty, empty, tags=("phrase", "small"), sample_id="b")  # I=0, U=0, IoU 1
    acc.add(TARGET, TARGET, tags="sentence", sample_id="c")  # I=3, U=3, IoU 1
    acc.add_counts(1, 4, tags=["sentence", "small"], sample_id="d")  # IoU 0.25
    return acc


def test_giou_and_ciou_by_hand_with_tags():
    summary = filled_accumulator().summary()
    assert list(summary) == ["all", "phrase", "sentence", "small"]
    # all: gIoU = (0.4 + 1 + 1 + 0.25) / 4 = 0.6625; cIoU = (2+0+3+1) / (5+0+3+4) = 6/12.
    assert summary["all"].n == 4
    assert summary["all"].giou == pytest.approx(0.6625)
    assert summary["all"].ciou == pytest.approx(0.5)
    # phrase: samples a, b -> gIoU (0.4 + 1) / 2 = 0.7, cIoU 2/5.
    assert summary["phrase"].giou == pytest.approx(0.7)
    assert summary["phrase"].ciou == pytest.approx(0.4)
    # sentence: c, d -> gIoU (1 + 0.25) / 2, cIoU (3+1)/(3+4).
    assert summary["sentence"].giou == pytest.approx(0.625)
    assert summary["sentence"].ciou == pytest.approx(4 / 7)
    # small: b, d -> gIoU (1 + 0.25) / 2, cIoU 1/4.
    assert summary["small"].giou == pytest.approx(0.625)
    assert summary["small"].ciou == pytest.approx(0.25)


def test_all_empty_set_has_ciou_zero_as_lisa():
    acc = RefSegAccumulator()
    acc.add_counts(0, 0)
    assert acc.summary()["all"].giou == 1.0
    assert acc.summary()["all"].ciou == 0.0


def test_resume_from_jsonl(tmp_path):
    acc = filled_accumulator()
    path = tmp_path / "samples.jsonl"
    lines = [json.dumps({**record, "latency_ms": 12.5}) for record in acc.records()]
    # The run was stopped while writing a fifth line.
    path.write_text("\n".join(lines) + '\n{"id": "e", "intersec')
    resumed = RefSegAccumulator.from_jsonl(path)
    assert len(resumed) == 4 and "c" in resumed and "e" not in resumed
    assert resumed.summary() == acc.summary()
    with pytest.raises(ValueError, match="already added"):
        resumed.add(PRED, TARGET, sample_id="a")


def test_corrupt_line_inside_jsonl_is_an_error(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"intersection": 1, "union": 2}\nnot json\n{"intersection": 1, "union": 2}\n')
    with pytest.raises(ValueError, match=":2:"):
        RefSegAccumulator.from_jsonl(path)


def test_bad_counts_and_tags():
    acc = RefSegAccumulator()
    with pytest.raises(ValueError, match="intersection <= union"):
        acc.add_counts(3, 2)
    with pytest.raises(ValueError, match="'all'"):
        acc.add_counts(1, 2, tags=("all",))


def test_accepts_rle_and_float_tensors():
    assert mask_iou(to_rle(PRED), torch.from_numpy(TARGET).to(torch.bfloat16)) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="logits > 0"):
        mask_iou(torch.from_numpy(PRED).float() - 0.5, TARGET)
