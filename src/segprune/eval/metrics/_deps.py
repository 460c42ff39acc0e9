"""Import of the optional evaluation dependencies with an error that says how to install them."""

from __future__ import annotations

import importlib
from types import ModuleType


def import_optional(name: str) -> ModuleType:
    """Import `name`, or raise ImportError naming the `segprune[eval]` extra that provides it."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        package = name.split(".")[0].replace("_", "-")
        raise ImportError(
            f"{name} is needed for this metric; install it with `pip install 'segprune[eval]'` "
            f"(or `pip install {package}`)"
        ) from error
