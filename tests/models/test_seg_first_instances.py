"""CSP Seg-First inside a SegModel: SAM's instances by default, on the embedding the masks reuse; the
caller's or the ground-truth instances when given; the mapping of masks to tokens, by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from seg_helpers import ground_scripted, images

import segprune
from conftest import EXAMPLES
from segprune.methods.csp import SegFirstSelector
from segprune.models import seg_inputs
from segprune.models.sam_instances import InstanceSettings
from segprune.models.seg_model import SegModel

SEG_FIRST = dataclasses.replace(EXAMPLES["csp"], cluster="seg_first")
# Filters off: the random tiny SAM's IoU predictions are far below SAM's 0.88, so every mask counts.
EVERY_MASK = InstanceSettings(points_per_side=2, iou_threshold=0.0, stability_threshold=0.0, min_area=0.0)


@pytest.fixture
def spies(seg_model, monkeypatch):
    """Record the instance ids each Seg-First selection reads, SAM's instance masks and SAM encoder calls."""
    seen = {"ids": [], "masks": [], "encoder_calls": 0}
    instances = SegFirstSelector.instances

    def read(self, context):
        ids = context.instance_masks
        seen["ids"].append(None if ids is None else ids.clone())
        return instances(self, context)

    masks_of = SegModel.sam_instance_masks

    def masks(self, *args, **kwargs):
        out = masks_of(self, *args, **kwargs)
        seen["masks"].append(out)
        return out

    encode = seg_model.sam.get_image_embeddings

    def count(*args, **kwargs):
        seen["encoder_calls"] += 1
        return encode(*args, **kwargs)

    monkeypatch.setattr(SegFirstSelector, "instances", read)
    monkeypatch.setattr(SegModel, "sam_instance_masks", masks)
    monkeypatch.setattr(seg_model.sam, "get_image_embeddings", count)
    monkeypatch.setattr(seg_model, "instance_settings", EVERY_MASK)
    yield seen
    segprune.unprune(seg_model)


def tower_sized(n: int = 2) -> list[np.ndarray]:
    """Images at the tiny tower's own 16 x 16, which the tower sees without any resize."""
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(n)]


@torch.no_grad()
def test_segment_takes_sam_instances_by_default(seg_model, spies):
    segprune.prune_(seg_model, SEG_FIRST)
    assert seg_model.instance_source() == "sam"
    pictures = tower_sized()
    seg_model.segment(pictures, ["the red star", "a ring"])
    [ids] = spies["ids"]
    assert ids.shape == (2, 16) and bool((ids >= 0).any()), "SAM found no instance: the test shows nothing"
    # One SAM encoder pass: the instances come from the embedding the masks are decoded from.
    assert spies["encoder_calls"] == 1
    # The ids equal the detector form's, which runs SAM again on the tower's pixels: for tower-sized
    # images both see the same picture.
    pixels = seg_model._encode(pictures, ["x <image>"] * 2)["pixel_values"]
    assert torch.equal(ids, seg_model.sam_instance_tokens(pixels, (4, 4), EVERY_MASK))


@torch.no_grad()
def test_segment_maps_sam_instances_of_any_image_size(seg_model, spies):
    segprune.prune_(seg_model, SEG_FIRST)
    masks = seg_model.segment(images(), ["the red star", "a ring"])
    [ids], [found] = spies["ids"], spies["masks"]
    assert [m.shape[1:] for m in found] == [(20, 28), (33, 17)]  # at each image's original size
    assert torch.equal(ids, seg_model.instance_token_ids(found))
    # The same instances from scratch: SAM's inputs, its encoder, everything mode.
    sam = seg_inputs.sam_pixels([seg_inputs.as_uint8_chw(i) for i in images()], 32)
    again = seg_model.sam_instance_masks(seg_model.sam.get_image_embeddings(sam.pixels), sam)
    assert torch.equal(ids, seg_model.instance_token_ids(again))
    assert [m.shape for m in masks] == [(20, 28), (33, 17)]


@torch.no_grad()
def test_ground_takes_sam_instances_and_reuses_the_embedding(seg_model, spies):
    segprune.prune_(seg_model, dataclasses.replace(SEG_FIRST, score_token="last"))
    answers = ground_scripted(seg_model, tower_sized(), ["<p> a star </p> [SEG] .", "nothing ."])
    [ids] = spies["ids"]
    assert spies["encoder_calls"] == 1 and len(answers[0].masks) == 1
    pixels = seg_model._encode(tower_sized(), ["x <image>"] * 2)["pixel_values"]
    assert torch.equal(ids, seg_model.sam_instance_tokens(pixels, (4, 4), EVERY_MASK))


@torch.no_grad()
def test_given_masks_and_the_superpixel_choice(seg_model, spies):
    pictures = tower_sized()
    given = [np.zeros((2, 16, 16), dtype=bool) for _ in pictures]
    given[0][0, :8, :8] = True  # tokens 0, 1, 4, 5
    given[1][1, 8:, :] = True  # the bottom half: tokens 8 ... 15, as instance 1
    segprune.prune_(seg_model, SEG_FIRST)
    assert seg_model.instance_source(given=True) == "given"
    seg_model.segment(pictures, ["a", "b"], instance_masks=given)
    expected = torch.full((2, 16), -1)
    expected[0, [0, 1, 4, 5]] = 0
    expected[1, 8:] = 1
    assert torch.equal(spies["ids"][-1], expected) and spies["masks"] == []
    segprune.prune_(seg_model, dataclasses.replace(SEG_FIRST, instances="superpixels"))
    assert seg_model.instance_source() == "superpixels"
    seg_model.segment(pictures, ["a", "b"])
    assert spies["ids"][-1] is None  # the selector cuts superpixels
    segprune.prune_(seg_model, dataclasses.replace(SEG_FIRST, instances="ground_truth"))
    assert seg_model.instance_source(given=True) == "ground_truth"
    seg_model.segment(pictures, ["a", "b"], instance_masks=given)
    assert torch.equal(spies["ids"][-1], expected)


