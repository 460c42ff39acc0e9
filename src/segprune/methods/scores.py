"""Attention rows recomputed for a few query tokens, instead of asking the model for eager attention."""

from __future__ import annotations

import lazy_loader

torch = lazy_loader.load("torch")  # configs are built where torch is not imported (the CLI's --help)


def attention_row(
    query: torch.Tensor, keys: torch.Tensor, key_valid: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Return softmax(q·Kᵀ·scaling) over the valid keys, averaged over heads.

    This equals the matching row of the eager attention weights, mean over heads, as FastV and
    PyramidDrop rank tokens.

    Args:
        query: `(batch, heads, head_dim)`, one query per sample, RoPE already applied.
        keys: `(batch, heads, n, head_dim)`, grouped-query keys already repeated to `heads`.
        key_valid: `(batch, n)` bool, False for keys the query may not see (padding, future).
        scaling: the attention scale, usually head_dim ** -0.5.
    Returns:
        `(batch, n)` float32 attention probabilities; invalid keys get 0.
    """
    logits = torch.einsum("bhd,bhnd->bhn", query.float(), keys.float()) * scaling
    logits = logits.masked_fill(~key_valid[:, None, :], float("-inf"))
    return logits.softmax(dim=-1).mean(dim=1)
