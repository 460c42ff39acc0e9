"""Replay recorded live sets: prune with exactly the image tokens a previous forward kept."""

from __future__ import annotations

from dataclasses import dataclass, field

import lazy_loader

from segprune.methods.base import MethodConfig
from segprune.methods.plan import Keep, Reactivate, SelectContext, TokenPlan

torch = lazy_loader.load("torch")  # configs are built where torch is not imported (the CLI's --help)


@dataclass(frozen=True, eq=False)
class Fixed:
    """A selector that returns given `(batch, count)` image-token indices.

    `check` verifies the indices are live (a host sync); benchmarks of plain index dropping turn it off.
    """

    indices: torch.Tensor
    check: bool = True

    def __call__(
        self, scores: torch.Tensor | None, live: torch.Tensor, count: int, context: SelectContext
    ) -> torch.Tensor:
        indices = self.indices.to(live.device)
        if indices.shape != (live.shape[0], count):
            raise ValueError(
                f"recorded indices have shape {tuple(indices.shape)}, expected {(live.shape[0], count)}"
            )
        if self.check and not bool(torch.isin(indices, live).all()):
            raise ValueError("recorded indices include tokens that are not live at this layer")
        return indices


@dataclass(frozen=True, eq=False)
class ReplayConfig(MethodConfig):
    """Prune with recorded live sets, no scoring: `kept[l]` is layer l's `(batch, n_live)` indices.

    Not a registered method: it exists to check a method against a recompute with the same live
    sets, and to time plain index dropping. Build it with `ReplayConfig.from_stats(stats(model))`.
    """

    name = "replay"
    kept: tuple[torch.Tensor, ...] = field(default=())
    check: bool = True
    renumber: bool = False

    def validate(self) -> None:
        if not self.kept:
            raise ValueError("ReplayConfig.kept must hold one (batch, n_live) tensor per decoder layer")

    @classmethod
    def from_stats(cls, stats, check: bool = True) -> ReplayConfig:
        """Replay the live sets of the forward `stats` describes (`check=False`: trust them, no sync)."""
        kept = tuple(k.detach().clone() for k in stats.kept_indices)
        return cls(kept=kept, check=check, renumber=stats.renumbered)

    def plan(self, n_image: int, n_layers: int) -> TokenPlan:
        # Comparing recorded sets reads device tensors on the host: done once per shape, so that
        # prefills (and CUDA graph captures) after the first make no synchronisation here.
        plans = self.__dict__.setdefault("_plans", {})
        if (n_image, n_layers) not in plans:
            plans[n_image, n_layers] = self._plan(n_image, n_layers)
        return plans[n_image, n_layers]

    def _plan(self, n_image: int, n_layers: int) -> TokenPlan:
        if len(self.kept) != n_layers:
            raise ValueError(
                f"ReplayConfig has live sets for {len(self.kept)} layers; the model has {n_layers}"
            )
        steps = []
        previous = None
        for layer, kept in enumerate(self.kept):
            full = kept.shape[1] == n_image
            if previous is None:
                if not full:
                    steps.append(Keep(layer, kept.shape[1], Fixed(kept, self.check)))
            elif full and previous.shape[1] < n_image:
                steps.append(Reactivate(layer))
            elif not torch.equal(kept, previous):
                steps.append(Keep(layer, kept.shape[1], Fixed(kept, self.check)))
            previous = kept
        return TokenPlan(n_image, n_layers, tuple(steps), renumber=self.renumber)
