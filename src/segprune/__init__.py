"""segprune: training-free visual-token pruning for grounding and segmentation VLMs.

import segprune
segprune.prune_(model, segprune.FastVConfig(layer=2, keep_ratio=0.25))

Names load on first use, so `import segprune` (and the command line's `--help`) needs no torch.
"""

import lazy_loader

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "methods": [
            "ALTPConfig",
            "CSPConfig",
            "FastVConfig",
            "METHODS",
            "MethodConfig",
            "PDropConfig",
            "PruMergeConfig",
            "TokenPlan",
            "VisionZipConfig",
        ],
        "methods.regions": ["masks_to_token_ids"],
        "graph": ["GraphedPrefill"],
        "patch": ["instance_detector", "instance_masks", "prune_", "pruning_config", "stats", "unprune"],
        "patch.state": ["PruneStats"],
    },
)
