"""Two budget axes for every method: a target image-token reduction mapped to each method's fields.

`paper_config` (the sweep's default axis) sets each method as the papers do on LLaVA-1.5-7B's 32
decoder layers, to be mapped to another depth with `segprune.methods.scale.scale_layers`; see its
docstring. `config_for` solves for equal average cost in the given decoder:

A reduction r means N_avg = (1 - r) * N: the live image tokens averaged over decoder layers (CSP
Eq. 9), the axis CSP's Table 6 compares methods on. Equal r therefore means roughly equal decoder
cost whatever the schedule. Counts are integers, so a target is hit to within one token step; a
target no schedule of the method's form can reach in the given decoder raises `ValueError`.

The rules live on each method's config (`budget_fields` for this axis, `paper_fields` for the
papers'); this module checks what they produce. The table sums them up:

| method | schedule kept | solved for |
| --- | --- | --- |
| fastv, altp | drop at K = 2 of 32 layers, scaled to depth (at least 1) | the kept count |
| pdrop | stages at 1/4, 1/2, 3/4 of depth | the per-stage ratio |
| csp | (Lc, Nc, Ls, Np), the layer split closest to CSP Table 6 (7B-336) | Nc or Np |
| visionzip | dominant : contextual = 54 : 10 (VisionZip's 64-token setting) | the total count |
| prumerge | PruMerge+ | the total count |
"""

from __future__ import annotations

from typing import Any

from segprune import flops
from segprune.methods import METHODS, MethodConfig
from segprune.methods.scale import PAPER_LAYERS, scale_layers

__all__ = [
    "AXES",
    "BUDGETS",
    "PAPER_LAYERS",
    "achieved_reduction",
    "budget_config",
    "check_budget",
    "config_for",
    "paper_config",
    "variants",
]

TOLERANCE = 0.025  # accepted |achieved - target| reduction, or half a token step if that is larger


def achieved_reduction(config: MethodConfig, n_layers: int, n_image: int) -> float:
    """Return 1 - N_avg / N of `config`'s token plan."""
    return 1 - flops.n_avg(config.plan(n_image, n_layers).live_counts()) / n_image


def _method(method: str, caller: str) -> type[MethodConfig]:
    """Return the config class of `method`, or raise naming the methods `caller` knows."""
    if method not in METHODS:
        raise ValueError(f"no budget rule for method {method!r}; {caller} knows {sorted(METHODS)}")
    return METHODS[method]


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

    The method's `budget_fields` solves for its fields; `overrides` set fields the budget does not
    decide (ALTP's `allocation`, CSP's `cluster` and `score_token`). Raises `ValueError` when no
    config of the method's form comes within `tolerance` of the target (default: 0.025, or half a
    token step, 0.5 / N, if larger), naming the closest it found.
    """
    if "pdrop_rule" in overrides:
        raise ValueError("pdrop_rule sets PyramidDrop on the paper axis; the N_avg axis solves for N_avg")
    if tolerance is None:
        tolerance = max(TOLERANCE, 0.5 / n_image) + 1e-9
    if not 0 < reduction < 1:
        raise ValueError(f"reduction={reduction!r} must lie strictly between 0 and 1")
    cls = _method(method, "config_for")
    fields = cls.budget_fields(reduction, n_layers, n_image)
    config = cls(**{**fields, **overrides})
    achieved = achieved_reduction(config, n_layers, n_image)
    if abs(achieved - reduction) > tolerance:
        raise ValueError(
            f"{method} cannot reach an image-token reduction of {reduction:g} with {n_image} image tokens "
            f"in a {n_layers}-layer decoder (closest: {achieved:.3f}, with {_fields(config, fields)})"
        )
    return config


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
    for r (or N is not 576), the `config_for` rule at 32 layers (as for any method whose
    `paper_fields` gives no setting). `overrides` as in `config_for`. Map the result to a
    shallower decoder with `scale_layers(config, PAPER_LAYERS, n_layers)`.
    """
    if not 0 < reduction < 1:
        raise ValueError(f"reduction={reduction!r} must lie strictly between 0 and 1")
    cls = _method(method, "paper_config")
    fields = cls.paper_fields(reduction, PAPER_LAYERS, n_image, pdrop_rule=pdrop_rule)
    if fields is None:
        return config_for(method, reduction, PAPER_LAYERS, n_image, **overrides)
    return cls(**{**fields, **overrides})


def _fields(config: MethodConfig, names: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.to_dict().items() if k in names)


def variants() -> dict[str, tuple[str, dict[str, Any]]]:
    """Return the sweep's rows, label -> (method, overrides), from each method's `variants()`
    (ALTP per allocation, CSP per clustering mode, PyramidDrop per paper rule)."""
    rows: dict[str, tuple[str, dict[str, Any]]] = {}
    for name in sorted(METHODS):
        rows.update({label: (name, overrides) for label, overrides in METHODS[name].variants().items()})
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
