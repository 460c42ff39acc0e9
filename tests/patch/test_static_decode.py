"""Static-buffer decode (`StaticDecode`) against the ordinary pruned decode of `generate()`.

On CPU the static step runs eagerly: same greedy tokens and fp32 logits equal to rounding, for the
unpruned model and FastV, PyramidDrop (renumbered positions), ALTP and CSP (re-activation), with and
without left padding; also when the prefill wrote straight into the decoder's buffers (a
`DecodeCache`: one copy of the KV cache). On CUDA (`-m gpu`) the step is a captured CUDA graph and
must agree the same way.
"""

from __future__ import annotations

import pytest
import torch
from decode_helpers import prune_as, reference
from tiny_qwen import left_padded_batch, llava_prompt

import segprune
from conftest import EXAMPLES, position_ids_of
from segprune.models import tiny_llava_inputs
from segprune.patch.decode_cache import DecodeCache
from segprune.patch.static_decode import StaticDecode, decode_layout
from segprune.patch.transformers_api import cache_kwargs, output_cache

STEPS = 16
CASES = ["none", "fastv", "pdrop", "altp", "csp"]


@pytest.fixture(autouse=True)
def _unpruned(model, eager_model, one_thread):
    yield
    segprune.unprune(model)
    segprune.unprune(eager_model)


def _inputs(model, batch: int, seed: int = 1):
    inputs = tiny_llava_inputs(model, batch=batch, prompt_lengths=(5, 8)[:batch], seed=seed, left_pad=True)
    if batch == 2:
        assert not inputs["attention_mask"].all(), "batch 2 must hold left padding"
    return inputs


@torch.no_grad()
def prefill(model, inputs, cache=None):
    """The prefill `generate()` runs (position ids counting real tokens), its first token and cache
    (`cache`, when given, filled from empty)."""
    positions = position_ids_of(inputs["attention_mask"])
    given = {}
    if cache is not None:
        cache.reset()
        given = cache_kwargs(model, cache)
    out = model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1, **given)
    return out.logits[:, -1:].argmax(-1), output_cache(model, out)


def assert_one_copy(decoder: StaticDecode, cache: DecodeCache) -> None:
    """The decoder's buffers are the cache's own, and the cache's layers are views of them."""
    assert decoder.adopted and decoder.shares(cache)
    for layer, keys, values in zip(cache.layers, decoder.kv.keys, decoder.kv.values, strict=True):
        assert keys.data_ptr() == layer.key_buffer.data_ptr() == layer.keys.data_ptr()
        assert values.data_ptr() == layer.value_buffer.data_ptr() == layer.values.data_ptr()
        assert layer.keys._base is layer.key_buffer and layer.values._base is layer.value_buffer
    assert decoder.kv.nbytes() == cache.nbytes()


def static_steps(decoder: StaticDecode, first: torch.Tensor, steps: int):
    """Greedy tokens and logits, one `step` at a time."""
    tokens, logits, token = [], [], first
    for _ in range(steps):
        step_logits = decoder.step(token).clone()
        token = step_logits.argmax(-1, keepdim=True)
        tokens.append(token)
        logits.append(step_logits)
    return torch.cat(tokens, dim=1), torch.stack(logits, dim=1)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", CASES)
