"""`segprune flops`: N_avg and TFLOPs of a method on a preset decoder, without loading weights."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from segprune import flops
from segprune.cli.flags import add_method_flags, dataclass_from_args


def add_parser(sub: Any, method: Any) -> None:
    """Add `flops` to the `segprune` subcommands."""
    p = sub.add_parser(
        "flops",
        help="N_avg and TFLOPs of a method on a preset model, without loading weights",
        description="Print N_avg (CSP Eq. 9), TFLOPs (CSP Eqs. 10-11) and the ALTP Eq. 5 FLOPs fraction "
        "of a pruning method on a preset decoder (LLaVA-1.5, Qwen2.5-VL). No weights are loaded.",
    )
    p.add_argument("--preset", default="llava-1.5-7b-336", choices=sorted(flops.PRESETS))
    add_method_flags(p, method)
    p.add_argument(
        "--text-tokens",
        type=float,
        default=None,
        help=f"text tokens per sample (default {flops.TEXT_TOKENS['csp']}, the count that fits CSP Table 6)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, cls: Any) -> int:
    """Print the FLOPs report of `--method` (or the unpruned model) on `--preset`."""
    dims = flops.preset(args.preset)
    config = dataclass_from_args(cls, args) if cls is not None else None
    if config is None:
        live = [dims.image_tokens] * dims.num_layers
    else:
        live = config.plan(dims.image_tokens, dims.num_layers).live_counts()
    result = flops.report(live, dims, text_tokens=args.text_tokens)
    result = dataclasses.replace(result, name=args.preset)
    if args.json:
        data = dataclasses.asdict(result)
        data["method"] = config.to_dict() if config is not None else None
        print(json.dumps(data, indent=2))
    else:
        if config is not None:
            print(f"method                 {json.dumps(config.to_dict())}")
        print(flops.format_report(result))
    return 0
