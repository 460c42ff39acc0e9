"""Integer token counts: rounding, the exact count of a keep ratio, and the small solvers that budget
rules share (a ratio that keeps a given count, bisection over a monotone count).

Pure Python, no torch: configs and budget rules run where torch is not imported.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up (Python's round() would send 28.5 to 28)."""
    return int(x + 0.5)


def keep_count(ratio: float, n: int) -> int:
    """Return round(ratio * n), at least 1: the exact per-sample budget for a keep ratio."""
    return max(1, round_half_up(ratio * n))


def total_count(reduction: float, n_image: int) -> int:
    """Return the tokens left by an image-token `reduction` of `n_image`, rounded, in 1..n_image."""
    return min(n_image, max(1, round_half_up((1 - reduction) * n_image)))


def shortest(value: float, same: Callable[[float], bool]) -> float:
    """Return the number with the fewest decimals that `same` accepts, near `value` (or `value`).

    Ratios solved from integer counts print as 0.4670138888888889; 0.467 keeps the same counts
    and reads better in config files and tables.
    """
    for digits in range(1, 13):
        scale = 10**digits
        for candidate in (
            round(value * scale) / scale,
            math.floor(value * scale) / scale,
            math.ceil(value * scale) / scale,
        ):
            if candidate > 0 and same(candidate):
                return candidate
    return value


def ratio_for_count(count: int, n: int) -> float:
    """Return the shortest keep ratio whose `keep_count` of `n` is exactly `count`."""
    return shortest(count / n, lambda r: keep_count(r, n) == count)


def bisect_ratio(value: Callable[[float], float], target: float, *, rising: bool) -> float:
    """Return the ratio in (0, 1] whose `value` comes closest to `target`.

    `value` moves in integer token steps, monotonically in the ratio (`rising`: it grows with the
    ratio), so bisection brackets the step and the closer side of the bracket wins.
    """
    lo, hi = 1e-9, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        below = value(mid) < target if rising else value(mid) > target
        lo, hi = (mid, hi) if below else (lo, mid)
    return min((lo, hi), key=lambda r: abs(value(r) - target))


def paper_count(reduction: float, n_image: int) -> int:
    """Return floor((1 - reduction) * N), at least 1: the tokens left after the last pruning step in
    ALTP Table 1's convention ("retaining 57, 144, 288 tokens" for 90%, 75%, 50%)."""
    return max(1, math.floor((1 - reduction) * n_image + 1e-9))