def test_static_decode_equals_the_eager_pruned_decode(model, name, batch):
    prune_as(model, name)
    inputs = _inputs(model, batch)
    expected_tokens, expected_logits = reference(model, inputs, STEPS)
    first, cache = prefill(model, inputs)
    assert torch.equal(first[:, 0], expected_tokens[:, 0])
    n_keys = [layer.keys.shape[-2] for layer in cache.layers]
    mask = inputs["attention_mask"] if batch == 2 else None
    decoder = StaticDecode(model, cache, STEPS, attention_mask=mask)
    assert decoder.graph is None  # no CUDA: the same step, run eagerly
    assert [k.shape[-2] for k in decoder.kv.keys] == [n + STEPS for n in n_keys]
    if name == "fastv":
        assert n_keys[0] > n_keys[-1]  # pruned layers hold fewer keys
    tokens, logits = static_steps(decoder, first, STEPS)
    assert torch.equal(tokens, expected_tokens[:, 1:])
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
    # The prefill's cache is copied, not extended.
    assert [layer.keys.shape[-2] for layer in cache.layers] == n_keys


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", CASES)
def test_prefill_into_the_decode_buffers(model, name, batch):
    # The prefill writes its keys and values into a DecodeCache, whose buffers the decoder adopts:
    # one copy of the KV cache, and the same tokens and logits as generate().
    prune_as(model, name)
    inputs = _inputs(model, batch)
    expected_tokens, expected_logits = reference(model, inputs, STEPS)
    _, copied = prefill(model, inputs)  # an ordinary DynamicCache, for its contents
    cache = DecodeCache(model, STEPS)
    first, filled = prefill(model, inputs, cache)
    assert filled is cache
    assert torch.equal(first[:, 0], expected_tokens[:, 0])
    n_keys = [layer.keys.shape[-2] for layer in cache.layers]
    for layer, ref in zip(cache.layers, copied.layers, strict=True):
        assert layer.key_buffer.shape[-2] == ref.keys.shape[-2] + STEPS
        assert torch.equal(layer.keys, ref.keys) and torch.equal(layer.values, ref.values)
    del copied
    mask = inputs["attention_mask"] if batch == 2 else None
    decoder = StaticDecode(model, cache, STEPS, attention_mask=mask)
    assert_one_copy(decoder, cache)
    assert [k.shape[-2] for k in decoder.kv.keys] == [n + STEPS for n in n_keys]
    tokens, logits = static_steps(decoder, first, STEPS)
    assert torch.equal(tokens, expected_tokens[:, 1:])
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
    assert [layer.keys.shape[-2] for layer in cache.layers] == n_keys  # the prefill's views stay


@pytest.mark.parametrize("name", ["none", "pdrop", "csp"])
def test_decode_cache_reload_copies_nothing(model, name, monkeypatch):
    prune_as(model, name)
    cache = DecodeCache(model, STEPS)
    first, _ = prefill(model, _inputs(model, 1), cache)
    decoder = StaticDecode(model, cache, STEPS)
    decoder.run(first, STEPS)
    other = _inputs(model, 1, seed=7)
    expected, _ = reference(model, other, STEPS)
    first, _ = prefill(model, other, cache)  # reset, and into the same buffers
    assert_one_copy(decoder, cache)
    copies = []
    original = torch.Tensor.copy_

    def counting(self, src, *args, **kwargs):
        copies.append(tuple(src.shape))
        return original(self, src, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "copy_", counting)
    decoder.load(cache)
    monkeypatch.undo()
    assert all(len(shape) < 4 for shape in copies), copies  # no key or value tensor was copied
    assert torch.equal(decoder.run(first, STEPS), expected[:, 1:])


def test_decode_cache_bad_arguments(model):
    inputs = _inputs(model, 1)
    with pytest.raises(ValueError, match="max_steps=0 is out of range"):
        DecodeCache(model, 0)
    cache = DecodeCache(model, 4)
    prefill(model, inputs, cache)
    with pytest.raises(ValueError, match=r"max_steps=5 is out of range for this DecodeCache.*<= 4"):
        StaticDecode(model, cache, 5)
    assert StaticDecode(model, cache, 3).adopted  # fewer steps than the room: a view of the buffers
    with pytest.raises(ValueError, match=r"layer 0: new keys \(2, .* do not fit its buffer"):
        prefill(model, _inputs(model, 2), cache)
    longer = tiny_llava_inputs(model, batch=1, prompt_lengths=(14,), seed=1, left_pad=True)
    with pytest.raises(ValueError, match=r"layer 0: \d+ keys \(0 held \+ \d+ new\) exceed its buffer"):
        prefill(model, longer, cache)
    with pytest.raises(NotImplementedError, match="does not support reorder_cache"):
        cache.reorder_cache(torch.zeros(1, dtype=torch.long))


