"""The LISA converter on a synthetic tiny checkpoint with LISA-7B-v1's exact key names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from checkpoint_helpers import (
    llava_v1_state,
    sam_state,
    segment_anything_keys,
    tiny_llama_config,
    write_shards,
)
from seg_helpers import ground_scripted, images

from segprune.cli import main
from segprune.models import SegModel, SegModelConfig, tiny_seg_model
from segprune.models.convert_lisa import ConversionError, convert_lisa
from segprune.models.seg_inputs import word_tokenizer
from segprune.models.tiny_seg import TINY_WORDS

# LISA's tokenizer: LLaMA's <unk>/<s>/</s>, then [SEG], <im_start>, <im_end> added; no <image> and no
# pad (LISA pads with <unk>). 6 + 57 words = 63 tokens; the converter appends <image> as id 63.
LISA_SPECIALS = ("<unk>", "<s>", "</s>", "[SEG]", "<im_start>", "<im_end>")
LISA_WORDS = (*TINY_WORDS, "horse")
SEG_ID, IMAGE_ID = 3, 63
# Heads the tensors cannot show for these tiny sizes (real LISA: CLIP heads = width / 64, SAM decoder 8).
OVERRIDES = {
    "vision_config": {"num_attention_heads": 4},
    "sam_mask_decoder_config": {"num_attention_heads": 2},
}


def lisa_model(projector: str) -> SegModel:
    """A tiny model shaped like LISA-7B-v1: a one-Linear projector (or LLaVA-1.5's MLP), LISA's tokenizer."""
    base = tiny_seg_model(seed=3)
    llava = base.config.llava_config.to_dict()
    llava["image_token_index"] = IMAGE_ID
    llava["projector_hidden_act"] = "linear" if projector == "linear" else "gelu"
    config = SegModelConfig(
        llava_config=llava, sam_config=base.config.sam_config.to_dict(), seg_token_id=SEG_ID
    )
    model = SegModel(config)
    model.load_state_dict(base.state_dict())
    with torch.no_grad():
        if projector == "linear":
            model.mllm.model.multi_modal_projector.linear_2.weight.copy_(torch.eye(32))
            model.mllm.model.multi_modal_projector.linear_2.bias.zero_()
        for weight in (model.get_input_embeddings().weight, model.mllm.lm_head.weight):
            weight[IMAGE_ID] = weight[:IMAGE_ID].mean(0)  # what the converter gives the new row
    return model.eval()


def lisa_state_dict(model: SegModel, projector: str) -> dict[str, torch.Tensor]:
    """`model`'s weights under LISA's names, as LISAForCausalLM.state_dict() gives them."""
    return {**llava_v1_state(model, IMAGE_ID, projector), **sam_state(model, "model.visual_model.")}


def write_checkpoint(directory: Path, state: dict[str, torch.Tensor]) -> None:
    """Two safetensors shards with an index, LISA's config.json and tokenizer, as in the LISA repo."""
    write_shards(directory, state)
    config = {
        **tiny_llama_config(IMAGE_ID),
        "architectures": ["LISAForCausalLM"],
        "mm_vision_tower": "openai/clip-vit-large-patch14",
    }
    (directory / "config.json").write_text(json.dumps(config))
    word_tokenizer(LISA_WORDS, special_tokens=LISA_SPECIALS).save_pretrained(directory)


@pytest.fixture(scope="module", params=["linear", "mlp2x_gelu"])
def lisa(request, tmp_path_factory):
    model = lisa_model(request.param)
    state = lisa_state_dict(model, request.param)
    src = tmp_path_factory.mktemp(f"lisa-{request.param}")
    write_checkpoint(src, state)
    return model, state, src


def test_synthetic_sam_keys_are_segment_anything_keys(lisa):
    """The checkpoint's SAM part has the names and shapes segment-anything itself saves (data file)."""
    _, state, _ = lisa
    ours = {k: tuple(v.shape) for k, v in state.items() if k.startswith("model.visual_model.")}
    assert ours == segment_anything_keys("model.visual_model.")


@torch.no_grad()
def test_converted_model_equals_the_directly_built_one(lisa, tmp_path):
    model, _, src = lisa
    config = convert_lisa(src, tmp_path / "out", config_overrides=OVERRIDES)
    assert config.seg_token_id == SEG_ID
    assert config.llava_config.image_token_id == IMAGE_ID
    assert config.llava_config.projector_hidden_act == model.config.llava_config.projector_hidden_act
    converted = SegModel.from_pretrained(tmp_path / "out").eval()
    expected, got = model.state_dict(), converted.state_dict()
    assert set(got) == set(expected)
    assert [k for k in expected if not torch.equal(got[k], expected[k])] == []

    tokenizer = converted.tokenizer
    assert tokenizer.convert_tokens_to_ids("<image>") == IMAGE_ID
    assert tokenizer.pad_token_id == tokenizer.unk_token_id  # LISA pads with <unk>
    prompt = converted.config.prompt_template
    assert prompt.endswith("USER: <im_start><image><im_end>\n{query} ASSISTANT:")
    assert converted.config.seg_answer == "[SEG]."
    # Same weights, same tokenizer and prompt: the outputs must agree.
    model.tokenizer = tokenizer
    model.config.prompt_template, model.config.seg_answer = prompt, converted.config.seg_answer
    queries = ["What is the red car in this image ? Please output segmentation mask ."] * 2
    ours = converted.segment(images(), queries, threshold=None)
    theirs = model.segment(images(), queries, threshold=None)
    assert max(float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True)) <= 1e-5
    for m in (converted, model):  # LISA's vocabulary has no <p> </p>; borrow two tokens it has
        m.config.phrase_open, m.config.phrase_close = "<im_start>", "<im_end>"
    script = ["Sure , it is [SEG] ."] * 2
    ours = ground_scripted(converted, images(), script, threshold=None)
    theirs = ground_scripted(model, images(), script, threshold=None)
    assert max(float((a.masks - b.masks).abs().max()) for a, b in zip(ours, theirs, strict=True)) <= 1e-5


