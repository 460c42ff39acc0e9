"""Bad input and faults: every subcommand answers with one line and exit status 2, and changes nothing.

The matrix runs `segprune.cli.main` in-process: each case must exit 2, print exactly one line on
stderr (`segprune: error: ...`) that names the bad value, print nothing on stdout, and leave its
output directory as it was (absent stays absent; a populated one keeps every file byte for byte).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from segprune.cli import main
from segprune.outdir import LOCK, locked


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Data, model and run directories, good and broken, shared by the cases."""
    from segprune.data import generate_split
    from segprune.data.formats import write_reasonseg, write_refcoco
    from segprune.models import tiny_seg_model

    root = tmp_path_factory.mktemp("files")
    scenes = generate_split(1, 5)
    write_refcoco(scenes, root / "refcoco")
    shutil.copytree(root / "refcoco", root / "no-refs")
    (root / "no-refs" / "refcoco" / "refs(unc).p").unlink()
    shutil.copytree(root / "refcoco", root / "bad-pickle")
    (root / "bad-pickle" / "refcoco" / "refs(unc).p").write_bytes(b"\x80\x04not a pickle")
    shutil.copytree(root / "refcoco", root / "no-images")
    shutil.rmtree(root / "no-images" / "images")
    write_reasonseg(scenes, root / "reasonseg")
    (root / "reasonseg" / "empty").mkdir()
    (root / "reasonseg-blank" / "val").mkdir(parents=True)
    shutil.copy(next((root / "reasonseg" / "val").glob("*.jpg")), root / "reasonseg-blank" / "val" / "a.jpg")
    (root / "reasonseg-blank" / "val" / "a.json").write_text("")
    (root / "grandf.json").write_text(json.dumps({"images": []}))
    (root / "afile").write_text("not a directory")
    (root / "empty-dir").mkdir()

    model = tiny_seg_model()
    model.save_pretrained(root / "model")
    for name, damage in (
        ("cut", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
        ("junk", lambda p: p.write_bytes(b"junk" * 64)),
        ("no-weights", lambda p: p.unlink()),
    ):
        shutil.copytree(root / "model", root / f"model-{name}")
        damage(root / f"model-{name}" / "model.safetensors")
    return root


def _run_dir(out: Path) -> None:
    """A train-tiny run directory (its contents need not be real for the refusals)."""
    out.mkdir()
    (out / "log.jsonl").write_text('{"step": 10, "total": 1.0}\n')
    (out / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut off")


def _log_only(out: Path) -> None:
    out.mkdir()
    (out / "log.jsonl").write_text('{"step": 10, "total": 1.0}\n')


def _eval_run(out: Path) -> None:
    """An eval run directory of another configuration."""
    out.mkdir()
    (out / "config.json").write_text('{"task": "refseg"}\n')
    (out / "samples.jsonl").write_text('{"id": "a", "index": 0}\n')


EVAL = ["eval", "--model", "tiny-random", "--task", "refseg", "--quiet", "--out", "{out}"]
SHAPES = ["--data", "shapes:0:1"]
SWEEP = ["sweep", "--model", "tiny-random", "--data", "shapes:0:1", "--quiet", "--out", "{out}"]
TRAIN = ["train-tiny", "--out", "{out}"]
DEMO = ["demo", "--quick", "--repeats", "1", "--out", "{out}"]
BENCH = ["bench", "--preset", "tiny", "--device", "cpu", "--out", "{out}"]
CUDA = torch.cuda.is_available()


def on_files(path: str, fmt: str, *extra: str, task: str = "refseg") -> list[str]:
    """`eval` of the data at `{files}/path`, read as `fmt`."""
    return [*EVAL[:4], task, *EVAL[5:], "--data", "{files}/" + path, "--format", fmt, *extra]


# id: (argv, what the message must contain, how to populate OUT first or None: OUT absent)
CASES: dict[str, tuple[list[str], str, Callable[[Path], None] | None]] = {
    "no-command": ([], "required", None),
    "bad-command": (["bogus"], "'bogus'", None),
    "flops-inf": (["flops", "--text-tokens", "inf"], "text_tokens=inf", None),
    "flops-negative": (["flops", "--text-tokens", "-1"], "text_tokens=-1", None),
    "flops-method": (["flops", "--method", "bogus"], "'bogus'", None),
    "flops-field": (["flops", "--method", "fastv", "--keep-ratio", "2"], "keep_ratio=2", None),
    "flops-preset": (["flops", "--preset", "nope"], "'nope'", None),
    "eval-limit-negative": ([*EVAL, *SHAPES, "--limit", "-1"], "limit=-1", None),
    "eval-limit-zero": ([*EVAL, *SHAPES, "--limit", "0"], "limit=0", None),
    "eval-queries-zero": ([*EVAL, *SHAPES, "--queries-per-scene", "0"], "queries_per_scene=0", None),
    "eval-batch-zero": ([*EVAL, *SHAPES, "--batch-size", "0"], "batch_size=0", None),
    "eval-batch-text": ([*EVAL, *SHAPES, "--batch-size", "x"], "'x'", None),
    "eval-new-tokens-zero": ([*EVAL, *SHAPES, "--max-new-tokens", "0"], "max_new_tokens=0", None),
    "eval-device-bogus": ([*EVAL, *SHAPES, "--device", "bogus"], "'bogus'", None),
    "eval-device-index": ([*EVAL, *SHAPES, "--device", "cuda:99"], "'cuda:99'", None),
    "eval-shapes-spec": ([*EVAL, "--data", "shapes:x"], "shapes:x", None),
    "eval-no-scenes": ([*EVAL, "--data", "shapes:0:0"], "shapes:0:0", None),
    "eval-path-missing": ([*EVAL, "--data", "{files}/nope", "--format", "refcoco"], "nope", None),
    "eval-no-format": ([*EVAL, "--data", "{files}/refcoco"], "--format", None),
    "eval-refcoco-dataset": (on_files("refcoco", "refcoco", "--dataset", "bogus"), "'bogus'", None),
    "eval-refcoco-split": (on_files("refcoco", "refcoco", "--split", "bogus"), "'bogus'", None),
    "eval-refcoco-split-by": (on_files("refcoco", "refcoco", "--split-by", "bogus"), "refs(bogus).p", None),
    "eval-refcoco-no-refs": (on_files("no-refs", "refcoco"), "refs(unc).p", None),
    "eval-refcoco-bad-pickle": (on_files("bad-pickle", "refcoco"), "not a readable refs pickle", None),
    "eval-refcoco-no-images": (on_files("no-images", "refcoco"), "missing", None),
    "eval-reasonseg-split": (on_files("reasonseg", "reasonseg", "--split", "bogus"), "'bogus'", None),
    "eval-reasonseg-empty": (on_files("reasonseg", "reasonseg", "--split", "empty"), "holds no sample", None),
    "eval-reasonseg-blank-json": (on_files("reasonseg-blank", "reasonseg"), "a.json is not JSON", None),
    "eval-grandf-layout": (on_files("grandf.json", "grandf", task="gcg"), "'annotations'", None),
    "eval-task-source": (on_files("reasonseg", "reasonseg", task="gcg"), "'reasonseg'", None),
    "eval-model-missing": ([*EVAL, *SHAPES, "--model", "{files}/nope"], "nope", None),
    "eval-model-cut": ([*EVAL, *SHAPES, "--model", "{files}/model-cut"], "model-cut", None),
    "eval-model-junk": ([*EVAL, *SHAPES, "--model", "{files}/model-junk"], "model-junk", None),
    "eval-model-no-weights": (
        [*EVAL, *SHAPES, "--model", "{files}/model-no-weights"],
        "model.safetensors",
        None,
    ),
    "eval-model-not-segmodel": ([*EVAL, *SHAPES, "--model", "{files}/refcoco"], "config.json", None),
    "eval-out-file": ([*EVAL[:-1], "{files}/afile", *SHAPES], "afile is a file", None),
    "eval-out-under-file": ([*EVAL[:-1], "{files}/afile/run", *SHAPES], "afile is a file", None),
    "eval-layer-does-not-fit": ([*EVAL, *SHAPES, "--method", "fastv", "--layer", "20"], "layer=20", None),
    "eval-layer-does-not-fit-in-a-run": (
        [*EVAL, *SHAPES, "--method", "fastv", "--layer", "20"],
        "layer=20",
        _eval_run,
    ),
    "eval-method-field": ([*EVAL, *SHAPES, "--method", "fastv", "--keep-ratio", "0"], "keep_ratio=0", None),
    "sweep-reduction-negative": ([*SWEEP, "--reductions", "-0.5"], "reduction=-0.5", None),
    "sweep-reduction-zero": ([*SWEEP, "--reductions", "0"], "reduction=0", None),
    "sweep-reduction-one": ([*SWEEP, "--reductions", "1"], "reduction=1", None),
    "sweep-reduction-above": ([*SWEEP, "--reductions", "0.5,1.5"], "reduction=1.5", None),
    "sweep-reductions-empty": ([*SWEEP, "--reductions", ""], "''", None),
    "sweep-reductions-text": ([*SWEEP, "--reductions", "half"], "'half'", None),
    "sweep-methods-empty": ([*SWEEP, "--methods", ""], "''", None),
    "sweep-methods-bogus": ([*SWEEP, "--methods", "fastv,bogus"], "'bogus'", None),
    "sweep-tasks-bogus": ([*SWEEP, "--tasks", "refseg,bogus"], "'bogus'", None),
    "sweep-budget": ([*SWEEP, "--budget", "nope"], "'nope'", None),
    "sweep-out-file": ([*SWEEP[:-1], "{files}/afile"], "afile is a file", None),
    "train-save-dtype": ([*TRAIN, "--save-dtype", "int8"], "save_dtype='int8'", None),
    "train-steps-zero": ([*TRAIN, "--steps", "0"], "steps=0", None),
    "train-steps-negative": ([*TRAIN, "--steps", "-5"], "steps=-5", None),
    "train-batch-zero": ([*TRAIN, "--batch-size", "0"], "batch_size=0", None),
    "train-lr-zero": ([*TRAIN, "--lr", "0"], "lr=0", None),
    "train-threads": ([*TRAIN, "--threads", "-2"], "threads=-2", None),
    "train-time-limit": ([*TRAIN, "--time-limit", "-1"], "time_limit=-1", None),
    "train-schedule": ([*TRAIN, "--schedule", "epochs"], "schedule='epochs'", None),
    "train-time-schedule-no-limit": ([*TRAIN, "--schedule", "time"], "needs time_limit", None),
    "train-sam-from": ([*TRAIN, "--sam-from", "nothing"], "sam_from='nothing'", None),
    "train-sam-from-no-points": (
        [*TRAIN, "--sam-from", "points", "--loss-weights", '{"point_mask": 0}'],
        "point_mask must be > 0",
        None,
    ),
    "train-mix-negative": ([*TRAIN, "--mix", '{"refer_turns": -1}'], "refer_turns=-1", None),
    "train-mix-unknown": ([*TRAIN, "--mix", '{"turns": 1}'], "'turns'", None),
    "train-mix-not-json": ([*TRAIN, "--mix", "turns=1"], "'turns=1'", None),
    "train-dims-negative": ([*TRAIN, "--dims", '{"llm_width": -4}'], "llm_width=-4", None),
    "train-dims-unknown": ([*TRAIN, "--dims", '{"width": 4}'], "'width'", None),
    "train-dims-heads": ([*TRAIN, "--dims", '{"llm_width": 30}'], "llm_width=30", None),
    "train-loss-weight": ([*TRAIN, "--loss-weights", '{"lm": -1}'], "lm=-1", None),
    "train-device": ([*TRAIN, "--device", "bogus"], "'bogus'", None),
    "train-resume-and-overwrite": ([*TRAIN, "--resume", "--overwrite"], "overwrite", None),
    "train-existing-run": (TRAIN, "already holds a run", _run_dir),
    "train-resume-cut-checkpoint": ([*TRAIN, "--resume"], "checkpoint.pt cannot be read", _run_dir),
    "train-resume-no-checkpoint": ([*TRAIN, "--resume"], "no checkpoint.pt", _log_only),
    "train-out-file": ([*TRAIN[:-1], "{files}/afile"], "afile is a file", None),
    "demo-query-index": ([*DEMO, "--query-index", "999"], "query_index=999", None),
    "demo-threads": ([*DEMO, "--threads", "-2"], "threads=-2", None),
    "demo-repeats": ([*DEMO, "--repeats", "0"], "repeats=0", None),
    "demo-scene-seed": ([*DEMO, "--scene-seed", "-1"], "scene_seed=-1", None),
    "demo-model": ([*DEMO, "--model", "{files}/nope"], "nope", None),
    "demo-model-junk": ([*DEMO, "--model", "{files}/model-junk"], "model-junk", None),
    "bench-batches-zero": ([*BENCH, "--batches", "0"], "batches=0", None),
    "bench-batches-text": (
        [*BENCH, "--batches", "one"],
        "batch 'one' is not valid; valid: integers >= 1",
        None,
    ),
    "bench-reductions": ([*BENCH, "--reductions", "1.5"], "reduction=1.5", None),
    "bench-methods-empty": ([*BENCH, "--methods", ""], "''", None),
    "bench-methods-bogus": ([*BENCH, "--methods", "bogus"], "'bogus'", None),
    "bench-repeats": ([*BENCH, "--repeats", "0"], "--repeats=0", None),
    "bench-device": ([*BENCH, "--device", "bogus"], "'bogus'", None),
    "convert-missing-source": (["convert-lisa", "{files}/nope", "{out}"], "nope", None),
    "convert-junk-weights": (["convert-lisa", "{files}/model-junk", "{out}"], "model.safetensors", None),
    "convert-empty-source": (["convert-lisa", "{files}/empty-dir", "{out}"], "holds no *.safetensors", None),
}
if not CUDA:
    CASES["eval-device-cuda"] = ([*EVAL, *SHAPES, "--device", "cuda"], "no CUDA device", None)
    CASES["train-device-cuda"] = ([*TRAIN, "--device", "cuda"], "no CUDA device", None)


def snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every file under `folder` with its bytes; None when `folder` does not exist."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, files, tmp_path, capsys):
    argv, fragment, populate = CASES[case]
    out = tmp_path / "out"
    if populate is not None:
        populate(out)
    before = snapshot(out)
    status = main([arg.replace("{out}", str(out)).replace("{files}", str(files)) for arg in argv])
    captured = capsys.readouterr()
    assert status == 2, captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("segprune: error: "), captured.err
    assert fragment in lines[0]
    assert captured.out == ""
    assert snapshot(out) == before


@pytest.mark.parametrize(
    "command",
    ["flops", "eval", "sweep", "train-tiny", "demo", "bench", "convert-lisa", "convert-glamm", "data"],
)
def test_help_shows_no_doubled_percent_signs(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "%%" not in capsys.readouterr().out


def test_debug_shows_the_traceback(files):
    with pytest.raises(ValueError, match="limit=-1"):
        main(
            ["--debug", *[a.replace("{out}", str(files / "unused")) for a in EVAL], *SHAPES, "--limit", "-1"]
        )


@pytest.mark.parametrize(
    ("raised", "status", "line"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/runs/x/samples.jsonl"),
            2,
            "samples.jsonl: No space",
        ),
        (PermissionError(errno.EACCES, "Permission denied", "/runs/x"), 2, "/runs/x: Permission denied"),
        (KeyboardInterrupt(), 130, "segprune: interrupted"),
    ],
    ids=["disk-full", "permission", "interrupt"],
)
def test_faults_of_the_machine_are_one_line(monkeypatch, capsys, raised, status, line):
    import segprune.demo

    def fail(**kwargs):
        raise raised

    monkeypatch.setattr(segprune.demo, "run_demo", fail)
    assert main(["demo"]) == status
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and line in err


def test_a_bug_keeps_its_traceback(monkeypatch):
    import segprune.demo

    def fail(**kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(segprune.demo, "run_demo", fail)
    with pytest.raises(KeyError):
        main(["demo"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_out_is_refused(tmp_path, capsys):
    tmp_path.chmod(0o500)
    try:
        assert main([*[a.replace("{out}", str(tmp_path / "out")) for a in TRAIN]]) == 2
    finally:
        tmp_path.chmod(0o700)
    assert "is not writable" in capsys.readouterr().err


# -- two writers ------------------------------------------------------------------------------------


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path, capsys):
    with locked(tmp_path / "run") as out:
        assert (out / LOCK).read_text().strip() == str(os.getpid())
        with pytest.raises(ValueError, match=f"process {os.getpid()}"), locked(out):
            pass
    with locked(tmp_path / "run"):  # released on leaving the block
        pass


@pytest.mark.parametrize(
    "argv",
    [[*EVAL, *SHAPES], SWEEP, [*TRAIN, "--steps", "1"]],
    ids=["eval", "sweep", "train-tiny"],
)
def test_every_writer_refuses_a_directory_another_holds(argv, tmp_path, capsys):
    out = tmp_path / "out"
    with locked(out):
        before = snapshot(out)
        assert main([arg.replace("{out}", str(out)) for arg in argv]) == 2
        assert snapshot(out) == before
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"in use by another writer (process {os.getpid()})" in err


def test_two_evals_on_one_directory(tmp_path, capsys):
    """The first run holds the directory mid-way; a second one is refused and the first completes."""
    from segprune import FastVConfig
    from segprune.eval.datasets import parse_data
    from segprune.eval.records import merged_records
    from segprune.eval.runner import EvalSpec, evaluate
    from segprune.models.load import load_model

    data = parse_data("shapes:0:3", queries_per_scene=2)  # 6 queries in 3 batches
    spec = EvalSpec("refseg", data, "tiny-random", FastVConfig(layer=1, keep_ratio=0.25), batch_size=2)

    out = tmp_path / "run"
    first_batch, go_on = threading.Event(), threading.Event()

    def hold(n: int) -> None:
        first_batch.set()
        assert go_on.wait(120)

    results: dict[str, object] = {}

    def first() -> None:
        try:
            results["summary"] = evaluate(load_model("tiny-random"), spec, out, progress=False, on_batch=hold)
        except BaseException as err:  # reported by the main thread
            results["error"] = err

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert first_batch.wait(120), results.get("error")
        args = ["eval", "--model", "tiny-random", "--task", "refseg", "--quiet", "--out", str(out)]
        args += ["--data", f"shapes:{data.seed}:{data.scenes}", "--queries-per-scene", "2"]
        args += ["--batch-size", "2", "--method", "fastv", "--layer", "1"]
        args += ["--keep-ratio", "0.25"]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"in use by another writer (process {os.getpid()})" in err and len(err.splitlines()) == 1
    finally:
        go_on.set()
        thread.join(300)
    assert "error" not in results, results.get("error")
    records = merged_records(out)
    assert [r["index"] for r in records] == list(range(6))  # every sample once
    assert results["summary"]["samples"]["complete"]


def test_a_broken_image_mid_run_stops_with_one_line_and_keeps_the_records(files, tmp_path, capsys):
    from segprune.eval.records import merged_records

    data = tmp_path / "reasonseg"
    shutil.copytree(files / "reasonseg" / "val", data / "val")
    last = sorted((data / "val").glob("*.jpg"))[-1]
    good = last.read_bytes()
    last.write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    args = [a.replace("{out}", str(out)) for a in EVAL]
    args += ["--data", str(data), "--format", "reasonseg", "--batch-size", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"image {last} cannot be read" in err
    total = len(list((data / "val").glob("*.jpg")))
    assert len(merged_records(out)) == total - 1  # every sample before the broken one is on disk
    last.write_bytes(good)
    assert main([a for a in args if a != "--quiet"]) == 0  # resumes with the repaired image
    assert len(merged_records(out)) == total
    assert capsys.readouterr().err == ""  # no progress bar where stderr is not a terminal
