"""train-tiny: training samples, the learning-rate schedule, and checkpoints that resume exactly."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from segprune.data import generate_split
from segprune.models.tiny import build_tiny
from segprune.train import TrainConfig, learning_rate, segment_blind, train, validation_set
from segprune.train.samples import TaskMix, encode_turns, make_sample, patch_targets, scene_turns

# A small model at reduced image sizes, so a step takes a fraction of a second on a CPU.
SMALL = {
    "image_size": 112,
    "vision_width": 32,
    "vision_layers": 2,
    "llm_width": 32,
    "llm_layers": 2,
    "llm_mlp": 64,
    "sam_image_size": 56,
    "sam_patch_size": 8,
    "sam_width": 16,
}


@pytest.fixture(scope="module")
def small_model():
    from segprune.models.tiny import TinyDims

    return build_tiny(0, TinyDims(**SMALL))


@pytest.fixture(scope="module")
def scene():
    return generate_split(1, seed=5)[0]


def test_labels_cover_the_answers_and_each_seg_has_a_target(small_model, scene):
    tokenizer, config = small_model.tokenizer, small_model.config
    turns = scene_turns(
        scene, np.random.default_rng(0), TaskMix(caption_prob=1.0), config.gcg_query, config.seg_answer
    )
    ids, labels = encode_turns(tokenizer, config, turns)
    assert len(ids) == len(labels)
    assert ids.count(config.llava_config.image_token_id) == config.llava_config.image_seq_length
    answers = [token for token in labels if token != -100]
    expected = []
    for turn in turns:
        expected += [*tokenizer(turn.answer, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    assert answers == expected
    assert ids.count(config.seg_token_id) == sum(len(t.targets) for t in turns)
    # The first turn is exactly what SegModel.segment / ground send.
    first = config.prompt_template.replace("{query}", turns[0].question)
    prompt_ids = tokenizer(first)["input_ids"]
    at = prompt_ids.index(config.llava_config.image_token_id)
    assert ids[: at + 1] == prompt_ids[: at + 1]
    assert tokenizer.unk_token_id not in ids


def test_sample_targets(small_model, scene):
    sample = make_sample(
        scene, np.random.default_rng(1), small_model.tokenizer, small_model.config, TaskMix()
    )
    n_seg = int((sample["input_ids"] == small_model.config.seg_token_id).sum())
    assert sample["mask_targets"].shape == (n_seg, 28, 28)  # SAM's 7x7 grid, upsampled 4x
    assert sample["centres"].shape == (n_seg, 2)
    assert float(sample["mask_targets"].min()) >= 0 and float(sample["mask_targets"].max()) <= 1
    targets = patch_targets(scene, 24)
    for name, classes in (("colour", 9), ("shape", 9), ("size", 4)):
        assert targets[name].shape == (24, 24, classes)
        torch.testing.assert_close(targets[name].sum(-1), torch.ones(24, 24))
    # Covered area per class equals the objects' pixel counts.
    colour_area = targets["colour"][..., 1:].sum() * (336 / 24) ** 2
    assert abs(float(colour_area) - sum(o.area for o in scene.objects)) < 1


def test_learning_rate_warms_up_then_decays_to_the_floor():
    config = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    rates = [learning_rate(config, s) for s in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))
    assert rates[-1] == pytest.approx(1e-4, rel=0.01)


def test_time_schedule_decays_over_the_time_limit_and_needs_one():
    config = TrainConfig(steps=10**6, warmup=10, lr=1e-3, min_lr_ratio=0.1, schedule="time", time_limit=8)
    assert learning_rate(config, 5, minutes=7.0) == pytest.approx(6e-4)  # warm-up is in steps
    rates = [learning_rate(config, 50, minutes=m) for m in (0.0, 2.0, 4.0, 6.0, 8.0, 9.0)]
    assert rates[0] == pytest.approx(1e-3) and rates[2] == pytest.approx(5.5e-4)
    assert all(a > b for a, b in itertools.pairwise(rates[:5]))
    assert rates[4] == rates[5] == pytest.approx(1e-4)
    assert learning_rate(config, 10**5, minutes=0.0) == pytest.approx(1e-3)  # steps do not decay it
    with pytest.raises(ValueError, match="needs time_limit"):
        TrainConfig(schedule="time")
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="epochs", time_limit=1)
    with pytest.raises(ValueError, match="sam_from"):
        TrainConfig(sam_from="none")


def test_a_time_scheduled_run_ends_at_its_limit_with_the_floor_rate(tmp_path, monkeypatch):
    from segprune.train import loop

    clock = itertools.count()  # every call to the loop's clock is one more second

    monkeypatch.setattr(loop.time, "monotonic", lambda: float(next(clock)))
    settings = {"batch_size": 1, "warmup": 1, "val_every": 0, "val_size": 0, "dims": SMALL, "log_every": 1}
    settings["mix"] = {"refer_turns": 1, "qa_turns": 0, "caption_prob": 0.0}
    out = tmp_path / "timed"
    result = train(TrainConfig(out=str(out), steps=1000, schedule="time", time_limit=0.1, **settings))
    assert 1 < result["step"] < 1000 and not result["stopped"]  # ended by its 6 s, not stopped
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == result["step"] and records[-1]["minutes"] >= 0.1
    rates = [r["lr"] for r in records[1:]]
    assert all(a >= b for a, b in itertools.pairwise(rates)) and rates[0] > rates[-1]
    saved = torch.load(out / "checkpoint.pt", weights_only=False)
    assert saved["step"] == result["step"] and saved["minutes"] >= 0.1
    # Resuming a spent schedule trains one step and ends again; the minutes add up over runs.
    again = train(
        TrainConfig(out=str(out), steps=1000, schedule="time", time_limit=0.1, resume=True, **settings)
    )
    assert again["step"] == result["step"] + 1


def test_sam_from_points_keeps_the_seg_loss_out_of_sam(small_model, scene):
    from segprune.train.objective import AuxHeads, compute_losses

    model, batch = small_model.train(), _batch(small_model, scene)
    heads = AuxHeads.for_model(model)
    only_masks = dict.fromkeys(
        ("lm", "patches", "patch_position", "presence", "centre", "point_mask", "seg_point"), 0.0
    )
    for sam_from, sam_learns in (("all", True), ("points", False)):
        model.zero_grad()
        weights = {**only_masks, "point_mask": 1e-30}  # "points" needs the term; this keeps it ~0
        compute_losses(model, heads, batch, weights, sam_from=sam_from)["total"].backward()
        assert model.seg_projector[0].weight.grad.abs().sum() > 0  # the LLM side learns either way
        decoder = model.sam.mask_decoder.output_hypernetworks_mlps[0].layers[0].weight.grad
        encoder = model.sam.vision_encoder.patch_embed.projection.weight.grad
        assert (float(decoder.abs().sum()) > 1e-20) == sam_learns
        assert (float(encoder.abs().sum()) > 1e-20) == sam_learns
    assert all(p.requires_grad for p in model.sam.parameters())  # frozen only inside the [SEG] path
    with pytest.raises(ValueError, match="point_mask must be > 0"):
        compute_losses(model, heads, batch, {"point_mask": 0.0}, sam_from="points")
    model.eval()


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    mix = {"refer_turns": 1, "qa_turns": 1, "caption_prob": 0.0}  # short sequences: a fast test
    settings = {"steps": 3, "batch_size": 1, "warmup": 1, "val_every": 0, "val_size": 0, "dims": SMALL}
    settings["mix"] = mix
    train(TrainConfig(out=str(tmp_path / "straight"), **settings))
    first = train(TrainConfig(out=str(tmp_path / "stopped"), **settings), stop_after=2)
    assert first["stopped"] and first["step"] == 2
    # As if killed after logging step 3 but before its checkpoint, mid-way through another line.
    log = tmp_path / "stopped" / "log.jsonl"
    with log.open("a") as f:
        f.write('{"step": 3, "total": 9.0}\n{"step": 3, "tot')
    second = train(TrainConfig(out=str(tmp_path / "stopped"), resume=True, **settings))
    assert second["step"] == 3 and not second["stopped"]
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == [3] and json.loads(log.read_text())["total"] != 9.0  # redone once, not twice
    straight = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    resumed = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=False)
    for part in ("model", "heads"):
        assert straight[part].keys() == resumed[part].keys()
        assert all(torch.equal(straight[part][k], resumed[part][k]) for k in straight[part])
    assert straight["optimizer"]["state"].keys() == resumed["optimizer"]["state"].keys()
    for key, state in straight["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], resumed["optimizer"]["state"][key]["exp_avg"])
    # The saved model loads and segments.
    from segprune.models.tiny import tiny

    model = tiny(tmp_path / "stopped" / "model")
    assert model.dtype == torch.float32
    assert model.segment([generate_split(1, 0)[0].image], ["What is the star in this image?"])[0].shape == (
        336,
        336,
    )
    with pytest.raises(ValueError, match="other settings"):
        train(TrainConfig(out=str(tmp_path / "stopped"), resume=True, **{**settings, "lr": 0.5}))
    # A finished run is neither resumed by accident nor silently replaced: --overwrite starts afresh.
    with pytest.raises(ValueError, match="already holds a run"):
        train(TrainConfig(out=str(tmp_path / "straight"), **settings))
    train(TrainConfig(out=str(tmp_path / "straight"), overwrite=True, **{**settings, "steps": 1}))
    again = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    assert again["step"] == 1
    log = (tmp_path / "straight" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1]


def test_blind_segmentation_never_runs_the_llava_tower(small_model):
    cases = validation_set(4)
    assert [c.type for c in cases] == ["attribute", "spatial", "superlative", "reasoning"]
    model = small_model.eval()
    tower = model.mllm.model.vision_tower

    def refuse(*args, **kwargs):
        raise AssertionError("the LLaVA tower ran")

    tower.forward, original = refuse, tower.forward
    try:
        masks = segment_blind(model, [c.image for c in cases], [c.query for c in cases])
    finally:
        tower.forward = original
    assert [m.shape for m in masks] == [(336, 336)] * 4


def test_inside_points_are_pixel_centres_inside_each_mask():
    from segprune.train.samples import inside_points

    one = np.zeros((8, 8), bool)
    one[5, 2] = True  # row 5, column 2: the only pixel
    ring = np.ones((8, 8), bool)
    ring[2:6, 2:6] = False
    points = inside_points([one, ring], np.random.default_rng(0))
    assert points[0].tolist() == [2.5, 5.5]  # (x, y) of that pixel's centre
    for _ in range(20):
        x, y = inside_points([ring], np.random.default_rng(_))[0].tolist()
        assert ring[int(y), int(x)]
    with pytest.raises(ValueError, match="empty mask"):
        inside_points([np.zeros((4, 4), bool)], np.random.default_rng(0))


def _batch(model, scene):
    from segprune.train.samples import collate

    sample = make_sample(scene, np.random.default_rng(3), model.tokenizer, model.config, TaskMix())
    return collate([sample], model.config.llava_config.text_config.pad_token_id or 0)


def test_point_terms_train_sams_point_path_and_pull_seg_towards_the_point(small_model, scene):
    from segprune.train.objective import AuxHeads, compute_losses, point_losses

    model, batch = small_model.train(), _batch(small_model, scene)
    heads = AuxHeads.for_model(model)
    only = dict.fromkeys(
        ("lm", "mask_bce", "mask_dice", "patches", "patch_position", "presence", "centre"), 0.0
    )
    # point_mask alone: gradients reach SAM's decoder and image encoder (which runs with grad, unlike
    # `SamModel.get_image_embeddings`), never the LLM.
    model.zero_grad()
    compute_losses(model, heads, batch, {**only, "seg_point": 0.0})["total"].backward()
    assert model.sam.mask_decoder.iou_prediction_head.proj_out.weight.grad.abs().sum() > 0
    assert model.sam.vision_encoder.patch_embed.projection.weight.grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in model.mllm.parameters())
    # seg_point alone: gradients reach the [SEG] projector and the LLM, not SAM (its point is a target).
    model.zero_grad()
    compute_losses(model, heads, batch, {**only, "point_mask": 0.0})["total"].backward()
    assert model.seg_projector[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in model.sam.parameters())
    # The point token is SAM's own embedding of a positive point, and the best of three masks is trained.
    embeddings = model.sam.get_image_embeddings(batch["sam_pixels"])
    k = len(batch["points"])
    targets = batch["mask_targets"]
    loss, tokens = point_losses(model, embeddings.expand(k, -1, -1, -1), batch["points"], targets)
    sparse, _ = model.sam.prompt_encoder(
        batch["points"][:, None, None], torch.ones(k, 1, 1, dtype=torch.long), None, None
    )
    torch.testing.assert_close(tokens, sparse[:, 0, 0])
    assert tokens.shape == (k, model.config.sam_config.vision_config.output_channels)
    assert float(loss.detach()) > 0
    model.eval()


def test_zero_point_weights_skip_the_point_terms(small_model, scene, monkeypatch):
    from segprune.train import objective

    def refuse(*args, **kwargs):
        raise AssertionError("point_losses ran with both point weights at 0")

    monkeypatch.setattr(objective, "point_losses", refuse)
    heads = objective.AuxHeads.for_model(small_model)
    losses = objective.compute_losses(
        small_model, heads, _batch(small_model, scene), {"point_mask": 0.0, "seg_point": 0.0}
    )
    assert float(losses["point_mask"]) == 0 and float(losses["seg_point"]) == 0


def test_init_starts_from_a_saved_model_and_refuses_one_that_does_not_fit(tmp_path):
    from segprune.models.tiny import TinyDims
    from segprune.train.loop import save_model

    source = build_tiny(7, TinyDims(**SMALL))
    save_model(source, tmp_path / "src", "float32")
    settings = {"steps": 1, "batch_size": 1, "val_every": 0, "val_size": 0, "dims": SMALL, "lr": 1e-12}
    settings["mix"] = {"refer_turns": 1, "qa_turns": 0, "caption_prob": 0.0}
    train(TrainConfig(out=str(tmp_path / "run"), init=str(tmp_path / "src"), **settings))
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    expected = source.state_dict()
    assert trained.keys() == expected.keys()
    for key in expected:  # one step at lr 1e-12 leaves every weight where the init put it
        torch.testing.assert_close(trained[key], expected[key], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="do not fit"):
        train(TrainConfig(out=str(tmp_path / "other"), init="bundled", **settings))
    with pytest.raises(ValueError, match="not a saved tiny model"):
        train(TrainConfig(out=str(tmp_path / "other"), init=str(tmp_path / "nothing"), **settings))


def test_patch_centres_are_row_major_x_then_y():
    from segprune.train.objective import patch_centres

    expected = [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
    assert patch_centres(4)[0].tolist() == expected
    with pytest.raises(ValueError, match="5 patch features"):
        patch_centres(5)


def test_attention_loss_is_minus_log_of_the_targets_share(small_model):
    import math
    import types

    from segprune.train.objective import attention_loss

    llava = small_model.config.llava_config
    grid = llava.vision_config.image_size // llava.vision_config.patch_size
    n, image_id = grid * grid, llava.image_token_id
    text = image_id + 1
    ids = torch.tensor([[text, *([image_id] * n), text, text]])  # a text token, the image, two more
    reader = n + 2
    target = torch.zeros(1, 2 * grid, 2 * grid)
    target[0, :grid] = 1.0  # the top half of the image: the first n / 2 tokens
    attention = torch.zeros(1, 2, n + 3, n + 3)
    attention[0, :, reader, 1 : 1 + n // 2] = 1.0 / n  # half the row on the target's tokens ...
    attention[0, :, reader, 1 + n // 2 : 1 + n] = 1.0 / n  # ... half on the rest
    config = types.SimpleNamespace(llava_config=llava)
    rows, readers = torch.tensor([0]), torch.tensor([reader])
    loss = attention_loss([attention, attention], ids, rows, readers, target, config)
    assert float(loss) == pytest.approx(-math.log(0.5 + 1e-6), rel=1e-4)
    attention[0, :, reader, 1 + n // 2 : 1 + n] = 0.0  # all of it on the target: loss ~ 0
    assert float(attention_loss([attention], ids, rows, readers, target, config)) == pytest.approx(
        0, abs=1e-5
    )
    with pytest.raises(ValueError, match="eager attention"):
        attention_loss(None, ids, rows, readers, target, config)
