"""Convert an official LISA checkpoint (the LISA-7B-v1 layout) into a `SegModel` directory.

LISA (dvlab-research/LISA, `model/LISA.py`) keeps SAM under `model.visual_model.*`; everything else
follows the shared LLaVA-v1 rules of `segprune.models.convert`.
"""

from __future__ import annotations

import os
from typing import Any

from segprune.models.convert import (
    LLAVA_V1_SYSTEM,
    CheckpointFamily,
    ConversionError,
    convert,
    image_marker,
)
from segprune.models.prompts import GCG_QUERY
from segprune.models.seg_model import SegModelConfig

__all__ = ["LISA", "ConversionError", "convert_lisa"]


def _lisa_prompt(tokenizer: Any, source: dict[str, Any]) -> dict[str, Any]:
    """LISA's validation prompt: the llava_v1 conversation, `<im_start><image><im_end>` when the
    checkpoint was trained with them, and the teacher-forced answer "[SEG]." (utils/dataset.py)."""
    return {
        "prompt_template": f"{LLAVA_V1_SYSTEM} USER: {image_marker(tokenizer, source)}\n{{query}} ASSISTANT:",
        "seg_answer": "[SEG].",
        "gcg_query": GCG_QUERY,
    }


LISA = CheckpointFamily(name="LISA", sam_prefix="model.visual_model.", tokens=("[SEG]",), prompt=_lisa_prompt)


def convert_lisa(src: str | os.PathLike, dst: str | os.PathLike, **options: Any) -> SegModelConfig:
    """Convert the LISA checkpoint at `src` into a `SegModel` saved at `dst`; return its config.

    `src` is a LISA checkpoint directory (shards + `config.json` + tokenizer) or one weights file.
    Keyword arguments are `segprune.models.convert.convert`'s: `tokenizer`, `dtype`,
    `config_overrides`, `overwrite`, `log`, `vision_tower`.
    """
    return convert(src, dst, LISA, **options)
