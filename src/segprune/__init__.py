"""segprune: training-free visual-token pruning for grounding and segmentation VLMs.

import segprune
segprune.prune_(model, segprune.FastVConfig(layer=2, keep_ratio=0.25))
"""

from segprune.methods import METHODS, FastVConfig, MethodConfig, PDropConfig, TokenPlan
from segprune.patch import prune_, pruning_config, stats, unprune
from segprune.patch.state import PruneStats

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "FastVConfig",
    "MethodConfig",
    "PDropConfig",
    "PruneStats",
    "TokenPlan",
    "prune_",
    "pruning_config",
    "stats",
    "unprune",
]
