"""Attention rows and top-k selection, checked against hand-computed values."""

from __future__ import annotations

import math

import torch

from segprune.methods.plan import SelectContext
from segprune.methods.scores import attention_row
from segprune.methods.select import TopK


def test_attention_row_by_hand():
    # One sample, two heads, three keys, head_dim 1, scaling 1.
    # head 0: logits q*k = [0, 1, 2] with key 2 masked -> softmax([0, 1]) = [1/(1+e), e/(1+e)]
    # head 1: logits [0, 0, 0] with key 2 masked -> [1/2, 1/2]
    q = torch.tensor([[[1.0], [0.0]]])
    k = torch.tensor([[[[0.0], [1.0], [2.0]], [[5.0], [6.0], [7.0]]]])
    valid = torch.tensor([[True, True, False]])
    e = math.e
    expected = torch.tensor([[(1 / (1 + e) + 0.5) / 2, (e / (1 + e) + 0.5) / 2, 0.0]])
    assert torch.allclose(attention_row(q, k, valid, 1.0), expected)


def test_topk_keeps_highest_sorted_and_breaks_ties_low():
    live = torch.tensor([[0, 2, 5, 7, 9], [1, 2, 3, 4, 5]])
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.0], [0.5, 0.5, 0.5, 0.2, 0.5]])
    kept = TopK()(scores, live, 2, SelectContext(n_image=10))
    assert kept.tolist() == [[2, 7], [1, 2]]
