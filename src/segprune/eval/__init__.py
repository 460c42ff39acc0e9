"""Evaluation: metrics of the papers' protocols (`segprune.eval.metrics`), cost and the runner."""
