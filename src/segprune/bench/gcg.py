"""End-to-end grounded generation (GCG): a prompt and N greedy new tokens, timed the way users feel them.

Each row runs the prompt (vision tower, projector, selection, decoder) and then N greedy tokens,
and reports the time to the first token (the prefill and its argmax), the decode time per further
token, the total and the tokens per second over the batch. Kinds of row:

* **no-cache**: the reference design of LISA and GLaMM, which generate with `use_cache=False`: every
  new token re-runs the whole model (vision tower included) on the whole sequence. Unpruned only
  (pruning the re-run prompt would re-select tokens at every step, which no method does).
* **eager**: the model's forward with its KV cache, one call per token, as `generate()` makes them
  (a plain greedy loop: no logits processors, no stopping early; random weights never stop).
* **graphed**: the prefill as one CUDA graph (`segprune.GraphedPrefill`) and every decode step as
  one CUDA graph over static per-layer KV buffers (`segprune.patch.static_decode.StaticDecode`);
  the prefill writes its keys and values straight into those buffers (a `DecodeCache`), so the
  row holds one copy of the KV cache. Qwen2.5-VL has no graphed prefill (it reads `image_grid_thw`
  on the host): its prefill runs eagerly into the `DecodeCache` and only the decode steps are
  graphed. Without CUDA the same prefill and static-buffer step run eagerly (`mode` says which).

Tables are "batch N" or "max batch": the largest power-of-two batch, up to a cap, that runs the
whole generation for that row without running out of device memory (found by doubling; on a CPU
nothing is probed for memory, so the cap is the batch). The no-cache row of a max-batch table runs
at the unpruned eager row's batch: its time, not its memory, is what limits it.

Every table is written to the output directory (markdown and JSON) after each of its rows, marked
complete when its last row is done, so a run that is cut short keeps what it finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

import segprune
from segprune.bench.models import bench_inputs, build_model, seg_token_id
from segprune.bench.timing import cache_bytes, synchronize
from segprune.checks import check_device, check_int, one_line
from segprune.patch.transformers_api import cache_kwargs, output_cache

KINDS = ("no-cache", "eager", "graphed")
MAX = "max"  # the batch of a "max batch" table
DEFAULT_CAP = {"cuda": 256, "cpu": 4}


@dataclasses.dataclass
class GCGRow:
    """One timed generation: a prompt and `new_tokens` greedy tokens at one batch size."""

    table: str  # "batch 1", "max batch", ...
    batch: int
    reduction: float | None
    method: str  # "none" when unpruned
    kind: str  # "no-cache", "eager" or "graphed"
    mode: str  # how it ran: "eager", "cuda-graph", "eager-prefill+cuda-graph-decode", "static-eager"
    n_avg: float
    new_tokens: int
    ttft_ms: float  # time to first token: prefill + argmax, median over repeats
    decode_ms_per_token: float  # (total - TTFT) / (new_tokens - 1), median over repeats
    total_ms: float
    tokens_per_s: float  # batch * new_tokens / total
    kv_cache_mb: float  # the KV cache after the last token (static buffers for graphed rows)
    peak_memory_mb: float | None
    token_match: float | None  # share of greedy tokens equal to the reference row's (see `reference`)
    reference: str | None  # the row the tokens are compared with
    config: dict[str, Any] | None


class Clock:
    """Wall-clock milliseconds of one generation, with the device synchronised at each mark."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        synchronize(device)
        self.start = time.perf_counter()
        self.first_ms = self.total_ms = float("nan")

    def first(self) -> None:
        synchronize(self.device)
        self.first_ms = 1000 * (time.perf_counter() - self.start)

    def done(self) -> None:
        synchronize(self.device)
        self.total_ms = 1000 * (time.perf_counter() - self.start)


