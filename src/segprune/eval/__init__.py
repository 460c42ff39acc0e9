"""Evaluation: metrics of the papers' protocols (`segprune.eval.metrics`), cost and the runner.

- `runner`: `evaluate(model, EvalSpec(...), out_dir)`, resumable and sharded under torchrun.
- `datasets`: data specs (`parse_data("shapes:0:250")`, or files in RefCOCO/ReasonSeg/GranDf layouts).
- `cost`: N_avg, TFLOPs and latency of a run; `budgets`: `config_for(method, reduction, L, N)`.
- `sweep`: every method at every budget, a table and a plot. See docs/evaluation.md.
"""

from segprune.eval.budgets import config_for
from segprune.eval.datasets import DataSpec, parse_data
from segprune.eval.runner import ConfigMismatchError, EvalSpec, evaluate, load_model
from segprune.eval.sweep import run_sweep

__all__ = [
    "ConfigMismatchError",
    "DataSpec",
    "EvalSpec",
    "config_for",
    "evaluate",
    "load_model",
    "parse_data",
    "run_sweep",
]
