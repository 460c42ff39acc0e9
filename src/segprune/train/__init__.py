"""Training the tiny shapes model (`segprune train-tiny`) and scoring it on a fixed validation split.

    from segprune.train import TrainConfig, train
    train(TrainConfig(out="runs/tiny", steps=1000, device="cuda"))

Names are loaded on first use, so `segprune.train.config` (what the command line reads to build its
flags) imports without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "TrainConfig": "segprune.train.config",
    "learning_rate": "segprune.train.config",
    "train": "segprune.train.loop",
    "evaluate_refseg": "segprune.train.evaluate",
    "segment_blind": "segprune.train.evaluate",
    "validation_set": "segprune.train.evaluate",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'segprune.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name]), name)
