"""The evaluation runner: records and summary, resume after a stop or a kill, sharding, the command."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_helpers import SPEC, centred_model, without_timing

from segprune import FastVConfig, flops
from segprune.cli import main
from segprune.data.scene import QUERY_TYPES
from segprune.eval.datasets import parse_data
from segprune.eval.records import ConfigMismatchError, merged_records, read_records
from segprune.eval.runner import EvalSpec, evaluate
from segprune.models.load import load_model

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return centred_model()


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    """An uninterrupted single-process run of SPEC: (directory, summary)."""
    out = tmp_path_factory.mktemp("reference")
    return out, evaluate(model, SPEC, out, progress=False)


class Stop(Exception):
    pass


def stop_after(n_batches: int):
    def hook(n: int) -> None:
        if n == n_batches:
            raise Stop

    return hook


# -- records -----------------------------------------------------------------------------------


def test_read_records_drops_only_a_cut_off_last_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    good = '{"id": "a"}\n{"id": "b"}\n'
    path.write_text(good + '{"id": "c", "inters')
    records, intact = read_records(path)
    assert [r["id"] for r in records] == ["a", "b"] and intact == len(good)
    path.write_text(good + "{not json}\n")  # complete but unparsable, and last: also a cut write
    assert len(read_records(path)[0]) == 2
    path.write_text('{"id": "a"}\n{oops\n{"id": "b"}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_records(path)


def test_summary_is_rebuilt_from_records(reference):
    out, summary = reference
    records = merged_records(out)
    assert [r["index"] for r in records] == list(range(6))
    assert summary["samples"] == {"done": 6, "total": 6, "complete": True}
    assert summary["config"] == {**SPEC.to_dict(), "dtype": "float32"}
    # gIoU and cIoU by hand from the counts; the centred masks make them non-trivial.
    ious = [r["intersection"] / r["union"] for r in records]
    assert 0 < summary["accuracy"]["all"]["giou"] == pytest.approx(np.mean(ious))
    ciou = sum(r["intersection"] for r in records) / sum(r["union"] for r in records)
    assert summary["accuracy"]["all"]["ciou"] == pytest.approx(ciou)
    assert {"small"} | {t for r in records for t in r["tags"]} >= set(summary["accuracy"]) - {"all"}
    # N_avg and TFLOPs from FastV's plan: 16 image tokens at layer 0, round(0.25 * 16) = 4 after.
    live = SPEC.method.plan(16, 4).live_counts()
    assert all(r["live"] == live == [16, 4, 4, 4] for r in records)
    cost = summary["cost"]
    assert cost["n_avg"] == 7.0 and cost["image_token_reduction"] == pytest.approx(9 / 16)
    dims = flops.ModelDims(4, 32, 64, 16)
    expected = np.mean([flops.decoder_flops(live, dims, r["text_tokens"], "csp") for r in records])
    assert cost["tflops"] == pytest.approx(expected / 1e12)
    # The 7B-336 equivalent: each tiny layer covers 8 of the 32, so N_avg / N is kept.
    scaled = cost["llava-1.5-7b-336"]
    assert scaled["n_avg"] == pytest.approx(576 * 7 / 16)
    assert scaled["tflops"] < scaled["dense_tflops"] == pytest.approx(8.477, abs=1e-3)
    latency = summary["latency"]
    assert latency["batches_timed"] == 2 and latency["warmup_batches_left_out"] == 1
    assert not latency["includes_warmup"]
    assert latency["per_batch_s"]["min"] <= latency["per_batch_s"]["median"] <= latency["per_batch_s"]["max"]
    assert summary["environment"]["torch"] == torch.__version__
    assert json.loads((out / "summary.json").read_text()) == summary


def test_a_one_batch_run_says_its_latency_includes_the_warm_up(reference):
    from segprune.cli.eval import format_summary
    from segprune.eval.cost import latency_summary

    first_batch = [r for r in merged_records(reference[0]) if r["batch"]["index"] == 0]
    latency = latency_summary(first_batch)
    assert latency["includes_warmup"] and latency["batches_timed"] == 1
    summary = {**reference[1], "latency": latency}
    assert "warm-up batches only" in format_summary(summary)
    assert "warm-up" not in format_summary(reference[1])


def test_pruning_changes_results_and_is_undone(model, reference, tmp_path):
    unpruned = evaluate(model, dataclasses.replace(SPEC, method=None), tmp_path, progress=False)
    assert unpruned["cost"]["n_avg"] == 16.0
    assert unpruned["accuracy"]["all"] != reference[1]["accuracy"]["all"]
    from segprune import pruning_config

    assert pruning_config(model) is None


def test_resume_after_a_stop_equals_an_uninterrupted_run(model, reference, tmp_path):
    with pytest.raises(Stop):
        evaluate(model, SPEC, tmp_path, progress=False, on_batch=stop_after(1))
    path = tmp_path / "samples.jsonl"
    assert [r["id"] for r in read_records(path)[0]] == [r["id"] for r in merged_records(reference[0])][:2]
    assert not (tmp_path / "summary.json").exists()
    with open(path, "a") as f:  # a kill in the middle of the next write
        f.write('{"index": 2, "id": "shapes-0-000001/q0", "inter')
    summary = evaluate(model, SPEC, tmp_path, progress=False)
    assert without_timing(merged_records(tmp_path)) == without_timing(merged_records(reference[0]))
    for key in ("accuracy", "cost", "samples", "config"):
        assert summary[key] == reference[1][key]
    # Resuming a finished run computes nothing and rebuilds the same summary.
    evaluate(model, SPEC, tmp_path, progress=False, on_batch=stop_after(1))
    assert path.read_text().count("\n") == 6


def test_refuses_a_directory_of_another_run(model, reference):
    other = dataclasses.replace(SPEC, method=FastVConfig(layer=1, keep_ratio=0.5))
    with pytest.raises(ConfigMismatchError, match=r"method.keep_ratio: 0.25 there, 0.5 now"):
        evaluate(model, other, reference[0], progress=False)


def test_gcg_records_and_scores(model, tmp_path):
    spec = EvalSpec("gcg", parse_data("shapes:0:2"), "tiny-random", None, batch_size=2, max_new_tokens=6)
    summary = evaluate(model, spec, tmp_path, progress=False)
    records = merged_records(tmp_path)
    assert [r["ref"]["image_id"] for r in records] == ["shapes-0-000000", "shapes-0-000001"]
    assert all(len(r["pred"]["masks"]) == len(r["pred"]["phrases"]) for r in records)
    assert {"ap50", "miou", "recall", "answers_with_errors"} <= set(summary["accuracy"])
    assert summary["accuracy"]["meteor"] is None  # only with captions=True
    with pytest.raises(ValueError, match="score_token='seg' cannot run gcg"):
        EvalSpec("gcg", spec.data, "tiny-random", __import__("segprune").CSPConfig())


def test_files_in_the_benchmarks_layouts(model, tmp_path):
    from segprune.data import generate_split
    from segprune.data.formats import write_grandf, write_reasonseg, write_refcoco

    scenes = generate_split(1, 5)[:]
    write_refcoco(scenes, tmp_path / "refcoco")
    write_reasonseg(scenes, tmp_path / "reasonseg")
    captions, _ = write_grandf(scenes, tmp_path / "grandf")
    for task, path, fmt in [
        ("refseg", tmp_path / "refcoco", "refcoco"),
        ("refseg", tmp_path / "reasonseg", "reasonseg"),
        ("gcg", captions, "grandf"),
    ]:
        spec = EvalSpec(
            task, parse_data(str(path), fmt, limit=2), "tiny-random", batch_size=2, max_new_tokens=4
        )
        summary = evaluate(model, spec, tmp_path / fmt, progress=False)
        assert summary["samples"]["complete"] and 1 <= summary["samples"]["total"] <= 2
    types = {t for r in merged_records(tmp_path / "refcoco") for t in r["tags"] if t.startswith("type:")}
    assert types <= {f"type:{t}" for t in QUERY_TYPES} and types
    with pytest.raises(ValueError, match="task 'refseg' cannot read 'grandf'"):
        EvalSpec("refseg", parse_data(str(captions), "grandf"), "tiny-random")


def test_tiny_model_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "segprune.models.tiny", None)  # as before the module existed
    with pytest.raises(ValueError, match="tiny-random"):
        load_model("tiny")


# -- processes ---------------------------------------------------------------------------------


def test_two_processes_merge_to_the_single_process_result(reference, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    script = str(Path(__file__).with_name("eval_helpers.py"))
    result = subprocess.run([*command, script, str(tmp_path)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    # 3 batches of 2: rank 0 ran batches 0 and 2, rank 1 batch 1.
    assert len(read_records(tmp_path / "samples.rank0.jsonl")[0]) == 4
    assert len(read_records(tmp_path / "samples.rank1.jsonl")[0]) == 2
    assert without_timing(merged_records(tmp_path)) == without_timing(merged_records(reference[0]))
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("accuracy", "cost", "samples", "config"):
        assert summary[key] == reference[1][key]
    assert summary["environment"]["world_size"] == 2


def test_command_resumes_after_sigkill(tmp_path):
    out = tmp_path / "run"
    args = ["eval", "--model", "tiny-random", "--data", "shapes:0:2", "--task", "refseg", "--quiet"]
    args += [
        "--method",
        "fastv",
        "--layer",
        "1",
        "--keep-ratio",
        "0.25",
        "--batch-size",
        "1",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen([sys.executable, "-m", "segprune.cli", *args], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "samples.jsonl").exists() and len(read_records(out / "samples.jsonl")[0]) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = read_records(out / "samples.jsonl")[0]
    assert 3 <= len(killed) < 8, "the run should have been killed mid-way"
    assert main(args) == 0
    records = merged_records(out)
    assert [r["index"] for r in records] == list(range(8))
    assert without_timing(records[: len(killed)]) == without_timing(killed)
    fresh = tmp_path / "fresh"
    assert main([*args[:-1], str(fresh)]) == 0
    assert without_timing(records) == without_timing(merged_records(fresh))
    assert main([*args[:-2], "--keep-ratio", "0.5", "--out", str(out)]) == 2  # another config: refused
