"""What the format readers share: the sample types they return and their file helpers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from segprune.data.masks import to_rle
from segprune.data.scene import tag_caption


@dataclass(frozen=True)
class ReferringSample:
    """One referring query and its target: `mask` (bool H x W) is decoded on each access.

    `ignore` is the region to leave out of the metrics (ReasonSeg's "ignore" polygons), else None.
    """

    image_path: Path
    query: str
    sample_id: str
    load_mask: Callable[[], np.ndarray] = field(repr=False, compare=False)
    tags: dict = field(default_factory=dict)
    load_ignore: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def mask(self) -> np.ndarray:
        """Return the target mask, bool (H, W)."""
        return self.load_mask()

    @property
    def ignore(self) -> np.ndarray | None:
        """Return the ignore mask, bool (H, W), or None where the format has none."""
        return None if self.load_ignore is None else self.load_ignore()


@dataclass(frozen=True)
class GCGSample:
    """One image's grounded caption: plain `caption`, its `phrases` and one mask per phrase.

    `spans` are the phrases' (start, end) in the caption, or None when a phrase is not found in it.
    """

    image_path: Path
    caption: str
    phrases: list[str]
    sample_id: str
    load_masks: Callable[[], list[np.ndarray]] = field(repr=False, compare=False)
    spans: list[tuple[int, int]] | None = None

    @property
    def masks(self) -> list[np.ndarray]:
        """Return one bool (H, W) mask per phrase, decoded now."""
        return self.load_masks()

    @property
    def tagged(self) -> str:
        """Return the caption in GLaMM's answer form, each phrase as `<p> phrase </p> [SEG]`."""
        if self.spans is None:
            raise ValueError(f"{self.sample_id}: phrases not found in the caption, cannot tag it")
        return tag_caption(self.caption, self.spans)


def read_json(path: Path, what: str) -> Any:
    """Return the JSON of `path`, or raise one `ValueError` saying which file is missing or broken."""
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:  # some of the original ReasonSeg files are not UTF-8; LISA falls back likewise
        text = data.decode("cp1252", errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not JSON ({err})") from None


@contextmanager
def layout(path: Path, name: str) -> Iterator[None]:
    """Turn a missing key or a wrong type while reading `path` into one error naming the file."""
    try:
        yield
    except (KeyError, TypeError, IndexError, AttributeError) as err:
        what = f"missing key {err}" if isinstance(err, KeyError) else str(err)
        raise ValueError(f"{path} is not in the {name} layout: {what}") from None


def names_in(folder: Path, pattern: str = "*") -> list[str]:
    """Return the sorted names in `folder` matching `pattern` (none when it is not a folder)."""
    return sorted(p.name for p in folder.glob(pattern)) if folder.is_dir() else []


def save_jpeg(image: np.ndarray, path: Path) -> None:
    """Save an `(H, W, 3)` uint8 image as a JPEG, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Full-resolution chroma keeps colour edges where the masks have them; most of the remaining
    # error (about 3 levels on average) is the scene's own pixel noise.
    Image.fromarray(image).save(path, quality=95, subsampling=0)


def coco_annotation(ann_id: int, image_id, category_id: int, mask: np.ndarray) -> dict:
    """Return a COCO instance annotation of a bool mask: RLE segmentation, area and box."""
    rle = to_rle(mask)
    x, y, w, h = mask_utils.toBbox(rle).tolist()
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": rle,
        "area": int(mask.sum()),
        "bbox": [x, y, w, h],
        "iscrowd": 0,
    }
