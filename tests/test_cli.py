"""The command line: flags built from dataclass fields, help from their docs, one-line errors, no torch
for `--help`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import typing

import pytest

from segprune import METHODS
from segprune.cli import build_parser, main
from segprune.cli.flags import (
    add_dataclass_flags,
    attribute_docs,
    comma_separated,
    dataclass_from_args,
    field_docs,
    json_object,
)
from segprune.train.config import TrainConfig

SUBCOMMANDS = [
    "flops",
    "convert-lisa",
    "convert-glamm",
    "eval",
    "sweep",
    "train-tiny",
    "demo",
    "bench",
    "data",
]

# What no `--help` may import: torch's compiled core (any torch import loads it) and transformers.
HEAVY = ("torch._C", "transformers")


def test_help_imports_neither_torch_nor_transformers():
    script = f"""
import sys
from segprune.cli import main
commands = [[c, "--help"] for c in {SUBCOMMANDS!r}]
for argv in [["--help"], *commands, ["eval", "--method", "csp", "--help"], ["data", "write", "--help"]]:
    try:
        main(argv)
    except SystemExit as exit_:
        assert exit_.code == 0, (argv, exit_.code)
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def test_import_segprune_is_lazy_and_every_public_name_loads():
    script = f"""
import sys
import segprune
assert not any(m in sys.modules for m in {HEAVY!r}), "import segprune loaded torch or transformers"
for name in segprune.__all__:
    exec(f"from segprune import {{name}}")
assert segprune.prune_ is segprune.patch.prune_ and segprune.FastVConfig().name == "fastv"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    with pytest.raises(AttributeError, match="No segprune attribute nothing"):
        import segprune

        segprune.nothing  # noqa: B018


@dataclasses.dataclass(frozen=True)
class Toy:
    """A config to build flags from.

    Attributes:
        count: how many (at least 1). A second
            line goes on the same entry.
        ratio (float): a fraction, 0 < ratio <= 1; 50% by default.
        lo, hi: the range, both ends included.
        flag: turn it on.
        sizes: one per layer.
        extra: overrides, a JSON object.

    Returns nothing: this section is not an attribute.
    """

    count: int = 3
    ratio: float = 0.5
    lo: int = 0
    hi: int | None = None
    flag: bool = False
    sizes: tuple[int, ...] = (1, 2)
    extra: dict[str, int] = dataclasses.field(default_factory=dict)
    undocumented: str = "x"
    unexpressed: list = dataclasses.field(default_factory=list)


def test_attribute_docs_reads_entries_continuations_and_shared_entries():
    docs = field_docs(Toy)
    assert docs == {
        "count": "how many (at least 1). A second line goes on the same entry",
        "ratio": "a fraction, 0 < ratio <= 1; 50% by default",
        "lo": "the range, both ends included",
        "hi": "the range, both ends included",
        "flag": "turn it on",
        "sizes": "one per layer",
        "extra": "overrides, a JSON object",
    }
    assert attribute_docs(None) == attribute_docs("No sections.") == {}


def _parser(cls: type) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toy")
    add_dataclass_flags(parser, cls)
    return parser


def test_flags_take_their_type_default_and_help_from_the_field(monkeypatch):
    parser = _parser(Toy)
    defaults = parser.parse_args([])
    assert dataclass_from_args(Toy, defaults) == Toy()
    assert not hasattr(defaults, "unexpressed")  # a list field has no command-line form
    args = parser.parse_args(
        ["--count", "4", "--ratio", "0.25", "--hi", "9", "--flag", "--sizes", "3,4,5", "--extra", '{"a": 1}']
    )
    assert dataclass_from_args(Toy, args) == Toy(
        count=4, ratio=0.25, hi=9, flag=True, sizes=(3, 4, 5), extra={"a": 1}
    )
    assert parser.parse_args(["--sizes", ""]).sizes == ()  # a tuple field may be emptied
    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag: help text is not wrapped
    text = " ".join(parser.format_help().split())  # flag and help are column-aligned: spaces vary
    assert "--count COUNT how many (at least 1). A second line goes on the same entry (default: 3)" in text
    assert "a fraction, 0 < ratio <= 1; 50% by default (default: 0.5)" in text  # % survives formatting
    assert "--sizes SIZES one per layer (default: 1,2)" in text
    assert "--undocumented UNDOCUMENTED default: x" in text
    assert "--flag, --no-flag turn it on" in text


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_field_is_a_flag_of_eval_and_flops(name, monkeypatch, capsys):
    cls = METHODS[name]
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    monkeypatch.setenv("COLUMNS", "1000")
    for command in ("eval", "flops"):
        args = build_parser(cls).parse_args(
            [command, "--method", name, *(["--model", "m", "--data", "d", "--out", "o", "--task", "refseg"])]
            if command == "eval"
            else [command, "--method", name]
        )
        assert dataclass_from_args(cls, args) == cls()
        with pytest.raises(SystemExit):
            main([command, "--method", name, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for field in dataclasses.fields(cls):
            flag = "--" + field.name.replace("_", "-")
            assert flag in text, (command, flag)
            assert " ".join(docs[field.name].split()) in text, (command, field.name)
            if hints[field.name] is not bool and "tuple" not in str(hints[field.name]):
                assert f"(default: {field.default})" in text, (command, field.name)


def test_train_tiny_flags_are_train_config_fields(monkeypatch, capsys):
    args = build_parser().parse_args(["train-tiny"])
    assert dataclass_from_args(TrainConfig, args) == TrainConfig()
    args = build_parser().parse_args(
        ["train-tiny", "--steps", "7", "--resume", "--dims", '{"llm_width": 64}']
    )
    config = dataclass_from_args(TrainConfig, args)
    assert (config.steps, config.resume, config.dims) == (7, True, {"llm_width": 64})
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        main(["train-tiny", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, doc in field_docs(TrainConfig).items():
        if name in {f.name for f in dataclasses.fields(TrainConfig)}:
            assert doc in text, name


def test_list_and_object_types_name_what_they_expect():
    assert comma_separated(int)("1, 2,3") == (1, 2, 3)
    assert comma_separated(float, empty_ok=True)("") == ()
    with pytest.raises(argparse.ArgumentTypeError, match=r"'' holds no value; give comma-separated names"):
        comma_separated()("")
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected comma-separated integers, got '1,x'"):
        comma_separated(int)("1,x")
    assert json_object('{"a": 1}') == {"a": 1}
    for text in ("[1]", "a=1"):
        with pytest.raises(
            argparse.ArgumentTypeError, match=r"expected a JSON object .*, got " + re.escape(repr(text))
        ):
            json_object(text)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["flops", "--bogus"], "unrecognized arguments: --bogus"),
        (["flops", "--method", "pdrop", "--layers", "8,x"], "expected comma-separated integers, got '8,x'"),
        (["flops", "--method", "fastv", "--layer", "99"], "layer=99"),
        (["train-tiny", "--dims", "[1]"], "expected a JSON object"),
        (["train-tiny", "--steps", "many"], "invalid int value: 'many'"),
        (["bench", "--preset", "llava-2"], "invalid choice: 'llava-2'"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(argv, fragment, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("segprune: error: ") and fragment in lines[0], captured.err
    assert captured.out == ""


def test_flops_command_prints_the_report_and_json(capsys):
    assert main(["flops", "--method", "fastv", "--layer", "2", "--keep-ratio", "0.25", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "llava-1.5-7b-336" and data["method"] == {
        "method": "fastv",
        "layer": 2,
        "keep_ratio": 0.25,
    }
    assert data["live_image_tokens"] == [576] * 2 + [144] * 30
    assert main(["flops", "--preset", "llava-1.5-13b-224"]) == 0
    assert "N_avg                  256.00 of 256" in capsys.readouterr().out


def test_data_commands_print_scenes_and_write_a_split(tmp_path, capsys):
    assert main(["data", "examples", "--scenes", "1"]) == 0
    assert capsys.readouterr().out.startswith("## shapes-0-000000: ")
    assert main(["data", "write", "reasonseg", str(tmp_path), "--scenes", "1"]) == 0
    assert capsys.readouterr().out == f"wrote 1 scenes to {tmp_path / 'val'}\n"
    assert main(["data", "write", "coco", str(tmp_path)]) == 2
    assert "invalid choice: 'coco'" in capsys.readouterr().err


def test_format_choices_are_the_readers_formats():
    from segprune.cli.eval import FORMATS
    from segprune.eval.datasets import FORMATS as READERS

    assert FORMATS == READERS
