"""What a run cost: N_avg and TFLOPs of the model's prefill, the same schedule on LLaVA-1.5-7B-336,
and measured latency, all computed from the per-sample records.

Each record carries `live` (live image tokens in each decoder layer, from `segprune.stats`, or N in
every layer unpruned), `text_tokens` (the prefill's non-image tokens) and `batch` (its batch's
index, size, seconds, device, and whether it was a warm-up batch).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from segprune import flops

SCALED_PRESET = "llava-1.5-7b-336"


def scale_schedule(fractions: Sequence[float], dims: flops.ModelDims) -> list[float]:
    """Map per-layer live fractions of one decoder onto `dims`' layers by relative depth.

    Layer l of the target reads the source layer at the same relative depth,
    `fractions[l * L_src // L_tgt]`, times the target's image tokens. When L_tgt is a multiple of
    L_src every source layer covers the same number of target layers, so N_avg / N is unchanged.
    """
    n_src = len(fractions)
    return [fractions[i * n_src // dims.num_layers] * dims.image_tokens for i in range(dims.num_layers)]


def cost_summary(records: Sequence[dict[str, Any]], dims: flops.ModelDims) -> dict[str, Any]:
    """Return N_avg and prefill TFLOPs (CSP Eqs. 9-11) of the model and of its 7B-336 equivalent.

    Model TFLOPs use each sample's own text-token count (mean over samples). The 7B-336 equivalent
    runs the mean live fraction of each layer, scaled by depth (`scale_schedule`), with the preset's
    62 text tokens, the count that fits CSP's Table 6, so it reads like the papers' numbers.
    """
    if not records:
        return {}
    live = np.array([r["live"] for r in records], dtype=float)  # (samples, layers)
    text = np.array([r["text_tokens"] for r in records], dtype=float)
    if live.shape[1] != dims.num_layers:
        raise ValueError(f"records hold {live.shape[1]} layers, the model has {dims.num_layers}")
    dense = [dims.image_tokens] * dims.num_layers
    pruned = [flops.decoder_flops(row, dims, t, "csp") for row, t in zip(live.tolist(), text, strict=True)]
    full = [flops.decoder_flops(dense, dims, t, "csp") for t in text]
    scaled = flops.report(
        scale_schedule(live.mean(axis=0) / dims.image_tokens, flops.preset(SCALED_PRESET)), SCALED_PRESET
    )
    return {
        "image_tokens": dims.image_tokens,
        "n_avg": float(live.mean()),
        "image_token_reduction": float(1 - live.mean() / dims.image_tokens),
        "live_per_layer": live.mean(axis=0).tolist(),
        "text_tokens": float(text.mean()),
        "tflops": float(np.mean(pruned)) / 1e12,
        "dense_tflops": float(np.mean(full)) / 1e12,
        "dims": asdict(dims),
        SCALED_PRESET: {
            "n_avg": scaled.n_avg,
            "tflops": scaled.tflops,
            "dense_tflops": scaled.dense_tflops,
            "text_tokens": scaled.text_tokens,
            "altp_fraction": scaled.altp_fraction,
        },
    }


def latency_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Return the median and spread of the measured seconds per batch and per sample.

    The first batch of each process (a warm-up: lazy initialisation, allocator, kernels chosen) is
    left out unless nothing else was timed; then `includes_warmup` says so. A batch recomputed after
    an interruption counts once, with its latest timing.
    """
    batches: dict[int, dict[str, Any]] = {}
    for record in records:
        batches[record["batch"]["index"]] = record["batch"]
    timed = [b for b in batches.values() if not b["warmup"]]
    includes_warmup = not timed
    timed = timed or list(batches.values())
    if not timed:
        return {}
    seconds = np.array([b["seconds"] for b in timed])
    per_sample = np.array([b["seconds"] / b["size"] for b in timed])
    return {
        "batches_timed": len(timed),
        "warmup_batches_left_out": len(batches) - len(timed),
        "includes_warmup": includes_warmup,  # only warm-up batches ran: their times are all there is
        "batch_sizes": sorted({b["size"] for b in timed}),
        "per_batch_s": _spread(seconds),
        "per_sample_s": _spread(per_sample),
        "devices": sorted({b["device"] for b in timed}),
    }


def _spread(values: np.ndarray) -> dict[str, float]:
    p10, median, p90 = np.percentile(values, [10, 50, 90])
    return {
        "median": float(median),
        "p10": float(p10),
        "p90": float(p90),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def environment(device: Any) -> dict[str, Any]:
    """Return the software and machine a run measured on (what eval summaries and bench rows record)."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
