"""The benchmark's matrix: every method × reduction × batch size, with unpruned, ideal and eager rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from segprune.bench.models import bench_inputs, build_model
from segprune.bench.timing import attention, measure
from segprune.checks import check_device, check_int, check_reductions
from segprune.methods import METHODS
from segprune.methods.replay import ReplayConfig


@dataclasses.dataclass
class Row:
    """One timed configuration."""

    batch: int
    reduction: float | None
    method: str
    kind: str  # "unpruned", "method", "ideal" or "eager"
    prefill_mode: str  # "graph" (one CUDA graph) or "eager" (ordinary PyTorch)
    n_avg: float
    prefill_ms: float
    prefill_spread_ms: tuple[float, float]  # 10th and 90th percentile
    decode_ms_per_token: float | None
    peak_memory_mb: float | None
    kv_cache_mb: float
    config: dict[str, Any] | None


def check_matrix(methods: Sequence[str], reductions: Sequence[float], batches: Sequence[int]) -> None:
    """Raise naming the first bad method name, reduction or batch size."""
    if not methods:
        raise ValueError(f"no method given; valid: {sorted(METHODS)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid: {sorted(METHODS)}")
    check_reductions(reductions)
    if not batches:
        raise ValueError("no batch size given; valid: integers >= 1, e.g. 1,16")
    for batch in batches:
        check_int("batches", batch, 1)


def method_configs(
    budget: str,
    methods: Sequence[str],
    reductions: Sequence[float],
    n_layers: int,
    n_image: int,
    progress: Callable[[str], None],
) -> list[tuple[float, str, Any]]:
    """`(reduction, method, config)` for every pair whose schedule reaches that reduction on `budget`'s
    axis, in order (reduction-major); each pair that cannot is reported through `progress` and left out."""
    from segprune.eval.budgets import budget_config

    configs = []
    for reduction in reductions:
        for method in methods:
            try:
                configs.append(
                    (reduction, method, budget_config(budget, method, reduction, n_layers, n_image))
                )
            except ValueError as err:  # the method's schedule cannot reach this reduction
                progress(f"skipped: {err}")
    return configs


def run(
    preset: str,
    methods: Sequence[str],
    reductions: Sequence[float],
    batches: Sequence[int],
    *,
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    repeats: int = 20,
    warmup: int = 5,
    decode_tokens: int = 32,
    references: bool = True,
    graph: bool = False,
    budget: str = "navg",
    progress: Callable[[str], None] = print,
) -> list[Row]:
    """Time every method × reduction × batch size, with unpruned, ideal and eager reference rows.

    `budget` picks the reduction axis (`segprune.eval.budgets.budget_config`): "navg", equal average
    live image tokens N_avg (CSP Table 6's axis), or "paper", each method as the papers set it.
    `graph`: every prefill, the reference rows' too, as one CUDA graph (`measure`).
    """
    from segprune.eval.budgets import check_budget

    check_budget(budget)
    check_device(device)
    if graph and not device.startswith("cuda"):
        raise ValueError(f"graph=True needs a CUDA device, got device={device!r}")
    check_matrix(methods, reductions, batches)
    model = build_model(preset, device, dtype)
    n_layers = model.config.text_config.num_hidden_layers
    n_image = model.config.image_seq_length
    rows: list[Row] = []

    def add(batch, reduction, method, kind, result, config):
        rows.append(
            Row(
                batch=batch,
                reduction=reduction,
                method=method,
                kind=kind,
                prefill_mode="graph" if graph else "eager",
                n_avg=result["n_avg"],
                prefill_ms=result["prefill_ms"],
                prefill_spread_ms=result["prefill_spread_ms"],
                decode_ms_per_token=result["decode_ms_per_token"],
                peak_memory_mb=result["peak_memory_mb"],
                kv_cache_mb=result["kv_cache_mb"],
                config=config.to_dict() if config is not None and config.name in METHODS else None,
            )
        )
        progress(f"batch {batch} {method} {kind} r={reduction}: prefill {result['prefill_ms']:.2f} ms")

    timing = {"repeats": repeats, "warmup": warmup, "decode_tokens": decode_tokens, "graph": graph}
    configs = method_configs(budget, methods, reductions, n_layers, n_image, progress)
    for batch in batches:
        inputs = bench_inputs(model, batch)
        add(batch, None, "none", "unpruned", measure(model, inputs, None, **timing), None)
        for reduction, method, config in configs:
            result = measure(model, inputs, config, **timing)
            add(batch, reduction, method, "method", result, config)
            if not references:
                continue
            replay = ReplayConfig.from_stats(result["stats"], check=False)
            add(batch, reduction, method, "ideal", measure(model, inputs, replay, **timing), replay)
            with attention(model, "eager"):
                add(batch, reduction, method, "eager", measure(model, inputs, config, **timing), config)
    return rows
