"""Readers and writers of the RefCOCO, ReasonSeg and GranDf layouts: round trips of generated scenes,
and tiny hand-written files in each real format with hand-computed masks."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segprune.data import COLOURS, generate_split
from segprune.data.formats import (
    load_grandf,
    load_reasonseg,
    load_refcoco,
    write_grandf,
    write_reasonseg,
    write_refcoco,
)
from segprune.data.masks import (
    decode_segmentation,
    fill_polygon,
    mask_to_polygons,
    paint_labelled_polygons,
    to_rle,
)

# pycocotools' decode warns on every call under numpy 2 (its array wrapper lacks the `copy` keyword);
# upstream is unmaintained, and the warning says nothing about this code.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="module")
def scenes():
    return generate_split(6, seed=21)[:]


def _box(height: int, width: int, rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((height, width), dtype=bool)
    m[rows, cols] = True
    return m


def _write_image(path, height: int, width: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 128, dtype=np.uint8)).save(path)


# --- round trips of generated scenes ------------------------------------------------------------


def test_refcoco_round_trip_is_exact(scenes, tmp_path):
    write_refcoco({"val": scenes[:4], "testA": scenes[4:]}, tmp_path, dataset="refcoco+", split_by="unc")
    samples = load_refcoco(tmp_path, dataset="refcoco+", split="val")
    expected = [
        (s, q)
        for s in scenes[:4]
        for t in sorted({q.target for q in s.queries})
        for q in s.queries
        if q.target == t
    ]
    assert len(samples) == len(expected)
    for sample, (scene, query) in zip(samples, expected, strict=True):
        assert sample.query == query.text and sample.tags["type"] == query.type
        assert sample.tags["category"] == scene.objects[query.target].shape
        assert sample.mask.dtype == bool and np.array_equal(sample.mask, query.mask)
        assert sample.ignore is None
    image = np.asarray(Image.open(samples[0].image_path))
    assert image.shape == scenes[0].image.shape
    assert np.abs(image.astype(int) - scenes[0].image).mean() < 4  # JPEG at quality 95
    for obj in scenes[0].objects:  # every object still shows its named colour after compression
        mean = image[obj.mask].mean(axis=0)
        assert min(COLOURS, key=lambda c: np.sum((mean - np.asarray(COLOURS[c])) ** 2)) == obj.colour
    assert {s.tags["split"] for s in load_refcoco(tmp_path, "refcoco+", split="test")} == {"testA"}
    assert len(load_refcoco(tmp_path, "refcoco+", split="testA")) == sum(len(s.queries) for s in scenes[4:])
    assert load_refcoco(tmp_path, "refcoco+", split="testB") == []


def test_reasonseg_round_trip_is_exact(scenes, tmp_path):
    folder = write_reasonseg(scenes, tmp_path, split="val")
    samples = load_reasonseg(tmp_path, "val", all_texts=True)
    reasoning = [q for s in scenes for q in s.queries if q.type == "reasoning"]
    assert sorted(s.query for s in samples) == sorted(q.text for q in reasoning)
    by_text = {(s.scene_id, q.text): q for s in scenes for q in s.queries}
    for sample in samples:
        scene_id = sample.image_path.stem.rsplit("_", 1)[0]
        query = by_text[(scene_id, sample.query)]
        mask = sample.mask
        iou = (mask & query.mask).sum() / (mask | query.mask).sum()
        assert iou >= 0.99
        assert np.array_equal(mask, query.mask)  # the staircase polygons are in fact exact
        assert not sample.ignore.any()
    # LISA evaluates the first text of each file only.
    assert len(load_reasonseg(tmp_path, "val")) == len(list(folder.glob("*.json")))


def test_grandf_round_trip_is_exact_and_coco_evaluable(scenes, tmp_path, capsys):
    caption_json, mask_json = write_grandf(scenes, tmp_path, split="test")
    samples = load_grandf(caption_json, tmp_path / "GranDf_HA_images" / "val_test")
    assert [s.sample_id for s in samples] == [s.scene_id for s in scenes]
    for sample, scene in zip(samples, scenes, strict=True):
        assert sample.caption == scene.caption.text and sample.tagged == scene.caption.tagged
        assert sample.phrases == [p.text for p in scene.caption.phrases]
        assert len(sample.masks) == len(scene.objects)
        for mask, phrase in zip(sample.masks, scene.caption.phrases, strict=True):
            assert np.array_equal(mask, phrase.mask)
        assert sample.image_path.exists()
    # GLaMM's evaluation path: the mask file is a COCO ground truth with one category.
    gt = COCO(str(mask_json))
    predictions = [{**a, "score": 1.0} for a in json.loads(mask_json.read_text())["annotations"]]
    evaluator = COCOeval(gt, gt.loadRes(predictions), "segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[1] == pytest.approx(1.0)  # AP50 of the ground truth against itself
    capsys.readouterr()


# --- hand-written files in the real formats -----------------------------------------------------


def test_reads_a_hand_written_refcoco(tmp_path):
    data = tmp_path / "refcocog"
    data.mkdir()
    instances = {
        "images": [
            {"id": 7, "file_name": "COCO_train2014_000000000007.jpg", "height": 6, "width": 8},
            {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "height": 5, "width": 7},
        ],
        "annotations": [
            # Two polygon parts, in pixel-edge coordinates: columns 1-3 of rows 1-2, and row 4.
            {"id": 70, "image_id": 7, "category_id": 1, "area": 10.0, "iscrowd": 0, "bbox": [1, 1, 7, 4],
             "segmentation": [[1, 1, 4, 1, 4, 3, 1, 3], [0, 4, 8, 4, 8, 5, 0, 5]]},
            # An uncompressed RLE (column-major run lengths): rows 1-2 of columns 2-5.
            {"id": 90, "image_id": 9, "category_id": 2, "area": 8.0, "iscrowd": 1, "bbox": [2, 1, 4, 2],
             "segmentation": {"size": [5, 7], "counts": [11, 2, 3, 2, 3, 2, 3, 2, 7]}},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}],
    }  # fmt: skip
    refs = [
        {"ref_id": 1, "ann_id": 70, "image_id": 7, "split": "val", "category_id": 1,
         "sentences": [{"sent": "man on the left ", "sent_id": 11}, {"sent": "guy in red", "sent_id": 12}]},
        {"ref_id": 2, "ann_id": 90, "image_id": 9, "split": "train", "category_id": 2,
         "sentences": [{"sent": "the dog", "sent_id": 21}]},
    ]  # fmt: skip
    (data / "instances.json").write_text(json.dumps(instances))
    with open(data / "refs(umd).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    val = load_refcoco(tmp_path, "refcocog", split="val", split_by="umd")
    assert [s.query for s in val] == ["man on the left", "guy in red"]
    assert val[0].image_path == tmp_path / "images/mscoco/images/train2014/COCO_train2014_000000000007.jpg"
    assert val[0].tags["category"] == "person" and val[0].tags["area_fraction"] == pytest.approx(10 / 48)
    expected = _box(6, 8, slice(1, 3), slice(1, 4)) | _box(6, 8, slice(4, 5), slice(0, 8))
    assert np.array_equal(val[0].mask, expected) and np.array_equal(val[1].mask, expected)
    (train,) = load_refcoco(tmp_path, "refcocog", split="train", split_by="umd", image_dir=tmp_path)
    assert train.image_path == tmp_path / "COCO_train2014_000000000009.jpg"
    assert np.array_equal(train.mask, _box(5, 7, slice(1, 3), slice(2, 6)))


def test_reads_a_hand_written_reasonseg(tmp_path):
    folder = tmp_path / "val"
    _write_image(folder / "a.jpg", 8, 10)
    anno = {
        "text": ["Which part keeps the rain off?", "the roof"],
        "is_sentence": True,
        "shapes": [
            # Target rows 1-5, columns 1-6 (outline pixels included), with an ignored hole at rows 2-3,
            # columns 3-4; a small target inside a large ignore region stays a target (largest first).
            {"label": "target", "shape_type": "polygon", "points": [[1, 1], [6, 1], [6, 5], [1, 5]]},
            {"label": "ignore", "shape_type": "polygon", "points": [[3.7, 2], [4, 2], [4, 3], [3, 3.9]]},
            {"label": "ignore", "shape_type": "polygon", "points": [[7, 0], [9, 0], [9, 7], [7, 7]]},
            {"label": "target", "shape_type": "polygon", "points": [[8, 6], [8, 6], [8, 6]]},
            {"label": "flag", "shape_type": "polygon", "points": [[0, 0], [9, 0], [9, 7], [0, 7]]},
        ],
    }
    (folder / "a.json").write_text(json.dumps(anno))
    # A file in the legacy encoding some of the originals use.
    _write_image(folder / "b.jpg", 4, 4)
    (folder / "b.json").write_bytes(
        json.dumps(
            {"text": ["caf\u00e9 sign"], "is_sentence": False, "shapes": []}, ensure_ascii=False
        ).encode("cp1252")
    )
    first = load_reasonseg(tmp_path, "val")
    assert [s.query for s in first] == ["Which part keeps the rain off?", "caf\u00e9 sign"]
    assert first[0].tags["is_sentence"] and not first[1].tags["is_sentence"]
    target = _box(8, 10, slice(1, 6), slice(1, 7)) & ~_box(8, 10, slice(2, 4), slice(3, 5))
    target[6, 8] = True
    ignore = _box(8, 10, slice(2, 4), slice(3, 5)) | _box(8, 10, slice(0, 8), slice(7, 10))
    ignore[6, 8] = False
    assert np.array_equal(first[0].mask, target) and np.array_equal(first[0].ignore, ignore)
    assert not first[1].mask.any() and first[1].mask.shape == (4, 4)
    assert len(load_reasonseg(tmp_path, "val", all_texts=True)) == 3


def test_reads_hand_written_grandf_val_and_train(tmp_path):
    images = [{"id": "sa_1", "height": 5, "width": 7}]
    caption_gt = {
        "images": images,
        "annotations": [
            {"id": 1, "image_id": "sa_1", "caption": "A dog sits on a mat.", "labels": ["A dog", "a mat"]}
        ],
    }
    # Compressed RLE of rows 1-2 x columns 2-5, and an uncompressed one of column 0.
    mask_gt = {
        "images": images,
        "annotations": [
            {
                "id": 1,
                "image_id": "sa_1",
                "category_id": 1,
                "segmentation": {"size": [5, 7], "counts": ";23000004"},
            },
            {
                "id": 2,
                "image_id": "sa_1",
                "category_id": 1,
                "segmentation": {"size": [5, 7], "counts": [0, 5, 30]},
            },
        ],
        "categories": [{"id": 1, "name": "object"}],
    }
    (tmp_path / "val_gcg_coco_caption_gt.json").write_text(json.dumps(caption_gt))
    (tmp_path / "val_gcg_coco_mask_gt.json").write_text(json.dumps(mask_gt))
    (sample,) = load_grandf(tmp_path / "val_gcg_coco_caption_gt.json", tmp_path / "img")
    assert sample.image_path == tmp_path / "img" / "sa_1.jpg"
    assert sample.phrases == ["A dog", "a mat"] and sample.spans == [(0, 5), (14, 19)]
    assert sample.tagged == "<p> A dog </p> [SEG] sits on <p> a mat </p> [SEG]."
    dog, mat = sample.masks
    assert np.array_equal(dog, _box(5, 7, slice(1, 3), slice(2, 6)))
    assert np.array_equal(mat, _box(5, 7, slice(0, 5), slice(0, 1)))

    train = [
        {
            "file_name": "sa_2.jpg",
            "caption": '"Two cats near a tree."',
            "groundings": {
                "a tree": {
                    "token_positives": [14, 20],
                    "rle_masks": [{"size": [5, 7], "counts": ";23000004"}],
                },
                "Two cats": {
                    "token_positives": [0, 8],
                    "rle_masks": [
                        {"size": [5, 7], "counts": [0, 5, 30]},
                        {"size": [5, 7], "counts": [30, 5]},
                    ],
                },
            },
        }
    ]
    (tmp_path / "GranDf_HA_GCG_train.json").write_text(json.dumps(train))
    (sample,) = load_grandf(tmp_path / "GranDf_HA_GCG_train.json", tmp_path)
    assert sample.caption == "Two cats near a tree." and sample.phrases == ["Two cats", "a tree"]
    assert sample.tagged == "<p> Two cats </p> [SEG] near <p> a tree </p> [SEG]."
    cats, tree = sample.masks
    assert np.array_equal(cats, _box(5, 7, slice(0, 5), slice(0, 1)) | _box(5, 7, slice(0, 5), slice(6, 7)))
    assert np.array_equal(tree, _box(5, 7, slice(1, 3), slice(2, 6)))


# --- the mask encodings -------------------------------------------------------------------------

masks = st.integers(1, 9).flatmap(
    lambda h: st.integers(1, 9).flatmap(
        lambda w: st.lists(st.booleans(), min_size=h * w, max_size=h * w).map(
            lambda bits: np.array(bits, dtype=bool).reshape(h, w)
        )
    )
)


@settings(max_examples=200, deadline=None)
@given(masks)
def test_rle_and_polygons_are_exact(mask):
    rle = to_rle(mask)
    assert isinstance(rle["counts"], str)
    assert np.array_equal(decode_segmentation(rle, *mask.shape), mask)
    assert np.array_equal(decode_segmentation([rle], *mask.shape), mask)  # LISA's list of RLEs
    filled = np.zeros_like(mask)
    for points in mask_to_polygons(mask):
        assert all(isinstance(v, int) for p in points for v in p)
        filled |= fill_polygon(points, mask.shape)
    assert np.array_equal(filled, mask)
    shapes = [{"label": "target", "points": p} for p in mask_to_polygons(mask)]
    target, ignore = paint_labelled_polygons(shapes, mask.shape)
    assert np.array_equal(target, mask) and not ignore.any()


def test_empty_segmentation_decodes_to_an_empty_mask():
    assert not decode_segmentation([], 3, 4).any()
    assert mask_to_polygons(np.zeros((3, 4), dtype=bool)) == []