@pytest.mark.parametrize("name", ["none", "pdrop", "csp"])
def test_run_and_reload_reuse_the_buffers(model, name):
    prune_as(model, name)
    inputs = _inputs(model, 1)
    first, cache = prefill(model, inputs)
    decoder = StaticDecode(model, cache, STEPS)
    buffer = decoder.kv.keys[0].data_ptr()
    stepped, _ = static_steps(decoder, first, STEPS)
    # A second prompt of the same layout into the same buffers.
    other = _inputs(model, 1, seed=7)
    expected, _ = reference(model, other, STEPS)
    first, cache = prefill(model, other)
    decoder.load(cache)
    assert torch.equal(decoder.run(first, STEPS), expected[:, 1:])
    assert decoder.kv.keys[0].data_ptr() == buffer
    assert not torch.equal(stepped, expected[:, 1:])  # the prompts do differ
    with pytest.raises(ValueError, match="step 17 is out of range"):
        decoder.step()


@pytest.mark.parametrize("name", ["fastv", "pdrop", "csp"])
def test_masked_slots_of_a_batch_whose_samples_differ(model, name):
    # Sample 1 holds no image: the runner keeps it in masked slots (sequence index past the prompt),
    # and a renumbering plan shifts the two samples' positions by different amounts.
    inputs = _inputs(model, 2)
    ids = inputs["input_ids"].clone()
    ids[1, ids[1] == model.config.image_token_id] = 7
    inputs = {**inputs, "input_ids": ids, "pixel_values": inputs["pixel_values"][:1]}
    prune_as(model, name)
    try:
        expected_tokens, expected_logits = reference(model, inputs, 8)
    except ValueError as err:
        pytest.skip(f"the plan runner refuses a batch whose samples differ: {err}")
    first, cache = prefill(model, inputs)
    layout = decode_layout(model, cache)
    assert layout.masked_slots
    if name == "pdrop":
        assert isinstance(layout.shifts[-1], tuple) and layout.shifts[-1][1] == 0
    decoder = StaticDecode(model, cache, 8, attention_mask=inputs["attention_mask"])
    tokens, logits = static_steps(decoder, first, 8)
    assert torch.equal(tokens, expected_tokens[:, 1:])
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["fastv", "pdrop", "csp"])
def test_samples_with_different_image_token_counts(model, name):
    # A two-image prompt beside a one-image one: 32 and 16 image tokens (`image_counts`), so the
    # narrower sample's rows end in masked slots (SLOT in `key_seq`) and, for a renumbering plan,
    # the samples' positions shift by different amounts.
    inputs = left_padded_batch(
        [llava_prompt(model, 2, n_text=3, seed=7), llava_prompt(model, 1, n_text=6, seed=8)]
    )
    prune_as(model, name)
    expected_tokens, expected_logits = reference(model, inputs, 6)
    first, cache = prefill(model, inputs)
    assert segprune.stats(model).image_counts.tolist() == [32, 16]
    layout = decode_layout(model, cache)
    assert layout.masked_slots
    assert any(int(k.max()) >= layout.seq_len for k in layout.key_seq)  # slot keys are cached
    if name == "pdrop":
        live = segprune.stats(model).live_tokens[-1].tolist()
        assert layout.shifts[-1] == (32 - live[0], 16 - live[1])
    decoder = StaticDecode(model, cache, 6, attention_mask=inputs["attention_mask"])
    tokens, logits = static_steps(decoder, first, 6)
    assert torch.equal(tokens, expected_tokens[:, 1:])
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)


def test_eager_attention_model(eager_model):
    segprune.prune_(eager_model, EXAMPLES["fastv"])
    inputs = _inputs(eager_model, 2)
    expected_tokens, expected_logits = reference(eager_model, inputs, 6)
    first, cache = prefill(eager_model, inputs)
    decoder = StaticDecode(eager_model, cache, 6, attention_mask=inputs["attention_mask"])
    tokens, logits = static_steps(decoder, first, 6)
    assert torch.equal(tokens, expected_tokens[:, 1:])
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)


