"""A LISA-style segmentation model on stock transformers parts: LLaVA, SAM and a `[SEG]` projector.

The multimodal LLM (`LlavaForConditionalGeneration`) reads the image and the text; the last-layer
hidden state (after the final norm) that predicts each `[SEG]` goes through a small MLP (LISA's
`text_hidden_fcs`) and becomes the single sparse prompt of SAM's mask decoder, with no points or
boxes and one mask per prompt. Two protocols:

- `segment` (LISA referring segmentation): one teacher-forced forward whose answer already holds
  `[SEG]`; one mask per query.
- `ground` (GLaMM grounded conversation): greedy generation with the KV cache; the hidden state of
  each decode step is kept, so the one that produced a `[SEG]` needs no second forward.

`segprune.prune_(model, config)` prunes the LLM's image tokens only; the LLM's output keeps the
unpruned length, so `[SEG]` positions need no remapping. Under CSP's Seg-First (`CSPConfig(cluster=
"seg_first")`) both protocols hand the selector instance masks: by default SAM's everything mode on
the SAM image embedding the masks are decoded from anyway (`CSPConfig.instances`,
`SegModel.instance_source`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
    SamConfig,
    SamModel,
)

from segprune.models import seg_inputs
from segprune.models.gcg import GroundedAnswer, parse_grounded
from segprune.models.prompts import GCG_QUERY, LLAVA_PROMPT, SCORE_TOKENS
from segprune.models.sam_instances import InstanceSettings, sam_instances


class SegModelConfig(PretrainedConfig):
    """Configuration of `SegModel`: the LLaVA and SAM configs, the `[SEG]` id and the prompt format.

    Fields:
        llava_config: a `LlavaConfig` (or its dict).
        sam_config: a `SamConfig` (or its dict); its prompt width is the projector's output width.
        seg_token_id: id of `[SEG]` in the tokenizer.
        prompt_template: the user turn; `{query}` is replaced by the query, `<image>` marks the image.
        seg_answer: the teacher-forced answer of `segment`; must hold `[SEG]`.
        gcg_query: the default query of `ground` (GLaMM's GCG instruction).
        phrase_open, phrase_close: the tokens around a grounded phrase.
        clip_crop: True: resize the shortest side and centre-crop for the LLaVA tower (CLIP's,
            LISA's and GLaMM's preprocessing); False: resize the whole image to the square.
        region_token: a token that asks about a region given as a box (GLaMM's `<bbox>`); prompts
            holding it are refused, as the model has no region encoder. None: nothing is refused.
    """

    model_type = "segprune_seg"
    # transformers 5.17 reads `sub_configs`; later versions read `sub_configs_defaults`.
    sub_configs: ClassVar[dict[str, type]] = {"llava_config": LlavaConfig, "sam_config": SamConfig}
    sub_configs_defaults: ClassVar[dict[str, type]] = {"llava_config": LlavaConfig, "sam_config": SamConfig}

    llava_config: dict | PretrainedConfig | None = None
    sam_config: dict | PretrainedConfig | None = None
    seg_token_id: int | None = None
    prompt_template: str = LLAVA_PROMPT
    seg_answer: str = "Sure, it is [SEG]."
    gcg_query: str = GCG_QUERY
    phrase_open: str = "<p>"
    phrase_close: str = "</p>"
    clip_crop: bool = True
    region_token: str | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if not isinstance(self.llava_config, PretrainedConfig):
            self.llava_config = LlavaConfig(**(self.llava_config or {}))
        if not isinstance(self.sam_config, PretrainedConfig):
            self.sam_config = SamConfig(**(self.sam_config or {}))
        super().__post_init__(**kwargs)


class SegModel(PreTrainedModel):
    """LLaVA + SAM + `[SEG]` projector, with LISA's `segment` and GLaMM's `ground` protocols.

    Attach a tokenizer as `model.tokenizer` (`from_pretrained` loads the one saved beside the weights).
    """

    config_class = SegModelConfig
    base_model_prefix = "seg_model"
    main_input_name = "pixel_values"
    _supports_sdpa = True
    _supports_flash_attn = True
    _no_split_modules: ClassVar[list[str]] = [
        "LlamaDecoderLayer",
        "CLIPEncoderLayer",
        "SamVisionLayer",
        "SamTwoWayAttentionBlock",
    ]

    def __init__(self, config: SegModelConfig) -> None:
        super().__init__(config)
        self.mllm = LlavaForConditionalGeneration(config.llava_config)
        self.sam = SamModel(config.sam_config)
        width = config.llava_config.text_config.hidden_size
        prompt_width = config.sam_config.prompt_encoder_config.hidden_size
        # LISA's text_hidden_fcs[0]; same layer indices, so the converter maps .0 and .2 directly.
        self.seg_projector = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(), nn.Linear(width, prompt_width), nn.Dropout(0.0)
        )
        self.tokenizer: Any = None
        # How SAM's everything mode finds CSP Seg-First's instances (`sam_instance_masks`).
        self.instance_settings = InstanceSettings()
        self.post_init()

    @property
    def seg_token_id(self) -> int | None:
        """The `[SEG]` token id (read by `segprune.prune_`)."""
        return self.config.seg_token_id

    def get_input_embeddings(self) -> nn.Module:
        return self.mllm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.mllm.set_input_embeddings(value)

    # -- saving and loading ---------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """Save weights and config (`PreTrainedModel.save_pretrained`) and the attached tokenizer."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: Any, *args: Any, tokenizer: Any = None, **kwargs: Any
    ):
        """Load a saved `SegModel` and the tokenizer saved beside it (or the given `tokenizer`)."""
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if tokenizer is None:
            path = str(pretrained_model_name_or_path)
            if not os.path.isdir(path) or os.path.isfile(os.path.join(path, "tokenizer_config.json")):
                from transformers import AutoTokenizer

                try:  # passing the config spares AutoTokenizer a look-up of our unregistered model type
                    tokenizer = AutoTokenizer.from_pretrained(path, config=model.config)
                except (OSError, ValueError):  # no tokenizer on the hub repo: the caller attaches one
                    tokenizer = None
        model.tokenizer = tokenizer
        return model

    # -- shared steps ---------------------------------------------------------------------------

    def _tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise RuntimeError(
                "no tokenizer attached: set model.tokenizer (e.g. AutoTokenizer.from_pretrained)"
            )
        return self.tokenizer

    def _token_id(self, token: str) -> int:
        tokenizer = self._tokenizer()
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no token {token!r}")
        return int(token_id)

    def _pad_id(self) -> int:
        tokenizer = self._tokenizer()
        for token_id in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id):
            if token_id is not None:
                return int(token_id)
        return 0

    def _prompt(self, query: str) -> str:
        return self.config.prompt_template.replace("{query}", query)

    def _encode(self, images: Sequence[Any], texts: Sequence[str]) -> dict[str, Any]:
        """Tokenized texts and both towers' pixels, on the model's device."""
        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} images and {len(texts)} texts; give one text per image")
        if not images:
            raise ValueError("give at least one image")
        region = self.config.region_token
        if region and (asking := [i for i, text in enumerate(texts) if region in text]):
            raise ValueError(
                f"prompt(s) {asking} hold the region token {region!r}: region prompts need GLaMM's region "
                "encoder, which convert-glamm does not convert; ask without regions"
            )
        llava = self.config.llava_config
        pictures = [seg_inputs.as_uint8_chw(image) for image in images]
        input_ids, attention_mask = seg_inputs.encode_prompts(
            self._tokenizer(), texts, llava.image_token_id, llava.image_seq_length, self._pad_id()
        )
        clip = seg_inputs.clip_pixels(pictures, llava.vision_config.image_size, crop=self.config.clip_crop)
        sam = seg_inputs.sam_pixels(pictures, self.config.sam_config.vision_config.image_size)
        device, dtype = self.device, self.dtype
        return {
            "input_ids": input_ids.to(device),
            "attention_mask": attention_mask.to(device),
            "pixel_values": clip.to(device, dtype),
            "sam": sam,
            "sam_pixels": sam.pixels.to(device, dtype),
        }

    def _answer_text(self, tokens: list[int], keep: set[int]) -> str:
        """Decode an answer without the tokenizer's special tokens and `<image>`, but with the `keep`
        ids (`[SEG]`, `<p>`, `</p>`: GLaMM's tokenizer adds them as special tokens, LISA's as plain ones)."""
        tokenizer = self._tokenizer()
        dropped = {*tokenizer.all_special_ids, self.config.llava_config.image_token_id} - keep
        return tokenizer.decode([t for t in tokens if t not in dropped], skip_special_tokens=False)

    def decode_masks(self, image_embeddings: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Low-resolution mask logits `(B, k, h, w)` for `hidden` `(B, k, width)` `[SEG]` states on
        `image_embeddings` `(B, C, e, e)` from SAM's image encoder: one sparse prompt token per mask."""
        batch = hidden.shape[0]
        prompts = self.seg_projector(hidden.to(self.seg_projector[0].weight.dtype))
        prompts = prompts.to(image_embeddings.dtype)[:, :, None, :]  # (B, k, 1 token, C)
        size = image_embeddings.shape[-1]
        positional = self.sam.get_image_wide_positional_embeddings().repeat(batch, 1, 1, 1)
        dense = self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            batch, -1, size, size
        )
        masks, _ = self.sam.mask_decoder(
            image_embeddings=image_embeddings,
            image_positional_embeddings=positional.to(image_embeddings.dtype),
            sparse_prompt_embeddings=prompts,
            dense_prompt_embeddings=dense.to(image_embeddings.dtype),
            multimask_output=False,
        )
        return masks[:, :, 0]

    def _to_original(self, low_res: torch.Tensor, sam: seg_inputs.SamPixels, b: int) -> torch.Tensor:
        size = self.config.sam_config.vision_config.image_size
        return seg_inputs.masks_to_original(low_res, size, sam.resized[b], sam.original[b])

    # -- referring segmentation (LISA) ----------------------------------------------------------

    @torch.no_grad()
    def segment(
        self,
        images: Sequence[Any],
        queries: Sequence[str],
        *,
        answer: str | None = None,
        threshold: float | None = 0.0,
        image_tokens: bool = True,
        score_token: str = "prompt",
        instance_masks: Sequence[Any] | None = None,
    ) -> list[torch.Tensor]:
        """Segment what each query refers to: one `(H, W)` bool mask per image, at its original size.

        A teacher-forced forward over prompt + `answer` (default `config.seg_answer`, which holds
        `[SEG]`), as LISA evaluates. With `threshold=None` the float mask logits are returned instead.

        `score_token` matters only under a pruning method that ranks image tokens by the attention
        of the last token (FastV, PyramidDrop, ALTP): "prompt" (default) runs the prompt alone as
        the prefill, so the last prompt token scores, as those methods' papers score, and then the
        answer through the pruned KV cache; "answer" runs prompt + answer as one prefill, whose
        last token (the "." after `[SEG]`) has already seen the answer. Both give the same masks
        without pruning and under methods that score elsewhere (CSP's `[SEG]` row, CLS rows).

        With `image_tokens=False` no image token reaches the LLM (the blind baseline: how much the LLM
        reads its image tokens): the text runs alone, at the positions it has with the image in
        place, and the LLaVA tower does not run; SAM still sees the image.

        `instance_masks` matter only under CSP's Seg-First (`CSPConfig(cluster="seg_first")`): one
        `(K, H, W)` bool array or tensor of instance masks per image, at its original size, used
        instead of the default (`instance_source`); each image token takes the instance covering most
        of its patch (`instance_token_ids`).
        """
        if score_token not in SCORE_TOKENS:
            raise ValueError(f"score_token={score_token!r} is not valid; valid: {list(SCORE_TOKENS)}")
        texts = [
            self._prompt(q) + " " + (self.config.seg_answer if answer is None else answer) for q in queries
        ]
        batch = self._encode(images, texts)
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        positions = seg_inputs.positions(attention_mask)
        split = None
        if image_tokens and score_token == "prompt" and self._scores_by_last_token():
            split = self._answer_start(queries, input_ids, attention_mask)
        image_embeddings = None
        if image_tokens:
            with self._seg_first_instances(batch, instance_masks) as image_embeddings:
                if split is None:
                    hidden_states = self.mllm.model(
                        input_ids=input_ids,
                        attention_mask=attention_mask,
                        position_ids=positions,
                        pixel_values=batch["pixel_values"],
                        use_cache=False,
                    ).last_hidden_state
                else:
                    hidden_states = self._prompt_then_answer(batch, positions, split)
        else:
            if instance_masks is not None:
                raise ValueError("instance_masks select image tokens; with image_tokens=False there are none")
            text = input_ids != self.config.llava_config.image_token_id
            n, n_text = len(texts), int(text[0].sum())  # every prompt holds one image's tokens
            input_ids, attention_mask, positions = (
                t[text].view(n, n_text) for t in (input_ids, attention_mask, positions)
            )
            language_model = self.mllm.model.language_model
            hidden_states = language_model(
                inputs_embeds=language_model.embed_tokens(input_ids),
                attention_mask=attention_mask,
                position_ids=positions,
                use_cache=False,
            ).last_hidden_state
        is_seg = input_ids == self._seg_id()
        if not bool(is_seg.any(dim=1).all()):
            raise ValueError(
                "the answer holds no [SEG] token; segment needs an answer such as 'Sure, it is [SEG].'"
            )
        first = is_seg.int().argmax(dim=1)
        # LISA (model/LISA.py, `input_ids[:, 1:] == seg_token_idx`) reads the state one token before
        # [SEG]: the one whose logits predict [SEG], the same state `ground` keeps while decoding.
        rows = torch.arange(len(first), device=first.device)
        hidden = hidden_states[rows, first - 1][:, None]
        if image_embeddings is None:
            image_embeddings = self.sam.get_image_embeddings(batch["sam_pixels"])
        low_res = self.decode_masks(image_embeddings, hidden)
        masks = [self._to_original(low_res[b], batch["sam"], b)[0] for b in range(len(first))]
        return masks if threshold is None else [m > threshold for m in masks]

    def _scores_by_last_token(self) -> bool:
        """Whether this model is pruned by a method whose LLM-attention row is the last token's."""
        from segprune.patch import pruning_config

        config = pruning_config(self)
        return config is not None and config.ranks_by_last_token

    def _answer_start(self, queries: Sequence[str], input_ids: torch.Tensor, mask: torch.Tensor) -> int:
        """Return the index where every sample's answer begins in `input_ids` (left-padded prompt +
        answer): the prompts are encoded alone and must be the same tokens as each text's start."""
        llava = self.config.llava_config
        prompt_ids, prompt_mask = seg_inputs.encode_prompts(
            self._tokenizer(),
            [self._prompt(q) for q in queries],
            llava.image_token_id,
            llava.image_seq_length,
            self._pad_id(),
        )
        lengths = mask.sum(dim=1).tolist()
        prompt_lengths = prompt_mask.sum(dim=1).tolist()
        answer_lengths = {n - p for n, p in zip(lengths, prompt_lengths, strict=True)}
        width = input_ids.shape[1]
        if len(answer_lengths) == 1:
            answer = answer_lengths.pop()
            split = width - answer
            same = all(
                torch.equal(input_ids[b, width - n : split].cpu(), prompt_ids[b, prompt_ids.shape[1] - p :])
                for b, (n, p) in enumerate(zip(lengths, prompt_lengths, strict=True))
            )
            if same and answer > 0:
                return split
        raise ValueError(
            "the tokenizer does not split prompt + answer at the prompt's end for every sample, so the "
            "prompt cannot run as its own prefill; use score_token='answer'"
        )

    def _prompt_then_answer(self, batch: dict[str, Any], positions: torch.Tensor, split: int) -> torch.Tensor:
        """Run `batch`'s prompts (tokens before `split`) as the prefill, then the answers through the KV
        cache; return the last hidden states of every token, `(B, L, width)`."""
        from segprune.patch.transformers_api import cache_kwargs, output_cache

        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        llava = self.mllm.model
        prefill = llava(
            input_ids=input_ids[:, :split],
            attention_mask=attention_mask[:, :split],
            position_ids=positions[:, :split],
            pixel_values=batch["pixel_values"],
            use_cache=True,
        )
        answer = llava(
            input_ids=input_ids[:, split:],
            attention_mask=attention_mask,
            position_ids=positions[:, split:],
            use_cache=True,
            **cache_kwargs(llava, output_cache(llava, prefill)),
        )
        return torch.cat([prefill.last_hidden_state, answer.last_hidden_state], dim=1)

    # -- CSP Seg-First's instances --------------------------------------------------------------

    def instance_source(self, given: bool = False) -> str | None:
        """Return where CSP Seg-First's instances come from in `segment` and `ground` now, or None.

        None: the model is not pruned with a Seg-First stage. Otherwise, from the config's
        `instances` (`segprune.methods.csp.instance_source`), one of: "sam" (the default: this
        model's SAM, everything mode, on the SAM image embedding the masks are decoded from),
        "superpixels", "given" (masks from `prune_(..., instance_masks=)` or from the call) or
        "ground_truth". `given`: whether the call passes `instance_masks`. Raises where the config
        and the masks disagree.
        """
        from segprune.methods.csp import instance_source
        from segprune.patch import instance_detector, pruning_config

        config = pruning_config(self)
        choice = None if config is None else config.instance_choice
        if choice is None:
            return None
        detector = instance_detector(self)
        if given and detector is not None:
            raise ValueError(
                "instance masks were given twice: to prune_(..., instance_masks=) and to this call; give "
                "them once"
            )
        return instance_source(choice, has_sam=True, given=given or detector is not None)

    @contextlib.contextmanager
    def _seg_first_instances(
        self, batch: dict[str, Any], instance_masks: Sequence[Any] | None
    ) -> Iterator[torch.Tensor | None]:
        """Give CSP Seg-First's selector its instances for the LLM forwards inside the block.

        Yields SAM's image embeddings where SAM's instances were computed from them (the caller
        decodes its masks from the same ones), else None.
        """
        source = self.instance_source(given=instance_masks is not None)
        if source is None:
            if instance_masks is not None:
                raise ValueError(
                    "instance_masks apply to CSP Seg-First only (CSPConfig(cluster='seg_first')); this "
                    "model is not pruned with it"
                )
            yield None
            return
        if source == "superpixels" or (source != "sam" and instance_masks is None):
            yield None  # the plan runner cuts superpixels, or calls prune_'s detector
            return
        embeddings = None
        if source == "sam":
            embeddings = self.sam.get_image_embeddings(batch["sam_pixels"])
            masks = self.sam_instance_masks(embeddings, batch["sam"])
        else:
            masks = self._check_instance_masks(instance_masks, batch["sam"].original)
        from segprune.methods.regions import masks_to_token_ids

        tower = [self._tower_frame(m) for m in masks]
        pixels = batch["pixel_values"]

        def instances(pixel_values: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
            ids = masks_to_token_ids(tower, grid).to(pixel_values.device)
            if len(pixel_values) == len(ids):
                return ids
            # The runner asks one sample at a time where a batch's samples differ: find each by its
            # pixels (samples of one image share its instances).
            rows = []
            for image in pixel_values:
                match = [b for b in range(len(pixels)) if torch.equal(pixels[b].to(image), image)]
                if not match:
                    raise RuntimeError(
                        "Seg-First was asked for the instances of an image this call did not encode"
                    )
                rows.append(match[0])
            return ids[rows]

        from segprune.patch import instance_masks as per_call_instances

        with per_call_instances(self, instances):
            yield embeddings

    @torch.no_grad()
    def sam_instance_masks(
        self,
        image_embeddings: torch.Tensor,
        sam: seg_inputs.SamPixels,
        settings: InstanceSettings | None = None,
    ) -> list[torch.Tensor]:
        """Return, per image, `(K, H, W)` bool instance masks at its original size, best first.

        SAM's everything mode (`segprune.models.sam_instances`, with `settings` or
        `self.instance_settings`) on `image_embeddings` of the SAM inputs `sam`; each low-resolution
        mask is brought to the original size as `segment`'s masks are.
        """
        size = self.config.sam_config.vision_config.image_size
        found = sam_instances(self.sam, image_embeddings, size, settings or self.instance_settings)
        out = []
        for b, masks in enumerate(found):
            height, width = sam.original[b]
            if not len(masks):
                out.append(torch.zeros(0, height, width, dtype=torch.bool, device=masks.device))
                continue
            logits = masks.float() - 0.5  # back to logits around 0, for SAM's own upsampling
            out.append(seg_inputs.masks_to_original(logits, size, sam.resized[b], sam.original[b]) > 0)
        return out

    def instance_token_ids(self, masks: Sequence[Any], grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Return `(B, N)` instance ids per LLaVA image token (-1: none) for per-image instance masks.

        `masks` holds one `(K, H, W)` bool array or tensor per image, at its original size. Each is
        brought to the vision tower's frame (the same resize and centre crop as the image), and each
        token takes the instance covering most of its patch, or -1 where most of it is covered by
        none (`segprune.masks_to_token_ids`). `grid`: the patch grid, by default the tower's.
        """
        from segprune.methods.regions import masks_to_token_ids

        if grid is None:
            vision = self.config.llava_config.vision_config
            grid = (vision.image_size // vision.patch_size,) * 2
        masks = [self._as_masks(m, f"instance_masks[{b}]") for b, m in enumerate(masks)]
        return masks_to_token_ids([self._tower_frame(m) for m in masks], grid)

    @staticmethod
    def _as_masks(masks: Any, name: str) -> torch.Tensor:
        tensor = torch.as_tensor(masks)
        if tensor.dim() != 3 or tensor.dtype != torch.bool:
            raise ValueError(
                f"{name} must be a (K, H, W) bool array of instance masks, got "
                f"{tuple(tensor.shape)} {tensor.dtype}"
            )
        return tensor

    def _check_instance_masks(
        self, instance_masks: Sequence[Any], sizes: Sequence[tuple[int, int]]
    ) -> list[torch.Tensor]:
        """Return the caller's masks as bool tensors, checking one `(K, H, W)` per image at its size."""
        if len(instance_masks) != len(sizes):
            raise ValueError(
                f"got instance masks for {len(instance_masks)} image(s) but {len(sizes)} images; give "
                "one (K, H, W) array per image"
            )
        out = []
        for b, (masks, size) in enumerate(zip(instance_masks, sizes, strict=True)):
            tensor = self._as_masks(masks, f"instance_masks[{b}]")
            if tuple(tensor.shape[1:]) != tuple(size):
                raise ValueError(
                    f"instance_masks[{b}] is {tuple(tensor.shape[1:])} (H, W) but its image is "
                    f"{tuple(size)}; give the masks at the image's original size"
                )
            out.append(tensor)
        return out

    def _tower_frame(self, masks: torch.Tensor) -> torch.Tensor:
        """`(K, H, W)` masks at an image's original size -> `(K, S, S)` in the LLaVA tower's frame.

        The geometry of `seg_inputs.clip_pixels` (`seg_inputs.clip_geometry`: shortest side to S,
        centre crop; or a plain resize with `clip_crop=False`); a resized pixel belongs to a mask
        where it is more than half covered.
        """
        size = self.config.llava_config.vision_config.image_size
        height, width = masks.shape[-2:]
        target, top, left = seg_inputs.clip_geometry(height, width, size, self.config.clip_crop)
        x = masks[:, None].float()
        if x.shape[0] and (height, width) != target:
            x = F.interpolate(x, size=target, mode="bilinear", antialias=True, align_corners=False)
        x = x[..., top : top + size, left : left + size] if x.shape[0] else x.new_zeros(0, 1, size, size)
        return x[:, 0] > 0.5

    @torch.no_grad()
    def sam_instance_tokens(
        self, pixel_values: torch.Tensor, grid: tuple[int, int], settings: InstanceSettings | None = None
    ) -> torch.Tensor:
        """Return `(B, N)` instance ids per image token (-1: none) from this model's SAM, as a detector.

        The `prune_(..., instance_masks=)` form of the default, for calls that bypass `segment` and
        `ground` (the LLaVA inside, `generate`): the vision tower's pixels are de-normalised and run
        through SAM's image encoder (a second SAM pass; `segment` and `ground` reuse the one their
        masks are decoded from) and its everything mode; each token takes the instance covering most
        of its patch.
        """
        from segprune.methods.regions import masks_to_token_ids
        from segprune.pixels import CLIP_MEAN, CLIP_STD

        mean = torch.tensor(CLIP_MEAN, device=pixel_values.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=pixel_values.device).view(1, 3, 1, 1)
        rgb = ((pixel_values.float() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        size = self.config.sam_config.vision_config.image_size
        sam = seg_inputs.sam_pixels(list(rgb), size)
        embeddings = self.sam.get_image_embeddings(sam.pixels.to(self.device, self.dtype))
        masks = self.sam_instance_masks(embeddings, sam, settings)  # in the tower's frame already
        return masks_to_token_ids(masks, grid).to(pixel_values.device)

    def _seg_id(self) -> int:
        if self.config.seg_token_id is None:
            raise ValueError("config.seg_token_id is not set")
        return self.config.seg_token_id

    # -- grounded conversation (GLaMM GCG) ------------------------------------------------------

    @torch.no_grad()
    def ground(
        self,
        images: Sequence[Any],
        prompt: str | Sequence[str] | None = None,
        *,
        max_new_tokens: int = 128,
        threshold: float | None = 0.0,
        instance_masks: Sequence[Any] | None = None,
        **generate_kwargs: Any,
    ) -> list[GroundedAnswer]:
        """Describe each image with grounded phrases: greedy generation, one mask per generated `[SEG]`.

        `prompt` is one query for all images or one per image (default `config.gcg_query`). Decoding
        uses the KV cache; the last-layer state of each step is kept, and the state that produced a
        `[SEG]` is its mask prompt, so no second forward runs. Extra keyword arguments go to
        `generate()` (a `logits_processor`, for example); beam search is refused because it reorders
        the batch behind the kept states. With `threshold=None` the masks hold float logits.
        `instance_masks`: CSP Seg-First's instances, as for `segment`.
        """
        if generate_kwargs.get("num_beams", 1) != 1:
            raise ValueError("ground decodes greedily (or samples); beam search is not supported")
        if prompt is None:
            prompt = self.config.gcg_query
        queries = [prompt] * len(images) if isinstance(prompt, str) else list(prompt)
        batch = self._encode(images, [self._prompt(q) for q in queries])
        tokenizer = self._tokenizer()
        seg_id = self._seg_id()
        open_id = self._token_id(self.config.phrase_open)
        close_id = self._token_id(self.config.phrase_close)
        eos_id = tokenizer.eos_token_id

        steps: list[torch.Tensor] = []

        def keep_last_state(module: nn.Module, args: Any, output: Any) -> None:
            steps.append(output[0][:, -1])

        options = {
            "do_sample": False,
            "pad_token_id": self._pad_id(),
            "eos_token_id": eos_id,
            # The LLM never needs to write an image placeholder; a random or converted head might.
            "suppress_tokens": [self.config.llava_config.image_token_id],
            **generate_kwargs,
            "max_new_tokens": max_new_tokens,
            "use_cache": True,
            "return_dict_in_generate": False,
        }
        hook = self.mllm.model.language_model.register_forward_hook(keep_last_state)
        try:
            with self._seg_first_instances(batch, instance_masks) as image_embeddings:
                sequences = self.mllm.generate(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    pixel_values=batch["pixel_values"],
                    **options,
                )
        finally:
            hook.remove()
        generated = sequences[:, batch["input_ids"].shape[1] :]
        if len(steps) < generated.shape[1]:
            raise RuntimeError(f"kept {len(steps)} decode states for {generated.shape[1]} generated tokens")
        states = torch.stack(steps[: generated.shape[1]], dim=1)  # (B, T, width): state t produced token t

        # SAM's encoder runs only if some answer holds a [SEG] (or it ran for Seg-First's instances).
        if image_embeddings is None and bool((generated == seg_id).any()):
            image_embeddings = self.sam.get_image_embeddings(batch["sam_pixels"])
        answers = []
        for b, row in enumerate(generated.tolist()):
            if eos_id is not None and eos_id in row:
                row = row[: row.index(eos_id)]
            parsed = parse_grounded(row, seg_id, open_id, close_id)
            height, width = batch["sam"].original[b]
            if parsed.segs:
                low_res = self.decode_masks(image_embeddings[b : b + 1], states[b : b + 1, parsed.segs])
                masks = self._to_original(low_res[0], batch["sam"], b)
            else:
                masks = torch.zeros(0, height, width, device=self.device)
            masks = masks if threshold is None else masks > threshold
            phrases = [
                tokenizer.decode(row[span[0] : span[1]], skip_special_tokens=True).strip() if span else None
                for span in parsed.spans
            ]
            text = self._answer_text(row, {seg_id, open_id, close_id})
            answers.append(
                GroundedAnswer(text=text, phrases=phrases, masks=masks, errors=list(parsed.errors))
            )
        return answers
