"""What an evaluation reads: a data spec (generated shapes or a data set on disk) and its samples.

A spec is JSON-ready (`to_dict`) so a run directory can record what it evaluated. Samples are
lazy: the image and the masks are read or generated when a batch needs them, so listing a split
of thousands of queries costs nothing.

    shapes:SEED:N        N scenes of `generate_split(N, SEED)`: `queries_per_scene` referring
                         queries each (one per query type in turn), or one GCG caption each
    PATH --format F      refcoco (root with <dataset>/refs(<split_by>).p), reasonseg (root with
                         <split>/), grandf (the <split>_gcg_coco_caption_gt.json file), rio (the
                         split's JSON file, or the folder holding RIO_<split>_*.json)
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segprune.checks import check_choice, check_int
from segprune.data.scene import QUERY_TYPES, Scene
from segprune.eval.metrics.masks import SMALL_FRACTION

FORMATS = ("refcoco", "reasonseg", "grandf", "rio")
TASK_SOURCES = {"refseg": ("shapes", "refcoco", "reasonseg", "rio"), "gcg": ("shapes", "grandf")}
DEFAULT_SPLIT = {"rio": "common"}  # the other formats' default is "val"
INSTANCE_SOURCES = ("shapes",)  # sources whose samples carry every object's mask (`RefSample.instances`)


@dataclass(frozen=True)
class DataSpec:
    """Where the samples come from, with every option that changes which samples they are.

    Attributes:
        source: "shapes" or one of `FORMATS`.
        seed, scenes: the shapes split (`generate_split(scenes, seed)`).
        queries_per_scene: referring queries taken from each shapes scene.
        path: the data set's root (refcoco, reasonseg), caption JSON (grandf) or annotation file or
            folder (rio), absolute.
        dataset, split, split_by, image_dir, mask_json, all_texts: the loaders' options.
        limit: keep only the first `limit` samples (None: all).
    """

    source: str
    seed: int | None = None
    scenes: int | None = None
    queries_per_scene: int = 4
    path: str | None = None
    dataset: str = "refcoco"
    split: str = "val"
    split_by: str = "unc"
    image_dir: str | None = None
    mask_json: str | None = None
    all_texts: bool = False
    limit: int | None = None

    def __post_init__(self) -> None:
        check_choice("DataSpec.source", self.source, ("shapes", *FORMATS))
        check_int("DataSpec.queries_per_scene", self.queries_per_scene, 1)
        if self.limit is not None:
            check_int("DataSpec.limit", self.limit, 1)
        if self.source == "shapes":
            check_int("DataSpec.seed", self.seed, 0)
            check_int("DataSpec.scenes", self.scenes, 1)
        elif self.path is None:
            raise ValueError(f"{self.source} data needs a path")

    def to_dict(self) -> dict[str, Any]:
        """Return the fields that matter for this source, JSON-ready."""
        keep = {
            "shapes": ("seed", "scenes", "queries_per_scene"),
            "refcoco": ("path", "dataset", "split", "split_by", "image_dir"),
            "reasonseg": ("path", "split", "all_texts"),
            "grandf": ("path", "image_dir", "mask_json"),
            "rio": ("path", "split", "image_dir", "all_texts"),
        }[self.source]
        data = asdict(self)
        return {"source": self.source, **{k: data[k] for k in keep}, "limit": self.limit}


def parse_data(text: str, fmt: str | None = None, **options: Any) -> DataSpec:
    """Parse `shapes:SEED:N`, or a path read with `fmt` and the loaders' `options`, into a `DataSpec`."""
    options = {k: v for k, v in options.items() if v is not None}
    match = re.fullmatch(r"shapes:(\d+):(\d+)", text)
    if match:
        if fmt is not None:
            raise ValueError(f"--format {fmt} does not apply to generated data {text!r}")
        seed, scenes = int(match[1]), int(match[2])
        if scenes < 1:
            raise ValueError(f"{text!r} asks for no scenes; use shapes:SEED:N with N >= 1")
        return DataSpec("shapes", seed=seed, scenes=scenes, **options)
    if text.startswith("shapes"):
        raise ValueError(f"data {text!r} is not of the form shapes:SEED:N (two integers)")
    if fmt not in FORMATS:
        raise ValueError(f"data {text!r} is a path: give --format, one of {list(FORMATS)}")
    if not Path(text).exists():
        raise ValueError(f"data path {text!r} does not exist")
    if fmt in DEFAULT_SPLIT and "split" not in options:
        options["split"] = DEFAULT_SPLIT[fmt]
    for key in ("image_dir", "mask_json"):
        if key in options:
            options[key] = str(Path(options[key]).resolve())
    return DataSpec(fmt, path=str(Path(text).resolve()), **options)


