"""`TrainConfig`, the settings of `segprune train-tiny`, and its learning-rate schedule.

Only the standard library is imported here, so the command line can build its flags from the
dataclass without loading torch or transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from segprune.checks import check_choice, check_int, check_number

SAVE_DTYPES = ("float16", "bfloat16", "float32")
SCHEDULES = ("steps", "time")
SAM_FROM = ("all", "points")

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
    "schedule",
    "sam_from",
)


@dataclass
class TrainConfig:
    """Everything `train` needs. Defaults are the current CPU recipe (the bundled weights were trained
    before SAM's image encoder trained and the point and position terms existed: docs/demo.md).

    Attributes:
        out: output directory (checkpoint, model, log).
        steps: optimizer steps; the learning-rate schedule spans them (with `schedule="time"`, a cap).
        batch_size: scenes per step (one multi-turn sequence each).
        lr: AdamW's peak learning rate.
        warmup: steps of linear warm-up to `lr`.
        min_lr_ratio: the cosine decay after the warm-up ends at this fraction of `lr`.
        weight_decay: AdamW's weight decay.
        seed: initialises the model and seeds every batch.
        device: "cpu", "cuda", "cuda:1", ...; bf16 autocast is used on CUDA.
        resume: continue from `out/checkpoint.pt` if it exists.
        val_every: validate every this many steps and at the end (0: never).
        val_size: fixed validation cases, from split `VAL_SEED`.
        checkpoint_every: write `checkpoint.pt` every this many steps (always at the end and on stop).
        time_limit: minutes; when exceeded, checkpoint and stop cleanly (resume later). With
            `schedule="time"`, the total minutes of training the schedule spans, summed over resumed
            runs.
        schedule: what the cosine decay runs over: "steps" (`steps`) or "time" (`time_limit`
            minutes of training, so that the run reaches the floor learning rate when its time is
            up: for a GPU lease measured in minutes, whose number of steps is not known before).
        log_every: write the losses to log.jsonl every this many steps.
        workers: data-loader processes building batches (0: in the training process).
        threads: torch CPU threads (0: leave torch's default).
        save_dtype: dtype of the saved model, one of `SAVE_DTYPES` ("float16" keeps it small).
        dims: `TinyDims` overrides (e.g. {"llm_width": 256}).
        mix: `TaskMix` overrides.
        loss_weights: overrides of `objective.WEIGHTS` (e.g. {"mask_dice": 0.5}, LISA's value).
        init: start from the weights of a saved tiny model instead of a fresh init: a directory
            as `segprune.models.tiny(path)` takes, or "bundled" for the bundled model (its `dims`
            must match). The auxiliary heads and the optimizer start afresh.
        overwrite: start afresh in an `out` that holds a run, replacing its checkpoint, model and log
            (without it, or `resume`, such a directory is refused).
        sam_from: what trains SAM (its image encoder, prompt encoder and mask decoder): "all" (the
            `[SEG]` masks and the point task) or "points" (only the point task and SAM's patch
            head; the `[SEG]` mask loss reaches the LLM and the projector through a SAM it does not
            change, as LISA's runs through a SAM pretrained on points), so the mask decoder cannot
            learn to find the target from the query's words alone. Needs the `point_mask` term.
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
    init: str | None = None
    overwrite: bool = False
    schedule: str = "steps"
    sam_from: str = "all"

    def __post_init__(self) -> None:
        for name, lo in (
            ("steps", 1),
            ("batch_size", 1),
            ("warmup", 0),
            ("seed", 0),
            ("val_every", 0),
            ("val_size", 0),
            ("checkpoint_every", 1),
            ("log_every", 1),
            ("workers", 0),
            ("threads", 0),
        ):
            check_int(f"TrainConfig.{name}", getattr(self, name), lo)
        check_number("TrainConfig.lr", self.lr, 0, lo_open=True)
        check_number("TrainConfig.min_lr_ratio", self.min_lr_ratio, 0, 1)
        check_number("TrainConfig.weight_decay", self.weight_decay, 0)
        if self.time_limit is not None:
            check_number("TrainConfig.time_limit", self.time_limit, 0, lo_open=True)
        check_choice("TrainConfig.save_dtype", self.save_dtype, SAVE_DTYPES)
        check_choice("TrainConfig.schedule", self.schedule, SCHEDULES)
        check_choice("TrainConfig.sam_from", self.sam_from, SAM_FROM)
        if self.schedule == "time" and self.time_limit is None:
            raise ValueError('TrainConfig.schedule="time" needs time_limit (the minutes the schedule spans)')
        if self.resume and self.overwrite:
            raise ValueError("TrainConfig: resume and overwrite exclude each other; choose one")


def learning_rate(config: TrainConfig, step: int, minutes: float = 0.0) -> float:
    """Return the learning rate of optimizer step `step` (0-based): linear warm-up over `warmup`
    steps, then a cosine to `min_lr_ratio * lr` over the remaining steps or, with
    `schedule="time"`, over `time_limit` minutes (`minutes`: training time so far)."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    if config.schedule == "time":
        progress = minutes / config.time_limit
    else:
        progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
