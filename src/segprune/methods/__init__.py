"""Pruning methods as pure functions on tensors: configs, token plans, scores and selectors.

Nothing here imports transformers; adapters in `segprune.patch` run the plans inside models.
"""

from segprune.methods import altp, csp, fastv, pdrop  # noqa: F401  (registers the methods)
from segprune.methods.altp import ALTPConfig
from segprune.methods.base import METHODS, MethodConfig, get_config_class, register
from segprune.methods.csp import CSPConfig
from segprune.methods.fastv import FastVConfig
from segprune.methods.pdrop import PDropConfig
from segprune.methods.plan import AttentionScore, Keep, Reactivate, SelectContext, TokenPlan
from segprune.methods.prumerge import PruMergeConfig
from segprune.methods.visionzip import VisionZipConfig

__all__ = [
    "METHODS",
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
]
