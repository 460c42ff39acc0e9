"""Shared fixtures: tiny random LLaVA models and example configs for every registered method."""

from __future__ import annotations

import pytest
import torch

from segprune import METHODS, ALTPConfig, CSPConfig, FastVConfig, PDropConfig
from segprune.methods.prumerge import PruMergeConfig
from segprune.methods.visionzip import VisionZipConfig
from segprune.models import tiny_llava, tiny_llava_inputs

torch.set_num_threads(2)

# One pruning example per registered method, sized for the 4-layer, 16-image-token tiny model.
# A new method must add an entry here; test_examples_cover_registry enforces it.
EXAMPLES = {
    "altp": ALTPConfig(keep_ratio=0.25, layer=2, n_regions=4),
    "fastv": FastVConfig(layer=2, keep_ratio=0.25),
    "pdrop": PDropConfig(layers=(1, 3), ratio=0.5),
    "prumerge": PruMergeConfig(plus=True, keep_ratio=0.375, neighbours=4),
    "visionzip": VisionZipConfig(dominant=4, contextual=2),
    "csp": CSPConfig(
        cluster_layers=1,
        cluster_tokens=6,
        scatter_layers=1,
        prune_tokens=3,
        cluster="uniform",
        score_token="last",
    ),
}

# Bad field values per method: (kwargs, text the error must contain).
INVALID = {
    "altp": [
        ({"keep_ratio": 0.0}, "keep_ratio=0.0"),
        ({"layer": 0}, "layer=0"),
        ({"n_regions": 0}, "n_regions=0"),
        ({"compactness": 0.0}, "compactness=0.0"),
        ({"sigma": -1.0}, "sigma=-1.0"),
        ({"alpha": float("inf")}, "alpha=inf"),
        ({"allocation": "uniform"}, "allocation='uniform'"),
        ({"superpixels": "fast"}, "superpixels='fast'"),
        ({"image_std": (0.5, 0.0, 0.5)}, "image_std=(0.5, 0.0, 0.5)"),
        ({"image_mean": (0.5, 0.5)}, "image_mean=(0.5, 0.5)"),
    ],
    "csp": [
        ({"cluster_layers": -1}, "cluster_layers=-1"),
        ({"cluster_tokens": 0}, "cluster_tokens=0"),
        ({"scatter_layers": 0}, "scatter_layers=0"),
        ({"prune_tokens": 2.5}, "prune_tokens=2.5"),
        ({"cluster": "kmeans"}, "cluster='kmeans'"),
        ({"score_token": "cls"}, "score_token='cls'"),
        ({"seed": -1}, "seed=-1"),
        ({"instances": "yolo"}, "instances='yolo'"),
    ],
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
        ({"positions": "compress"}, "positions='compress'"),
    ],
    "prumerge": [
        ({"plus": 1}, "plus=1"),
        ({"keep_ratio": 0.0}, "keep_ratio=0.0"),
        ({"keep_ratio": 1.5}, "keep_ratio=1.5"),
        ({"neighbours": -1}, "neighbours=-1"),
        ({"neighbours": 2.0}, "neighbours=2.0"),
        ({"merge_space": "clip"}, "merge_space='clip'"),
        ({"count": "auto"}, "count='auto'"),
    ],
    "visionzip": [
        ({"dominant": -1}, "dominant=-1"),
        ({"dominant": 2.5}, "dominant=2.5"),
        ({"contextual": -2}, "contextual=-2"),
        ({"contextual": True}, "contextual=True"),
        ({"dominant": 0, "contextual": 0}, "dominant=0"),
        ({"dominant": None, "contextual": 3}, "contextual=3"),
        ({"merge_space": "pixels"}, "merge_space='pixels'"),
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


@pytest.fixture(scope="session")
def seg_model():
    from segprune.models import tiny_seg_model

    return tiny_seg_model()


@pytest.fixture
def inputs(model):
    return tiny_llava_inputs(model, batch=2, prompt_lengths=(5, 8), left_pad=True)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: generations and decode steps are hundreds of tiny ops, and
    on a busy 2-core machine each hand-off between two threads can wait a whole scheduler slice
    (50-100x slower, seen here); torchrun workers run one thread too, so single and sharded
    evaluations compute alike. Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def position_ids_of(attention_mask):
    """What generate() passes: positions count real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@pytest.fixture
def cls_attention_calls(monkeypatch):
    """Record every `(layer, CLS attention)` the vision capture hands to a selector."""
    from segprune.patch.vision import VisionCapture

    seen = []
    recompute = VisionCapture.cls_attention

    def spy(self, layer):
        result = recompute(self, layer)
        seen.append((layer, result))
        return result

    monkeypatch.setattr(VisionCapture, "cls_attention", spy)
    return seen


class HostSyncCounter:
    """Counts what would synchronise with the host on CUDA while active: tensor-to-Python conversions,
    `nonzero`, and tensors made from Python data on a device (`torch.tensor`, `torch.as_tensor`:
    host-to-device copies, which a CUDA graph cannot capture)."""

    NAMES = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")

    def __init__(self, monkeypatch):
        self.active = False
        self.calls: list[str] = []
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original, _name=name, **kwargs):
                if self.active:
                    self.calls.append(_name)
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)
        original_nonzero = torch.nonzero

        def nonzero(*args, **kwargs):
            if self.active:
                self.calls.append("nonzero")
            return original_nonzero(*args, **kwargs)

        monkeypatch.setattr(torch, "nonzero", nonzero)
        for factory in ("tensor", "as_tensor"):
            original_factory = getattr(torch, factory)

            def made(data, *args, _original=original_factory, _name=factory, **kwargs):
                empty = isinstance(data, (list, tuple)) and not data  # nothing to copy
                if self.active and not isinstance(data, torch.Tensor) and not empty and kwargs.get("device"):
                    self.calls.append(_name)
                return _original(data, *args, **kwargs)

            monkeypatch.setattr(torch, factory, made)
