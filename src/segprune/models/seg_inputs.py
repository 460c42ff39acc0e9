"""Inputs of a segmentation model: a word-level tokenizer for tiny models, prompts, and image tensors.

Images go to two towers. The LLaVA tower sees a CLIP-normalised square (shortest side resized, centre
crop, as `CLIPImageProcessor` does for LISA); SAM sees the image with its longest side resized to
SAM's input size, normalised in 0-255 units and padded at the bottom and right (segment-anything's
`ResizeLongestSide` + `Sam.preprocess`). Resizing runs in torch (bicubic, antialiased, rounded back to
uint8 like PIL) so no image library is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segprune.pixels import CLIP_MEAN, CLIP_STD

SAM_MEAN = (123.675, 116.28, 103.53)
SAM_STD = (58.395, 57.12, 57.375)

# Ids match `tiny_llava`: pad 0, bos 1, eos 2, <image> 3, [SEG] 4.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<image>", "[SEG]", "<p>", "</p>", "<unk>")


def word_tokenizer(words: Sequence[str], special_tokens: Sequence[str] = SPECIAL_TOKENS) -> Any:
    """Return a word-level `PreTrainedTokenizerFast` over `special_tokens` + `words`.

    Text splits on whitespace and punctuation. Token i of `special_tokens` + `words` gets id i; any
    other word maps to `<unk>`. A `<s>` starts every encoding; padding is on the left, for
    generation. `[SEG]`, `<p>` and `</p>` are plain added tokens (as LISA adds `[SEG]`; GLaMM adds all three
    as special tokens), so decoding keeps them; the others are special tokens.
    `special_tokens` must hold `<unk>`, `<s>` and `</s>`; `<pad>` is optional.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in (*special_tokens, *words):
        vocab.setdefault(token, len(vocab))
    if len(vocab) != len(special_tokens) + len(words):
        raise ValueError("words and special tokens must be unique")
    missing = {"<unk>", "<s>", "</s>"} - set(special_tokens)
    if missing:
        raise ValueError(f"special_tokens lacks {sorted(missing)}")
    plain = [t for t in special_tokens if t in ("[SEG]", "<p>", "</p>")]
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    # Registered so the pre-tokenizer never splits them; they already have ids, so none change.
    tok.add_special_tokens([t for t in special_tokens if t not in plain])
    tok.add_tokens(plain)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>" if "<pad>" in vocab else None,
        unk_token="<unk>",
        padding_side="left",
    )


