"""Apply and undo token plans on models: `prune_`, `unprune`, `stats`; per-call instance masks
(`instance_masks`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from segprune.families import family_of, find_family
from segprune.methods.base import MethodConfig
from segprune.patch.runner import PlanRunner
from segprune.patch.state import PruneStats

_ATTR = "_segprune_adapter"

InstanceDetector = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]


def _adapter(model: nn.Module) -> PlanRunner | None:
    family = find_family(model)
    return getattr(family.vlm, _ATTR, None) if family is not None else None


def prune_(
    model: nn.Module,
    config: MethodConfig,
    *,
    seg_token_id: int | None = None,
    instance_masks: InstanceDetector | None = None,
) -> nn.Module:
    """Patch `model` in place so its forward passes run `config`'s token plan; return `model`.

    Args:
        model: a model of a supported family (`segprune.families.FAMILIES`, by `config.model_type`;
            e.g. `LlavaForConditionalGeneration`, `LlavaModel`) or any module that holds one.
            Pruning an already pruned model replaces its config.
        config: a method config, e.g. `FastVConfig(layer=2, keep_ratio=0.25)`; one that needs what
            the family lacks (a vision CLS row) is refused.
        seg_token_id: the `[SEG]` token id, for methods that score by `[SEG]` attention.
        instance_masks: a detector for instance-aware methods (CSP Seg-First): called at each
            prefill with `(pixel_values, grid)`, it returns a `(batch, N)` long tensor holding
            each image token's instance id (-1 for none); see `masks_to_token_ids`.
    """
    if not isinstance(config, MethodConfig):
        raise TypeError(
            f"config must be a segprune method config (e.g. FastVConfig()), got {type(config).__name__}"
        )
    family = family_of(model)
    if seg_token_id is None:  # segmentation models (SegModel) carry their own [SEG] id
        seg_token_id = getattr(model, "seg_token_id", None)
    unprune(model)
    runner = PlanRunner(family, config, seg_token_id=seg_token_id, instance_masks=instance_masks)
    setattr(family.vlm, _ATTR, runner)
    return model


def unprune(model: nn.Module) -> nn.Module:
    """Undo `prune_`: restore `model`'s original forward exactly; a no-op on an unpruned model."""
    adapter = _adapter(model)
    if adapter is not None:
        adapter.remove()
        delattr(adapter.family.vlm, _ATTR)
    return model


def stats(model: nn.Module) -> PruneStats:
    """Return what the last prefill of a pruned `model` kept and what it cost."""
    adapter = _adapter(model)
    if adapter is None:
        raise RuntimeError("model is not pruned; call segprune.prune_(model, config) first")
    return adapter.stats()


def pruning_config(model: nn.Module) -> MethodConfig | None:
    """Return the config `model` is pruned with, or None."""
    adapter = _adapter(model)
    return adapter.config if adapter is not None else None


def _pruned(model: nn.Module, what: str) -> PlanRunner:
    adapter = _adapter(model)
    if adapter is None:
        raise RuntimeError(f"{what} needs a pruned model; call segprune.prune_(model, config) first")
    return adapter


def instance_detector(model: nn.Module) -> InstanceDetector | None:
    """Return the instance detector a pruned `model`'s prefills call (`prune_(..., instance_masks=)`,
    or the one an `instance_masks` block set), or None; raises RuntimeError if `model` is not pruned."""
    return _pruned(model, "instance_detector").instance_masks


@contextlib.contextmanager
def instance_masks(model: nn.Module, detector: InstanceDetector) -> Iterator[None]:
    """Use `detector` as the pruned `model`'s instance detector for the forwards inside the block.

    `detector` is called as `prune_`'s `instance_masks` is: `(pixel_values, grid)` to a `(batch, N)`
    long tensor of instance ids (-1 for none); where a batch's samples differ it is asked one image
    at a time (batch 1). The detector in place before the block (prune_'s, or None) comes back after
    it, also on error. Raises RuntimeError if `model` is not pruned.

        with segprune.instance_masks(model, detector):
            out = model(**inputs)
    """
    runner = _pruned(model, "instance_masks")
    if not callable(detector):
        raise TypeError(
            "detector must be a callable (pixel_values, grid) -> (batch, N) instance ids, got "
            f"{type(detector).__name__}"
        )
    previous, runner.instance_masks = runner.instance_masks, detector
    try:
        yield
    finally:
        runner.instance_masks = previous
