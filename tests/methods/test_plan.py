"""Token plans: validation, per-layer live counts, the order of score and apply events."""

from __future__ import annotations

import pytest

from segprune.methods.plan import AttentionScore, Keep, Reactivate, TokenPlan
from segprune.methods.select import TopK


def test_live_counts_with_reactivation():
    plan = TokenPlan(10, 6, (Keep(0, 3, TopK()), Reactivate(2), Keep(4, 2, TopK(), AttentionScore(3))))
    assert plan.live_counts() == [3, 3, 10, 10, 2, 2]


def test_events_score_before_apply_and_after_previous_step():
    plan = TokenPlan(10, 6, (Keep(2, 5, TopK(), AttentionScore(1)), Keep(3, 2, TopK(), AttentionScore(3))))
    assert plan.events() == [(1, "score", 0), (2, "apply", 0), (3, "score", 1), (3, "apply", 1)]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ((Keep(6, 2, TopK()),), "valid: 0 <= layer <= 5"),
        ((Keep(1, 0, TopK()),), "valid: 1 <= count <= 10"),
        ((Keep(1, 11, TopK()),), "valid: 1 <= count <= 10"),
        ((Keep(1, 5, TopK()), Keep(2, 6, TopK())), "valid: 1 <= count <= 5"),
        ((Keep(3, 5, TopK()), Keep(3, 2, TopK())), "must come after layer 3"),
        ((Keep(2, 5, TopK()), Keep(4, 2, TopK(), AttentionScore(1))), "2 <= score layer <= 4"),
        ((Keep(2, 5, TopK(), AttentionScore(3)),), "0 <= score layer <= 2"),
    ],
)
def test_invalid_plans(steps, message):
    with pytest.raises(ValueError, match=message):
        TokenPlan(10, 6, steps)


def test_bad_score_token():
    with pytest.raises(ValueError, match="token='cls'"):
        AttentionScore(1, "cls")


def test_an_adaptive_step_reports_its_bound():
    """An adaptive step's selector decides each sample's count; the plan knows only the bound."""
    plan = TokenPlan(10, 4, (Keep(0, 10, TopK(), adaptive=True),))
    assert plan.adaptive and plan.live_counts() == [10] * 4
    assert not TokenPlan(10, 4, (Keep(0, 3, TopK()),)).adaptive
    with pytest.raises(ValueError, match="adaptive=1 must be True or False"):
        Keep(0, 3, TopK(), adaptive=1)
