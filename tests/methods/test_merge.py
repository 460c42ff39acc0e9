"""Shared merging helpers: even picks, key similarity, group assignment, neighbours, averages."""

from __future__ import annotations

import pytest
import torch

from segprune.methods.merge import (
    assign_to_targets,
    cosine_similarity,
    mask_to_indices,
    nearest_neighbours,
    spread,
    weighted_average,
)
from segprune.methods.plan import SelectContext
from segprune.methods.visionzip import VisionZipTokens


def picked(mask: torch.Tensor) -> list[list[int]]:
    return [row.nonzero().squeeze(1).tolist() for row in mask]


def test_spread_takes_the_middle_of_equal_slices():
    # 16 candidates, 6 picks: floor((2i + 1) * 16 / 12) = 1, 4, 6, 9, 12, 14.
    everything = torch.ones(1, 16, dtype=torch.bool)
    assert picked(spread(everything, 6)) == [[1, 4, 6, 9, 12, 14]]
    # Only the candidates count: ranks floor((2i + 1) * 7 / 6) = 1, 3, 5 of [0, 2, 3, 5, 7, 8, 11].
    candidates = torch.zeros(1, 12, dtype=torch.bool)
    candidates[0, [0, 2, 3, 5, 7, 8, 11]] = True
    assert picked(spread(candidates, 3)) == [[2, 5, 8]]
    # All candidates, or none at all.
    assert picked(spread(candidates, 7)) == [[0, 2, 3, 5, 7, 8, 11]]
    assert picked(spread(candidates, 0)) == [[]]


def test_spread_counts_per_row():
    candidates = torch.tensor([[True] * 8, [False, True, True, True, True, True, True, False]])
    # Row 0: 8 candidates, 2 picks -> ranks 2, 6. Row 1: 6 candidates, 3 picks -> ranks 1, 3, 5.
    assert picked(spread(candidates, torch.tensor([2, 3]))) == [[2, 6], [2, 4, 6]]
    with pytest.raises(ValueError, match="cannot pick"):
        spread(candidates, torch.tensor([2, 7]))


def test_mask_to_indices():
    mask = torch.tensor([[False, True, False, True], [True, True, False, False]])
    assert mask_to_indices(mask, 2).tolist() == [[1, 3], [0, 1]]
    with pytest.raises(ValueError, match="expected 3 marked tokens"):
        mask_to_indices(mask, 3)


def test_cosine_similarity():
    a = torch.tensor([[[3.0, 4.0]]])
    b = torch.tensor([[[1.0, 0.0], [0.0, -2.0], [6.0, 8.0]]])
    assert torch.allclose(cosine_similarity(a, b), torch.tensor([[[0.6, -0.8, 1.0]]]))


def test_members_join_the_target_with_the_most_similar_key_by_cosine():
    # Targets at 0 (key (10, 0)) and 3 (key (1, 1)). Token 1, key (1, 0.9), is closer in angle to
    # target 3 although its dot product with target 0 is larger. Token 2 points along target 0.
    # Token 4 is not a member and owns itself.
    keys = torch.tensor([[[10.0, 0.0], [1.0, 0.9], [0.5, 0.01], [1.0, 1.0], [0.0, 1.0]]])
    targets = torch.tensor([[True, False, False, True, False]])
    members = torch.tensor([[True, True, True, True, False]])
    assert assign_to_targets(keys, targets, members).tolist() == [[0, 3, 0, 3, 4]]


def test_nearest_neighbours_exclude_the_centre():
    keys = torch.tensor([[[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [1.0, -0.3], [-1.0, 0.05]]])
    # Centre 0: cosines 0.995 (1), 0 (2), 0.958 (3), -0.999 (4) -> 1 and 3.
    # Centre 2: cosines 0 (0), 0.0995 (1), -0.287 (3), 0.0499 (4) -> 1 and 4.
    near = nearest_neighbours(keys, torch.tensor([[0, 2]]), 2)
    assert picked(near[0]) == [[1, 3], [1, 4]]
    # A centre is never its own neighbour, even when k covers every other token.
    assert picked(nearest_neighbours(keys, torch.tensor([[2]]), 4)[0]) == [[0, 1, 3, 4]]


def test_weighted_average_normalises_the_weights():
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 4.0], [2.0, 2.0]]])
    weights = torch.tensor([[[1.0, 3.0, 0.0], [0.0, 0.0, 5.0]]])
    expected = torch.tensor([[[0.25, 3.0], [2.0, 2.0]]])
    assert torch.allclose(weighted_average(hidden, weights), expected)
    half = weighted_average(hidden.bfloat16(), weights)
    assert half.dtype == torch.bfloat16


def test_methods_without_vision_features_say_so():
    tokens = VisionZipTokens(dominant=2, contextual=1)
    live = torch.arange(4).expand(1, 4)
    with pytest.raises(ValueError, match="CLS attention and keys"):
        tokens.select(None, live, 3, SelectContext(n_image=4))
