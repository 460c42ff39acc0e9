"""`segprune eval`: one model, pruned or not, on referring segmentation or GCG; and the run flags that
`eval` and `sweep` share (model, data, output, device)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from segprune.cli.flags import add_method_flags, dataclass_from_args

FORMATS = ("refcoco", "reasonseg", "grandf", "rio")

TASKS = ("refseg", "gcg")
DATA_FLAGS = (
    "queries_per_scene",
    "dataset",
    "split",
    "split_by",
    "image_dir",
    "mask_json",
    "all_texts",
    "limit",
)


def add_parser(sub: Any, method: Any) -> None:
    """Add `eval` to the `segprune` subcommands; `method` (a config class) adds its fields' flags."""
    p = sub.add_parser(
        "eval",
        help="evaluate a segmentation model, pruned or not, on referring segmentation or GCG",
        description="Run the LISA referring-segmentation protocol (refseg: gIoU/cIoU, by query type and "
        "for small objects) or GLaMM's grounded conversation generation (gcg: AP50/mIoU/recall) and "
        "write per-sample records (OUT/samples*.jsonl, resumable) and OUT/summary.json (accuracy, N_avg, "
        "TFLOPs, latency). Under torchrun --nproc-per-node K the data is sharded over K processes. "
        "See docs/evaluation.md.",
    )
    add_run_flags(p)
    p.add_argument("--task", required=True, choices=TASKS)
    add_method_flags(p, method)
    p.set_defaults(run=run)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """Add the flags of a run (model, data, output, device, batching) that `eval` and `sweep` share."""
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
    p.add_argument(
        "--segment-score-token",
        choices=["prompt", "answer"],
        default="prompt",
        help="refseg under FastV, PDrop or ALTP: rank by the last prompt token (as their papers do) "
        "or by the last token of prompt + answer (the '.' after [SEG]); see docs/evaluation.md",
    )
    p.add_argument("--captions", action="store_true", help="gcg: also METEOR and CIDEr (needs Java)")
    p.add_argument(
        "--quiet", action="store_true", help="no progress bar (there is none when stderr is not a terminal)"
    )
    g = p.add_argument_group("data options")
    # segprune.eval.datasets.FORMATS, written out so --help imports no numpy (tests/test_cli.py checks).
    g.add_argument("--format", choices=FORMATS, help="layout of a --data path")
    g.add_argument("--queries-per-scene", type=int, help="shapes refseg: queries per scene (default 4)")
    g.add_argument("--dataset", help="refcoco: refcoco, refcoco+ or refcocog (default refcoco)")
    g.add_argument(
        "--split", help="refcoco, reasonseg: the split (default val); rio: common (default), uncommon, train"
    )
    g.add_argument("--split-by", help="refcoco: unc, umd or google (default unc)")
    g.add_argument("--image-dir", help="refcoco, grandf, rio: the images folder (default: the layout's)")
    g.add_argument("--mask-json", help="grandf: the mask file (default: beside the caption file)")
    g.add_argument(
        "--all-texts", action="store_true", default=None, help="reasonseg, rio: one sample per text"
    )
    g.add_argument("--limit", type=int, help="evaluate only the first N samples")


def data_spec(args: argparse.Namespace) -> Any:
    """Return the `DataSpec` the run flags describe (bad values raise before any model loads)."""
    from segprune.eval.datasets import parse_data

    return parse_data(args.data, args.format, **{k: getattr(args, k) for k in DATA_FLAGS})


def load(args: argparse.Namespace) -> Any:
    """Join the process group (under torchrun) and load `--model` on this rank's device."""
    from segprune.checks import check_device
    from segprune.eval.runner import distributed, rank_device
    from segprune.models.load import load_model

    distributed()  # join the process group before touching a GPU, so each rank takes its own
    return load_model(args.model, check_device(rank_device(args.device)), args.dtype)


def run(args: argparse.Namespace, cls: Any) -> int:
    """Evaluate `--model` on `--data`, write OUT/summary.json and print its headline numbers."""
    from segprune.eval.datasets import load_items
    from segprune.eval.runner import EvalSpec, evaluate
    from segprune.outdir import check_out_dir

    check_out_dir(args.out)
    config = dataclass_from_args(cls, args) if cls is not None else None
    spec = EvalSpec(
        args.task,
        data_spec(args),
        args.model,
        config,
        args.batch_size,
        args.max_new_tokens,
        segment_score_token=args.segment_score_token,
    )
    load_items(spec.data, spec.task)  # bad data is refused before a model of minutes loads
    model = load(args)
    summary = evaluate(model, spec, args.out, captions=args.captions, progress=not args.quiet)
    if summary is not None:
        print(format_summary(summary))
        print(f"wrote {args.out}/summary.json")
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
        from segprune.eval.cost import SCALED_PRESET

        scaled = cost[SCALED_PRESET]
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
