"""A KV cache whose prefill lands in `StaticDecode`'s buffers: one copy of the keys and values, not two.

`StaticDecode` decodes over per-layer buffers of `n_keys[l] + max_steps` slots. Given an ordinary
cache it copies the prefill into the first `n_keys[l]` slots, so the prefill's cache and the buffers
exist side by side. A `DecodeCache` instead gives each layer one buffer with that room from the
start: the prefill's `update` (the model's own attention, or the plan runner's, pruned or not)
writes its keys and values into the first slots and the layer's `keys`/`values` are views of them;
`StaticDecode` then adopts the buffers as they are.

    cache = DecodeCache(model, max_steps=127)
    out = model(**inputs, use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache))
    decoder = StaticDecode(model, cache, max_steps=127)       # the same memory, no copy
    tokens = decoder.run(out.logits[:, -1:].argmax(-1), steps=127)
    cache.reset()                                             # the next prompt, into the same buffers
    out = model(**other, use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache))
    decoder.load(cache)                                       # nothing to copy

Each layer's buffer is sized at its first `update` (its key count plus `max_steps`, zero-filled so
the slots not written yet hold finite numbers), so nothing about a pruned plan needs knowing in
advance; `reset()` drops the contents and keeps the buffers, and a later prefill must fit them
(same batch, heads, head size, dtype and device, no more keys than the buffer has slots). Under
`segprune.GraphedPrefill(..., cache=cache)` the warm-up runs size the buffers outside the capture,
and the captured prefill writes into them. Ordinary cached decode steps also work: they append to
the buffer (sharing its slots past the prefill with a `StaticDecode` that adopted it). The buffers
are shared, not lent: a `StaticDecode` that adopted them and then `load`s some other cache copies
that cache over this one's prefill.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer

from segprune.checks import check_int
from segprune.families import family_of

__all__ = ["DecodeCache", "DecodeLayer"]


class DecodeLayer(DynamicLayer):
    """One decoder layer's keys and values in a buffer with `max_steps` slots to spare after its prefill.

    `keys` and `values` are views of the buffers' first `get_seq_length()` slots; `key_buffer` and
    `value_buffer` are the whole buffers (None until the first `update`).
    """

    def __init__(self, max_steps: int, index: int) -> None:
        super().__init__()
        self.max_steps = max_steps
        self.index = index
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    @property
    def capacity(self) -> int:
        """Slots in the buffers (0 before the first update)."""
        return 0 if self.key_buffer is None else self.key_buffer.shape[-2]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        if self.key_buffer is None:
            slots = key_states.shape[-2] + self.max_steps
            b, h, _, d = key_states.shape
            dv = value_states.shape[-1]
            self.key_buffer = torch.zeros(b, h, slots, d, dtype=key_states.dtype, device=self.device)
            self.value_buffer = torch.zeros(b, h, slots, dv, dtype=value_states.dtype, device=self.device)
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys and values after those held; return views of everything held."""
        start = self.get_seq_length()
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._check(key_states, value_states, start)
        end = start + key_states.shape[-2]
        self.key_buffer[:, :, start:end].copy_(key_states)
        self.value_buffer[:, :, start:end].copy_(value_states)
        self.keys = self.key_buffer[:, :, :end]
        self.values = self.value_buffer[:, :, :end]
        return self.keys, self.values

    def _check(self, key_states: torch.Tensor, value_states: torch.Tensor, start: int) -> None:
        keys, values = self.key_buffer, self.value_buffer
        for what, new, buffer in (("keys", key_states, keys), ("values", value_states, values)):
            fits = (
                new.dim() == 4
                and (new.shape[:2], new.shape[3]) == (buffer.shape[:2], buffer.shape[3])
                and new.dtype == buffer.dtype
                and new.device == buffer.device
            )
            if not fits:
                raise ValueError(
                    f"layer {self.index}: new {what} {tuple(new.shape)} {new.dtype} on {new.device} do not "
                    f"fit its buffer (batch, heads, slots, head_dim) = {tuple(buffer.shape)} {buffer.dtype} "
                    f"on {buffer.device}: build a new DecodeCache for this batch"
                )
        end = start + key_states.shape[-2]
        if end > self.capacity:
            raise ValueError(
                f"layer {self.index}: {end} keys ({start} held + {key_states.shape[-2]} new) exceed its "
                f"buffer of {self.capacity} slots; valid: at most {self.capacity} (a prefill of up to "
                f"{self.capacity - self.max_steps} keys, plus max_steps={self.max_steps}): build a "
                "larger DecodeCache"
            )

    def get_max_length(self) -> int:
        return self.capacity if self.key_buffer is not None else -1

    def reset(self) -> None:
        """Drop what the layer holds; keep the buffers for the next prefill."""
        self.keys = self.values = None
        self.is_initialized = False

    def _refuse(self, what: str) -> None:
        raise NotImplementedError(
            f"DecodeCache does not support {what}: its layers live in fixed buffers; use a DynamicCache"
        )

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._refuse("reorder_cache (beam search)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._refuse("batch_repeat_interleave")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._refuse("batch_select_indices")

    def offload(self) -> None:
        self._refuse("offloading")


class DecodeCache(Cache):
    """A KV cache with, per decoder layer of `model`, room for `max_steps` decode steps after its prefill.

    Args:
        model: the model (pruned or not) whose prefills fill it; a module holding a registered family.
        max_steps: decode steps each layer's buffer holds past its prefill, at least 1.
    """

    def __init__(self, model: nn.Module, max_steps: int) -> None:
        check_int("max_steps", max_steps, 1)
        config = family_of(model).text_config
        kinds = getattr(config, "layer_types", None) or []
        if any(kind != "full_attention" for kind in kinds):
            raise ValueError(
                "DecodeCache holds full-attention layers only; the model's layer_types are "
                f"{sorted(set(kinds))}"
            )
        super().__init__(layers=[DecodeLayer(max_steps, i) for i in range(config.num_hidden_layers)])
        self.max_steps = max_steps

    def nbytes(self) -> int:
        """Bytes held by all layers' buffers."""
        return sum(
            t.numel() * t.element_size()
            for layer in self.layers
            for t in (layer.key_buffer, layer.value_buffer)
            if t is not None
        )
