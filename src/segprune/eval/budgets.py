"""Two budget axes for every method: a target image-token reduction mapped to each method's fields.

`paper_config` (the sweep's default axis) sets each method as the papers do on LLaVA-1.5-7B's 32
decoder layers, to be mapped to another depth with `segprune.methods.scale.scale_layers`; see its
docstring. `config_for` solves for equal average cost in the given decoder:

A reduction r means N_avg = (1 - r) * N: the live image tokens averaged over decoder layers (CSP
Eq. 9), the axis CSP's Table 6 compares methods on. Equal r therefore means roughly equal decoder
cost whatever the schedule. Counts are integers, so a target is hit to within one token step; a
target no schedule of the method's form can reach in the given decoder raises `ValueError`.

| method | schedule kept | solved for |
| --- | --- | --- |
| fastv, altp | drop at K = 2 of 32 layers, scaled to depth (at least 1) | the kept count |
| pdrop | stages at 1/4, 1/2, 3/4 of depth | the per-stage ratio |
| csp | (Lc, Nc, Ls, Np), the layer split closest to CSP Table 6 (7B-336) | Nc or Np |
| visionzip | dominant : contextual = 54 : 10 (VisionZip's 64-token setting) | the total count |
| prumerge | PruMerge+ | the total count |
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from segprune import flops
from segprune.methods import METHODS, MethodConfig
from segprune.methods.csp import TABLE6
from segprune.methods.fastv import keep_count, round_half_up
from segprune.methods.scale import scale_layers

FLOPS_TOLERANCE = 0.01  # pdrop's paper rule: accepted |FLOPs fraction - FastV's|
TOLERANCE = 0.025  # accepted |achieved - target| reduction, or half a token step if that is larger
EXACT = 0.005  # CSP: any split this close counts as a hit, and the paper-like shape decides
CSP_REFERENCE = "llava-1.5-7b-336"


def achieved_reduction(config: MethodConfig, n_layers: int, n_image: int) -> float:
    """Return 1 - N_avg / N of `config`'s token plan."""
    return 1 - flops.n_avg(config.plan(n_image, n_layers).live_counts()) / n_image


def config_for(
    method: str,
    reduction: float,
    n_layers: int,
    n_image: int,
    *,
    tolerance: float | None = None,
    **overrides: Any,
) -> MethodConfig:
    """Return `method`'s config whose N_avg is (1 - `reduction`) * `n_image` in an `n_layers` decoder.

    `overrides` set fields the budget does not decide (ALTP's `allocation`, CSP's `cluster` and
    `score_token`). Raises `ValueError` when no config of the method's form comes within
    `tolerance` of the target (default: 0.025, or half a token step, 0.5 / N, if larger), naming
    the closest it found.
    """
    if "pdrop_rule" in overrides:
        raise ValueError("pdrop_rule sets PyramidDrop on the paper axis; the N_avg axis solves for N_avg")
    if tolerance is None:
        tolerance = max(TOLERANCE, 0.5 / n_image) + 1e-9
    if not 0 < reduction < 1:
        raise ValueError(f"reduction={reduction!r} must lie strictly between 0 and 1")
    if method not in _RULES:
        known = sorted(_RULES)
        raise ValueError(f"no budget rule for method {method!r}; config_for knows {known}")
    cls = METHODS[method]
    fields = _RULES[method](reduction, n_layers, n_image)
    config = cls(**{**fields, **overrides})
    achieved = achieved_reduction(config, n_layers, n_image)
    if abs(achieved - reduction) > tolerance:
        raise ValueError(
            f"{method} cannot reach an image-token reduction of {reduction:g} with {n_image} image tokens "
            f"in a {n_layers}-layer decoder (closest: {achieved:.3f}, with {_fields(config, fields)})"
        )
    return config


PAPER_LAYERS = 32  # LLaVA-1.5-7B's decoder, on which the papers set their budgets


PDROP_RULES = ("flops", "last_stage")


