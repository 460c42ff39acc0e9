"""Models segprune ships or builds: the LISA-style SegModel, its LISA converter, tiny models for tests,
and the bundled tiny shapes model (`tiny()`)."""

from segprune.models.gcg import GroundedAnswer
from segprune.models.seg_model import SegModel, SegModelConfig

# Binds `segprune.models.tiny` to the loader function; `from segprune.models.tiny import ...` still
# reaches the module.
from segprune.models.tiny import TinyDims, build_tiny, tiny
from segprune.models.tiny_llava import tiny_llava, tiny_llava_inputs
from segprune.models.tiny_seg import tiny_seg_model

__all__ = [
    "GroundedAnswer",
    "SegModel",
    "SegModelConfig",
    "TinyDims",
    "build_tiny",
    "tiny",
    "tiny_llava",
    "tiny_llava_inputs",
    "tiny_seg_model",
]
