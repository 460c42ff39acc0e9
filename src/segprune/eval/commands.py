"""The `segprune eval` and `segprune sweep` subcommands: their flags and handlers.

Nothing heavy is imported until a handler runs, so `segprune --help` stays quick.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from segprune.cli import add_config_flags, comma_separated, config_from_args
from segprune.methods import METHODS, MethodConfig

TASK_CHOICES = ("refseg", "gcg")


def add_parsers(sub: Any, method: type[MethodConfig] | None) -> None:
    """Add `eval` and `sweep` to the `segprune` subparsers; `method` adds its config's flags to `eval`."""
    p = sub.add_parser(
        "eval",
        help="evaluate a segmentation model, pruned or not, on referring segmentation or GCG",
        description="Run the LISA referring-segmentation protocol (refseg: gIoU/cIoU, by query type and "
        "for small objects) or GLaMM's grounded conversation generation (gcg: AP50/mIoU/recall) and "
        "write per-sample records (OUT/samples*.jsonl, resumable) and OUT/summary.json (accuracy, N_avg, "
        "TFLOPs, latency). Under torchrun --nproc-per-node K the data is sharded over K processes. "
        "See docs/evaluation.md.",
    )
    _add_common(p)
    p.add_argument("--task", required=True, choices=TASK_CHOICES)
    p.add_argument("--method", choices=sorted(METHODS), help="pruning method; omit for the unpruned model")
    if method is not None:
        add_config_flags(p, method)
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser(
        "sweep",
        help="evaluate every pruning method at several budgets; write a table and a plot",
        description="For each method variant (ALTP ddc/ddf, each CSP clustering mode, ...) and each target "
        "image-token reduction, derive the method's config for this model's depth (--budget; "
        "segprune.eval.budgets), run `eval` into OUT/<task>/<method>/<reduction>/ "
        "(resumable), then write OUT/table.md and OUT/plot.png. See docs/evaluation.md.",
    )
    _add_common(p)
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
    from segprune.eval.budgets import BUDGETS

    p.add_argument(
        "--budget",
        choices=BUDGETS,
        default="paper",
        help="paper: each method as the papers set it on LLaVA-1.5-7B at that reduction (ALTP Table 1's "
        "tokens left, CSP Table 6), layers mapped to the model's depth; navg: equal N_avg in the model "
        "(default: paper)",
    )
    p.set_defaults(run=cmd_sweep)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, help="tiny (the bundled model), tiny-random, or a SegModel directory"
    )
    p.add_argument(
        "--data", required=True, help="shapes:SEED:N (N generated scenes), or a path with --format"
    )
    p.add_argument("--out", required=True, help="run directory (resumed if it holds the same run)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--device", default="cpu", help="cpu, cuda, cuda:1, ... (under torchrun, cuda = local rank)"
    )
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="cast the model")
    p.add_argument("--max-new-tokens", type=int, default=128, help="gcg generation limit")
    p.add_argument("--captions", action="store_true", help="gcg: also METEOR and CIDEr (needs Java)")
    p.add_argument(
        "--quiet", action="store_true", help="no progress bar (there is none when stderr is not a terminal)"
    )
    g = p.add_argument_group("data options")
    g.add_argument("--format", choices=["refcoco", "reasonseg", "grandf"], help="layout of a --data path")
    g.add_argument("--queries-per-scene", type=int, help="shapes refseg: queries per scene (default 4)")
    g.add_argument("--dataset", help="refcoco: refcoco, refcoco+ or refcocog (default refcoco)")
    g.add_argument("--split", help="refcoco, reasonseg: the split (default val)")
    g.add_argument("--split-by", help="refcoco: unc, umd or google (default unc)")
    g.add_argument("--image-dir", help="refcoco, grandf: the images folder (default: the layout's)")
    g.add_argument("--mask-json", help="grandf: the mask file (default: beside the caption file)")
    g.add_argument("--all-texts", action="store_true", default=None, help="reasonseg: one sample per text")
    g.add_argument("--limit", type=int, help="evaluate only the first N samples")


