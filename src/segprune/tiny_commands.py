"""The `train-tiny` and `demo` subcommands of `segprune`; torch and the models are imported when they run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Any

TRAIN_HELP = {
    "out": "output directory: checkpoint.pt, model/, log.jsonl",
    "steps": "optimizer steps (the learning-rate schedule spans them)",
    "batch_size": "scenes per step, one multi-turn conversation each",
    "lr": "peak learning rate (AdamW)",
    "warmup": "linear warm-up steps",
    "min_lr_ratio": "the cosine decay ends at this fraction of --lr",
    "weight_decay": "AdamW weight decay",
    "seed": "initialises the model and seeds every batch",
    "device": "cpu, cuda, cuda:1, ... (bf16 autocast on CUDA)",
    "resume": "continue from OUT/checkpoint.pt (an empty or new OUT starts afresh)",
    "val_every": "validate every N steps and at the end (0: never)",
    "val_size": "fixed validation cases (split seed 2024)",
    "checkpoint_every": "write OUT/checkpoint.pt every N steps (and at the end or on stop)",
    "time_limit": "minutes; checkpoint and stop cleanly when exceeded",
    "log_every": "log the losses every N steps",
    "workers": "data-loader processes (0: build batches in the training process)",
    "threads": "torch CPU threads (0: torch's default)",
    "save_dtype": "dtype of the saved model/ (float16, bfloat16 or float32)",
    "dims": "JSON overrides of the model sizes (TinyDims), e.g. '{\"llm_width\": 256}'",
    "mix": "JSON overrides of the task mix (TaskMix), e.g. '{\"refer_turns\": 3}'",
    "loss_weights": "JSON overrides of the loss weights (objective.WEIGHTS), e.g. '{\"mask_dice\": 0.5}'",
    "overwrite": "start afresh in an OUT that holds a run, replacing its checkpoint, model/ and log",
}


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"name\": 1}}', got {text!r}")
    return value


def _train_flags(parser: argparse.ArgumentParser) -> None:
    from segprune.train.config import TrainConfig  # standard library only: `segprune` starts fast

    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        hint = hints[f.name]
        if type(None) in typing.get_args(hint):  # `float | None`: the flag takes a float
            hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        if hint is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=TRAIN_HELP[f.name]
            )
            continue
        kind = _json_object if typing.get_origin(hint) is dict else hint
        parser.add_argument(
            flag, type=kind, default=default, help=f"{TRAIN_HELP[f.name]} (default: {default})"
        )


def cmd_train_tiny(args: argparse.Namespace, method: Any = None) -> int:
    from segprune.train.config import TrainConfig
    from segprune.train.loop import train

    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    result = train(config)
    print(json.dumps(result, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace, method: Any = None) -> int:
    from segprune.demo import run_demo

    run_demo(
        out=args.out,
        model_path=args.model,
        scene_seed=args.scene_seed,
        query_index=args.query_index,
        repeats=args.repeats,
        quick=args.quick,
        threads=args.threads,
    )
    return 0


def add_parsers(sub: Any) -> None:
    """Add `train-tiny` and `demo` to the `segprune` subcommands."""
    p = sub.add_parser(
        "train-tiny",
        help="train the tiny shapes segmentation model (CPU or CUDA), with checkpoints and --resume",
        description="Train the tiny LISA-style model on the shapes benchmark: LM cross-entropy on the "
        "answers (referring segmentation, grounded captions, QA), BCE + dice on each [SEG] mask, and "
        "auxiliary heads that make the image tokens carry object identity. See docs/demo.md.",
    )
    _train_flags(p)
    p.set_defaults(run=cmd_train_tiny)

    p = sub.add_parser(
        "demo",
        help="prune the bundled tiny model with each method; pictures, a table, N_avg, TFLOPs, IoU, latency",
        description="Load the bundled tiny model, segment one shapes scene unpruned and with FastV, "
        "PyramidDrop, ALTP, CSP, VisionZip and PruMerge+ at about 75% and 90% token reduction, write one "
        "PNG per method, a sheet and table.md to --out, and print the table. See docs/demo.md.",
    )
    p.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    p.add_argument("--model", default=None, help="a train-tiny model directory (default: the bundled one)")
    p.add_argument(
        "--scene-seed", type=int, default=None, help="seed of the demo scene (default: the demo's)"
    )
    p.add_argument(
        "--query-index", type=int, default=None, help="which of the scene's queries to ask (0, 1, ...)"
    )
    p.add_argument("--repeats", type=int, default=5, help="timed runs per method; the median is reported")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads, 0: torch's default (default 1: on a small or shared machine more threads "
        "make latency erratic)",
    )
    p.add_argument("--quick", action="store_true", help="only the 90%% rows of FastV and CSP (for tests)")
    p.set_defaults(run=cmd_demo)
