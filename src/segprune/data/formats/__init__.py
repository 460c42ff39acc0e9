"""Readers for the on-disk layouts of RefCOCO/+/g, ReasonSeg, GranDf (GCG) and RIO, and writers that put a
shapes split in the same layouts, so the evaluation reads synthetic and real data through one path.

Layouts, as LISA's and GLaMM's data loaders expect them:

    RefCOCO   <root>/<dataset>/refs(<split_by>).p, <root>/<dataset>/instances.json,
              <root>/images/mscoco/images/train2014/<file_name>
    ReasonSeg <root>/<split>/<name>.jpg and <name>.json
    GranDf    <gt dir>/<split>_gcg_coco_caption_gt.json and <split>_gcg_coco_mask_gt.json (val, test),
              or one GranDf_HA_GCG_train.json-style list (train); images in a folder of their own
    RIO       <root>/RIO_<split>_all_thing.json (common, uncommon: COCO val2014 images; train)

Masks are decoded when a sample's `mask` is read, not when the files are loaded: a real val split
holds thousands of full-resolution masks. One module per format, its reader beside its writer
(`refcoco`, `reasonseg`, `grandf`, `rio`); `common` holds the sample types they return.
"""

from segprune.data.formats.common import GCGSample, ReferringSample
from segprune.data.formats.grandf import GRANDF_GT_DIR, GRANDF_IMAGE_DIR, load_grandf, write_grandf
from segprune.data.formats.reasonseg import load_reasonseg, write_reasonseg
from segprune.data.formats.refcoco import REFCOCO_IMAGE_DIR, load_refcoco, write_refcoco
from segprune.data.formats.rio import RIO_SPLITS, load_rio, write_rio

__all__ = [
    "GRANDF_GT_DIR",
    "GRANDF_IMAGE_DIR",
    "REFCOCO_IMAGE_DIR",
    "RIO_SPLITS",
    "GCGSample",
    "ReferringSample",
    "load_grandf",
    "load_reasonseg",
    "load_refcoco",
    "load_rio",
    "write_grandf",
    "write_reasonseg",
    "write_refcoco",
    "write_rio",
]
