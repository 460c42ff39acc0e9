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
