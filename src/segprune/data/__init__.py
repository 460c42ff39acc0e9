"""Grounding data: the procedurally generated shapes benchmark and loaders for the real benchmarks' files.

`shapes` makes scenes with exact masks, referring queries, grounded captions and QA pairs;
`formats` writes them in the RefCOCO, ReasonSeg and GranDf layouts and reads those layouts back,
for the real data sets as well.
"""

from segprune.data.scene import (
    COLOURS,
    CORNERS,
    QA,
    QUERY_TYPES,
    SHAPES,
    SIZE_THRESHOLDS,
    SIZE_WORDS,
    Caption,
    Obj,
    Phrase,
    Query,
    Scene,
    tag_caption,
)
from segprune.data.shapes import ShapesSplit, generate_scene, generate_split

__all__ = [
    "COLOURS",
    "CORNERS",
    "QA",
    "QUERY_TYPES",
    "SHAPES",
    "SIZE_THRESHOLDS",
    "SIZE_WORDS",
    "Caption",
    "Obj",
    "Phrase",
    "Query",
    "Scene",
    "ShapesSplit",
    "generate_scene",
    "generate_split",
    "tag_caption",
]
