"""The benchmark harness: preset architectures, rows, KV-cache accounting (timings are not asserted)."""

from __future__ import annotations

import pytest
import torch

from segprune import bench, flops


@pytest.mark.parametrize(
    ("preset", "billions", "image_tokens", "layers"),
    [
        ("llava-1.5-7b-224", 7.06, 256, 32),
        ("llava-1.5-7b-336", 7.06, 576, 32),
        ("llava-1.5-13b-224", 13.35, 256, 40),
    ],
)
def test_presets_have_the_real_sizes(preset, billions, image_tokens, layers):
    from transformers import LlavaForConditionalGeneration

    config = bench.llava_config(preset)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    assert abs(params - billions) < 0.05, params
    assert config.image_seq_length == image_tokens
    assert config.text_config.num_hidden_layers == layers
    assert flops.ModelDims.from_config(config, image_tokens) == flops.preset(preset)  # one table
    with pytest.raises(ValueError, match="unknown preset 'llava-2'"):
        bench.llava_config("llava-2")


def test_run_gives_method_ideal_and_eager_rows():
    rows = bench.run(
        "tiny",
        ["fastv"],
        [0.75],
        [2],
        device="cpu",
        dtype=torch.float32,
        repeats=1,
        warmup=0,
        decode_tokens=1,
        progress=lambda _: None,
    )
    assert [r.kind for r in rows] == ["unpruned", "method", "ideal", "eager"]
    unpruned, method, ideal, eager = rows
    assert unpruned.n_avg == 64
    assert method.n_avg == ideal.n_avg == eager.n_avg < 64 * 0.3
    assert method.config["method"] == "fastv" and ideal.config is None
    # KV cache: 16 layers, 2 samples, 2 KV heads x 8 dims, keys and values, fp32; per layer the text
    # tokens (62) plus that layer's live image tokens.
    live = method.n_avg * 16
    expected = 2 * 2 * 2 * 8 * 4 * (62 * 16 + live)
    assert method.kv_cache_mb * 2**20 == pytest.approx(expected)
    assert unpruned.kv_cache_mb > method.kv_cache_mb
    table = bench.markdown(rows)
    assert table.count("\n") == 5 and "| 2 | 75% | fastv | ideal |" in table
    assert {r.prefill_mode for r in rows} == {"eager"}
    line = bench.summary(rows).splitlines()[-1]
    speed = unpruned.prefill_ms / method.prefill_ms
    share = (method.prefill_ms - ideal.prefill_ms) / method.prefill_ms
    assert line.startswith(f"| 2 | 75% | fastv | {method.n_avg:.1f} | {speed:.2f}× |")
    assert line.endswith(f"| {ideal.prefill_ms / method.prefill_ms:.2f} | {share:.1%} |")


def test_paper_budget_and_bad_options():
    common = {"device": "cpu", "dtype": torch.float32, "repeats": 1, "warmup": 0, "decode_tokens": 0}
    said = []
    rows = bench.run(
        "tiny", ["pdrop"], [0.75, 0.9], [1], budget="paper", references=False, progress=said.append, **common
    )
    # At 0.9, PyramidDrop's stages cannot cost as little as FastV (the paper axis's rule): skipped, saying so.
    assert [(r.kind, r.reduction) for r in rows] == [("unpruned", None), ("method", 0.75)]
    assert any("skipped" in line and "cannot reach FastV's" in line for line in said)
    assert rows[1].config["layers"] == [4, 8, 12]  # 8/16/24 of 32 on the 16-layer tiny decoder
    with pytest.raises(ValueError, match="budget='x'"):
        bench.run("tiny", ["fastv"], [0.5], [1], budget="x", **common)
    with pytest.raises(ValueError, match="graph=True needs a CUDA device"):
        bench.run("tiny", ["fastv"], [0.5], [1], graph=True, **common)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_rows_on_cuda():
    rows = bench.run(
        "tiny",
        ["fastv", "altp", "csp"],
        [0.75],
        [1],
        device="cuda",
        dtype=torch.bfloat16,
        repeats=3,
        warmup=1,
        decode_tokens=2,
        graph=True,
        progress=lambda _: None,
    )
    assert {r.prefill_mode for r in rows} == {"graph"}
    assert [r.kind for r in rows].count("ideal") == 3


def test_unreachable_reductions_are_skipped_with_a_reason():
    messages = []
    rows = bench.run(
        "tiny",
        ["pdrop"],
        [0.9],
        [1],
        device="cpu",
        dtype=torch.float32,
        repeats=1,
        warmup=0,
        decode_tokens=0,
        progress=messages.append,
    )
    assert [r.kind for r in rows] == ["unpruned"]
    assert any("pdrop cannot reach" in m for m in messages)


