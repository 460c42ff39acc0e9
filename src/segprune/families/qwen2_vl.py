"""Qwen2-VL and Qwen2.5-VL: a Qwen2 decoder with M-RoPE after a ViT whose 2x2 merger has no CLS row.

Each image becomes `image_grid_thw` patches of 14 px, merged 2x2 into tokens that cover 28x28 px,
row-major over its own merged grid; images of different sizes give samples different token counts,
which the runner lays out in masked slots. Position ids are M-RoPE's `(3, batch, L)` (temporal, height,
width) from the model's own `get_rope_index`; kept tokens keep all three, and decoding continues
from the prefill's largest position id (what the model's `rope_deltas` hold): a generated text token
has three equal components, its sample's largest prompt position + 1 + its decode step. The prefill
reads `image_grid_thw` on the host, so `GraphedPrefill` cannot capture it; static decode steps
(`StaticDecode`) can be captured.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from segprune.families import register_family
from segprune.families.base import Family
from segprune.families.llava import LlamaDecoder
from segprune.pixels import CLIP_MEAN, CLIP_STD


@register_family
class Qwen2VLFamily(LlamaDecoder, Family):
    """`transformers.Qwen2VLModel` and `Qwen2_5_VLModel` (images of any sizes, several per prompt;
    no videos)."""

    name = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")
    model_class = "Qwen2VLModel"
    has_vision_cls = False
    graphable = False
    static_decode = True
    image_mean = CLIP_MEAN  # Qwen2-VL's processor normalises with OpenAI CLIP's mean and std
    image_std = CLIP_STD

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        from transformers import Qwen2_5_VLModel, Qwen2VLModel

        return isinstance(module, (Qwen2VLModel, Qwen2_5_VLModel))

    def __init__(self, vlm: nn.Module) -> None:
        super().__init__(vlm)
        vision = vlm.config.vision_config
        self.patch, self.merge = vision.patch_size, vision.spatial_merge_size
        self.temporal = vision.temporal_patch_size

    @property
    def language_model(self) -> nn.Module:
        return self.vlm.language_model

    def watch(self, on_prompt, on_pixels, on_features) -> list[Any]:
        def prompt(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if kwargs.get("pixel_values_videos") is not None or kwargs.get("video_grid_thw") is not None:
                raise ValueError(
                    "the qwen2_vl family prunes image tokens only; video inputs are not supported yet"
                )
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            on_prompt(self.prompt(input_ids, kwargs.get("inputs_embeds")))

        def pixels(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs.get("hidden_states")
            grid = args[1] if len(args) > 1 else kwargs.get("grid_thw")
            on_pixels((hidden, grid))

        # The merger sits inside the tower and there is no CLS row: no projector-input capture.
        return [
            self.vlm.register_forward_pre_hook(prompt, with_kwargs=True),
            self.vlm.visual.register_forward_pre_hook(pixels, with_kwargs=True),
        ]

    # -- image tokens ---------------------------------------------------------------------------

    def image_grids(self, pixels: Any) -> list[tuple[int, int]]:
        grid = pixels[1] if pixels is not None else None
        if grid is None:
            return []
        out = []
        for i, (t, h, w) in enumerate(grid.tolist()):
            if t != 1:
                raise ValueError(
                    f"image {i} has image_grid_thw t={t}; images have t=1 (videos are not supported)"
                )
            out.append((h // self.merge, w // self.merge))
        return out

    def grid(self, pixels: Any) -> tuple[int, int] | None:
        grids = set(self.image_grids(pixels))
        return grids.pop() if len(grids) == 1 else None

    def token_boxes(self, pixels: Any, image: int = 0) -> torch.Tensor:
        rows, cols = self.image_grids(pixels)[image]
        side = self.patch * self.merge  # 28 px for Qwen2-VL's 14-px patches
        r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        top, left = r.flatten() * side, c.flatten() * side
        return torch.stack([top, left, top + side, left + side], dim=1)

    def _unpatchify(self, patches: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
        """The processor's flattened patches of `n` images of `h x w` patches as `(n, 3, H, W)` (frame 0)."""
        m, p = self.merge, self.patch
        # The processor's order: (t, h/m, w/m, m, m) patches, each (channels, temporal, p, p).
        x = patches.view(n, 1, h // m, w // m, m, m, -1, self.temporal, p, p)[:, 0, ..., 0, :, :]
        x = x.permute(0, 5, 1, 3, 6, 2, 4, 7)  # (n, C, h/m, m, p, w/m, m, p)
        return x.reshape(n, x.shape[1], h * p, w * p)

    def selector_pixels(self, pixels: Any) -> torch.Tensor | None:
        """The processor's flattened patches put back into `(images, 3, H, W)` (first frame)."""
        if self.grid(pixels) is None:
            return None
        _, h, w = pixels[1][0].tolist()
        return self._unpatchify(pixels[0], len(pixels[1]), h, w)

    def image_pixels(self, pixels: Any, image: int) -> torch.Tensor:
        sizes = pixels[1].prod(dim=1).tolist()  # patches per image
        _, h, w = pixels[1][image].tolist()
        start = sum(sizes[:image])
        return self._unpatchify(pixels[0][start : start + sizes[image]], 1, h, w)

    def count_images(self, pixels: Any) -> int:
        return 0 if pixels is None or pixels[1] is None else len(pixels[1])

    # -- positions --------------------------------------------------------------------------------

    def prefill_positions(self, seq: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
        if position_ids is None:
            position_ids = seq
        if position_ids.dim() == 2:
            return position_ids.expand(seq.shape[0], -1)[None].expand(3, -1, -1)
        if position_ids.shape[0] == 4:  # text positions first (generate's packed-mask row)
            position_ids = position_ids[1:]
        return position_ids

    def take_positions(self, position_ids: torch.Tensor, live_seq: torch.Tensor) -> torch.Tensor:
        return position_ids.gather(2, live_seq[None].expand(3, -1, -1))

    def continuation(self, position_ids: torch.Tensor, length: int) -> torch.Tensor:
        # Decode step k of sample b sits at its largest prompt position + 1 + k.
        return position_ids.amax(dim=(0, 2))[:, None] + 1 - length

    def decode_positions(
        self, new_seq: torch.Tensor, position_ids: torch.Tensor | None, continuation: Any
    ) -> torch.Tensor:
        # The caller's ids are ignored: the model derives them from the cache's length, which a
        # pruned first layer shortens; the prefill's own positions say where decoding continues.
        return (new_seq + continuation)[None].expand(3, -1, -1)

    def decode_start(self, seq_len: int, counted: torch.Tensor, continuation: Any) -> torch.Tensor:
        if continuation is not None:  # pruned: as the runner's decode, from the prefill's own positions
            return seq_len + continuation
        # Unpruned: as the model's own decode, the tokens counted plus the `rope_deltas` its prefill
        # kept (each sample's largest position + 1 - its real tokens); none kept counts from 0, as
        # the model does then.
        deltas = getattr(self.vlm, "rope_deltas", None)
        if deltas is None:
            return counted
        batch = counted.shape[0]
        if deltas.dim() != 2 or deltas.shape[1] != 1 or batch % deltas.shape[0]:
            raise ValueError(
                f"the model's rope_deltas {tuple(deltas.shape)} do not fit a batch of {batch}: valid "
                f"(n, 1) with n dividing {batch}; run the prefill through the model's forward first"
            )
        deltas = deltas.repeat_interleave(batch // deltas.shape[0], dim=0)
        return counted + deltas.to(device=counted.device, dtype=counted.dtype)

    def step_positions(self, start: torch.Tensor) -> torch.Tensor:
        return start[None].expand(3, -1, -1)  # a text token: temporal = height = width

    def rope(self, like: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor | None, Any]:
        cos, sin = self.language_model.rotary_emb(like, position_ids)
        return None, (cos, sin)
