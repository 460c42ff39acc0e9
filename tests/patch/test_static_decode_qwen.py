"""Static-buffer decode (`StaticDecode`) of tiny Qwen2-VL / Qwen2.5-VL models against `generate()`.

Decode tokens are text tokens at M-RoPE positions whose three components are equal: each sample's
largest prompt position + 1 + the step (the model's `rope_deltas`, or a pruned prefill's
`continuation`). On CPU the static step runs eagerly and must give `generate()`'s greedy tokens and
fp32 logits to 1e-5, unpruned and under every method the family runs, at batch 1, in a left-padded
batch of 2 and in a ragged batch (two image sizes, masked slots), both copying an ordinary cache
and adopting a `DecodeCache` the prefill wrote into. On CUDA (`-m gpu`) the step is a captured graph.
Also the bench's graphed GCG rows on the tiny Qwen2.5-VL preset (eager prefill, static decode).
"""

from __future__ import annotations

import pytest
import torch
from decode_helpers import prune_as, reference
from tiny_qwen import FAMILIES, left_padded_batch, qwen_inputs, qwen_prompt, tiny_qwen

import segprune
from conftest import EXAMPLES
from segprune.families import family_of
from segprune.patch.decode_cache import DecodeCache
from segprune.patch.static_decode import StaticDecode, decode_layout
from segprune.patch.transformers_api import cache_kwargs, output_cache

STEPS = 12
CASES = ["none", "fastv", "pdrop", "altp", "csp"]
BATCHES = ["one", "padded", "ragged"]
BIG, SMALL = (16, 16), (12, 8)  # 16 and 6 image tokens


@pytest.fixture(scope="module", params=FAMILIES)
def qwen_model(request):
    return tiny_qwen(request.param)


@pytest.fixture
def qwen(qwen_model):
    yield qwen_model
    segprune.unprune(qwen_model)


pytestmark = pytest.mark.usefixtures("one_thread")


def batch_inputs(kind: str, seed: int = 1) -> dict[str, torch.Tensor]:
    if kind == "one":
        return qwen_inputs(batch=1, seed=seed)
    if kind == "padded":
        inputs = qwen_inputs(batch=2, seed=seed, left_pad=True)
    else:  # two image sizes: the smaller sample's image rows end in masked slots
        samples = [qwen_prompt([BIG], n_text=5, seed=seed), qwen_prompt([SMALL], n_text=8, seed=seed + 1)]
        inputs = left_padded_batch(samples)
    assert not inputs["attention_mask"].all(), "the batch must hold left padding"
    return inputs


def padding(inputs):
    mask = inputs["attention_mask"]
    return None if bool(mask.all()) else mask


@torch.no_grad()
def prefill(model, inputs, cache=None):
    """The model's own prefill (its M-RoPE ids from image_grid_thw), first token and cache."""
    given = {}
    if cache is not None:
        cache.reset()
        given = cache_kwargs(model, cache)
    out = model(**inputs, use_cache=True, logits_to_keep=1, **given)
    return out.logits[:, -1:].argmax(-1), output_cache(model, out)


def static_steps(decoder: StaticDecode, first: torch.Tensor, steps: int):
    tokens, logits, token = [], [], first
    for _ in range(steps):
        step_logits = decoder.step(token).clone()
        token = step_logits.argmax(-1, keepdim=True)
        tokens.append(token)
        logits.append(step_logits)
    return torch.cat(tokens, dim=1), torch.stack(logits, dim=1)


def assert_one_copy(decoder: StaticDecode, cache: DecodeCache) -> None:
    assert decoder.adopted and decoder.shares(cache)
    for layer, keys, values in zip(cache.layers, decoder.kv.keys, decoder.kv.values, strict=True):
        assert keys.data_ptr() == layer.key_buffer.data_ptr() == layer.keys.data_ptr()
        assert values.data_ptr() == layer.value_buffer.data_ptr() == layer.values.data_ptr()
    assert decoder.kv.nbytes() == cache.nbytes()


