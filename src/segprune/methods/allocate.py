"""Per-region token budgets (ALTP's DDC and DDF) and top-k selection inside each region.

Regions are stored padded: per-region tensors are `(batch, R)` with R an upper bound on the number
of regions in any sample; a region with size 0 does not exist in that sample and gets nothing.
Everything is batched tensor code with no host synchronisation, so it can run inside a captured
CUDA graph; budgets are Python ints because they fix output shapes.
"""

from __future__ import annotations

import lazy_loader

torch = lazy_loader.load("torch")  # configs are built where torch is not imported (the CLI's --help)


def density(variance: torch.Tensor, area: torch.Tensor) -> torch.Tensor:
    """Return ALTP's information density d_k = Var(S_k) * sqrt(|P_k| / |P_total|) (Eq. 3).

    Args:
        variance: `(batch, R)` colour variance of each region's pixels.
        area: `(batch, R)` fraction of the image each region covers, in [0, 1].
    """
    return variance * area.clamp(min=0).sqrt()


def ddf_weights(density: torch.Tensor, present: torch.Tensor, alpha: float) -> torch.Tensor:
    """Return w_k = softmax_k(d_k / (alpha * max d)) over the present regions (Eq. 4); absent get 0.

    When every present region has density 0 (a flat image) the weights are uniform.
    """
    neg_inf = torch.finfo(density.dtype).min
    top = density.masked_fill(~present, neg_inf).amax(dim=1, keepdim=True)
    # max d = 0 would divide by zero; any positive scale gives the same (uniform) answer then.
    # Dividing by max d before alpha keeps d / max d in [0, 1] even for subnormal densities.
    top = torch.where(top > 0, top, torch.ones_like(top))
    logits = (density / top / alpha).masked_fill(~present, float("-inf"))
    return logits.softmax(dim=1)


def ddc_weights(sizes: torch.Tensor) -> torch.Tensor:
    """Return weights proportional to region size: every region gets the same keep ratio (DDC)."""
    sizes = sizes.float()
    return sizes / sizes.sum(dim=1, keepdim=True).clamp(min=1)


def minimum_quotas(sizes: torch.Tensor, budget: int) -> torch.Tensor:
    """Return `(batch, R)` long: 1 for each present region when `budget` covers one token per
    present region, else 0 (then the strongest regions win the tokens)."""
    present = sizes > 0
    return (present & (present.sum(dim=1, keepdim=True) <= budget)).long()


def capped_targets(weights: torch.Tensor, sizes: torch.Tensor, budget: int) -> torch.Tensor:
    """Return real-valued targets t_k = clip(lam * w_k, lo_k, size_k) that sum to `budget`.

    lo_k is 1 for every present region when the budget covers one token per region, else 0. Without
    bounds t_k = budget * w_k (lam = budget); a region that cannot hold its share passes the excess
    to the others in proportion to their weights, and regions lifted to one token take theirs from
    the others the same way. The sum is piecewise linear and non-decreasing in lam, so lam is found
    exactly by evaluating it at every breakpoint and interpolating on the segment that crosses
    `budget` (no iteration, no data-dependent control flow).

    Args:
        weights: `(batch, R)` non-negative; positive wherever `sizes` > 0.
        sizes: `(batch, R)` tokens available in each region; 0 marks an absent region.
        budget: tokens to hand out per sample, 0 <= budget <= sizes.sum(1).
    Returns:
        `(batch, R)` float32 targets.
    """
    w = weights.float()
    hi = sizes.float()
    present = sizes > 0
    lo = minimum_quotas(sizes, budget).float()
    safe_w = torch.where(present, w, torch.ones_like(w))
    lam_lo = torch.where(present, lo / safe_w, torch.zeros_like(w))
    lam_hi = torch.where(present, hi / safe_w, torch.zeros_like(w))
    zero = torch.zeros_like(w[:, :1])
    breaks = torch.cat([zero, lam_lo, lam_hi], dim=1).sort(dim=1).values  # (batch, 2R + 1)
    totals = (breaks[:, :, None] * w[:, None, :]).clamp(lo[:, None, :], hi[:, None, :]).sum(-1)
    target = torch.full_like(zero, float(budget))
    right = torch.searchsorted(totals.contiguous(), target).clamp(1, breaks.shape[1] - 1)
    left = right - 1
    b0, b1 = breaks.gather(1, left), breaks.gather(1, right)
    f0, f1 = totals.gather(1, left), totals.gather(1, right)
    slope = (b1 - b0) / (f1 - f0).clamp(min=1e-12)
    lam = torch.where(f0 >= target, b0, b0 + (target - f0) * slope)
    return (lam * w).clamp(lo, hi)


