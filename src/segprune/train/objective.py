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
- a head on the same features: where each patch is (its centre, x and y in 0..1). LLaVA's 1-D RoPE
  tells attention where a token sits but not the values it passes on, so without this the `[SEG]`
  state could find the target's tokens and still not say where they are (seen: `centre` and
  `seg_point` flat for 800 steps);
- a head on CLIP's pooled CLS output: which colours and kinds the image holds, so CLS attention,
  which VisionZip, PruMerge and CSP's `cls` mode read, points at objects as in a real CLIP;
- a head on each `[SEG]` state: the target's centre, a direct push to locate it in the image;
- SAM's own pre-training task on a point drawn inside each target (`point_mask`: its three masks,
  the best one's BCE + dice as SAM trains, and MSE of its IoU head), which gives the from-scratch
  mask decoder something to segment with long before the LLM can steer it, and which SAM's
  "everything" mode (Seg-First's instances) relies on; its single-mask output, the one `[SEG]`
  decodes through, is trained on the same point;
- `seg_attention` (off by default; needs eager attention): the state that decodes each `[SEG]`
  asked to put its attention, in every decoder layer, on the image tokens its target covers
  (-log of that share, tokens weighted by the fraction of their patch the target covers). Without
  it the bundled model's `[SEG]` state spreads its attention over the whole image (about 4% on the
  target's tokens, which are 4.5% of them: `benchmarks/seg_attention.py`). It makes the test-bed
  find objects as attention-ranked pruning assumes real models do, so it favours those methods;
- `seg_point`: the `[SEG]` prompt token pulled (MSE) towards SAM's embedding of that point, so the
  `[SEG]` state must say *where* the target is, which only the image tokens can tell the LLM.

With `sam_from="points"` SAM learns only from the point task and its patch head; the `[SEG]` mask
loss then trains the LLM and projector through a SAM it leaves unchanged (as LISA's flows through a
SAM pretrained on points), so the mask decoder cannot learn to find targets from the words alone.

The heads live in `AuxHeads`, outside `SegModel`: they are saved in training checkpoints only.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segprune.checks import check_choice, check_fields, check_number
from segprune.train.config import SAM_FROM
from segprune.train.samples import COLOUR_CLASSES, N_PRESENCE, SHAPE_CLASSES, SIZE_CLASSES

WEIGHTS = {
    "lm": 1.0,
    "mask_bce": 2.0,
    "mask_dice": 2.0,
    "patches": 1.0,
    "presence": 0.5,
    "centre": 1.0,
    "patch_position": 1.0,
    "point_mask": 1.0,
    "seg_point": 1.0,
    "seg_attention": 0.0,
}


def check_sam_from(sam_from: str, weights: dict[str, Any]) -> None:
    """Raise unless `sam_from` is "all" or "points", and "points" comes with a `point_mask` weight."""
    check_choice("sam_from", sam_from, SAM_FROM)
    if sam_from == "points" and not {**WEIGHTS, **weights}["point_mask"]:
        raise ValueError('sam_from="points" trains SAM only through the point task: point_mask must be > 0')


def check_loss_weights(weights: dict[str, Any]) -> dict[str, Any]:
    """Return `weights` if every key is a `WEIGHTS` name and every value a finite number >= 0."""
    check_fields("loss weights", weights, list(WEIGHTS))
    for name, value in weights.items():
        check_number(f"loss weight {name}", value, 0)
    return weights


HEADS = {"colour": len(COLOUR_CLASSES), "shape": len(SHAPE_CLASSES), "size": len(SIZE_CLASSES)}


class AuxHeads(nn.Module):
    """Linear probes used only in training.

    Per-patch classes (CLIP, SAM) and positions (CLIP), presence (CLS), centre (`[SEG]`).
    """

    def __init__(self, vision_width: int, sam_width: int, llm_width: int) -> None:
        super().__init__()
        classes = sum(HEADS.values())
        self.vision_patches = nn.Linear(vision_width, classes)
        self.vision_position = nn.Linear(vision_width, 2)
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


def dice_per_mask(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """LISA's dice loss of each `(h, w)` mask (the last two dims): 1 - (2 |p t| + eps) / (|p| + |t| + eps),
    p = sigmoid."""
    p = logits.sigmoid().flatten(-2)
    t = targets.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """LISA's dice loss per mask (`dice_per_mask`), averaged over the masks."""
    return dice_per_mask(logits, targets, eps).mean()


def point_losses(
    model: nn.Module, sam_embeddings: torch.Tensor, points: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's point-prompt loss and the point prompt tokens for `seg_point`.

    `sam_embeddings` `(k, C, e, e)`, `points` `(k, 2)` pixel indices in SAM's input frame,
    `targets` `(k, h, w)` soft masks. Of SAM's three masks per point the one with the lowest BCE +
    dice is trained (SAM's rule for ambiguous points); its IoU head regresses each mask's IoU.
    Returns the loss and `(k, C)` point embeddings (positive label, without SAM's padding token).
    """
    labels = torch.ones(len(points), 1, 1, dtype=torch.long, device=points.device)
    sparse, _ = model.sam.prompt_encoder(
        points[:, None, None, :].to(sam_embeddings.dtype), labels, None, None
    )
    out = model.sam(
        image_embeddings=sam_embeddings,
        input_points=points[:, None, None, :].to(sam_embeddings.dtype),
        input_labels=labels,
        multimask_output=True,
    )
    logits = out.pred_masks[:, 0].float()  # (k, 3, h, w)
    target = targets[:, None].expand_as(logits)
    best = _mask_terms(logits, target).min(dim=1).values.mean()
    with torch.no_grad():
        hard, truth = logits > 0, target > 0.5
        iou = (hard & truth).flatten(2).sum(-1) / (hard | truth).flatten(2).sum(-1).clamp(min=1)
    iou_loss = F.mse_loss(out.iou_scores[:, 0].float(), iou.float())
    # SAM's single-mask output (its first mask token) is the one `decode_masks` reads for `[SEG]`:
    # trained here too, so that a SAM taught only by points (`sam_from="points"`) has it.
    single = (
        model.sam(
            image_embeddings=sam_embeddings,
            input_points=points[:, None, None, :].to(sam_embeddings.dtype),
            input_labels=labels,
            multimask_output=False,
        )
        .pred_masks[:, 0]
        .float()
    )  # (k, 1, h, w)
    single_loss = _mask_terms(single, targets[:, None]).mean()
    return best + single_loss + iou_loss, sparse[:, 0, 0]


def _mask_terms(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + dice of each mask: `(k, m, h, w)` logits and soft targets -> `(k, m)`."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(2).mean(-1)
    return bce + dice_per_mask(logits, target)


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Record no gradient for `module`'s parameters in the ops run inside (the inputs still get theirs)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def attention_loss(
    attentions: Sequence[torch.Tensor] | None,
    input_ids: torch.Tensor,
    rows: torch.Tensor,
    readers: torch.Tensor,
    mask_targets: torch.Tensor,
    config: Any,
) -> torch.Tensor:
    """-log of the share of each reader's attention (mean over heads, every layer) on its target's tokens.

    `attentions`: the decoder's `(B, heads, L, L)` per layer (eager attention). `rows`, `readers`:
    the sample and position of the state that decodes each `[SEG]`; `mask_targets` `(k, h, w)` its
    target's soft mask over the whole (square) image, pooled here to the image-token grid.
    """
    if not attentions or attentions[0] is None:
        raise ValueError("the seg_attention loss needs attention weights: train with eager attention")
    llava = config.llava_config
    grid = llava.vision_config.image_size // llava.vision_config.patch_size
    cover = F.adaptive_avg_pool2d(mask_targets[:, None].float(), grid).flatten(1)  # (k, N)
    image = input_ids[rows] == llava.image_token_id  # (k, L); N image tokens per row, in order
    total = mask_targets.new_zeros(())
    for attention in attentions:
        row = attention[rows, :, readers].float().mean(1)  # (k, L)
        on_image = row[image].reshape(len(rows), -1)  # (k, N)
        share = (on_image * cover).sum(1) / on_image.sum(1).clamp(min=1e-12)
        total = total - torch.log(share + 1e-6).mean()
    return total / len(attentions)


def patch_centres(n: int) -> torch.Tensor:
    """`(1, n, 2)` centres (x, y in 0..1) of the patches of a square grid of `n`, row-major."""
    grid = math.isqrt(n)
    if grid * grid != n:
        raise ValueError(f"{n} patch features do not form a square grid")
    centre = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    y, x = torch.meshgrid(centre, centre, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], dim=-1)[None]


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
    model: nn.Module,
    heads: AuxHeads,
    batch: dict[str, Any],
    weights: dict[str, float] | None = None,
    sam_from: str = "all",
) -> dict[str, torch.Tensor]:
    """Run one teacher-forced forward of `model` on a collated batch and return every weighted loss term.

    The batch's tensors must already be on the model's device. `weights` override entries of
    `WEIGHTS`. Keys: the `WEIGHTS` names and "total". `sam_from` ("all" or "points", see
    `TrainConfig.sam_from`): whether the `[SEG]` mask loss trains SAM too.
    """
    weights = {**WEIGHTS, **check_loss_weights(weights or {})}
    check_sam_from(sam_from, weights)
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
            output_attentions=bool(weights["seg_attention"]),
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
    # Not `sam.get_image_embeddings`: it runs under no_grad (LISA keeps SAM's trained encoder frozen),
    # and ours starts from scratch. Runs before 2026-12-02 used it, so their SAM encoder stayed random.
    sam_embeddings = model.sam.vision_encoder(batch["sam_pixels"])[0]
    if len(rows):
        states = hidden[rows, cols - 1]
        if sam_from == "points":  # the [SEG] loss flows through SAM without changing it
            with frozen(model.sam):
                low_res = model.decode_masks(sam_embeddings.detach()[rows], states[:, None])
        else:
            low_res = model.decode_masks(sam_embeddings[rows], states[:, None])
        low_res = low_res[:, 0].float()
        mask_targets = batch["mask_targets"]
        losses["mask_bce"] = F.binary_cross_entropy_with_logits(low_res, mask_targets)
        losses["mask_dice"] = dice_loss(low_res, mask_targets)
        losses["centre"] = F.smooth_l1_loss(
            heads.centre(states.float()).sigmoid(), batch["centres"], beta=0.05
        )
        if weights["point_mask"] or weights["seg_point"]:
            losses["point_mask"], point_tokens = point_losses(
                model, sam_embeddings[rows], batch["points"], mask_targets
            )
            prompts = model.seg_projector(states.to(model.seg_projector[0].weight.dtype))
            losses["seg_point"] = F.mse_loss(prompts.float(), point_tokens.detach().float())
        else:  # the bundled model's recipe: no point terms, and none of their cost
            losses["point_mask"] = losses["seg_point"] = hidden.new_zeros(())
        if weights["seg_attention"]:
            losses["seg_attention"] = attention_loss(
                out.attentions, batch["input_ids"], rows, cols - 1, mask_targets, model.config
            )
        else:
            losses["seg_attention"] = hidden.new_zeros(())
    else:
        for name in ("mask_bce", "mask_dice", "centre", "point_mask", "seg_point", "seg_attention"):
            losses[name] = hidden.new_zeros(())

    # Dense and CLS probes on the towers.
    features = captured["hidden_states"][model.config.llava_config.vision_feature_layer][:, 1:]
    sam_features = sam_embeddings.flatten(2).transpose(1, 2)
    losses["patch_position"] = F.smooth_l1_loss(
        heads.vision_position(features.float()).sigmoid(),
        patch_centres(features.shape[1]).to(features.device).expand(len(features), -1, -1),
        beta=0.05,
    )
    losses["patches"] = patch_loss(heads.vision_patches(features.float()), batch["vision_patches"])
    losses["patches"] = losses["patches"] + patch_loss(
        heads.sam_patches(sam_features.float()), batch["sam_patches"]
    )
    losses["presence"] = F.binary_cross_entropy_with_logits(
        heads.presence(captured["pooled"].float()), batch["presence"]
    )
    losses = {name: weights[name] * value for name, value in losses.items()}
    losses["total"] = sum(losses.values())
    return losses
