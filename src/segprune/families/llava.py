"""LLaVA-1.5: a Llama-style decoder after a CLIP ViT (CLS row dropped by the "default" strategy).

Image tokens are the `image_token_id` placeholders, one per patch of the tower's square grid in
row-major order; position ids are 1-D and decoding continues them from the unpruned length.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from segprune.families import register_family
from segprune.families.base import Family, take
from segprune.pixels import CLIP_MEAN, CLIP_STD


class LlamaDecoder:
    """Facts of a Llama-style decoder: `input_layernorm`, `q_proj` / `k_proj` (optional `q_norm` /
    `k_norm`), `rotary_emb` returning `(cos, sin)` and the model module's `apply_rotary_pos_emb`."""

    language_model: nn.Module

    def prefill_positions(self, seq: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
        return seq if position_ids is None else position_ids.expand(seq.shape[0], -1)

    def take_positions(self, position_ids: torch.Tensor, live_seq: torch.Tensor) -> torch.Tensor:
        return take(position_ids, live_seq)

    def decode_positions(
        self, new_seq: torch.Tensor, position_ids: torch.Tensor | None, continuation: Any
    ) -> torch.Tensor:
        return new_seq if position_ids is None else position_ids

    def decode_start(self, seq_len: int, counted: torch.Tensor, continuation: Any) -> torch.Tensor:
        # 1-D positions count the tokens seen (generate() passes them; real tokens under padding).
        return counted

    def step_positions(self, start: torch.Tensor) -> torch.Tensor:
        return start

    def rope(self, like: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        cos, sin = self.language_model.rotary_emb(like, position_ids=position_ids)
        batch = like.shape[0]
        return position_ids, (cos.expand(batch, *cos.shape[1:]), sin.expand(batch, *sin.shape[1:]))

    def query_keys(
        self, layer: nn.Module, hidden: torch.Tensor, row: torch.Tensor, rope: Any
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        cos, sin = rope
        attn = layer.self_attn
        head_dim = attn.head_dim
        batch, n, _ = hidden.shape
        x = layer.input_layernorm(hidden)
        q = attn.q_proj(take(x, row)).view(batch, 1, -1, head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(batch, n, -1, head_dim).transpose(1, 2)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        apply = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        q, _ = apply(q, q, take(cos, row), take(sin, row))
        k, _ = apply(k, k, cos, sin)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        return q[:, :, 0], k, attn.scaling


@register_family
class LlavaFamily(LlamaDecoder, Family):
    """`transformers.LlavaModel` with a Llama-style decoder and a CLIP vision tower."""

    name = "llava"
    model_types = ("llava",)
    model_class = "LlavaModel"
    has_vision_cls = True
    graphable = True
    static_decode = True
    image_mean = CLIP_MEAN
    image_std = CLIP_STD

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        from transformers import LlavaModel

        return isinstance(module, LlavaModel)

    def __init__(self, vlm: nn.Module) -> None:
        super().__init__(vlm)
        vision = vlm.config.vision_config
        self.patch = vision.patch_size
        side = vision.image_size // vision.patch_size
        self._grid = (side, side)

    @property
    def language_model(self) -> nn.Module:
        return self.vlm.language_model

    def watch(self, on_prompt, on_pixels, on_features) -> list[Any]:
        def prompt(module: nn.Module, args: tuple, kwargs: dict) -> None:
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            on_prompt(self.prompt(input_ids, kwargs.get("inputs_embeds")))

        def pixels(module: nn.Module, args: tuple, kwargs: dict) -> None:
            on_pixels(kwargs.get("pixel_values", args[0] if args else None))

        return [
            self.vlm.register_forward_pre_hook(prompt, with_kwargs=True),
            # Pixels are taken where the vision tower receives them: generate() may encode the
            # images before the first LlavaModel call and pass features instead of pixel_values.
            self.vlm.vision_tower.register_forward_pre_hook(pixels, with_kwargs=True),
            # The vision features, for methods that merge them before the projector.
            self.vlm.multi_modal_projector.register_forward_pre_hook(
                lambda module, args: on_features(args[0] if args else None)
            ),
        ]

    # -- image tokens ---------------------------------------------------------------------------

    def expected_image_tokens(self) -> int | None:
        return getattr(self.vlm.config, "image_seq_length", None) or None

    def grid(self, pixels: Any) -> tuple[int, int]:
        return self._grid

    def token_boxes(self, pixels: Any, image: int = 0) -> torch.Tensor:
        rows, cols = self._grid
        r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        top, left = (r.flatten() * self.patch), (c.flatten() * self.patch)
        return torch.stack([top, left, top + self.patch, left + self.patch], dim=1)

    def selector_pixels(self, pixels: Any) -> torch.Tensor | None:
        return pixels  # the pixel_values the tower saw: already a (batch, 3, H, W) image

    def count_images(self, pixels: Any) -> int:
        return pixels.shape[0]

    # -- the vision tower -------------------------------------------------------------------------

    def vision_features(self, layers: tuple[int, ...]):
        from segprune.patch.vision import VisionCapture

        if not layers:
            return None
        strategy = self.vlm.config.vision_feature_select_strategy
        return VisionCapture(self.vlm.vision_tower, layers, strategy)

    def clear_vision(self, features) -> None:
        if features is not None:
            features.inputs.clear()  # free the captured activations

    def remove_vision(self, features) -> None:
        if features is not None:
            features.remove()

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.vlm.multi_modal_projector(features)

    def input_embeddings(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor, image_seq: torch.Tensor
    ) -> torch.Tensor:
        config = self.vlm.config
        embeds = self.vlm.get_input_embeddings()(input_ids)
        features = self.vlm.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        ).pooler_output
        features = torch.stack(list(features)).to(embeds.dtype)
        index = image_seq[..., None].expand(-1, -1, embeds.shape[-1])
        return embeds.scatter(1, index, features)
