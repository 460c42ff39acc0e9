"""Command-line flags built from dataclass fields: the type from the annotation, the help from the docs.

A field documented in its class's `Attributes:` section (Google style, `name: text`, or `a, b: text`
for fields described together) gets that text as its help; the field's default is the flag's.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import typing
from collections.abc import Callable, Iterable
from typing import Any

from segprune.methods import METHODS

# One entry of an `Attributes:` section: "name: text", "a, b: text" or "name (type): text".
_ENTRY = re.compile(
    r"^(?P<names>[A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s*(?:\([^)]*\))?\s*:(?:\s+(?P<text>.*))?$"
)


def flag_name(field: str) -> str:
    """Return the flag of a field name: `keep_ratio` -> `--keep-ratio`."""
    return "--" + field.replace("_", "-")


def attribute_docs(doc: str | None) -> dict[str, str]:
    """Return each name's text in the `Attributes:` section of a docstring, lines joined by spaces."""
    lines = inspect.cleandoc(doc or "").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Attributes:"), None)
    if start is None:
        return {}
    header = len(lines[start]) - len(lines[start].lstrip())
    docs: dict[str, list[str]] = {}
    current: list[str] | None = None
    indent = None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth <= header:  # the section has ended
            break
        indent = depth if indent is None else indent
        match = _ENTRY.match(line.strip()) if depth == indent else None
        if match:
            current = [match["text"] or ""]
            for name in match["names"].split(","):
                docs.setdefault(name.strip(), current)
        elif current is not None:
            current.append(line.strip())
    # The help of a flag goes on with "(default: ...)", so a closing full stop is dropped.
    return {name: " ".join(part for part in text if part).removesuffix(".") for name, text in docs.items()}


def field_docs(cls: type) -> dict[str, str]:
    """Return the documented text of each field of `cls`, from its own and its bases' docstrings."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        docs.update(attribute_docs(klass.__dict__.get("__doc__")))
    return docs


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


def json_object(text: str) -> dict[str, Any]:
    """Read a flag's value as a JSON object (argparse type)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"name\": 1}}', got {text!r}")
    return value


json_object.__name__ = "JSON object"


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _shown(default: Any) -> str:
    return ",".join(map(str, default)) if isinstance(default, tuple) else str(default)


def _flag_type(hint: Any) -> Callable[[str], Any] | None:
    """Return the argparse type of an annotation, or None for one the command line cannot express."""
    if hint in (int, float, str):
        return hint
    origin = typing.get_origin(hint)
    if origin is tuple:
        items = {arg for arg in typing.get_args(hint) if arg is not Ellipsis}
        kind = items.pop() if len(items) == 1 else None
        return comma_separated(kind, empty_ok=True) if kind in (int, float, str) else None
    if origin is dict:
        return json_object
    return None


def add_dataclass_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, skip: Iterable[str] = ()
) -> None:
    """Add one flag per field of the dataclass `cls`: typed from its annotation, defaulting to the field's
    default, with the field's documented text as its help. Fields of other types are left out."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    skipped = set(skip)
    for field in dataclasses.fields(cls):
        if field.name in skipped:
            continue
        hint = hints[field.name]
        if type(None) in typing.get_args(hint):  # `int | None`: the flag takes an int; None is the default
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        default = _default(field)
        # argparse formats help with %, so a literal % in a docstring is doubled here.
        doc = docs.get(field.name, "").replace("%", "%%")
        if hint is bool:
            parser.add_argument(
                flag_name(field.name), action=argparse.BooleanOptionalAction, default=default, help=doc
            )
            continue
        kind = _flag_type(hint)
        if kind is None:
            continue
        shown = f"default: {_shown(default)}"
        parser.add_argument(
            flag_name(field.name), type=kind, default=default, help=f"{doc} ({shown})" if doc else shown
        )


def add_method_flags(parser: argparse.ArgumentParser, cls: Any) -> None:
    """Add `--method` (a name in `METHODS`) and, when `cls` is its config class, one flag per field."""
    parser.add_argument(
        "--method", choices=sorted(METHODS), help="pruning method; omit for the unpruned model"
    )
    if cls is not None:
        add_dataclass_flags(parser.add_argument_group(f"{cls.name} options ({cls.__name__})"), cls)


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build a `cls` from the parsed flags of its fields (validation errors name the field and range)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**values)
