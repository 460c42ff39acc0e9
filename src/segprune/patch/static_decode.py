"""Greedy decode over static per-layer KV buffers: the decode step a CUDA graph can capture.

A pruned prefill leaves every decoder layer a different number of keys (its live tokens), so one
`StaticCache` of one length does not fit. `StaticDecode` gives each layer its own pair of buffers,
`(batch, kv_heads, n_keys[l] + max_steps, head_dim)`: the prefill's keys and values are copied into
the first `n_keys[l]` slots, and decode step `t` writes slot `n_keys[l] + t` and attends over the
whole buffer with a mask that hides the slots not written yet. Every shape is then fixed, so on a
CUDA device the whole step (embedding, every layer, final norm, LM head, argmax, writing the token
back as the next input) is captured once as a CUDA graph and replayed; elsewhere the same step
runs eagerly, which is how CPU tests check it against the ordinary pruned decode.

    out = model(**inputs, use_cache=True, logits_to_keep=1)          # pruned or not
    decoder = StaticDecode(model, output_cache(model, out), max_steps=127)
    tokens = decoder.run(out.logits[:, -1:].argmax(-1), steps=127)   # (batch, 127), greedy

What it reads of the prefill (`decode_layout`): each layer's key count from the cache itself; from
the plan runner's state, when the model is pruned, the tokens seen so far and each layer's
sequence indices (for padding) and, for plans that renumber positions (PyramidDrop), how many image
tokens each layer dropped. Position ids continue the prefill's as the ordinary decode does: the
family says where (`Family.decode_start`, read at `load`: LLaVA counts the tokens seen; Qwen2-VL's
M-RoPE adds each sample's offset, the pruned prefill's `continuation` or the model's `rope_deltas`)
and how one step's ids look (`Family.step_positions`: Qwen's three equal components), so the step
itself only adds its device-side step counter to a per-sample start.

One copy of the KV cache: run the prefill into a `DecodeCache` (`segprune.patch.decode_cache`;
eagerly, or under `GraphedPrefill(..., cache=)`) and its per-layer buffers already have the room;
`StaticDecode` then adopts them (`adopted`) instead of allocating its own, and `load` of a prefill
that went into the same buffers copies nothing. Given any other cache it copies, as above.

Rules: families with `Family.static_decode` (LLaVA, Qwen2-VL / Qwen2.5-VL), SDPA or eager
attention; `load(cache)` takes the next prefill of the same layout (same batch and per-layer key
counts) into the same buffers, so one capture serves many prompts (Qwen: each prompt's own M-RoPE
offsets are read again). The model's own cache and the runner's state are not extended:
after `run`, `segprune.stats(model)` still describes the prefill.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from segprune.checks import check_int
from segprune.families import Family, family_of
from segprune.patch import _adapter
from segprune.patch.decode_cache import DecodeCache, DecodeLayer
from segprune.patch.transformers_api import TransformersAPI

__all__ = ["DecodeCache", "DecodeLayout", "StaticDecode", "StaticKV", "decode_layout"]

STATIC_ATTENTION = ("sdpa", "eager")


@dataclasses.dataclass(frozen=True)
class DecodeLayout:
    """What a decode step needs to know about the prefill it continues.

    Attributes:
        batch: samples.
        seq_len: tokens seen so far, counted without pruning (the next token's sequence index).
        n_keys: per layer, the keys its cache holds (its live tokens; the widest sample's where
            samples differ).
        shifts: per layer, how far a renumbering plan moved positions down: an int, or one int per
            sample where samples dropped different numbers (0 when positions are the original ones).
        key_seq: per layer, `(batch, n_keys)` sequence indices of the cached keys, an index not
            below `seq_len` marking a masked slot (a sample with fewer live tokens than the widest);
            None when every layer holds every token (unpruned).
        masked_slots: whether any layer has masked slots.
        continuation: the pruned prefill's `continuation` (the family's, for its decode positions);
            None when unpruned.
    """

    batch: int
    seq_len: int
    n_keys: tuple[int, ...]
    shifts: tuple[int | tuple[int, ...], ...]
    key_seq: list[torch.Tensor] | None
    masked_slots: bool = False
    continuation: Any = None


def decode_layout(model: nn.Module, cache: Any) -> DecodeLayout:
    """Return the per-layer layout of the prefill that filled `cache` (see `DecodeLayout`)."""
    family = _family(model)
    n_layers = family.text_config.num_hidden_layers
    layers = getattr(cache, "layers", None)
    if layers is None or len(layers) < n_layers or getattr(layers[0], "keys", None) is None:
        raise ValueError(
            "cache must be the filled KV cache of a prefill (a DynamicCache with one layer per decoder "
            f"layer, {n_layers} here); got {type(cache).__name__}"
        )
    n_keys = tuple(int(layer.keys.shape[-2]) for layer in layers[:n_layers])
    batch = int(layers[0].keys.shape[0])
    adapter = _adapter(model)
    if adapter is None:
        if len(set(n_keys)) != 1:
            raise ValueError(f"an unpruned model's layers should hold equal key counts, got {n_keys}")
        return DecodeLayout(batch, n_keys[0], n_keys, (0,) * n_layers, None)
    state = adapter.state
    if state is None or state.cache is not cache:
        raise ValueError(
            "cache is not the one the pruned model's last prefill filled; run the prefill through "
            "the pruned model and pass its output cache"
        )
    seen = tuple(int(k.shape[1]) for k in state.key_seq)
    if seen != n_keys:
        raise ValueError(f"the cache holds {n_keys} keys per layer but the prefill's state says {seen}")
    key_seq = list(state.key_seq)
    masked = any(bool((k >= state.seq_len).any()) for k in key_seq)
    shifts = _shifts(state)
    return DecodeLayout(batch, state.seq_len, n_keys, shifts, key_seq, masked, state.continuation)


def _shifts(state: Any) -> tuple[int | tuple[int, ...], ...]:
    # The shifts the runner's decode uses, fixed when the prefill ended (`ForwardState.shifts`): one
    # int per layer, or each sample's where samples differ, one int where they all agree.
    return tuple(
        shift[0] if isinstance(shift, tuple) and len(set(shift)) == 1 else shift for shift in state.shifts
    )


def _family(model: nn.Module) -> Family:
    family = family_of(model)
    if not family.static_decode:
        raise TypeError(f"static decode does not support the {family.name!r} family yet")
    return family


def _buffers(cache: Any, n_keys: tuple[int, ...], max_steps: int) -> tuple[list, list]:
    """Per layer, key and value buffers of `n_keys[l] + max_steps` slots: a `DecodeCache`'s own
    buffers (its prefill already in their first slots), else new zero-filled ones."""
    keys, values = [], []
    for i, (layer, n) in enumerate(zip(cache.layers, n_keys, strict=False)):
        if isinstance(layer, DecodeLayer):
            room = layer.capacity - n
            if room < max_steps:
                raise ValueError(
                    f"max_steps={max_steps} is out of range for this DecodeCache: layer {i} holds {n} "
                    f"keys in {layer.capacity} slots; valid: 1 <= value <= {room} (build the DecodeCache "
                    "with more max_steps)"
                )
            keys.append(layer.key_buffer[:, :, : n + max_steps])
            values.append(layer.value_buffer[:, :, : n + max_steps])
            continue
        b, h, _, d = layer.keys.shape
        device = layer.keys.device
        keys.append(torch.zeros(b, h, n + max_steps, d, dtype=layer.keys.dtype, device=device))
        dv = layer.values.shape[-1]
        values.append(torch.zeros(b, h, n + max_steps, dv, dtype=layer.values.dtype, device=device))
    return keys, values


def _same_memory(view: torch.Tensor, buffer: torch.Tensor) -> bool:
    """Whether `view` is `buffer`'s leading slots (same start, same strides)."""
    return view.data_ptr() == buffer.data_ptr() and view.stride() == buffer.stride()


