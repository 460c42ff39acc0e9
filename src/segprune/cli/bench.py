"""`segprune bench`: time prefill and decode of methods on a preset model with random weights.

Two modes: the prefill matrix (default: `segprune.bench.run`, OUT/table.md and OUT/rows.json) and,
with `--e2e`, grounded generation end to end (`segprune.bench.gcg`: a prompt and `--new-tokens`
greedy tokens; OUT/gcg-batchN.{md,json} and OUT/gcg-max.{md,json}, each written as it fills).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from typing import Any

from segprune.cli.flags import comma_separated
from segprune.presets import BENCH_PRESETS, PRESETS, TINY, is_qwen


def add_parser(sub: Any, method: Any = None) -> None:
    """Add `bench` to the `segprune` subcommands."""
    from segprune.eval.budgets import BUDGETS

    p = sub.add_parser(
        "bench",
        help="time prefill and decode of methods on a preset model with random weights (GPU)",
        description="Time end-to-end prefill (vision tower, projector, selection, decoder) and cached decode "
        "of each method at each reduction, next to the unpruned model, the ideal row (same live sets by "
        "index) and the eager-attention row. Writes a markdown table and JSON. With --e2e: time a "
        "prompt and --new-tokens greedy tokens (grounded generation) per method, next to the no-cache "
        "reference design, at batch 1 and the largest batch each row fits.",
    )
    p.add_argument(
        "--preset",
        default="llava-1.5-7b-336",
        choices=BENCH_PRESETS,
        help="the model (random weights); Qwen2.5-VL presets take only methods that read no vision CLS "
        "row (fastv, pdrop, altp, csp) and have no graphed prefill (no --graph): their --e2e graphed "
        "rows run the prefill eagerly and graph the decode steps",
    )
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
    p.add_argument(
        "--batches",
        type=comma_separated(_batch),
        default=None,
        help="comma-separated batch sizes (default 1,16); with --e2e also 'max', the largest batch each "
        "row fits (default 1,max)",
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 20; --e2e 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 5; --e2e 1)")
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--no-references", action="store_true", help="skip the ideal and eager rows")
    p.add_argument(
        "--graph", action="store_true", help="run every prefill as one CUDA graph (segprune.GraphedPrefill)"
    )
    p.add_argument(
        "--budget",
        choices=BUDGETS,
        default="navg",
        help="reduction axis: navg, equal N_avg as in CSP Table 6 (default); paper, each method as its "
        "paper sets it (segprune.eval.budgets)",
    )
    p.add_argument(
        "--fused-slic",
        action="store_true",
        help="run ALTP's and CSP's grid superpixels through the fused (torch.compile) SLIC "
        "(segprune.methods.superpixels.fused_grid_slic)",
    )
    e2e = p.add_argument_group("end-to-end generation (--e2e)")
    e2e.add_argument(
        "--e2e",
        action="store_true",
        help="time prompt + N greedy tokens (GCG) per row: time to first token, decode ms/token, total",
    )
    e2e.add_argument("--new-tokens", type=int, default=128, help="greedy tokens per generation")
    e2e.add_argument(
        "--rows",
        type=comma_separated(),
        default="no-cache,eager,graphed",
        help="row kinds: no-cache (the whole sequence re-run per token, as LISA and GLaMM), eager "
        "(cached forward per token), graphed (CUDA graphs over static KV buffers, the decode steps "
        "only for Qwen2.5-VL presets; eager elsewhere)",
    )
    e2e.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="cap of the 'max' batch search (default 256 on CUDA; on CPU, where nothing is probed, "
        "the batch itself: default 4)",
    )
    p.add_argument("--out", default="bench_out", help="directory for the tables")
    p.set_defaults(run=run)


def _batch(text: str) -> int | str:
    if text == "max":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"batch {text!r} is not valid; valid: integers >= 1, or 'max' with --e2e"
        ) from None


def run(args: argparse.Namespace, method: Any = None) -> int:
    """Run the benchmark matrix (or, with --e2e, the GCG tables) and write them under OUT."""
    import torch

    from segprune.checks import check_int
    from segprune.methods.superpixels import fused_grid_slic
    from segprune.outdir import check_out_dir

    check_out_dir(args.out)
    e2e = args.e2e
    repeats = args.repeats if args.repeats is not None else (3 if e2e else 20)
    warmup = args.warmup if args.warmup is not None else (1 if e2e else 5)
    check_int("--repeats", repeats, 1)
    check_int("--warmup", warmup, 0)
    batches = args.batches if args.batches is not None else ((1, "max") if e2e else (1, 16))
    if not e2e and "max" in batches:
        raise ValueError("--batches max is valid with --e2e only; give integers >= 1")
    if e2e and args.graph:
        raise ValueError("--graph applies to the prefill tables; --e2e has its own graphed rows (--rows)")
    if args.graph and is_qwen(args.preset):
        valid = [*sorted(PRESETS), TINY]
        raise ValueError(
            f"--graph is not valid with --preset {args.preset}: Qwen2.5-VL's prefill reads image_grid_thw "
            f"on the host, so it has no graphed prefill; valid presets for --graph: {valid} (--e2e "
            "--rows graphed graphs a Qwen preset's decode steps)"
        )
    dtype = getattr(torch, args.dtype)
    with fused_grid_slic(args.fused_slic):
        if e2e:
            return _run_e2e(args, batches, dtype, repeats, warmup)
        check_int("--decode-tokens", args.decode_tokens, 0)
        return _run_matrix(args, batches, dtype, repeats, warmup)


def _command(args: argparse.Namespace) -> str:
    return "segprune " + " ".join(getattr(args, "argv", sys.argv[1:]))


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _run_e2e(args, batches, dtype, repeats, warmup) -> int:
    from segprune.bench.gcg import run_gcg, table_file
    from segprune.bench.render import gcg_header
    from segprune.checks import check_int
    from segprune.eval.cost import environment

    check_int("--new-tokens", args.new_tokens, 2)
    if args.max_batch is not None:
        check_int("--max-batch", args.max_batch, 1)
    env = environment(args.device)
    rows = run_gcg(
        args.preset,
        args.methods,
        args.reductions,
        batches,
        device=args.device,
        dtype=dtype,
        new_tokens=args.new_tokens,
        kinds=args.rows,
        max_batch=args.max_batch,
        repeats=repeats,
        warmup=warmup,
        budget=args.budget,
        out=args.out,
        header=gcg_header(_command(args), env, args.dtype, args.budget, args.fused_slic),
        progress=_progress,
        bar=True,
    )
    out = pathlib.Path(args.out)
    for batch in batches:
        print((out / f"{table_file(batch)}.md").read_text())
    return 0 if rows else 1


def _run_matrix(args, batches, dtype, repeats, warmup) -> int:
    from segprune import bench
    from segprune.bench.render import header
    from segprune.eval.cost import environment

    rows = bench.run(
        args.preset,
        args.methods,
        args.reductions,
        batches,
        device=args.device,
        dtype=dtype,
        repeats=repeats,
        warmup=warmup,
        decode_tokens=args.decode_tokens,
        references=not args.no_references,
        graph=args.graph,
        budget=args.budget,
        progress=_progress,
    )
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(args.device)
    table = (
        header(_command(args), env, args.dtype, args.graph, args.budget)
        + (", fused SLIC" if args.fused_slic else "")
        + "\n\n"
        + bench.summary(rows)
        + "\n\nAll rows:\n\n"
        + bench.markdown(rows)
        + "\n"
    )
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