def encode_prompts(
    tokenizer: Any, texts: Sequence[str], image_token_id: int, image_tokens: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize `texts`, expand each one's single image token to `image_tokens` copies, pad on the left.

    Returns `input_ids` and `attention_mask`, both `(len(texts), longest)`.
    """
    rows = []
    for text in texts:
        ids = list(tokenizer(text)["input_ids"])
        count = ids.count(image_token_id)
        if count != 1:
            raise ValueError(
                f"each prompt must hold exactly one image token (id {image_token_id}); {text!r} has {count}"
            )
        at = ids.index(image_token_id)
        rows.append(ids[:at] + [image_token_id] * image_tokens + ids[at + 1 :])
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, length - len(row) :] = torch.tensor(row)
        attention_mask[b, length - len(row) :] = 1
    return input_ids, attention_mask


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only, as `generate()` builds them: left padding shifts nothing."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# -- images --------------------------------------------------------------------------------------


def as_uint8_chw(image: Any) -> torch.Tensor:
    """Return `image` as a `(3, H, W)` uint8 tensor.

    Accepts PIL images, numpy arrays `(H, W)` / `(H, W, 3)` (the PIL and OpenCV layout; RGB) and torch
    tensors `(H, W)` / `(3, H, W)` (the torchvision layout), all uint8.
    """
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image, without importing PIL
        image = np.array(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"numpy images must be uint8, got {image.dtype}")
        array = torch.from_numpy(np.array(image))  # a copy: the caller's array may be read-only
        array = array.permute(2, 0, 1) if array.dim() == 3 else array
    elif isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            raise TypeError(f"tensor images must be uint8, got {image.dtype}")
        array = image.cpu()
    else:
        raise TypeError(
            f"unsupported image type {type(image).__name__}; give PIL, numpy or torch uint8 images"
        )
    if array.dim() == 2:
        array = array.expand(3, *array.shape)
    if array.dim() != 3 or array.shape[0] != 3:
        raise ValueError(
            f"expected an RGB image: numpy (H, W, 3) or torch (3, H, W); got shape {tuple(array.shape)}"
        )
    if array.shape[1] < 1 or array.shape[2] < 1:
        raise ValueError(
            f"image of {array.shape[1]}x{array.shape[2]} pixels (H x W) is empty; valid: at least 1x1"
        )
    return array


def resize_uint8(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a `(3, H, W)` uint8 image to `size` (bicubic, antialiased) and round back to uint8."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(image[None].float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    return out[0].round().clamp(0, 255).to(torch.uint8)


def clip_pixels(images: Sequence[torch.Tensor], size: int, crop: bool = True) -> torch.Tensor:
    """`(B, 3, size, size)` CLIP inputs: shortest side to `size` then centre crop (or, `crop=False`, a
    plain resize to the square), scaled to [0, 1] and normalised with CLIP's mean and std."""
    out = []
    for image in images:
        target, top, left = clip_geometry(*image.shape[-2:], size, crop)
        out.append(resize_uint8(image, target)[:, top : top + size, left : left + size])
    pixels = torch.stack(out).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def clip_geometry(height: int, width: int, size: int, crop: bool = True) -> tuple[tuple[int, int], int, int]:
    """`clip_pixels`' geometry for a `height x width` image: `(target, top, left)`.

    The image is resized to `target` (shortest side to `size`, or with `crop=False` the
    `size x size` square), then the `size x size` square at `(top, left)` is kept (the centre crop;
    `(0, 0)` without cropping).
    """
    if not crop:
        return (size, size), 0, 0
    short = min(height, width)
    # CLIPImageProcessor truncates the long side: int(size * long / short).
    target = (size, int(size * width / short)) if height <= width else (int(size * height / short), size)
    return target, (target[0] - size) // 2, (target[1] - size) // 2


def longest_side_size(height: int, width: int, target: int) -> tuple[int, int]:
    """The size segment-anything's `ResizeLongestSide(target)` gives an `height x width` image.

    A side that would round to 0 pixels (a 2000 x 3 image at 1024) is kept at 1, where
    segment-anything would fail.
    """
    scale = target / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


@dataclass(frozen=True)
class SamPixels:
    """SAM inputs: `pixels` `(B, 3, S, S)`, and per image its resized (unpadded) and original sizes."""

    pixels: torch.Tensor
    resized: list[tuple[int, int]]
    original: list[tuple[int, int]]


def sam_pixels(images: Sequence[torch.Tensor], size: int) -> SamPixels:
    """Resize each image's longest side to `size`, normalise in 0-255 units, pad to `size x size`."""
    mean = torch.tensor(SAM_MEAN).view(3, 1, 1)
    std = torch.tensor(SAM_STD).view(3, 1, 1)
    pixels = torch.zeros(len(images), 3, size, size)
    resized_sizes, original_sizes = [], []
    for b, image in enumerate(images):
        h, w = image.shape[-2:]
        target = longest_side_size(h, w, size)
        resized = resize_uint8(image, target)
        # Normalise first, pad after: the padding is zeros in normalised units, as in Sam.preprocess.
        pixels[b, :, : target[0], : target[1]] = (resized.float() - mean) / std
        resized_sizes.append(target)
        original_sizes.append((int(h), int(w)))
    return SamPixels(pixels, resized_sizes, original_sizes)


def masks_to_original(
    low_res: torch.Tensor, size: int, resized: tuple[int, int], original: tuple[int, int]
) -> torch.Tensor:
    """Mask logits `(n, h, w)` from SAM's decoder -> `(n, H, W)` logits at the original image size.

    Upsample to SAM's padded input, crop the padding away, upsample to the original size (both
    bilinear), as `Sam.postprocess_masks` does.
    """
    x = F.interpolate(low_res[:, None].float(), (size, size), mode="bilinear", align_corners=False)
    x = x[..., : resized[0], : resized[1]]
    x = F.interpolate(x, original, mode="bilinear", align_corners=False)
    return x[:, 0]
