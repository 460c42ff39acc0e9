"""The `segprune` command line: one module per subcommand, flags of configs built from their dataclasses.

Building the parser imports neither torch nor transformers: each subcommand's module imports the
models and the machinery it runs inside its `run` function, so `segprune --help` starts quickly.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import typing
from collections.abc import Sequence
from typing import Any

from segprune.checks import one_line

# The subcommands' modules, in the order `segprune --help` lists them. Each has `add_parser(sub, method)`
# (method: the config class `--method` named, or None) and sets its handler as the parser's `run`.
SUBCOMMANDS = ("flops", "convert", "eval", "sweep", "train_tiny", "demo", "bench", "data")


class UsageError(ValueError):
    """A command line that does not parse (argparse's complaint, as one line)."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors raise `UsageError`, so `main` reports them as one line."""

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _method_class(argv: Sequence[str]) -> Any:
    """Find `--method NAME` in argv before the full parse, so its config's flags can be added."""
    pre = Parser(prog="segprune", add_help=False)
    pre.add_argument("--method")
    known, _ = pre.parse_known_args(argv)
    if known.method is None:
        return None
    from segprune.methods import get_config_class

    return get_config_class(known.method)


def build_parser(method: Any = None) -> argparse.ArgumentParser:
    """Return the `segprune` parser; `method` (a config class) adds its fields' flags to `eval`, `flops`."""
    parser = Parser(
        prog="segprune",
        description="Training-free visual-token pruning for segmentation VLMs. Bad input is reported as "
        "one line with exit status 2; --debug (anywhere on the line) shows the traceback instead.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"segprune.cli.{name}").add_parser(sub, method)
    return parser


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
        method = _method_class(argv)
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
