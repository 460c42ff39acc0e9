"""The `segprune` command line: method flags come from the config dataclasses in `METHODS`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Sequence
from typing import Any

from segprune import flops
from segprune.methods import METHODS, MethodConfig, get_config_class


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _parse_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_config_flags(parser: argparse.ArgumentParser, cls: type[MethodConfig]) -> None:
    """Add one flag per field of `cls`, typed from its annotations, defaulting to the field's default."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.name} options ({cls.__name__})")
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        optional = type(None) in typing.get_args(hint)
        if optional:  # `int | None`: the flag takes an int; None (the default) has a meaning of its own
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        default = f.default
        kind: Any
        if hint is bool:
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=default)
            continue
        if hint in (int, float, str):
            kind = hint
        elif "tuple" in str(hint):
            kind = _parse_tuple
        else:  # a field the command line cannot express
            continue
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        if optional and default is None:
            shown = "None (see the config's docstring)"
        group.add_argument(_flag(f.name), type=kind, default=default, help=f"default: {shown}")


def config_from_args(cls: type[MethodConfig], args: argparse.Namespace) -> MethodConfig:
    """Build a config of `cls` from parsed flags (validation errors name the field and range)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**values)


def _method_parser(argv: Sequence[str]) -> type[MethodConfig] | None:
    """Find `--method NAME` in argv before the full parse, so its flags can be added."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method")
    known, _ = pre.parse_known_args(argv)
    if known.method is None:
        return None
    return get_config_class(known.method)


def cmd_flops(args: argparse.Namespace, cls: type[MethodConfig] | None) -> int:
    dims = flops.preset(args.preset)
    if cls is None:
        live = [dims.image_tokens] * dims.num_layers
    else:
        config = config_from_args(cls, args)
        live = config.plan(dims.image_tokens, dims.num_layers).live_counts()
    result = flops.report(live, dims, text_tokens=args.text_tokens)
    result = dataclasses.replace(result, name=args.preset)
    if args.json:
        data = dataclasses.asdict(result)
        data["method"] = config.to_dict() if cls is not None else None
        print(json.dumps(data, indent=2))
    else:
        if cls is not None:
            print(f"method                 {json.dumps(config.to_dict())}")
        print(flops.format_report(result))
    return 0


def cmd_convert_lisa(args: argparse.Namespace, cls: type[MethodConfig] | None) -> int:
    import torch  # imported here so that the other commands start without torch and transformers

    from segprune.models.convert_lisa import convert_lisa

    dtype = getattr(torch, args.dtype) if args.dtype else None
    convert_lisa(
        args.src, args.dst, tokenizer=args.tokenizer, dtype=dtype, config_overrides=args.config_overrides
    )
    print(f"wrote {args.dst}")
    return 0


def build_parser(method: type[MethodConfig] | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segprune", description="Training-free visual-token pruning for segmentation VLMs."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "flops",
        help="N_avg and TFLOPs of a method on a preset model, without loading weights",
        description="Print N_avg (CSP Eq. 9), TFLOPs (CSP Eqs. 10-11) and the ALTP Eq. 5 FLOPs fraction "
        "of a pruning method on a preset LLaVA-1.5 decoder. No weights are loaded.",
    )
    p.add_argument("--preset", default="llava-1.5-7b-336", choices=sorted(flops.PRESETS))
    p.add_argument("--method", choices=sorted(METHODS), help="pruning method; omit for the unpruned model")
    p.add_argument(
        "--text-tokens",
        type=float,
        default=None,
        help=f"text tokens per sample (default {flops.TEXT_TOKENS['csp']}, the count that fits CSP Table 6)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    if method is not None:
        add_config_flags(p, method)
    p.set_defaults(run=cmd_flops)
    p = sub.add_parser(
        "convert-lisa",
        help="convert an official LISA checkpoint into a segprune SegModel directory",
        description="Map a LISA checkpoint (LLaVA + CLIP + SAM ViT-H + [SEG] projector, LISA-7B-v1 layout) "
        "to transformers LLaVA / SAM names and save it with save_pretrained; load it with "
        "segprune.models.SegModel.from_pretrained(DST). See docs/segmodel.md.",
    )
    p.add_argument("src", help="LISA checkpoint directory (shards, config.json, tokenizer) or a weights file")
    p.add_argument("dst", help="output directory")
    p.add_argument("--tokenizer", help="tokenizer directory (default: SRC)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="cast the weights")
    p.add_argument("--config-overrides", type=json.loads, help='JSON, e.g. {"vision_config": {...}}')
    p.set_defaults(run=cmd_convert_lisa)
    from segprune.eval import commands as eval_commands  # `eval` and `sweep`; they import models lazily

    eval_commands.add_parsers(sub, method)
    from segprune import tiny_commands  # `train-tiny` and `demo`; they import torch and models lazily

    tiny_commands.add_parsers(sub)
    from segprune import bench  # `bench`; builds models and imports transformers only when run

    bench.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        method = _method_parser(argv)
    except ValueError as err:
        print(f"segprune: error: {err}", file=sys.stderr)
        return 2
    parser = build_parser(method)
    args = parser.parse_args(argv)
    args.argv = argv  # the command as typed, for reports that say how they were produced
    try:
        return args.run(args, method)
    except ValueError as err:
        print(f"segprune: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
