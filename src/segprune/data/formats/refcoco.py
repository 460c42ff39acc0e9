"""RefCOCO / RefCOCO+ / RefCOCOg: the refer API's layout, read as LISA reads it, and written from scenes.

<root>/<dataset>/refs(<split_by>).p, <root>/<dataset>/instances.json,
<root>/images/mscoco/images/train2014/<file_name>
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

from segprune.data.formats.common import (
    ReferringSample,
    coco_annotation,
    layout,
    names_in,
    read_json,
    save_jpeg,
)
from segprune.data.masks import decode_segmentation
from segprune.data.scene import SHAPES, Scene

REFCOCO_IMAGE_DIR = Path("images/mscoco/images/train2014")


def _in_split(ref_split: str, split: str) -> bool:
    """Apply the refer API's split rule: "test" takes every test split, "testA" also takes "testAB"."""
    if split == "test":
        return "test" in ref_split
    if split in ("testA", "testB", "testC"):
        return ref_split.startswith("test") and split[-1] in ref_split[4:]
    return ref_split == split


def load_refcoco(
    root: str | Path,
    dataset: str = "refcoco",
    split: str = "val",
    split_by: str = "unc",
    image_dir: str | Path | None = None,
) -> list[ReferringSample]:
    """Load one split of a RefCOCO-family data set: one sample per sentence of every ref in the split.

    The refs file is a pickle, which can run code when loaded: read only files you trust. Sentences
    are stripped but not lower-cased. Tags carry the ids, the category name, the target's area as a
    fraction of the image, and the query type where the file has one (files written by
    `write_refcoco`).
    """
    root = Path(root)
    data_dir = root / dataset
    if not data_dir.is_dir():
        found = [name for name in names_in(root) if (root / name).is_dir() and name != "images"]
        raise ValueError(f"RefCOCO root {root} has no data set {dataset!r}; data sets there: {found}")
    refs_path = data_dir / f"refs({split_by}).p"
    if not refs_path.is_file():
        raise ValueError(
            f"{data_dir} has no refs({split_by}).p (split_by {split_by!r}); refs files there: "
            f"{names_in(data_dir, 'refs(*).p')}"
        )
    try:
        with open(refs_path, "rb") as f:
            refs = pickle.load(f, encoding="latin1")  # latin1: the original files are Python 2 pickles
    except Exception as err:  # a cut-off or foreign file raises any of a dozen types
        raise ValueError(f"{refs_path} is not a readable refs pickle ({type(err).__name__}: {err})") from None
    instances_path = data_dir / "instances.json"
    instances = read_json(instances_path, "RefCOCO instances file")
    with layout(instances_path, "RefCOCO instances"):
        images = {im["id"]: im for im in instances["images"]}
        anns = {ann["id"]: ann for ann in instances["annotations"]}
        categories = {c["id"]: c["name"] for c in instances.get("categories", [])}
    image_dir = Path(image_dir) if image_dir is not None else root / REFCOCO_IMAGE_DIR
    samples = []
    with layout(refs_path, "RefCOCO refs"):
        for ref in refs:
            if not _in_split(ref["split"], split):
                continue
            ann, image = anns[ref["ann_id"]], images[ref["image_id"]]
            load = partial(decode_segmentation, ann["segmentation"], image["height"], image["width"])
            for sent in ref["sentences"]:
                tags = {
                    "dataset": dataset,
                    "split": ref["split"],
                    "ref_id": ref["ref_id"],
                    "ann_id": ref["ann_id"],
                    "image_id": ref["image_id"],
                    "sent_id": sent["sent_id"],
                    "category": categories.get(ref["category_id"]),
                    "area_fraction": ann.get("area", float("nan")) / (image["height"] * image["width"]),
                }
                if "type" in sent:
                    tags["type"] = sent["type"]
                samples.append(
                    ReferringSample(
                        image_path=image_dir / image["file_name"],
                        query=sent["sent"].strip(),
                        sample_id=f"{dataset}({split_by})/{sent['sent_id']}",
                        load_mask=load,
                        tags=tags,
                    )
                )
    return samples


def write_refcoco(
    scenes: Sequence[Scene] | Mapping[str, Sequence[Scene]],
    root: str | Path,
    dataset: str = "refcoco",
    split_by: str = "unc",
    split: str = "val",
    image_dir: str | Path | None = None,
) -> Path:
    """Write scenes in the RefCOCO layout that `load_refcoco` and LISA's refer API read; return its folder.

    `scenes` is one split (named by `split`) or a mapping of split name to scenes. Each object with
    queries becomes one ref (its queries the ref's sentences, each sentence tagged with its query
    type); every object becomes one instance, its mask an RLE wrapped in a list as LISA's loader wants.
    Categories are the shape kinds.
    """
    root = Path(root)
    splits = scenes if isinstance(scenes, Mapping) else {split: scenes}
    image_dir = Path(image_dir) if image_dir is not None else root / REFCOCO_IMAGE_DIR
    category_ids = {kind: i + 1 for i, kind in enumerate(SHAPES)}
    images, annotations, refs = [], [], []
    image_id = ann_id = sent_id = 0
    for split_name, split_scenes in splits.items():
        for scene in split_scenes:
            image_id += 1
            height, width = scene.size
            file_name = f"COCO_train2014_{image_id:012d}.jpg"
            save_jpeg(scene.image, image_dir / file_name)
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            ann_ids = []
            for obj in scene.objects:
                ann_id += 1
                ann_ids.append(ann_id)
                ann = coco_annotation(ann_id, image_id, category_ids[obj.shape], obj.mask)
                annotations.append({**ann, "segmentation": [ann["segmentation"]]})
            for target in sorted({q.target for q in scene.queries}):
                sentences = []
                for q in (q for q in scene.queries if q.target == target):
                    sent_id += 1
                    sentences.append(
                        {
                            "sent": q.text,
                            "raw": q.text,
                            "tokens": q.text.split(),
                            "sent_id": sent_id,
                            "type": q.type,
                        }
                    )
                refs.append(
                    {
                        "ref_id": len(refs) + 1,
                        "ann_id": ann_ids[target],
                        "image_id": image_id,
                        "split": split_name,
                        "sentences": sentences,
                        "sent_ids": [s["sent_id"] for s in sentences],
                        "category_id": category_ids[scene.objects[target].shape],
                    }
                )
    data_dir = root / dataset
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / f"refs({split_by}).p", "wb") as f:
        pickle.dump(refs, f)
    categories = [{"id": i, "name": kind, "supercategory": "shape"} for kind, i in category_ids.items()]
    instances = {"images": images, "annotations": annotations, "categories": categories}
    (data_dir / "instances.json").write_text(json.dumps(instances))
    return data_dir
