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

    `image_counts`: each sample's image-token count N_b when the recorded batch ran in masked slots
    (`PruneStats.image_counts`; `kept` rows then end in -1 padding), else None. The runner asks such a
    batch's plan once per N_b, so each sample's live sets are found by its N_b: the samples with
    image tokens must hold different counts.
    """

    name = "replay"
    kept: tuple[torch.Tensor, ...] = field(default=())
    check: bool = True
    renumber: bool = False
    image_counts: tuple[int, ...] | None = None

    def validate(self) -> None:
        if not self.kept:
            raise ValueError("ReplayConfig.kept must hold one (batch, n_live) tensor per decoder layer")
        if self.image_counts is None:
            return
        batch = self.kept[0].shape[0]
        if len(self.image_counts) != batch:
            raise ValueError(
                f"ReplayConfig.image_counts={self.image_counts} has {len(self.image_counts)} entries; "
                f"the live sets are of a batch of {batch}: give one N_b per sample"
            )
        first: dict[int, int] = {}
        for b, n in enumerate(self.image_counts):
            if n and n in first:
                raise ValueError(
                    f"ReplayConfig.image_counts={self.image_counts}: samples {first[n]} and {b} both hold "
                    f"{n} image tokens. A batch whose samples differ (masked slots) is planned per "
                    "image-token count and selected one sample at a time without its batch index, so "
                    "a replay cannot tell those samples' live sets apart. Replay each such sample in a "
                    "forward of its own: ReplayConfig.from_stats(stats, sample=b) (valid b: 0 to "
                    f"{batch - 1})"
                )
            first.setdefault(n, b)

    @classmethod
    def from_stats(cls, stats, check: bool = True, sample: int | None = None) -> ReplayConfig:
        """Replay the live sets of the forward `stats` describes (`check=False`: trust them, no sync).

        `sample`: replay only that sample's live sets, for a forward of that sample alone (batch 1).
        A batch that ran in masked slots (its samples differ) replays as one batch when its samples
        with image tokens hold different numbers of them (see `image_counts`); otherwise this raises
        and each sample replays alone through `sample`.
        """
        if sample is not None:
            batch = stats.live_tokens.shape[1]
            if isinstance(sample, bool) or not isinstance(sample, int) or not 0 <= sample < batch:
                raise ValueError(
                    f"sample={sample!r} is not a sample of the recorded batch of {batch}; "
                    f"valid: 0 to {batch - 1}"
                )
            kept = tuple(k.detach().clone()[None] for k in stats.kept_of(sample))
            return cls(kept=kept, check=check, renumber=stats.renumbered)
        kept = tuple(k.detach().clone() for k in stats.kept_indices)
        counts = None if stats.image_counts is None else tuple(int(n) for n in stats.image_counts)
        return cls(kept=kept, check=check, renumber=stats.renumbered, image_counts=counts)

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
        if self.image_counts is not None:
            return self._sample_plan(n_image, n_layers)
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

    def _live_sets(self, b: int) -> list[torch.Tensor]:
        """Sample `b`'s live indices per layer, without the -1 padding of masked slots."""
        return [kept[b][kept[b] >= 0] for kept in self.kept]

    def _sample_plan(self, n_image: int, n_layers: int) -> TokenPlan:
        """The plan of the one recorded sample with `n_image` image tokens, in a masked-slot batch.

        Every sample's plan has the same steps (the runner requires it): a step at each layer where
        any sample's live set changes, the samples whose set stays keeping it as it is.
        """
        counts = self.image_counts
        if n_image not in counts:
            raise ValueError(
                f"ReplayConfig recorded samples with {sorted(set(counts) - {0})} image tokens, not "
                f"{n_image}; replay the same inputs the live sets were recorded on"
            )
        sets = {b: self._live_sets(b) for b, n in enumerate(counts) if n}
        steps = []
        for layer in range(n_layers):
            before = {
                b: s[layer - 1] if layer else torch.arange(counts[b], device=s[0].device)
                for b, s in sets.items()
            }
            now = {b: s[layer] for b, s in sets.items()}
            if all(torch.equal(now[b], before[b]) for b in sets):
                continue
            back = [b for b in sets if len(now[b]) == counts[b] and len(before[b]) < counts[b]]
            if back and any(len(now[b]) < counts[b] for b in sets):
                raise ValueError(
                    f"the recorded live sets make sample {back[0]} live again at layer {layer} while "
                    "another stays pruned; a recorded forward reactivates every sample together"
                )
            if back:
                steps.append(Reactivate(layer))
                continue
            mine = now[counts.index(n_image)][None]
            steps.append(Keep(layer, mine.shape[1], Fixed(mine, self.check)))
        return TokenPlan(n_image, n_layers, tuple(steps), renumber=self.renumber)