@torch.no_grad()
def test_instance_choices_that_cannot_hold_raise(seg_model):
    pictures = tower_sized()
    given = [np.zeros((1, 16, 16), dtype=bool)] * 2
    try:
        with pytest.raises(ValueError, match="instance_masks apply to CSP Seg-First only"):
            seg_model.segment(pictures, ["a", "b"], instance_masks=given)
        segprune.prune_(seg_model, dataclasses.replace(SEG_FIRST, instances="ground_truth"))
        with pytest.raises(
            ValueError, match="instances='ground_truth' needs the ground-truth instance masks"
        ):
            seg_model.segment(pictures, ["a", "b"])
        for choice in ("sam", "superpixels"):
            segprune.prune_(seg_model, dataclasses.replace(SEG_FIRST, instances=choice))
            with pytest.raises(ValueError, match=f"instances='{choice}' but instance masks were given"):
                seg_model.segment(pictures, ["a", "b"], instance_masks=given)
        segprune.prune_(seg_model, SEG_FIRST)
        with pytest.raises(ValueError, match=r"instance masks for 1 image\(s\) but 2 images"):
            seg_model.segment(pictures, ["a", "b"], instance_masks=given[:1])
        with pytest.raises(
            ValueError, match=r"instance_masks\[1\] is \(8, 16\) \(H, W\) but its image is \(16, 16\)"
        ):
            seg_model.segment(pictures, ["a", "b"], instance_masks=[given[0], given[0][:, :8]])
        with pytest.raises(ValueError, match=r"instance_masks\[0\] must be a \(K, H, W\) bool array"):
            seg_model.segment(pictures, ["a", "b"], instance_masks=[given[0][0], given[0]])
        segprune.prune_(seg_model, SEG_FIRST, instance_masks=lambda pixels, grid: torch.zeros(2, 16).long())
        assert seg_model.instance_source() == "given"
        with pytest.raises(ValueError, match="instance masks were given twice"):
            seg_model.segment(pictures, ["a", "b"], instance_masks=given)
    finally:
        segprune.unprune(seg_model)


def test_instance_token_ids_by_hand(seg_model):
    """A tiny scene at the tower's 16 x 16 (4 x 4 patches of 4 px): a token takes the object covering
    most of its patch; "none" competes as a label, and ties go to the lower one (none, then object 0)."""
    objects = np.zeros((3, 16, 16), dtype=bool)
    objects[0, 0:4, 0:7] = True  # token 0 whole; token 1 three quarters (12 of 16 px) -> 0
    objects[1, 4:8, 0:2] = True  # token 4 half: a tie with none -> none
    objects[1, 8:12, 8:16] = True  # tokens 10, 11 whole
    objects[2, 12:16, 8:11] = True  # token 14: 12 px of 2, 4 px of none -> 2
    objects[2, 12:16, 12:13] = True  # token 15: 4 px of 2 ...
    objects[1, 12:16, 13:14] = True  # ... 4 px of 1, 8 of none -> none
    expected = [0, 0, -1, -1, -1, -1, -1, -1, -1, -1, 1, 1, -1, -1, 2, -1]
    assert seg_model.instance_token_ids([objects]).tolist() == [expected]
    # Twice the size: each mask is resized with the image, then voted on in the tower's frame.
    large = objects.repeat(2, axis=1).repeat(2, axis=2)
    assert seg_model.instance_token_ids([large]).tolist() == [expected]


def test_instance_token_ids_follow_the_centre_crop(seg_model):
    """A 16 x 32 image: the shortest side is already 16, and the tower sees columns 8 ... 23."""
    objects = np.zeros((2, 16, 32), dtype=bool)
    objects[0, :, :8] = True  # cropped away entirely
    objects[1, 0:4, 8:12] = True  # the crop's token 0
    expected = [-1] * 16
    expected[0] = 1
    assert seg_model.instance_token_ids([objects]).tolist() == [expected]
    empty = np.zeros((0, 16, 32), dtype=bool)  # an image without objects: no token has one
    assert seg_model.instance_token_ids([empty, objects]).tolist() == [[-1] * 16, expected]


def test_instance_token_ids_follow_masks_to_token_ids(seg_model):
    """Overlapping random masks at the tower's size: the same ids as `segprune.masks_to_token_ids`."""
    rng = np.random.default_rng(0)
    masks = [rng.random((k, 16, 16)) < 0.4 for k in (5, 2)]
    stacked = torch.zeros(2, 5, 16, 16, dtype=torch.bool)
    for b, m in enumerate(masks):
        stacked[b, : len(m)] = torch.from_numpy(m)
    assert torch.equal(seg_model.instance_token_ids(masks), segprune.masks_to_token_ids(stacked, (4, 4)))
