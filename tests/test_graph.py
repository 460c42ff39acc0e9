"""The graph path: `prefill` equals the model's own forward; with a static layout the pruned prefill
makes no host synchronisation; `GraphedPrefill` replays equal eager prefills (CUDA only); either
writes into a `DecodeCache` whose buffers `StaticDecode` adopts (one copy of the KV cache)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import segprune
from conftest import EXAMPLES, HostSyncCounter, method_names
from segprune.graph import GraphedPrefill, _layout, _static, prefill
from segprune.methods.replay import ReplayConfig
from segprune.models import tiny_llava_inputs
from segprune.patch.decode_cache import DecodeCache
from segprune.patch.static_decode import StaticDecode
from segprune.patch.transformers_api import cache_kwargs, output_cache

SEG = 7  # a text id used as [SEG] in these prompts
# Methods whose forward can be captured: selection and scoring stay on the device (`sync_free`).
GRAPHABLE = {name: EXAMPLES[name] for name in method_names() if EXAMPLES[name].sync_free}
# The CSP example with other clustering modes, scoring by [SEG].
GRAPHABLE["csp-seg_first-seg"] = dataclasses.replace(EXAMPLES["csp"], cluster="seg_first", score_token="seg")
GRAPHABLE["csp-random-seg"] = dataclasses.replace(EXAMPLES["csp"], cluster="random", score_token="seg")


def unpadded(model, batch=2, seed=1):
    inputs = tiny_llava_inputs(model, batch=batch, prompt_lengths=(6,), seed=seed)
    inputs["input_ids"][:, -1] = SEG
    return inputs["input_ids"], inputs["pixel_values"]


@pytest.fixture(autouse=True)
def _unpruned(model):
    yield
    segprune.unprune(model)


@torch.no_grad()
@pytest.mark.parametrize("name", [None, *GRAPHABLE])
def test_prefill_equals_the_models_forward(model, name):
    if name is not None:
        segprune.prune_(model, GRAPHABLE[name], seg_token_id=SEG)
    ids, pixels = unpadded(model)
    ref = model(input_ids=ids, pixel_values=pixels, use_cache=True, output_hidden_states=True)
    ref_stats = segprune.stats(model) if name else None
    out = prefill(model, ids, pixels)
    assert (out.logits[:, -1] - ref.logits[:, -1]).abs().max() <= 1e-5
    assert (out.last_hidden_state - ref.hidden_states[-1]).abs().max() <= 1e-5
    if name:
        stats = segprune.stats(model)
        for kept, ref_kept in zip(stats.kept_indices, ref_stats.kept_indices, strict=True):
            assert torch.equal(kept, ref_kept)
    # Decoding continues from either cache alike.
    token = ref.logits[:, -1:].argmax(-1)
    step = model(input_ids=token, use_cache=True, **cache_kwargs(model, out.cache)).logits
    ref_out = model(input_ids=ids, pixel_values=pixels, use_cache=True)
    ref_cache = cache_kwargs(model, output_cache(model, ref_out))
    ref_step = model(input_ids=token, use_cache=True, **ref_cache).logits
    assert (step - ref_step).abs().max() <= 1e-5


@torch.no_grad()
@pytest.mark.parametrize("name", [*GRAPHABLE, "replay"])
def test_static_layout_prefill_never_reads_the_host(model, name, monkeypatch):
    ids, pixels = unpadded(model)
    config = GRAPHABLE.get(name)
    if name == "replay":
        segprune.prune_(model, EXAMPLES["fastv"])
        model(input_ids=ids, pixel_values=pixels)
        config = ReplayConfig.from_stats(segprune.stats(model), check=False)  # the check syncs
    segprune.prune_(model, config, seg_token_id=SEG)
    layout = _layout(model, ids, pixels)
    generator = torch.Generator().manual_seed(0)
    counter = HostSyncCounter(monkeypatch)
    lm = model.model.language_model
    hooks = [
        lm.register_forward_pre_hook(lambda *a: setattr(counter, "active", True)),
        lm.register_forward_hook(lambda *a: setattr(counter, "active", False)),
    ]
    try:
        with _static(model, layout, generator):
            prefill(model, ids, pixels)
    finally:
        for hook in hooks:
            hook.remove()
    assert counter.calls == [], counter.calls
    assert model.model._segprune_adapter.static is None  # only while the owner runs it


@torch.no_grad()
@pytest.mark.parametrize("name", [None, "fastv", "pdrop", "csp-seg_first-seg"])
def test_prefill_into_a_decode_cache(model, name):
    if name is not None:
        segprune.prune_(model, GRAPHABLE[name], seg_token_id=SEG)
    ids, pixels = unpadded(model)
    ref = prefill(model, ids, pixels)
    ref_tokens = StaticDecode(model, ref.cache, 6).run(ref.logits[:, -1:].argmax(-1), 6).clone()
    cache = DecodeCache(model, 6)
    for _ in range(2):  # the second prefill resets the cache and reuses its buffers
        out = prefill(model, ids, pixels, cache=cache)
    assert out.cache is cache
    assert torch.equal(out.logits, ref.logits)
    for layer, ref_layer in zip(cache.layers, ref.cache.layers, strict=True):
        assert torch.equal(layer.keys, ref_layer.keys) and torch.equal(layer.values, ref_layer.values)
    decoder = StaticDecode(model, cache, 6)
    assert decoder.adopted
    assert [k.data_ptr() for k in decoder.kv.keys] == [layer.key_buffer.data_ptr() for layer in cache.layers]
    assert torch.equal(decoder.run(out.logits[:, -1:].argmax(-1), 6), ref_tokens)


def test_bad_layouts_are_named(model):
    ids, pixels = unpadded(model)
    with pytest.raises(ValueError, match="needs the model and inputs on a CUDA device"):
        GraphedPrefill(model, ids, pixels)
    short = ids.clone()
    short[0, 3] = 9  # one image token fewer in the first sample
    with pytest.raises(ValueError, match=r"image tokens; got \[15, 16\]"):
        prefill(model, short, pixels)
    with pytest.raises(ValueError, match="2 images for 1 samples"):
        prefill(model, ids[:1], pixels)
    with pytest.raises(TypeError, match=r"cache must be a segprune\.patch\.decode_cache\.DecodeCache"):
        prefill(model, ids, pixels, cache=output_cache(model, model(input_ids=ids, pixel_values=pixels)))
    segprune.prune_(model, GRAPHABLE["csp-seg_first-seg"], seg_token_id=SEG)
    no_seg = ids.clone()
    no_seg[:, -1] = 8
    with pytest.raises(ValueError, match=r"some samples hold no \[SEG\] \(id 7\)"):
        prefill(model, no_seg, pixels)


# -- on a CUDA device ---------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def cuda_model(model):
    return model.to("cuda")


@pytest.mark.gpu
@cuda
@torch.no_grad()
@pytest.mark.parametrize("name", [None, *GRAPHABLE])
def test_replay_equals_eager_prefill(name):
    from segprune.models import tiny_llava

    model = tiny_llava().cuda()
    if name is not None:
        segprune.prune_(model, GRAPHABLE[name], seg_token_id=SEG)
    ids, pixels = (t.cuda() for t in unpadded(model))
    runner = GraphedPrefill(model, ids, pixels)
    for seed in (2, 3):  # new values, same layout
        new_ids, new_pixels = (t.cuda() for t in unpadded(model, seed=seed))
        out = runner(new_ids, new_pixels)
        logits, hidden = out.logits.clone(), out.last_hidden_state.clone()
        kept = [k.clone() for k in segprune.stats(model).kept_indices] if name else []
        token = logits[:, -1:].argmax(-1)
        step = model(input_ids=token, use_cache=True, **cache_kwargs(model, out.cache)).logits
        ref = prefill(model, new_ids, new_pixels)
        assert (logits - ref.logits).abs().max() <= 1e-4
        assert (hidden - ref.last_hidden_state).abs().max() <= 1e-4
        if name:
            for a, b in zip(kept, segprune.stats(model).kept_indices, strict=True):
                assert torch.equal(a, b)
        ref_step = model(input_ids=token, use_cache=True, **cache_kwargs(model, ref.cache)).logits
        assert (step - ref_step).abs().max() <= 1e-4
    moved = ids.clone()
    moved[:, [1, 2]] = moved[:, [2, 1]]  # swap a text token with the first image token
    with pytest.raises(ValueError, match="layout differs"):
        runner(moved, pixels)


@pytest.mark.gpu
@cuda
@torch.no_grad()
@pytest.mark.parametrize("name", [None, "fastv", "pdrop", "altp", "csp"])
@pytest.mark.parametrize("batch", [1, 2])
def test_graphed_prefill_into_the_static_decoders_buffers(name, batch):
    # The captured prefill writes into a DecodeCache's buffers (allocated by the warm-up, outside
    # the graph's pool); the graphed decoder adopts them: one copy of the KV cache, and the tokens
    # and logits of the eager prefill and ordinary cached decode.
    from segprune.models import tiny_llava

    model = tiny_llava().cuda()
    if name is not None:
        segprune.prune_(model, EXAMPLES[name], seg_token_id=SEG)
    steps = 8
    ids, pixels = (t.cuda() for t in unpadded(model, batch=batch))
    cache = DecodeCache(model, steps)
    runner = GraphedPrefill(model, ids, pixels, cache=cache)
    buffers = [layer.key_buffer.data_ptr() for layer in cache.layers]
    decoder = None
    for seed in (2, 3):  # new values, same layout
        new_ids, new_pixels = (t.cuda() for t in unpadded(model, batch=batch, seed=seed))
        out = runner(new_ids, new_pixels)
        assert out.cache is cache
        assert [layer.keys.data_ptr() for layer in cache.layers] == buffers
        first = out.logits[:, -1:].argmax(-1)
        if decoder is None:
            decoder = StaticDecode(model, cache, steps, graph=True)
        else:
            decoder.load(cache)
        assert decoder.adopted and decoder.shares(cache)
        assert [k.data_ptr() for k in decoder.kv.keys] == buffers
        tokens = decoder.run(first, steps).clone()
        ref = model(input_ids=new_ids, pixel_values=new_pixels, use_cache=True)
        assert (out.logits[:, -1] - ref.logits[:, -1]).abs().max() <= 1e-4
        token, ref_cache, ref_tokens = ref.logits[:, -1:].argmax(-1), output_cache(model, ref), []
        for _ in range(steps):
            step = model(input_ids=token, use_cache=True, **cache_kwargs(model, ref_cache))
            token = step.logits[:, -1:].argmax(-1)
            ref_tokens.append(token)
        assert torch.equal(first, ref.logits[:, -1:].argmax(-1))
        assert torch.equal(tokens, torch.cat(ref_tokens, dim=1))
