"""ALTP: its config and plan, the region-quota selector, and a pruned tiny LLaVA."""

from __future__ import annotations

import pytest
import torch

import segprune
from segprune import ALTPConfig
from segprune.methods.altp import ALTPSelector
from segprune.methods.plan import AttentionScore, Keep, SelectContext
from segprune.models import tiny_llava_inputs
from segprune.pixels import CLIP_MEAN, CLIP_STD

GRID = (24, 24)
N = 576


def normalise(images: torch.Tensor) -> torch.Tensor:
    """What the CLIP image processor hands the model: (x - mean) / std per channel."""
    return (images - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def scene(seed: int = 0) -> torch.Tensor:
    """A `(1, 3, 336, 336)` RGB scene: left half flat grey, right half noise, and a red square."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.full((1, 3, 336, 336), 0.5)
    image[..., 168:] = torch.rand(1, 3, 336, 168, generator=gen)
    image[:, 0, 28:112, 28:112], image[:, 1:, 28:112, 28:112] = 0.9, 0.1
    return image


def context(images: torch.Tensor, grid=GRID) -> SelectContext:
    return SelectContext(n_image=grid[0] * grid[1], grid=grid, pixel_values=normalise(images))


def all_live(batch: int = 1, n: int = N) -> torch.Tensor:
    return torch.arange(n).expand(batch, n)


# -- config and plan --------------------------------------------------------------------------------


def test_plan_is_one_fastv_style_drop_with_the_altp_selector():
    config = ALTPConfig(keep_ratio=0.1, layer=3, n_regions=7, allocation="ddc", superpixels="skimage")
    plan = config.plan(N, 32)
    (step,) = plan.steps
    assert isinstance(step, Keep)
    assert (step.layer, step.count, step.score) == (3, 58, AttentionScore(2, "last"))
    assert step.select == ALTPSelector(
        ALTPConfig(
            keep_ratio=0.1,
            layer=3,
            n_regions=7,
            compactness=5.0,
            sigma=1.0,
            alpha=1.5,
            allocation="ddc",
            superpixels="skimage",
        )
    )
    assert plan.live_counts() == [N] * 3 + [58] * 29
    assert ALTPConfig(keep_ratio=0.5).plan(57, 4).live_counts()[-1] == 29  # halves round up
    with pytest.raises(ValueError, match=r"ALTPConfig.layer=4 does not fit"):
        ALTPConfig(layer=4).plan(16, 4)


def test_image_normalisation_round_trips_through_json():
    config = ALTPConfig(image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25))
    data = config.to_dict()
    assert data["image_mean"] == [0.5, 0.5, 0.5]
    assert ALTPConfig.from_dict(data) == config
    select = config.plan(16, 4).steps[0].select
    ctx = SelectContext(n_image=16, grid=(4, 4), pixel_values=torch.ones(1, 3, 16, 16))
    assert torch.allclose(select.pixels(ctx), torch.full((1, 3, 16, 16), 0.75))  # 0.5 + 1 * 0.25


# -- the selector -----------------------------------------------------------------------------------


def test_keeping_everything_needs_no_pixels():
    live = all_live(2, 16)
    kept = ALTPSelector()(torch.rand(2, 16), live, 16, SelectContext(n_image=16, grid=(4, 4)))
    assert torch.equal(kept, live)


def test_selector_errors_are_clear():
    select = ALTPSelector()
    scores, live = torch.rand(1, 16), all_live(1, 16)
    with pytest.raises(ValueError, match="needs the image"):
        select(scores, live, 4, SelectContext(n_image=16, grid=(4, 4)))
    images = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="4x4 patch grid has 16 patches but the prompt holds 17"):
        select(scores, live, 4, SelectContext(n_image=17, grid=(4, 4), pixel_values=images))
    with pytest.raises(ValueError, match="give its Keep step a score"):
        select(None, live, 4, context(images, (4, 4)))


@pytest.mark.parametrize("superpixels", ["grid", "skimage"])
@pytest.mark.parametrize("allocation", ["ddf", "ddc"])
def test_every_region_keeps_its_quota_of_best_tokens(superpixels, allocation):
    if superpixels == "skimage":
        pytest.importorskip("skimage")
    select = ALTPSelector(ALTPConfig(allocation=allocation, superpixels=superpixels))
    ctx = context(torch.cat([scene(0), scene(1)]))
    scores = torch.rand(2, N, generator=torch.Generator().manual_seed(0))
    kept = select(scores, all_live(2), 57, ctx)
    labels, n_labels, images = select.regions(ctx)
    quotas = select.quotas(images, labels, n_labels, labels, 57, GRID)
    assert kept.shape == (2, 57)
    assert bool((kept[:, 1:] > kept[:, :-1]).all())
    for b in range(2):
        picked = torch.zeros(N, dtype=torch.bool)
        picked[kept[b]] = True
        regions = labels[b].unique()
        assert len(regions) >= 3
        for k in regions:
            inside = labels[b] == k
            assert int((picked & inside).sum()) == quotas[b, k] >= 1  # 57 tokens cover every region
            if (~picked & inside).any():
                assert scores[b][picked & inside].min() >= scores[b][~picked & inside].max()


def test_ddf_moves_tokens_to_the_textured_half_and_ddc_does_not():
    ctx = context(scene())
    scores = torch.rand(1, N, generator=torch.Generator().manual_seed(0))
    textured = torch.arange(N) % 24 >= 12

    def kept_in_texture(allocation: str) -> int:
        kept = ALTPSelector(ALTPConfig(allocation=allocation))(scores, all_live(), 144, ctx)
        return int(textured[kept[0]].sum())

    ddf, ddc = kept_in_texture("ddf"), kept_in_texture("ddc")
    assert abs(ddc - 72) <= 8  # the same keep ratio everywhere: about half the tokens
    assert ddf >= ddc + 10


def test_selector_chooses_only_among_live_tokens():
    select = ALTPSelector()
    ctx = context(scene())
    live = all_live()[:, ::3]  # 192 live tokens, every third patch
    scores = torch.rand(1, 192, generator=torch.Generator().manual_seed(1))
    kept = select(scores, live, 40, ctx)
    assert kept.shape == (1, 40)
    assert bool((kept[:, 1:] > kept[:, :-1]).all())
    picked = torch.isin(live[0], kept[0])
    assert int(picked.sum()) == 40, "kept tokens must be live"
    labels = select.regions(ctx)[0][0, live[0]]  # the region of each live token
    for k in labels.unique():
        inside = labels == k
        assert (picked & inside).any()
        if (~picked & inside).any():
            assert scores[0][picked & inside].min() >= scores[0][~picked & inside].max()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_grid_path_never_syncs_with_the_host():
    select = ALTPSelector()
    ctx = context(torch.cat([scene(0), scene(1)]))
    ctx = SelectContext(n_image=ctx.n_image, grid=ctx.grid, pixel_values=ctx.pixel_values.cuda())
    scores = torch.rand(2, N, device="cuda")
    live = all_live(2).cuda()
    select(scores, live, 57, ctx)  # warm-up: lazy initialisation may sync
    torch.cuda.set_sync_debug_mode("error")
    try:
        kept = select(scores, live, 57, ctx)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert kept.shape == (2, 57)


# -- through segprune.prune_ on the tiny model ------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("superpixels", ["grid", "skimage"])
def test_pruned_model_keeps_what_the_selector_picks_and_covers_every_region(model, superpixels):
    if superpixels == "skimage":
        pytest.importorskip("skimage")
    inputs = tiny_llava_inputs(model, batch=3, prompt_lengths=(5, 8, 3))
    config = ALTPConfig(keep_ratio=0.25, layer=2, n_regions=4, superpixels=superpixels)
    try:
        segprune.prune_(model, config)
        model(**inputs)
        stats = segprune.stats(model)
    finally:
        segprune.unprune(model)
    kept = stats.kept_indices[2]
    assert kept.shape == (3, 4)
    select = config.plan(16, 4).steps[0].select
    ctx = SelectContext(n_image=16, grid=(4, 4), pixel_values=inputs["pixel_values"])
    assert torch.equal(kept, select(stats.scores[0], all_live(3, 16), 4, ctx))
    labels, _, _ = select.regions(ctx)
    for b in range(3):
        regions = set(labels[b].tolist())
        assert len(regions) <= 4
        assert set(labels[b, kept[b]].tolist()) == regions  # 4 tokens, at most 4 regions: all covered