def test_cli_writes_table_and_rejects_bad_values(tmp_path, capsys):
    from segprune.cli import main

    out = tmp_path / "bench"
    args = [
        "bench",
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--methods",
        "csp",
        "--reductions",
        "0.75",
        "--batches",
        "1",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--decode-tokens",
        "0",
        "--no-references",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    table = (out / "table.md").read_text()
    assert table.startswith("`segprune bench --preset tiny") and "| 1 | 75% | csp | method |" in table
    assert '"kind": "method"' in (out / "rows.json").read_text()
    assert main([*args[:-2], "--repeats", "0", "--out", str(out)]) == 2
    assert "--repeats=0 is out of range" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "--preset", "tiny", "--out", str(out)]) == 2
        assert "no CUDA device here" in capsys.readouterr().err


# -- end-to-end grounded generation (segprune bench --e2e) ------------------------------------------

GCG = {"device": "cpu", "dtype": torch.float32, "repeats": 1, "warmup": 0, "progress": lambda _: None}


FASTV_ROWS = [("fastv", "eager"), ("fastv", "graphed")]


def test_gcg_tables_rows_and_exactness(tmp_path, one_thread):
    import json

    from segprune.bench.gcg import run_gcg

    rows = run_gcg("tiny", ["fastv"], [0.75], [1, "max"], new_tokens=4, max_batch=3, out=tmp_path, **GCG)
    kinds = [(r.table, r.method, r.kind) for r in rows]
    assert kinds == [
        (table, method, kind)
        for table in ("batch 1", "max batch")
        for method, kind in [*[("none", k) for k in ("no-cache", "eager", "graphed")], *FASTV_ROWS]
    ]
    # On CPU nothing is probed: the max batch is the largest power of two within the cap.
    assert {r.batch for r in rows if r.table == "max batch"} == {2}
    assert {r.mode for r in rows if r.kind == "graphed"} == {"static-eager"}
    for r in rows:
        assert r.new_tokens == 4 and r.ttft_ms > 0 and r.total_ms >= r.ttft_ms
        assert r.decode_ms_per_token == pytest.approx((r.total_ms - r.ttft_ms) / 3)
        assert r.tokens_per_s == pytest.approx(1000 * r.batch * 4 / r.total_ms)
        # The reference design re-runs the whole sequence and the graphed path decodes from static
        # buffers: both give the cached decode's greedy tokens exactly.
        assert r.token_match == (None if r.kind == "eager" else 1.0)
    unpruned = next(r for r in rows if r.kind == "eager" and r.method == "none")
    fastv = next(r for r in rows if r.kind == "eager" and r.method == "fastv")
    assert fastv.n_avg < unpruned.n_avg == 64 and fastv.kv_cache_mb < unpruned.kv_cache_mb
    # KV cache after 4 tokens: 16 layers of (62 text + 64 image + 3 fed tokens) keys, 2 KV heads x 8, fp32.
    assert unpruned.kv_cache_mb * 2**20 == 2 * 16 * (62 + 64 + 3) * 2 * 8 * 4
    graphed = next(r for r in rows if r.kind == "graphed" and r.method == "none" and r.batch == 1)
    assert graphed.kv_cache_mb == pytest.approx(unpruned.kv_cache_mb)  # buffers: prefill + 3 slots
    for stem in ("gcg-batch1", "gcg-max"):
        data = json.loads((tmp_path / f"{stem}.json").read_text())
        assert data["complete"] and len(data["rows"]) == 5
        table = (tmp_path / f"{stem}.md").read_text()
        assert "A decode step reads the decoder's and LM head's weights once" in table
        assert "| none | no-cache | eager |" in table and "in progress" not in table
    assert "| 2 | 75% | fastv | graphed | static-eager |" in (tmp_path / "gcg-max.md").read_text()


