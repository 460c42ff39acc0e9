"""Phrase similarity encoders: GLaMM's BERT mean pooling (tiny random BERT) and the bundled MiniLM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer

from segprune.eval.metrics import BertMeanPooling, TextSimilarity, default_text_similarity

WORDS = ["a", "the", "man", "dog", "red", "car", "on", "street", "sky", "blue", "cat", "small"]
PHRASES = ["a man", "the red car on the street", "blue sky", "a small cat on a red car on the street"]


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """Return a directory holding a random 2-layer BERT and a 17-token uncased tokenizer."""
    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    BertTokenizer(vocab=vocab).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path)
    return path


def glamm_embedding(model, tokenizer, text: str) -> np.ndarray:
    """GLaMM's get_bert_embedding: one text, no padding, mean over all tokens incl. [CLS]/[SEP]."""
    inputs = tokenizer(text, return_tensors="pt", max_length=512, truncation=True)
    with torch.no_grad():
        return model(**inputs).last_hidden_state[0].mean(dim=0).numpy()


def test_bert_mean_pooling_matches_glamm_one_text_at_a_time(tiny_bert_dir):
    similarity = BertMeanPooling(tiny_bert_dir)
    assert isinstance(similarity, TextSimilarity)
    # The phrases have different lengths, so the batch is padded; padding must not change a thing.
    matrix = similarity.similarity(PHRASES, PHRASES[:2])
    model, tokenizer = BertModel.from_pretrained(tiny_bert_dir), BertTokenizer.from_pretrained(tiny_bert_dir)
    embeddings = [glamm_embedding(model.eval(), tokenizer, text) for text in PHRASES]
    expected = np.array(
        [[float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) for b in embeddings[:2]] for a in embeddings]
    )
    assert matrix.shape == (4, 2)
    assert matrix == pytest.approx(expected, abs=1e-5)
    assert similarity.similarity([], PHRASES).shape == (0, 4)


def test_default_minilm_loads_offline_and_matches_sentence_transformers():
    similarity = default_text_similarity()
    assert default_text_similarity() is similarity  # loaded once per process
    texts = ["a dog runs", "a puppy is running", "a tall skyscraper"]
    # Reference values: sentence-transformers' SentenceTransformer(<wheel model dir>).encode(texts)
    # followed by dot products of its normalised embeddings.
    expected = np.array([[1.0, 0.7848, 0.0706], [0.7848, 1.0, 0.0311], [0.0706, 0.0311, 1.0]])
    assert similarity.similarity(texts, texts) == pytest.approx(expected, abs=1e-3)
