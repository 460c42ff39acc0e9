"""Checks of user-given values: each raises one `ValueError` that names the value and what is valid.

Only the standard library is imported (torch only inside `check_device`), so configs that the command
line builds its flags from can use these without loading torch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any


def value_range(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    """Return the valid range of a value as the messages word it: "1 <= value <= 8", "value > 0"."""
    low = f"{lo} {'<' if lo_open else '<='} " if lo is not None else ""
    high = f" {'<' if hi_open else '<='} {hi}" if hi is not None else ""
    if lo is not None and hi is None:
        return f"value {'>' if lo_open else '>='} {lo}"
    return f"{low}value{high}" if low or high else "any value"


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """Return `value` if it is an integer in [lo, hi] (a bound of None is open), else raise naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r} must be an integer; valid: {value_range(lo, hi)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name}={value!r} is out of range; valid: {value_range(lo, hi)}")
    return value


def check_number(
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """Return `value` as a float if it is a finite number in [lo, hi] (an open end with `lo_open`,
    `hi_open`; a bound of None is no bound), else raise naming `name`, the value and the range."""
    valid = value_range(lo, hi, lo_open, hi_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number; valid: {valid}")
    below = lo is not None and (value <= lo if lo_open else value < lo)
    above = hi is not None and (value >= hi if hi_open else value > hi)
    if below or above:
        raise ValueError(f"{name}={value!r} is out of range; valid: {valid}")
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """Return `value` if it is one of `choices`, else raise listing them."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {list(choices)}")
    return value


def check_reductions(reductions: Sequence[Any]) -> None:
    """Raise unless `reductions` holds at least one image-token reduction, each with 0 < value < 1."""
    if not reductions:
        raise ValueError("no reduction given; valid: numbers with 0 < value < 1, e.g. 0.5,0.75,0.9")
    for reduction in reductions:
        check_number("reduction", reduction, 0, 1, lo_open=True, hi_open=True)


def check_fields(name: str, data: Any, valid: Sequence[str]) -> dict[str, Any]:
    """Return `data` if it is a dict whose keys are all in `valid`, else raise naming the others."""
    if not isinstance(data, dict):
        raise ValueError(f"{name}={data!r} must be a JSON object of overrides, e.g. {{{valid[0]!r}: ...}}")
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ValueError(f"unknown {name} field(s) {unknown}; valid: {sorted(valid)}")
    return data


def check_device(device: str) -> str:
    """Return `device` if torch can run on it here ("cpu", "cuda", "cuda:1", ...), else raise saying why."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device; valid: cpu, cuda, cuda:N, mps") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: no CUDA device here; use cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(
                f"device {device!r}: this machine has {count} CUDA device(s), cuda:0 .. cuda:{count - 1}"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available here; use cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r} is not supported; valid: cpu, cuda, cuda:N, mps")
    return device


def one_line(err: BaseException) -> str:
    """Return an error as one line: an OS error as "PATH: reason", any other message's lines joined."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        where = f"{err.filename} -> {err.filename2}" if err.filename2 is not None else str(err.filename)
        return f"{where}: {err.strerror}"
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
