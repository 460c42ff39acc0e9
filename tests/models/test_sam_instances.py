"""SAM's everything mode as an instance source: the point grid, the filters and NMS by hand, the whole
pipeline on a stand-in SAM with designed outputs, and shapes on the tiny model's real SAM."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from segprune.models.sam_instances import (
    InstanceSettings,
    mask_nms,
    point_grid,
    sam_instances,
    stability_score,
)


def test_point_grid_is_cell_centres_row_by_row():
    assert point_grid(2, 8).tolist() == [[2.0, 2.0], [6.0, 2.0], [2.0, 6.0], [6.0, 6.0]]


def test_stability_is_the_area_ratio_at_plus_and_minus_the_offset():
    logits = torch.tensor([[[2.0, 0.5], [-0.5, -3.0]]])  # > 1: one pixel; > -1: three pixels
    assert stability_score(logits, 1.0).tolist() == pytest.approx([1 / 3])
    assert stability_score(torch.full((1, 2, 2), -5.0), 1.0).tolist() == [1.0]  # empty mask


def test_nms_keeps_the_best_of_overlapping_masks():
    a = torch.zeros(3, 4, 4, dtype=torch.bool)
    a[0, :, :2] = True  # 8 pixels
    a[1, :, :2] = True
    a[1, 0, 2] = True  # 9 pixels, IoU 8/9 with mask 0
    a[2, :, 3] = True  # disjoint
    assert mask_nms(a, torch.tensor([0.5, 0.9, 0.1]), 0.7).tolist() == [1, 2]
    assert mask_nms(a, torch.tensor([0.5, 0.9, 0.1]), 0.95).tolist() == [1, 0, 2]


class FakeSam:
    """Returns designed masks and IoU predictions for 4 point prompts (a 2 x 2 grid)."""

    def __init__(self) -> None:
        self.calls = []

    def __call__(self, image_embeddings, input_points, input_labels, multimask_output):
        self.calls.append((input_points.clone(), input_labels.clone(), multimask_output))
        logits = torch.full((1, 4, 3, 8, 8), -4.0)
        iou = torch.full((1, 4, 3), 0.5)
        logits[0, 0, 1, :4, :4] = 4.0  # point 0: its second mask is best, a sharp 4 x 4 square
        iou[0, 0, 1] = 0.95
        logits[0, 1, 0, :4, :4] = 4.0  # point 1: the same square again, lower score: suppressed
        logits[0, 1, 0, 0, 4] = 4.0
        iou[0, 1, 0] = 0.9
        logits[0, 2, 2, 4:, 4:] = 0.5  # point 2: a soft mask, unstable at offset 1
        iou[0, 2, 2] = 0.99
        logits[0, 3, 0, 6:, :2] = 4.0  # point 3: a sharp 2 x 2 mask of its own
        iou[0, 3, 0] = 0.9
        return SimpleNamespace(pred_masks=logits, iou_scores=iou)


def test_pipeline_filters_and_suppresses():
    sam = FakeSam()
    [masks] = sam_instances(sam, torch.zeros(1, 2, 4, 4), 16, InstanceSettings(points_per_side=2))
    points, labels, multimask = sam.calls[0]
    assert points.shape == (1, 4, 1, 2) and points[0, :, 0].tolist() == point_grid(2, 16).tolist()
    assert labels.tolist() == [[[1], [1], [1], [1]]] and multimask
    assert masks.shape == (2, 8, 8)
    assert int(masks[0].sum()) == 16 and bool(masks[0, :4, :4].all())  # point 0, best score
    assert int(masks[1].sum()) == 4 and bool(masks[1, 6:, :2].all())  # point 3
    settings = InstanceSettings(points_per_side=2, max_instances=1)
    [one] = sam_instances(sam, torch.zeros(1, 2, 4, 4), 16, settings)
    assert one.shape == (1, 8, 8)


def test_runs_on_the_tiny_models_sam():
    from segprune.models import tiny

    model = tiny().eval()
    size = model.config.sam_config.vision_config.image_size
    embeddings = model.sam.get_image_embeddings(torch.rand(2, 3, size, size))
    settings = InstanceSettings(points_per_side=4, iou_threshold=0.0, stability_threshold=0.0, min_area=0.0)
    instances = sam_instances(model.sam, embeddings, size, settings)
    assert len(instances) == 2
    assert all(m.dtype == torch.bool and m.shape[1:] == (84, 84) and 1 <= len(m) <= 16 for m in instances)


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match=r"InstanceSettings\.points_per_side=0"):
        InstanceSettings(points_per_side=0)
    with pytest.raises(ValueError, match=r"InstanceSettings\.nms_threshold=1\.5"):
        InstanceSettings(nms_threshold=1.5)


@torch.no_grad()
def test_seg_first_takes_instances_from_the_models_own_sam(seg_model):
    """`SegModel.sam_instance_tokens` plugs into prune_ as CSP Seg-First's instance source."""
    import dataclasses

    from seg_helpers import images

    import segprune
    from conftest import EXAMPLES

    pixels = seg_model._encode(images(), ["x <image>"] * 2)["pixel_values"]
    ids = seg_model.sam_instance_tokens(
        pixels,
        (4, 4),
        InstanceSettings(points_per_side=2, iou_threshold=0.0, stability_threshold=0.0, min_area=0.0),
    )
    assert ids.shape == (2, 16) and ids.dtype == torch.long and int(ids.min()) >= -1
    config = dataclasses.replace(EXAMPLES["csp"], cluster="seg_first")
    calls = []

    def instances(pixel_values, grid):
        calls.append(grid)
        return seg_model.sam_instance_tokens(pixel_values, grid)

    segprune.prune_(seg_model, config, instance_masks=instances)
    try:
        masks = seg_model.segment(images(), ["the red car", "a dog"])
    finally:
        segprune.unprune(seg_model)
    assert calls == [(4, 4)] and [m.shape for m in masks] == [(20, 28), (33, 17)]
