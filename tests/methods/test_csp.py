"""LVLM_CSP: stage counts, re-activation with input embeddings, [SEG] scoring, clustering modes, Table 6."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import segprune
from conftest import EXAMPLES
from segprune import CSPConfig
from segprune.cli import main
from segprune.methods.csp import TABLE6, uniform_indices
from segprune.models import tiny_llava_inputs
from segprune.models.tiny_llava import SEG_TOKEN_ID

N_IMAGE = 16

# Table 6 of the CSP paper: floor(N_avg) per model, in the order of its reductions 0.65 ... 0.90.
TABLE6_NAVG = {
    "llava-1.5-7b-224": [86, 78, 66, 51, 39, 29],
    "llava-1.5-7b-336": [203, 176, 149, 118, 85, 66],
    "llava-1.5-13b-224": [88, 78, 68, 53, 41, 27],
}


@pytest.fixture(autouse=True)
def _unpruned(model):
    yield
    segprune.unprune(model)


def with_seg(inputs):
    """Put a [SEG] token in the text after the image of every sample (left padding keeps it valid)."""
    out = dict(inputs)
    out["input_ids"] = inputs["input_ids"].clone()
    out["input_ids"][:, -2] = SEG_TOKEN_ID
    return out


def test_preset_covers_table6_and_flops_reproduces_navg(capsys):
    assert sum(len(v) for v in TABLE6.values()) == 18
    for model, navgs in TABLE6_NAVG.items():
        for reduction, expected in zip(sorted(TABLE6[model]), navgs, strict=True):
            config = CSPConfig.preset(model, reduction)
            args = ["flops", "--preset", model, "--method", "csp", "--json"]
            for field in ("cluster_layers", "cluster_tokens", "scatter_layers", "prune_tokens"):
                args += ["--" + field.replace("_", "-"), str(getattr(config, field))]
            assert main(args) == 0
            report = json.loads(capsys.readouterr().out)
            assert math.floor(report["n_avg"]) == expected, (model, reduction)
    assert CSPConfig.preset("llava-1.5-7b-224", 0.75) == CSPConfig(8, 64, 6, 4)
    with pytest.raises(ValueError, match=r"reduction=0.5.*0.65"):
        CSPConfig.preset("llava-1.5-7b-224", 0.5)
    with pytest.raises(ValueError, match="no Table 6 preset for model 'llava-2'"):
        CSPConfig.preset("llava-2", 0.75)


def test_plan_validation_against_the_model():
    with pytest.raises(ValueError, match=r"cluster_layers \+ scatter_layers = 4 leaves no pruning stage"):
        CSPConfig(cluster_layers=2, scatter_layers=2, cluster_tokens=4, prune_tokens=2).plan(16, 4)
    with pytest.raises(ValueError, match="cluster_tokens=64 exceeds the 16 image tokens"):
        CSPConfig(cluster_layers=1, scatter_layers=1).plan(16, 4)


@torch.no_grad()
def test_stage_counts_and_eq9(model, inputs):
    config = EXAMPLES["csp"]
    segprune.prune_(model, config)
    model(**inputs)
    stats = segprune.stats(model)
    lc, nc, ls, np_ = config.cluster_layers, config.cluster_tokens, config.scatter_layers, config.prune_tokens
    lp = 4 - lc - ls
    assert stats.live_tokens[:, 0].tolist() == [nc] * lc + [N_IMAGE] * ls + [np_] * lp
    assert stats.n_avg == (nc * lc + N_IMAGE * ls + np_ * lp) / (lc + ls + lp)
    assert torch.equal(stats.kept_indices[0][0], uniform_indices(N_IMAGE, nc))


@torch.no_grad()
def test_reactivated_tokens_enter_with_their_input_embeddings(model, inputs):
    config = EXAMPLES["csp"]
    captured = {}
    lm = model.model.language_model
    hooks = [
        lm.register_forward_pre_hook(
            lambda m, a, k: captured.update(embeds=k["inputs_embeds"]), with_kwargs=True
        ),
        lm.layers[config.cluster_layers].register_forward_pre_hook(
            lambda m, a: captured.update(layer_input=a[0])
        ),
    ]
    segprune.prune_(model, config)
    model(**inputs)
    for hook in hooks:
        hook.remove()
    stats = segprune.stats(model)
    image = inputs["input_ids"] == model.config.image_token_id
    clustered = stats.kept_indices[0]
    for b in range(2):
        image_seq = image[b].nonzero().squeeze(1)
        # At the scattering layer every token is live: rows follow sequence order, minus nothing.
        rows = captured["layer_input"][b, image_seq]
        embeds = captured["embeds"][b, image_seq]
        reactivated = torch.ones(N_IMAGE, dtype=torch.bool)
        reactivated[clustered[b]] = False
        assert torch.equal(rows[reactivated], embeds[reactivated])
        # Tokens that took part in the clustering stage carry their processed states instead.
        assert (rows[~reactivated] - embeds[~reactivated]).abs().max() > 1e-3


@torch.no_grad()
def test_seg_scores_equal_eager_row_of_the_seg_token(model, eager_model, inputs):
    inputs = with_seg(inputs)
    config = CSPConfig(cluster_layers=0, scatter_layers=2, prune_tokens=4, score_token="seg")
    eager_model.load_state_dict(model.state_dict())
    attention = eager_model(**inputs, output_attentions=True).attentions[1]
    image = inputs["input_ids"] == model.config.image_token_id
    expected = torch.stack([attention[b, :, -2, image[b]].mean(0) for b in range(2)])
    segprune.prune_(model, config, seg_token_id=SEG_TOKEN_ID)
    model(**inputs)
    stats = segprune.stats(model)
    assert torch.allclose(stats.scores[0], expected, atol=1e-6, rtol=1e-5)
    assert torch.equal(stats.kept_indices[2], expected.topk(4).indices.sort().values)


@torch.no_grad()
def test_seg_scoring_says_what_is_missing(model, inputs):
    config = CSPConfig(cluster_layers=0, scatter_layers=2, prune_tokens=4, score_token="seg")
    segprune.prune_(model, config)
    with pytest.raises(ValueError, match="needs the \\[SEG\\] token id"):
        model(**with_seg(inputs))
    segprune.prune_(model, config, seg_token_id=SEG_TOKEN_ID)
    with pytest.raises(ValueError, match="hold no \\[SEG\\] token"):
        model(**inputs)


@torch.no_grad()
@pytest.mark.parametrize("mode", ["uniform", "random", "cls", "seg_first"])
def test_clustering_is_deterministic_per_seed(model, inputs, mode):
    def clustered(seed):
        config = CSPConfig(
            cluster_layers=1,
            cluster_tokens=5,
            scatter_layers=1,
            prune_tokens=3,
            cluster=mode,
            score_token="last",
            seed=seed,
        )
        segprune.prune_(model, config)
        model(**inputs)
        return segprune.stats(model).kept_indices[0]

    first = clustered(0)
    assert first.shape == (2, 5)
    assert torch.equal(first, clustered(0))
    if mode in ("random", "seg_first"):
        assert not torch.equal(first, clustered(1))
        assert not torch.equal(first[0], first[1]), "samples must be drawn independently"


@torch.no_grad()
def test_cls_clustering_takes_the_top_cls_attention(model, eager_model, inputs):
    eager_model.load_state_dict(model.state_dict())
    tower = eager_model.model.vision_tower
    attention = tower(inputs["pixel_values"], output_attentions=True).attentions[-1][:, :, 0, 1:].mean(1)
    config = CSPConfig(
        cluster_layers=1,
        cluster_tokens=5,
        scatter_layers=1,
        prune_tokens=3,
        cluster="cls",
        score_token="last",
    )
    segprune.prune_(model, config)
    model(**inputs)
    assert torch.equal(segprune.stats(model).kept_indices[0], attention.topk(5).indices.sort().values)


@torch.no_grad()
def test_generation_with_seg_scoring_and_batch(model):
    inputs = with_seg(tiny_llava_inputs(model, batch=3, prompt_lengths=(4, 9, 6)))
    config = CSPConfig(cluster_layers=1, cluster_tokens=4, scatter_layers=1, prune_tokens=2, cluster="random")
    segprune.prune_(model, config, seg_token_id=SEG_TOKEN_ID)
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (3, inputs["input_ids"].shape[1] + 3)
    assert segprune.stats(model).live_tokens[:, 0].tolist() == [4, 16, 2, 2]


def fixed_instances(ids):
    """A stand-in detector: the same (N,) instance ids for every image."""
    return lambda pixel_values, grid: torch.as_tensor(ids).expand(pixel_values.shape[0], -1)


@torch.no_grad()
def test_seg_first_quotas_follow_instance_sizes(model, inputs):
    # Instance 0 holds 12 tokens, instance 1 holds 2, tokens 14 and 15 belong to none.
    ids = [0] * 12 + [1] * 2 + [-1] * 2
    config = CSPConfig(
        cluster_layers=1, cluster_tokens=7, scatter_layers=1, prune_tokens=3, score_token="last"
    )
    segprune.prune_(model, config, instance_masks=fixed_instances(ids))
    model(**inputs)
    kept = segprune.stats(model).kept_indices[0]
    for b in range(2):
        instance = torch.tensor(ids)[kept[b]]
        # Eq. 4: 7 * 12/14 = 6 and 7 * 2/14 = 1; nothing outside the instances.
        assert (instance == 0).sum() == 6 and (instance == 1).sum() == 1
    assert not torch.equal(kept[0], kept[1]), "each sample draws its own tokens"


@torch.no_grad()
def test_seg_first_fills_from_outside_only_when_instances_are_too_small(model, inputs):
    ids = [-1] * 13 + [0, 0, 1]
    config = CSPConfig(
        cluster_layers=1, cluster_tokens=5, scatter_layers=1, prune_tokens=3, score_token="last"
    )
    segprune.prune_(model, config, instance_masks=fixed_instances(ids))
    model(**inputs)
    kept = segprune.stats(model).kept_indices[0]
    assert kept.shape == (2, 5)
    for b in range(2):
        assert {13, 14, 15} <= set(kept[b].tolist())


@torch.no_grad()
def test_seg_first_from_pixel_masks_and_bad_ids(model, inputs):
    def detector(pixel_values, grid):
        masks = torch.zeros(pixel_values.shape[0], 2, 16, 16, dtype=torch.bool)
        masks[:, 0, :4, :4] = True  # exactly token 0 (4-px patches)
        masks[:, 1, 8:, 8:] = True  # tokens 10, 11, 14, 15
        return segprune.masks_to_token_ids(masks, grid)

    config = CSPConfig(
        cluster_layers=1, cluster_tokens=3, scatter_layers=1, prune_tokens=3, score_token="last"
    )
    segprune.prune_(model, config, instance_masks=detector)
    model(**inputs)
    kept = segprune.stats(model).kept_indices[0]
    for b in range(2):
        chosen = set(kept[b].tolist())
        assert 0 in chosen and len(chosen & {10, 11, 14, 15}) == 2
    segprune.prune_(model, config, instance_masks=fixed_instances([16] * 16))
    with pytest.raises(ValueError, match=r"instance ids must lie in -1..15"):
        model(**inputs)


@torch.no_grad()
def test_seg_first_default_instances_are_superpixels_each_represented(model, inputs):
    from segprune.methods.altp import image_regions
    from segprune.methods.plan import SelectContext

    config = CSPConfig(
        cluster_layers=1,
        cluster_tokens=6,
        scatter_layers=1,
        prune_tokens=3,
        score_token="last",
        instance_regions=4,
    )
    segprune.prune_(model, config)
    model(**inputs)
    kept = segprune.stats(model).kept_indices[0]
    context = SelectContext(n_image=N_IMAGE, grid=(4, 4), pixel_values=inputs["pixel_values"])
    labels, _, _ = image_regions(context, 4)
    for b in range(2):
        assert set(labels[b].tolist()) <= set(labels[b, kept[b]].tolist()), "a region got no token"


def test_instance_source_rules():
    from segprune.methods.csp import instance_source

    # auto: the caller's masks, else the model's SAM, else superpixels (a plain LLaVA).
    assert instance_source("auto", has_sam=True, given=True) == "given"
    assert instance_source("auto", has_sam=True, given=False) == "sam"
    assert instance_source("auto", has_sam=False, given=False) == "superpixels"
    assert instance_source("sam", has_sam=True, given=False) == "sam"
    assert instance_source("superpixels", has_sam=True, given=False) == "superpixels"
    assert instance_source("ground_truth", has_sam=False, given=True) == "ground_truth"
    with pytest.raises(ValueError, match="instances='sam' needs a model with its own SAM"):
        instance_source("sam", has_sam=False, given=False)
    with pytest.raises(ValueError, match="instances='ground_truth' needs the ground-truth instance masks"):
        instance_source("ground_truth", has_sam=True, given=False)
    for choice in ("sam", "superpixels"):
        with pytest.raises(ValueError, match=f"instances='{choice}' but instance masks were given"):
            instance_source(choice, has_sam=True, given=True)
    with pytest.raises(ValueError, match=r"instances='yolo' is not valid; choose one of \['auto', 'sam'"):
        instance_source("yolo", has_sam=True, given=False)
    with pytest.raises(ValueError, match=r"CSPConfig\.instances='yolo' is not valid"):
        CSPConfig(instances="yolo")
    assert CSPConfig(cluster="seg_first").instance_choice == "auto"
    assert CSPConfig(cluster="uniform").instance_choice is None
    assert CSPConfig(cluster_layers=0, cluster="seg_first").instance_choice is None
    config = CSPConfig(cluster="seg_first", instances="ground_truth")
    assert CSPConfig.from_dict(config.to_dict()) == config


@torch.no_grad()
def test_seg_first_on_a_plain_llava_cuts_superpixels(model, inputs, monkeypatch):
    import segprune.methods.csp as csp

    calls = []
    cut = csp.image_regions

    def spy(context, n_regions):
        calls.append((context.instance_masks, n_regions))
        return cut(context, n_regions)

    monkeypatch.setattr(csp, "image_regions", spy)
    for choice in ("auto", "superpixels"):
        config = CSPConfig(
            cluster_layers=1,
            cluster_tokens=6,
            scatter_layers=1,
            prune_tokens=3,
            score_token="last",
            instance_regions=4,
            instances=choice,
        )
        segprune.prune_(model, config)
        model(**inputs)
    assert calls == [(None, 4), (None, 4)]


@torch.no_grad()
def test_seg_first_choices_a_plain_llava_cannot_serve_raise(model, inputs):
    config = CSPConfig(
        cluster_layers=1, cluster_tokens=6, scatter_layers=1, prune_tokens=3, score_token="last"
    )
    segprune.prune_(model, dataclasses.replace(config, instances="sam"))
    with pytest.raises(ValueError, match="instances='sam' needs a model with its own SAM"):
        model(**inputs)
    segprune.prune_(model, dataclasses.replace(config, instances="ground_truth"))
    with pytest.raises(ValueError, match="instances='ground_truth' needs the ground-truth instance masks"):
        model(**inputs)
    detector = fixed_instances([0] * 16)
    segprune.prune_(model, dataclasses.replace(config, instances="superpixels"), instance_masks=detector)
    with pytest.raises(ValueError, match="instances='superpixels' but instance masks were given"):
        model(**inputs)
    segprune.prune_(model, dataclasses.replace(config, instances="ground_truth"), instance_masks=detector)
    model(**inputs)  # a caller's masks may be the ground truth
