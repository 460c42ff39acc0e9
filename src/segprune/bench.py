"""Wall-clock prefill and decode timing of pruning methods on preset LLaVA-1.5 architectures.

Models are built with random weights (speed does not depend on the values) at the real sizes:
CLIP ViT-L/14 vision tower, the two-layer projector and a Llama decoder. Each row times the whole
prefill (vision tower + projector + selection + decoder) and a fixed number of cached greedy decode
steps, after warm-up, with the device synchronised around every timed call.

Two reference rows accompany each method and budget:
* **ideal**: the method's own live-token counts by plain index dropping (its recorded live sets
  replayed, no scoring, no superpixels, no merging): the floor any implementation of the schedule
  can reach;
* **eager**: the same method with every layer on eager attention, which is what peers that read
  scores from attention weights have to run.

With `graph=True` (`--graph`) every prefill, the reference rows' too, runs as one CUDA graph
(`segprune.GraphedPrefill`, which checks each call's prompt layout: one small comparison and one
synchronisation per call, included in the times); decode steps stay eager.
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

import segprune
from segprune.checks import check_device, check_int, check_reductions
from segprune.methods import METHODS, MethodConfig
from segprune.methods.replay import ReplayConfig
from segprune.outdir import check_out_dir
from segprune.patch.transformers_api import cache_kwargs, output_cache

# Text tokens around the image: 62 in all, the count that reproduces CSP Table 6's TFLOPs
# (docs/flops.md), split like a LLaVA-1.5 prompt (system prompt before, question after).
TEXT_BEFORE, TEXT_AFTER = 35, 27

VISION = {"hidden": 1024, "intermediate": 4096, "layers": 24, "heads": 16, "patch": 14}
DECODERS = {
    "7b": {"hidden": 4096, "intermediate": 11008, "layers": 32, "heads": 32},
    "13b": {"hidden": 5120, "intermediate": 13824, "layers": 40, "heads": 40},
}
PRESETS = {
    "llava-1.5-7b-224": ("7b", 224),
    "llava-1.5-7b-336": ("7b", 336),
    "llava-1.5-13b-224": ("13b", 224),
}
TINY = "tiny"  # a small model for CPU runs and tests


def llava_config(preset: str) -> Any:
    """Return the `LlavaConfig` of a preset (`llava-1.5-7b-224`, `llava-1.5-7b-336`, `llava-1.5-13b-224`)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {[*sorted(PRESETS), TINY]}")
    size, image = PRESETS[preset]
    dec = DECODERS[size]
    vision = CLIPVisionConfig(
        hidden_size=VISION["hidden"],
        intermediate_size=VISION["intermediate"],
        num_hidden_layers=VISION["layers"],
        num_attention_heads=VISION["heads"],
        image_size=image,
        patch_size=VISION["patch"],
        projection_dim=768,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        vocab_size=32064,
        hidden_size=dec["hidden"],
        intermediate_size=dec["intermediate"],
        num_hidden_layers=dec["layers"],
        num_attention_heads=dec["heads"],
        num_key_value_heads=dec["heads"],
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        pad_token_id=0,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=32000,
        image_seq_length=(image // VISION["patch"]) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )


def build_model(preset: str, device: str, dtype: torch.dtype, attn: str = "sdpa") -> torch.nn.Module:
    """Build a preset LLaVA with random weights directly on `device` in `dtype`."""
    from transformers import LlavaForConditionalGeneration

    if preset == TINY:
        from segprune.models import tiny_llava

        model = tiny_llava(num_layers=16, image_size=56, patch_size=7, attn_implementation=attn)
        return model.to(device=device, dtype=dtype)
    config = llava_config(preset)
    config._attn_implementation = attn
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.set_attn_implementation(attn)
    return model.eval()


def bench_inputs(model: torch.nn.Module, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Return a batch of prompts (text, the image tokens, text; no padding) and random pixels."""
    config = model.config
    device = model.device
    gen = torch.Generator().manual_seed(seed)
    # Ordinary text ids: above the few special ids, below the image token where it ends the vocabulary.
    image_id = config.image_token_id
    vocab = image_id if image_id > 5 else config.text_config.vocab_size
    before = torch.randint(5, vocab, (batch, TEXT_BEFORE), generator=gen)
    after = torch.randint(5, vocab, (batch, TEXT_AFTER), generator=gen)
    image = torch.full((batch, config.image_seq_length), config.image_token_id)
    size = config.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size, generator=gen)
    # The prompt ends in a [SEG] token, as in LISA's teacher-forced referring-segmentation forward,
    # so methods that score by [SEG] attention (CSP) run as they would there.
    after[:, -1] = seg_token_id(model)
    return {
        "input_ids": torch.cat([before, image, after], dim=1).to(device),
        "pixel_values": pixels.to(device=device, dtype=model.dtype),
    }


def seg_token_id(model: torch.nn.Module) -> int:
    """Return the id the benchmark uses as `[SEG]`: the last id of the vocabulary."""
    return model.config.text_config.vocab_size - 1


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


def _percentiles(times: Sequence[float]) -> tuple[float, float]:
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
    """Time prefill and decode of `model` pruned with `config` (None: unpruned); `graph`: see module."""
    device = model.device
    segprune.unprune(model)
    if config is not None:
        segprune.prune_(model, config, seg_token_id=seg_token_id(model))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if graph:
        from segprune.graph import GraphedPrefill

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
        "prefill_spread_ms": _percentiles(times),
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
    """
    from segprune.eval.budgets import budget_config, check_budget

    check_budget(budget)
    check_device(device)
    if graph and not device.startswith("cuda"):
        raise ValueError(f"graph=True needs a CUDA device, got device={device!r}")
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
    for batch in batches:
        inputs = bench_inputs(model, batch)
        add(batch, None, "none", "unpruned", measure(model, inputs, None, **timing), None)
        for reduction in reductions:
            for method in methods:
                try:
                    config = budget_config(budget, method, reduction, n_layers, n_image)
                except ValueError as err:  # the method's schedule cannot reach this reduction
                    progress(f"skipped: {err}")
                    continue
                result = measure(model, inputs, config, **timing)
                add(batch, reduction, method, "method", result, config)
                if not references:
                    continue
                replay = ReplayConfig.from_stats(result["stats"], check=False)
                add(batch, reduction, method, "ideal", measure(model, inputs, replay, **timing), replay)
                with attention(model, "eager"):
                    add(batch, reduction, method, "eager", measure(model, inputs, config, **timing), config)
    return rows


def environment(device: str) -> dict[str, Any]:
    """Describe the machine and software a run used."""
    import transformers

    info = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


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


def add_parser(sub: Any) -> None:
    """Add the `bench` subcommand to the CLI's subparsers."""
    p = sub.add_parser(
        "bench",
        help="time prefill and decode of methods on a preset model with random weights (GPU)",
        description="Time end-to-end prefill (vision tower, projector, selection, decoder) and cached decode "
        "of each method at each reduction, next to the unpruned model, the ideal row (same live sets by "
        "index) and the eager-attention row. Writes a markdown table and JSON.",
    )
    p.add_argument("--preset", default="llava-1.5-7b-336", choices=[*sorted(PRESETS), TINY])
    from segprune.cli import comma_separated

    p.add_argument(
        "--methods",
        type=comma_separated(),
        default="fastv,pdrop,altp,csp",
        help="comma-separated method names",
    )
    p.add_argument(
        "--reductions",
        type=comma_separated(float),
        default="0.75,0.9",
        help="comma-separated N_avg reductions, each 0 < r < 1",
    )
    p.add_argument("--batches", type=comma_separated(int), default="1,16", help="comma-separated batch sizes")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--no-references", action="store_true", help="skip the ideal and eager rows")
    p.add_argument(
        "--graph", action="store_true", help="run every prefill as one CUDA graph (segprune.GraphedPrefill)"
    )
    from segprune.eval.budgets import BUDGETS

    p.add_argument(
        "--budget",
        choices=BUDGETS,
        default="navg",
        help="reduction axis: navg, equal N_avg as in CSP Table 6 (default); paper, each method as its "
        "paper sets it (segprune.eval.budgets)",
    )
    p.add_argument("--out", default="bench_out", help="directory for table.md and rows.json")
    p.set_defaults(run=cmd_bench)


def cmd_bench(args: Any, method: Any = None) -> int:
    """Run `segprune bench` from parsed arguments."""
    import json
    import pathlib
    import sys

    check_out_dir(args.out)
    check_int("--repeats", args.repeats, 1)
    check_int("--warmup", args.warmup, 0)
    check_int("--decode-tokens", args.decode_tokens, 0)
    rows = run(
        args.preset,
        args.methods,
        args.reductions,
        args.batches,
        device=args.device,
        dtype=getattr(torch, args.dtype),
        repeats=args.repeats,
        warmup=args.warmup,
        decode_tokens=args.decode_tokens,
        references=not args.no_references,
        graph=args.graph,
        budget=args.budget,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(args.device)
    header = (
        f"`segprune {' '.join(getattr(args, 'argv', sys.argv[1:]))}` on {env.get('gpu', env['cpu'])}, "
        f"torch {env['torch']}, transformers {env['transformers']}, {args.dtype}, "
        f"prefill {'as one CUDA graph' if args.graph else 'eager'}, reductions on the {args.budget} axis\n\n"
    )
    table = header + summary(rows) + "\n\nAll rows:\n\n" + markdown(rows) + "\n"
    (out / "table.md").write_text(table)
    (out / "rows.json").write_text(
        json.dumps(
            {
                "environment": env,
                "args": {k: v for k, v in vars(args).items() if k != "run"},
                "rows": [dataclasses.asdict(r) for r in rows],
            },
            indent=2,
            default=str,
        )
    )
    print(table)
    return 0
