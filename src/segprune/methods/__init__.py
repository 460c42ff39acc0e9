"""Pruning methods as pure functions on tensors: configs, token plans, scores and selectors.

Nothing here imports transformers; adapters in `segprune.patch` run the plans inside models.
Importing this package imports every module in it, so each method registers itself from its own
file (`@register`): a new method is one new file here. Torch is imported lazily, on first use, so
configs can be built and listed without it.
"""

import importlib
import pkgutil

from segprune.methods.altp import ALTPConfig
from segprune.methods.base import METHODS, MethodConfig, get_config_class, register, unregister
from segprune.methods.csp import CSPConfig
from segprune.methods.fastv import FastVConfig
from segprune.methods.pdrop import PDropConfig
from segprune.methods.plan import AttentionScore, Keep, Reactivate, SelectContext, TokenPlan
from segprune.methods.prumerge import PruMergeConfig
from segprune.methods.scale import PAPER_LAYERS, scale_layers
from segprune.methods.visionzip import VisionZipConfig

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "METHODS",
    "PAPER_LAYERS",
    "ALTPConfig",
    "AttentionScore",
    "CSPConfig",
    "FastVConfig",
    "Keep",
    "MethodConfig",
    "PDropConfig",
    "PruMergeConfig",
    "Reactivate",
    "SelectContext",
    "TokenPlan",
    "VisionZipConfig",
    "get_config_class",
    "register",
    "scale_layers",
    "unregister",
]
