"""The benchmark's tables: every row, and one summary line per method and budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from segprune.bench.matrix import Row


def markdown(rows: Sequence[Row]) -> str:
    """Render rows as a markdown table with each row's speed-up over the unpruned prefill."""
    base = {r.batch: r.prefill_ms for r in rows if r.kind == "unpruned"}
    lines = [
        "| batch | reduction | method | row | N_avg | prefill ms (p10–p90) | speed-up | decode ms/token | "
        "KV cache MB | peak MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        speed = base[r.batch] / r.prefill_ms if r.prefill_ms else float("nan")
        reduction = "—" if r.reduction is None else f"{r.reduction:.0%}"
        decode = "—" if r.decode_ms_per_token is None else f"{r.decode_ms_per_token:.2f}"
        peak = "—" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}"
        low, high = r.prefill_spread_ms
        lines.append(
            f"| {r.batch} | {reduction} | {r.method} | {r.kind} | {r.n_avg:.1f} | "
            f"{r.prefill_ms:.2f} ({low:.2f}–{high:.2f}) | {speed:.2f}× | {decode} | "
            f"{r.kv_cache_mb:.1f} | {peak} |"
        )
    return "\n".join(lines)


def summary(rows: Sequence[Row]) -> str:
    """Render one line per method and budget: its speed-up next to its ideal and eager-scoring rows'.

    "of ideal" is the method's speed-up over the ideal row's; "selection" is the share of the
    method's prefill not spent by the ideal row (scoring, superpixels, merging, bookkeeping).
    """
    base = {r.batch: r.prefill_ms for r in rows if r.kind == "unpruned"}
    by_key = {(r.batch, r.reduction, r.method, r.kind): r for r in rows}
    lines = [
        "| batch | reduction | method | N_avg | speed-up | ideal | eager scoring | of ideal | selection |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def speed(row: Row | None) -> str:
        return "—" if row is None else f"{base[row.batch] / row.prefill_ms:.2f}×"

    for r in rows:
        if r.kind != "method":
            continue
        ideal = by_key.get((r.batch, r.reduction, r.method, "ideal"))
        eager = by_key.get((r.batch, r.reduction, r.method, "eager"))
        of_ideal = "—" if ideal is None else f"{ideal.prefill_ms / r.prefill_ms:.2f}"
        share = "—" if ideal is None else f"{(r.prefill_ms - ideal.prefill_ms) / r.prefill_ms:.1%}"
        lines.append(
            f"| {r.batch} | {r.reduction:.0%} | {r.method} | {r.n_avg:.1f} | {speed(r)} | {speed(ideal)} | "
            f"{speed(eager)} | {of_ideal} | {share} |"
        )
    return "\n".join(lines)


def header(command: str, env: dict[str, Any], dtype: str, graph: bool, budget: str) -> str:
    """Return the line that heads a table: the command, the machine and software, how prefill ran."""
    return (
        f"`{command}` on {env.get('gpu', env['processor'])}, "
        f"torch {env['torch']}, transformers {env['transformers']}, {dtype}, "
        f"prefill {'as one CUDA graph' if graph else 'eager'}, reductions on the {budget} axis"
    )


def gcg_markdown(rows: Sequence[Any]) -> str:
    """Render end-to-end generation rows (`segprune.bench.gcg.GCGRow`) as a markdown table.

    "vs no-cache" is the row's tokens per second over the no-cache reference row's of the same table
    (at batch 1, its total time over this row's); "tokens equal" the share of greedy tokens equal to
    the row named after it (no-cache and graphed rows are checked against the eager cached row).
    """
    reference = next((r.tokens_per_s for r in rows if r.kind == "no-cache"), None)
    lines = [
        "| batch | reduction | method | row | decode | N_avg | TTFT ms | decode ms/token | total ms | "
        "tokens/s | vs no-cache | KV cache MB | peak MB | tokens equal |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        reduction = "—" if r.reduction is None else f"{r.reduction:.0%}"
        speed = "—" if reference is None else f"{r.tokens_per_s / reference:.2f}×"
        peak = "—" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}"
        equal = "—" if r.token_match is None else f"{r.token_match:.1%} ({r.reference})"
        lines.append(
            f"| {r.batch} | {reduction} | {r.method} | {r.kind} | {r.mode} | {r.n_avg:.1f} | "
            f"{r.ttft_ms:.2f} | {r.decode_ms_per_token:.3f} | {r.total_ms:.1f} | {r.tokens_per_s:.1f} | "
            f"{speed} | {r.kv_cache_mb:.2f} | {peak} | {equal} |"
        )
    return "\n".join(lines)


def gcg_header(command: str, env: dict[str, Any], dtype: str, budget: str, fused_slic: bool = False) -> str:
    """Return the line that heads an end-to-end generation table: the command, machine and software."""
    cpu = f"{env['processor']} CPU ({env['cpu_count']} cores, {env['torch_threads']} threads)"
    where = env.get("gpu") or cpu
    return (
        f"`{command}` on {where}, torch {env['torch']}, transformers {env['transformers']}, {dtype}, "
        f"reductions on the {budget} axis{', fused SLIC' if fused_slic else ''}"
    )
