"""`ReplayConfig` turns recorded live sets into a plan of `Fixed` steps; `Fixed` checks what it returns."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from segprune.methods.plan import Keep, Reactivate, SelectContext
from segprune.methods.replay import Fixed, ReplayConfig

CONTEXT = SelectContext(n_image=4)


def sets(*layers):
    return tuple(torch.tensor(layer) for layer in layers)


def test_a_single_drop_is_one_keep_step():
    config = ReplayConfig(kept=sets([[0, 1, 2, 3]], [[0, 2]], [[0, 2]]))
    plan = config.plan(4, 3)
    assert plan.live_counts() == [4, 2, 2]
    (step,) = plan.steps
    assert isinstance(step, Keep) and step.layer == 1 and step.count == 2 and step.score is None
    assert step.select(None, torch.arange(4)[None], 2, CONTEXT).tolist() == [[0, 2]]


def test_drop_reactivate_drop_as_csp_runs():
    config = ReplayConfig(kept=sets([[1, 3]], [[0, 1, 2, 3]], [[3]]))
    plan = config.plan(4, 3)
    assert [type(s) for s in plan.steps] == [Keep, Reactivate, Keep]
    assert [s.layer for s in plan.steps] == [0, 1, 2]
    assert plan.live_counts() == [2, 4, 1]


def test_a_changed_set_of_the_same_size_is_a_new_step():
    plan = ReplayConfig(kept=sets([[0, 1]], [[0, 1]], [[1, 0]])).plan(4, 3)
    assert [s.layer for s in plan.steps] == [0, 2]


def test_plans_are_built_once_per_shape():
    config = ReplayConfig(kept=sets([[0, 1, 2, 3]], [[1, 2]]))
    assert config.plan(4, 2) is config.plan(4, 2)


def test_from_stats_copies_the_live_sets_and_the_numbering():
    kept = [torch.tensor([[0, 1, 2, 3]]), torch.tensor([[2, 3]])]
    config = ReplayConfig.from_stats(
        SimpleNamespace(kept_indices=kept, renumbered=True, image_counts=None), check=False
    )
    assert config.renumber and not config.check
    assert config.plan(4, 2).renumber
    kept[1][0, 0] = 0  # the stats' tensors may be reused; the replay holds its own copy
    assert config.kept[1].tolist() == [[2, 3]]


def test_errors_are_clear():
    with pytest.raises(ValueError, match=r"ReplayConfig.kept must hold one \(batch, n_live\) tensor"):
        ReplayConfig()
    with pytest.raises(ValueError, match="live sets for 2 layers; the model has 3"):
        ReplayConfig(kept=sets([[0, 1, 2, 3]], [[1]])).plan(4, 3)
    fixed = Fixed(torch.tensor([[0, 3]]))
    with pytest.raises(ValueError, match=r"recorded indices have shape \(1, 2\), expected \(1, 3\)"):
        fixed(None, torch.arange(4)[None], 3, CONTEXT)
    with pytest.raises(ValueError, match="recorded indices include tokens that are not live"):
        fixed(None, torch.tensor([[0, 1, 2]]), 2, CONTEXT)
    # Unchecked (benchmarks of plain index dropping): no host sync, the indices are trusted.
    assert Fixed(torch.tensor([[0, 3]]), check=False)(
        None, torch.tensor([[0, 1, 2]]), 2, CONTEXT
    ).tolist() == [[0, 3]]
