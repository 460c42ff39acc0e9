"""The tiny model's training objective: LISA's losses plus auxiliary heads that make image tokens matter.

LISA trains with language-modelling cross-entropy on the answer and, for each `[SEG]`, BCE + dice on
SAM's mask (weights 1, 2, 0.5). We weight dice 2.0: LISA starts from a trained SAM, ours starts from
scratch, and with dice at 0.5 the BCE term kept every mask logit below 0 for 1250 steps (the masks
ranked pixels well, AUC ~0.97 on large objects, but thresholded to nothing); 120 steps at 2.0 lifted
them over 0. With only these losses a small model learns to segment from the query text and SAM's
own view of the image, and its LLM never reads the image tokens (gIoU was the same with 0 or 576 of
them in the calibration run, issue 10). So we add, training only:

- dense heads on the CLIP features LLaVA projects (and on SAM's embeddings): the colour, kind and
  size of what covers each patch, so each visual token carries its object's identity;
- a head on CLIP's pooled CLS output: which colours and kinds the image holds, so CLS attention,
  which VisionZip, PruMerge and CSP's `cls` mode read, points at objects as in a real CLIP;
- a head on each `[SEG]` state: the target's centre, a direct push to locate it in the image.

The heads live in `AuxHeads`, outside `SegModel`: they are saved in training checkpoints only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segprune.checks import check_fields, check_number
from segprune.train.samples import COLOUR_CLASSES, N_PRESENCE, SHAPE_CLASSES, SIZE_CLASSES

WEIGHTS = {"lm": 1.0, "mask_bce": 2.0, "mask_dice": 2.0, "patches": 1.0, "presence": 0.5, "centre": 1.0}


def check_loss_weights(weights: dict[str, Any]) -> dict[str, Any]:
    """Return `weights` if every key is a `WEIGHTS` name and every value a finite number >= 0."""
    check_fields("loss weights", weights, list(WEIGHTS))
    for name, value in weights.items():
        check_number(f"loss weight {name}", value, 0)
    return weights


HEADS = {"colour": len(COLOUR_CLASSES), "shape": len(SHAPE_CLASSES), "size": len(SIZE_CLASSES)}


class AuxHeads(nn.Module):
    """Linear probes used only in training: per-patch classes (CLIP, SAM), presence (CLS), centre ([SEG])."""

    def __init__(self, vision_width: int, sam_width: int, llm_width: int) -> None:
        super().__init__()
        classes = sum(HEADS.values())
        self.vision_patches = nn.Linear(vision_width, classes)
        self.sam_patches = nn.Linear(sam_width, classes)
        self.presence = nn.Linear(vision_width, N_PRESENCE)
        self.centre = nn.Linear(llm_width, 2)

    @classmethod
    def for_model(cls, model: nn.Module) -> AuxHeads:
        """Return heads sized for a `SegModel`."""
        llava = model.config.llava_config
        return cls(
            llava.vision_config.hidden_size,
            model.config.sam_config.vision_config.output_channels,
            llava.text_config.hidden_size,
        )


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """LISA's dice loss per mask, averaged: 1 - (2 |p t| + eps) / (|p| + |t| + eps), p = sigmoid."""
    p = logits.sigmoid().flatten(1)
    t = targets.flatten(1)
    return (1 - (2 * (p * t).sum(1) + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


def patch_loss(logits: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Soft cross-entropy of `(B, n, classes)` logits against the colour/shape/size targets, summed."""
    total, start = logits.new_zeros(()), 0
    for name, width in HEADS.items():
        target = targets[name].flatten(1, 2)  # (B, grid*grid, width)
        total = total + F.cross_entropy(
            logits[..., start : start + width].flatten(0, 1), target.flatten(0, 1)
        )
        start += width
    return total


def compute_losses(
    model: nn.Module, heads: AuxHeads, batch: dict[str, Any], weights: dict[str, float] | None = None
) -> dict[str, torch.Tensor]:
    """Run one teacher-forced forward of `model` on a collated batch and return every weighted loss term.

    The batch's tensors must already be on the model's device. `weights` override entries of
    `WEIGHTS`. Keys: the `WEIGHTS` names and "total".
    """
    captured: dict[str, Any] = {}
    llava = model.mllm.model

    def keep(module: nn.Module, args: Any, output: Any) -> None:
        # Read the fields now: LlavaModel later overwrites `pooler_output` with the image features.
        captured["hidden_states"], captured["pooled"] = output.hidden_states, output.pooler_output

    hook: Callable = llava.vision_tower.register_forward_hook(keep)
    try:
        position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        out = llava(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=position_ids,
            pixel_values=batch["pixel_values"],
            use_cache=False,
        )
    finally:
        hook.remove()
    hidden = out.last_hidden_state
    labels = batch["labels"]
    losses: dict[str, torch.Tensor] = {}

    # Language modelling: the state at t predicts token t + 1; only answer tokens are targets.
    targets = labels[:, 1:]
    chosen = targets != -100
    logits = model.mllm.lm_head(hidden[:, :-1][chosen])
    losses["lm"] = F.cross_entropy(logits.float(), targets[chosen])

    # Masks: one per [SEG], from the state one before it (LISA's offset, as SegModel.segment reads it).
    rows, cols = (batch["input_ids"] == model.config.seg_token_id).nonzero(as_tuple=True)
    sam_embeddings = model.sam.get_image_embeddings(batch["sam_pixels"])
    if len(rows):
        states = hidden[rows, cols - 1]
        low_res = model.decode_masks(sam_embeddings[rows], states[:, None])[:, 0].float()
        mask_targets = batch["mask_targets"]
        losses["mask_bce"] = F.binary_cross_entropy_with_logits(low_res, mask_targets)
        losses["mask_dice"] = dice_loss(low_res, mask_targets)
        losses["centre"] = F.smooth_l1_loss(
            heads.centre(states.float()).sigmoid(), batch["centres"], beta=0.05
        )
    else:
        for name in ("mask_bce", "mask_dice", "centre"):
            losses[name] = hidden.new_zeros(())

    # Dense and CLS probes on the towers.
    features = captured["hidden_states"][model.config.llava_config.vision_feature_layer][:, 1:]
    sam_features = sam_embeddings.flatten(2).transpose(1, 2)
    losses["patches"] = patch_loss(heads.vision_patches(features.float()), batch["vision_patches"])
    losses["patches"] = losses["patches"] + patch_loss(
        heads.sam_patches(sam_features.float()), batch["sam_patches"]
    )
    losses["presence"] = F.binary_cross_entropy_with_logits(
        heads.presence(captured["pooled"].float()), batch["presence"]
    )
    weights = {**WEIGHTS, **check_loss_weights(weights or {})}
    losses = {name: weights[name] * value for name, value in losses.items()}
    losses["total"] = sum(losses.values())
    return losses
