"""CLS attention and keys recomputed from the vision tower equal eager attention's."""

from __future__ import annotations

import pytest
import torch

from segprune.models import tiny_llava, tiny_llava_inputs
from segprune.patch.vision import VisionCapture


@torch.no_grad()
@pytest.mark.parametrize("layer", [-1, -2, 0])
def test_cls_attention_equals_eager_row(layer):
    model = tiny_llava(attn_implementation="eager")
    inputs = tiny_llava_inputs(model)
    tower = model.model.vision_tower
    capture = VisionCapture(tower, (layer,), "default")
    out = tower(inputs["pixel_values"], output_attentions=True)
    expected = out.attentions[layer][:, :, 0, 1:].mean(1)
    assert torch.allclose(capture.cls_attention(layer), expected, atol=1e-6)
    keys = capture.keys(layer)
    assert keys.shape == (2, 4, 16, 8)
    capture.remove()
    assert capture.inputs == {}


def test_bad_vision_layers_are_clear():
    tower = tiny_llava().model.vision_tower
    with pytest.raises(ValueError, match="vision layer 5 does not exist; the vision tower has 2 layers"):
        VisionCapture(tower, (5,), "default")
    with pytest.raises(ValueError, match="select_strategy='default'"):
        VisionCapture(tower, (-1,), "full")
    capture = VisionCapture(tower, (-1,), "default")
    with pytest.raises(RuntimeError, match="was not captured"):
        capture.cls_attention(-1)
