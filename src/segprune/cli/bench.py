"""`segprune bench`: time prefill and decode of methods on a preset model with random weights."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from typing import Any

from segprune.cli.flags import comma_separated
from segprune.presets import PRESETS, TINY


def add_parser(sub: Any, method: Any = None) -> None:
    """Add `bench` to the `segprune` subcommands."""
    from segprune.eval.budgets import BUDGETS

    p = sub.add_parser(
        "bench",
        help="time prefill and decode of methods on a preset model with random weights (GPU)",
        description="Time end-to-end prefill (vision tower, projector, selection, decoder) and cached decode "
        "of each method at each reduction, next to the unpruned model, the ideal row (same live sets by "
        "index) and the eager-attention row. Writes a markdown table and JSON.",
    )
    p.add_argument("--preset", default="llava-1.5-7b-336", choices=[*sorted(PRESETS), TINY])
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
    p.add_argument(
        "--budget",
        choices=BUDGETS,
        default="navg",
        help="reduction axis: navg, equal N_avg as in CSP Table 6 (default); paper, each method as its "
        "paper sets it (segprune.eval.budgets)",
    )
    p.add_argument("--out", default="bench_out", help="directory for table.md and rows.json")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, method: Any = None) -> int:
    """Run the benchmark matrix and write OUT/table.md and OUT/rows.json."""
    import torch

    from segprune import bench
    from segprune.bench.render import header
    from segprune.checks import check_int
    from segprune.eval.cost import environment
    from segprune.outdir import check_out_dir

    check_out_dir(args.out)
    check_int("--repeats", args.repeats, 1)
    check_int("--warmup", args.warmup, 0)
    check_int("--decode-tokens", args.decode_tokens, 0)
    rows = bench.run(
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
    command = "segprune " + " ".join(getattr(args, "argv", sys.argv[1:]))
    table = (
        header(command, env, args.dtype, args.graph, args.budget)
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