@dataclass(frozen=True)
class RefSample:
    """One referring query with its answer: the image, the query text, the target mask and its tags.

    The one referring-sample type of evaluation (`load_items`) and of training's validation split
    (`segprune.train.evaluate.validation_set`).

    Attributes:
        sample_id: unique within its data (records are resumed by it).
        image: `(H, W, 3)` uint8.
        query: the referring expression ("the red star") or ReasonSeg's sentence, not yet worded
            as a question (`segprune.models.prompts.lisa_query` does that).
        target: `(H, W)` bool mask of what the query refers to.
        ignore: `(H, W)` bool mask of pixels left out of the counts (ReasonSeg's 255), or None.
        tags: what the scores are grouped by: "type:<query type>", "small".
        instances: `(K, H, W)` bool visible masks of every object in the image (shapes data), the
            ground-truth instances of CSP Seg-First's oracle row; None where the data has none.
    """

    sample_id: str
    image: np.ndarray = field(repr=False)
    query: str
    target: np.ndarray = field(repr=False)
    ignore: np.ndarray | None = field(default=None, repr=False)
    tags: tuple[str, ...] = ()
    instances: np.ndarray | None = field(default=None, repr=False)

    @property
    def type(self) -> str | None:
        """The query type of the "type:" tag ("spatial", "sentence", ...), or None without one."""
        return next((t.removeprefix("type:") for t in self.tags if t.startswith("type:")), None)


@dataclass(frozen=True)
class CaptionSample:
    """One image to caption (gcg) with its reference `GCGAnnotation`: caption, phrases, one mask each;
    `instances` as for `RefSample`."""

    sample_id: str
    image: np.ndarray = field(repr=False)
    reference: Any
    instances: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RefItem:
    """One referring query, loaded on demand: `load()` gives its `RefSample`."""

    sample_id: str
    load: Callable[[], RefSample]


@dataclass(frozen=True)
class GCGItem:
    """One image to caption, loaded on demand: `load()` gives its `CaptionSample`."""

    sample_id: str
    load: Callable[[], CaptionSample]


