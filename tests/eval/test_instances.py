"""CSP Seg-First's instances in evaluation: shapes samples carry their objects, the ground-truth choice
passes them to the selector, and every record says which instances a run used."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import EXAMPLES
from segprune.cli import main
from segprune.data.shapes import generate_split
from segprune.eval.datasets import DataSpec, load_items, parse_data, scene_instances
from segprune.eval.records import merged_records
from segprune.eval.runner import EvalSpec, evaluate
from segprune.eval.sweep import plan_sweep, row_label
from segprune.eval.tasks import predict
from segprune.methods.csp import SegFirstSelector
from segprune.models.load import load_model

SEG_FIRST = dataclasses.replace(EXAMPLES["csp"], cluster="seg_first")
DATA = parse_data("shapes:0:2", queries_per_scene=2)  # 4 queries, 2 scenes


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-random")


@pytest.fixture
def selected(monkeypatch):
    """The instance ids each Seg-First selection reads."""
    seen = []
    instances = SegFirstSelector.instances

    def read(self, context):
        seen.append(None if context.instance_masks is None else context.instance_masks.clone())
        return instances(self, context)

    monkeypatch.setattr(SegFirstSelector, "instances", read)
    return seen


def test_shapes_samples_carry_every_objects_mask():
    scene = generate_split(1, 0)[0]
    objects = scene_instances(scene)
    assert objects.shape == (len(scene.objects), *scene.size) and objects.dtype == bool
    assert all(np.array_equal(objects[k], obj.mask) for k, obj in enumerate(scene.objects))
    [query, _] = [item.load() for item in load_items(DATA, "refseg")[:2]]
    assert np.array_equal(query.instances, objects)
    # Each query's target is one of the objects.
    assert any(np.array_equal(query.target, mask) for mask in objects)
    [caption, _] = [item.load() for item in load_items(DATA, "gcg")]
    assert np.array_equal(caption.instances, objects)


def test_ground_truth_instances_reach_the_selector_and_the_records(model, selected, tmp_path):
    spec = EvalSpec(
        "refseg", DATA, "tiny-random", dataclasses.replace(SEG_FIRST, instances="ground_truth"), 2
    )
    summary = evaluate(model, spec, tmp_path, progress=False)
    scenes = generate_split(2, 0)
    # Batches of 2 hold the 2 queries of one scene: every token's instance is that scene's object.
    assert len(selected) == 2
    for ids, scene in zip(selected, scenes, strict=True):
        assert torch.equal(ids, model.instance_token_ids([scene_instances(scene)] * 2))
    # On the 4 x 4 grid of 84-px patches only large objects hold a token: scene 1's does.
    assert bool((selected[1] >= 0).any())
    records = merged_records(tmp_path)
    assert [r["instance_source"] for r in records] == ["ground_truth"] * 4
    assert json.loads((tmp_path / "config.json").read_text())["instance_source"] == "ground_truth"
    assert summary["config"]["instance_source"] == "ground_truth"


def test_records_name_the_default_sam_instances_and_nothing_for_other_methods(model, selected, tmp_path):
    evaluate(model, EvalSpec("refseg", DATA, "tiny-random", SEG_FIRST, 4), tmp_path / "sam", progress=False)
    assert {r["instance_source"] for r in merged_records(tmp_path / "sam")} == {"sam"}
    assert len(selected) == 1 and selected[0] is not None
    uniform = EvalSpec("refseg", DATA, "tiny-random", EXAMPLES["csp"], 4)
    evaluate(model, uniform, tmp_path / "uniform", progress=False)
    assert all("instance_source" not in r for r in merged_records(tmp_path / "uniform"))
    assert "instance_source" not in json.loads((tmp_path / "uniform" / "config.json").read_text())
    gcg = dataclasses.replace(SEG_FIRST, instances="superpixels")
    spec = EvalSpec("gcg", parse_data("shapes:0:1"), "tiny-random", gcg, 1, max_new_tokens=3)
    evaluate(model, spec, tmp_path / "gcg", progress=False)
    assert [r["instance_source"] for r in merged_records(tmp_path / "gcg")] == ["superpixels"]


def test_ground_truth_instances_need_data_that_has_them(model):
    config = dataclasses.replace(SEG_FIRST, instances="ground_truth")
    with pytest.raises(
        ValueError, match=r"instances='ground_truth' needs data that holds every object's mask"
    ):
        EvalSpec("refseg", DataSpec("refcoco", path="/nowhere"), "tiny-random", config)
    sample = load_items(DATA, "refseg")[0].load()
    bare = dataclasses.replace(sample, instances=None)
    with pytest.raises(ValueError, match="carries no instance masks"):
        predict(model, "refseg", [bare], max_new_tokens=1, instances=True)


def test_eval_command_takes_the_instance_choice(tmp_path, capsys):
    args = ["eval", "--model", "tiny-random", "--data", "shapes:0:1", "--queries-per-scene", "1"]
    args += ["--task", "refseg", "--method", "csp", "--cluster", "seg_first", "--cluster-layers", "1"]
    args += ["--cluster-tokens", "6", "--scatter-layers", "1", "--prune-tokens", "3", "--quiet"]
    assert main([*args, "--instances", "ground_truth", "--out", str(tmp_path / "gt")]) == 0
    assert json.loads((tmp_path / "gt" / "summary.json").read_text())["config"]["instance_source"] == (
        "ground_truth"
    )
    assert main([*args, "--instances", "yolo", "--out", str(tmp_path / "bad")]) == 2
    assert "CSPConfig.instances='yolo' is not valid" in capsys.readouterr().err


def test_sweep_rows_per_instance_choice():
    cells = plan_sweep(
        ["refseg"], ["csp-seg_first", "fastv"], (0.5,), 8, 576, instances=("auto", "ground_truth")
    )
    rows = {c.row: c for c in cells}
    assert list(rows) == ["unpruned", "csp-seg_first", "csp-seg_first-ground_truth", "fastv"]
    assert rows["csp-seg_first"].config.instances == "auto" and rows["fastv"].instances is None
    assert rows["csp-seg_first-ground_truth"].name == "refseg/csp-seg_first-ground_truth/0.5"
    assert rows["csp-seg_first-ground_truth"].config.instances == "ground_truth"
    # The table names the source a run recorded, or before any ran, the choice.
    summary = {"config": {"instance_source": "sam"}}
    assert row_label(rows["csp-seg_first"], [summary, None]) == "csp-seg_first[sam instances]"
    assert row_label(rows["csp-seg_first-ground_truth"]) == "csp-seg_first[gt instances, oracle]"
    assert row_label(rows["fastv"], [summary]) == "fastv"
    with pytest.raises(
        ValueError, match=r"applies to CSP Seg-First rows .* none is selected among \['fastv'\]"
    ):
        plan_sweep(["refseg"], ["fastv"], (0.5,), 8, 576, instances=("superpixels",))
    with pytest.raises(ValueError, match=r"instances='yolo' is not valid; choose one of \['auto'"):
        plan_sweep(["refseg"], ["csp-seg_first"], (0.5,), 8, 576, instances=("yolo",))
    with pytest.raises(ValueError, match="names a choice twice"):
        plan_sweep(["refseg"], ["csp-seg_first"], (0.5,), 8, 576, instances=("sam", "sam"))


def test_sweep_command_runs_each_instance_choice(tmp_path, capsys):
    args = ["sweep", "--model", "tiny-random", "--data", "shapes:0:1", "--queries-per-scene", "1"]
    args += ["--methods", "csp-seg_first", "--reductions", "0.5", "--tasks", "refseg", "--budget", "navg"]
    args += ["--instances", "auto,superpixels,ground_truth", "--out", str(tmp_path), "--quiet"]
    assert main(args) == 0
    assert sorted(p.name for p in (tmp_path / "refseg").iterdir()) == [
        "csp-seg_first",
        "csp-seg_first-ground_truth",
        "csp-seg_first-superpixels",
        "unpruned",
    ]
    table = (tmp_path / "table.md").read_text()
    for label in ("sam instances", "superpixels", "gt instances, oracle"):
        assert f"| csp-seg_first[{label}] | 0.5 |" in table
    bad = ["sweep", "--model", "tiny-random", "--data", "shapes:0:1", "--methods", "fastv"]
    assert main([*bad, "--instances", "sam", "--out", str(tmp_path / "bad")]) == 2
    assert "applies to CSP Seg-First rows" in capsys.readouterr().err