@pytest.mark.parametrize("kind", BATCHES)
@pytest.mark.parametrize("name", CASES)
def test_static_decode_equals_generate(qwen, name, kind):
    prune_as(qwen, name)
    inputs = batch_inputs(kind)
    mask = padding(inputs)
    expected_tokens, expected_logits = reference(qwen, inputs, STEPS)

    # An ordinary cache, copied into the decoder's buffers.
    first, cache = prefill(qwen, inputs)
    assert torch.equal(first[:, 0], expected_tokens[:, 0])
    n_keys = [layer.keys.shape[-2] for layer in cache.layers]
    layout = decode_layout(qwen, cache)
    if name != "none":
        assert layout.continuation is not None and layout.continuation.shape == (first.shape[0], 1)
    if kind == "ragged" and name != "none":
        assert layout.masked_slots
    decoder = StaticDecode(qwen, cache, STEPS, attention_mask=mask)
    assert decoder.graph is None and not decoder.adopted
    if name == "fastv":
        assert n_keys[0] > n_keys[-1]  # pruned layers hold fewer keys
    tokens, logits = static_steps(decoder, first, STEPS)
    assert torch.equal(tokens, expected_tokens[:, 1:])
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
    assert [layer.keys.shape[-2] for layer in cache.layers] == n_keys  # copied, not extended
    del decoder, cache

    # The prefill written straight into the decoder's buffers: one copy of the KV cache.
    shared = DecodeCache(qwen, STEPS)
    first, filled = prefill(qwen, inputs, shared)
    assert filled is shared and torch.equal(first[:, 0], expected_tokens[:, 0])
    decoder = StaticDecode(qwen, shared, STEPS, attention_mask=mask)
    assert_one_copy(decoder, shared)
    tokens, logits = static_steps(decoder, first, STEPS)
    assert torch.equal(tokens, expected_tokens[:, 1:])
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["none", "fastv", "pdrop", "csp"])
def test_reload_takes_the_next_prompts_positions(qwen, name):
    # A 16 x 16 px image and an 8 x 32 px one both give 16 tokens (same layout), but the second's
    # 2 x 8 grid spans more M-RoPE positions: `load` must take the new prompt's decode start.
    prune_as(qwen, name)
    square = qwen_prompt([BIG], n_text=5, seed=1)
    wide = qwen_prompt([(8, 32)], n_text=5, seed=2)
    cache = DecodeCache(qwen, STEPS)
    first, _ = prefill(qwen, square, cache)
    decoder = StaticDecode(qwen, cache, STEPS)
    start = decoder.base_position.clone()
    decoder.run(first, STEPS)
    expected, expected_logits = reference(qwen, wide, STEPS)
    first, _ = prefill(qwen, wide, cache)
    decoder.load(cache)  # already in the buffers
    assert_one_copy(decoder, cache)
    assert int(decoder.base_position) == int(start) + 4  # the 2 x 8 grid spans 8 positions, not 4
    tokens, logits = static_steps(decoder, first, STEPS)
    assert torch.equal(tokens, expected[:, 1:])
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)