def load_items(spec: DataSpec, task: str) -> Sequence[RefItem] | Sequence[GCGItem]:
    """Return the samples of `spec` for `task` ("refseg" or "gcg"), in a fixed order."""
    if spec.source not in TASK_SOURCES[task]:
        raise ValueError(
            f"task {task!r} cannot read {spec.source!r} data; valid sources: {list(TASK_SOURCES[task])}"
        )
    if spec.source == "shapes":
        if task == "refseg":
            items = [
                RefItem(f"{_shapes_id(spec, i)}/q{k}", functools.partial(_shapes_query, spec, i, k))
                for i in range(spec.scenes)
                for k in range(spec.queries_per_scene)
            ]
        else:
            items = [
                GCGItem(_shapes_id(spec, i), functools.partial(_shapes_caption, spec, i))
                for i in range(spec.scenes)
            ]
    else:
        from segprune.data import formats

        if spec.source == "refcoco":
            samples = formats.load_refcoco(spec.path, spec.dataset, spec.split, spec.split_by, spec.image_dir)
        elif spec.source == "reasonseg":
            samples = formats.load_reasonseg(spec.path, spec.split, spec.all_texts)
        elif spec.source == "rio":
            samples = formats.load_rio(spec.path, spec.split, spec.image_dir, spec.all_texts)
        else:
            parents = Path(spec.path).parents
            if spec.image_dir is None and len(parents) < 3:
                raise ValueError(f"grandf data {spec.path} is outside GLaMM's layout; give --image-dir")
            image_root = spec.image_dir or parents[2] / formats.GRANDF_IMAGE_DIR
            samples = formats.load_grandf(spec.path, image_root, spec.mask_json)
        make = _file_query if task == "refseg" else _file_caption
        item = RefItem if task == "refseg" else GCGItem
        items = [item(s.sample_id, functools.partial(make, s)) for s in samples]
        _check_images(spec, [s.image_path for s in samples[: spec.limit]])
    if not items:
        options = {k: v for k, v in spec.to_dict().items() if k not in ("source", "path", "limit")}
        raise ValueError(f"{spec.source} data {spec.path} holds no sample for {options}; nothing to evaluate")
    ids = [item.sample_id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{spec.source} data repeats a sample id; results could not be resumed by id")
    return items if spec.limit is None else items[: spec.limit]


def _check_images(spec: DataSpec, paths: Sequence[Path]) -> None:
    """Refuse data whose image files are missing before the run starts, not hours into it."""
    missing = [p for p in dict.fromkeys(paths) if not p.is_file()]
    if missing:
        hint = "; check --image-dir" if spec.source in ("refcoco", "grandf") else ""
        raise ValueError(
            f"{len(missing)} image file(s) of the {spec.source} data are missing, e.g. {missing[0]}{hint}"
        )


# -- shapes ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)  # a batch holds consecutive queries of a few scenes
def _scene(seed: int, index: int) -> Scene:
    from segprune.data.shapes import generate_split

    return generate_split(index + 1, seed)[index]


def pick_queries(scene: Scene, count: int, rng: np.random.Generator) -> list:
    """Pick `count` of a scene's queries, one per query type in turn, so no type dominates.

    Spatial queries are 59% of all queries; taking them in turn with the other types gives each
    type its share. Within a type the order is random; a scene short of queries repeats the cycle.
    """
    by_type = {t: [q for q in scene.queries if q.type == t] for t in QUERY_TYPES}
    for queries in by_type.values():
        rng.shuffle(queries)
    order = [q for round_ in itertools.zip_longest(*by_type.values()) for q in round_ if q is not None]
    if not order:
        raise ValueError(f"scene {scene.scene_id} has no referring query")
    return [order[k % len(order)] for k in range(count)]


def _shapes_query(spec: DataSpec, index: int, k: int) -> RefSample:
    scene = _scene(spec.seed, index)
    rng = np.random.default_rng([spec.seed, index, 1])  # the choice depends on the scene alone
    query = pick_queries(scene, spec.queries_per_scene, rng)[k]
    tags = (f"type:{query.type}", *(["small"] if _is_small(query.mask) else []))
    sample_id = f"{_shapes_id(spec, index)}/q{k}"
    return RefSample(sample_id, scene.image, query.text, query.mask, None, tags, scene_instances(scene))


def _shapes_caption(spec: DataSpec, index: int) -> CaptionSample:
    from segprune.eval.metrics import GCGAnnotation

    scene = _scene(spec.seed, index)
    phrases = scene.caption.phrases
    reference = GCGAnnotation(
        scene.scene_id, scene.caption.text, [p.text for p in phrases], [p.mask for p in phrases]
    )
    return CaptionSample(_shapes_id(spec, index), scene.image, reference, scene_instances(scene))


def scene_instances(scene: Scene) -> np.ndarray:
    """Return `(K, H, W)` bool: the visible mask of each of a scene's objects, in drawing order."""
    if not scene.objects:
        return np.zeros((0, *scene.size), dtype=bool)
    return np.stack([obj.mask.astype(bool) for obj in scene.objects])


def _shapes_id(spec: DataSpec, index: int) -> str:
    return f"shapes-{spec.seed}-{index:06d}"


# -- files -----------------------------------------------------------------------------------------


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as err:  # missing, not an image, cut off
        raise ValueError(f"image {path} cannot be read: {err}") from None


def _file_query(sample: Any) -> RefSample:
    image = _read_image(sample.image_path)  # first: a broken image is named as such, not as a mask error
    target = sample.mask
    tags = ["small"] if _is_small(target) else []
    if "type" in sample.tags:  # RefCOCO files written from shapes data
        tags.insert(0, f"type:{sample.tags['type']}")
    elif "is_sentence" in sample.tags:  # ReasonSeg: LISA reports short and long queries apart
        tags.insert(0, "type:sentence" if sample.tags["is_sentence"] else "type:phrase")
    elif "instances" in sample.tags:  # RIO: intentions are sentences; several instances make one target
        tags.insert(0, "type:sentence")
        if sample.tags["instances"] > 1:
            tags.append("multi")
    return RefSample(sample.sample_id, image, sample.query, target, sample.ignore, tuple(tags))


def _file_caption(sample: Any) -> CaptionSample:
    from segprune.eval.metrics import GCGAnnotation

    image = _read_image(sample.image_path)
    reference = GCGAnnotation(sample.sample_id, sample.caption, sample.phrases, sample.masks)
    return CaptionSample(sample.sample_id, image, reference)


def _is_small(mask: np.ndarray) -> bool:
    return bool(np.count_nonzero(mask) < SMALL_FRACTION * mask.size)
