"""The RIO reader and writer: a round trip of generated scenes with several instances per intention, and
a hand-written file in RIO's own layout (polygons and RLEs) with hand-computed target masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segprune.data import generate_split
from segprune.data.formats.rio import load_rio, rio_file, write_rio
from segprune.data.masks import to_rle

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def test_round_trip_is_exact_and_targets_are_unions(tmp_path):
    scenes = generate_split(8, seed=5)[:]
    path = write_rio(scenes, tmp_path, split="uncommon")
    assert path.name == "RIO_uncommon_all_thing.json"
    samples = load_rio(tmp_path, split="uncommon", all_texts=True)
    entries = json.loads(path.read_text())
    assert len(samples) == sum(len(e["expressions"]) for e in entries)
    multi = [s for s in samples if s.tags["instances"] >= 2]
    assert multi, "the fixture must hold intentions with several instances"
    by_image = {i + 1: scene for i, scene in enumerate(scenes)}
    for sample in samples:
        scene = by_image[sample.tags["image_id"]]
        if sample.query.startswith("the things that are "):
            colour = sample.query.rsplit(" ", 1)[-1]
            members = [o for o in scene.objects if o.colour == colour and o.area > 0]
            assert len(members) == sample.tags["instances"] >= 2
            expected = np.logical_or.reduce([o.mask for o in members])
        else:
            query = next(q for q in scene.queries if q.text == sample.query)
            assert query.type == "reasoning" and sample.tags["instances"] == 1
            expected = query.mask
        np.testing.assert_array_equal(sample.mask, expected)
        assert sample.image_path.name == f"COCO_val2014_{sample.tags['image_id']:012d}.jpg"
        with Image.open(sample.image_path) as im:
            assert im.size == scene.size[::-1]


def test_reads_a_hand_written_file(tmp_path):
    # One intention, two instances: a polygon (a 4 x 3 rectangle) and an RLE (a 2 x 2 square).
    square = np.zeros((10, 12), dtype=bool)
    square[6:8, 8:10] = True
    entry = {
        "height": 10,
        "width": 12,
        "image_id": 139,
        "task_id": 7,
        "expressions": ["you can sit on the thing ", "something to rest on"],
        "bbox_list": [[1, 1, 4, 3], [8, 6, 2, 2]],
        "mask_list": [[[1, 1, 5, 1, 5, 4, 1, 4]], to_rle(square)],
    }
    (tmp_path / "RIO_common_all_thing.json").write_text(json.dumps([entry]))
    (tmp_path / "RIO_uncommon_all_thing.json").write_text("[]")
    samples = load_rio(tmp_path, "common", all_texts=True)
    assert [s.query for s in samples] == ["you can sit on the thing", "something to rest on"]
    assert samples[0].tags == {
        "split": "common",
        "image_id": 139,
        "task_id": 7,
        "instances": 2,
        "box_area_fraction": (12 + 4) / 120,
    }
    assert samples[0].image_path == tmp_path / "val2014" / "COCO_val2014_000000000139.jpg"
    mask = samples[1].mask
    assert mask[6:8, 8:10].all() and mask[2:4, 2:4].all()
    # pycocotools rasterises the polygon's interior: 4 x 3 pixels from (1, 1) to (5, 4).
    assert mask.sum() == 4 * 3 + 4
    assert len(load_rio(tmp_path, "common")) == 1
    assert load_rio(tmp_path, "uncommon") == []


def test_errors_name_the_file_and_the_choices(tmp_path):
    with pytest.raises(
        ValueError, match=r"split 'rare' is not valid; valid: \['common', 'uncommon', 'train'\]"
    ):
        rio_file(tmp_path, "rare")
    with pytest.raises(ValueError, match="exactly one JSON file for split 'common'"):
        rio_file(tmp_path, "common")
    bad = tmp_path / "RIO_common.json"
    bad.write_text(json.dumps([{"height": 4, "width": 4, "image_id": 1, "task_id": 0, "expressions": ["x"]}]))
    with pytest.raises(ValueError, match="not in the RIO layout: missing key 'mask_list'"):
        load_rio(bad)
    bad.write_text(
        json.dumps(
            [
                {
                    "height": 4,
                    "width": 4,
                    "image_id": 1,
                    "task_id": 3,
                    "expressions": ["x"],
                    "bbox_list": [],
                    "mask_list": [],
                }
            ]
        )
    )
    with pytest.raises(ValueError, match=r"entry 0 \(task_id 3\) has an empty mask_list"):
        load_rio(bad)


def test_eval_reads_rio_with_common_as_the_default_split(tmp_path):
    from segprune.eval.datasets import load_items, parse_data

    write_rio(generate_split(4, seed=5)[:], tmp_path, split="common")
    spec = parse_data(str(tmp_path), "rio")
    assert spec.to_dict() == {
        "source": "rio",
        "path": str(tmp_path.resolve()),
        "split": "common",
        "image_dir": None,
        "all_texts": False,
        "limit": None,
    }
    samples = [item.load() for item in load_items(spec, "refseg")]
    assert samples and all(s.tags[0] == "type:sentence" for s in samples)
    assert any("multi" in s.tags for s in samples)
    with pytest.raises(ValueError, match="task 'gcg' cannot read 'rio' data"):
        load_items(spec, "gcg")
