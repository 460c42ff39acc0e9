"""Pruning methods as pure functions on tensors: configs, token plans, scores and selectors.

Nothing here imports transformers; adapters in `segprune.patch` run the plans inside models.
"""

from segprune.methods import fastv, pdrop  # noqa: F401  (registers the methods)
from segprune.methods.base import METHODS, MethodConfig, get_config_class, register
from segprune.methods.fastv import FastVConfig
from segprune.methods.pdrop import PDropConfig
from segprune.methods.plan import AttentionScore, Keep, Reactivate, SelectContext, TokenPlan

__all__ = [
    "METHODS",
    "AttentionScore",
    "FastVConfig",
    "Keep",
    "MethodConfig",
    "PDropConfig",
    "Reactivate",
    "SelectContext",
    "TokenPlan",
    "get_config_class",
    "register",
]
