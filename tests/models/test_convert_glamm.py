"""The GLaMM converter on a synthetic tiny checkpoint with GLaMM's key names, config fields and tokens.

The checkpoint is written from a directly built `SegModel` by this file's own renaming (GLaMM's names
from mbzuai-oryx/groundingLMM: `model/GLaMM.py`, `model/llava/llava_with_region_arch.py`,
`model/layers.py`; SAM's from segment-anything's module structure, `checkpoint_helpers`), never by
the converter's rules. The converted model must then equal the direct one.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
from pathlib import Path

import pytest
import torch
from checkpoint_helpers import (
    CLIP_PREFIX,
    llava_v1_state,
    sam_state,
    segment_anything_keys,
    tiny_llama_config,
    write_shards,
)
from seg_helpers import ground_scripted, images
from transformers import LogitsProcessor, LogitsProcessorList

import segprune
from conftest import EXAMPLES
from segprune.cli import main
from segprune.models import SegModel, SegModelConfig, tiny_seg_model
from segprune.models.convert import ConversionError
from segprune.models.convert_glamm import convert_glamm
from segprune.models.seg_inputs import word_tokenizer
from segprune.models.tiny_seg import TINY_WORDS

# GLaMM's tokenizer: LLaMA's <unk>/<s>/</s> and words, then the tokens its train.py adds, in order,
# as special tokens: <im_start>, <im_end>, then <bbox>, <point>, [SEG], <p>, </p>. No <image>, no pad.
# 3 + 53 words + 7 = 63 tokens; the converter appends <image> as id 63.
BASE_TOKENS = ("<unk>", "<s>", "</s>")
ADDED = (("<im_start>", "<im_end>"), ("<bbox>", "<point>", "[SEG]", "<p>", "</p>"))
UNUSED = ("left", "right", "sits", "runs", "holds", "near", "sky", "grass", "road", "ball", "hat")
WORDS = (
    *(w for w in TINY_WORDS if w not in UNUSED),
    *("The", "provides", "an", "overview", "picture", "please", "interleaved", "for"),
)
SEG_ID, OPEN_ID, CLOSE_ID, IMAGE_ID = 60, 61, 62, 63
SAM_PREFIX = "model.grounding_encoder."
# GLaMM's protocol, written out from its code (eval/gcg/infer.py, model/llava/conversation.py).
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
PROMPT = (
    SYSTEM + " USER: The <im_start><image><im_end> provides an overview of the picture.\n{query} ASSISTANT:"
)
GCG = (
    "Could you please give me a detailed description of the image? Please respond with interleaved "
    "segmentation masks for the corresponding parts of the answer."
)
# Heads the tensors cannot show at this size (real GLaMM: CLIP heads = width / 64, SAM decoder 8).
OVERRIDES = {"sam_mask_decoder_config": {"num_attention_heads": 2}}
CLIP_HEADS = {"vision_config": {"num_attention_heads": 4}}


def glamm_tokenizer():
    tokenizer = word_tokenizer(WORDS, special_tokens=BASE_TOKENS)
    for tokens in ADDED:  # as GLaMM's setup_tokenizer_and_special_tokens
        tokenizer.add_tokens(list(tokens), special_tokens=True)
    return tokenizer


def glamm_model() -> SegModel:
    """A tiny model shaped like GLaMM: LLaVA-1.5's MLP projector, GLaMM's vocabulary and protocol."""
    base = tiny_seg_model(seed=5)
    llava = base.config.llava_config.to_dict()
    llava["image_token_index"] = IMAGE_ID
    config = SegModelConfig(
        llava_config=llava,
        sam_config=base.config.sam_config.to_dict(),
        seg_token_id=SEG_ID,
        prompt_template=PROMPT,
        seg_answer="Sure, it is [SEG].",
        gcg_query=GCG,
        region_token="<bbox>",
    )
    model = SegModel(config)
    model.load_state_dict(base.state_dict())
    with torch.no_grad():
        for weight in (model.get_input_embeddings().weight, model.mllm.lm_head.weight):
            weight[IMAGE_ID] = weight[:IMAGE_ID].mean(0)  # what the converter gives the new row
    model.tokenizer = glamm_tokenizer()
    model.tokenizer.add_tokens(["<image>"], special_tokens=True)
    model.tokenizer.pad_token = model.tokenizer.unk_token
    return model.eval()


def clip_state(model: SegModel) -> dict[str, torch.Tensor]:
    """The CLIP tower's weights under transformers' `CLIPVisionModel` names (`vision_model.*`)."""
    tower = "mllm.model.vision_tower."
    return {
        "vision_model." + name.removeprefix(tower): tensor
        for name, tensor in model.state_dict().items()
        if name.startswith(tower)
    }


def glamm_state_dict(model: SegModel, with_clip: bool) -> dict[str, torch.Tensor]:
    """`model`'s weights under GLaMM's names, as GLaMMForCausalLM.state_dict() gives them."""
    out = {**llava_v1_state(model, IMAGE_ID, "mlp2x_gelu", clip=with_clip), **sam_state(model, SAM_PREFIX)}
    # The region encoder (MLVLROIQueryModule: mlvl_fuse + roi_align), a few of its tensors at tiny size.
    gen = torch.Generator().manual_seed(0)
    for key, shape in {
        "mlvl_fuse.input_conv.0.weight": (8, 34, 1, 1),
        "mlvl_fuse.input_conv.0.bias": (8,),
        "mlvl_fuse.fuse_convs.0.conv.weight": (8, 8, 3, 3),
        "mlvl_fuse.fuse_convs.0.gn.weight": (8,),
        "roi_align.pconvs.0.weight": (8, 8, 3, 3),
        "roi_align.pos_embedd.0.weight": (16, 4),
        "roi_align.updims.weight": (32, 16),
        "roi_align.flatten_linear.weight": (16, 8 * 14 * 14),
    }.items():
        out["model.region_encoder." + key] = torch.randn(shape, generator=gen)
    return out


def glamm_config() -> dict:
    """config.json fields GLaMM's code writes (LLaMA's, LLaVA's mm_* and GLaMM's own), at tiny size."""
    return {
        **tiny_llama_config(IMAGE_ID),
        "architectures": ["GLaMMForCausalLM"],
        "num_key_value_heads": 2,
        "tie_word_embeddings": False,
        "use_cache": False,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_vision_module": "openai/clip-vit-large-patch14-336",
        "mm_hidden_size": 32,
        "mm_vision_select_feature": "patch",
        "mm_use_image_start_end": True,
        "use_mm_proj": True,
        "select_feature_type": "patch",
        "image_aspect": "square",
        "with_region": True,
        "num_reg_features": 4,
        "bbox_token_idx": 58,
    }


def write_glamm(directory: Path, state: dict[str, torch.Tensor]) -> Path:
    """Two `.bin` shards with an index, GLaMM's config.json and tokenizer."""
    write_shards(directory, state, kind="bin")
    (directory / "config.json").write_text(json.dumps(glamm_config()))
    glamm_tokenizer().save_pretrained(directory)
    return directory


