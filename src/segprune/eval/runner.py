"""The evaluation runner: batches, per-sample JSONL records, resume, sharding, and the summary.

    model = load_model("tiny-random")
    spec = EvalSpec("refseg", parse_data("shapes:0:50"), "tiny-random", FastVConfig(layer=1, keep_ratio=0.25))
    summary = evaluate(model, spec, "runs/fastv")

A run directory holds `config.json` (what is evaluated, written first), one JSONL file of records
per process (`samples.jsonl`, or `samples.rank{r}.jsonl` under torchrun) and `summary.json`; the
store itself is `segprune.eval.records`. Records are appended and fsynced batch by batch, so a
run stopped at any point resumes where it stopped: samples already recorded are skipped, a
cut-off last line is dropped and recomputed. The data, the method (against this model) and the
directory are checked before anything is written, and the run holds the directory's lock
(`segprune.outdir.locked`): a second writer is refused instead of appending a second copy of every
record.

Batches are fixed by position in the data (batch k holds samples k*B .. k*B+B-1) and a rank takes
the batches k with k % world_size == rank. A sample's result therefore never depends on how many
processes ran, or on whether the run was interrupted: its batch always holds the same samples.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from segprune import flops
from segprune.checks import check_choice, check_int
from segprune.eval import cost, tasks
from segprune.eval.datasets import INSTANCE_SOURCES, TASK_SOURCES, DataSpec, load_items
from segprune.eval.records import Appender, claim, merged_records, recorded_ids, stored_config, write_summary
from segprune.methods import MethodConfig
from segprune.models.load import model_id
from segprune.models.prompts import SCORE_TOKENS
from segprune.outdir import check_out_dir, locked

__all__ = [
    "EvalSpec",
    "PrefillProbe",
    "distributed",
    "evaluate",
    "instance_source",
    "llava_config",
    "rank_device",
    "summarize",
]


@dataclass(frozen=True)
class EvalSpec:
    """What one run evaluates; its `to_dict()` (plus the model's dtype) identifies the run directory.

    Attributes:
        task: "refseg" (LISA protocol) or "gcg" (GLaMM protocol).
        data: the samples.
        model: "tiny", "tiny-random" or the path of a saved `SegModel` (as `load_model` takes it).
        method: the pruning config, or None for the unpruned model.
        batch_size: samples per forward. Part of the identity: padding and per-batch random draws
            (CSP random / Seg-First) make a sample's result depend on its batch.
        max_new_tokens: the generation limit of gcg.
        segment_score_token: refseg, `SegModel.segment`'s `score_token`: the token that last-token
            methods (FastV, PDrop, ALTP) rank with, "prompt" (the last prompt token, as their papers
            do) or "answer" (the last token of prompt + answer, "." after [SEG]).
    """

    task: str
    data: DataSpec
    model: str
    method: MethodConfig | None = None
    batch_size: int = 8
    max_new_tokens: int = 128
    segment_score_token: str = "prompt"

    def __post_init__(self) -> None:
        if self.task not in tasks.TASKS:
            raise ValueError(f"task {self.task!r} is not valid; choose one of {list(tasks.TASKS)}")
        if self.data.source not in TASK_SOURCES[self.task]:
            valid = list(TASK_SOURCES[self.task])
            raise ValueError(
                f"task {self.task!r} cannot read {self.data.source!r} data; valid sources: {valid}"
            )
        check_int("EvalSpec.batch_size", self.batch_size, 1)
        check_int("EvalSpec.max_new_tokens", self.max_new_tokens, 1)
        check_choice("EvalSpec.segment_score_token", self.segment_score_token, SCORE_TOKENS)
        if self.task == "gcg" and self.method is not None and self.method.needs_seg_token:
            # GCG's prompt holds no [SEG]: CSP would have no scoring token to rank by.
            raise ValueError(f"{type(self.method).__name__}.score_token='seg' cannot run gcg; use 'last'")
        if self.ground_truth_instances and self.data.source not in INSTANCE_SOURCES:
            raise ValueError(
                f"{type(self.method).__name__}.instances='ground_truth' needs data that holds every "
                f"object's mask ({', '.join(INSTANCE_SOURCES)}); {self.data.source} data does not; "
                "choose instances 'auto', 'sam' or 'superpixels'"
            )

    @property
    def ground_truth_instances(self) -> bool:
        """Whether the method's Seg-First stage takes the data's object masks as its instances."""
        return self.method is not None and self.method.instance_choice == "ground_truth"

    def to_dict(self) -> dict[str, Any]:
        """Return the run's identity, JSON-ready."""
        out = {
            "task": self.task,
            "model": model_id(self.model),
            "data": self.data.to_dict(),
            "method": None if self.method is None else self.method.to_dict(),
            "batch_size": self.batch_size,
        }
        if self.task == "gcg":
            out["max_new_tokens"] = self.max_new_tokens
        else:
            out["segment_score_token"] = self.segment_score_token
        return out


# -- processes -------------------------------------------------------------------------------------


def distributed() -> tuple[int, int]:
    """Return (rank, world size); under torchrun, join the process group (gloo) on first call.

    gloo serves only barriers here (no tensor is exchanged), so it works for CPU and GPU runs alike.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        # Ranks wait for each other at the end of a run; shards can finish far apart on long runs.
        dist.init_process_group("gloo", timeout=timedelta(hours=12))
    return dist.get_rank(), dist.get_world_size()


def rank_device(device: str) -> str:
    """Return the device of this process: under torchrun, "cuda" means the rank's local GPU."""
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# -- the run ---------------------------------------------------------------------------------------


class PrefillProbe:
    """Count each sample's text and image tokens in the prefills of the LLaVA inside a model.

    With `answer_is_prefill` (refseg), text that follows a prefill through its KV cache counts as
    prefill text too: `segment()` may run LISA's teacher-forced answer after a prompt-only prefill
    (`score_token="prompt"`), and its cost is the one forward's either way. GCG's generated tokens
    are decode steps and do not count.
    """

    def __init__(self, model: Any, answer_is_prefill: bool = False) -> None:
        from segprune.families import family_of

        self.llava = family_of(model).vlm
        self.answer_is_prefill = answer_is_prefill
        self.text_tokens: list[int] = []
        self.image_tokens: list[int] = []

    def __enter__(self) -> PrefillProbe:
        self._handle = self.llava.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def _hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return
        image = (ids == self.llava.config.image_token_id).sum(dim=1)
        mask = kwargs.get("attention_mask")  # None when nothing is padded
        if not bool(image.any()):
            # A decode step (generate may pass precomputed image features, not pixels), or the
            # answer after a prompt-only prefill, whose mask spans prompt and answer.
            if self.answer_is_prefill and mask is not None and self.image_tokens:
                totals = mask.sum(dim=1).tolist()
                self.text_tokens = [t - i for t, i in zip(totals, self.image_tokens, strict=True)]
            return
        total = mask.sum(dim=1) if mask is not None else ids.new_full(image.shape, ids.shape[1])
        self.text_tokens, self.image_tokens = (total - image).tolist(), image.tolist()


def llava_config(model: Any) -> Any:
    """Return the config of the vision-language model inside `model` (a `LlavaConfig` for `SegModel`)."""
    from segprune.families import family_of

    return family_of(model).vlm.config


def _live(model: Any, pruned: bool, probe: PrefillProbe, n_layers: int) -> list[list[int]]:
    """Live image tokens per layer for each sample of the last prefill."""
    if not pruned:
        return [[n] * n_layers for n in probe.image_tokens]
    from segprune import stats

    return stats(model).live_tokens.t().tolist()


def _batches_to_run(items: list, size: int, rank: int, world: int, done: set[str]) -> list[tuple[int, range]]:
    """Return (k, sample indices) of this rank's batches that still hold a sample not recorded."""
    batches = [
        (k, range(start, min(start + size, len(items)))) for k, start in enumerate(range(0, len(items), size))
    ]
    return [
        (k, b) for k, b in batches if k % world == rank and any(items[i].sample_id not in done for i in b)
    ]


def evaluate(
    model: Any,
    spec: EvalSpec,
    out_dir: str | Path,
    *,
    captions: bool = False,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any] | None:
    """Run `spec` on `model` into `out_dir`, resuming what is there; return the summary (rank 0).

    The model is pruned with `spec.method` (or left unpruned) for the run and unpruned after it.
    `captions` adds METEOR and CIDEr to gcg (needs Java). `on_batch(n)` is called after the n-th
    batch of this call is on disk (tests stop runs with it). Under torchrun every rank calls this
    with the same arguments; rank 0 merges the records and returns the summary, the others None.
    """
    from segprune import prune_, unprune

    rank, world = distributed()
    out = check_out_dir(out_dir)
    items = load_items(spec.data, spec.task)  # before anything is written: bad data leaves no directory
    config = {**spec.to_dict(), "dtype": str(model.dtype).removeprefix("torch.")}
    # Pruning first: a method this model cannot run is refused before the directory is touched.
    if spec.method is not None:
        prune_(model, spec.method)
    else:
        unprune(model)
    try:
        source = instance_source(model, spec)
        if source is not None:
            config["instance_source"] = source
        # Rank 0 holds the lock for the whole run; the other ranks are part of the same run.
        with locked(out) if rank == 0 else contextlib.nullcontext():
            if rank == 0:
                claim(out, config)
            _barrier(world)
            if rank != 0:
                claim(out, config)
            _run(model, spec, out, items, rank, world, source, progress=progress, on_batch=on_batch)
            _barrier(world)
            if rank != 0:
                return None
            summary = summarize(out, spec.task, model, n_items=len(items), captions=captions)
            summary["environment"]["world_size"] = world
            write_summary(out, summary)
            return summary
    finally:
        unprune(model)


def instance_source(model: Any, spec: EvalSpec) -> str | None:
    """Return where the run's CSP Seg-First instances come from ("sam", "superpixels", "given",
    "ground_truth"; `SegModel.instance_source`), or None where no Seg-First stage runs.

    Call it with the model pruned with `spec.method`.
    """
    resolve = getattr(model, "instance_source", None)
    if resolve is None or spec.method is None or spec.method.instance_choice is None:
        return None
    return resolve(given=spec.ground_truth_instances)


def _run(
    model: Any,
    spec: EvalSpec,
    out: Path,
    items: Sequence[Any],
    rank: int,
    world: int,
    source: str | None,
    *,
    progress: bool,
    on_batch: Callable[[int], None] | None,
) -> None:
    """Append this rank's records of the samples not yet recorded, batch by batch."""
    import torch
    from tqdm.auto import tqdm

    done = recorded_ids(out)
    todo = _batches_to_run(items, spec.batch_size, rank, world, done)
    device = next(model.parameters()).device
    n_layers = llava_config(model).text_config.num_hidden_layers
    remaining = sum(items[i].sample_id not in done for _, b in todo for i in b)
    bar = tqdm(
        total=remaining,
        # No bar on a finished run, and none where stderr is not a terminal (None): a log file would
        # keep every redraw, the last one twice.
        disable=True if not progress or rank != 0 or remaining == 0 else None,
        unit="sample",
        desc=f"{spec.task} {spec.method.name if spec.method else 'unpruned'}",
    )
    with bar, Appender(out, rank, world) as store, PrefillProbe(model, spec.task == "refseg") as probe:
        for n, (k, indices) in enumerate(todo):
            loaded = [items[i].load() for i in indices]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            outputs = tasks.predict(
                model,
                spec.task,
                loaded,
                max_new_tokens=spec.max_new_tokens,
                score_token=spec.segment_score_token,
                instances=spec.ground_truth_instances,
            )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
            live = _live(model, spec.method is not None, probe, n_layers)
            batch = {
                "index": k,
                "size": len(indices),
                "seconds": seconds,
                "warmup": n == 0,
                "device": str(device),
            }
            lines = []
            for j, record in enumerate(tasks.score(spec.task, loaded, outputs)):
                if record["id"] in done:
                    continue  # recorded before an interruption cut this batch short
                extra = {
                    "image_tokens": probe.image_tokens[j],
                    "live": live[j],
                    "text_tokens": probe.text_tokens[j],
                    "batch": batch,
                    **({"instance_source": source} if source is not None else {}),
                }
                lines.append({"index": indices[j], **record, **extra})
            store.append(lines)
            bar.update(len(lines))
            if on_batch is not None:
                on_batch(n + 1)


def summarize(out: Path, task: str, model: Any, *, n_items: int, captions: bool = False) -> dict[str, Any]:
    """Return the summary of a run directory from its records: accuracy, cost, latency, environment."""
    records = merged_records(out)
    config = llava_config(model)
    n_image = max((r["image_tokens"] for r in records), default=config.image_seq_length)
    dims = flops.ModelDims.from_config(config, n_image)
    return {
        "config": stored_config(out),
        "samples": {"done": len(records), "total": n_items, "complete": len(records) == n_items},
        "accuracy": tasks.accuracy(task, records, captions=captions),
        "cost": cost.cost_summary(records, dims),
        "latency": cost.latency_summary(records),
        "environment": cost.environment(next(model.parameters()).device),
    }
