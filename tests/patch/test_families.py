"""The family registry: lookup by config.model_type, clear refusals, and the LLaVA family's answers."""

from __future__ import annotations

import pytest
import torch

import segprune
from conftest import EXAMPLES
from segprune.families import FAMILIES, Family, family_of, find_family, register_family
from segprune.families.llava import LlavaFamily
from segprune.pixels import CLIP_MEAN, CLIP_STD


@pytest.fixture(autouse=True)
def _unpruned(model):
    yield
    segprune.unprune(model)


def test_llava_is_found_by_model_type_inside_wrappers(model, seg_model):
    family = family_of(model)
    assert isinstance(family, LlavaFamily)
    assert family.vlm is model.model
    assert FAMILIES["llava"] is LlavaFamily
    assert find_family(seg_model).vlm is seg_model.mllm.model
    assert find_family(torch.nn.Linear(2, 2)) is None


def test_an_unsupported_model_type_is_named():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2
    )
    with pytest.raises(
        TypeError, match=r"model_type 'llama'\) holds no transformers LlavaModel.*'llava' \(llava\)"
    ):
        segprune.prune_(LlamaForCausalLM(config), EXAMPLES["fastv"])
    with pytest.raises(TypeError, match=r"\(no config.model_type\) holds no transformers LlavaModel"):
        segprune.prune_(torch.nn.Linear(2, 2), EXAMPLES["fastv"])


def test_a_model_type_is_served_by_one_family():
    class Other(Family):
        name = "other"
        model_types = ("llava",)

    with pytest.raises(ValueError, match="model_type 'llava' is already served by LlavaFamily"):
        register_family(Other)
    assert FAMILIES["llava"] is LlavaFamily


@pytest.mark.parametrize("name", ["visionzip", "prumerge"])
def test_methods_needing_a_cls_row_are_refused_on_a_family_without_one(model, monkeypatch, name):
    monkeypatch.setattr(LlavaFamily, "has_vision_cls", False)
    with pytest.raises(
        ValueError, match=rf"method '{name}' .* the 'llava' family's vision tower does not have"
    ):
        segprune.prune_(model, EXAMPLES[name])
    assert segprune.pruning_config(model) is None
    segprune.prune_(model, EXAMPLES["fastv"])  # methods that read no CLS row still run


def test_llava_layout_answers(model, inputs):
    family = family_of(model)
    assert family.grid(None) == (4, 4)
    assert family.expected_image_tokens() == 16
    boxes = family.token_boxes(None)  # 4-px patches of the 16-px image, row-major
    assert boxes.shape == (16, 4)
    assert boxes[0].tolist() == [0, 0, 4, 4] and boxes[1].tolist() == [0, 4, 4, 8]
    assert boxes[-1].tolist() == [12, 12, 16, 16]
    covered = torch.zeros(16, 16, dtype=torch.long)
    for top, left, bottom, right in boxes.tolist():
        covered[top:bottom, left:right] += 1
    assert bool((covered == 1).all())
    prompt = family.prompt(inputs["input_ids"], None)
    assert torch.equal(prompt["image_mask"], inputs["input_ids"] == model.config.image_token_id)
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    assert torch.equal(family.prompt(None, embeds)["image_mask"], prompt["image_mask"])


def test_rgb_is_the_image_before_clip_normalisation(model):
    family = family_of(model)
    image = torch.rand(2, 3, 16, 16)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert torch.allclose(family.rgb((image - mean) / std), image, atol=1e-6)
