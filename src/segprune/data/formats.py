"""Readers for the on-disk layouts of RefCOCO/+/g, ReasonSeg and GranDf (GCG), and writers that put a
shapes split in the same layouts, so the evaluation reads synthetic and real data through one path.

Layouts, as LISA's and GLaMM's data loaders expect them:

    RefCOCO   <root>/<dataset>/refs(<split_by>).p, <root>/<dataset>/instances.json,
              <root>/images/mscoco/images/train2014/<file_name>
    ReasonSeg <root>/<split>/<name>.jpg and <name>.json
    GranDf    <gt dir>/<split>_gcg_coco_caption_gt.json and <split>_gcg_coco_mask_gt.json (val, test),
              or one GranDf_HA_GCG_train.json-style list (train); images in a folder of their own

Masks are decoded when a sample's `mask` is read, not when the files are loaded: a real val split
holds thousands of full-resolution masks.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from segprune.data.masks import decode_segmentation, encode_rle, mask_to_polygons, paint_labelled_polygons
from segprune.data.scene import SHAPES, Scene, tag_caption

REFCOCO_IMAGE_DIR = Path("images/mscoco/images/train2014")
GRANDF_IMAGE_DIR = Path("GranDf_HA_images/val_test")
GRANDF_GT_DIR = Path("annotations/val_test")


@dataclass(frozen=True)
class ReferringSample:
    """One referring query and its target: `mask` (bool H x W) is decoded on each access.

    `ignore` is the region to leave out of the metrics (ReasonSeg's "ignore" polygons), else None.
    """

    image_path: Path
    query: str
    sample_id: str
    load_mask: Callable[[], np.ndarray] = field(repr=False, compare=False)
    tags: dict = field(default_factory=dict)
    load_ignore: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def mask(self) -> np.ndarray:
        """Return the target mask, bool (H, W)."""
        return self.load_mask()

    @property
    def ignore(self) -> np.ndarray | None:
        """Return the ignore mask, bool (H, W), or None where the format has none."""
        return None if self.load_ignore is None else self.load_ignore()


@dataclass(frozen=True)
class GCGSample:
    """One image's grounded caption: plain `caption`, its `phrases` and one mask per phrase.

    `spans` are the phrases' (start, end) in the caption, or None when a phrase is not found in it.
    """

    image_path: Path
    caption: str
    phrases: list[str]
    sample_id: str
    load_masks: Callable[[], list[np.ndarray]] = field(repr=False, compare=False)
    spans: list[tuple[int, int]] | None = None

    @property
    def masks(self) -> list[np.ndarray]:
        """Return one bool (H, W) mask per phrase, decoded now."""
        return self.load_masks()

    @property
    def tagged(self) -> str:
        """Return the caption in GLaMM's answer form, each phrase as `<p> phrase </p> [SEG]`."""
        if self.spans is None:
            raise ValueError(f"{self.sample_id}: phrases not found in the caption, cannot tag it")
        return tag_caption(self.caption, self.spans)


def _read_json(path: Path, what: str) -> Any:
    """Return the JSON of `path`, or raise one `ValueError` saying which file is missing or broken."""
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:  # some of the original ReasonSeg files are not UTF-8; LISA falls back likewise
        text = data.decode("cp1252", errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not JSON ({err})") from None


@contextmanager
def _layout(path: Path, layout: str) -> Iterator[None]:
    """Turn a missing key or a wrong type while reading `path` into one error naming the file."""
    try:
        yield
    except (KeyError, TypeError, IndexError, AttributeError) as err:
        what = f"missing key {err}" if isinstance(err, KeyError) else str(err)
        raise ValueError(f"{path} is not in the {layout} layout: {what}") from None


def _names_in(folder: Path, pattern: str = "*") -> list[str]:
    return sorted(p.name for p in folder.glob(pattern)) if folder.is_dir() else []


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Full-resolution chroma keeps colour edges where the masks have them; most of the remaining
    # error (about 3 levels on average) is the scene's own pixel noise.
    Image.fromarray(image).save(path, quality=95, subsampling=0)


def _coco_annotation(ann_id: int, image_id, category_id: int, mask: np.ndarray) -> dict:
    rle = encode_rle(mask)
    x, y, w, h = mask_utils.toBbox(rle).tolist()
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": rle,
        "area": int(mask.sum()),
        "bbox": [x, y, w, h],
        "iscrowd": 0,
    }


# --- RefCOCO / RefCOCO+ / RefCOCOg --------------------------------------------------------------


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
        found = [name for name in _names_in(root) if (root / name).is_dir() and name != "images"]
        raise ValueError(f"RefCOCO root {root} has no data set {dataset!r}; data sets there: {found}")
    refs_path = data_dir / f"refs({split_by}).p"
    if not refs_path.is_file():
        raise ValueError(
            f"{data_dir} has no refs({split_by}).p (split_by {split_by!r}); refs files there: "
            f"{_names_in(data_dir, 'refs(*).p')}"
        )
    try:
        with open(refs_path, "rb") as f:
            refs = pickle.load(f, encoding="latin1")  # latin1: the original files are Python 2 pickles
    except Exception as err:  # a cut-off or foreign file raises any of a dozen types
        raise ValueError(f"{refs_path} is not a readable refs pickle ({type(err).__name__}: {err})") from None
    instances_path = data_dir / "instances.json"
    instances = _read_json(instances_path, "RefCOCO instances file")
    with _layout(instances_path, "RefCOCO instances"):
        images = {im["id"]: im for im in instances["images"]}
        anns = {ann["id"]: ann for ann in instances["annotations"]}
        categories = {c["id"]: c["name"] for c in instances.get("categories", [])}
    image_dir = Path(image_dir) if image_dir is not None else root / REFCOCO_IMAGE_DIR
    samples = []
    with _layout(refs_path, "RefCOCO refs"):
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
            _save_jpeg(scene.image, image_dir / file_name)
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            ann_ids = []
            for obj in scene.objects:
                ann_id += 1
                ann_ids.append(ann_id)
                ann = _coco_annotation(ann_id, image_id, category_ids[obj.shape], obj.mask)
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


# --- ReasonSeg ----------------------------------------------------------------------------------


def _read_reasonseg_json(path: Path) -> dict:
    return _read_json(path, "ReasonSeg annotation")


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
        found = [name for name in _names_in(Path(root)) if (Path(root) / name).is_dir()]
        raise ValueError(f"ReasonSeg root {root} has no split {split!r}; splits there: {found}")
    samples = []
    for image_path in sorted(folder.glob("*.jpg")):
        json_path = image_path.with_suffix(".json")
        anno = _read_reasonseg_json(json_path)
        with _layout(json_path, "ReasonSeg"):
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
            _save_jpeg(scene.image, folder / f"{stem}.jpg")
            (folder / f"{stem}.json").write_text(
                json.dumps({"text": texts, "is_sentence": False, "shapes": shapes})
            )
    return folder


# --- GranDf (GLaMM's grounded conversation generation) ------------------------------------------


def _find_spans(caption: str, phrases: list[str]) -> list[tuple[int, int]] | None:
    """Locate each phrase in the caption, each search starting where the previous phrase ended."""
    spans, start = [], 0
    for phrase in phrases:
        at = caption.find(phrase, start)
        if at < 0:
            return None
        spans.append((at, at + len(phrase)))
        start = at + len(phrase)
    return spans


def _decode_all(segmentations: list, height: int, width: int) -> list[np.ndarray]:
    return [decode_segmentation(s, height, width) for s in segmentations]


def _rle_size(segmentation) -> tuple[int, int]:
    first = segmentation if isinstance(segmentation, dict) else segmentation[0]
    return tuple(first["size"])


def load_grandf(
    annotation_json: str | Path, image_root: str | Path, mask_json: str | Path | None = None
) -> list[GCGSample]:
    """Load GranDf GCG annotations, in either of GLaMM's two layouts.

    - val/test: `annotation_json` is `<split>_gcg_coco_caption_gt.json` (images with string ids;
      annotations with `image_id`, `caption`, `labels`) and `mask_json` (default: the same name with
      `mask` for `caption`) a COCO file whose annotations hold one RLE per label, in label order.
      Images are `<image_root>/<file_name>` (or `<id>.jpg`).
    - train: a list of `{"file_name", "caption", "groundings": {phrase: {"token_positives": [start,
      end], "rle_masks": [...]}}}`; a phrase's mask is the union of its RLEs, phrases in caption order.
    """
    annotation_json, image_root = Path(annotation_json), Path(image_root)
    data = _read_json(annotation_json, "GranDf caption file")
    if isinstance(data, list):
        with _layout(annotation_json, "GranDf train"):
            samples = [_grandf_train_sample(entry, image_root) for entry in data]
    else:
        if mask_json is None:
            mask_json = annotation_json.with_name(annotation_json.name.replace("caption", "mask"))
        mask_json = Path(mask_json)
        mask_data = _read_json(mask_json, "GranDf mask file")
        with _layout(annotation_json, "GranDf caption"):
            captions: dict = {}
            for ann in data["annotations"]:
                captions.setdefault(ann["image_id"], ann)  # GLaMM's evaluation takes the first caption
            images = list(data["images"])
        with _layout(mask_json, "GranDf mask (COCO)"):
            masks: dict = {}
            for ann in mask_data["annotations"]:  # file order is label order
                masks.setdefault(ann["image_id"], []).append(ann["segmentation"])
        with _layout(annotation_json, "GranDf caption"):
            samples = [_grandf_sample(image, captions, masks, image_root) for image in images]
    return samples


def _grandf_sample(image: dict, captions: dict, masks: dict, image_root: Path) -> GCGSample:
    image_id = image["id"]
    if image_id not in captions:
        raise ValueError(f"image {image_id!r} has no caption in its GranDf caption file")
    cap, segs = captions[image_id], masks.get(image_id, [])
    caption = cap["caption"]
    size = (image["height"], image["width"]) if "height" in image else _rle_size(segs[0]) if segs else (0, 0)
    return GCGSample(
        image_path=image_root / image.get("file_name", f"{image_id}.jpg"),
        caption=caption,
        phrases=list(cap["labels"]),
        sample_id=str(image_id),
        load_masks=partial(_decode_all, segs, *size),
        spans=_find_spans(caption, cap["labels"]),
    )


def _unions(rle_lists: list[list], height: int, width: int) -> list[np.ndarray]:
    return [decode_segmentation(rles, height, width) for rles in rle_lists]


def _grandf_train_sample(entry: dict, image_root: Path) -> GCGSample:
    caption = entry["caption"].strip('"').strip()  # GLaMM strips stray quotes the same way
    items = sorted(entry["groundings"].items(), key=lambda kv: kv[1]["token_positives"][0])
    rle_lists = [g["rle_masks"] for _, g in items]
    first = next((r[0] for r in rle_lists if r), None)
    height, width = (entry["height"], entry["width"]) if "height" in entry else tuple(first["size"])
    return GCGSample(
        image_path=image_root / entry["file_name"],
        caption=caption,
        phrases=[phrase for phrase, _ in items],
        sample_id=str(entry.get("image_id", Path(entry["file_name"]).stem)),
        load_masks=partial(_unions, rle_lists, height, width),
        spans=[tuple(g["token_positives"]) for _, g in items],
    )


def write_grandf(scenes: Sequence[Scene], root: str | Path, split: str = "val") -> tuple[Path, Path]:
    """Write scenes' grounded captions in GranDf's val/test layout; return (caption json, mask json).

    Files go to `<root>/annotations/val_test/<split>_gcg_coco_{caption,mask}_gt.json`, images to
    `<root>/GranDf_HA_images/val_test/<scene_id>.jpg`: the layout GLaMM's GCG evaluation reads.
    """
    root = Path(root)
    gt_dir, image_dir = root / GRANDF_GT_DIR, root / GRANDF_IMAGE_DIR
    images, captions, masks = [], [], []
    for scene in scenes:
        height, width = scene.size
        _save_jpeg(scene.image, image_dir / f"{scene.scene_id}.jpg")
        image = {"id": scene.scene_id, "file_name": f"{scene.scene_id}.jpg", "height": height, "width": width}
        images.append(image)
        phrases = scene.caption.phrases
        captions.append(
            {
                "id": len(captions) + 1,
                "image_id": scene.scene_id,
                "caption": scene.caption.text,
                "labels": [p.text for p in phrases],
            }
        )
        for p in phrases:
            masks.append(_coco_annotation(len(masks) + 1, scene.scene_id, 1, p.mask))
    gt_dir.mkdir(parents=True, exist_ok=True)
    caption_json = gt_dir / f"{split}_gcg_coco_caption_gt.json"
    mask_json = gt_dir / f"{split}_gcg_coco_mask_gt.json"
    caption_json.write_text(json.dumps({"images": images, "annotations": captions}))
    categories = [{"id": 1, "name": "object"}]
    mask_json.write_text(json.dumps({"images": images, "annotations": masks, "categories": categories}))
    return caption_json, mask_json