class StaticKV:
    """Per-layer key/value buffers that decoder layers write one slot of per step (`update`).

    Layers call `update(keys, values, layer_idx, ...)` as they would on a transformers cache; the
    new key lands at `slots[layer_idx]` and the whole buffer comes back, masked by the caller.
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        self.keys = keys
        self.values = values
        self.slots: list[torch.Tensor | None] = [None] * len(keys)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        slot = self.slots[layer_idx]
        self.keys[layer_idx].index_copy_(2, slot, key_states)
        self.values[layer_idx].index_copy_(2, slot, value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def nbytes(self) -> int:
        """Bytes held by all buffers."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


class StaticDecode:
    """Greedy decode steps of `model` (pruned by `segprune.prune_` or not) over static KV buffers.

    Args:
        model: a `LlavaForConditionalGeneration`, `Qwen2VLForConditionalGeneration` or
            `Qwen2_5_VLForConditionalGeneration` (or a module holding one) with an LM head.
        cache: the KV cache its last prefill filled (`output_cache(model, out)`, or a
            `GraphedPrefill` output's `.cache`); a `DecodeCache` lends its buffers (no copy).
        max_steps: decode steps the buffers hold (tokens fed in after the prompt), at least 1 (at
            most a `DecodeCache`'s room).
        attention_mask: the prompt's `(batch, seq_len)` padding mask, if it had padding; new tokens'
            position ids then count real tokens only, as `generate()` numbers them.
        graph: capture the step as a CUDA graph (None: on CUDA devices only; True needs CUDA).
        warmup: eager steps before a capture (they are undone by re-loading the prefill).
    """

    def __init__(
        self,
        model: nn.Module,
        cache: Any,
        max_steps: int,
        *,
        attention_mask: torch.Tensor | None = None,
        graph: bool | None = None,
        warmup: int = 2,
    ) -> None:
        check_int("max_steps", max_steps, 1)
        check_int("warmup", warmup, 1)
        self.family = family = _family(model)
        self.head = getattr(model, "lm_head", None)
        if self.head is None:
            raise TypeError(f"static decode needs a model with an LM head, got {type(model).__name__}")
        impl = family.text_config._attn_implementation
        if impl not in STATIC_ATTENTION:
            raise ValueError(
                f"static decode runs on attention {list(STATIC_ATTENTION)}; the model uses {impl!r} "
                "(set_attn_implementation('sdpa') first)"
            )
        self.eager_mask = impl == "eager"
        self.layout = layout = decode_layout(model, cache)
        n_layers = len(layout.n_keys)
        self.layers = family.layers[:n_layers]
        self.api = TransformersAPI.of(self.layers[0])
        self.max_steps = max_steps
        first = cache.layers[0].keys
        self.device = device = first.device
        if graph is None:
            graph = device.type == "cuda"
        if graph and device.type != "cuda":
            raise ValueError(f"graph=True needs the model on a CUDA device, got {device}")
        self.kv = StaticKV(*_buffers(cache, layout.n_keys, max_steps))
        # Whether the buffers are the cache's own (a DecodeCache): its prefill is then already in place.
        self.adopted = self.shares(cache)
        # Layers that share a mask: equal key counts, and without padding or masked slots no other
        # difference.
        per_layer = attention_mask is not None or layout.masked_slots
        self._group_keys = list(range(n_layers)) if per_layer else list(layout.n_keys)
        self._groups = sorted(set(self._group_keys), key=self._group_keys.index)
        batch = layout.batch
        # Per mask group, the step at which each slot becomes visible: -1 for the prefill's keys,
        # `t` for the key written by step t, and a step never reached for padding.
        self._slot_step = {g: None for g in self._groups}
        self._slot_offsets = [torch.full((1,), n, dtype=torch.long, device=device) for n in layout.n_keys]
        # Per-sample position shifts as device tensors made now: a capture cannot copy from the host.
        self._shift_by = {
            shift: torch.tensor(shift, device=device)[:, None] if isinstance(shift, tuple) else shift
            for shift in set(layout.shifts)
        }
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.step_index = torch.zeros(1, dtype=torch.long, device=device)
        self.base_position = torch.zeros(batch, 1, dtype=torch.long, device=device)
        vocab = self.head.out_features
        self.logits = torch.zeros(batch, vocab, dtype=self.head.weight.dtype, device=device)
        self.tokens = torch.zeros(batch, max_steps, dtype=torch.long, device=device)
        self.steps_taken = 0
        self._padded = attention_mask is not None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.load(cache, attention_mask)
        if graph:
            self._capture(cache, attention_mask, warmup)

    # -- loading a prefill --------------------------------------------------------------------

    def load(self, cache: Any, attention_mask: torch.Tensor | None = None) -> None:
        """Take a prefill (same layout as the first) into the buffers, by copying its keys and values
        unless they are already there (`shares`); reset the steps."""
        layout = self._layout_of(cache)
        if (attention_mask is not None) != self._padded:
            built = "with" if self._padded else "without"
            got = "one" if attention_mask is not None else "none"
            raise ValueError(
                "attention_mask must be given exactly when the decoder was built with one (padded "
                f"prompts); built {built}, got {got}"
            )
        with torch.no_grad():
            for layer, keys, values, n in zip(
                cache.layers, self.kv.keys, self.kv.values, layout.n_keys, strict=False
            ):
                if not _same_memory(layer.keys, keys):  # a DecodeCache over these buffers: in place
                    keys[:, :, :n].copy_(layer.keys)
                if not _same_memory(layer.values, values):
                    values[:, :, :n].copy_(layer.values)
            self._set_masks(layout, attention_mask)
            # Where the first new token sits, per sample: the step adds its counter on the device.
            if attention_mask is None:
                counted = torch.full_like(self.base_position, layout.seq_len)
            else:
                counted = attention_mask.to(self.device).sum(dim=1, keepdim=True)
            start = self.family.decode_start(layout.seq_len, counted, layout.continuation)
            if tuple(start.shape) != tuple(self.base_position.shape):
                raise ValueError(
                    f"the {self.family.name} family's decode start has shape {tuple(start.shape)}; "
                    f"expected (batch, 1) = {tuple(self.base_position.shape)}"
                )
            self.base_position.copy_(start)
            self.step_index.zero_()
            self.tokens.zero_()
        self.layout = layout
        self.steps_taken = 0

    def shares(self, cache: Any) -> bool:
        """Whether `cache`'s layers are views of these buffers (a `DecodeCache` they were adopted from),
        so `load(cache)` copies nothing."""
        layers = getattr(cache, "layers", None) or []
        pairs = list(zip(layers, self.kv.keys, self.kv.values, strict=False))
        return len(pairs) == len(self.kv.keys) and all(
            getattr(layer, "keys", None) is not None
            and _same_memory(layer.keys, keys)
            and _same_memory(layer.values, values)
            for layer, keys, values in pairs
        )

    def _layout_of(self, cache: Any) -> DecodeLayout:
        """The layout of `cache`'s prefill, refusing one that does not fit these buffers."""
        layers = getattr(cache, "layers", None)
        if layers and getattr(layers[0], "keys", None) is not None and layers[0].keys.device != self.device:
            raise ValueError(
                f"cache is on {layers[0].keys.device}; the decoder's buffers are on {self.device}"
            )
        layout = decode_layout(self.family.vlm, cache)
        old = self.layout
        same = (layout.batch, layout.n_keys, layout.shifts) == (old.batch, old.n_keys, old.shifts)
        if not same or (layout.masked_slots and not old.masked_slots):
            raise ValueError(
                f"the prefill's layout (batch {layout.batch}, keys per layer {layout.n_keys}) differs from "
                f"the one the buffers were built for (batch {old.batch}, {old.n_keys}): build another "
                "StaticDecode"
            )
        return layout

    def _set_masks(self, layout: DecodeLayout, attention_mask: torch.Tensor | None) -> None:
        never = self.max_steps  # a step index no run reaches
        valid_seq = None if attention_mask is None else attention_mask.to(self.device).bool()
        for group in self._groups:
            layer = self._group_keys.index(group)
            n = layout.n_keys[layer]
            new = torch.arange(self.max_steps, device=self.device).expand(layout.batch, -1)
            if layout.key_seq is None:
                visible = torch.ones(layout.batch, n, dtype=torch.bool, device=self.device)
                if valid_seq is not None:
                    visible = valid_seq
            else:
                keys = layout.key_seq[layer]
                visible = keys < layout.seq_len  # a masked slot is never a key
                if valid_seq is not None:
                    visible = visible & valid_seq.gather(1, keys.clamp(max=layout.seq_len - 1))
            slot_step = torch.cat([torch.where(visible, -1, never), new], dim=1)
            if self._slot_step[group] is None:
                self._slot_step[group] = slot_step
            else:
                self._slot_step[group].copy_(slot_step)

    # -- the step -----------------------------------------------------------------------------

    def _masks(self, t: torch.Tensor) -> dict[Any, torch.Tensor]:
        masks = {}
        for group in self._groups:
            allowed = (self._slot_step[group] <= t)[:, None, None, :]  # (batch, 1, 1, slots)
            if self.eager_mask:
                dtype = self.kv.keys[0].dtype
                allowed = torch.zeros(allowed.shape, dtype=dtype, device=self.device).masked_fill(
                    ~allowed, torch.finfo(dtype).min
                )
            masks[group] = allowed
        return masks

    def _step(self) -> None:
        family, layout = self.family, self.layout
        t = self.step_index
        hidden = family.embed_tokens(self.token)
        positions = family.step_positions(self.base_position + t)
        rope = {shift: family.rope(hidden, positions - by) for shift, by in self._shift_by.items()}
        masks = self._masks(t)
        for i, layer in enumerate(self.layers):
            self.kv.slots[i] = self._slot_offsets[i] + t
            layer_pos, layer_rope = rope[layout.shifts[i]]
            hidden = self.api.call_layer(
                layer,
                hidden,
                attention_mask=masks[self._group_keys[i]],
                position_ids=layer_pos,
                position_embeddings=layer_rope,
                cache=self.kv,
                use_cache=True,
                extra={},
            )
        logits = self.head(family.norm(hidden)[:, -1])
        self.logits.copy_(logits)
        token = logits.argmax(dim=-1, keepdim=True)
        self.tokens.index_copy_(1, t, token)
        self.token.copy_(token)
        t.add_(1)

    def _capture(self, cache: Any, attention_mask: torch.Tensor | None, warmup: int) -> None:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(warmup):
                self._step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self._step()
        self.load(cache, attention_mask)  # undo what warm-up and capture wrote

    @torch.no_grad()
    def step(self, token: torch.Tensor | None = None) -> torch.Tensor:
        """Run one decode step on `token` `(batch, 1)` (None: the previous step's argmax).

        Returns the step's `(batch, vocab)` logits, a buffer the next step overwrites (clone to keep).
        """
        if self.steps_taken >= self.max_steps:
            raise ValueError(
                f"step {self.steps_taken + 1} is out of range: the buffers hold max_steps={self.max_steps} "
                "steps; load() a prefill again or build a StaticDecode with more steps"
            )
        if token is not None:
            if tuple(token.shape) != tuple(self.token.shape):
                raise ValueError(
                    f"token must be (batch, 1) = {tuple(self.token.shape)}, got {tuple(token.shape)}"
                )
            self.token.copy_(token)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._step()
        self.steps_taken += 1
        return self.logits

    @torch.no_grad()
    def run(self, first_token: torch.Tensor, steps: int) -> torch.Tensor:
        """Feed `first_token` `(batch, 1)`, then each step's argmax, for `steps` steps.

        Returns the `(batch, steps)` greedy tokens the steps produced (a view of a buffer). No host
        synchronisation happens between steps.
        """
        check_int("steps", steps, 1, self.max_steps - self.steps_taken)
        start = self.steps_taken
        self.step(first_token)
        for _ in range(steps - 1):
            self.step()
        return self.tokens[:, start : start + steps]
