"""Model families segprune can prune, registered by `config.model_type` (see docs/families.md)."""

from __future__ import annotations

import importlib

from torch import nn

from segprune.families.base import Family, take

__all__ = ["FAMILIES", "Family", "family_of", "find_family", "register_family", "take"]

FAMILIES: dict[str, type[Family]] = {}

# Built-in families, imported on the first lookup (they import transformers).
_BUILTIN = ("segprune.families.llava", "segprune.families.qwen2_vl")
_LOADED = False


def register_family(cls: type[Family]) -> type[Family]:
    """Serve every `config.model_type` in `cls.model_types` with `cls`."""
    if not cls.name or not cls.model_types:
        raise ValueError(f"{cls.__name__} must set name and model_types")
    for model_type in cls.model_types:
        if model_type in FAMILIES and FAMILIES[model_type] is not cls:
            raise ValueError(
                f"model_type {model_type!r} is already served by {FAMILIES[model_type].__name__}"
            )
        FAMILIES[model_type] = cls
    return cls


def _families() -> dict[str, type[Family]]:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for module in _BUILTIN:
            importlib.import_module(module)
    return FAMILIES


def _model_type(module: nn.Module) -> str | None:
    return getattr(getattr(module, "config", None), "model_type", None)


def find_family(model: nn.Module) -> Family | None:
    """Return the family of the first module inside `model` (itself included) that one serves."""
    families = _families()
    for module in model.modules():
        cls = families.get(_model_type(module))
        if cls is not None and cls.matches(module):
            return cls(module)
    return None


def family_of(model: nn.Module) -> Family:
    """`find_family`, or raise naming the model's type and the supported families."""
    family = find_family(model)
    if family is not None:
        return family
    families = _families()
    classes = " or ".join(dict.fromkeys(cls.model_class for cls in families.values()))
    types = [t for t in dict.fromkeys(_model_type(m) for m in model.modules()) if t is not None]
    seen = f"model_type {', '.join(map(repr, types))}" if types else "no config.model_type"
    supported = ", ".join(f"{t!r} ({cls.name})" for t, cls in sorted(families.items()))
    raise TypeError(
        f"{type(model).__name__} ({seen}) holds no transformers {classes}; "
        f"supported families by config.model_type: {supported}"
    )
