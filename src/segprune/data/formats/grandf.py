"""GranDf, GLaMM's grounded conversation generation data: its val/test and train layouts, read as
GLaMM's GCG evaluation reads them, and the val/test layout written from scenes.

    <gt dir>/<split>_gcg_coco_caption_gt.json and <split>_gcg_coco_mask_gt.json (val, test),
    or one GranDf_HA_GCG_train.json-style list (train); images in a folder of their own
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from segprune.data.formats.common import GCGSample, coco_annotation, layout, read_json, save_jpeg
from segprune.data.masks import decode_segmentation
from segprune.data.scene import Scene

GRANDF_IMAGE_DIR = Path("GranDf_HA_images/val_test")
GRANDF_GT_DIR = Path("annotations/val_test")


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
    data = read_json(annotation_json, "GranDf caption file")
    if isinstance(data, list):
        with layout(annotation_json, "GranDf train"):
            samples = [_grandf_train_sample(entry, image_root) for entry in data]
    else:
        if mask_json is None:
            mask_json = annotation_json.with_name(annotation_json.name.replace("caption", "mask"))
        mask_json = Path(mask_json)
        mask_data = read_json(mask_json, "GranDf mask file")
        with layout(annotation_json, "GranDf caption"):
            captions: dict = {}
            for ann in data["annotations"]:
                captions.setdefault(ann["image_id"], ann)  # GLaMM's evaluation takes the first caption
            images = list(data["images"])
        with layout(mask_json, "GranDf mask (COCO)"):
            masks: dict = {}
            for ann in mask_data["annotations"]:  # file order is label order
                masks.setdefault(ann["image_id"], []).append(ann["segmentation"])
        with layout(annotation_json, "GranDf caption"):
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
        save_jpeg(scene.image, image_dir / f"{scene.scene_id}.jpg")
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
            masks.append(coco_annotation(len(masks) + 1, scene.scene_id, 1, p.mask))
    gt_dir.mkdir(parents=True, exist_ok=True)
    caption_json = gt_dir / f"{split}_gcg_coco_caption_gt.json"
    mask_json = gt_dir / f"{split}_gcg_coco_mask_gt.json"
    caption_json.write_text(json.dumps({"images": images, "annotations": captions}))
    categories = [{"id": 1, "name": "object"}]
    mask_json.write_text(json.dumps({"images": images, "annotations": masks, "categories": categories}))
    return caption_json, mask_json