def paper_config(
    method: str, reduction: float, n_image: int, *, pdrop_rule: str = "flops", **overrides: Any
) -> MethodConfig:
    """Return `method`'s config at `reduction` as the papers set it, for a 32-layer LLaVA-1.5-7B decoder.

    ALTP Table 1's convention ("retaining 57, 144, 288 tokens, corresponding to a 90%, 75%, and 50%
    reduction"): floor((1 - r) * N) image tokens remain after the method's (last) pruning step —
    FastV and ALTP dropping at K = 2, VisionZip split 54 : 10 dominant : contextual, PruMerge+.
    PyramidDrop keeps its stages at layers 8/16/24 with one ratio: `pdrop_rule="flops"` (default)
    solves the ratio for FastV's FLOPs at r, as ALTP Table 1 compares them (ALTP Eq. 5 on
    LLaVA-1.5-7B-336, 32 text tokens), and raises `ValueError` where those stages cannot get that low
    (r = 0.9: FastV's 20% against at least 29%); `"last_stage"` lets the last stage hold the budget.
    CSP keeps its Table 6 setting for r on 7B-336 (an N_avg reduction), or where Table 6 has no row
    for r (or N is not 576), the `config_for` rule at 32 layers. `overrides` as in `config_for`.
    Map the result to a shallower decoder with `scale_layers(config, PAPER_LAYERS, n_layers)`.
    """
    if not 0 < reduction < 1:
        raise ValueError(f"reduction={reduction!r} must lie strictly between 0 and 1")
    if method not in _RULES:
        raise ValueError(f"no budget rule for method {method!r}; paper_config knows {sorted(_RULES)}")
    count = max(1, math.floor((1 - reduction) * n_image + 1e-9))
    ratio = _shortest(count / n_image, lambda r: keep_count(r, n_image) == count)
    if method in ("fastv", "altp"):
        fields: dict[str, Any] = {"layer": 2, "keep_ratio": ratio}
    elif method == "pdrop":
        fields = _paper_pdrop(pdrop_rule, count, n_image)
    elif method == "csp":
        table = TABLE6[CSP_REFERENCE]
        preset = next((row for r, row in table.items() if abs(r - reduction) < 1e-9), None)
        if preset is None or n_image != flops.preset(CSP_REFERENCE).image_tokens:
            return config_for(method, reduction, PAPER_LAYERS, n_image, **overrides)
        keys = ("cluster_layers", "cluster_tokens", "scatter_layers", "prune_tokens")
        fields = dict(zip(keys, preset, strict=True))
    elif method == "visionzip":
        fields = _split_visionzip(count)
    else:
        fields = {"plus": True, "keep_ratio": ratio}
    return METHODS[method](**{**fields, **overrides})


PDROP_PAPER_LAYERS = (8, 16, 24)  # PyramidDrop's stages on LLaVA-1.5-7B


def _paper_pdrop(rule: str, count: int, n_image: int) -> dict[str, Any]:
    """PyramidDrop's paper-axis fields: FastV's FLOPs (`flops`) or `count` tokens at its last stage."""
    if rule not in PDROP_RULES:
        raise ValueError(f"pdrop_rule={rule!r}; valid: {list(PDROP_RULES)}")
    layers = PDROP_PAPER_LAYERS

    def live(ratio: float) -> list[int]:
        return METHODS["pdrop"](layers=layers, ratio=ratio).plan(n_image, PAPER_LAYERS).live_counts()

    if rule == "last_stage":
        ratio = _shortest((count / n_image) ** (1 / 3), lambda r: live(r)[-1] == count)
        return {"layers": layers, "ratio": ratio}
    dims = dataclasses.replace(flops.preset(CSP_REFERENCE), image_tokens=n_image)
    target = flops.altp_fraction([n_image] * 2 + [count] * (PAPER_LAYERS - 2), dims)  # FastV, K = 2

    def cost(ratio: float) -> float:
        return flops.altp_fraction(live(ratio), dims)

    lowest = cost(1e-9)
    if target < lowest - FLOPS_TOLERANCE:
        raise ValueError(
            f"pdrop with stages {list(layers)} cannot reach FastV's {target:.1%} of dense FLOPs "
            f"(its lowest is {lowest:.1%}); pdrop_rule='last_stage' keeps {count} tokens at its last stage"
        )
    lo, hi = 1e-9, 1.0  # the cost grows with the ratio: bisect, then take the closer side
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(mid) < target else (lo, mid)
    ratio = min((lo, hi), key=lambda r: abs(cost(r) - target))
    counts = live(ratio)
    return {"layers": layers, "ratio": _shortest(ratio, lambda r: r <= 1 and live(r) == counts)}