def write_clip(directory: Path, model: SegModel) -> Path:
    """A transformers CLIPModel directory: vision and text towers, projections, vision_config heads."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    state = clip_state(model)
    state["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    state["text_model.embeddings.token_embedding.weight"] = torch.zeros(8, 4)
    state["visual_projection.weight"] = torch.zeros(4, 32)
    state["logit_scale"] = torch.tensor(2.0)
    save_file(state, str(directory / "model.safetensors"))
    config = {"model_type": "clip", "vision_config": {"hidden_size": 32, "num_attention_heads": 4}}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def glamm(tmp_path_factory):
    """The direct model, its GLaMM checkpoint with CLIP keys and one without, and a CLIP directory."""
    model = glamm_model()
    root = tmp_path_factory.mktemp("glamm")
    full = glamm_state_dict(model, with_clip=True)
    write_glamm(root / "with-clip", full)
    write_glamm(root / "no-clip", glamm_state_dict(model, with_clip=False))
    write_clip(root / "clip", model)
    return model, full, root


@pytest.fixture(scope="module")
def converted(glamm, tmp_path_factory):
    """The CLI's conversion of each checkpoint: layout -> (SegModel directory, command output)."""
    _, _, root = glamm
    done = {}
    for layout in ("with-clip", "no-clip"):
        out = tmp_path_factory.mktemp("converted") / layout
        args = ["convert-glamm", str(root / layout), str(out)]
        if layout == "with-clip":
            args += ["--config-overrides", json.dumps({**OVERRIDES, **CLIP_HEADS})]
        else:  # as GLaMM's released checkpoints: the tower and its heads come from a CLIP directory
            args += ["--vision-tower", str(root / "clip"), "--config-overrides", json.dumps(OVERRIDES)]
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):  # capsys is per test; this fixture is per module
            assert main(args) == 0
        done[layout] = out, stdout.getvalue()
    return done


