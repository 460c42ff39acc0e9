"""Models segprune ships or builds: the LISA-style SegModel, its LISA converter, tiny models for tests."""

from segprune.models.gcg import GroundedAnswer
from segprune.models.seg_model import SegModel, SegModelConfig
from segprune.models.tiny_llava import tiny_llava, tiny_llava_inputs
from segprune.models.tiny_seg import tiny_seg_model

__all__ = [
    "GroundedAnswer",
    "SegModel",
    "SegModelConfig",
    "tiny_llava",
    "tiny_llava_inputs",
    "tiny_seg_model",
]