def _fields(config: MethodConfig, names: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.to_dict().items() if k in names)


def _drop_layer(n_layers: int) -> int:
    """FastV's and ALTP's K = 2 in LLaVA-1.5's 32 layers, at the same relative depth (at least 1)."""
    return max(1, min(n_layers - 1, round_half_up(2 * n_layers / 32)))


def _one_drop(reduction: float, n_layers: int, n_image: int) -> dict[str, Any]:
    layer = _drop_layer(n_layers)
    # N_avg * L = K * N + (L - K) * kept
    kept = ((1 - reduction) * n_image * n_layers - layer * n_image) / (n_layers - layer)
    kept = min(n_image, max(1, round_half_up(kept)))
    return {"layer": layer, "keep_ratio": _shortest(kept / n_image, lambda r: keep_count(r, n_image) == kept)}


def _pdrop(reduction: float, n_layers: int, n_image: int) -> dict[str, Any]:
    layers = tuple(sorted({max(1, round_half_up(n_layers * f)) for f in (0.25, 0.5, 0.75)} - {n_layers}))
    if not layers:
        raise ValueError(f"pdrop needs at least 2 decoder layers, got {n_layers}")
    cls = METHODS["pdrop"]

    def live_at(ratio: float) -> list[int]:
        return cls(layers=layers, ratio=ratio).plan(n_image, n_layers).live_counts()

    def reduction_at(ratio: float) -> float:
        return 1 - flops.n_avg(live_at(ratio)) / n_image

    # The reduction falls as the ratio grows (in integer steps): bisect, then take the closer side.
    lo, hi = 1e-9, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if reduction_at(mid) > reduction else (lo, mid)
    ratio = min((lo, hi), key=lambda r: abs(reduction_at(r) - reduction))
    live = live_at(ratio)
    return {"layers": layers, "ratio": _shortest(ratio, lambda r: r <= 1 and live_at(r) == live)}


def _csp(reduction: float, n_layers: int, n_image: int) -> dict[str, Any]:
    if n_layers < 3:
        raise ValueError(f"csp needs at least 3 decoder layers (three stages), got {n_layers}")
    table = TABLE6[CSP_REFERENCE]
    row = table[min(table, key=lambda r: abs(r - reduction))]
    ref_dims = flops.preset(CSP_REFERENCE)
    lc_f, ls_f = row[0] / ref_dims.num_layers, row[2] / ref_dims.num_layers
    nc_ref = min(n_image, max(1, round_half_up(row[1] / ref_dims.image_tokens * n_image)))
    np_ref = min(n_image, max(1, round_half_up(row[3] / ref_dims.image_tokens * n_image)))
    target = (1 - reduction) * n_image * n_layers  # live tokens summed over layers

    def count(x: float) -> int:
        return min(n_image, max(1, round_half_up(x)))

    best: tuple | None = None
    for lc in range(1, n_layers - 1):
        for ls in range(1, n_layers - lc):
            lp = n_layers - lc - ls
            rest = target - ls * n_image
            for nc, np_ in (
                (nc_ref, count((rest - lc * nc_ref) / lp)),
                (count((rest - lp * np_ref) / lc), np_ref),
            ):
                error = abs(lc * nc + ls * n_image + lp * np_ - target) / (n_image * n_layers)
                shape = abs(lc / n_layers - lc_f) + abs(ls / n_layers - ls_f)
                key = (0.0 if error <= EXACT else error, shape, error)
                if best is None or key < best[0]:
                    best = (key, lc, nc, ls, np_)
    _, lc, nc, ls, np_ = best
    return {"cluster_layers": lc, "cluster_tokens": nc, "scatter_layers": ls, "prune_tokens": np_}