def _data(args: argparse.Namespace) -> Any:
    from segprune.eval.datasets import parse_data

    keys = (
        "queries_per_scene",
        "dataset",
        "split",
        "split_by",
        "image_dir",
        "mask_json",
        "all_texts",
        "limit",
    )
    return parse_data(args.data, args.format, **{k: getattr(args, k) for k in keys})


def _load(args: argparse.Namespace) -> Any:
    from segprune.checks import check_device
    from segprune.eval.runner import distributed, load_model, rank_device

    distributed()  # join the process group before touching a GPU, so each rank takes its own
    return load_model(args.model, check_device(rank_device(args.device)), args.dtype)


def cmd_eval(args: argparse.Namespace, cls: type[MethodConfig] | None) -> int:
    from segprune.eval.datasets import load_items
    from segprune.eval.runner import EvalSpec, evaluate
    from segprune.outdir import check_out_dir

    check_out_dir(args.out)
    config = config_from_args(cls, args) if cls is not None else None
    spec = EvalSpec(args.task, _data(args), args.model, config, args.batch_size, args.max_new_tokens)
    load_items(spec.data, spec.task)  # bad data is refused before a model of minutes loads
    model = _load(args)
    summary = evaluate(model, spec, args.out, captions=args.captions, progress=not args.quiet)
    if summary is not None:
        print(format_summary(summary))
        print(f"wrote {args.out}/summary.json")
    return 0


def cmd_sweep(args: argparse.Namespace, cls: type[MethodConfig] | None) -> int:
    from segprune.checks import check_reductions
    from segprune.eval.runner import distributed
    from segprune.eval.sweep import run_sweep, select_labels, sweep_tasks
    from segprune.outdir import check_out_dir

    check_out_dir(args.out)
    data = _data(args)
    # What run_sweep checks too, here before a model of minutes loads.
    sweep_tasks(args.tasks, data)
    select_labels(args.methods)
    check_reductions(args.reductions)
    model = _load(args)
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
        captions=args.captions,
        progress=not args.quiet,
    )
    if distributed()[0] == 0:
        print(f"wrote {args.out}/table.md and {args.out}/plot.png")
    return 0


def format_summary(summary: dict[str, Any]) -> str:
    """Return the headline numbers of a summary as a few aligned lines."""
    config, acc, cost, latency = (summary[k] for k in ("config", "accuracy", "cost", "latency"))
    rows = [
        ("method", json.dumps(config["method"])),
        ("samples", f"{summary['samples']['done']} of {summary['samples']['total']}"),
    ]
    if config["task"] == "refseg":
        rows += [(tag, f"gIoU {s['giou']:.4f}  cIoU {s['ciou']:.4f}  (n={s['n']})") for tag, s in acc.items()]
    else:
        rows.append(("gcg", "  ".join(f"{k} {v:.4f}" for k, v in acc.items() if isinstance(v, float))))
    if cost:
        scaled = cost["llava-1.5-7b-336"]
        rows.append(("N_avg", f"{cost['n_avg']:.2f} of {cost['image_tokens']}"))
        rows.append(("TFLOPs", f"{cost['tflops']:.4g} (dense {cost['dense_tflops']:.4g})"))
        rows.append(
            ("7B-336 equivalent", f"{scaled['tflops']:.3f} TFLOPs (dense {scaled['dense_tflops']:.3f})")
        )
    if latency:
        ms = {k: 1000 * v for k, v in latency["per_batch_s"].items()}
        where = f"{latency['batches_timed']} batches on {', '.join(latency['devices'])}"
        if latency.get("includes_warmup"):
            where += "; warm-up batches only, start-up costs included"
        rows.append(
            (
                "latency",
                f"{ms['median']:.1f} ms per batch (p10 {ms['p10']:.1f}, p90 {ms['p90']:.1f}; {where})",
            )
        )
    return "\n".join(f"{name:<18} {text}" for name, text in rows)
