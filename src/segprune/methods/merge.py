"""Shared pieces of the merging baselines (VisionZip, PruMerge+): even picks, key similarity, averages.

Pure tensor functions, one row per sample: `(batch, n, ...)` in, `(batch, ...)` out. Token
"positions" here index the live image tokens a selector or merger was given (0..n_live-1).
"""

from __future__ import annotations

from collections.abc import Callable

import lazy_loader

from segprune.methods.plan import SelectContext

torch = lazy_loader.load("torch")  # configs are built where torch is not imported (the CLI's --help)


def require(condition: torch.Tensor, summary: str, describe: Callable[[], str]) -> None:
    """Check a one-element bool tensor without a host synchronisation on accelerators.

    On CPU a failure raises `ValueError(describe())`, with the values; elsewhere the check is a
    device-side assertion (`torch._assert_async`): the forward stays free of host reads, so it can
    run inside a CUDA graph, and a failure stops the device's work with `summary`.
    """
    try:
        torch._assert_async(condition, summary)
    except RuntimeError:  # raised at once on CPU only; elsewhere the assertion fires on the device
        raise ValueError(describe()) from None


def mask_to_indices(mask: torch.Tensor, count: int) -> torch.Tensor:
    """Return the sorted positions of the True entries of a `(batch, n)` mask with `count` per row."""
    found = mask.sum(dim=1)
    require(
        (found == count).all(),
        f"segprune: expected {count} marked tokens per sample",
        lambda: f"expected {count} marked tokens per sample, found {found.tolist()}",
    )
    # A stable sort puts the marked positions first and keeps them in index order.
    return torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :count]


def spread(candidates: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
    """Pick `count` of each row's candidates, spread evenly over the candidates in index order.

    With T candidates, pick i (i < count) is the candidate of rank floor((2i + 1) * T / (2 * count)),
    the middle of the i-th of `count` equal slices, so the picks cover the whole order evenly
    (raster order of the patch grid, so they are spread over the image too).

    Args:
        candidates: `(batch, n)` bool.
        count: picks per row: an int, or a `(batch,)` integer tensor; 0 <= count <= that row's
            candidates.
    Returns:
        `(batch, n)` bool, True at the picked positions.
    """
    batch, n = candidates.shape
    device = candidates.device
    # A Python count becomes a fill on the device, not a host-to-device copy.
    count = torch.full((batch,), count, device=device) if isinstance(count, int) else count.expand(batch)
    total = candidates.sum(dim=1)
    require(
        ((count >= 0) & (count <= total)).all(),
        "segprune: spread was asked for more picks than candidates",
        lambda: f"cannot pick {count.tolist()} of {total.tolist()} candidates",
    )
    order = torch.sort((~candidates).to(torch.int8), dim=1, stable=True).indices
    i = torch.arange(n, device=device)
    rank = (2 * i + 1) * total[:, None] // (2 * count.clamp(min=1)[:, None])
    picked = order.gather(1, rank.clamp(max=n - 1))
    # Unused slots (i >= count) write into a spare column, so they never clear or add a pick.
    picked = torch.where(i < count[:, None], picked, n)
    out = torch.zeros(batch, n + 1, dtype=torch.bool, device=device)
    out.scatter_(1, picked, True)
    return out[:, :n]


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return `(batch, m, n)` float32 cosine similarities between rows of `a` and rows of `b`."""
    return torch.nn.functional.normalize(a.float(), dim=-1) @ torch.nn.functional.normalize(
        b.float(), dim=-1
    ).transpose(1, 2)


def assign_to_targets(keys: torch.Tensor, targets: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Return each token's group owner: members join the target whose key is most similar.

    Args:
        keys: `(batch, n, d)` one key per token.
        targets: `(batch, n)` bool, the group owners; every row with a non-target member needs one.
        members: `(batch, n)` bool, the tokens to group (targets among them own themselves).
    Returns:
        `(batch, n)` long: the owner position of each member (by cosine similarity of keys, ties
        to the lower position); every other token owns itself.
    """
    batch, n = targets.shape
    similarity = cosine_similarity(keys, keys).masked_fill(~targets[:, None, :], float("-inf"))
    own = torch.arange(n, device=keys.device).expand(batch, n)
    return torch.where(members & ~targets, similarity.argmax(dim=-1), own)


def nearest_neighbours(keys: torch.Tensor, centres: torch.Tensor, k: int) -> torch.Tensor:
    """Mark, for each centre, the `k` other tokens whose keys are most similar to its own (cosine).

    Args:
        keys: `(batch, n, d)` one key per token.
        centres: `(batch, c)` positions of the centres.
        k: neighbours per centre, 0 <= k <= n - 1.
    Returns:
        `(batch, c, n)` bool; a centre is never its own neighbour.
    """
    d = keys.shape[-1]
    centre_keys = keys.gather(1, centres[..., None].expand(-1, -1, d))
    similarity = cosine_similarity(centre_keys, keys)
    similarity.scatter_(2, centres[..., None], float("-inf"))
    out = torch.zeros(similarity.shape, dtype=torch.bool, device=keys.device)
    return out.scatter_(2, similarity.topk(k, dim=-1).indices, True)


def weighted_average(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Return `(batch, c, D)`: each row of `weights` `(batch, c, n)` (>= 0, sum > 0), normalised to sum
    to 1, applied to `hidden` `(batch, n, D)`; computed in float32, returned in `hidden`'s dtype."""
    w = weights.float()
    w = w / w.sum(dim=-1, keepdim=True)
    return (w @ hidden.float()).to(hidden.dtype)


def live_cls_attention(context: SelectContext, layer: int, live: torch.Tensor) -> torch.Tensor:
    """Return `(batch, n_live)` CLS attention of vision layer `layer` to the live image tokens."""
    return _vision(context).cls_attention(layer).gather(1, live)


def live_keys(context: SelectContext, layer: int, live: torch.Tensor) -> torch.Tensor:
    """Return `(batch, heads, n_live, head_dim)` keys of vision layer `layer` for the live image tokens."""
    keys = _vision(context).keys(layer)
    return keys.gather(2, live[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[3]))


def _vision(context: SelectContext):
    if context.vision is None:
        raise ValueError(
            "this method reads the vision tower's CLS attention and keys; run it through "
            "segprune.prune_ on a model whose family has a vision CLS row (LLaVA) and pass pixel_values"
        )
    return context.vision
