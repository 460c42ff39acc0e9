"""Grounded conversation generation (GCG) metrics of the GLaMM protocol: AP50, mIoU, recall, captions.

Every dataset-level function takes the model's `GCGAnnotation`s and the references', matched by
`image_id`. Definitions, and where they differ from GLaMM's `eval/gcg/evaluate.py`, are in
docs/metrics.md.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segprune.data.masks import rle_area, to_rle
from segprune.eval.metrics.captions import caption_scores
from segprune.eval.metrics.masks import SMALL_FRACTION, Mask, pairwise_iou
from segprune.eval.metrics.text import TextSimilarity, default_text_similarity


@dataclass
class GCGAnnotation:
    """One image's grounded caption: the caption, its phrases and one mask per phrase.

    Masks may be given as arrays or RLE dicts and are stored as compressed COCO RLE, so a list of
    annotations stays small and `to_dict` is JSON-ready (a run can write one line per image and
    resume from it). `scores` are optional per-mask confidences for AP; GLaMM has none and uses 1.0.
    """

    image_id: str | int
    caption: str
    phrases: list[str]
    masks: list[Mask]
    scores: list[float] | None = field(default=None)

    def __post_init__(self) -> None:
        self.phrases = [str(p) for p in self.phrases]
        self.masks = [to_rle(m) for m in self.masks]
        if self.scores is not None:
            self.scores = [float(s) for s in self.scores]
            if len(self.scores) != len(self.masks):
                raise ValueError(f"{len(self.scores)} scores for {len(self.masks)} masks")

    def to_dict(self) -> dict[str, Any]:
        """Return the annotation as a JSON-ready dict (masks as RLE with string counts)."""
        out = {"image_id": self.image_id, "caption": self.caption, "phrases": self.phrases}
        out["masks"] = self.masks
        if self.scores is not None:
            out["scores"] = self.scores
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GCGAnnotation:
        """Rebuild an annotation from `to_dict`'s output."""
        return cls(
            image_id=data["image_id"],
            caption=data["caption"],
            phrases=data["phrases"],
            masks=data["masks"],
            scores=data.get("scores"),
        )


