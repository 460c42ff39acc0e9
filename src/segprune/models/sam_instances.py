"""Instance masks from a segmentation model's own SAM: its "everything" mode (a grid of point prompts,
the best of SAM's three masks per point, quality filters, non-maximum suppression).

This is the instance source CSP's Seg-First needs when no detector is at hand: LISA-style models
compute SAM's image embedding anyway, and the prompt encoder and mask decoder are cheap. The
defaults follow SAM's automatic mask generator (predicted IoU >= 0.88, stability >= 0.95 at a
logit offset of 1, box NMS at 0.7); NMS here compares the masks themselves, which needs no box
library and is stricter for thin shapes. Masks come back at SAM's low resolution (e/4 x 4 of the
embedding grid: 256 x 256 for SAM at 1024 px).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from segprune.checks import check_int, check_number


@dataclass(frozen=True)
class InstanceSettings:
    """How `sam_instances` turns point prompts into instances.

    Attributes:
        points_per_side: the prompts form a points_per_side x points_per_side grid over the image.
        iou_threshold: keep a mask only if SAM's own IoU prediction is at least this.
        stability_threshold: keep a mask only if its area thresholded at +offset over its area at
            -offset (logits) is at least this: masks that do not move when the threshold does.
        stability_offset: the logit offset of the stability score.
        nms_threshold: of two masks overlapping by more than this IoU, keep the higher-scoring one.
        min_area: drop masks smaller than this fraction of the image.
        max_instances: keep at most this many per image, best first.
    """

    points_per_side: int = 8
    iou_threshold: float = 0.88
    stability_threshold: float = 0.95
    stability_offset: float = 1.0
    nms_threshold: float = 0.7
    min_area: float = 0.001
    max_instances: int = 32

    def __post_init__(self) -> None:
        check_int("InstanceSettings.points_per_side", self.points_per_side, 1)
        check_int("InstanceSettings.max_instances", self.max_instances, 1)
        for name in ("iou_threshold", "stability_threshold", "nms_threshold", "min_area"):
            check_number(f"InstanceSettings.{name}", getattr(self, name), 0, 1)
        check_number("InstanceSettings.stability_offset", self.stability_offset, 0)


def point_grid(points_per_side: int, size: int) -> torch.Tensor:
    """Return `(n * n, 2)` (x, y) pixel coordinates of an n x n grid of cell centres in a `size` image."""
    centres = (torch.arange(points_per_side, dtype=torch.float32) + 0.5) * size / points_per_side
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], dim=1)


def stability_score(logits: torch.Tensor, offset: float) -> torch.Tensor:
    """Return `(...,)` |logits > offset| / |logits > -offset| over the last two dims (1 for an empty mask)."""
    high = (logits > offset).flatten(-2).sum(-1).float()
    low = (logits > -offset).flatten(-2).sum(-1).float()
    return torch.where(low > 0, high / low.clamp(min=1), torch.ones_like(low))


def mask_nms(masks: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Return the indices kept by greedy non-maximum suppression on mask IoU, best score first.

    Args:
        masks: `(K, h, w)` bool.
        scores: `(K,)`; ties keep the lower index.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    flat = masks.flatten(1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=1)
    kept: list[int] = []
    for i in order.tolist():
        if all(float(iou[i, j]) <= threshold for j in kept):
            kept.append(i)
    return torch.tensor(kept, dtype=torch.long)


@torch.no_grad()
def sam_instances(
    sam: torch.nn.Module, image_embeddings: torch.Tensor, image_size: int, settings: InstanceSettings
) -> list[torch.Tensor]:
    """Return, per image, `(K, h, w)` bool instance masks at SAM's low resolution, best first.

    Args:
        sam: a transformers `SamModel` (its prompt encoder and mask decoder run; the image encoder
            does not).
        image_embeddings: `(B, C, e, e)` from `sam.get_image_embeddings`.
        image_size: SAM's input size in pixels (`sam.config.vision_config.image_size`), the frame
            of the point prompts.
    """
    batch = image_embeddings.shape[0]
    points = point_grid(settings.points_per_side, image_size).to(image_embeddings.device)
    n = points.shape[0]
    out = sam(
        image_embeddings=image_embeddings,
        input_points=points[None, :, None, :].expand(batch, n, 1, 2).to(image_embeddings.dtype),
        input_labels=torch.ones(batch, n, 1, dtype=torch.long, device=image_embeddings.device),
        multimask_output=True,
    )
    logits, predicted = out.pred_masks.float(), out.iou_scores.float()  # (B, n, 3, h, w), (B, n, 3)
    best = predicted.argmax(dim=-1)  # SAM's choice among its three masks for one point
    logits = logits.gather(2, best[..., None, None, None].expand(-1, -1, 1, *logits.shape[-2:]))[:, :, 0]
    scores = predicted.gather(2, best[..., None])[..., 0]
    masks = logits > 0
    area = masks.flatten(2).float().mean(-1)
    good = (
        (scores >= settings.iou_threshold)
        & (stability_score(logits, settings.stability_offset) >= settings.stability_threshold)
        & (area >= settings.min_area)
    )
    instances = []
    for b in range(batch):
        index = good[b].nonzero().flatten()
        kept = index[mask_nms(masks[b, index], scores[b, index], settings.nms_threshold)]
        instances.append(masks[b, kept[: settings.max_instances]])
    return instances
