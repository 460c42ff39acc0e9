"""CLS attention and keys of a CLIP-style vision tower, recomputed from captured layer inputs."""

from __future__ import annotations

import torch
from torch import nn

from segprune.methods.scores import attention_row


def encoder_layers(vision_tower: nn.Module) -> nn.ModuleList:
    """Return the encoder layers of a CLIP-style vision tower (`vision_model.encoder.layers`)."""
    model = getattr(vision_tower, "vision_model", vision_tower)
    layers = getattr(getattr(model, "encoder", None), "layers", None)
    if layers is None:
        raise TypeError(
            f"{type(vision_tower).__name__} has no encoder.layers; CLS-based methods need a CLIP ViT"
        )
    return layers


class VisionCapture:
    """Keeps the inputs of chosen vision-encoder layers during one forward and answers
    CLS-attention and key queries about them (the `VisionFeatures` protocol).

    Only the requested layers are hooked, and only their input hidden states are kept (a
    reference, no copy); every layer still runs on the tower's own attention implementation.
    """

    def __init__(self, vision_tower: nn.Module, layers: tuple[int, ...], select_strategy: str) -> None:
        self.layers = encoder_layers(vision_tower)
        n = len(self.layers)
        for layer in layers:
            if not -n <= layer < n:
                raise ValueError(f"vision layer {layer} does not exist; the vision tower has {n} layers")
        if layers and select_strategy != "default":
            raise ValueError(
                "CLS-based selection needs vision_feature_select_strategy='default' "
                f"(CLS not an image token); this model uses {select_strategy!r}"
            )
        self.wanted = sorted({layer % n for layer in layers})
        self.inputs: dict[int, torch.Tensor] = {}
        self._hooks = [self.layers[i].register_forward_pre_hook(self._keeper(i)) for i in self.wanted]

    def _keeper(self, index: int):
        def keep(module: nn.Module, args: tuple) -> None:
            self.inputs[index] = args[0]

        return keep

    def remove(self) -> None:
        """Remove the hooks and drop captured tensors."""
        for hook in self._hooks:
            hook.remove()
        self.inputs.clear()

    def _projected(self, layer: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        index = layer % len(self.layers)
        if index not in self.inputs:
            raise RuntimeError(
                f"vision layer {layer} was not captured: list it in the config's vision_layers() "
                "and run the model with pixel_values"
            )
        module = self.layers[index]
        x = module.layer_norm1(self.inputs[index])
        attn = module.self_attn
        batch, length, _ = x.shape
        keys = attn.k_proj(x).view(batch, length, attn.num_heads, attn.head_dim).transpose(1, 2)
        return attn, x, keys

    def cls_attention(self, layer: int) -> torch.Tensor:
        """`(batch, N)` attention of CLS to each patch token in `layer`, mean over heads."""
        attn, x, keys = self._projected(layer)
        batch, length, _ = x.shape
        query = attn.q_proj(x[:, 0]).view(batch, attn.num_heads, attn.head_dim)
        valid = torch.ones(batch, length, dtype=torch.bool, device=x.device)
        return attention_row(query, keys, valid, attn.scale)[:, 1:]

    def keys(self, layer: int) -> torch.Tensor:
        """`(batch, heads, N, head_dim)` keys of the patch tokens in `layer`."""
        return self._projected(layer)[2][:, :, 1:]