@pytest.fixture(scope="module")
def official(converted):
    """The conversion of the layout GLaMM releases (no CLIP keys, --vision-tower), loaded."""
    return SegModel.from_pretrained(converted["no-clip"][0]).eval()


class Greedy(LogitsProcessor):
    """Record the token greedy decoding picks at each step (after ground's own processors)."""

    def __init__(self) -> None:
        self.picked: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.picked.append(scores.argmax(-1))
        return scores


def greedy_ground(model: SegModel, **kwargs) -> tuple[list, torch.Tensor]:
    """`ground` unforced: its answers and the `(B, T)` tokens greedy decoding chose."""
    recorder = Greedy()
    answers = model.ground(images(), logits_processor=LogitsProcessorList([recorder]), **kwargs)
    return answers, torch.stack(recorder.picked, dim=1)


def test_synthetic_sam_keys_are_segment_anything_keys(glamm):
    _, state, _ = glamm
    ours = {k: tuple(v.shape) for k, v in state.items() if k.startswith(SAM_PREFIX)}
    assert ours == segment_anything_keys(SAM_PREFIX)


@torch.no_grad()
@pytest.mark.parametrize("layout", ["with-clip", "no-clip"])
def test_converted_glamm_equals_the_directly_built_one(glamm, converted, layout):
    model, _, _ = glamm
    directory, output = converted[layout]
    got = SegModel.from_pretrained(directory).eval()
    # The region encoder is dropped, and said so once.
    assert output.count("not converted") == 1 and "8 tensors under model.region_encoder.*" in output
    expected, weights = model.state_dict(), got.state_dict()
    assert set(weights) == set(expected)
    assert [k for k in expected if not torch.equal(weights[k], expected[k])] == []

    config = got.config
    assert (config.seg_token_id, config.llava_config.image_token_id) == (SEG_ID, IMAGE_ID)
    assert config.llava_config.projector_hidden_act == "gelu"
    assert config.llava_config.vision_config.num_attention_heads == 4
    assert (config.prompt_template, config.gcg_query, config.clip_crop) == (PROMPT, GCG, True)
    assert (config.phrase_open, config.phrase_close, config.region_token) == ("<p>", "</p>", "<bbox>")
    tokenizer = got.tokenizer
    ids = tokenizer.convert_tokens_to_ids(["[SEG]", "<p>", "</p>", "<image>"])
    assert ids == [SEG_ID, OPEN_ID, CLOSE_ID, IMAGE_ID]
    assert tokenizer.pad_token_id == tokenizer.unk_token_id  # GLaMM pads with <unk>

    queries = ["What is the red car in this image ? Please output segmentation mask ."] * 2
    ours, theirs = (
        got.segment(images(), queries, threshold=None),
        model.segment(images(), queries, threshold=None),
    )
    assert max(float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True)) <= 1e-5
    # Greedy GCG: the same tokens, text, phrases and masks.
    (ours, our_tokens), (theirs, their_tokens) = (
        greedy_ground(got, max_new_tokens=12),
        greedy_ground(model, max_new_tokens=12),
    )
    assert torch.equal(our_tokens, their_tokens)
    assert [(a.text, a.phrases) for a in ours] == [(b.text, b.phrases) for b in theirs]
    # A grounded answer forced through both: GLaMM's special <p> </p> [SEG] stay in the text.
    script = ["<p> a man </p> [SEG] and <p> the car </p> [SEG] ."] * 2
    ours = ground_scripted(got, images(), script, threshold=None)
    theirs = ground_scripted(model, images(), script, threshold=None)
    assert ours[0].text == script[0] and ours[0].phrases == ["a man", "the car"]
    assert max(float((a.masks - b.masks).abs().max()) for a, b in zip(ours, theirs, strict=True)) <= 1e-5