def gcg_inputs(model: torch.nn.Module, batch: int) -> dict[str, torch.Tensor]:
    """Return `segprune bench`'s prompts, sample i seeded by i, so sample i is the same at every batch."""
    samples = [bench_inputs(model, 1, seed=i) for i in range(batch)]
    return {key: torch.cat([s[key] for s in samples]) for key in samples[0]}


# -- the three ways to generate ---------------------------------------------------------------


@torch.no_grad()
def greedy_cached(model, inputs, new_tokens: int, clock: Clock | None = None) -> tuple[torch.Tensor, Any]:
    """Greedy `(batch, new_tokens)` tokens by cached forward calls, one per token; also the final cache."""
    out = model(**inputs, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1:].argmax(-1)
    if clock is not None:
        clock.first()
    cache = output_cache(model, out)
    tokens = [token]
    for _ in range(new_tokens - 1):
        # No position ids: the model continues its own, as `generate()` does (the prompts hold no
        # padding). LLaVA counts on from the cache's length; Qwen2.5-VL adds the M-RoPE offset its
        # prefill kept (`rope_deltas`: each sample's largest prompt position + 1 - prompt length),
        # and a pruned model continues from the prefill's positions whatever the cache holds.
        out = model(input_ids=token, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1:].argmax(-1)
        tokens.append(token)
    if clock is not None:
        clock.done()
    return torch.cat(tokens, dim=1), cache


@torch.no_grad()
def greedy_no_cache(model, inputs, new_tokens: int, clock: Clock | None = None) -> torch.Tensor:
    """Greedy `(batch, new_tokens)` tokens re-running the whole model on the whole sequence per token."""
    length = inputs["input_ids"].shape[1]
    step_inputs = dict(inputs)
    for step in range(new_tokens):
        # Every input the prompt has (Qwen2.5-VL: image_grid_thw and mm_token_type_ids, from which the
        # model recomputes its M-RoPE positions over the whole sequence at every call).
        out = model(**step_inputs, use_cache=False, logits_to_keep=1)
        step_inputs = grow(step_inputs, out.logits[:, -1:].argmax(-1))
        if step == 0 and clock is not None:
            clock.first()
    if clock is not None:
        clock.done()
    return step_inputs["input_ids"][:, length:]


# Per-token inputs `grow` extends, and the value a generated (text) token takes in each; per-image ones.
GROWN = {"attention_mask": 1, "mm_token_type_ids": 0}
PER_IMAGE = ("pixel_values", "image_grid_thw")


def grow(inputs: dict[str, torch.Tensor], token: torch.Tensor) -> dict[str, torch.Tensor]:
    """Return `inputs` with the `(batch, 1)` generated `token` appended to every per-token tensor.

    `input_ids` takes the token, `attention_mask` a 1 and `mm_token_type_ids` a 0 (a text token);
    per-image inputs (`pixel_values`, `image_grid_thw`) stay as they are. Raises on any other
    `(batch, L)` input, which a no-cache generation would not know how to extend.
    """
    ids = inputs["input_ids"]
    out = {}
    for key, value in inputs.items():
        if key == "input_ids":
            out[key] = torch.cat([ids, token.to(ids.dtype)], dim=1)
        elif key in GROWN:
            pad = torch.full_like(value[:, :1], GROWN[key])
            out[key] = torch.cat([value, pad], dim=1)
        elif key not in PER_IMAGE and value.shape[:2] == ids.shape:
            raise ValueError(
                f"input {key!r} has one entry per token (shape {tuple(value.shape)}); a no-cache generation "
                f"extends only input_ids and {sorted(GROWN)}"
            )
        else:
            out[key] = value
    return out


