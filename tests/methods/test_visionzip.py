"""VisionZip: dominant tokens by CLS attention, contextual tokens merged by key similarity, before the LLM."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import segprune
from conftest import EXAMPLES, position_ids_of
from segprune import VisionZipConfig
from segprune.methods.visionzip import visionzip_groups
from segprune.models.tiny_llava import IMAGE_TOKEN_ID
from segprune.patch.vision import encoder_layers

N_IMAGE = 16


@pytest.fixture(autouse=True)
def _unpruned(model):
    yield
    segprune.unprune(model)


def test_groups_by_hand():
    # Dominant: the top two by attention, tokens 1 and 4. The rest, in index order, is
    # [0, 2, 3, 5, 6, 7]; two targets at ranks floor((2i + 1) * 6 / 4) = 1, 4: tokens 2 and 6.
    attention = torch.tensor([[0.1, 0.5, 0.2, 0.05, 0.4, 0.15, 0.3, 0.25]])
    keys = torch.tensor(
        [[[1.0, 0.2], [0.0, 1.0], [1.0, 0.0], [0.1, 1.0], [1.0, 0.0], [0.9, -0.1], [0.0, 1.0], [-0.2, 1.0]]]
    )
    # Tokens 0 and 5 point along target 2's key, 3 and 7 along target 6's. Dominant tokens own
    # themselves whatever their keys.
    assert visionzip_groups(attention, keys, 2, 2).tolist() == [[2, 1, 2, 6, 4, 2, 6, 6]]
    # Without contextual tokens the rest is dropped.
    assert visionzip_groups(attention, keys, 2, 0).tolist() == [[-1, 1, -1, -1, 4, -1, -1, -1]]


def test_plan():
    plan = VisionZipConfig(dominant=4, contextual=2).plan(N_IMAGE, 4)
    assert plan.live_counts() == [6] * 4
    (step,) = plan.steps
    assert step.layer == 0 and step.score is None and step.merge is not None
    assert VisionZipConfig(dominant=5, contextual=0).plan(N_IMAGE, 4).steps[0].merge is None
    assert VisionZipConfig().plan(576, 32).live_counts() == [64] * 32
    assert VisionZipConfig().vision_layers() == (-2,)
    keep_all = VisionZipConfig.keep_all().plan(N_IMAGE, 4)
    assert keep_all.live_counts() == [N_IMAGE] * 4 and keep_all.steps[0].merge is None
    with pytest.raises(ValueError, match=r"VisionZipConfig.dominant \+ contextual = 64 exceeds the 16"):
        VisionZipConfig().plan(N_IMAGE, 4)


def test_budget_that_cannot_fit_fails_at_prune_time(model):
    with pytest.raises(ValueError, match="exceeds the 16 image tokens"):
        segprune.prune_(model, VisionZipConfig(dominant=14, contextual=4))


def run_with_captures(model, inputs, vision_layer):
    """Run `model`; return its output, the projector's first call (input, output) and one vision
    layer's k_proj output. (A method merging before the projector calls it a second time.)"""
    store = {}
    hooks = [
        model.model.multi_modal_projector.register_forward_hook(
            lambda m, i, o: None if "proj" in store else store.update(proj=(i[0], o))
        ),
        encoder_layers(model.model.vision_tower)[vision_layer].self_attn.k_proj.register_forward_hook(
            lambda m, i, o: store.update(keys=o)
        ),
    ]
    try:
        out = model(**inputs, output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()
    return out, store["proj"], store["keys"]


def eager_cls_attention(model, eager_model, pixel_values, layer):
    """CLS attention of vision layer `layer`, mean over heads, from eager CLIP attention maps."""
    eager_model.load_state_dict(model.state_dict())
    out = eager_model.model.vision_tower(pixel_values, output_attentions=True)
    return out.attentions[layer][:, :, 0, 1:].mean(1)


def expected_visionzip(attention, keys, proj, dominant, contextual, project=None):
    """VisionZip's kept tokens and their LLM-input embeddings, written out token by token: `proj`
    holds what is averaged; `project` (if given) maps a group mean to an LLM input."""
    out = []
    for b in range(attention.shape[0]):
        order = sorted(range(N_IMAGE), key=lambda j: -float(attention[b, j]))
        rest = [j for j in range(N_IMAGE) if j not in order[:dominant]]
        targets = [rest[(2 * i + 1) * len(rest) // (2 * contextual)] for i in range(contextual)]
        groups = {t: [t] for t in targets}
        for j in rest:
            if j not in targets:
                similarity = [float(F.cosine_similarity(keys[b, j], keys[b, t], dim=0)) for t in targets]
                groups[targets[similarity.index(max(similarity))]].append(j)
        merged = {d: proj[b, d] for d in order[:dominant]}
        merged.update({t: proj[b, group].mean(0) for t, group in groups.items()})
        if project is not None:
            merged = {t: project(m) for t, m in merged.items()}
        out.append((merged, groups))
    return out


@torch.no_grad()
@pytest.mark.parametrize("merge_space", ["vision", "llm"])
def test_merged_embeddings_are_group_means(model, eager_model, inputs, merge_space):
    """ "vision": the projection of each group's mean CLIP feature (VisionZip's code); "llm": the
    mean of the group's projector outputs."""
    config = dataclasses.replace(EXAMPLES["visionzip"], merge_space=merge_space)  # 4 + 2 of 16
    segprune.prune_(model, config)
    out, (clip, proj), k_proj = run_with_captures(model, inputs, -2)
    stats = segprune.stats(model)
    assert stats.live_tokens.tolist() == [[6, 6]] * 4
    attention = eager_cls_attention(model, eager_model, inputs["pixel_values"], -2)
    keys = k_proj[:, 1:].view(2, N_IMAGE, 4, 8).mean(2)  # VisionZip's metric: keys, mean over heads
    if merge_space == "vision":
        expected = expected_visionzip(attention, keys, clip, 4, 2, model.model.multi_modal_projector)
    else:
        expected = expected_visionzip(attention, keys, proj, 4, 2)
    for b, (merged, groups) in enumerate(expected):
        assert stats.kept_indices[0][b].tolist() == sorted(merged)
        assert sum(len(g) for g in groups.values()) == 12 and max(len(g) for g in groups.values()) > 1
        image_rows = (inputs["input_ids"][b] == IMAGE_TOKEN_ID).nonzero().squeeze(1)
        for token, embedding in merged.items():
            assert torch.allclose(out.hidden_states[0][b, image_rows[token]], embedding, atol=1e-5)


@torch.no_grad()
def test_selection_ranks_by_eager_cls_attention(model, eager_model, inputs, cls_attention_calls):
    seen = cls_attention_calls
    segprune.prune_(model, EXAMPLES["visionzip"])
    model(**inputs)
    expected = eager_cls_attention(model, eager_model, inputs["pixel_values"], -2)
    assert seen
    for layer, attention in seen:
        assert layer == -2
        assert torch.allclose(attention, expected, atol=1e-6)
    kept = segprune.stats(model).kept_indices[0]
    for b in range(2):
        assert set(expected[b].topk(4).indices.tolist()) <= set(kept[b].tolist())


@torch.no_grad()
def test_merged_tokens_keep_their_targets_positions(model, inputs):
    """The pruned model equals the unpruned one fed the merged embeddings, with the dropped image
    tokens masked out and every token at its original position id."""
    positions = position_ids_of(inputs["attention_mask"])
    segprune.prune_(model, EXAMPLES["visionzip"])
    out = model(**inputs, position_ids=positions, output_hidden_states=True)
    kept = segprune.stats(model).kept_indices[0]
    segprune.unprune(model)
    mask = inputs["attention_mask"].clone()
    for b in range(2):
        image_rows = (inputs["input_ids"][b] == IMAGE_TOKEN_ID).nonzero().squeeze(1)
        dropped = torch.ones(N_IMAGE, dtype=torch.bool)
        dropped[kept[b]] = False
        mask[b, image_rows[dropped]] = 0
    reference = model(inputs_embeds=out.hidden_states[0], attention_mask=mask, position_ids=positions).logits
    assert (out.logits - reference)[mask.bool()].abs().max() <= 1e-5