def _total(reduction: float, n_image: int) -> int:
    return min(n_image, max(1, round_half_up((1 - reduction) * n_image)))


def _visionzip(reduction: float, n_layers: int, n_image: int) -> dict[str, Any]:
    return _split_visionzip(_total(reduction, n_image))


def _split_visionzip(count: int) -> dict[str, Any]:
    """VisionZip's own split of 64 tokens, 54 dominant : 10 contextual, for `count` tokens."""
    contextual = round_half_up(count * 10 / 64)
    return {"dominant": count - contextual, "contextual": contextual}


def _prumerge(reduction: float, n_layers: int, n_image: int) -> dict[str, Any]:
    count = _total(reduction, n_image)
    return {"plus": True, "keep_ratio": _shortest(count / n_image, lambda r: keep_count(r, n_image) == count)}


def _shortest(value: float, same: Callable[[float], bool]) -> float:
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


_RULES = {
    "fastv": _one_drop,
    "altp": _one_drop,
    "pdrop": _pdrop,
    "csp": _csp,
    "visionzip": _visionzip,
    "prumerge": _prumerge,
}


def variants() -> dict[str, tuple[str, dict[str, Any]]]:
    """Return the sweep's rows, label -> (method, overrides): ALTP per allocation, CSP per clustering."""
    from segprune.methods.csp import CLUSTER_MODES

    rows: dict[str, tuple[str, dict[str, Any]]] = {}
    for name in sorted(METHODS):
        if name == "altp":
            rows.update({f"altp-{a}": ("altp", {"allocation": a}) for a in ("ddc", "ddf")})
        elif name == "csp":
            rows.update({f"csp-{m}": ("csp", {"cluster": m}) for m in CLUSTER_MODES})
        elif name == "pdrop":
            rows["pdrop"] = ("pdrop", {})
            rows["pdrop-last_stage"] = ("pdrop", {"pdrop_rule": "last_stage"})
        else:
            rows[name] = (name, {})
    return rows


AXES = {
    "paper": "each method as the papers set it on LLaVA-1.5-7B for that reduction — (1 - r) * 576 image "
    "tokens left after the last pruning step (FastV, ALTP, VisionZip, PruMerge+; PDrop's last stage in "
    "pdrop-last_stage), PDrop at FastV's FLOPs (ALTP Table 1), CSP's Table 6 setting (N_avg) — with its "
    "layers mapped to this model's depth; N_avg shows what each really keeps.",
    "navg": "target image-token reduction, 1 - N_avg / N, in this model's decoder.",
}
BUDGETS = tuple(AXES)


def check_budget(budget: str) -> None:
    """Raise `ValueError` unless `budget` names an axis; callers that turn a cell's `ValueError`
    into "skipped" check first, so a misspelt axis is not reported as every cell unreachable."""
    if budget not in BUDGETS:
        raise ValueError(f"budget={budget!r}; valid: {list(BUDGETS)}")


def budget_config(
    budget: str, method: str, reduction: float, n_layers: int, n_image: int, **overrides: Any
) -> MethodConfig:
    """Return `method`'s config at `reduction` for an `n_layers` decoder on the `budget` axis.

    `overrides` may hold `pdrop_rule` (see `paper_config`), which only the paper axis knows."""
    check_budget(budget)
    if budget == "paper":
        return scale_layers(paper_config(method, reduction, n_image, **overrides), PAPER_LAYERS, n_layers)
    return config_for(method, reduction, n_layers, n_image, **overrides)