def test_family_decode_start_and_errors(qwen):
    family = family_of(qwen)
    assert family.static_decode and not family.graphable  # the prefill reads image_grid_thw on the host
    inputs = batch_inputs("padded")
    prefill(qwen, inputs)
    counted = inputs["attention_mask"].sum(dim=1, keepdim=True)
    start = family.decode_start(inputs["input_ids"].shape[1], counted, None)
    assert torch.equal(start, counted + qwen.model.rope_deltas)
    positions = family.step_positions(start)
    assert positions.shape == (3, 2, 1) and torch.equal(positions[0], positions[2])
    with pytest.raises(ValueError, match=r"rope_deltas \(2, 1\) do not fit a batch of 3: valid \(n, 1\)"):
        family.decode_start(10, torch.ones(3, 1, dtype=torch.long), None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", BATCHES)
@pytest.mark.parametrize("name", CASES)
def test_graphed_decode_on_cuda(qwen, name, kind):
    cuda_model = tiny_qwen(qwen.config.model_type).to("cuda")
    prune_as(cuda_model, name)
    inputs = {k: v.to("cuda") for k, v in batch_inputs(kind).items()}
    mask = padding(inputs)
    expected_tokens, expected_logits = reference(cuda_model, inputs, STEPS)
    first, cache = prefill(cuda_model, inputs)
    decoder = StaticDecode(cuda_model, cache, STEPS, attention_mask=mask, graph=True)
    assert decoder.graph is not None
    tokens, logits = static_steps(decoder, first, STEPS)
    assert torch.equal(tokens, expected_tokens[:, 1:])
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)
    del decoder, cache

    shared = DecodeCache(cuda_model, STEPS)
    first, _ = prefill(cuda_model, inputs, shared)
    decoder = StaticDecode(cuda_model, shared, STEPS, attention_mask=mask, graph=True)
    assert decoder.graph is not None
    assert_one_copy(decoder, shared)
    tokens, logits = static_steps(decoder, first, STEPS)
    assert torch.equal(tokens, expected_tokens[:, 1:])
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)
    first, _ = prefill(cuda_model, inputs, shared)
    decoder.load(shared, mask)
    assert_one_copy(decoder, shared)
    assert torch.equal(decoder.run(first, STEPS), expected_tokens[:, 1:])  # replays, no host sync between


# -- the bench's graphed rows (segprune bench --e2e --preset tiny-qwen) ----------------------------

GCG = {"device": "cpu", "dtype": torch.float32, "repeats": 1, "warmup": 0, "progress": lambda _: None}


def test_bench_graphed_rows_of_a_qwen_preset(tmp_path):
    from segprune.bench.gcg import run_gcg

    kinds = ["eager", "graphed"]
    methods = ["fastv", "pdrop"]
    rows = run_gcg("tiny-qwen", methods, [0.75], [2], new_tokens=4, kinds=kinds, out=tmp_path, **GCG)
    assert [(r.method, r.kind) for r in rows] == [
        (method, kind) for method in ("none", "fastv", "pdrop") for kind in ("eager", "graphed")
    ]
    for row in rows:
        if row.kind == "graphed":
            assert row.mode == "static-eager"  # no CUDA: the same prefill and static step, eagerly
            assert row.token_match == 1.0 and row.reference == f"{row.method} eager"
    table = (tmp_path / "gcg-batch2.md").read_text()
    assert "Failed" not in table and "| 2 | 75% | pdrop | graphed | static-eager |" in table


def test_cli_refuses_graph_prefill_for_qwen_presets(tmp_path, capsys):
    from segprune.cli import main

    args = ["bench", "--preset", "tiny-qwen", "--device", "cpu", "--graph", "--out", str(tmp_path / "b")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--graph is not valid with --preset tiny-qwen" in err and "valid presets for --graph" in err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["none", "fastv", "pdrop", "altp", "csp"])
def test_bench_graphed_generation_of_a_qwen_preset_on_cuda(name):
    from segprune.bench import gcg
    from segprune.bench.models import build_model, seg_token_id

    model = build_model("tiny-qwen", "cuda", torch.float32)
    if name != "none":
        segprune.prune_(model, EXAMPLES[name], seg_token_id=seg_token_id(model))
    inputs = gcg.gcg_inputs(model, 2)
    expected, _ = gcg.greedy_cached(model, inputs, 6)
    graphed = gcg.GraphedGeneration(model, inputs, 6)
    assert graphed.mode == "eager-prefill+cuda-graph-decode" and graphed.decoder.graph is not None
    assert graphed.prefill is None and graphed.decoder.adopted
    for _ in range(2):  # each call: a new eager prefill into the same buffers, then graph replays
        assert torch.equal(graphed(inputs), expected)
