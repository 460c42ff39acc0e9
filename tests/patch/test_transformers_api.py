"""The installed transformers' cache API: detected once, accepted under either name, never warned about."""

from __future__ import annotations

import warnings

import pytest
import torch
from packaging.version import Version
from transformers import __version__ as transformers_version
from transformers.cache_utils import DynamicCache

import segprune
from conftest import EXAMPLES
from segprune.bench import time_decode
from segprune.graph import prefill
from segprune.models import tiny_llava_inputs
from segprune.patch.transformers_api import CACHE_NAMES, TransformersAPI, cache_kwargs, output_cache


@pytest.fixture(autouse=True)
def _unpruned(model):
    yield
    segprune.unprune(model)


def test_the_installed_versions_name_is_detected(model):
    expected = "cache" if Version(transformers_version) >= Version("5.24") else "past_key_values"
    layer = model.model.language_model.layers[0]
    assert TransformersAPI.of(layer).cache_name == expected
    assert TransformersAPI.of(model).cache_name == expected
    segprune.prune_(model, EXAMPLES["fastv"])
    assert segprune.patch._adapter(model).api.cache_name == expected


def test_a_forward_without_a_cache_argument_is_refused():
    class NoCache(torch.nn.Module):
        def forward(self, hidden_states):
            return hidden_states

    with pytest.raises(TypeError, match=r"NoCache.forward takes none of \['cache', 'past_key_values'\]"):
        TransformersAPI.of(NoCache())


@pytest.mark.parametrize("name", CACHE_NAMES)
def test_the_cache_is_taken_under_either_name(name):
    api = TransformersAPI("cache")
    cache = DynamicCache()
    kwargs = {name: cache, "other": 1}
    assert api.pop_cache(kwargs) is cache
    assert kwargs == {"other": 1}
    same = {"cache": cache, "past_key_values": cache}
    assert api.pop_cache(same) is cache and not same
    assert api.pop_cache({"past_key_values": None}) is None


def test_two_different_caches_are_an_error():
    with pytest.raises(ValueError, match="two different caches as cache and past_key_values"):
        TransformersAPI("cache").pop_cache({"cache": DynamicCache(), "past_key_values": DynamicCache()})


@torch.no_grad()
@pytest.mark.parametrize("name", ["fastv", "csp", "visionzip"])
def test_decoding_under_either_name_gives_the_same_step(model, name):
    """A caller on an older convention (past_key_values) and one on the newer (cache) decode alike."""
    inputs = tiny_llava_inputs(model, batch=2, prompt_lengths=(6,), left_pad=True)
    segprune.prune_(model, EXAMPLES[name])
    steps = []
    for cache_name in CACHE_NAMES:
        out = model(**inputs, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the old name may be deprecated here
            step = model(input_ids=token, use_cache=True, **{cache_name: output_cache(model, out)})
        steps.append(step.logits)
        assert output_cache(model, step).get_seq_length() == output_cache(model, out).get_seq_length()
    assert torch.equal(steps[0], steps[1])


@torch.no_grad()
def test_segprunes_own_calls_raise_no_deprecation(model, capfd):
    """generate(), a bench decode and the eager graph prefill, pruned: no FutureWarning, no log line."""
    inputs = tiny_llava_inputs(model, batch=2, prompt_lengths=(5, 8), left_pad=True)
    unpadded = tiny_llava_inputs(model, batch=1, prompt_lengths=(6,))
    segprune.prune_(model, EXAMPLES["fastv"])
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
        time_decode(model, unpadded, steps=2, repeats=1)
        out = prefill(model, unpadded["input_ids"], unpadded["pixel_values"])
        model(input_ids=out.logits.argmax(-1), use_cache=True, **cache_kwargs(model, out.cache))
    messages = [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not messages
    printed = capfd.readouterr()
    assert "deprecated" not in printed.err + printed.out