@torch.no_grad()
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_method_runs_glamm_protocol(glamm, official, name):
    """Pruned, the converted model and the direct one still agree in segment and in ground."""
    model, _, _ = glamm
    got = official
    queries = ["Please segment the red car ."] * 2
    try:
        for m in (got, model):
            segprune.prune_(m, EXAMPLES[name])
        ours, theirs = (
            got.segment(images(), queries, threshold=None),
            model.segment(images(), queries, threshold=None),
        )
        assert max(float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True)) <= 1e-5
        assert segprune.stats(got).n_avg < 16
        (ours, our_tokens), (theirs, their_tokens) = (
            greedy_ground(got, max_new_tokens=4),
            greedy_ground(model, max_new_tokens=4),
        )
        assert torch.equal(our_tokens, their_tokens)
    finally:
        for m in (got, model):
            segprune.unprune(m)


def test_region_prompts_are_refused(official):
    got = official
    with pytest.raises(ValueError, match=r"region token '<bbox>'.*region encoder.*not convert"):
        got.ground(images()[:1], prompt="What is in <bbox> ?")
    with pytest.raises(ValueError, match=r"prompt\(s\) \[1\] hold the region token"):
        got.segment(images(), ["the car", "the <bbox> region"])


def convert_broken(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    src = write_glamm(tmp_path / "src", state)
    overrides = {**OVERRIDES, **CLIP_HEADS}
    convert_glamm(src, tmp_path / "out", config_overrides=overrides, log=lambda line: None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            "missing",
            r"missing model weights \['mllm\.model\.language_model\.layers\.2\.mlp\.down_proj\.weight'\]",
        ),
        ("unexpected", r"match no GLaMM layout rule: \['model\.grounding_encoder\.mask_decoder\.extra'\]"),
        (
            "shape",
            r"model\.mm_projector\.2\.weight -> mllm\.model\.multi_modal_projector\.linear_2\.weight: "
            r"checkpoint \(32, 31\), model \(32, 32\)",
        ),
        ("no-clip", r"holds no CLIP vision tower.*--vision-tower CLIP_DIR"),
    ],
)
def test_broken_checkpoints_stop_with_the_keys_named(glamm, tmp_path, change, message):
    _, full, _ = glamm
    state = dict(full)
    if change == "missing":
        del state["model.layers.2.mlp.down_proj.weight"]
    elif change == "unexpected":
        state[SAM_PREFIX + "mask_decoder.extra"] = torch.zeros(1)
    elif change == "shape":
        state["model.mm_projector.2.weight"] = state["model.mm_projector.2.weight"][:, :31]
    else:
        state = {k: v for k, v in state.items() if not k.startswith(CLIP_PREFIX)}
    with pytest.raises(ConversionError, match=message):
        convert_broken(tmp_path, state)


def test_tokenizer_without_glamm_tokens_is_refused(glamm, tmp_path):
    _, full, root = glamm
    src = write_glamm(tmp_path / "src", full)
    word_tokenizer(WORDS, special_tokens=BASE_TOKENS).save_pretrained(src)  # no added tokens
    with pytest.raises(ConversionError, match=r"no \[SEG\], <p>, </p>, <im_start>, <im_end>, <bbox> token"):
        convert_glamm(src, tmp_path / "out", vision_tower=root / "clip")


