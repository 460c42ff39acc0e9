"""`segprune train-tiny`: train the tiny shapes segmentation model; flags from `TrainConfig`'s fields."""

from __future__ import annotations

import argparse
import json
from typing import Any

from segprune.cli.flags import add_dataclass_flags, dataclass_from_args


def add_parser(sub: Any, method: Any = None) -> None:
    """Add `train-tiny` to the `segprune` subcommands."""
    from segprune.train.config import TrainConfig  # standard library only

    p = sub.add_parser(
        "train-tiny",
        help="train the tiny shapes segmentation model (CPU or CUDA), with checkpoints and --resume",
        description="Train the tiny LISA-style model on the shapes benchmark: LM cross-entropy on the "
        "answers (referring segmentation, grounded captions, QA), BCE + dice on each [SEG] mask, and "
        "auxiliary heads that make the image tokens carry object identity. See docs/demo.md.",
    )
    add_dataclass_flags(p, TrainConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, method: Any = None) -> int:
    """Train with the parsed `TrainConfig` and print the run's result as JSON."""
    from segprune.train.config import TrainConfig
    from segprune.train.loop import train

    print(json.dumps(train(dataclass_from_args(TrainConfig, args)), indent=2))
    return 0
