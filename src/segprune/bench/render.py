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
