"""Loading a `SegModel` by name: the bundled tiny model, an untrained tiny one, or a saved directory.

    model = load_model("tiny")                       # the bundled CPU-trained shapes model
    model = load_model("runs/lisa-7b", "cuda", "bfloat16")

Only the standard library is imported here; torch and transformers load when a model does, so the
command line can import this module for its flags and `--help`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from segprune.checks import one_line

MODELS = ("tiny", "tiny-random")
SHOW_BARS_FROM = 2**30  # bytes of weights from which loading shows transformers' progress bars


def model_id(name: str) -> str:
    """Return how a run records its model: the name of a built-in one, else the absolute path."""
    return name if name in MODELS else str(Path(name).resolve())


def load_model(name: str, device: str = "cpu", dtype: str | None = None) -> Any:
    """Load "tiny" (the bundled trained model), "tiny-random" (`tiny_seg_model()`) or a saved `SegModel`."""
    import torch

    from segprune import models

    if name == "tiny-random":
        model = models.tiny_seg_model()
    elif name == "tiny":
        try:
            from segprune.models.tiny import tiny
        except ImportError:
            tiny = None
        if not callable(tiny):
            raise ValueError(
                "this install has no bundled tiny model (segprune.models.tiny); "
                "use --model tiny-random or the path of a saved SegModel"
            )
        try:
            model = tiny()
        except FileNotFoundError as err:  # the module is there, its weights are not (yet)
            raise ValueError(str(err)) from None
    else:
        path = Path(name)
        if not path.is_dir():
            raise ValueError(f"model {name!r} is neither {' nor '.join(MODELS)} nor a SegModel directory")
        if not (path / "config.json").is_file():
            raise ValueError(f"model directory {name!r} has no config.json; it is not a saved SegModel")
        weights = sum(p.stat().st_size for p in path.glob("*") if p.suffix in (".safetensors", ".bin"))
        # A bar for loading a few megabytes only clutters the output; a 7B checkpoint keeps its bar.
        with loading(name), quiet_transformers(weights < SHOW_BARS_FROM):
            model = models.SegModel.from_pretrained(name)
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    return model.to(device).eval()


@contextlib.contextmanager
def loading(name: str | Path) -> Iterator[None]:
    """Report any failure to load the model `name` in the block as one `ValueError` naming it."""
    try:
        yield
    except Exception as err:  # cut-off, foreign or missing weight files raise a dozen types
        raise ValueError(f"model {str(name)!r} cannot be loaded: {one_line(err)}") from err


@contextlib.contextmanager
def quiet_transformers(quiet: bool = True) -> Iterator[None]:
    """Hide transformers' progress bars ("Loading weights", "Writing model shards") for the block."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    if quiet:
        logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and shown:
            logging.enable_progress_bar()