@dataclass(frozen=True)
class GCGScores:
    """The five GCG numbers GLaMM and ALTP report, as fractions (not percent)."""

    n_images: int
    ap50: float
    miou: float
    recall: float
    meteor: float | None = None
    cider: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-ready dict."""
        return asdict(self)


def greedy_iou_pairs(iou: np.ndarray) -> list[tuple[int, int, float]]:
    """Pair rows with columns one-to-one by repeatedly taking the largest remaining IoU, while > 0.

    Ties go to the first entry in row-major order, as `np.argmax` on GLaMM's shrinking matrix.
    """
    work = np.array(iou, dtype=np.float64, copy=True)
    pairs = []
    while work.size:
        i, j = np.unravel_index(np.argmax(work), work.shape)
        best = work[i, j]
        if not best > 0:
            break
        pairs.append((int(i), int(j), float(best)))
        work[i, :] = -np.inf
        work[:, j] = -np.inf
    return pairs


def image_miou(
    pred_masks: Sequence[Mask], gt_masks: Sequence[Mask], *, count_unmatched_gt: bool = False
) -> float:
    """Return one image's mIoU: the mean IoU of greedy one-to-one (prediction, ground truth) pairs.

    GLaMM's definition (the default) averages over the pairs formed, i.e. pairs with IoU > 0;
    unmatched masks on either side are ignored, and an image without any pair scores 0. With
    `count_unmatched_gt=True` the sum is divided by the number of ground-truth masks instead, so a
    missed object counts as IoU 0.
    """
    pairs = greedy_iou_pairs(pairwise_iou(pred_masks, gt_masks))
    total = sum(iou for _, _, iou in pairs)
    if count_unmatched_gt:
        return total / len(gt_masks) if len(gt_masks) else 0.0
    return total / len(pairs) if pairs else 0.0


def match_phrases(
    pred_masks: Sequence[Mask],
    pred_phrases: Sequence[str],
    gt_masks: Sequence[Mask],
    gt_phrases: Sequence[str],
    text_similarity: TextSimilarity,
    *,
    iou_threshold: float = 0.5,
    text_threshold: float = 0.5,
    stop_on_text_mismatch: bool = True,
) -> list[tuple[int, int]]:
    """Return GLaMM's one-to-one `(gt, pred)` hits: mask IoU >= 0.5 and phrase similarity >= 0.5.

    Pairs are visited greedily by decreasing IoU; a hit uses up its ground truth and prediction.
    GLaMM stops at the first visited pair that fails either test, even when a lower-IoU pair would
    pass both (`stop_on_text_mismatch=True`, the default); with False, a pair whose phrases differ
    is set aside and the search goes on. Predicted masks and phrases are paired by position; a mask
    or phrase without a partner cannot be hit.
    """
    if len(gt_masks) != len(gt_phrases):
        raise ValueError(f"{len(gt_masks)} ground-truth masks for {len(gt_phrases)} phrases")
    n_pred = min(len(pred_masks), len(pred_phrases))
    iou = pairwise_iou(gt_masks, list(pred_masks)[:n_pred])
    if not (iou >= iou_threshold).any():
        return []  # skips the text encoder when no pair can be a hit
    text = np.asarray(text_similarity.similarity(list(gt_phrases), list(pred_phrases)[:n_pred]), dtype=float)
    if text.shape != iou.shape:
        raise ValueError(f"text similarity has shape {text.shape}, expected {iou.shape}")
    work = iou.copy()
    hits = []
    while work.size:
        i, j = np.unravel_index(np.argmax(work), work.shape)
        if work[i, j] < iou_threshold:
            break
        if text[i, j] < text_threshold:
            if stop_on_text_mismatch:
                break
            work[i, j] = -np.inf
            continue
        hits.append((int(i), int(j)))
        work[i, :] = -np.inf
        work[:, j] = -np.inf
    return hits


def mask_ap50(
    predictions: Sequence[GCGAnnotation],
    references: Sequence[GCGAnnotation],
    *,
    small_fraction: float | None = None,
) -> float:
    """Return COCO mask AP at IoU 0.5 with one category, as GLaMM computes it with pycocotools.

    Each predicted mask is a detection with its annotation's score, or 1.0 (GLaMM). With equal
    scores COCOeval ranks detections by image id (sorted), then by their order in the image, so
    AP depends on that order as in GLaMM. Returns NaN when there is no ground-truth mask in range.

    `small_fraction`: AP on small objects only, by COCO's area-range rule with areas measured as
    fractions of each image: ground truths covering `small_fraction` of their image or more are
    ignored, and so are detections that large unless they match a small ground truth.
    """
    pairs = _align(predictions, references)
    images, gt_anns, dt_anns = [], [], []
    for pred, ref in pairs:
        sizes = [m["size"] for m in (*ref.masks, *pred.masks)]
        height, width = sizes[0] if sizes else (0, 0)
        images.append({"id": ref.image_id, "height": height, "width": width})
        for rle in ref.masks:
            # COCOeval's matching reads annotation id 0 as "unmatched": ids start at 1.
            gt_anns.append(
                {
                    "id": len(gt_anns) + 1,
                    "image_id": ref.image_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": rle_area(rle),
                    "iscrowd": 0,
                }
            )
        scores = pred.scores if pred.scores is not None else [1.0] * len(pred.masks)
        for rle, score in zip(pred.masks, scores, strict=True):
            dt_anns.append({"image_id": pred.image_id, "category_id": 1, "segmentation": rle, "score": score})
    if not gt_anns:
        return float("nan")
    if not dt_anns:
        return 0.0  # COCO's precision is 0 everywhere; loadRes cannot take an empty list
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gt_anns, "categories": [{"id": 1}]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dt_anns)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.params.catIds = [1]
        if small_fraction is not None:
            image_area = {image["id"]: image["height"] * image["width"] for image in images}
            for ann in (*coco_gt.anns.values(), *coco_dt.anns.values()):
                ann["area"] = ann["area"] / max(1, image_area[ann["image_id"]])
            # COCO's ranges are closed; "less than" the fraction.
            evaluator.params.areaRng = [[0.0, float(np.nextafter(small_fraction, 0))]]
            evaluator.params.areaRngLbl = ["small"]
        # Thresholds are evaluated independently, so [0.5] alone gives summarize()'s AP50 exactly.
        evaluator.params.iouThrs = np.array([0.5])
        evaluator.evaluate()
        evaluator.accumulate()
    # precision[T, R, K, A, M]: the one threshold, all recall points, category 1, the first area
    # range ("all", or "small" above), 100 detections.
    precision = evaluator.eval["precision"][0, :, 0, 0, -1]
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else float("nan")


def gcg_miou(
    predictions: Sequence[GCGAnnotation],
    references: Sequence[GCGAnnotation],
    *,
    count_unmatched_gt: bool = False,
) -> float:
    """Return the mean over images of `image_miou` (GLaMM's mIoU); NaN for no images."""
    values = [
        image_miou(pred.masks, ref.masks, count_unmatched_gt=count_unmatched_gt)
        for pred, ref in _align(predictions, references)
    ]
    return float(np.mean(values)) if values else float("nan")


def gcg_recall(
    predictions: Sequence[GCGAnnotation],
    references: Sequence[GCGAnnotation],
    *,
    text_similarity: TextSimilarity | None = None,
    iou_threshold: float = 0.5,
    text_threshold: float = 0.5,
    stop_on_text_mismatch: bool = True,
) -> float:
    """Return GLaMM's recall: hits of `match_phrases` over all images / all ground-truth phrases.

    `text_similarity` defaults to `default_text_similarity()` (MiniLM); pass `BertMeanPooling` for
    GLaMM's exact encoder. Returns 0.0 when there is no ground-truth phrase, as GLaMM does.
    """
    similarity = text_similarity if text_similarity is not None else default_text_similarity()
    hits = total = 0
    for pred, ref in _align(predictions, references):
        total += len(ref.phrases)
        hits += len(
            match_phrases(
                pred.masks,
                pred.phrases,
                ref.masks,
                ref.phrases,
                similarity,
                iou_threshold=iou_threshold,
                text_threshold=text_threshold,
                stop_on_text_mismatch=stop_on_text_mismatch,
            )
        )
    return hits / total if total else 0.0


def evaluate_gcg(
    predictions: Sequence[GCGAnnotation],
    references: Sequence[GCGAnnotation],
    *,
    text_similarity: TextSimilarity | None = None,
    captions: bool = True,
) -> GCGScores:
    """Return AP50, mIoU, recall and (with `captions`, which needs Java) METEOR and CIDEr."""
    pairs = _align(predictions, references)
    meteor = cider = None
    if captions:
        scores = caption_scores([p.caption for p, _ in pairs], [r.caption for _, r in pairs])
        meteor, cider = scores["METEOR"].score, scores["CIDEr"].score
    return GCGScores(
        n_images=len(pairs),
        ap50=mask_ap50(predictions, references),
        miou=gcg_miou(predictions, references),
        recall=gcg_recall(predictions, references, text_similarity=text_similarity),
        meteor=meteor,
        cider=cider,
    )


def small_objects(
    predictions: Sequence[GCGAnnotation],
    references: Sequence[GCGAnnotation],
    fraction: float = SMALL_FRACTION,
) -> tuple[list[GCGAnnotation], list[GCGAnnotation]]:
    """Return the images that hold a small reference object, their references cut to those objects.

    A reference object is small when its mask covers less than `fraction` of the image. Predictions
    are kept whole, so mIoU and recall on the returned pairs ask how well the small objects were
    found among everything the model predicted.
    """
    out_pred, out_ref = [], []
    for pred, ref in _align(predictions, references):
        keep = [i for i, rle in enumerate(ref.masks) if rle_area(rle) < fraction * _image_area(rle)]
        if keep:
            out_pred.append(pred)
            out_ref.append(
                GCGAnnotation(
                    ref.image_id, ref.caption, [ref.phrases[i] for i in keep], [ref.masks[i] for i in keep]
                )
            )
    return out_pred, out_ref


def evaluate_gcg_small(
    predictions: Sequence[GCGAnnotation],
    references: Sequence[GCGAnnotation],
    *,
    text_similarity: TextSimilarity | None = None,
    fraction: float = SMALL_FRACTION,
) -> dict[str, Any]:
    """Return AP50, mIoU and recall on small reference objects (under `fraction` of the image).

    AP50 by COCO's area-range rule (`mask_ap50(small_fraction=...)`); mIoU and recall over the
    images holding a small object, with only those objects as references (`small_objects`).
    """
    preds, refs = small_objects(predictions, references, fraction)
    return {
        "n_images": len(refs),
        "n_objects": sum(len(r.masks) for r in refs),
        "ap50": mask_ap50(predictions, references, small_fraction=fraction),
        "miou": gcg_miou(preds, refs),
        "recall": gcg_recall(preds, refs, text_similarity=text_similarity) if refs else float("nan"),
    }


def _image_area(rle: dict[str, Any]) -> int:
    height, width = rle["size"]
    return height * width


def _align(
    predictions: Sequence[GCGAnnotation], references: Sequence[GCGAnnotation]
) -> list[tuple[GCGAnnotation, GCGAnnotation]]:
    """Return (prediction, reference) pairs in reference order; both must cover the same images."""
    by_id: dict[Any, GCGAnnotation] = {}
    for pred in predictions:
        if pred.image_id in by_id:
            raise ValueError(f"two predictions for image {pred.image_id!r}")
        by_id[pred.image_id] = pred
    ref_ids = [ref.image_id for ref in references]
    if len(set(ref_ids)) != len(ref_ids):
        raise ValueError("references repeat an image id")
    known = set(ref_ids)
    missing = [i for i in ref_ids if i not in by_id]
    extra = [i for i in by_id if i not in known]
    if missing or extra:
        raise ValueError(
            f"predictions and references cover different images: no prediction for {missing[:5]}, "
            f"no reference for {extra[:5]}"
        )
    return [(by_id[ref.image_id], ref) for ref in references]
