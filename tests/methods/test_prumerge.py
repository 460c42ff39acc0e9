"""PruMerge / PruMerge+: IQR outliers at an exact budget or the reference's adaptive count, spatial fill,
neighbourhood merging."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import segprune
from segprune import PruMergeConfig
from segprune.methods import prumerge
from segprune.methods.prumerge import (
    adaptive_keep,
    iqr_outliers,
    prumerge_keep,
    prumerge_weights,
    row_quantiles,
)
from segprune.models import tiny_llava, tiny_llava_inputs
from segprune.models.tiny_llava import IMAGE_TOKEN_ID
from segprune.patch.vision import encoder_layers

N_IMAGE = 16


def kept_list(mask: torch.Tensor) -> list[list[int]]:
    return [row.nonzero().squeeze(1).tolist() for row in mask]


def test_iqr_outliers_by_hand():
    # Quartiles (linear interpolation) of 1..7, 100: Q1 = 2.75, Q3 = 6.25, so the bound is
    # 6.25 + 1.5 * 3.5 = 11.5 and only 100 lies above it.
    attention = torch.tensor([[1.0, 2.0, 3.0, 100.0, 4.0, 5.0, 6.0, 7.0]])
    assert kept_list(iqr_outliers(attention)) == [[3]]


def test_iqr_outliers_match_numpy_percentiles():
    attention = torch.rand(3, 40, generator=torch.Generator().manual_seed(0)) ** 4
    for b in range(3):
        q1, q3 = np.percentile(attention[b].double().numpy(), [25, 75])
        expected = attention[b].double().numpy() > q3 + 1.5 * (q3 - q1)
        assert iqr_outliers(attention)[b].tolist() == expected.tolist()


def ramp_with_outliers() -> torch.Tensor:
    # Row 0: a gentle ramp 0.050..0.065 with two outliers, token 3 (0.3) and token 10 (0.2).
    # Row 1: the plain ramp, no outliers.
    attention = 0.05 + 0.001 * torch.arange(N_IMAGE, dtype=torch.float32).expand(2, N_IMAGE).clone()
    attention[0, 3], attention[0, 10] = 0.3, 0.2
    return attention


def test_plus_keeps_the_outliers_and_spreads_the_rest():
    attention = ramp_with_outliers()
    assert kept_list(iqr_outliers(attention)) == [[3, 10], []]
    # Row 0: the 2 outliers, then 4 picks over the other 14 tokens
    # [0, 1, 2, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15] at ranks floor((2i + 1) * 14 / 8) = 1, 5, 8, 12.
    # Row 1: 6 picks over all 16 tokens at ranks floor((2i + 1) * 16 / 12).
    assert kept_list(prumerge_keep(attention, 6, plus=True)) == [[1, 3, 6, 9, 10, 14], [1, 4, 6, 9, 12, 14]]


def test_exact_budget_trims_outliers_by_rank_and_plain_prumerge_is_top_k():
    attention = ramp_with_outliers()
    assert kept_list(prumerge_keep(attention, 1, plus=True)) == [[3], [8]]  # row 1: rank floor(16 / 2)
    assert kept_list(prumerge_keep(attention, 6, plus=False)) == [
        [3, 10, 12, 13, 14, 15],
        [10, 11, 12, 13, 14, 15],
    ]


def test_merge_weights_by_hand():
    attention = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.2], [1.0, -0.5]]])
    # Token 0's nearest others by cosine: 2 (0.981), then 3 (0.894), then 1 (0).
    weights = prumerge_weights(attention, keys, torch.tensor([[0]]), 2)
    assert torch.allclose(weights, torch.tensor([[[0.1, 0.0, 0.3, 0.4]]]))
    # k is capped at the n - 1 other tokens.
    assert torch.allclose(prumerge_weights(attention, keys, torch.tensor([[1]]), 9), attention[:, None])


def test_plan_and_fields():
    plan = PruMergeConfig(keep_ratio=0.375, neighbours=4).plan(N_IMAGE, 4)
    assert plan.live_counts() == [6] * 4
    (step,) = plan.steps
    assert step.layer == 0 and step.score is None and step.merge is not None
    assert PruMergeConfig(neighbours=0).plan(N_IMAGE, 4).steps[0].merge is None
    assert PruMergeConfig().plan(576, 32).live_counts() == [144] * 32
    assert PruMergeConfig().vision_layers() == (-1,)
    keep_all = PruMergeConfig.keep_all().plan(N_IMAGE, 4)
    assert keep_all.live_counts() == [N_IMAGE] * 4 and keep_all.steps[0].merge is None


def sharpened(attn_implementation: str):
    """The tiny LLaVA with a sharper last vision layer, so CLS attention has IQR outliers (2 and 1)."""
    model = tiny_llava(attn_implementation=attn_implementation)
    attention = encoder_layers(model.model.vision_tower)[-1].self_attn
    with torch.no_grad():
        attention.q_proj.weight.mul_(3.0)
        attention.k_proj.weight.mul_(3.0)
    return model


@pytest.fixture(scope="module")
def models():
    return sharpened("sdpa"), sharpened("eager")


@pytest.fixture
def inputs(models):
    return tiny_llava_inputs(models[0], batch=2, prompt_lengths=(5, 8), left_pad=True)


@pytest.fixture
def eager_attention(models, inputs):
    with torch.no_grad():
        out = models[1].model.vision_tower(inputs["pixel_values"], output_attentions=True)
    return out.attentions[-1][:, :, 0, 1:].mean(1)


def expected_prumerge(attention, keys, proj, count, k, project=None):
    """PruMerge+'s kept tokens and merged embeddings, written out token by token: `proj` holds what
    is averaged; `project` (if given) maps an average to an LLM input."""
    out = []
    for b in range(attention.shape[0]):
        row = attention[b].double().numpy()
        q1, q3 = np.percentile(row, [25, 75])
        n_outliers = int((row > q3 + 1.5 * (q3 - q1)).sum())
        top = sorted(range(N_IMAGE), key=lambda j: -row[j])[: min(n_outliers, count)]
        rest = [j for j in range(N_IMAGE) if j not in top]
        fill = count - len(top)
        kept = sorted(top + [rest[(2 * i + 1) * len(rest) // (2 * fill)] for i in range(fill)])
        merged = {}
        for p in kept:
            similarity = {
                j: float(F.cosine_similarity(keys[b, p], keys[b, j], dim=0)) for j in range(N_IMAGE)
            }
            similarity.pop(p)
            members = [p, *sorted(similarity, key=lambda j: -similarity[j])[:k]]
            weights = attention[b, members]
            merged[p] = (weights[:, None] * proj[b, members]).sum(0) / weights.sum()
            if project is not None:
                merged[p] = project(merged[p])
        out.append((n_outliers, merged))
    return out


@torch.no_grad()
@pytest.mark.parametrize("merge_space", ["vision", "llm"])
def test_kept_tokens_and_merged_embeddings_by_hand(models, inputs, eager_attention, merge_space):
    """ "vision": the projection of the weighted average of CLIP features (PruMerge's code); "llm":
    the weighted average of projector outputs."""
    model = models[0]
    store = {}
    hooks = [
        model.model.multi_modal_projector.register_forward_hook(  # the first call: every image token
            lambda m, i, o: None if "proj" in store else store.update(proj=(i[0], o))
        ),
        encoder_layers(model.model.vision_tower)[-1].self_attn.k_proj.register_forward_hook(
            lambda m, i, o: store.update(keys=o)
        ),
    ]
    segprune.prune_(model, PruMergeConfig(plus=True, keep_ratio=0.375, neighbours=4, merge_space=merge_space))
    try:
        out = model(**inputs, output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()
        stats = segprune.stats(model)
        segprune.unprune(model)
    assert stats.live_tokens.tolist() == [[6, 6]] * 4
    keys = store["keys"][:, 1:]  # all heads concatenated: the k_proj output
    clip, proj = store["proj"]
    if merge_space == "vision":
        expected = expected_prumerge(eager_attention, keys, clip, 6, 4, model.model.multi_modal_projector)
    else:
        expected = expected_prumerge(eager_attention, keys, proj, 6, 4)
    assert [n for n, _ in expected] == [2, 1], "the sharpened model should give different outlier counts"
    for b, (_, merged) in enumerate(expected):
        assert stats.kept_indices[0][b].tolist() == sorted(merged)
        image_rows = (inputs["input_ids"][b] == IMAGE_TOKEN_ID).nonzero().squeeze(1)
        for token, embedding in merged.items():
            assert torch.allclose(out.hidden_states[0][b, image_rows[token]], embedding, atol=1e-5)


@torch.no_grad()
def test_selection_ranks_by_eager_cls_attention(models, inputs, eager_attention, cls_attention_calls):
    seen = cls_attention_calls
    model = models[0]
    segprune.prune_(model, PruMergeConfig(plus=False, keep_ratio=0.25, neighbours=0))
    model(**inputs)
    kept = segprune.stats(model).kept_indices[0]
    segprune.unprune(model)
    assert seen
    for layer, attention in seen:
        assert layer == -1
        assert torch.allclose(attention, eager_attention, atol=1e-6)
    assert torch.equal(kept, eager_attention.topk(4).indices.sort().values)


@torch.no_grad()
def test_neighbours_beyond_the_image_are_capped(models, inputs):
    model = models[0]
    hidden = []
    for k in (15, 32):
        segprune.prune_(model, PruMergeConfig(keep_ratio=0.375, neighbours=k))
        hidden.append(model(**inputs, output_hidden_states=True).hidden_states[0])
        segprune.unprune(model)
    assert torch.equal(hidden[0], hidden[1])


def test_row_quantiles_equal_torch_quantile():
    x = torch.rand(3, 17, generator=torch.Generator().manual_seed(0))
    levels = (0.0, 0.25, 0.5, 0.75, 1.0)
    expected = torch.quantile(x, torch.tensor(levels), dim=1)
    for got, want in zip(row_quantiles(x, levels), expected, strict=True):
        assert torch.allclose(got, want, atol=1e-6)


# -- the adaptive count -------------------------------------------------------------------------


def test_adaptive_keep_by_hand():
    """Row 0: the ramp without tokens 3 and 10 plus 0.2 and 0.3 sorts to 0.050, 0.051, 0.052, 0.054,
    0.055, ..., so Q1 (position 3.75) = 0.05475 and Q3 (position 11.25) = 0.06325: the bound is
    0.06325 + 1.5 * 0.0085 = 0.076, and tokens 3 and 10 are the outliers, r = 2/16. PruMerge keeps
    int(16 r) = 2; PruMerge+ adds every int(int(1 / r) / 3) = int(8 / 3) = 2nd token below 15.
    Row 1, the plain ramp: Q1 = 0.05375, Q3 = 0.06125, bound 0.0725, no outlier: the top token (15)
    stands in for one (r = 1/16), and the grid takes every int(16 / 3) = 5th token below 15."""
    attention = ramp_with_outliers()
    assert kept_list(adaptive_keep(attention, plus=False)) == [[3, 10], [15]]
    assert kept_list(adaptive_keep(attention, plus=True)) == [[0, 2, 3, 4, 6, 8, 10, 12, 14], [0, 5, 10, 15]]


def test_a_stride_of_zero_keeps_every_token(monkeypatch):
    """6 of 8 tokens marked outliers: int(int(8 / 6) / 3) = 0, which the reference cannot take; the
    stride becomes 1, so the grid covers 0..6 and the outliers add the rest."""
    attention = torch.arange(8, dtype=torch.float32)[None]
    monkeypatch.setattr(prumerge, "iqr_outliers", lambda a: a >= 2)
    assert kept_list(adaptive_keep(attention, plus=True)) == [list(range(8))]
    assert kept_list(adaptive_keep(attention, plus=False)) == [list(range(2, 8))]


def reference_adaptive(row: np.ndarray, plus: bool) -> list[int]:
    """The reference's adaptive rule, from its description: numpy percentiles, r = outliers / N, the top
    int(N r) by attention, and for PruMerge+ arange(0, N - 1, int(int(1 / r) / 3)) added."""
    n = len(row)
    q1, q3 = np.percentile(row, [25, 75])
    r = float((row > q3 + 1.5 * (q3 - q1)).sum()) / n
    kept = set(np.argsort(-row, kind="stable")[: int(n * r)].tolist())
    if plus:
        kept |= set(range(0, n - 1, int(int(1 / r) / 3)))
    return sorted(kept)


@pytest.mark.parametrize("plus", [False, True])
def test_adaptive_keep_equals_the_reference_rule_at_576_tokens(plus):
    gen = torch.Generator().manual_seed(0)
    attention = torch.rand(8, 576, generator=gen) ** 8  # heavy-tailed: a handful of outliers per row
    for b, row in enumerate(kept_list(adaptive_keep(attention, plus))):
        assert row == reference_adaptive(attention[b].double().numpy(), plus), b


def test_adaptive_count_field():
    config = PruMergeConfig(count="adaptive", neighbours=0)
    (step,) = config.plan(N_IMAGE, 4).steps
    assert step.adaptive and step.count == N_IMAGE  # a bound; the selector decides per sample
    assert not config.sync_free and PruMergeConfig().sync_free
    assert PruMergeConfig.from_dict(config.to_dict()) == config
    assert PruMergeConfig().count == "fixed"
    with pytest.raises(
        ValueError, match=r"PruMergeConfig.count='auto' is not valid; choose one of \['fixed', 'adaptive'\]"
    ):
        PruMergeConfig(count="auto")


def adaptive_counts(eager_attention, plus: bool) -> list[int]:
    return [len(reference_adaptive(row.double().numpy(), plus)) for row in eager_attention]


@torch.no_grad()
@pytest.mark.parametrize(("plus", "neighbours"), [(False, 0), (True, 0), (True, 4)])
def test_adaptive_counts_differ_per_sample_and_each_equals_its_sample_alone(
    models, inputs, eager_attention, plus, neighbours
):
    model = models[0]
    segprune.prune_(model, PruMergeConfig(plus=plus, neighbours=neighbours, count="adaptive"))
    try:
        logits = model(**inputs).logits
        stats = segprune.stats(model)
        out = model.generate(
            **inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        counts = adaptive_counts(eager_attention, plus)
        assert counts[0] != counts[1], "the sharpened model should give different adaptive counts"
        assert stats.live_tokens.tolist() == [counts] * 4  # the actual per-sample counts
        assert stats.kept_indices[0].shape == (2, max(counts))
        for b in range(2):
            expected = reference_adaptive(eager_attention[b].double().numpy(), plus)
            assert stats.kept_of(b)[0].tolist() == expected
            assert int((stats.kept_indices[0][b] == -1).sum()) == max(counts) - counts[b]
            valid = inputs["attention_mask"][b].bool()
            alone = {key: inputs[key][b : b + 1, valid] for key in ("input_ids", "attention_mask")}
            alone["pixel_values"] = inputs["pixel_values"][b : b + 1]
            assert (model(**alone).logits[0] - logits[b, valid]).abs().max() <= 1e-4
            assert segprune.stats(model).kept_indices[0][0].tolist() == expected
            single = model.generate(
                **alone, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
            assert torch.equal(single.sequences[0, -3:], out.sequences[b, -3:])
            assert (torch.stack(single.logits, 1)[0] - torch.stack(out.logits, 1)[b]).abs().max() <= 1e-4
    finally:
        segprune.unprune(model)