def test_gcg_cut_short_keeps_finished_tables(tmp_path, one_thread):
    import json

    from segprune.bench.gcg import run_gcg

    def stop_in_second_table(line):
        if line.startswith("batch 2") and "eager" in line:
            raise KeyboardInterrupt

    common = {**GCG, "progress": stop_in_second_table}
    with pytest.raises(KeyboardInterrupt):
        kinds = ["no-cache", "eager"]
        run_gcg("tiny", ["fastv"], [0.9], [1, 2], new_tokens=3, kinds=kinds, out=tmp_path, **common)
    first = json.loads((tmp_path / "gcg-batch1.json").read_text())
    assert first["complete"] and [r["kind"] for r in first["rows"]] == ["no-cache", "eager", "eager"]
    second = json.loads((tmp_path / "gcg-batch2.json").read_text())
    assert not second["complete"] and [r["kind"] for r in second["rows"]] == ["eager"]
    assert "(in progress: rows so far)" in (tmp_path / "gcg-batch2.md").read_text()


def test_gcg_bad_values():
    from segprune.bench.gcg import run_gcg

    for kwargs, message in [
        ({"new_tokens": 1}, "new_tokens=1 is out of range; valid: value >= 2"),
        ({"kinds": ["cached"]}, "row kind 'cached' is not valid"),
        ({"batches": [0]}, "batches=0 is out of range"),
        ({"batches": ["most"]}, "batches='most' must be an integer"),
        ({"max_batch": 0}, "max_batch=0 is out of range"),
        ({"methods": ["fast"]}, "unknown method"),
    ]:
        args = {"methods": ["fastv"], "batches": [1], **kwargs}
        with pytest.raises(ValueError, match=message):
            run_gcg("tiny", args.pop("methods"), [0.5], args.pop("batches"), **{**GCG, **args})


def test_cli_e2e_writes_tables_and_rejects_bad_values(tmp_path, capsys, one_thread):
    from segprune.cli import main

    out = tmp_path / "e2e"
    args = ["bench", "--e2e", "--preset", "tiny", "--device", "cpu", "--dtype", "float32"]
    args += ["--methods", "altp"]
    args += ["--reductions", "0.9", "--batches", "1", "--new-tokens", "3", "--repeats", "1", "--warmup", "0"]
    args += ["--rows", "eager,graphed", "--out", str(out)]
    assert main(args) == 0
    table = (out / "gcg-batch1.md").read_text()
    assert table.startswith("`segprune bench --e2e --preset tiny") and "CPU (" in table
    assert "| 1 | 90% | altp | graphed | static-eager |" in table
    assert "| 1 | 90% | altp | graphed |" in capsys.readouterr().out
    for extra, message in [
        (["--new-tokens", "1"], "--new-tokens=1 is out of range"),
        (["--rows", "cached"], "row kind 'cached' is not valid"),
        (["--max-batch", "0"], "--max-batch=0 is out of range"),
        (["--graph"], "--graph applies to the prefill tables"),
    ]:
        assert main([*args, *extra]) == 2
        assert message in capsys.readouterr().err
    no_e2e = [a for a in args if a != "--e2e"]
    assert main([*no_e2e[:-2], "--batches", "max", "--out", str(out)]) == 2
    assert "--batches max is valid with --e2e only" in capsys.readouterr().err


def test_gcg_failed_row_is_named_and_the_run_goes_on(tmp_path, monkeypatch, one_thread):
    from segprune.bench import gcg

    def broken(*args, **kwargs):
        raise RuntimeError("capture broke")

    monkeypatch.setattr(gcg.GraphedGeneration, "__init__", broken)
    said = []
    common = {**GCG, "progress": said.append}
    rows = gcg.run_gcg(
        "tiny", ["fastv"], [0.9], [1], new_tokens=2, kinds=["eager", "graphed"], out=tmp_path, **common
    )
    assert [(r.method, r.kind) for r in rows] == [("none", "eager"), ("fastv", "eager")]
    table = (tmp_path / "gcg-batch1.md").read_text()
    assert "Failed: batch 1 none graphed r=None: RuntimeError: capture broke" in table
    assert "Failed: batch 1 fastv graphed r=0.9: RuntimeError: capture broke" in table
    assert sum("failed" in line for line in said) == 2


def test_largest_batch_doubles_until_out_of_memory(monkeypatch):
    import types

    from segprune.bench import gcg

    tried = []

    def prepare(model, kind, batch, new_tokens):
        tried.append(batch)
        return None if batch > 4 else types.SimpleNamespace(batch=batch)

    monkeypatch.setattr(gcg, "prepare", prepare)
    cuda = types.SimpleNamespace(device=torch.device("cuda"))
    assert gcg.largest_batch(cuda, "eager", 4, cap=64).batch == 4
    assert tried == [1, 2, 4, 8, 4]  # the last fit is rebuilt: trials free their memory for the next
    tried.clear()
    assert gcg.largest_batch(cuda, "eager", 4, cap=3).batch == 2 and tried == [1, 2]  # powers of two
    tried.clear()
    cpu = types.SimpleNamespace(device=torch.device("cpu"))
    assert gcg.largest_batch(cpu, "eager", 4, cap=6).batch == 4 and tried == [4]  # nothing probed
    # An allocation failing inside a CUDA graph capture surfaces as the capture's error.
    try:
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except torch.cuda.OutOfMemoryError:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")  # noqa: B904
    except RuntimeError as err:
        assert gcg._out_of_memory(err)
    assert not gcg._out_of_memory(RuntimeError("shape mismatch"))


