"""The image normalisation CLIP (and so LLaVA-1.5, LISA and GLaMM) applies to pixels.

Only constants here: the methods that de-normalise `pixel_values` (ALTP's superpixels), the model's
preprocessing and the pictures all read them from this one place.
"""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
