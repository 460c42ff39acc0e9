"""`TopK`: the highest-scoring live tokens, ties to the lower index, returned in index order."""

from __future__ import annotations

import pytest
import torch

from segprune.methods.plan import SelectContext
from segprune.methods.select import TopK

CONTEXT = SelectContext(n_image=8)


def test_keeps_the_highest_scores_in_index_order():
    live = torch.tensor([[0, 2, 3, 5, 7]])
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2]])
    assert TopK()(scores, live, 2, CONTEXT).tolist() == [[2, 5]]
    assert TopK()(scores, live, 3, CONTEXT).tolist() == [[2, 3, 5]]


def test_ties_go_to_the_lower_index():
    live = torch.arange(6).expand(2, 6)
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 0.5, 0.5, 0.0, 0.5, 0.5]])
    assert TopK()(scores, live, 3, CONTEXT).tolist() == [[0, 1, 2], [1, 2, 4]]


def test_each_sample_chooses_on_its_own():
    live = torch.tensor([[1, 2, 3], [4, 5, 6]])
    scores = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    assert TopK()(scores, live, 1, CONTEXT).tolist() == [[1], [6]]


def test_keeping_every_live_token_returns_them_all():
    live = torch.tensor([[0, 4, 6]])
    assert torch.equal(TopK()(torch.rand(1, 3), live, 3, CONTEXT), live)


def test_needs_scores():
    with pytest.raises(ValueError, match="TopK needs scores; give the Keep step an AttentionScore"):
        TopK()(None, torch.arange(4)[None], 2, CONTEXT)
