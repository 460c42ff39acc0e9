"""RIO (reasoning intention-oriented objects): one JSON list of intentions, read as its authors lay it
out, and written from scenes.

Each entry: `height`, `width`, the COCO `image_id`, `task_id` (one per intention), `expressions`
(the intention's descriptions, e.g. "you can use the thing to cut the food on the table"),
`bbox_list` and `mask_list`: the box (x, y, w, h) and the COCO segmentation (polygons or an RLE) of
every instance that satisfies the intention. The common and uncommon test sets use COCO val2014
images, the training set train2014; images are read as `<image dir>/COCO_<coco split>_<id:012>.jpg`.

A model that answers with one mask (LISA, and every method here) is scored against the union of
all the intention's instances, as RIO's single-mask baseline (PolyFormer) is, with the mean of the
per-query IoUs (the CSP paper's mIoU on RIO, gIoU in this project's tables).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from segprune.data.formats.common import ReferringSample, layout, names_in, read_json, save_jpeg
from segprune.data.masks import decode_segmentation, to_rle
from segprune.data.scene import COLOURS, Scene

RIO_SPLITS = ("common", "uncommon", "train")
COCO_SPLIT = {"common": "val2014", "uncommon": "val2014", "train": "train2014"}


def rio_file(root: str | Path, split: str) -> Path:
    """Return the annotation file of `split` under `root`: the one JSON file whose name holds the split
    (RIO_common_all_thing.json, ...), or `root` itself when it is a file."""
    root = Path(root)
    if root.is_file():
        return root
    if split not in RIO_SPLITS:
        raise ValueError(f"RIO split {split!r} is not valid; valid: {list(RIO_SPLITS)}")
    found = names_in(root, "*.json")
    # "common" is also a substring of "uncommon": match it as a whole word of the name.
    matches = [name for name in found if split in name.replace(".", "_").split("_")]
    if len(matches) != 1:
        raise ValueError(
            f"RIO root {root} must hold exactly one JSON file for split {split!r} "
            f"(found {matches or 'none'}; JSON files there: {found})"
        )
    return root / matches[0]


def _union(segmentations: list, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    for segmentation in segmentations:
        mask |= decode_segmentation(segmentation, height, width)
    return mask


def load_rio(
    root: str | Path,
    split: str = "common",
    image_dir: str | Path | None = None,
    all_texts: bool = False,
) -> list[ReferringSample]:
    """Load one RIO split: one sample per intention, its first expression (`all_texts`: one per expression).

    `root` is the annotation file or a folder holding it (see `rio_file`); images come from
    `image_dir` (default: `<folder>/<val2014 or train2014>`). The target mask is the union of the
    intention's instances; tags carry the ids, the number of instances and the target's area as a
    fraction of the image.
    """
    path = rio_file(root, split)
    entries = read_json(path, "RIO annotation file")
    if not isinstance(entries, list):
        raise ValueError(f"{path} is not in the RIO layout: expected a JSON list of intentions")
    coco_split = COCO_SPLIT.get(split, "val2014")
    image_dir = Path(image_dir) if image_dir is not None else path.parent / coco_split
    samples = []
    with layout(path, "RIO"):
        for index, entry in enumerate(entries):
            height, width = int(entry["height"]), int(entry["width"])
            masks, boxes = entry["mask_list"], entry["bbox_list"]
            if not masks:
                raise ValueError(f"{path}: entry {index} (task_id {entry['task_id']}) has an empty mask_list")
            if len(boxes) != len(masks):
                raise ValueError(
                    f"{path}: entry {index} has {len(boxes)} boxes but {len(masks)} masks; "
                    "RIO gives one of each per instance"
                )
            texts = [entry["expressions"]] if isinstance(entry["expressions"], str) else entry["expressions"]
            image_path = image_dir / f"COCO_{coco_split}_{int(entry['image_id']):012d}.jpg"
            area = sum(w * h for _, _, w, h in boxes)  # boxes overlap rarely; exact area needs decoding
            for k, text in enumerate(texts if all_texts else texts[:1]):
                samples.append(
                    ReferringSample(
                        image_path=image_path,
                        query=text.strip(),
                        sample_id=f"rio/{split}/{index}/{k}",
                        load_mask=partial(_union, masks, height, width),
                        tags={
                            "split": split,
                            "image_id": entry["image_id"],
                            "task_id": entry["task_id"],
                            "instances": len(masks),
                            "box_area_fraction": area / (height * width),
                        },
                    )
                )
    return samples


def write_rio(
    scenes: Sequence[Scene],
    root: str | Path,
    split: str = "common",
    image_dir: str | Path | None = None,
    min_instances: int = 1,
) -> Path:
    """Write scenes as a RIO split; return the annotation file (`<root>/RIO_<split>_all_thing.json`).

    Intentions: each scene's reasoning queries (one instance each), and for every colour that two or
    more objects share, "the things that are <colour>" with all of them as instances; `min_instances`
    drops intentions with fewer. Masks are exact RLEs; images are saved under COCO's names.
    """
    if split not in RIO_SPLITS:
        raise ValueError(f"RIO split {split!r} is not valid; valid: {list(RIO_SPLITS)}")
    root = Path(root)
    coco_split = COCO_SPLIT[split]
    image_dir = Path(image_dir) if image_dir is not None else root / coco_split
    entries = []
    for image_id, scene in enumerate(scenes, start=1):
        height, width = scene.size
        intentions: list[tuple[list[str], list[int]]] = []
        for target in sorted({q.target for q in scene.queries if q.type == "reasoning"}):
            texts = [q.text for q in scene.queries if q.target == target and q.type == "reasoning"]
            intentions.append((texts, [target]))
        for colour in COLOURS:
            group = [i for i, obj in enumerate(scene.objects) if obj.colour == colour and obj.area > 0]
            if len(group) >= 2:
                intentions.append(([f"the things that are {colour}"], group))
        intentions = [(texts, group) for texts, group in intentions if len(group) >= min_instances]
        if not intentions:
            continue
        save_jpeg(scene.image, image_dir / f"COCO_{coco_split}_{image_id:012d}.jpg")
        for texts, group in intentions:
            entries.append(
                {
                    "height": height,
                    "width": width,
                    "image_id": image_id,
                    "task_id": len(entries),
                    "expressions": texts,
                    "bbox_list": [list(scene.objects[i].bbox) for i in group],
                    "mask_list": [to_rle(scene.objects[i].mask) for i in group],
                }
            )
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"RIO_{split}_all_thing.json"
    path.write_text(json.dumps(entries))
    return path