class GraphedGeneration:
    """A prefill and `new_tokens - 1` static decode steps, both captured as CUDA graphs where possible.

    Built for one batch and prompt layout; each call runs a new generation on inputs of that layout.
    The prefill fills a `DecodeCache` whose buffers the decoder adopts: one copy of the KV cache.
    A family without a graphed prefill (`Family.graphable`: Qwen2-VL / Qwen2.5-VL) runs its prefill
    eagerly and graphs the decode steps only (`mode`).
    """

    def __init__(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], new_tokens: int) -> None:
        from segprune.families import family_of
        from segprune.graph import GraphedPrefill
        from segprune.patch.decode_cache import DecodeCache
        from segprune.patch.static_decode import StaticDecode

        self.model = model
        self.new_tokens = new_tokens
        self.cuda = inputs["input_ids"].device.type == "cuda"
        family = family_of(model)
        if not family.static_decode:
            raise TypeError(f"the graphed row needs static decode, which the {family.name!r} family lacks")
        self.graphed_prefill = self.cuda and family.graphable
        # Compile what compiles lazily (fused SLIC) outside GraphedPrefill's sync checks.
        if self.graphed_prefill:
            with torch.no_grad():
                model(**inputs, use_cache=True, logits_to_keep=1)
        self.cache = DecodeCache(model, new_tokens - 1)
        self.prefill = (
            GraphedPrefill(model, inputs["input_ids"], inputs["pixel_values"], cache=self.cache)
            if self.graphed_prefill
            else None
        )
        self._prefill(inputs)
        self.decoder = StaticDecode(model, self.cache, new_tokens - 1, graph=self.cuda)
        if not self.decoder.adopted:
            raise RuntimeError("the static decoder copied the prefill's cache instead of adopting it")

    def _prefill(self, inputs):
        """The prefill's output; its keys and values are in `self.cache`, the decoder's buffers."""
        if self.prefill is not None:
            out = self.prefill(inputs["input_ids"], inputs["pixel_values"])
        else:
            self.cache.reset()
            kwargs = cache_kwargs(self.model, self.cache)
            out = self.model(**inputs, use_cache=True, logits_to_keep=1, **kwargs)
        if output_cache(self.model, out) is not self.cache:
            raise RuntimeError("the prefill did not fill the DecodeCache it was given")
        return out

    @property
    def mode(self) -> str:
        if not self.cuda:
            return "static-eager"
        return "cuda-graph" if self.graphed_prefill else "eager-prefill+cuda-graph-decode"

    @torch.no_grad()
    def __call__(self, inputs: dict[str, torch.Tensor], clock: Clock | None = None) -> torch.Tensor:
        out = self._prefill(inputs)
        first = out.logits[:, -1:].argmax(-1)
        if clock is not None:
            clock.first()
        self.decoder.load(self.cache)  # already in the buffers: nothing is copied
        rest = self.decoder.run(first, self.new_tokens - 1)
        if clock is not None:
            clock.done()
        return torch.cat([first, rest], dim=1)


# -- one row ------------------------------------------------------------------------------------


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _out_of_memory(err: BaseException | None) -> bool:
    # Also through the chain: an allocation that fails inside a CUDA graph capture surfaces as the
    # capture's own error, raised while handling the out-of-memory one.
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower():
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


class Generator:
    """One row's generation at one batch size: built (captures included) and run once by `prepare`."""

    def __init__(self, model, kind: str, batch: int, new_tokens: int) -> None:
        self.model, self.kind, self.new_tokens = model, kind, new_tokens
        self.inputs = gcg_inputs(model, batch)
        self.graphed = GraphedGeneration(model, self.inputs, new_tokens) if kind == "graphed" else None
        self.tokens, self.kv_bytes = self(None)

    @property
    def mode(self) -> str:
        return self.graphed.mode if self.graphed is not None else "eager"

    def __call__(self, clock: Clock | None) -> tuple[torch.Tensor, int]:
        if self.kind == "no-cache":
            return greedy_no_cache(self.model, self.inputs, self.new_tokens, clock), 0
        if self.kind == "eager":
            tokens, cache = greedy_cached(self.model, self.inputs, self.new_tokens, clock)
            return tokens, cache_bytes(cache)
        return self.graphed(self.inputs, clock), self.graphed.decoder.kv.nbytes()


