"""Models segprune ships or builds: tiny LLaVA models for tests and demos."""

from segprune.models.tiny_llava import tiny_llava, tiny_llava_inputs

__all__ = ["tiny_llava", "tiny_llava_inputs"]