def test_missing_and_unexpected_keys_are_named(lisa, tmp_path):
    _, state, _ = lisa
    broken = dict(state)
    del broken["model.layers.1.mlp.up_proj.weight"]
    write_checkpoint(tmp_path / "missing", broken)
    with pytest.raises(
        ConversionError,
        match=r"missing model weights \['mllm\.model\.language_model\.layers\.1\.mlp\.up_proj",
    ):
        convert_lisa(tmp_path / "missing", tmp_path / "out", config_overrides=OVERRIDES)
    extra = dict(state)
    extra["model.visual_model.image_encoder.blocks.0.attn.extra"] = torch.zeros(1)
    write_checkpoint(tmp_path / "extra", extra)
    with pytest.raises(ConversionError, match=r"model\.visual_model\.image_encoder\.blocks\.0\.attn\.extra"):
        convert_lisa(tmp_path / "extra", tmp_path / "out", config_overrides=OVERRIDES)


def test_single_bin_file_and_the_command_line(lisa, tmp_path):
    model, state, src = lisa
    torch.save(state, tmp_path / "pytorch_model.bin")
    overrides = {**OVERRIDES, "text_config": {"num_attention_heads": 4}}
    status = main([
        "convert-lisa", str(tmp_path / "pytorch_model.bin"), str(tmp_path / "out"),
        "--tokenizer", str(src), "--config-overrides", json.dumps(overrides),
    ])  # fmt: skip
    assert status == 0
    converted = SegModel.from_pretrained(tmp_path / "out")
    # No config.json beside a lone file: sizes come from the tensors, heads from the overrides.
    assert converted.config.llava_config.text_config.num_hidden_layers == 4
    expected = model.state_dict()
    assert all(torch.equal(t, expected[k]) for k, t in converted.state_dict().items())


def test_destination_must_be_a_new_or_empty_directory(lisa, tmp_path):
    _, _, src = lisa
    (tmp_path / "file").write_text("not a model")
    with pytest.raises(ConversionError, match=r"destination '.*file' exists and is not a directory"):
        convert_lisa(src, tmp_path / "file", config_overrides=OVERRIDES)
    assert main(["convert-lisa", str(src), str(tmp_path / "file")]) == 2
    assert (tmp_path / "file").read_text() == "not a model"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep")
    with pytest.raises(ConversionError, match=r"destination '.*full' is not empty.*--overwrite"):
        convert_lisa(src, tmp_path / "full", config_overrides=OVERRIDES)
    (tmp_path / "empty").mkdir()
    convert_lisa(src, tmp_path / "empty", config_overrides=OVERRIDES)
    convert_lisa(src, tmp_path / "full", config_overrides=OVERRIDES, overwrite=True)
    assert (tmp_path / "full" / "notes.txt").read_text() == "keep"  # overwrite writes over, keeps the rest
    with pytest.raises(ConversionError, match=r"holds the checkpoint"):  # its save could delete SRC's shards
        convert_lisa(src, src, config_overrides=OVERRIDES, overwrite=True)
    assert SegModel.from_pretrained(tmp_path / "full").config.seg_token_id == SEG_ID
