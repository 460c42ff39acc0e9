"""The `segprune` command line: method flags come from the config dataclasses in `METHODS`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any

from segprune import flops
from segprune.checks import one_line
from segprune.methods import METHODS, MethodConfig, get_config_class


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def comma_separated(kind: Callable[[str], Any] = str, empty_ok: bool = False) -> Callable[[str], tuple]:
    """Return an argparse type reading a comma-separated list of `kind` (str, int or float) as a tuple.

    An empty list is refused unless `empty_ok`: a flag given as "" would otherwise mean "the default".
    """
    what = {str: "names", int: "integers", float: "numbers"}.get(kind, "values")

    def parse(text: str) -> tuple:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts and not empty_ok:
            raise argparse.ArgumentTypeError(f"{text!r} holds no value; give comma-separated {what}")
        try:
            return tuple(kind(part) for part in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None

    parse.__name__ = f"comma-separated {what}"
    return parse


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
            kind = comma_separated(int, empty_ok=True)
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
    pre = Parser(prog="segprune", add_help=False)
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


def cmd_convert(args: argparse.Namespace, cls: type[MethodConfig] | None) -> int:
    import torch  # imported here so that the other commands start without torch and transformers

    from segprune.models.convert import convert
    from segprune.models.convert_glamm import GLAMM
    from segprune.models.convert_lisa import LISA

    family = {"convert-lisa": LISA, "convert-glamm": GLAMM}[args.command]
    dtype = getattr(torch, args.dtype) if args.dtype else None
    convert(
        args.src,
        args.dst,
        family,
        tokenizer=args.tokenizer,
        vision_tower=getattr(args, "vision_tower", None),
        dtype=dtype,
        config_overrides=args.config_overrides,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.dst}")
    return 0


def build_parser(method: type[MethodConfig] | None) -> argparse.ArgumentParser:
    parser = Parser(
        prog="segprune",
        description="Training-free visual-token pruning for segmentation VLMs. Bad input is reported as "
        "one line with exit status 2; --debug (anywhere on the line) shows the traceback instead.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
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
    for name, layout in (
        ("LISA", "LLaVA + CLIP + SAM ViT-H + [SEG] projector, LISA-7B-v1 layout"),
        ("GLaMM", "LLaVA-1.5 + SAM ViT-H + [SEG] projector; the region encoder is not converted"),
    ):
        p = sub.add_parser(
            f"convert-{name.lower()}",
            help=f"convert an official {name} checkpoint into a segprune SegModel directory",
            description=f"Map a {name} checkpoint ({layout}) to transformers LLaVA / SAM names and save it "
            "with save_pretrained; load it with segprune.models.SegModel.from_pretrained(DST). "
            "See docs/segmodel.md.",
        )
        p.add_argument("src", help=f"{name} checkpoint directory (shards, config.json, tokenizer) or a file")
        p.add_argument("dst", help="output directory: new or empty (see --overwrite)")
        p.add_argument("--tokenizer", help="tokenizer directory (default: SRC)")
        if name == "GLaMM":
            p.add_argument(
                "--vision-tower",
                metavar="CLIP_DIR",
                help="CLIP directory (openai/clip-vit-large-patch14-336): needed when SRC has no CLIP "
                "weights (GLaMM's released checkpoints have none); replaces SRC's otherwise",
            )
        p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="cast the weights")
        p.add_argument("--config-overrides", type=json.loads, help='JSON, e.g. {"vision_config": {...}}')
        p.add_argument("--overwrite", action="store_true", help="write into a non-empty DST directory")
        p.set_defaults(run=cmd_convert)
    from segprune.eval import commands as eval_commands  # `eval` and `sweep`; they import models lazily

    eval_commands.add_parsers(sub, method)
    from segprune import tiny_commands  # `train-tiny` and `demo`; they import torch and models lazily

    tiny_commands.add_parsers(sub)
    from segprune import bench  # `bench`; builds models and imports transformers only when run

    bench.add_parser(sub)
    return parser


class UsageError(ValueError):
    """A command line that does not parse (argparse's complaint, as one line)."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors raise `UsageError`, so `main` reports them as one line."""

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# Raised for a user's damaged file or a full device, not for a bug; named, so no torch import is needed.
USER_FAULTS = ("OutOfMemoryError", "SafetensorError", "UnpicklingError")


def _is_user_error(err: BaseException) -> bool:
    """Bad input (ValueError), the machine (files, permissions, a full disk), a damaged weights file
    or a device out of memory."""
    return isinstance(err, (ValueError, OSError)) or type(err).__name__ in USER_FAULTS


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    Bad input and faults of the machine are reported as one line, `segprune: error: ...`, with exit
    status 2; `--debug` (anywhere on the line) shows their traceback instead. Other exceptions are
    bugs and keep their traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    try:
        method = _method_parser(argv)
        args = build_parser(method).parse_args(argv)
        args.argv = argv  # the command as typed, for reports that say how they were produced
        return args.run(args, method)
    except KeyboardInterrupt:
        if debug:
            raise
        print("segprune: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug or not _is_user_error(err):
            raise
        print(f"segprune: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