def test_layout_reads_live_keys_and_renumbering(model):
    segprune.prune_(model, EXAMPLES["pdrop"])  # drops at layers 1 and 3, positions renumbered
    inputs = _inputs(model, 1)
    _, cache = prefill(model, inputs)
    layout = decode_layout(model, cache)
    live = segprune.stats(model).live_tokens[:, 0].tolist()
    text = inputs["input_ids"].shape[1] - 16
    assert list(layout.n_keys) == [text + n for n in live]
    assert list(layout.shifts) == [16 - n for n in live]
    assert layout.seq_len == inputs["input_ids"].shape[1]


def test_bad_arguments(model):
    inputs = _inputs(model, 1)
    first, cache = prefill(model, inputs)
    with pytest.raises(ValueError, match="max_steps=0 is out of range"):
        StaticDecode(model, cache, 0)
    with pytest.raises(ValueError, match="graph=True needs the model on a CUDA device"):
        StaticDecode(model, cache, 4, graph=True)
    decoder = StaticDecode(model, cache, 4)
    with pytest.raises(ValueError, match="steps=5 is out of range"):
        decoder.run(first, 5)
    with pytest.raises(ValueError, match=r"token must be \(batch, 1\)"):
        decoder.step(first[:, 0])
    with pytest.raises(ValueError, match="attention_mask must be given exactly when"):
        decoder.load(cache, inputs["attention_mask"])
    segprune.prune_(model, EXAMPLES["fastv"])
    with pytest.raises(ValueError, match="not the one the pruned model's last prefill filled"):
        StaticDecode(model, cache, 4)
    _, pruned_cache = prefill(model, inputs)
    with pytest.raises(ValueError, match="differs from the one the buffers were built for"):
        decoder.load(pruned_cache)
    config = model.config.text_config
    previous = config._attn_implementation
    config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(ValueError, match="static decode runs on attention"):
            StaticDecode(model, pruned_cache, 4)
    finally:
        config._attn_implementation = previous


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", CASES)
def test_graphed_decode_on_cuda(model, name, batch):
    from segprune.models import tiny_llava

    cuda_model = tiny_llava().to("cuda")
    prune_as(cuda_model, name)
    inputs = {k: v.to("cuda") for k, v in _inputs(model, batch).items()}
    expected_tokens, expected_logits = reference(cuda_model, inputs, STEPS)
    first, cache = prefill(cuda_model, inputs)
    mask = inputs["attention_mask"] if batch == 2 else None
    decoder = StaticDecode(cuda_model, cache, STEPS, attention_mask=mask)
    assert decoder.graph is not None
    tokens, logits = static_steps(decoder, first, STEPS)
    assert torch.equal(tokens, expected_tokens[:, 1:])
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)
    first, cache = prefill(cuda_model, inputs)
    decoder.load(cache, mask)
    assert torch.equal(decoder.run(first, STEPS), expected_tokens[:, 1:])  # replays, no host sync between


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", CASES)
def test_graphed_decode_into_the_prefills_buffers_on_cuda(model, name, batch):
    from segprune.models import tiny_llava

    cuda_model = tiny_llava().to("cuda")
    prune_as(cuda_model, name)
    inputs = {k: v.to("cuda") for k, v in _inputs(model, batch).items()}
    expected_tokens, expected_logits = reference(cuda_model, inputs, STEPS)
    cache = DecodeCache(cuda_model, STEPS)
    first, _ = prefill(cuda_model, inputs, cache)
    mask = inputs["attention_mask"] if batch == 2 else None
    decoder = StaticDecode(cuda_model, cache, STEPS, attention_mask=mask, graph=True)
    assert decoder.graph is not None
    assert_one_copy(decoder, cache)
    tokens, logits = static_steps(decoder, first, STEPS)
    assert torch.equal(tokens, expected_tokens[:, 1:])
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)
    first, _ = prefill(cuda_model, inputs, cache)
    decoder.load(cache, mask)
    assert_one_copy(decoder, cache)
    assert torch.equal(decoder.run(first, STEPS), expected_tokens[:, 1:])  # replays, no host sync between
