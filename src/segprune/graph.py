"""A prefill, pruned or not, replayed as one CUDA graph: the low-overhead path for small batches.

At batch 1 a 7B decoder is bound by Python and kernel launches, so pruning buys little until the
launches go (docs/benchmarks.md). Exact budgets make every shape of a pruned prefill depend on the
prompt's layout alone, so the whole prefill — vision tower, projector, selection (superpixels,
scores, merging) and decoder — can be captured once and replayed:

    runner = segprune.GraphedPrefill(model, input_ids, pixel_values)   # captures (CUDA only)
    out = runner(input_ids, pixel_values)      # same shapes and layout, new values: replays
    out.logits, out.last_hidden_state, out.cache                       # valid until the next call

`prefill(model, input_ids, pixel_values)` is the same computation run eagerly (any device).

Into `StaticDecode`'s buffers, with one copy of the KV cache: give both a `DecodeCache`, which
every call resets and the captured prefill writes into (its buffers are sized by the warm-up, outside
the capture, so they are ordinary allocations, not the graph's), then decode over the same memory:

    cache = DecodeCache(model, max_steps=127)
    runner = segprune.GraphedPrefill(model, input_ids, pixel_values, cache=cache)
    out = runner(input_ids, pixel_values)                  # out.cache is cache
    decoder = StaticDecode(model, cache, max_steps=127)    # adopts its buffers

Rules: no padding (every sample the same length); each call's prompt has the layout of the one
captured (image tokens at the same positions; a [SEG] in every sample when the method scores by
[SEG]) — checked at every call, which costs one small comparison and one synchronisation before the
replay; outputs live in the graph's memory and are overwritten by the next call (clone to keep).
The returned cache continues with ordinary (eager) cached decode steps, as after `model(...)`;
`segprune.stats(model)` describes the replayed prefill. A method that reads values on the host
during its forward cannot be captured: the warm-up runs under
`torch.cuda.set_sync_debug_mode("error")`, so construction names the synchronising call instead of
failing inside the capture. The registered methods make no such read (their checks are
device-side assertions); custom selectors must do the same to be captured.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from segprune.families import Family, family_of
from segprune.patch import _adapter
from segprune.patch.decode_cache import DecodeCache
from segprune.patch.state import StaticLayout
from segprune.patch.transformers_api import TransformersAPI

__all__ = ["GraphedPrefill", "PrefillOutput", "prefill"]


@dataclasses.dataclass
class PrefillOutput:
    """The prefill's results: next-token logits `(batch, 1, vocab)` (None for a bare LlavaModel), the
    final-norm hidden states `(batch, L, D)` at the unpruned length, and the filled KV cache.

    Decode on with `segprune.patch.transformers_api.cache_kwargs(model, out.cache)`, which passes the
    cache under the name the installed transformers reads (`cache` from 5.24, `past_key_values` before).
    """

    logits: torch.Tensor | None
    last_hidden_state: torch.Tensor
    cache: Any

    @property
    def past_key_values(self) -> Any:
        """The KV cache, under transformers' name before 5.24."""
        return self.cache


@dataclasses.dataclass(frozen=True)
class _Layout:
    """The prompt facts a captured prefill depends on."""

    shape: tuple[int, int]
    image_seq: torch.Tensor  # (batch, N) sequence index of each image token, on the model's device
    needs_seg: bool

    @property
    def n_image(self) -> int:
        return self.image_seq.shape[1]


def _family(model: nn.Module) -> Family:
    family = family_of(model)
    if not family.graphable:
        raise TypeError(f"the graph path does not support the {family.name!r} family yet")
    return family