def prepare(model, kind: str, batch: int, new_tokens: int) -> Generator | None:
    """Build and run one generation at `batch`; None when it runs out of CUDA memory."""
    try:
        return Generator(model, kind, batch, new_tokens)
    except RuntimeError as err:  # torch.cuda.OutOfMemoryError is one
        if model.device.type != "cuda" or not _out_of_memory(err):
            raise
    _release()
    return None


def largest_batch(model, kind: str, new_tokens: int, cap: int) -> Generator:
    """Return the generation at the largest power-of-two batch up to `cap` that fits, doubling from 1.

    On CUDA each trial is a whole generation (captures included), so the probe finds what the row
    really needs; a trial that runs out of memory ends the search. Elsewhere nothing is probed.
    """
    largest = 1 << (cap.bit_length() - 1)
    if model.device.type != "cuda":
        return prepare(model, kind, largest, new_tokens)
    fits, batch = 0, 1
    while batch <= largest:
        trial = prepare(model, kind, batch, new_tokens)
        if trial is None:
            break
        if batch == largest:
            return trial
        fits = batch
        del trial  # the next trial needs the memory
        _release()
        batch *= 2
    if not fits:
        raise RuntimeError(f"the {kind} row runs out of CUDA memory even at batch 1")
    gen = prepare(model, kind, fits, new_tokens)
    if gen is None:
        raise RuntimeError(f"the {kind} row fitted at batch {fits} but not when rebuilt; rerun")
    return gen


