"""`segprune convert-lisa` and `segprune convert-glamm`: official checkpoints to SegModel directories."""

from __future__ import annotations

import argparse
import json
from typing import Any

# (name, the layout its checkpoints have)
FAMILIES = (
    ("LISA", "LLaVA + CLIP + SAM ViT-H + [SEG] projector, LISA-7B-v1 layout"),
    ("GLaMM", "LLaVA-1.5 + SAM ViT-H + [SEG] projector; the region encoder is not converted"),
)


def add_parser(sub: Any, method: Any = None) -> None:
    """Add `convert-lisa` and `convert-glamm` to the `segprune` subcommands."""
    for name, layout in FAMILIES:
        p = sub.add_parser(
            f"convert-{name.lower()}",
            help=f"convert an official {name} checkpoint into a segprune SegModel directory",
            description=f"Map a {name} checkpoint ({layout}) to transformers LLaVA / SAM names and save it "
            "with save_pretrained; load it with segprune.models.SegModel.from_pretrained(DST). "
            "See docs/segmodel.md.",
        )
        p.add_argument("src", help=f"{name} checkpoint directory (shards, config.json, tokenizer) or a file")
        p.add_argument("dst", help="output directory: new or empty (see --overwrite)")
        p.add_argument("--tokenizer", help="tokenizer directory (default: SRC)")
        if name == "GLaMM":
            p.add_argument(
                "--vision-tower",
                metavar="CLIP_DIR",
                help="CLIP directory (openai/clip-vit-large-patch14-336): needed when SRC has no CLIP "
                "weights (GLaMM's released checkpoints have none); replaces SRC's otherwise",
            )
        p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="cast the weights")
        p.add_argument("--config-overrides", type=json.loads, help='JSON, e.g. {"vision_config": {...}}')
        p.add_argument("--overwrite", action="store_true", help="write into a non-empty DST directory")
        p.set_defaults(run=run)


def run(args: argparse.Namespace, method: Any = None) -> int:
    """Convert `args.src` into a SegModel directory at `args.dst`."""
    import torch

    from segprune.models.convert import convert
    from segprune.models.convert_glamm import GLAMM
    from segprune.models.convert_lisa import LISA

    family = {"convert-lisa": LISA, "convert-glamm": GLAMM}[args.command]
    convert(
        args.src,
        args.dst,
        family,
        tokenizer=args.tokenizer,
        vision_tower=getattr(args, "vision_tower", None),
        dtype=getattr(torch, args.dtype) if args.dtype else None,
        config_overrides=args.config_overrides,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.dst}")
    return 0
