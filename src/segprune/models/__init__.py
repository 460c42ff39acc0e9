"""Models segprune ships or builds: the LISA-style SegModel, its LISA converter, tiny models for tests,
the bundled tiny shapes model (`tiny()`) and `load_model` (`segprune.models.load`).

Names load on first use, so `segprune.models.load` (what the command line imports) needs no torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_NAMES = {
    "GroundedAnswer": "segprune.models.gcg",
    "SegModel": "segprune.models.seg_model",
    "SegModelConfig": "segprune.models.seg_model",
    "TinyDims": "segprune.models.tiny",
    "build_tiny": "segprune.models.tiny",
    "tiny": "segprune.models.tiny",
    "tiny_llava": "segprune.models.tiny_llava",
    "tiny_llava_inputs": "segprune.models.tiny_llava",
    "tiny_seg_model": "segprune.models.tiny_seg",
    "load_model": "segprune.models.load",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'segprune.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_NAMES[name]), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # Importing a submodule binds it on its package; `segprune.models.tiny` stays the loader
        # function (`from segprune.models import tiny; tiny()`), as documented, not the module.
        if name == "tiny" and isinstance(value, types.ModuleType):
            value = value.tiny
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