def time_generation(gen: Generator, repeats: int, warmup: int) -> dict[str, Any]:
    """Median TTFT, decode ms/token and total of `repeats` generations after `warmup` more."""
    device = gen.model.device
    for _ in range(warmup):
        gen(None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    firsts, totals = [], []
    for _ in range(repeats):
        clock = Clock(device)
        gen(clock)
        firsts.append(clock.first_ms)
        totals.append(clock.total_ms)
    decode = [(t - f) / (gen.new_tokens - 1) for f, t in zip(firsts, totals, strict=True)]
    return {
        "ttft_ms": statistics.median(firsts),
        "decode_ms_per_token": statistics.median(decode),
        "total_ms": statistics.median(totals),
        "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }


def token_match(tokens: torch.Tensor, reference: torch.Tensor) -> float:
    """Share of equal tokens over the samples both hold (sample i is the same prompt in both)."""
    n = min(tokens.shape[0], reference.shape[0])
    return float((tokens[:n].cpu() == reference[:n].cpu()).float().mean())


# -- the tables ---------------------------------------------------------------------------------


def table_name(batch: int | str) -> str:
    """The table's title: "batch 1", "max batch"."""
    return "max batch" if batch == MAX else f"batch {batch}"


def table_file(batch: int | str) -> str:
    """The table's file stem in the output directory: "gcg-batch1", "gcg-max"."""
    return "gcg-max" if batch == MAX else f"gcg-batch{batch}"


def check_gcg(
    batches: Sequence[int | str],
    kinds: Sequence[str],
    new_tokens: int,
    max_batch: int,
    repeats: int,
    warmup: int,
) -> None:
    """Raise naming the first bad batch, row kind or count."""
    if not batches:
        raise ValueError("no batch size given; valid: integers >= 1 or 'max', e.g. 1,max")
    for batch in batches:
        if batch != MAX:
            check_int("batches", batch, 1)
    if not kinds:
        raise ValueError(f"no row kind given; valid: {list(KINDS)}")
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"row kind {kind!r} is not valid; valid: {list(KINDS)}")
    check_int("new_tokens", new_tokens, 2)
    check_int("max_batch", max_batch, 1)
    check_int("repeats", repeats, 1)
    check_int("warmup", warmup, 0)


def run_gcg(
    preset: str,
    methods: Sequence[str],
    reductions: Sequence[float],
    batches: Sequence[int | str],
    *,
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    new_tokens: int = 128,
    kinds: Sequence[str] = KINDS,
    max_batch: int | None = None,
    repeats: int = 3,
    warmup: int = 1,
    budget: str = "navg",
    out: str | Path | None = None,
    header: str = "",
    progress: Callable[[str], None] = print,
    bar: bool = False,
) -> list[GCGRow]:
    """Time prompt + `new_tokens` greedy tokens for unpruned and every method × reduction, per batch.

    `batches`: integers, or "max" for the largest batch each row fits (up to `max_batch`, default
    256 on CUDA and 4 elsewhere). `kinds`: which of "no-cache", "eager", "graphed" rows to run.
    `out`: a directory that receives each table, `gcg-batchN.{md,json}` / `gcg-max.{md,json}`,
    after every row. Returns every row of every table.
    """
    from segprune.bench.matrix import check_matrix, method_configs
    from segprune.bench.render import gcg_markdown
    from segprune.eval.budgets import check_budget

    check_budget(budget)
    check_device(device)
    check_matrix(methods, reductions, [1])
    cap = DEFAULT_CAP.get(torch.device(device).type, 4) if max_batch is None else max_batch
    check_gcg(batches, kinds, new_tokens, cap, repeats, warmup)
    model = build_model(preset, device, dtype)
    header = "\n\n".join(part for part in (header, _weights_line(model, new_tokens)) if part)
    n_layers = model.config.text_config.num_hidden_layers
    n_image = model.config.image_seq_length
    configs: list[tuple[float | None, str, Any]] = [
        (None, "none", None),
        *method_configs(budget, methods, reductions, n_layers, n_image, progress),
    ]
    plan = [(r, m, c, k) for r, m, c in configs for k in kinds if k != "no-cache" or c is None]
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    settings = _Settings(model, cap, new_tokens, repeats, warmup)
    rows: list[GCGRow] = []
    for batch in batches:
        table: list[GCGRow] = []
        failed: list[str] = []
        tokens: dict[tuple[str, float | None, str], torch.Tensor] = {}
        with _bar(len(plan), table_name(batch), bar) as tick:
            for reduction, method, config, kind in _reference_last(plan):
                what = f"{table_name(batch)} {method} {kind} r={reduction}"
                try:
                    row = _row(settings, batch, reduction, method, config, kind, table, tokens)
                except Exception as err:
                    # One broken row (a capture that failed, say) must not cost an unattended run
                    # the rest; the table names it.
                    failed.append(f"{what}: {type(err).__name__}: {one_line(err)}")
                    progress(f"{what}: failed: {failed[-1]}")
                    row = None
                if row is not None:
                    table.append(row)
                if out_dir is not None:
                    _write(out_dir, batch, _ordered(table), failed, header, gcg_markdown, complete=False)
                tick()
                if row is not None:
                    progress(
                        f"{what}: batch {row.batch}, TTFT {row.ttft_ms:.1f} ms, decode "
                        f"{row.decode_ms_per_token:.2f} ms/token, total {row.total_ms:.0f} ms"
                    )
        table = _ordered(table)
        if out_dir is not None:
            _write(out_dir, batch, table, failed, header, gcg_markdown, complete=True)
        rows += table
    return rows


@dataclasses.dataclass(frozen=True)
class _Settings:
    model: torch.nn.Module
    cap: int
    new_tokens: int
    repeats: int
    warmup: int


def _weights_line(model: torch.nn.Module, new_tokens: int) -> str:
    lm = model.model.language_model
    head = model.lm_head
    weights = sum(p.numel() * p.element_size() for m in (lm, head) for p in m.parameters())
    return (
        f"Each row: the prompt, then {new_tokens} greedy tokens (the first from the prefill). A decode "
        f"step reads the decoder's and LM head's weights once: {weights / 1e9:.3f} GB, the floor of its "
        "time at batch 1 (divide by the device's memory bandwidth)."
    )


def _reference_last(plan):
    # The no-cache row compares its tokens with the unpruned eager row's and, in a max-batch table,
    # runs at that row's batch, so it runs after it; tables list it first (`_ordered`).
    return sorted(plan, key=lambda item: item[3] == "no-cache")


def _ordered(table: list[GCGRow]) -> list[GCGRow]:
    return sorted(table, key=lambda r: r.kind != "no-cache")


def _row(settings: _Settings, batch, reduction, method, config, kind, table, tokens) -> GCGRow:
    model, new_tokens = settings.model, settings.new_tokens
    segprune.unprune(model)
    if config is not None:
        segprune.prune_(model, config, seg_token_id=seg_token_id(model))
    gen = None
    try:
        if batch == MAX and kind == "no-cache":
            eager = [r for r in table if r.kind == "eager" and r.method == "none"]
            gen = prepare(model, kind, eager[0].batch if eager else 1, new_tokens)
        elif batch == MAX:
            gen = largest_batch(model, kind, new_tokens, settings.cap)
        else:
            gen = prepare(model, kind, batch, new_tokens)
        if gen is None:
            raise RuntimeError(f"the {kind} row of {method} runs out of CUDA memory at batch {batch}")
        times = time_generation(gen, settings.repeats, settings.warmup)
        n_avg = segprune.stats(model).n_avg if config is not None else float(model.config.image_seq_length)
        tokens[(method, reduction, kind)] = gen.tokens
        ref_key = ("none", None, "eager") if kind == "no-cache" else (method, reduction, "eager")
        reference = tokens.get(ref_key) if kind != "eager" else None
        size = gen.inputs["input_ids"].shape[0]
        return GCGRow(
            table=table_name(batch),
            batch=size,
            reduction=reduction,
            method=method,
            kind=kind,
            mode=gen.mode,
            n_avg=n_avg,
            new_tokens=new_tokens,
            ttft_ms=times["ttft_ms"],
            decode_ms_per_token=times["decode_ms_per_token"],
            total_ms=times["total_ms"],
            tokens_per_s=1000 * size * new_tokens / times["total_ms"],
            kv_cache_mb=gen.kv_bytes / 2**20,
            peak_memory_mb=times["peak_memory_mb"],
            token_match=None if reference is None else token_match(gen.tokens, reference),
            reference=None if reference is None else f"{ref_key[0]} {ref_key[2]}",
            config=config.to_dict() if config is not None else None,
        )
    finally:
        del gen
        segprune.unprune(model)
        _release()


@contextlib.contextmanager
def _bar(total: int, title: str, enabled: bool) -> Iterator[Callable[[], None]]:
    if not enabled:
        yield lambda: None
        return
    from tqdm.auto import tqdm

    progress = tqdm(total=total, desc=f"gcg {title}", dynamic_ncols=True, disable=None)
    try:
        yield lambda: progress.update(1)
    finally:
        progress.close()


def _write(out: Path, batch, table, failed, header, render, complete: bool) -> None:
    stem = table_file(batch)
    notes = "".join(f"\n\nFailed: {line}" for line in failed)
    status = "" if complete else "\n\n(in progress: rows so far)"
    body = f"{render(table)}{notes}{status}\n"
    text = f"{header}\n\n{body}" if header else body
    data = {
        "table": table_name(batch),
        "complete": complete,
        "failed": failed,
        "rows": [dataclasses.asdict(r) for r in table],
    }
    # Write then rename, so a run killed mid-write leaves the previous version, not half a file.
    for suffix, content in ((".md", text), (".json", json.dumps(data, indent=2, default=str))):
        path = out / f"{stem}{suffix}"
        tmp = path.with_suffix(suffix + ".tmp")
        tmp.write_text(content)
        tmp.replace(path)
