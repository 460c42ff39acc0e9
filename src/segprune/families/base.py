"""What the plan runner needs to know about one model family, as one small class per family.

The runner (`segprune.patch.runner`) knows token plans, live sets, masks, scoring, the KV cache and
stats; a `Family` knows its model: where the decoder layers, embeddings, final norm and rotary
embedding are, how image tokens are laid out, how position ids look and continue while decoding,
how one attention row's query and keys are projected, and what the vision tower offers.

Position ids are the family's own tensors with the sequence on the last dimension (`(batch, L)`
for 1-D RoPE); the runner only gathers them along that dimension and shifts them by integers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from segprune.methods.plan import VisionFeatures


def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather rows along dim 1: `x` `(batch or 1, L, ...)`, `index` `(batch, n)` -> `(batch, n, ...)`."""
    while index.dim() < x.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(x, index, dim=1)


class Family:
    """One model family's answers to the runner's questions, bound to one model instance.

    Subclasses set the class attributes, implement `matches` and every method that raises
    `NotImplementedError`, and register with `segprune.families.register_family`.

    Class attributes:
        name: the family's name in messages and docs ("llava").
        model_types: the `config.model_type` values it serves (the registry's keys).
        model_class: the transformers class it patches, for messages ("LlavaModel").
        has_vision_cls: whether the vision tower has a CLS row (VisionZip, PruMerge+, CSP `cls`).
        graphable: whether `segprune.GraphedPrefill` can capture its prefill.
        static_decode: whether `segprune.patch.static_decode.StaticDecode` runs its decode steps
            (`decode_start` and `step_positions`), which a CUDA graph can capture.
        image_mean, image_std: the normalisation the family's image processor applies.
    """

    name: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    model_class: ClassVar[str] = ""
    has_vision_cls: ClassVar[bool] = False
    graphable: ClassVar[bool] = False
    static_decode: ClassVar[bool] = False
    image_mean: ClassVar[tuple[float, ...]] = (0.0, 0.0, 0.0)
    image_std: ClassVar[tuple[float, ...]] = (1.0, 1.0, 1.0)

    def __init__(self, vlm: nn.Module) -> None:
        self.vlm = vlm

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        """Whether `module` (whose `config.model_type` is one of `model_types`) is the one to patch."""
        raise NotImplementedError

    # -- where things are ---------------------------------------------------------------------

    @property
    def language_model(self) -> nn.Module:
        """The decoder whose forward the runner replaces."""
        raise NotImplementedError

    @property
    def text_config(self) -> Any:
        return self.language_model.config

    @property
    def layers(self) -> nn.ModuleList:
        return self.language_model.layers

    @property
    def embed_tokens(self) -> nn.Module:
        return self.language_model.embed_tokens

    def norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The decoder's final norm."""
        return self.language_model.norm(hidden)

    def watch(
        self,
        on_prompt: Callable[[dict[str, Any]], None],
        on_pixels: Callable[[torch.Tensor | None], None],
        on_features: Callable[[torch.Tensor | None], None],
    ) -> list[Any]:
        """Register the hooks that show the runner its inputs; return their handles.

        `on_prompt` receives `prompt(...)` of every top-level call; `on_pixels` what the vision
        tower receives, in the family's own form (the `pixels` the layout methods below take);
        `on_features` the vision features the projector receives (for
        methods that merge in vision space; families without such a capture never call it).
        """
        raise NotImplementedError

    # -- image tokens ---------------------------------------------------------------------------

    def prompt(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> dict[str, Any]:
        """What the runner keeps of a top-level call: `input_ids` and `image_mask` `(batch, L)` bool.

        By default the image tokens are the positions of `config.image_token_id` (or, given
        embeddings only, the rows equal to that token's embedding)."""
        image_id = self.vlm.config.image_token_id
        if input_ids is not None:
            image_mask = input_ids == image_id
        elif inputs_embeds is not None:
            image_embed = self.vlm.get_input_embeddings().weight[image_id]
            image_mask = (inputs_embeds == image_embed).all(-1)
        else:
            image_mask = None
        return {"image_mask": image_mask, "input_ids": input_ids}

    def expected_image_tokens(self) -> int | None:
        """N when the family fixes it (checked against plans at `prune_` time), else None."""
        return None

    def grid(self, pixels: Any) -> tuple[int, int] | None:
        """`(rows, cols)` of the token grid all images share, row-major in sequence order (None when
        they differ)."""
        raise NotImplementedError

    def image_grids(self, pixels: Any) -> list[tuple[int, int]]:
        """`(rows, cols)` of each image's token grid, images in the order their tokens appear in the
        batch (sample by sample, left to right); an image holds rows * cols tokens."""
        return [self.grid(pixels)] * self.count_images(pixels)

    def token_boxes(self, pixels: Any, image: int = 0) -> torch.Tensor:
        """`(N_i, 4)` pixel box `(top, left, bottom, right)` each token of image `image` covers in its
        `image_pixels`."""
        raise NotImplementedError

    def selector_pixels(self, pixels: Any) -> torch.Tensor | None:
        """The `(batch, 3, H, W)` processor-normalised images selectors read (`SelectContext.pixel_values`)
        when all images have one size; None otherwise."""
        raise NotImplementedError

    def image_pixels(self, pixels: Any, image: int) -> torch.Tensor:
        """The `(1, 3, H, W)` processor-normalised pixels of image `image` alone (its own size)."""
        return self.selector_pixels(pixels)[image : image + 1]

    def rgb(self, pixels: Any) -> torch.Tensor:
        """`selector_pixels` de-normalised with the family's own mean and std: RGB in [0, 1]."""
        x = self.selector_pixels(pixels).float()
        channels = [x[:, c] * self.image_std[c] + self.image_mean[c] for c in range(3)]
        return torch.stack(channels, dim=1).clamp(0, 1)

    # -- positions --------------------------------------------------------------------------------

    def prefill_positions(self, seq: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
        """Position ids of the prefill's tokens; `seq` `(batch, L)` are their sequence indices."""
        raise NotImplementedError

    def take_positions(self, position_ids: torch.Tensor, live_seq: torch.Tensor) -> torch.Tensor:
        """The position ids of the live tokens `live_seq` `(batch, n)`."""
        raise NotImplementedError

    def continuation(self, position_ids: torch.Tensor, length: int) -> Any:
        """What decoding needs to continue the prefill's position ids (kept with the prefill's state)."""
        return None

    def decode_positions(
        self, new_seq: torch.Tensor, position_ids: torch.Tensor | None, continuation: Any
    ) -> torch.Tensor:
        """Position ids of decode-step tokens at sequence indices `new_seq` `(batch, q)`, continuing
        the prefill; `position_ids` are the caller's (None when it gave none)."""
        raise NotImplementedError

    def rope(self, like: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """`(position_ids, position_embeddings)` as the decoder layers take them."""
        raise NotImplementedError

    def decode_start(self, seq_len: int, counted: torch.Tensor, continuation: Any) -> torch.Tensor:
        """`(batch, 1)` position of the first token decoded after a prefill of `seq_len` tokens, as the
        family's cached decode numbers it (static decode reads it once per prefill, outside the step).

        `counted` `(batch, 1)`: the tokens `generate()` counts before it (the real ones under left
        padding); `continuation`: the pruned prefill's (`continuation`), None when unpruned."""
        raise NotImplementedError

    def step_positions(self, start: torch.Tensor) -> torch.Tensor:
        """Position ids, as `rope` takes them, of decode tokens at positions `start` `(batch, 1)`.

        Runs inside a captured decode step: device ops of static shapes, no host reads."""
        raise NotImplementedError

    # -- scoring ----------------------------------------------------------------------------------

    def query_keys(
        self, layer: nn.Module, hidden: torch.Tensor, row: torch.Tensor, rope: Any
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One attention row's inputs in `layer`: `(q (batch, heads, head_dim), k (batch, heads, n, head_dim),
        scale)` for the query at rows `row` `(batch, 1)` of `hidden` `(batch, n, D)`, the hidden states
        entering the layer, with RoPE (`rope`, the live tokens' embeddings) applied and KV heads repeated."""
        raise NotImplementedError

    # -- the vision tower -------------------------------------------------------------------------

    def vision_features(self, layers: tuple[int, ...]) -> VisionFeatures | None:
        """CLS attention and keys of vision layers `layers` for selectors, or None when none are asked."""
        if layers:
            raise ValueError(f"the {self.name} family's vision tower has no CLS row")
        return None

    def clear_vision(self, features: VisionFeatures | None) -> None:
        """Drop the activations `features` captured during a prefill."""

    def remove_vision(self, features: VisionFeatures | None) -> None:
        """Remove the hooks `vision_features` installed."""

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Project merged vision features into the language model (merging in vision space)."""
        raise ValueError(f"the {self.name} family offers no projector input for merging in vision space")

    def count_images(self, pixels: Any) -> int:
        """How many images `pixels` hold."""
        raise NotImplementedError

    def input_embeddings(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor, image_seq: torch.Tensor
    ) -> torch.Tensor:
        """The decoder's input embeddings with the image features at `image_seq` (the graph path)."""
        raise NotImplementedError
