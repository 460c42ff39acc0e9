"""The wording of LISA's and GLaMM's prompts, in one place for the model, training and evaluation.

Only strings here, so the evaluation's protocols (`segprune.eval.tasks`) read them without torch.
"""

from __future__ import annotations

from collections.abc import Sequence

# LLaVA v1's user turn, as LISA and GLaMM send it; `{query}` is replaced, `<image>` marks the image.
LLAVA_PROMPT = "USER: <image>\n{query} ASSISTANT:"
GCG_QUERY = (
    "Could you please give me a detailed description of the image? Please respond with interleaved "
    "segmentation masks for the corresponding parts of the answer."
)
# LISA's referring wording (utils/refer_seg_dataset.py for training, utils/dataset.py ValDataset for
# validation): phrases are asked about, sentences are followed by the instruction.
PHRASE_QUERY = "What is {text} in this image? Please output segmentation mask."
SENTENCE_QUERY = "{text} Please output segmentation mask."


def lisa_query(text: str, tags: Sequence[str] = ()) -> str:
    """Return the query LISA asks for a referring expression (its sentence form for ReasonSeg sentences)."""
    template = SENTENCE_QUERY if "type:sentence" in tags else PHRASE_QUERY
    return template.format(text=text)


# `SegModel.segment`: the token a last-token pruning method (FastV, PDrop, ALTP) scores with — the
# last prompt token, as those papers score, or the last of prompt + answer ("." after [SEG]).
SCORE_TOKENS = ("prompt", "answer")
