"""Caption metrics of the GLaMM protocol: METEOR and CIDEr through pycocoevalcap, offline.

GLaMM runs pycocoevalcap's `COCOEvalCap`, which PTB-tokenises the captions (lower case, punctuation
dropped) and then scores them; it also runs SPICE, which downloads Stanford models, so this module
calls the tokenizer and the two scorers directly instead. The tokenizer and METEOR are Java
programs shipped inside pycocoevalcap's wheel (stanford-corenlp-3.4.1.jar, meteor-1.5.jar); CIDEr
is Python and needs Java only for the tokenisation.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Sequence
from typing import NamedTuple

from segprune.eval.metrics._deps import import_optional


class JavaNotFoundError(RuntimeError):
    """Raised when a caption metric needs Java and no `java` is on PATH."""


class CorpusScore(NamedTuple):
    """A corpus-level score and the per-caption scores it came from."""

    score: float
    per_caption: list[float]


def java_available() -> bool:
    """Return whether a `java` executable is on PATH."""
    return shutil.which("java") is not None


def require_java(what: str) -> None:
    """Raise JavaNotFoundError naming `what` unless `java` is on PATH."""
    if not java_available():
        raise JavaNotFoundError(
            f"{what} runs Java (pycocoevalcap's bundled jar) but no `java` is on PATH: install a Java "
            "runtime (e.g. `apt-get install default-jre-headless`), or score CIDEr on pre-tokenised "
            "captions with tokenize=False"
        )


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """Return the texts PTB-tokenised as COCO caption evaluation does: lower case, no punctuation."""
    require_java("PTB tokenisation")
    if not texts:
        return []
    tokenizer = import_optional("pycocoevalcap.tokenizer.ptbtokenizer").PTBTokenizer()
    batch = {i: [{"caption": _one_line(text)}] for i, text in enumerate(texts)}
    tokenized = tokenizer.tokenize(batch)
    if len(tokenized) != len(texts):
        raise RuntimeError(f"PTB tokenizer returned {len(tokenized)} lines for {len(texts)} captions")
    return [tokenized[i][0] for i in range(len(texts))]


def cider_score(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]], *, tokenize: bool = True
) -> CorpusScore:
    """Return pycocoevalcap's CIDEr (CIDEr-D, x10) of one caption per image against its references.

    Document frequencies come from the references of the images given, so the score of a caption
    depends on the whole corpus (a single image scores 0: every idf is log(1/1)).
    """
    gts, res = _prepare(predictions, references, tokenize)
    cider = import_optional("pycocoevalcap.cider.cider").Cider()
    score, per_caption = cider.compute_score(gts, res)
    return CorpusScore(float(score), [float(s) for s in per_caption])


def meteor_score(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]], *, tokenize: bool = True
) -> CorpusScore:
    """Return METEOR 1.5 (pycocoevalcap's jar, English, normalised) of one caption per image.

    The corpus score is the jar's aggregate over all segments, as COCOEvalCap reports it, not the
    mean of the per-caption scores.
    """
    require_java("METEOR")
    gts, res = _prepare(predictions, references, tokenize)
    meteor = import_optional("pycocoevalcap.meteor.meteor").Meteor()
    try:
        score, per_caption = meteor.compute_score(gts, res)
    except ValueError as error:  # the jar died and its stdout ran dry
        # compute_score leaves its lock held when it fails, and Meteor.__del__ would then hang.
        if meteor.lock.locked():
            meteor.lock.release()
        _stop(meteor.meteor_p)
        stderr = meteor.meteor_p.stderr.read().decode(errors="replace")[-2000:]
        raise RuntimeError(f"the METEOR jar failed: {stderr}") from error
    _stop(meteor.meteor_p)
    return CorpusScore(float(score), [float(s) for s in per_caption])


def caption_scores(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]]
) -> dict[str, CorpusScore]:
    """Return {"METEOR": ..., "CIDEr": ...} of one caption per image, tokenising once."""
    require_java("METEOR and PTB tokenisation")
    predictions, references = _tokenized(predictions, _as_lists(references))
    return {
        "METEOR": meteor_score(predictions, references, tokenize=False),
        "CIDEr": cider_score(predictions, references, tokenize=False),
    }


def _one_line(text: str) -> str:
    # Both jars read one caption per line; any line break inside a caption would shift the rest.
    return " ".join(str(text).split())


def _as_lists(references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    return [[refs] if isinstance(refs, str) else list(refs) for refs in references]


def _tokenized(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]]
) -> tuple[list[str], list[list[str]]]:
    refs = _as_lists(references)
    flat = ptb_tokenize([*predictions, *(r for group in refs for r in group)])
    out_preds, rest = flat[: len(predictions)], iter(flat[len(predictions) :])
    return out_preds, [[next(rest) for _ in group] for group in refs]


def _prepare(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]], tokenize: bool
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """Return pycocoevalcap's {image: [references]} and {image: [prediction]} dicts."""
    refs = _as_lists(references)
    if len(predictions) != len(refs):
        raise ValueError(f"{len(predictions)} predictions for {len(refs)} reference sets")
    if not refs:
        raise ValueError("no captions to score")
    if any(not group for group in refs):
        raise ValueError("every image needs at least one reference caption")
    if tokenize:
        preds, refs = _tokenized(predictions, refs)
    else:
        preds = [_one_line(p) for p in predictions]
        refs = [[_one_line(r) for r in group] for group in refs]
    return dict(enumerate(refs)), {i: [p] for i, p in enumerate(preds)}


def _stop(process: subprocess.Popen) -> None:
    """End a jar process: closing its stdin makes METEOR exit; kill it if it does not."""
    with contextlib.suppress(OSError, ValueError):
        process.stdin.close()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
