"""Data specs and their samples (`segprune.eval.datasets`): parsing, identity, order, tags, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from segprune.data.scene import QUERY_TYPES
from segprune.eval.datasets import DataSpec, RefSample, _is_small, load_items, parse_data, pick_queries

# pycocotools' decode warns on every call under numpy 2 (its array wrapper lacks the `copy` keyword).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def test_parse_data():
    spec = parse_data("shapes:7:20", queries_per_scene=3)
    assert spec.to_dict() == {
        "source": "shapes",
        "seed": 7,
        "scenes": 20,
        "queries_per_scene": 3,
        "limit": None,
    }
    for bad, message in [
        ("shapes:7", "shapes:SEED:N"),
        ("shapes:1:0", "no scenes"),
        ("/no/such/dir", "--format"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_data(bad)
    with pytest.raises(ValueError, match="does not apply"):
        parse_data("shapes:0:1", "refcoco")
    with pytest.raises(ValueError, match="task 'refseg' cannot read 'grandf'"):
        load_items(DataSpec("grandf", path="captions.json"), "refseg")


def test_a_path_is_resolved_and_identified_by_its_own_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "coco").mkdir()
    spec = parse_data("coco", "refcoco", image_dir="imgs", split="testA", all_texts=None)
    # Absolute paths: a run resumed from another directory is the same run.
    assert spec.path == str(tmp_path / "coco") and spec.image_dir == str(tmp_path / "imgs")
    # Only the options refcoco reads identify it: ReasonSeg's all_texts is not part of it.
    assert spec.to_dict() == {
        "source": "refcoco",
        "path": str(tmp_path / "coco"),
        "dataset": "refcoco",
        "split": "testA",
        "split_by": "unc",
        "image_dir": str(tmp_path / "imgs"),
        "limit": None,
    }
    reasonseg = parse_data("coco", "reasonseg", all_texts=True, limit=5).to_dict()
    assert reasonseg == {"source": "reasonseg", "path": str(tmp_path / "coco"), "split": "val",
                         "all_texts": True, "limit": 5}  # fmt: skip
    with pytest.raises(ValueError, match="data path 'nowhere' does not exist"):
        parse_data("nowhere", "grandf")


def test_spec_checks_name_the_field():
    with pytest.raises(ValueError, match=r"DataSpec.source='coco' is not valid; choose one of \['shapes', "):
        DataSpec("coco")
    with pytest.raises(ValueError, match="reasonseg data needs a path"):
        DataSpec("reasonseg")
    with pytest.raises(ValueError, match=r"DataSpec.limit=0 is out of range; valid: value >= 1"):
        DataSpec("shapes", seed=0, scenes=1, limit=0)
    with pytest.raises(ValueError, match=r"DataSpec.seed=None must be an integer"):
        DataSpec("shapes", scenes=1)


def test_shapes_items_are_ordered_scene_by_scene_and_limited():
    items = load_items(parse_data("shapes:3:2", queries_per_scene=2), "refseg")
    assert [i.sample_id for i in items] == [
        "shapes-3-000000/q0",
        "shapes-3-000000/q1",
        "shapes-3-000001/q0",
        "shapes-3-000001/q1",
    ]
    limited = load_items(parse_data("shapes:3:2", queries_per_scene=2, limit=3), "refseg")
    assert [i.sample_id for i in limited] == [i.sample_id for i in items[:3]]
    captions = load_items(parse_data("shapes:3:2"), "gcg")
    assert [i.sample_id for i in captions] == ["shapes-3-000000", "shapes-3-000001"]
    # The loaded sample carries the id it was listed under.
    assert [i.load().sample_id for i in items] == [i.sample_id for i in items]


def test_queries_take_each_type_in_turn():
    from segprune.data.shapes import generate_split

    scene = generate_split(1, 0)[0]
    picked = pick_queries(scene, 4, np.random.default_rng(0))
    available = [t for t in QUERY_TYPES if any(q.type == t for q in scene.queries)]
    assert [q.type for q in picked][: len(available)] == available
    again = pick_queries(scene, 4, np.random.default_rng(0))
    assert [q.text for q in picked] == [q.text for q in again]


def test_a_scene_short_of_queries_repeats_the_cycle_and_one_without_any_is_refused():
    from segprune.data.shapes import generate_split

    scene = generate_split(1, 0)[0]
    one = dataclasses.replace(scene, queries=scene.queries[:1])
    assert [q.text for q in pick_queries(one, 3, np.random.default_rng(0))] == [scene.queries[0].text] * 3
    with pytest.raises(ValueError, match=f"scene {scene.scene_id} has no referring query"):
        pick_queries(dataclasses.replace(scene, queries=[]), 1, np.random.default_rng(0))


def test_samples_are_lazy_and_tagged():
    items = load_items(parse_data("shapes:0:2", queries_per_scene=4), "refseg")
    assert [i.sample_id for i in items[:2]] == ["shapes-0-000000/q0", "shapes-0-000000/q1"]
    sample = items[0].load()
    image, target, ignore, tags = sample.image, sample.target, sample.ignore, sample.tags
    assert image.shape == (336, 336, 3) and target.shape == (336, 336) and ignore is None
    assert tags[0].startswith("type:") and ("small" in tags) == (target.mean() < 0.01)
    reference = load_items(parse_data("shapes:0:2"), "gcg")[1].load().reference
    assert reference.image_id == "shapes-0-000001" and len(reference.phrases) == len(reference.masks) >= 3


def test_small_is_below_one_percent_of_the_image():
    mask = np.zeros((100, 100), dtype=bool)
    mask.flat[:99] = True
    assert _is_small(mask)  # 99 of 10,000 pixels
    mask.flat[99] = True
    assert not _is_small(mask)  # exactly 1% is not small


def test_sample_type_comes_from_its_type_tag():
    image, mask = np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), bool)
    assert RefSample("a", image, "q", mask, tags=("small", "type:sentence")).type == "sentence"
    assert RefSample("b", image, "q", mask, tags=("small",)).type is None


def test_file_data_is_tagged_and_checked_before_a_run(tmp_path):
    from segprune.data import generate_split
    from segprune.data.formats import REFCOCO_IMAGE_DIR, write_reasonseg, write_refcoco

    scenes = generate_split(2, 5)[:]
    write_refcoco(scenes, tmp_path / "coco")
    items = load_items(parse_data(str(tmp_path / "coco"), "refcoco"), "refseg")
    first = items[0].load()
    # RefCOCO files written from shapes keep the query type; the ids are the refer API's sentence ids.
    assert first.type in QUERY_TYPES and items[0].sample_id == "refcoco(unc)/1"
    write_reasonseg(scenes, tmp_path / "reason")
    reason = load_items(parse_data(str(tmp_path / "reason"), "reasonseg"), "refseg")[0].load()
    assert reason.type == "phrase" and reason.ignore is not None and not reason.ignore.any()
    images = sorted((tmp_path / "coco" / REFCOCO_IMAGE_DIR).glob("*.jpg"))
    images[1].unlink()
    with pytest.raises(
        ValueError, match=r"1 image file\(s\) of the refcoco data are missing, e\.g\. .*; check --image-dir"
    ):
        load_items(parse_data(str(tmp_path / "coco"), "refcoco"), "refseg")


def test_grandf_outside_its_layout_needs_an_image_dir():
    with pytest.raises(
        ValueError, match=r"grandf data /captions\.json is outside GLaMM's layout; give --image"
    ):
        load_items(DataSpec("grandf", path="/captions.json"), "gcg")
