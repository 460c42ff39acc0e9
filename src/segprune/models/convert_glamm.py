"""Convert an official GLaMM checkpoint (mbzuai-oryx/groundingLMM) into a `SegModel` directory.

GLaMM is LLaVA-1.5 (a 7B LLaMA decoder, CLIP ViT-L/14-336, a two-layer MLP projector) with SAM ViT-H under
`model.grounding_encoder.*` (segment-anything's names) and the `[SEG]` projector
`model.text_hidden_fcs.0.*`, so the shared LLaVA-v1 rules of `segprune.models.convert` map it. Its
region encoder (`model.region_encoder.*`: multi-level CLIP features + RoIAlign, read only for `<bbox>`
region prompts) has no `SegModel` counterpart and is not converted. Its released checkpoints hold no
CLIP weights (GLaMM's `merge_lora_weights.py` drops them and `initialize_vision_modules` reloads
openai/clip-vit-large-patch14-336 at run time): give that directory as `vision_tower`.

The saved config carries GLaMM's protocol: the llava_v1 conversation with the user turn
`The <im_start><image><im_end> provides an overview of the picture.\\n{query}` (GLaMM's datasets and
`eval/gcg/infer.py`), its GCG instruction, `<p>` / `</p>` phrases and CLIP's shortest-side resize +
centre crop.
"""

from __future__ import annotations

import os
from typing import Any

from segprune.models.convert import LLAVA_V1_SYSTEM, CheckpointFamily, convert, image_marker
from segprune.models.prompts import GCG_QUERY
from segprune.models.seg_model import SegModelConfig

REGION_TOKEN = "<bbox>"


def _glamm_prompt(tokenizer: Any, source: dict[str, Any]) -> dict[str, Any]:
    user = f"The {image_marker(tokenizer, source)} provides an overview of the picture.\n{{query}}"
    return {
        "prompt_template": f"{LLAVA_V1_SYSTEM} USER: {user} ASSISTANT:",
        # One of GLaMM's ANSWER_LIST answers (its referring-segmentation data draws one at random).
        "seg_answer": "Sure, it is [SEG].",
        "gcg_query": GCG_QUERY,
        "phrase_open": "<p>",
        "phrase_close": "</p>",
        "clip_crop": True,
        "region_token": REGION_TOKEN,
    }


GLAMM = CheckpointFamily(
    name="GLaMM",
    sam_prefix="model.grounding_encoder.",
    tokens=("[SEG]", "<p>", "</p>", "<im_start>", "<im_end>", REGION_TOKEN),
    prompt=_glamm_prompt,
    skipped={
        "model.region_encoder.": f"GLaMM's region encoder; prompts with {REGION_TOKEN} regions are refused",
    },
)


def convert_glamm(src: str | os.PathLike, dst: str | os.PathLike, **options: Any) -> SegModelConfig:
    """Convert the GLaMM checkpoint at `src` into a `SegModel` saved at `dst`; return its config.

    `src` is a GLaMM checkpoint directory (shards + `config.json` + tokenizer) or one weights file.
    Keyword arguments are `segprune.models.convert.convert`'s: `vision_tower` (a CLIP directory such as
    openai/clip-vit-large-patch14-336; needed when `src` has no CLIP weights, used instead of them
    otherwise, as GLaMM does), `tokenizer`, `dtype`, `config_overrides`, `overwrite`, `log`.
    """
    return convert(src, dst, GLAMM, **options)