def _layout(model: nn.Module, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> _Layout:
    family = _family(model)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    ids = input_ids.detach().cpu()
    prompt = family.prompt(ids, None)
    image_mask = prompt["image_mask"]
    counts = image_mask.sum(dim=1)
    expected = family.expected_image_tokens()
    if int(counts.min()) != int(counts.max()) or (expected and int(counts[0]) != expected):
        wanted = f"the model's {expected}" if expected else "the same number of"
        raise ValueError(f"every sample must hold {wanted} image tokens; got {counts.tolist()} per sample")
    n_images = family.count_images(pixel_values)
    if n_images != ids.shape[0]:
        raise ValueError(
            f"pixel_values holds {n_images} images for {ids.shape[0]} samples; one image per sample"
        )
    adapter = _adapter(model)
    needs_seg = False
    if adapter is not None:
        adapter.config.plan(int(counts[0]), adapter.n_layers)  # a plan that does not fit raises here
        needs_seg = adapter.config.needs_seg_token
        if needs_seg:
            if adapter.seg_token_id is None:
                raise ValueError("the method scores by [SEG] attention: prune_(..., seg_token_id=...)")
            if not bool((ids == adapter.seg_token_id).any(dim=1).all()):
                raise ValueError(
                    f"the method scores by [SEG] attention but some samples hold no [SEG] (id "
                    f"{adapter.seg_token_id}); use score_token='last'"
                )
    order = torch.sort((~image_mask).to(torch.int8), dim=1, stable=True).indices[:, : int(counts[0])]
    return _Layout(tuple(ids.shape), order.to(input_ids.device), needs_seg)


def _run(
    model: nn.Module,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor,
    layout: _Layout,
    cache: DecodeCache | None = None,
) -> PrefillOutput:
    family = _family(model)
    # The decoder's input embeddings: text embeddings with the projected image features placed.
    embeds = family.input_embeddings(input_ids, pixel_values, layout.image_seq)
    adapter = _adapter(model)
    if adapter is not None:  # what its top-level pre-hook would have captured
        adapter.expect_prompt(input_ids)
    language_model = family.language_model
    api = TransformersAPI.of(language_model)
    given = {}
    if cache is not None:  # a prefill starts from an empty cache; the buffers stay
        cache.reset()
        given = api.cache_kwargs(cache)
    out = language_model(inputs_embeds=embeds, use_cache=True, return_dict=True, **given)
    hidden = out.last_hidden_state
    head = getattr(model, "lm_head", None)
    logits = head(hidden[:, -1:]) if head is not None else None
    return PrefillOutput(logits, hidden, api.read_cache(out))


def _check_cache(cache: Any) -> DecodeCache | None:
    if cache is not None and not isinstance(cache, DecodeCache):
        raise TypeError(
            "cache must be a segprune.patch.decode_cache.DecodeCache (the buffers the prefill writes "
            f"into) or None, got {type(cache).__name__}"
        )
    return cache


@torch.no_grad()
def prefill(
    model: nn.Module,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor,
    *,
    cache: DecodeCache | None = None,
) -> PrefillOutput:
    """Run the prefill `GraphedPrefill` captures, eagerly: logits of the last position, hidden states, cache.

    Equal to `model(input_ids=..., pixel_values=..., use_cache=True)` for unpadded prompts; the graph
    path's reference. `cache`: a `DecodeCache` to fill (reset first) instead of a new DynamicCache.
    """
    layout = _layout(model, input_ids, pixel_values)
    return _run(model, input_ids, pixel_values, layout, _check_cache(cache))


@contextlib.contextmanager
def _static(model: nn.Module, layout: _Layout, generator: torch.Generator | None) -> Iterator[None]:
    adapter = _adapter(model)
    if adapter is None:
        yield
        return
    adapter.static = StaticLayout(layout.n_image, generator)
    try:
        yield
    finally:
        adapter.static = None


@contextlib.contextmanager
def _sync_errors() -> Iterator[None]:
    """Make every host synchronisation raise, naming the call (instead of a failed graph capture)."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


class GraphedPrefill:
    """The prefill of `model` (pruned by `segprune.prune_` or not) captured as one CUDA graph.

    Args:
        model: a model of a family with a graph path (LLaVA: `LlavaForConditionalGeneration`,
            `LlavaModel`, or a module holding one) on a CUDA device. Prune it before capturing;
            re-capture after `prune_`/`unprune`.
        input_ids, pixel_values: an example prompt: its shapes and layout are fixed from now on.
        warmup: eager runs before the capture (at least 1).
        cache: a `DecodeCache` the prefill writes its keys and values into (reset at every call; the
            output's `.cache`), so a `StaticDecode` adopting it decodes with no second copy; None: a
            cache in the graph's own memory.
    """

    def __init__(
        self,
        model: nn.Module,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        *,
        warmup: int = 2,
        cache: DecodeCache | None = None,
    ):
        if input_ids.device.type != "cuda":
            raise ValueError(
                f"GraphedPrefill needs the model and inputs on a CUDA device, got input_ids on "
                f"{input_ids.device}; use segprune.graph.prefill for the same computation eagerly"
            )
        if warmup < 1:
            raise ValueError(f"warmup={warmup} is out of range; valid: >= 1")
        self.model = model
        self.cache = _check_cache(cache)
        self.layout = _layout(model, input_ids, pixel_values)
        # Where each call's image tokens must be, for `check`: built once, not per call.
        self._image_mask = torch.zeros(self.layout.shape, dtype=torch.bool, device=input_ids.device)
        self._image_mask.scatter_(1, self.layout.image_seq, True)
        self.family = _family(model)
        self.input_ids = input_ids.clone()
        self.pixel_values = pixel_values.clone()
        adapter = _adapter(model)
        self.adapter = adapter
        self.seed = int(getattr(adapter.config, "seed", 0)) if adapter is not None else 0
        self.generator = torch.Generator(device=input_ids.device) if adapter is not None else None

        stream = torch.cuda.Stream(input_ids.device)
        stream.wait_stream(torch.cuda.current_stream(input_ids.device))
        with torch.no_grad(), torch.cuda.stream(stream), _static(model, self.layout, self.generator):
            for _ in range(warmup):
                self._seed()
                with _sync_errors():
                    _run(model, self.input_ids, self.pixel_values, self.layout, self.cache)
        torch.cuda.current_stream(input_ids.device).wait_stream(stream)

        self.graph = torch.cuda.CUDAGraph()
        if self.generator is not None:
            self.graph.register_generator_state(self.generator)
        self._seed()
        with torch.no_grad(), _static(model, self.layout, self.generator), torch.cuda.graph(self.graph):
            self.output = _run(model, self.input_ids, self.pixel_values, self.layout, self.cache)
        # What the capture left behind for decode steps and stats; restored before each replay returns,
        # since decode steps extend both.
        self._state = adapter.state if adapter is not None else None
        self._key_seq = list(self._state.key_seq) if self._state is not None else []
        self._cache_layers = [(layer.keys, layer.values) for layer in self.output.cache.layers]

    def _seed(self) -> None:
        if self.generator is not None:
            self.generator.manual_seed(self.seed)

    def check(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> None:
        """Raise `ValueError` unless a call with these inputs can replay the captured graph."""
        layout = self.layout
        if tuple(input_ids.shape) != layout.shape or pixel_values.shape != self.pixel_values.shape:
            raise ValueError(
                f"captured for input_ids {layout.shape} and pixel_values {tuple(self.pixel_values.shape)}; "
                f"got {tuple(input_ids.shape)} and {tuple(pixel_values.shape)}: "
                "capture another GraphedPrefill"
            )
        mask = self._image_mask
        bad = (self.family.prompt(input_ids.to(mask.device), None)["image_mask"] != mask).any()
        if layout.needs_seg:
            bad = bad | ~(input_ids == self.adapter.seg_token_id).any(dim=1).all()
        if bool(bad):  # the one synchronisation of a call
            raise ValueError(
                "the prompt's layout differs from the captured one (image tokens elsewhere, or a sample "
                "without [SEG] where the method scores by it): capture another GraphedPrefill"
            )

    @torch.no_grad()
    def __call__(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor, *, check: bool = True
    ) -> PrefillOutput:
        """Replay the prefill on new inputs; see the module docstring for the rules."""
        if check:
            self.check(input_ids, pixel_values)
        self.input_ids.copy_(input_ids)
        self.pixel_values.copy_(pixel_values)
        self._seed()
        self.graph.replay()
        cache = self.output.cache
        for layer, (keys, values) in zip(cache.layers, self._cache_layers, strict=True):
            layer.keys, layer.values = keys, values
        if self._state is not None:
            self.adapter.state = dataclasses.replace(
                self._state, key_seq=list(self._key_seq), seq_len=self.layout.shape[1]
            )
        return self.output
