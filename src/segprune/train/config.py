"""`TrainConfig`, the settings of `segprune train-tiny`, and its learning-rate schedule.

Only the standard library is imported here, so the command line can build its flags from the
dataclass without loading torch or transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# Fields that must match between a checkpoint and the run resuming it (the others, such as
# the device, the time limit or the number of workers, may change).
SAME_ON_RESUME = (
    "seed",
    "steps",
    "batch_size",
    "lr",
    "warmup",
    "weight_decay",
    "min_lr_ratio",
    "dims",
    "mix",
    "loss_weights",
)


@dataclass
class TrainConfig:
    """Everything `train` needs. Defaults are the CPU recipe of the bundled model.

    Attributes:
        out: output directory (checkpoint, model, log).
        steps: optimizer steps; the learning-rate schedule spans them.
        batch_size: scenes per step (one multi-turn sequence each).
        lr, warmup, min_lr_ratio, weight_decay: AdamW with linear warm-up over `warmup` steps, then a
            cosine decay to `min_lr_ratio * lr`.
        seed: initialises the model and seeds every batch.
        device: "cpu", "cuda", "cuda:1", ...; bf16 autocast is used on CUDA.
        resume: continue from `out/checkpoint.pt` if it exists.
        val_every, val_size: validate every this many steps (and at the end) on `val_size` fixed
            cases of split `VAL_SEED`; 0 disables periodic validation.
        checkpoint_every: write `checkpoint.pt` every this many steps (always at the end and on stop).
        time_limit: minutes; when exceeded, checkpoint and stop cleanly (resume later).
        log_every: write the losses to log.jsonl every this many steps.
        workers: data-loader processes building batches (0: in the training process).
        threads: torch CPU threads (0: leave torch's default).
        save_dtype: dtype of the saved model ("float16" keeps it small, "float32").
        dims: `TinyDims` overrides (e.g. {"llm_width": 256}).
        mix: `TaskMix` overrides.
        loss_weights: overrides of `objective.WEIGHTS` (e.g. {"mask_dice": 0.5}, LISA's value).
    """

    out: str = "runs/tiny"
    steps: int = 1000
    batch_size: int = 4
    lr: float = 1e-3
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    val_every: int = 100
    val_size: int = 32
    checkpoint_every: int = 100
    time_limit: float | None = None
    log_every: int = 10
    workers: int = 0
    threads: int = 0
    save_dtype: str = "float16"
    dims: dict[str, Any] = field(default_factory=dict)
    mix: dict[str, Any] = field(default_factory=dict)
    loss_weights: dict[str, float] = field(default_factory=dict)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Return the learning rate of optimizer step `step` (0-based): linear warm-up, then cosine."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
