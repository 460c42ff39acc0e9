"""Inputs of SegModel: image layouts, both towers' preprocessing, prompts, mask post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segprune.models import seg_inputs
from segprune.models.tiny_seg import TINY_WORDS
from segprune.pixels import CLIP_MEAN, CLIP_STD


def test_image_layouts_give_the_same_tensor():
    from PIL import Image

    hwc = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    expected = torch.from_numpy(hwc).permute(2, 0, 1)
    assert torch.equal(seg_inputs.as_uint8_chw(hwc), expected)
    assert torch.equal(seg_inputs.as_uint8_chw(expected.clone()), expected)
    assert torch.equal(seg_inputs.as_uint8_chw(Image.fromarray(hwc)), expected)
    grey = seg_inputs.as_uint8_chw(hwc[..., 0])
    assert grey.shape == (3, 5, 7) and torch.equal(grey[2], expected[0])
    with pytest.raises(ValueError, match="RGB"):
        seg_inputs.as_uint8_chw(torch.zeros(4, 5, 7, dtype=torch.uint8))


def test_longest_side_sizes():
    # segment-anything's ResizeLongestSide: scale = target / long side, int(x + 0.5).
    assert seg_inputs.longest_side_size(480, 640, 1024) == (768, 1024)
    assert seg_inputs.longest_side_size(33, 17, 32) == (32, 16)  # 17 * 32/33 = 16.48
    assert seg_inputs.longest_side_size(10, 10, 32) == (32, 32)


def test_sam_pixels_normalise_then_pad():
    image = torch.zeros(3, 33, 17, dtype=torch.uint8)
    sam = seg_inputs.sam_pixels([image], 32)
    assert sam.resized == [(32, 16)] and sam.original == [(33, 17)]
    black = (0 - torch.tensor(seg_inputs.SAM_MEAN)) / torch.tensor(seg_inputs.SAM_STD)
    assert torch.allclose(sam.pixels[0, :, :, :16], black.view(3, 1, 1).expand(3, 32, 16))
    assert bool((sam.pixels[0, :, :, 16:] == 0).all())  # padding is zero after normalisation


def test_clip_pixels_crop_the_centre():
    # 20 x 28 -> shortest side 16: 16 x 22 (int(16 * 28 / 20) = 22), crop columns 3..18.
    image = torch.zeros(3, 20, 28, dtype=torch.uint8)
    image[:, :, :4] = 255  # a white band that resizes into columns 0..2 of 22: cropped away
    pixels = seg_inputs.clip_pixels([image], 16)
    black = (0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert pixels.shape == (1, 3, 16, 16)
    assert torch.allclose(pixels[0, :, :, 8], black.view(3, 1).expand(3, 16), atol=1e-6)
    squashed = seg_inputs.clip_pixels([image], 16, crop=False)
    assert bool((squashed[0, :, :, 0] > black.view(3, 1)).all())  # the band survives a plain resize


def test_prompts_expand_the_image_token_and_pad_left():
    tokenizer = seg_inputs.word_tokenizer(TINY_WORDS)
    ids, mask = seg_inputs.encode_prompts(tokenizer, ["USER: <image>\na man", "<image> man"], 3, 4, 0)
    bos, user, colon, a, man = 1, *tokenizer.convert_tokens_to_ids(["USER", ":", "a", "man"])
    assert ids.tolist() == [
        [bos, user, colon, 3, 3, 3, 3, a, man],
        [0, 0, 0, bos, 3, 3, 3, 3, man],
    ]
    assert mask.tolist() == [[1] * 9, [0, 0, 0] + [1] * 6]
    assert seg_inputs.positions(mask)[1].tolist() == [0, 0, 0, 0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="exactly one image token"):
        seg_inputs.encode_prompts(tokenizer, ["a man"], 3, 4, 0)


def test_masks_return_to_the_original_size():
    low_res = torch.zeros(2, 8, 8)
    low_res[1, :4] = 1.0  # top half of the padded 32 x 32 input
    masks = seg_inputs.masks_to_original(low_res, 32, resized=(16, 32), original=(10, 20))
    assert masks.shape == (2, 10, 20)
    assert bool((masks[0] == 0).all())
    # The resized image is rows 0..15 of the input, the positive half (blended towards 0 only near
    # row 16: input row 15 samples low-res row 3.375, 1 - 0.375): the whole original stays positive.
    assert bool((masks[1] > 0.5).all())
    assert torch.allclose(masks[1, 0], torch.ones(20))
