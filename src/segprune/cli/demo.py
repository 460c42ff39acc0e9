"""`segprune demo`: the bundled tiny model unpruned and under each method; pictures and a table."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any, method: Any = None) -> None:
    """Add `demo` to the `segprune` subcommands."""
    p = sub.add_parser(
        "demo",
        help="prune the bundled tiny model with each method; pictures, a table, N_avg, TFLOPs, IoU, latency",
        description="Load the bundled tiny model, segment one shapes scene unpruned and with FastV, "
        "PyramidDrop, ALTP, CSP, VisionZip and PruMerge+ at about 75% and 90% token reduction, write one "
        "PNG per method, a sheet and table.md to --out, and print the table. See docs/demo.md.",
    )
    p.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    p.add_argument("--model", default=None, help="a train-tiny model directory (default: the bundled one)")
    p.add_argument(
        "--scene-seed", type=int, default=None, help="seed of the demo scene (default: the demo's)"
    )
    p.add_argument(
        "--query-index", type=int, default=None, help="which of the scene's queries to ask (0, 1, ...)"
    )
    p.add_argument("--repeats", type=int, default=5, help="timed runs per method; the median is reported")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads, 0: torch's default (default 1: on a small or shared machine more threads "
        "make latency erratic)",
    )
    p.add_argument("--quick", action="store_true", help="only the 90%% rows of FastV and CSP (for tests)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, method: Any = None) -> int:
    """Run the demo with the parsed options."""
    from segprune.demo import run_demo

    run_demo(
        out=args.out,
        model_path=args.model,
        scene_seed=args.scene_seed,
        query_index=args.query_index,
        repeats=args.repeats,
        quick=args.quick,
        threads=args.threads,
    )
    return 0
