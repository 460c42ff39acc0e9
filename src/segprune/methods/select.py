"""Selectors: given scores over the live image tokens, choose exactly `count` per sample."""

from __future__ import annotations

from dataclasses import dataclass

import lazy_loader

from segprune.methods.plan import SelectContext

torch = lazy_loader.load("torch")  # configs are built where torch is not imported (the CLI's --help)


@dataclass(frozen=True)
class TopK:
    """Keep the `count` highest-scoring live tokens (global top-k, ties to the lower index)."""

    def __call__(
        self, scores: torch.Tensor | None, live: torch.Tensor, count: int, context: SelectContext
    ) -> torch.Tensor:
        if scores is None:
            raise ValueError("TopK needs scores; give the Keep step an AttentionScore")
        # A stable descending sort breaks ties by position, so equal scores never make the choice
        # depend on the backend's top-k kernel.
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :count]
        return live.gather(1, order).sort(dim=-1).values
