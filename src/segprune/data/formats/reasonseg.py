"""ReasonSeg: `<root>/<split>/<name>.jpg` beside `<name>.json` (texts and labelled polygons), read as
LISA reads it, and written from scenes with exact polygons."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from segprune.data.formats.common import ReferringSample, layout, names_in, read_json, save_jpeg
from segprune.data.masks import mask_to_polygons, paint_labelled_polygons
from segprune.data.scene import Scene


def _read_reasonseg_json(path: Path) -> dict:
    return read_json(path, "ReasonSeg annotation")


def _reasonseg_mask(json_path: Path, image_path: Path, which: int) -> np.ndarray:
    with Image.open(image_path) as im:  # reads the header only
        width, height = im.size
    return paint_labelled_polygons(_read_reasonseg_json(json_path)["shapes"], (height, width))[which]


def load_reasonseg(root: str | Path, split: str = "val", all_texts: bool = False) -> list[ReferringSample]:
    """Load a ReasonSeg split: every `<root>/<split>/*.jpg` with its same-name `.json`.

    By default one sample per image with the first text, as LISA evaluates; `all_texts` gives one
    per text. The mask is painted as LISA paints it (see `masks.paint_labelled_polygons`);
    "ignore" regions come back as the sample's `ignore` mask.
    """
    folder = Path(root) / split
    if not folder.is_dir():
        found = [name for name in names_in(Path(root)) if (Path(root) / name).is_dir()]
        raise ValueError(f"ReasonSeg root {root} has no split {split!r}; splits there: {found}")
    samples = []
    for image_path in sorted(folder.glob("*.jpg")):
        json_path = image_path.with_suffix(".json")
        anno = _read_reasonseg_json(json_path)
        with layout(json_path, "ReasonSeg"):
            texts = [anno["text"]] if isinstance(anno["text"], str) else list(anno["text"])
            is_sentence = bool(anno.get("is_sentence", False))
        for k, text in enumerate(texts if all_texts else texts[:1]):
            samples.append(
                ReferringSample(
                    image_path=image_path,
                    query=text.strip(),
                    sample_id=f"reasonseg/{split}/{image_path.stem}/{k}",
                    load_mask=partial(_reasonseg_mask, json_path, image_path, 0),
                    tags={"split": split, "is_sentence": is_sentence},
                    load_ignore=partial(_reasonseg_mask, json_path, image_path, 1),
                )
            )
    return samples


def write_reasonseg(
    scenes: Sequence[Scene], root: str | Path, split: str = "val", types: Sequence[str] = ("reasoning",)
) -> Path:
    """Write the queries of the given types in the ReasonSeg layout; return the split folder.

    One image per (scene, target object), named `<scene_id>_<object index>`, holding all of that
    object's queries as its texts. Masks become exact polygons (`masks.mask_to_polygons`).
    """
    folder = Path(root) / split
    for scene in scenes:
        for target in sorted({q.target for q in scene.queries if q.type in types}):
            texts = [q.text for q in scene.queries if q.target == target and q.type in types]
            shapes = [
                {"label": "target", "shape_type": "polygon", "points": points}
                for points in mask_to_polygons(scene.objects[target].mask)
            ]
            stem = f"{scene.scene_id}_{target}"
            save_jpeg(scene.image, folder / f"{stem}.jpg")
            (folder / f"{stem}.json").write_text(
                json.dumps({"text": texts, "is_sentence": False, "shapes": shapes})
            )
    return folder
