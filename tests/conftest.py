"""Shared fixtures: tiny random LLaVA models and example configs for every registered method."""

from __future__ import annotations

import pytest
import torch

from segprune import METHODS, FastVConfig, PDropConfig
from segprune.models import tiny_llava, tiny_llava_inputs

torch.set_num_threads(2)

# One pruning example per registered method, sized for the 4-layer, 16-image-token tiny model.
# A new method must add an entry here; test_examples_cover_registry enforces it.
EXAMPLES = {
    "fastv": FastVConfig(layer=2, keep_ratio=0.25),
    "pdrop": PDropConfig(layers=(1, 3), ratio=0.5),
}

# Bad field values per method: (kwargs, text the error must contain).
INVALID = {
    "fastv": [
        ({"layer": 0}, "layer=0"),
        ({"layer": 1.5}, "layer=1.5"),
        ({"keep_ratio": 0.0}, "keep_ratio=0.0"),
        ({"keep_ratio": 1.2}, "keep_ratio=1.2"),
        ({"keep_ratio": float("nan")}, "keep_ratio=nan"),
        ({"keep_ratio": True}, "keep_ratio=True"),
    ],
    "pdrop": [
        ({"layers": ()}, "layers=()"),
        ({"layers": (8, 8)}, "strictly increasing"),
        ({"layers": (0, 4)}, "layers[0]=0"),
        ({"layers": (2, "x")}, "layers[1]='x'"),
        ({"ratio": 0}, "ratio=0"),
        ({"ratio": -0.5}, "ratio=-0.5"),
    ],
}


def method_names() -> list[str]:
    return sorted(METHODS)


@pytest.fixture(scope="session")
def model():
    return tiny_llava()


@pytest.fixture(scope="session")
def eager_model():
    return tiny_llava(attn_implementation="eager")


@pytest.fixture
def inputs(model):
    return tiny_llava_inputs(model, batch=2, prompt_lengths=(5, 8), left_pad=True)
