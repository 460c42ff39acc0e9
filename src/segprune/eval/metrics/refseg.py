"""Referring / reasoning segmentation metrics of the LISA protocol: per-sample IoU, gIoU and cIoU.

One sample is one (expression, target mask) pair. gIoU is the mean of per-sample IoU, with an empty
target and an empty prediction counting as 1; cIoU is total intersection over total union. The
accumulator keeps only integer counts per sample, so a stopped run can be rebuilt from its JSONL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segprune.data.masks import as_bool_mask

ALL = "all"


@dataclass(frozen=True)
class IoUCounts:
    """Pixel counts of one prediction against one target."""

    intersection: int
    union: int

    @property
    def iou(self) -> float:
        """Intersection over union; 1.0 when both masks are empty (LISA's no-object case)."""
        return 1.0 if self.union == 0 else self.intersection / self.union


def mask_counts(pred: Any, target: Any, *, ignore: Any = None) -> IoUCounts:
    """Count intersection and union of two boolean masks of one shape, skipping `ignore` pixels.

    Args:
        pred: predicted mask, bool or 0/1 (LISA: `logits > 0`).
        target: ground-truth mask, bool or 0/1.
        ignore: optional mask of pixels left out of both counts (LISA's label 255 in ReasonSeg).
    """
    pred = as_bool_mask(pred, "pred")
    target = as_bool_mask(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {pred.shape} vs {target.shape}")
    if ignore is not None:
        ignore = as_bool_mask(ignore, "ignore")
        if ignore.shape != target.shape:
            raise ValueError(f"ignore shape {ignore.shape} differs from target shape {target.shape}")
        pred, target = pred & ~ignore, target & ~ignore
    intersection = int(np.count_nonzero(pred & target))
    union = int(np.count_nonzero(pred | target))
    return IoUCounts(intersection, union)


def mask_iou(pred: Any, target: Any, *, ignore: Any = None) -> float:
    """Return the IoU of two boolean masks; 1.0 when both are empty, 0.0 when only one is."""
    return mask_counts(pred, target, ignore=ignore).iou


@dataclass(frozen=True)
class RefSegScores:
    """gIoU, cIoU and their totals over one set of samples."""

    n: int
    giou: float
    ciou: float
    intersection: int
    union: int

    def to_dict(self) -> dict[str, float | int]:
        """Return the fields as a JSON-ready dict."""
        return {
            "n": self.n,
            "giou": self.giou,
            "ciou": self.ciou,
            "intersection": self.intersection,
            "union": self.union,
        }


class RefSegAccumulator:
    """Streaming gIoU / cIoU over samples, with subsets by tag and a per-sample JSONL record.

    Usage:
        acc = RefSegAccumulator()
        record = acc.add(logits > 0, target, tags=("sentence", "small"), sample_id="val/17")
        out.write(json.dumps({**record, **other_fields}) + "\\n")  # the runner's own JSONL line
        ...
        acc = RefSegAccumulator.from_jsonl(path)                   # after a restart
        acc.summary()["all"].giou, acc.summary()["small"].ciou
    """

    def __init__(self) -> None:
        self._records: list[dict[str, Any]] = []
        self._ids: set[str] = set()

    def add(
        self,
        pred: Any,
        target: Any,
        *,
        tags: Iterable[str] | str = (),
        ignore: Any = None,
        sample_id: object = None,
    ) -> dict[str, Any]:
        """Score one prediction against its target and return the sample's JSON-ready record."""
        counts = mask_counts(pred, target, ignore=ignore)
        return self.add_counts(counts.intersection, counts.union, tags=tags, sample_id=sample_id)

    def add_counts(
        self, intersection: int, union: int, *, tags: Iterable[str] | str = (), sample_id: object = None
    ) -> dict[str, Any]:
        """Add one sample given its pixel counts and return its JSON-ready record."""
        intersection, union = int(intersection), int(union)
        if not 0 <= intersection <= union:
            raise ValueError(f"need 0 <= intersection <= union, got {intersection} and {union}")
        tags = [tags] if isinstance(tags, str) else list(tags)
        for tag in tags:
            if not isinstance(tag, str) or tag == ALL:
                raise ValueError(f"tags must be strings other than {ALL!r}, got {tag!r}")
        record: dict[str, Any] = {"intersection": intersection, "union": union, "tags": tags}
        if sample_id is not None:
            key = str(sample_id)
            # A resumed run that re-scores a sample it already wrote would count it twice.
            if key in self._ids:
                raise ValueError(f"sample {key!r} was already added")
            self._ids.add(key)
            record = {"id": key, **record}
        self._records.append(record)
        return record

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, sample_id: object) -> bool:
        return str(sample_id) in self._ids

    def records(self) -> list[dict[str, Any]]:
        """Return the per-sample records (id if given, intersection, union, tags) in order added."""
        return [dict(r, tags=list(r["tags"])) for r in self._records]

    def summary(self) -> dict[str, RefSegScores]:
        """Return scores over all samples (key "all") and over the samples of each tag (sorted)."""
        groups: dict[str, list[dict[str, Any]]] = {ALL: list(self._records)}
        for record in self._records:
            for tag in dict.fromkeys(record["tags"]):
                groups.setdefault(tag, []).append(record)
        order = [ALL, *sorted(k for k in groups if k != ALL)]
        return {key: _scores(groups[key]) for key in order}

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> RefSegAccumulator:
        """Rebuild an accumulator from records as `add` returns them; other keys are ignored."""
        acc = cls()
        for record in records:
            acc.add_counts(
                record["intersection"],
                record["union"],
                tags=record.get("tags", ()),
                sample_id=record.get("id"),
            )
        return acc

    @classmethod
    def from_jsonl(cls, path: str | Path) -> RefSegAccumulator:
        """Rebuild an accumulator from a JSONL file with one record per line.

        A final line that does not parse is skipped: it is the one a stopped run was writing.
        """
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        records = []
        for number, line in enumerate(lines, start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number == len(lines):
                    break
                raise ValueError(f"{path}:{number}: not a JSON record") from None
        return cls.from_records(records)


def _scores(records: list[dict[str, Any]]) -> RefSegScores:
    intersection = sum(r["intersection"] for r in records)
    union = sum(r["union"] for r in records)
    ious = [IoUCounts(r["intersection"], r["union"]).iou for r in records]
    giou = float(np.mean(ious)) if ious else float("nan")
    # LISA divides by (union + 1e-10): a set whose masks are all empty gets cIoU 0.
    ciou = intersection / union if union else 0.0
    return RefSegScores(len(records), giou, ciou, intersection, union)
