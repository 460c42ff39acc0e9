"""Training sequences for the tiny model: multi-turn conversations about one shapes scene, with targets.

One sequence holds the image once and several turns, as LISA trains (several questions per image
amortise the 576 image tokens, which dominate the cost):

- referring segmentation: `What is {phrase} in this image? ...` -> `Sure, it is [SEG].`, one mask;
  query types are drawn with weights that favour the ones only the image can answer (spatial,
  superlative, reasoning) over plain attributes, which the text alone nearly gives away;
- grounded captions (GCG): every object left to right as size/colour/shape words, one mask per
  `[SEG]`; the words are language-modelling targets only the image can supply;
- QA: counts, colours, shapes, positions, answered in a word.

Besides the token ids and labels (answer tokens only), a sample holds a soft mask target for each
`[SEG]` at SAM's low-resolution mask size, the target's centre, and dense per-patch targets (colour,
shape and size of what covers each patch) for the auxiliary heads that make visual tokens carry
object identity. Everything is a pure function of the scene and a numpy generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segprune.checks import check_fields, check_int, check_number
from segprune.data.scene import COLOURS, QUERY_TYPES, SHAPES, SIZE_WORDS, Scene
from segprune.models import seg_inputs
from segprune.models.tiny import refer_query

COLOUR_CLASSES = ("background", *COLOURS)
SHAPE_CLASSES = ("background", *SHAPES)
SIZE_CLASSES = ("background", *SIZE_WORDS)
N_PRESENCE = len(COLOURS) + len(SHAPES)  # the CLS head's multi-label target: which colours and kinds occur


@dataclass(frozen=True)
class TaskMix:
    """What goes into one training sequence.

    Attributes:
        refer_turns: referring-segmentation turns per sequence.
        qa_turns: QA turns per sequence.
        caption_prob: chance that the sequence also holds the grounded caption.
        query_weights: relative weights of the query types (attribute, spatial, superlative,
            reasoning); a type the scene lacks is skipped.
    """

    refer_turns: int = 4
    qa_turns: int = 2
    caption_prob: float = 0.5
    query_weights: tuple[float, ...] = (0.15, 0.35, 0.25, 0.25)

    def __post_init__(self) -> None:
        check_int("TaskMix.refer_turns", self.refer_turns, 0)
        check_int("TaskMix.qa_turns", self.qa_turns, 0)
        check_number("TaskMix.caption_prob", self.caption_prob, 0, 1)
        weights = self.query_weights
        if not isinstance(weights, (tuple, list)) or len(weights) != len(QUERY_TYPES):
            raise ValueError(
                f"TaskMix.query_weights={weights!r} must hold {len(QUERY_TYPES)} numbers, one per type "
                f"{list(QUERY_TYPES)}"
            )
        for i, weight in enumerate(weights):
            check_number(f"TaskMix.query_weights[{i}]", weight, 0)
        if not sum(weights):
            raise ValueError(f"TaskMix.query_weights={weights!r} must not all be 0")
        if not (self.refer_turns or self.qa_turns or self.caption_prob):
            raise ValueError("this TaskMix trains nothing: refer_turns, qa_turns and caption_prob are all 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskMix:
        """Build a mix from a dict of field overrides (`--mix`), naming any unknown field."""
        check_fields("TaskMix", data, [f.name for f in fields(cls)])
        return cls(**data)


@dataclass
class Turn:
    """One question and its answer; `targets` lists the object index behind each `[SEG]` of the answer."""

    question: str
    answer: str
    targets: list[int] = field(default_factory=list)


def choose_query(scene: Scene, rng: np.random.Generator, weights: Sequence[float], avoid=()) -> Any:
    """Draw a query: first its type (by `weights`, among the types the scene has), then one of that type."""
    by_type = {t: [q for q in scene.queries if q.type == t and q.text not in avoid] for t in QUERY_TYPES}
    types = [t for t in QUERY_TYPES if by_type[t]]
    if not types:
        return None
    w = np.array([weights[QUERY_TYPES.index(t)] for t in types], dtype=float)
    kind = types[int(rng.choice(len(types), p=w / w.sum()))]
    return by_type[kind][int(rng.integers(len(by_type[kind])))]


def scene_turns(scene: Scene, rng: np.random.Generator, mix: TaskMix, gcg_query: str, seg_answer: str):
    """Return the turns of one training sequence about `scene`, in random order."""
    turns, used = [], set()
    for _ in range(mix.refer_turns):
        query = choose_query(scene, rng, mix.query_weights, avoid=used)
        if query is None:
            break
        used.add(query.text)
        turns.append(Turn(refer_query(query.text), seg_answer, [query.target]))
    if scene.qa:
        for i in rng.choice(len(scene.qa), size=min(mix.qa_turns, len(scene.qa)), replace=False):
            turns.append(Turn(scene.qa[int(i)].question, scene.qa[int(i)].answer))
    if rng.random() < mix.caption_prob:
        turns.append(Turn(gcg_query, scene.caption.tagged, [p.target for p in scene.caption.phrases]))
    order = rng.permutation(len(turns))
    return [turns[int(i)] for i in order]


def encode_turns(tokenizer: Any, config: Any, turns: Sequence[Turn]) -> tuple[list[int], list[int]]:
    """Token ids of the conversation (image token expanded) and labels: answer tokens and `</s>`, else -100.

    The first turn is `config.prompt_template` (what `SegModel.segment` and `ground` send); later
    turns follow LLaVA v1's form, `USER: ... ASSISTANT: ...</s>`. The word tokenizer splits at
    whitespace, so encoding the pieces separately gives the ids of the whole text.
    """
    llava = config.llava_config
    eos = tokenizer.eos_token_id
    ids, labels = [tokenizer.bos_token_id], [-100]

    def piece(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    for n, turn in enumerate(turns):
        prompt = (
            config.prompt_template.replace("{query}", turn.question)
            if n == 0
            else (f"USER: {turn.question} ASSISTANT:")
        )
        prompt_ids = piece(prompt)
        if n == 0:
            at = prompt_ids.index(llava.image_token_id)
            prompt_ids[at : at + 1] = [llava.image_token_id] * llava.image_seq_length
        answer_ids = [*piece(turn.answer), eos]
        ids += prompt_ids + answer_ids
        labels += [-100] * len(prompt_ids) + answer_ids
    return ids, labels


def patch_targets(scene: Scene, grid: int) -> dict[str, torch.Tensor]:
    """Soft per-patch class distributions `(grid, grid, classes)` for colour, shape and size.

    Each class gets the fraction of the patch its objects cover; background takes the rest. Soft
    targets keep a one-patch object that straddles four patches visible in all of them.
    """
    masks = torch.from_numpy(np.stack([o.mask for o in scene.objects])).float()
    cover = F.adaptive_avg_pool2d(masks[None], grid)[0]  # (objects, grid, grid)
    background = (1 - cover.sum(0)).clamp(min=0)
    out = {}
    for name, classes, key in (
        ("colour", COLOUR_CLASSES, "colour"),
        ("shape", SHAPE_CLASSES, "shape"),
        ("size", SIZE_CLASSES, "size_word"),
    ):
        target = torch.zeros(len(classes), grid, grid)
        target[0] = background
        for obj, c in zip(scene.objects, cover, strict=True):
            target[classes.index(getattr(obj, key))] += c
        out[name] = (target / target.sum(0, keepdim=True)).permute(1, 2, 0)
    return out


def presence_target(scene: Scene) -> torch.Tensor:
    """Multi-hot `(16,)`: which colours, then which shape kinds, the scene holds."""
    target = torch.zeros(N_PRESENCE)
    for obj in scene.objects:
        target[list(COLOURS).index(obj.colour)] = 1
        target[len(COLOURS) + SHAPES.index(obj.shape)] = 1
    return target


def make_sample(
    scene: Scene, rng: np.random.Generator, tokenizer: Any, config: Any, mix: TaskMix
) -> dict[str, Any]:
    """Build one training sample (unbatched tensors) from a scene; see the module docstring."""
    turns = scene_turns(scene, rng, mix, config.gcg_query, config.seg_answer)
    ids, labels = encode_turns(tokenizer, config, turns)
    targets = [t for turn in turns for t in turn.targets]
    if ids.count(config.seg_token_id) != len(targets):
        raise RuntimeError("each [SEG] of the answers needs one target object")
    llava, sam = config.llava_config, config.sam_config
    picture = seg_inputs.as_uint8_chw(scene.image)
    sam_size = sam.vision_config.image_size
    low_res = 4 * (sam_size // sam.vision_config.patch_size)  # SAM's decoder upsamples its grid 4x
    if scene.size[0] != scene.size[1]:
        raise ValueError("training scenes must be square (the SAM input is then unpadded)")
    masks = torch.from_numpy(np.stack([scene.objects[t].mask for t in targets] or [scene.objects[0].mask]))
    mask_targets = F.adaptive_avg_pool2d(masks[None].float(), low_res)[0][: len(targets)]
    height, width = scene.size
    centres = torch.tensor([scene.objects[t].center for t in targets], dtype=torch.float32).reshape(-1, 2)
    points = inside_points([scene.objects[t].mask for t in targets], rng)
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "pixel_values": seg_inputs.clip_pixels([picture], llava.vision_config.image_size)[0],
        "sam_pixels": seg_inputs.sam_pixels([picture], sam_size).pixels[0],
        "mask_targets": mask_targets,
        "centres": centres / torch.tensor([width, height]),
        "points": points * (sam_size / width) - 0.5,  # SAM's pixel indices (it adds 0.5); square scenes
        "vision_patches": patch_targets(
            scene, llava.vision_config.image_size // llava.vision_config.patch_size
        ),
        "sam_patches": patch_targets(scene, sam_size // sam.vision_config.patch_size),
        "presence": presence_target(scene),
    }


def inside_points(masks: Sequence[np.ndarray], rng: np.random.Generator) -> torch.Tensor:
    """One random `(x, y)` pixel centre inside each mask, `(len(masks), 2)` float pixels."""
    points = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        if not len(xs):
            raise ValueError("a target object has an empty mask; no point can be drawn inside it")
        i = int(rng.integers(len(xs)))
        points.append((xs[i] + 0.5, ys[i] + 0.5))
    return torch.tensor(points, dtype=torch.float32).reshape(-1, 2)


def collate(samples: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Batch samples: pad ids on the right, concatenate the per-`[SEG]` targets, stack the rest."""
    length = max(len(s["input_ids"]) for s in samples)
    batch = len(samples)
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    labels = torch.full((batch, length), -100, dtype=torch.long)
    attention_mask = torch.zeros(batch, length, dtype=torch.long)
    for b, s in enumerate(samples):
        n = len(s["input_ids"])
        input_ids[b, :n], labels[b, :n], attention_mask[b, :n] = s["input_ids"], s["labels"], 1
    out = {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "mask_targets": torch.cat([s["mask_targets"] for s in samples]),
        "centres": torch.cat([s["centres"] for s in samples]),
        "points": torch.cat([s["points"] for s in samples]),
    }
    for key in ("pixel_values", "sam_pixels", "presence"):
        out[key] = torch.stack([s[key] for s in samples])
    for key in ("vision_patches", "sam_patches"):
        out[key] = {name: torch.stack([s[key][name] for s in samples]) for name in samples[0][key]}
    return out
