"""What the installed `transformers` expects: how a decoder layer is called and how the cache travels.

transformers 5.24 renamed the KV cache's argument and output field from `past_key_values` to `cache`
(the old name stays behind a deprecation shim until 5.40). segprune calls decoder layers itself and
returns the language model's output, so it must use the name the installed version reads: the old
name costs a FutureWarning, and a cache that arrives under a name the adapter does not read is lost
without an error (every decode step then runs as a new prefill). The name is read once per class from
its forward signature, not per call; when transformers renames it again, this file is the one to change.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

CACHE_NAMES = ("cache", "past_key_values")  # newest first


@functools.cache
def _cache_name(cls: type) -> str:
    parameters = inspect.signature(cls.forward).parameters  # follows the decorators' __wrapped__
    for name in CACHE_NAMES:
        if name in parameters:
            return name
    raise TypeError(
        f"{cls.__module__}.{cls.__name__}.forward takes none of {list(CACHE_NAMES)}: segprune does not "
        "know how this transformers version passes the KV cache"
    )


@dataclass(frozen=True)
class TransformersAPI:
    """The cache's name for one model class, with the calls that depend on it."""

    cache_name: str

    @classmethod
    def of(cls, module: nn.Module) -> TransformersAPI:
        """The API `module`'s forward follows (decided once per class)."""
        return cls(_cache_name(type(module)))

    def cache_kwargs(self, cache: Any) -> dict[str, Any]:
        """The keyword argument that hands `cache` to a forward of this API."""
        return {self.cache_name: cache}

    def pop_cache(self, kwargs: dict[str, Any]) -> Any:
        """Remove the cache from a caller's keyword arguments, given under either name, and return it."""
        given = {name: kwargs.pop(name) for name in CACHE_NAMES if name in kwargs}
        found = [cache for cache in given.values() if cache is not None]
        if len(found) > 1 and found[0] is not found[1]:
            raise ValueError(f"got two different caches as {' and '.join(given)}; pass one")
        return found[0] if found else None

    def read_cache(self, output: Any) -> Any:
        """The cache a model output of this API carries (None when it has none)."""
        return getattr(output, self.cache_name, None)

    def model_output(self, last_hidden_state: torch.Tensor, cache: Any, hidden_states: Any) -> Any:
        """A decoder's `BaseModelOutputWithPast`, its cache under the field the caller reads."""
        from transformers.modeling_outputs import BaseModelOutputWithPast

        return BaseModelOutputWithPast(
            last_hidden_state=last_hidden_state,
            hidden_states=hidden_states,
            **self.cache_kwargs(cache),
        )

    def call_layer(
        self,
        layer: nn.Module,
        hidden: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        cache: Any,
        use_cache: bool,
        extra: dict[str, Any],
    ) -> torch.Tensor:
        """Run one decoder layer; `extra` holds the caller's pass-through keyword arguments."""
        out = layer(
            hidden,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **self.cache_kwargs(cache),
            **extra,
        )
        return out[0] if isinstance(out, tuple) else out


def cache_kwargs(model: nn.Module, cache: Any) -> dict[str, Any]:
    """`{name: cache}` for a decode step through `model`'s forward, under the name it reads."""
    return TransformersAPI.of(model).cache_kwargs(cache)


def output_cache(model: nn.Module, output: Any) -> Any:
    """The KV cache in an output of `model`'s forward."""
    return TransformersAPI.of(model).read_cache(output)
