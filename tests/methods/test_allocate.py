"""ALTP's budget split (Eqs. 3-4, capped targets, largest remainder) and per-region top-k selection."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from segprune.methods.allocate import (
    allocate,
    capped_targets,
    ddc_weights,
    ddf_weights,
    density,
    select_by_quota,
)
from segprune.methods.regions import region_stats

# -- hand-computed values -------------------------------------------------------------------------


def test_density_is_variance_times_root_area():
    d = density(torch.tensor([[2.0, 8.0, 1.0]]), torch.tensor([[0.25, 0.75, 0.0]]))
    assert torch.allclose(d, torch.tensor([[1.0, 8 * math.sqrt(0.75), 0.0]]))


def test_ddf_weights_follow_eq4():
    d = torch.tensor([[1.0, 3.0, 0.0, 5.0]])
    present = torch.tensor([[True, True, False, True]])
    w = ddf_weights(d, present, alpha=1.5)
    logits = [1 / 7.5, 3 / 7.5, 5 / 7.5]  # d / (alpha * max d) over the present regions
    total = sum(math.exp(x) for x in logits)
    expected = [math.exp(logits[0]) / total, math.exp(logits[1]) / total, 0.0, math.exp(logits[2]) / total]
    assert torch.allclose(w, torch.tensor([expected]), atol=1e-6)


def test_ddf_weights_of_a_flat_image_are_uniform():
    w = ddf_weights(torch.zeros(1, 3), torch.tensor([[True, True, False]]), alpha=1.5)
    assert torch.allclose(w, torch.tensor([[0.5, 0.5, 0.0]]))


@pytest.mark.parametrize(
    ("weights", "sizes", "budget", "expected"),
    [
        ((0.5, 0.3, 0.2), (9, 9, 9), 10, (5, 3, 2)),  # exact shares
        ((0.45, 0.35, 0.2), (9, 9, 9), 7, (3, 3, 1)),  # 3.15, 2.45, 1.4: the 0.45 remainder wins
        ((0.8, 0.1, 0.1), (2, 10, 10), 6, (2, 2, 2)),  # region 0 is full; its excess split 1:1
        ((0.9, 0.05, 0.05), (10, 10, 10), 4, (2, 1, 1)),  # every region gets one; region 0 the rest
        ((0.5, 0.3, 0.2), (9, 9, 9), 2, (1, 1, 0)),  # fewer tokens than regions: largest shares win
        ((0.5, 0.0, 0.5), (4, 0, 4), 3, (2, 0, 1)),  # absent region; a 1.5 / 1.5 tie goes to index 0
    ],
)
def test_allocate_by_hand(weights, sizes, budget, expected):
    quotas = allocate(torch.tensor([weights]), torch.tensor([sizes]), budget)
    assert quotas.tolist() == [list(expected)]


def test_ddc_gives_every_region_the_same_keep_ratio():
    sizes = torch.tensor([[4, 8, 12, 0]])
    assert allocate(ddc_weights(sizes), sizes, 12).tolist() == [[2, 4, 6, 0]]
    # 5 tokens over 4 / 4 / 8: 1.25, 1.25, 2.5 -> floors 1, 1, 2 and the 0.5 remainder.
    sizes = torch.tensor([[4, 4, 8]])
    assert allocate(ddc_weights(sizes), sizes, 5).tolist() == [[1, 1, 3]]


def test_select_by_quota_by_hand():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.8, 0.2, 0.7]])
    labels = torch.tensor([[0, 0, 1, 1, 1, 0]])
    chosen = select_by_quota(scores, labels, torch.tensor([[2, 1]]))
    assert chosen.tolist() == [[1, 3, 5]]  # region 0: 0.9 and 0.7; region 1: 0.8
    # Equal scores go to the lower position.
    chosen = select_by_quota(torch.zeros(1, 6), labels, torch.tensor([[1, 2]]))
    assert chosen.tolist() == [[0, 2, 3]]


# -- a constructed image: half flat, half texture --------------------------------------------------


def flat_and_texture(size: int = 32) -> torch.Tensor:
    image = torch.full((1, 3, size, size), 0.5)
    image[..., size // 2 :] = torch.rand(1, 3, size, size // 2, generator=torch.Generator().manual_seed(0))
    return image


def test_ddf_favours_the_textured_half_and_ddc_splits_evenly():
    grid = (8, 8)
    labels = (torch.arange(64) % 8 >= 4).long()[None]  # region 0: left (flat), region 1: right (texture)
    variance, area = region_stats(flat_and_texture(), labels, grid, 2)
    assert variance[0, 0] == 0 and variance[0, 1] > 0.05
    assert area.tolist() == [[0.5, 0.5]]
    sizes = torch.tensor([[32, 32]])
    d = density(variance, area)
    ddf = allocate(ddf_weights(d, sizes > 0, alpha=1.5), sizes, 16, rank_by=d)
    ddc = allocate(ddc_weights(sizes), sizes, 16)
    # softmax(0, 1/1.5) gives the textured half 66% of 16 tokens: 10.6 -> 11.
    assert ddf.tolist() == [[5, 11]]
    assert ddc.tolist() == [[8, 8]]


# -- properties -------------------------------------------------------------------------------------


@st.composite
def regions(draw, equal_sizes: bool = False):
    batch = draw(st.integers(1, 3))
    n_regions = draw(st.integers(1, 7))
    if equal_sizes:
        size = draw(st.integers(1, 9))
        sizes = [[size] * n_regions for _ in range(batch)]
    else:
        sizes = [
            draw(st.lists(st.integers(0, 9), min_size=n_regions, max_size=n_regions)) for _ in range(batch)
        ]
        for row in sizes:
            if not any(row):
                row[0] = 1
    budget = draw(st.integers(1, min(sum(row) for row in sizes)))
    value = st.floats(0, 100, allow_nan=False, width=32)
    densities = [draw(st.lists(value, min_size=n_regions, max_size=n_regions)) for _ in range(batch)]
    alpha = draw(st.sampled_from([0.5, 1.0, 1.5, 4.0]))
    return torch.tensor(sizes), budget, torch.tensor(densities), alpha


def ddf_quotas(sizes, budget, densities, alpha):
    weights = ddf_weights(densities, sizes > 0, alpha)
    return allocate(weights, sizes, budget, rank_by=densities), weights


@settings(max_examples=300, deadline=None)
@given(regions())
def test_quotas_are_exact_bounded_and_cover_every_region(case):
    sizes, budget, _, _ = case
    for quotas in (ddf_quotas(*case)[0], allocate(ddc_weights(sizes), sizes, budget)):
        assert quotas.dtype == torch.long
        assert quotas.sum(dim=1).tolist() == [budget] * sizes.shape[0]
        assert bool((quotas >= 0).all()) and bool((quotas <= sizes).all())
        present = sizes > 0
        for b in range(sizes.shape[0]):
            if budget >= int(present[b].sum()):
                assert bool((quotas[b][present[b]] >= 1).all()), (quotas, sizes, budget)


@settings(max_examples=300, deadline=None)
@given(regions())
def test_quotas_round_the_capped_targets_by_largest_remainder(case):
    sizes, budget, _, _ = case
    quotas, weights = ddf_quotas(*case)
    targets = capped_targets(weights, sizes, budget)
    assert torch.allclose(targets.sum(dim=1), torch.tensor(float(budget)), atol=1e-3)
    # Each quota is its target rounded down or up ...
    assert bool((quotas >= targets.floor() - 1e-4).all()) and bool((quotas <= targets.ceil() + 1e-4).all())
    # ... and a rounded-down region never has a clearly larger remainder than a rounded-up one.
    fraction = targets - targets.floor()
    up = quotas > targets + 1e-4
    down = quotas < targets - 1e-4
    for b in range(sizes.shape[0]):
        if up[b].any() and down[b].any():
            assert fraction[b][down[b]].max() <= fraction[b][up[b]].min() + 1e-4
    # Regions off their bounds get targets proportional to their weights.
    lo = ((sizes > 0) & ((sizes > 0).sum(1, keepdim=True) <= budget)).float()
    free = (targets > lo + 1e-4) & (targets < sizes - 1e-4)
    for b in range(sizes.shape[0]):
        ratio = targets[b][free[b]] / weights[b][free[b]]
        if ratio.numel() > 1:
            assert torch.allclose(ratio, ratio.mean(), rtol=1e-3)


@settings(max_examples=300, deadline=None)
@given(regions(equal_sizes=True))
def test_quotas_are_monotone_in_density_among_equal_regions(case):
    sizes, _, densities, _ = case
    quotas, _ = ddf_quotas(*case)
    for b in range(sizes.shape[0]):
        for i in range(sizes.shape[1]):
            for j in range(sizes.shape[1]):
                if densities[b, i] > densities[b, j]:
                    assert quotas[b, i] >= quotas[b, j], (densities[b], quotas[b])


@settings(max_examples=200, deadline=None)
@given(regions(), st.integers(0, 2**31 - 1))
def test_select_by_quota_keeps_the_best_of_each_region(case, seed):
    sizes, budget, _, _ = case
    quotas, _ = ddf_quotas(*case)
    # Three samples share sample 0's regions, each with its own token layout and scores (with ties).
    batch, n_regions = 3, sizes.shape[1]
    quotas = quotas[:1].expand(batch, -1)
    gen = torch.Generator().manual_seed(seed)
    layout = torch.repeat_interleave(torch.arange(n_regions), sizes[0])
    n = layout.numel()
    labels = torch.stack([layout[torch.randperm(n, generator=gen)] for _ in range(batch)])
    scores = torch.randint(0, 5, (batch, n), generator=gen).float()
    chosen = select_by_quota(scores, labels, quotas, budget)
    assert chosen.shape == (batch, budget)
    assert bool((chosen[:, 1:] > chosen[:, :-1]).all()), "indices must be sorted and unique"
    assert torch.equal(select_by_quota(scores, labels, quotas), chosen)  # count read from quotas
    for b in range(batch):
        picked = torch.zeros(n, dtype=torch.bool)
        picked[chosen[b]] = True
        for k in range(n_regions):
            inside = labels[b] == k
            assert int((picked & inside).sum()) == quotas[b, k]
            if (picked & inside).any() and (~picked & inside).any():
                assert scores[b][picked & inside].min() >= scores[b][~picked & inside].max()
