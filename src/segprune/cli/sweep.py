"""`segprune sweep`: every method variant at several budgets, then a table and a plot."""

from __future__ import annotations

import argparse
from typing import Any

from segprune.cli.eval import add_run_flags, data_spec, load
from segprune.cli.flags import comma_separated


def add_parser(sub: Any, method: Any = None) -> None:
    """Add `sweep` to the `segprune` subcommands."""
    from segprune.eval.budgets import BUDGETS

    p = sub.add_parser(
        "sweep",
        help="evaluate every pruning method at several budgets; write a table and a plot",
        description="For each method variant (ALTP ddc/ddf, each CSP clustering mode, ...) and each target "
        "image-token reduction, derive the method's config for this model's depth (--budget; "
        "segprune.eval.budgets), run `eval` into OUT/<task>/<method>/<reduction>/ "
        "(resumable), then write OUT/table.md and OUT/plot.png. See docs/evaluation.md.",
    )
    add_run_flags(p)
    p.add_argument(
        "--tasks", type=comma_separated(), help="comma-separated tasks (default: all the data supports)"
    )
    p.add_argument(
        "--methods",
        type=comma_separated(),
        help="comma-separated methods or variants, e.g. fastv,altp,csp-uniform (default: all)",
    )
    p.add_argument(
        "--reductions",
        type=comma_separated(float),
        default=(0.5, 0.75, 0.9),
        help="comma-separated image-token reductions (default: 0.5,0.75,0.9)",
    )
    p.add_argument(
        "--budget",
        choices=BUDGETS,
        default="paper",
        help="paper: each method as the papers set it on LLaVA-1.5-7B at that reduction (ALTP Table 1's "
        "tokens left, CSP Table 6), layers mapped to the model's depth; navg: equal N_avg in the model "
        "(default: paper)",
    )
    p.add_argument(
        "--instances",
        type=comma_separated(),
        default=("auto",),
        help="comma-separated CSP Seg-First instance sources, one csp-seg_first row each: auto (the "
        "model's own SAM), sam, superpixels, ground_truth (each scene's objects: an oracle; "
        "shapes data) (default: auto)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, cls: Any = None) -> int:
    """Run the sweep into `--out`, resumably; rank 0 writes the table and the plot."""
    from segprune.checks import check_reductions
    from segprune.eval.runner import distributed
    from segprune.eval.sweep import check_instances, run_sweep, select_labels, sweep_tasks
    from segprune.outdir import check_out_dir

    check_out_dir(args.out)
    data = data_spec(args)
    # What run_sweep checks too, here before a model of minutes loads.
    sweep_tasks(args.tasks, data)
    select_labels(args.methods)
    check_reductions(args.reductions)
    check_instances(args.instances)
    model = load(args)
    run_sweep(
        model,
        args.model,
        data,
        args.out,
        tasks=args.tasks,
        methods=args.methods,
        reductions=args.reductions,
        budget=args.budget,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        segment_score_token=args.segment_score_token,
        instances=args.instances,
        captions=args.captions,
        progress=not args.quiet,
    )
    if distributed()[0] == 0:
        print(f"wrote {args.out}/table.md and {args.out}/plot.png")
    return 0
