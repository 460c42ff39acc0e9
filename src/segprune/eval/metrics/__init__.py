"""Metrics of the two evaluation protocols the papers use, each as the reference code defines it.

- Referring / reasoning segmentation (LISA): `mask_iou`, `RefSegAccumulator` (gIoU, cIoU, by tag).
- Grounded conversation generation (GLaMM): `mask_ap50`, `gcg_miou`, `gcg_recall`, `cider_score`,
  `meteor_score`, all at once with `evaluate_gcg`; on small objects, `evaluate_gcg_small`.

Exact definitions and the differences from the reference code: docs/metrics.md.
"""

from segprune.data.masks import as_bool_mask, decode_rle, rle_area, to_rle
from segprune.eval.metrics.captions import (
    CorpusScore,
    JavaNotFoundError,
    caption_scores,
    cider_score,
    java_available,
    meteor_score,
    ptb_tokenize,
)
from segprune.eval.metrics.gcg import (
    GCGAnnotation,
    GCGScores,
    evaluate_gcg,
    evaluate_gcg_small,
    gcg_miou,
    gcg_recall,
    greedy_iou_pairs,
    image_miou,
    mask_ap50,
    match_phrases,
)
from segprune.eval.metrics.masks import pairwise_iou
from segprune.eval.metrics.refseg import IoUCounts, RefSegAccumulator, RefSegScores, mask_counts, mask_iou
from segprune.eval.metrics.text import (
    BertMeanPooling,
    MeanPoolingSimilarity,
    MiniLMSimilarity,
    TextSimilarity,
    default_text_similarity,
)

__all__ = [
    "BertMeanPooling",
    "CorpusScore",
    "GCGAnnotation",
    "GCGScores",
    "IoUCounts",
    "JavaNotFoundError",
    "MeanPoolingSimilarity",
    "MiniLMSimilarity",
    "RefSegAccumulator",
    "RefSegScores",
    "TextSimilarity",
    "as_bool_mask",
    "caption_scores",
    "cider_score",
    "decode_rle",
    "default_text_similarity",
    "evaluate_gcg",
    "evaluate_gcg_small",
    "gcg_miou",
    "gcg_recall",
    "greedy_iou_pairs",
    "image_miou",
    "java_available",
    "mask_ap50",
    "mask_counts",
    "mask_iou",
    "match_phrases",
    "meteor_score",
    "pairwise_iou",
    "ptb_tokenize",
    "rle_area",
    "to_rle",
]