# -- Qwen2.5-VL presets (no vision CLS row; eager rows only) ----------------------------------------


@pytest.mark.parametrize(
    ("preset", "side", "image_tokens"), [("qwen2.5-vl-7b-448", 32, 256), ("qwen2.5-vl-7b-672", 48, 576)]
)
def test_qwen_presets_have_the_real_sizes(preset, side, image_tokens):
    import types

    from transformers import Qwen2_5_VLForConditionalGeneration

    from segprune.bench.models import qwen_bench_inputs, qwen_config

    config = qwen_config(preset)
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (3584, 28, 28)
    assert (text.num_key_value_heads, text.intermediate_size, text.vocab_size) == (4, 18944, 152064)
    assert text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert (vision.depth, vision.hidden_size, vision.num_heads, vision.intermediate_size) == (
        32,
        1280,
        16,
        3420,
    )
    assert (vision.out_hidden_size, vision.patch_size, vision.spatial_merge_size) == (3584, 14, 2)
    assert vision.window_size == 112 and list(vision.fullatt_block_indexes) == [7, 15, 23, 31]
    assert config.image_seq_length == image_tokens == flops.preset(preset).image_tokens
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    assert abs(params - 8.29) < 0.01, params  # Qwen2.5-VL-7B-Instruct: 8.29B with its untied LM head
    stub = types.SimpleNamespace(config=config, device=torch.device("cpu"), dtype=torch.bfloat16)
    inputs = qwen_bench_inputs(stub, 2)  # the meta model cannot hold the inputs
    assert inputs["image_grid_thw"].tolist() == [[1, side, side]] * 2
    assert inputs["pixel_values"].shape == (2 * side * side, 3 * 2 * 14 * 14)
    assert (inputs["input_ids"] == config.image_token_id).sum(dim=1).tolist() == [image_tokens] * 2
    with pytest.raises(ValueError, match="not a Qwen preset"):
        qwen_config("llava-1.5-7b-336")


def test_qwen_run_and_e2e_eager_rows(tmp_path, one_thread):
    from segprune.bench.gcg import run_gcg

    common = {"device": "cpu", "dtype": torch.float32, "repeats": 1, "warmup": 0}
    rows = bench.run(
        "tiny-qwen", ["fastv", "csp"], [0.75], [2], decode_tokens=1, progress=lambda _: None, **common
    )
    assert [(r.method, r.kind) for r in rows] == [
        ("none", "unpruned"),
        *[(m, k) for m in ("fastv", "csp") for k in ("method", "ideal", "eager")],
    ]
    assert rows[0].n_avg == 64 and all(r.n_avg < 64 * 0.3 for r in rows[1:])
    assert rows[1].kv_cache_mb < rows[0].kv_cache_mb
    gcg = run_gcg("tiny-qwen", ["pdrop"], [0.75], [1], new_tokens=2, kinds=["eager"], out=tmp_path, **GCG)
    assert [(r.method, r.kind, r.mode) for r in gcg] == [
        ("none", "eager", "eager"),
        ("pdrop", "eager", "eager"),
    ]
    assert gcg[1].n_avg < gcg[0].n_avg == 64
    with pytest.raises(ValueError, match="reads the vision tower's CLS row"):
        bench.run("tiny-qwen", ["visionzip"], [0.75], [1], decode_tokens=0, progress=lambda _: None, **common)


def test_cli_builds_qwen_presets(tmp_path, one_thread):
    from segprune.cli import main

    args = ["--device", "cpu", "--dtype", "float32", "--repeats", "1", "--warmup", "0", "--batches", "1"]
    out = tmp_path / "bench"
    assert (
        main(
            [
                "bench",
                "--preset",
                "tiny-qwen",
                *args,
                "--methods",
                "altp",
                "--reductions",
                "0.75",
                "--decode-tokens",
                "1",
                "--no-references",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "| 1 | 75% | altp | method |" in (out / "table.md").read_text()
