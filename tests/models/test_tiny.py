"""The bundled tiny shapes model: it loads, has LLaVA-1.5-336's token geometry, and segments."""

from __future__ import annotations

import pytest
import torch

from segprune.data import generate_split
from segprune.models.tiny import WEIGHTS, refer_query, tiny

needs_weights = pytest.mark.skipif(not (WEIGHTS / "config.json").is_file(), reason="no bundled tiny model")


@pytest.fixture(scope="module")
def model():
    return tiny()


@needs_weights
def test_geometry_and_size(model):
    llava = model.config.llava_config
    assert llava.image_seq_length == 576
    assert (llava.vision_config.image_size, llava.vision_config.patch_size) == (336, 14)
    assert llava.text_config.num_hidden_layers == 8
    size = sum(f.stat().st_size for f in WEIGHTS.iterdir())
    assert size < 25e6
    assert model.dtype == torch.float32  # stored in fp16, loaded in fp32


@needs_weights
def test_segment_runs_and_tokenizer_knows_every_word(model):
    scene = generate_split(1, seed=0)[0]
    queries = [refer_query(q.text) for q in scene.queries[:2]]
    for text in [*queries, scene.caption.tagged, model.config.gcg_query]:
        assert model.tokenizer.unk_token_id not in model.tokenizer(text)["input_ids"]
    masks = model.segment([scene.image, scene.image], queries)
    assert [m.shape for m in masks] == [(336, 336), (336, 336)]
    assert all(m.dtype == torch.bool for m in masks)


def test_missing_weights_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-tiny"):
        tiny(tmp_path)