def speaking(model: SegModel, answer: list[str]) -> SegModel:
    """A copy of `model` whose greedy answer to any prompt ending in `:` is `answer`, then `</s>`.

    The decoder layers add nothing (zero output projections), so the last state is the last token's
    embedding, and each head row points at the embedding of the token before it in the answer.
    """
    spoken = glamm_model()
    spoken.load_state_dict(model.state_dict())
    ids = spoken.tokenizer.convert_tokens_to_ids([":", *answer, "</s>"])
    with torch.no_grad():
        for layer in spoken.mllm.model.language_model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed, head = spoken.get_input_embeddings().weight, spoken.mllm.lm_head.weight
        head.zero_()
        for now, after in itertools.pairwise(ids):
            head[after] = 10 * embed[now] / embed[now].norm()
    return spoken


def test_gcg_eval_of_a_converted_glamm(glamm, tmp_path):
    """`segprune eval --task gcg` on a converted GLaMM scores what the directly built model scores."""
    from segprune.eval.datasets import parse_data
    from segprune.eval.metrics import java_available
    from segprune.eval.records import merged_records
    from segprune.eval.runner import EvalSpec, evaluate

    model = speaking(glamm[0], ["<p>", "a", "man", "</p>", "[SEG]", "."])
    src = write_glamm(tmp_path / "src", glamm_state_dict(model, with_clip=False))
    with contextlib.redirect_stdout(io.StringIO()):
        args = ["convert-glamm", str(src), str(tmp_path / "glamm"), "--vision-tower", str(glamm[2] / "clip")]
        assert main([*args, "--config-overrides", json.dumps(OVERRIDES)]) == 0
    captions = java_available()  # METEOR runs pycocoevalcap's Java jar
    run = ["eval", "--model", str(tmp_path / "glamm"), "--task", "gcg", "--data", "shapes:0:2", "--quiet"]
    run += ["--batch-size", "2", "--max-new-tokens", "8", "--out", str(tmp_path / "run")]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(run + (["--captions"] if captions else [])) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    records = merged_records(tmp_path / "run")
    assert [r["text"] for r in records] == ["<p> a man </p> [SEG] ."] * 2
    assert [r["pred"]["phrases"] for r in records] == [["a man"]] * 2
    assert all(len(r["pred"]["masks"]) == 1 for r in records)
    scores = summary["accuracy"]
    assert {"ap50", "miou", "recall", "meteor", "cider"} <= set(scores)
    assert 0 <= scores["ap50"] <= 1 and 0 < scores["miou"] <= 1 and 0 <= scores["recall"] <= 1
    if captions:
        assert scores["meteor"] > 0 and scores["cider"] >= 0
    # The directly built model gives the same records, so the same scores (METEOR's jar runs once:
    # it takes 10-20 s to start).
    spec = EvalSpec("gcg", parse_data("shapes:0:2"), str(tmp_path / "glamm"), None, 2, 8)
    direct = evaluate(model, spec, tmp_path / "direct", progress=False)
    assert [{k: r[k] for k in ("text", "pred", "ref")} for r in merged_records(tmp_path / "direct")] == [
        {k: r[k] for k in ("text", "pred", "ref")} for r in records
    ]
    assert {k: v for k, v in direct["accuracy"].items() if k not in ("meteor", "cider")} == {
        k: v for k, v in scores.items() if k not in ("meteor", "cider")
    }


def test_command_refuses_a_used_destination(glamm, converted, capsys):
    _, _, root = glamm
    used, _ = converted["with-clip"]
    assert main(["convert-glamm", str(root / "with-clip"), str(used)]) == 2
    assert f"destination '{used}' is not empty" in capsys.readouterr().err
    assert main(["convert-glamm", str(root / "with-clip"), str(used / "config.json")]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
