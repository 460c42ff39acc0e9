"""`MethodConfig.instance_choice`: every config answers it (None unless a CSP Seg-First stage runs), so
the model and the evaluation read it as an attribute."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import EXAMPLES
from segprune.eval.datasets import parse_data
from segprune.eval.runner import EvalSpec, instance_source
from segprune.eval.sweep import _has_seg_first
from segprune.methods import METHODS, MethodConfig
from segprune.methods.plan import TokenPlan
from segprune.methods.replay import ReplayConfig


@dataclasses.dataclass(frozen=True)
class KeepAll(MethodConfig):
    """An unregistered method that overrides nothing it need not."""

    name = "keepall"

    def plan(self, n_image: int, n_layers: int) -> TokenPlan:
        return TokenPlan(n_image, n_layers, ())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_answers_instance_choice(name):
    seg_first = name == "csp"
    config = EXAMPLES[name]
    assert config.instance_choice is None  # the CSP example clusters uniformly
    if seg_first:
        assert dataclasses.replace(config, cluster="seg_first").instance_choice == "auto"
    assert _has_seg_first(name, {"cluster": "seg_first"} if seg_first else {}) is seg_first


def test_the_base_default_is_none():
    assert MethodConfig.instance_choice.fget(KeepAll()) is None
    assert KeepAll().instance_choice is None
    assert ReplayConfig(kept=(object(),)).instance_choice is None


class Resolver:
    """A model whose `instance_source` must not be asked where no Seg-First stage runs."""

    def __init__(self):
        self.calls = []

    def instance_source(self, given=False):
        self.calls.append(given)
        return "ground_truth" if given else "sam"


def test_eval_reads_it_for_every_method_and_for_none():
    data = parse_data("shapes:0:1", queries_per_scene=1)
    model = Resolver()
    for method in (None, EXAMPLES["fastv"], KeepAll(), EXAMPLES["csp"]):
        spec = EvalSpec(task="refseg", data=data, model="tiny-random", method=method)
        assert not spec.ground_truth_instances
        assert instance_source(model, spec) is None
    assert model.calls == []
    seg_first = dataclasses.replace(EXAMPLES["csp"], cluster="seg_first", instances="ground_truth")
    spec = EvalSpec(task="refseg", data=data, model="tiny-random", method=seg_first)
    assert spec.ground_truth_instances
    assert instance_source(model, spec) == "ground_truth" and model.calls == [True]
