"""Timing one configuration: synchronised wall-clock prefill and cached decode, KV-cache size, peak memory."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

import segprune
from segprune.bench.models import seg_token_id
from segprune.methods import MethodConfig
from segprune.patch.transformers_api import cache_kwargs, output_cache


def synchronize(device: torch.device) -> None:
    """Wait for the device to finish queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Return the wall-clock milliseconds of `repeats` calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(1000 * (time.perf_counter() - start))
    return times


def cache_bytes(cache: Any) -> int:
    """Return the bytes held by a `DynamicCache`'s keys and values over all layers."""
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
    return total


@torch.no_grad()
def prefill(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> Any:
    """Run one cached prefill; return its output (logits of the last position only)."""
    return model(**inputs, use_cache=True, logits_to_keep=1)


@torch.no_grad()
def time_decode(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], steps: int, repeats: int
) -> list[float]:
    """Return the milliseconds per token of `steps` cached greedy decode steps after an untimed prefill."""
    device = model.device
    length = inputs["input_ids"].shape[1]
    times = []
    for _ in range(repeats):
        out = prefill(model, inputs)
        cache = output_cache(model, out)
        token = out.logits[:, -1:].argmax(-1)
        synchronize(device)
        start = time.perf_counter()
        for step in range(steps):
            position = torch.full_like(token, length + step)
            out = model(input_ids=token, position_ids=position, use_cache=True, **cache_kwargs(model, cache))
            token = out.logits[:, -1:].argmax(-1)
        synchronize(device)
        times.append(1000 * (time.perf_counter() - start) / steps)
    return times


def percentiles(times: Sequence[float]) -> tuple[float, float]:
    """Return the 10th and 90th percentile of `times` (nearest rank)."""
    ordered = sorted(times)
    low = ordered[int(0.1 * (len(ordered) - 1))]
    high = ordered[round(0.9 * (len(ordered) - 1))]
    return low, high


@contextlib.contextmanager
def attention(model: torch.nn.Module, implementation: str) -> Iterator[None]:
    """Switch every layer to `implementation` attention for the block, then back."""
    previous = model.config.text_config._attn_implementation
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def measure(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    config: MethodConfig | None,
    *,
    repeats: int,
    warmup: int,
    decode_tokens: int,
    graph: bool = False,
) -> dict[str, Any]:
    """Time prefill and decode of `model` pruned with `config` (None: unpruned).

    `graph`: every prefill runs as one CUDA graph (`segprune.GraphedPrefill`, which checks each
    call's prompt layout: one small comparison and one synchronisation per call, included in the
    times); decode steps stay eager.
    """
    device = model.device
    segprune.unprune(model)
    if config is not None:
        segprune.prune_(model, config, seg_token_id=seg_token_id(model))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if graph:
        from segprune.graph import GraphedPrefill

        # One eager prefill first: what compiles lazily (the fused SLIC's torch.compile) does so
        # outside the capture's warm-up, which refuses every host synchronisation.
        prefill(model, inputs)
        runner = GraphedPrefill(model, inputs["input_ids"], inputs["pixel_values"])
        call = lambda: runner(inputs["input_ids"], inputs["pixel_values"])  # noqa: E731
    else:
        call = lambda: prefill(model, inputs)  # noqa: E731
    times = time_calls(call, device, repeats, warmup)
    out = call()
    n_image = model.config.image_seq_length
    stats = segprune.stats(model) if config is not None else None
    result = {
        "n_avg": stats.n_avg if stats is not None else float(n_image),
        "prefill_ms": statistics.median(times),
        "prefill_spread_ms": percentiles(times),
        "kv_cache_mb": cache_bytes(out.cache if graph else output_cache(model, out)) / 2**20,
        "stats": stats,
        "decode_ms_per_token": None,
        "peak_memory_mb": None,
    }
    if decode_tokens:
        per_token = time_decode(model, inputs, decode_tokens, max(1, repeats // 4))
        result["decode_ms_per_token"] = statistics.median(per_token)
    if device.type == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    segprune.unprune(model)
    if graph:
        del runner, call, out
        torch.cuda.empty_cache()  # the graph's private memory pool
    return result
