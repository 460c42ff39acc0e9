"""`PruneStats`: N_avg and FLOPs of a prefill from its live tokens, checked by hand."""

from __future__ import annotations

import pytest
import torch

from segprune import flops
from segprune.patch.state import ForwardState, PruneStats, StaticLayout

DIMS = flops.ModelDims(num_layers=2, hidden_size=4, intermediate_size=8, image_tokens=6)


def stats(live, text):
    live = torch.tensor(live)
    return PruneStats(
        image_tokens=6,
        live_tokens=live,
        kept_indices=[torch.arange(int(n)).expand(live.shape[1], -1) for n in live[:, 0]],
        text_tokens=torch.tensor(text),
        scores=[None],
        dims=DIMS,
    )


def layer(n, m_matrices):
    """One layer's MACs: 4 n d^2 + 2 n^2 d + k n d m with d = 4, m = 8."""
    return 4 * n * 16 + 2 * n * n * 4 + m_matrices * n * 4 * 8


def test_n_avg_is_the_mean_over_layers_and_samples():
    assert stats([[6, 6], [2, 4]], [3, 5]).n_avg == 4.5


def test_flops_by_each_papers_formula():
    s = stats([[6, 6], [2, 2]], [4, 4])  # layer 0: 4 text + 6 image; layer 1: 4 + 2
    assert s.flops_csp == 2 * (layer(10, 3) + layer(6, 3))
    assert s.flops_altp == 2 * (layer(10, 2) + layer(6, 2))
    dense = 2 * (layer(10, 3) + layer(10, 3))
    assert s.flops_fraction() == pytest.approx(s.flops_csp / dense)
    assert s.flops_fraction("altp") == pytest.approx(s.flops_altp / (4 * layer(10, 2)))


def test_samples_average_before_the_formula():
    s = stats([[6, 6], [2, 4]], [3, 5])  # per layer: 6 and 3 image tokens; 4 text tokens on average
    assert s.flops_csp == 2 * (layer(10, 3) + layer(7, 3))
    with pytest.raises(ValueError, match="unknown formula 'eager'; valid formulas: csp, altp"):
        s.flops_fraction("eager")


def test_forward_state_starts_empty_and_layouts_are_plain_data():
    state = ForwardState(plan=None, cache=None, seq_len=0)
    assert state.key_seq == [] and state.kept == [] and state.scores == [] and not state.padded
    assert ForwardState(None, None, 0).kept is not state.kept  # no shared default lists
    assert StaticLayout(16) == StaticLayout(16, None)
