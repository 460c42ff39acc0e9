"""A new method is one file: a throwaway "random keep" defined and registered here runs through every
registry-driven part (plan, `prune_`, depth mapping, both budget axes, sweep rows, demo rows) with
nothing else edited. The fixture unregisters it, so other tests see only the real methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

import segprune
from conftest import HostSyncCounter
from segprune.demo import demo_rows
from segprune.eval.budgets import achieved_reduction, budget_config, config_for, paper_config, variants
from segprune.eval.sweep import plan_sweep, select_labels
from segprune.methods import METHODS, MethodConfig, register, scale_layers, unregister
from segprune.methods.base import check_fits
from segprune.methods.counts import paper_count, round_half_up
from segprune.methods.fastv import PAPER_LAYER, drop_layer
from segprune.methods.plan import Keep, SelectContext, TokenPlan
from segprune.models import tiny_llava_inputs


@dataclass(frozen=True)
class RandomTokens:
    """Keep `count` live tokens drawn uniformly at random from the prefill's seeded generator."""

    def __call__(
        self, scores: torch.Tensor | None, live: torch.Tensor, count: int, context: SelectContext
    ) -> torch.Tensor:
        noise = torch.rand(live.shape, generator=context.generator, device=live.device)
        return live.gather(1, noise.argsort(dim=1)[:, :count].sort(dim=1).values)


@dataclass(frozen=True)
class RandomKeepConfig(MethodConfig):
    """Random keep: before decoder layer `layer`, keep `count` random image tokens (None: all).

    Everything the registry-driven code needs: a name, a label, the layer field, validation, a plan,
    the identity config and the two budget rules.
    """

    name = "randomkeep"
    label = "Random"
    layer_fields = ("layer",)
    layer: int = 2
    count: int | None = 4
    seed: int = 0

    def validate(self) -> None:
        self.check_int("layer", lo=1)
        if self.count is not None:
            self.check_int("count", lo=1)
        self.check_int("seed", lo=0)

    def plan(self, n_image: int, n_layers: int) -> TokenPlan:
        check_fits(self, "layer", self.layer, n_layers)
        count = n_image if self.count is None else min(self.count, n_image)
        return TokenPlan(n_image, n_layers, (Keep(self.layer, count, RandomTokens()),))

    @classmethod
    def keep_all(cls) -> RandomKeepConfig:
        return cls(layer=1, count=None)

    @classmethod
    def budget_fields(cls, reduction: float, n_layers: int, n_image: int) -> dict[str, Any]:
        layer = drop_layer(n_layers)
        kept = ((1 - reduction) * n_image * n_layers - layer * n_image) / (n_layers - layer)
        return {"layer": layer, "count": min(n_image, max(1, round_half_up(kept)))}

    @classmethod
    def paper_fields(cls, reduction: float, n_layers: int, n_image: int, **options: Any) -> dict[str, Any]:
        return {"layer": PAPER_LAYER, "count": paper_count(reduction, n_image)}


@pytest.fixture
def random_keep():
    register(RandomKeepConfig)
    yield RandomKeepConfig
    unregister(RandomKeepConfig.name)


def test_registers_and_unregisters(random_keep):
    assert METHODS["randomkeep"] is RandomKeepConfig
    assert MethodConfig.from_dict({"method": "randomkeep", "count": 3}) == RandomKeepConfig(count=3)
    with pytest.raises(ValueError, match=r"RandomKeepConfig.count=0 is out of range"):
        RandomKeepConfig(count=0)


def test_the_registry_is_back_to_the_real_methods():
    assert "randomkeep" not in METHODS
    with pytest.raises(ValueError, match="unknown method 'randomkeep'"):
        unregister("randomkeep")


@torch.no_grad()
def test_prunes_the_tiny_model(random_keep, model, monkeypatch):
    inputs = tiny_llava_inputs(model, batch=2, prompt_lengths=(5, 8), left_pad=True)
    reference = model(**inputs).logits
    config = RandomKeepConfig(layer=2, count=5)
    assert config.sync_free and config.replayable and not config.prunes_before_decoder
    try:
        segprune.prune_(model, config)
        counter = HostSyncCounter(monkeypatch)
        lm = model.model.language_model
        hooks = [
            lm.register_forward_pre_hook(lambda *a: setattr(counter, "active", True)),
            lm.register_forward_hook(lambda *a: setattr(counter, "active", False)),
        ]
        logits = model(**inputs).logits
        for hook in hooks:
            hook.remove()
        assert counter.calls == ["tolist"], counter.calls  # sync-free, as the config says
        stats = segprune.stats(model)
        assert stats.live_tokens[:, 0].tolist() == [16, 16, 5, 5]
        assert (logits - reference)[:, -1].abs().max() > 1e-3
        kept = stats.kept_indices[2]
        model(**inputs)  # seeded at every prefill: the same draw again
        assert torch.equal(segprune.stats(model).kept_indices[2], kept)
        segprune.prune_(model, RandomKeepConfig.keep_all())
        valid = inputs["attention_mask"].bool()
        assert (model(**inputs).logits - reference)[valid].abs().max() <= 1e-5
    finally:
        segprune.unprune(model)


def test_maps_to_another_depth(random_keep):
    assert scale_layers(RandomKeepConfig(layer=2, count=7)) == RandomKeepConfig(layer=1, count=7)
    assert scale_layers(RandomKeepConfig(layer=16), 32, 8).layer == 4
    with pytest.raises(ValueError, match=r"RandomKeepConfig.layer=8 does not fit a 8-layer decoder"):
        scale_layers(RandomKeepConfig(layer=31), 32, 8)


def test_budgets_on_both_axes(random_keep):
    config = config_for("randomkeep", 0.75, 32, 576)
    assert config == RandomKeepConfig(layer=2, count=115)  # as FastV: (2 * 576 + 30 * 115) / 32
    assert achieved_reduction(config, 32, 576) == pytest.approx(1 - 143.8125 / 576)
    assert paper_config("randomkeep", 0.9, 576, seed=3) == RandomKeepConfig(layer=2, count=57, seed=3)
    assert budget_config("paper", "randomkeep", 0.9, 8, 576) == RandomKeepConfig(layer=1, count=57)


def test_sweep_and_demo_rows(random_keep):
    assert variants()["randomkeep"] == ("randomkeep", {})
    labels = select_labels(["randomkeep", "fastv"])
    assert labels == ["randomkeep", "fastv"]
    cells = plan_sweep(["refseg"], labels, [0.5, 0.75], 4, 16, budget="navg")
    mine = [c for c in cells if c.label == "randomkeep"]
    assert mine[0].config == RandomKeepConfig(layer=1, count=5)  # N_avg (16 + 3 * 5) / 4, as FastV
    # Like FastV, one drop after an unpruned layer cannot reach 75% in 4 layers: the cell is skipped.
    assert mine[1].config is None and "randomkeep cannot reach" in mine[1].skipped
    rows = [r for r in demo_rows() if r.config is not None and r.config.name == "randomkeep"]
    assert [(r.label, r.reduction, r.config.count) for r in rows] == [
        ("Random", "75%", 144),
        ("Random", "90%", 57),
    ]
    assert rows[0].slug == "random-75"
