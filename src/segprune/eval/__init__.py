"""Evaluation: metrics of the papers' protocols (`segprune.eval.metrics`), cost and the runner.

- `runner`: `evaluate(model, EvalSpec(...), out_dir)`, resumable and sharded under torchrun;
  `records`: a run directory's config and JSONL records.
- `datasets`: data specs (`parse_data("shapes:0:250")`, or files in RefCOCO/ReasonSeg/GranDf layouts).
- `tasks`: the refseg (LISA) and gcg (GLaMM) protocols on one batch, and their accuracy.
- `cost`: N_avg, TFLOPs and latency of a run; `budgets`: `config_for(method, reduction, L, N)`.
- `sweep`: every method at every budget, a table and a plot. See docs/evaluation.md.

Names load on first use, so a submodule that needs no torch (`datasets`, `records`) imports without it.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "records": ["ConfigMismatchError"],
        "datasets": ["DataSpec", "parse_data"],
        "runner": ["EvalSpec", "evaluate"],
        "budgets": ["config_for"],
        "sweep": ["run_sweep"],
    },
)
