"""segprune: training-free visual-token pruning for grounding and segmentation VLMs.

import segprune
segprune.prune_(model, segprune.FastVConfig(layer=2, keep_ratio=0.25))
"""

from segprune.graph import GraphedPrefill
from segprune.methods import METHODS, ALTPConfig, CSPConfig, FastVConfig, MethodConfig, PDropConfig, TokenPlan
from segprune.methods.prumerge import PruMergeConfig
from segprune.methods.regions import masks_to_token_ids
from segprune.methods.visionzip import VisionZipConfig
from segprune.patch import prune_, pruning_config, stats, unprune
from segprune.patch.state import PruneStats

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "ALTPConfig",
    "CSPConfig",
    "FastVConfig",
    "GraphedPrefill",
    "MethodConfig",
    "PDropConfig",
    "PruMergeConfig",
    "PruneStats",
    "TokenPlan",
    "VisionZipConfig",
    "masks_to_token_ids",
    "prune_",
    "pruning_config",
    "stats",
    "unprune",
]