def allocate(
    weights: torch.Tensor, sizes: torch.Tensor, budget: int, rank_by: torch.Tensor | None = None
) -> torch.Tensor:
    """Return integer quotas that sum to exactly `budget`, rounded from the capped targets by largest
    remainder.

    Every present region gets at least one token when `budget` >= the number of present regions,
    and no region more tokens than it has. Rounding is Hamilton's method: each region keeps the
    floor of its target and the leftover tokens go to the largest fractional parts. It is done as a
    selection so the result is exact even where float error blurs a floor: the j-th token of region
    k claims t_k - j (the first `lo_k` tokens claim +inf), and the `budget` strongest claims win.
    Equal claims go to the region ranked higher by `rank_by` (default: the weights), then to the
    lower region index, so quotas are monotone in `rank_by` among equal-size regions.

    Args:
        weights: `(batch, R)` allocation weights (`ddf_weights` or `ddc_weights`).
        sizes: `(batch, R)` long, tokens available in each region.
        budget: tokens per sample.
        rank_by: `(batch, R)` tie-break order, e.g. the densities the weights came from.
    Returns:
        `(batch, R)` long quotas.
    """
    batch, regions = sizes.shape
    if budget == 0:
        return torch.zeros_like(sizes, dtype=torch.long)
    if rank_by is None:
        rank_by = weights
    targets = capped_targets(weights, sizes, budget)
    lo = minimum_quotas(sizes, budget)
    # The claims of every token slot, (batch, R, budget): claims fall with j, so no region can win
    # more than `budget` slots and later slots need not exist.
    slots = torch.arange(budget, device=sizes.device)
    claims = targets[:, :, None] - slots
    claims = claims.masked_fill(slots < lo[:, :, None], float("inf"))
    claims = claims.masked_fill(slots >= sizes[:, :, None], float("-inf"))
    # Visit regions in tie-break order so a stable sort of the claims breaks ties by it.
    region_order = torch.sort(rank_by.float(), dim=1, descending=True, stable=True).indices
    claims = claims.gather(1, region_order[:, :, None].expand_as(claims)).flatten(1)
    best = torch.sort(claims, dim=1, descending=True, stable=True).indices[:, :budget]
    ranked_region = torch.div(best, budget, rounding_mode="floor")
    counts = torch.zeros(batch, regions, dtype=torch.long, device=sizes.device)
    counts.scatter_add_(1, ranked_region, torch.ones_like(ranked_region))
    quotas = torch.zeros_like(counts)
    return quotas.scatter_(1, region_order, counts)


def select_by_quota(
    scores: torch.Tensor, labels: torch.Tensor, quotas: torch.Tensor, count: int | None = None
) -> torch.Tensor:
    """Return `(batch, count)` sorted token positions: the `quotas[k]` best-scoring tokens of each region k.

    Ties in score go to the lower position.

    Args:
        scores: `(batch, n)` importance of each token.
        labels: `(batch, n)` long region of each token, in 0..R-1.
        quotas: `(batch, R)` long, how many tokens each region keeps; at most its size, and every
            row summing to `count`.
        count: the per-sample total; read from `quotas` when omitted (a host sync).
    """
    batch, n = scores.shape
    if count is None:
        count = int(quotas[0].sum())
    # Group tokens by region with each group best-first: a stable sort by score, then a stable sort
    # by region that keeps that order inside each region.
    by_score = torch.sort(scores, dim=1, descending=True, stable=True).indices
    by_region = torch.sort(labels.gather(1, by_score), dim=1, stable=True)
    order = by_score.gather(1, by_region.indices)
    region = by_region.values
    sizes = torch.zeros_like(quotas).scatter_add_(1, labels, torch.ones_like(labels))
    starts = sizes.cumsum(dim=1) - sizes
    rank = torch.arange(n, device=scores.device) - starts.gather(1, region)
    chosen = torch.zeros(batch, n, dtype=torch.bool, device=scores.device)
    chosen.scatter_(1, order, rank < quotas.gather(1, region))
    # The chosen positions in ascending order: a stable sort puts them first without a host sync.
    return torch.sort((~chosen).to(torch.int8), dim=1, stable=True).indices[:, :count]
