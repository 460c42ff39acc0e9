"""`segprune sweep`: every method at every budget through `evaluate`, then a table and a plot.

    OUT/<task>/<label>/<reduction>/   one resumable run directory per cell ("unpruned/dense" too)
    OUT/sweep.json                    the cells, with their configs or why they were skipped
    OUT/table.md                      method, reduction, N_avg, TFLOPs, refseg and GCG accuracy
    OUT/plot.png                      accuracy against TFLOPs (7B-336 equivalent), one panel per task

Budgets, `budget=`:
- "paper" (default): `paper_config`, each method as the papers set it on LLaVA-1.5-7B (ALTP Table 1's
  tokens-left convention, CSP's Table 6), its layers mapped to the model's depth by `scale_layers`;
- "navg": `config_for`, equal N_avg = (1 - r) * N in the model's own decoder.
A cell that cannot be built (a reduction the method cannot reach at the model's depth, layers that do
not fit) is skipped and listed under the table.

CSP Seg-First rows run once per instance choice in `instances=` (`CSPConfig.instances`): "auto"
(the default: the model's own SAM) in OUT/<task>/csp-seg_first/, any other choice in
csp-seg_first-<choice>/. The table names the source each run used (its summary's
`instance_source`): `csp-seg_first[sam instances]`, `csp-seg_first[superpixels]`,
`csp-seg_first[gt instances, oracle]` (the instances no detector can beat; on the bundled
model not the best row, docs/results.md).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segprune.checks import check_choice, check_reductions
from segprune.eval.budgets import AXES, budget_config, check_budget, config_for, variants
from segprune.eval.cost import SCALED_PRESET
from segprune.eval.datasets import TASK_SOURCES, DataSpec
from segprune.eval.runner import EvalSpec, distributed, evaluate, llava_config
from segprune.methods import METHODS, MethodConfig
from segprune.methods.csp import INSTANCE_CHOICES
from segprune.outdir import check_out_dir, locked

__all__ = [
    "Cell",
    "check_instances",
    "config_for",
    "plan_sweep",
    "row_label",
    "run_sweep",
    "sweep_tasks",
    "write_plot",
    "write_table",
]

REDUCTIONS = (0.5, 0.75, 0.9)
UNPRUNED = "unpruned"
# How the table names where a Seg-First row's instances came from (the run's `instance_source`).
INSTANCE_LABELS = {
    "sam": "sam instances",
    "superpixels": "superpixels",
    "given": "given instances",
    "ground_truth": "gt instances, oracle",
}


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: a task, a method variant at a reduction, and its config or why not.

    `instances` is the Seg-First instance choice of a variant that has a Seg-First stage (None for
    every other variant); each choice is a row of its own (`row`).
    """

    task: str
    label: str
    reduction: float | None  # None: the unpruned model
    config: MethodConfig | None
    skipped: str | None = None
    instances: str | None = None

    @property
    def row(self) -> str:
        """The table row and directory of the cell: the label, with "-<choice>" for instances other
        than "auto"."""
        return self.label if self.instances in (None, "auto") else f"{self.label}-{self.instances}"

    @property
    def name(self) -> str:
        """The cell's directory below OUT."""
        return f"{self.task}/{self.row}/{'dense' if self.reduction is None else f'{self.reduction:g}'}"

    def to_dict(self) -> dict[str, Any]:
        """Return the cell, JSON-ready."""
        config = None if self.config is None else self.config.to_dict()
        keys = ("task", "label", "reduction", "skipped", "instances")
        return {**{k: getattr(self, k) for k in keys}, "config": config}


def check_instances(instances: Sequence[str]) -> tuple[str, ...]:
    """Return the Seg-First instance choices of a sweep, each valid and named once."""
    if not instances:
        raise ValueError(f"no Seg-First instance choice given; valid: {list(INSTANCE_CHOICES)}")
    for choice in instances:
        check_choice("instances", choice, INSTANCE_CHOICES)
    if len(set(instances)) != len(instances):
        twice = sorted({c for c in instances if instances.count(c) > 1})
        raise ValueError(f"instances={list(instances)} names a choice twice ({twice}); give each once")
    return tuple(instances)


def _has_seg_first(method: str, overrides: dict[str, Any]) -> bool:
    """Whether the variant runs a Seg-First stage, so that its instance choice makes rows."""
    try:
        probe = METHODS[method](**overrides)
    except (TypeError, ValueError):
        return False
    return probe.instance_choice is not None


def select_labels(names: Sequence[str] | None) -> list[str]:
    """Return sweep rows for names that are row labels ("altp-ddc") or methods ("altp": every variant)."""
    rows = variants()
    if names is None:
        return list(rows)
    if not names:
        raise ValueError("no sweep method given; name at least one, e.g. fastv,altp (or omit for all)")
    out: list[str] = []
    for name in names:
        matched = [label for label, (method, _) in rows.items() if name in (label, method)]
        if not matched:
            raise ValueError(
                f"unknown sweep method {name!r}; valid: {sorted({*rows, *(m for m, _ in rows.values())})}"
            )
        out += [label for label in matched if label not in out]
    return out


def sweep_tasks(tasks: Sequence[str] | None, data: DataSpec) -> list[str]:
    """Return the tasks to sweep: those named (each one the data supports), or all it supports (None)."""
    supported = [t for t, sources in TASK_SOURCES.items() if data.source in sources]
    if tasks is None:
        return supported
    if not tasks:
        raise ValueError(f"no sweep task given; valid for {data.source} data: {supported} (or omit for all)")
    return [check_choice("task", task, supported) for task in tasks]


def plan_sweep(
    tasks: Sequence[str],
    labels: Sequence[str],
    reductions: Sequence[float],
    n_layers: int,
    n_image: int,
    budget: str = "paper",
    instances: Sequence[str] = ("auto",),
) -> list[Cell]:
    """Return the sweep's cells: per task the unpruned model, then every label at every reduction,
    a Seg-First label once per choice in `instances`.

    Raises if `instances` asks for more than "auto" and no selected label has a Seg-First stage.
    """
    check_budget(budget)
    check_reductions(reductions)
    instances = check_instances(instances)
    rows = variants()
    seg_first = {label for label in labels if _has_seg_first(*rows[label])}
    if instances != ("auto",) and not seg_first:
        raise ValueError(
            f"instances={list(instances)} applies to CSP Seg-First rows (csp-seg_first), and none is "
            f"selected among {list(labels)}"
        )
    cells = []
    for task in tasks:
        cells.append(Cell(task, UNPRUNED, None, None))
        for label in labels:
            method, overrides = rows[label]
            if task == "gcg":  # GCG's prompt holds no [SEG]
                overrides = {**overrides, **METHODS[method].seg_free_fields}
            for choice in instances if label in seg_first else (None,):
                fields = overrides if choice is None else {**overrides, "instances": choice}
                for reduction in reductions:
                    try:
                        config = budget_config(budget, method, reduction, n_layers, n_image, **fields)
                        cells.append(Cell(task, label, reduction, config, instances=choice))
                    except ValueError as err:
                        cells.append(Cell(task, label, reduction, None, str(err), choice))
    return cells


def run_sweep(
    model: Any,
    model_name: str,
    data: DataSpec,
    out_dir: str | Path,
    *,
    tasks: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    reductions: Sequence[float] = REDUCTIONS,
    budget: str = "paper",
    batch_size: int = 8,
    max_new_tokens: int = 128,
    segment_score_token: str = "prompt",
    instances: Sequence[str] = ("auto",),
    captions: bool = False,
    progress: bool = True,
) -> list[Cell]:
    """Evaluate every cell (resuming each), then write sweep.json, table.md and plot.png (rank 0).

    `instances`: the CSP Seg-First instance choices, one csp-seg_first row each (`plan_sweep`).
    Every setting is checked, and every cell planned, before anything runs or is written.
    """
    out = check_out_dir(out_dir)
    tasks = sweep_tasks(tasks, data)
    config = llava_config(model)
    cells = plan_sweep(
        tasks,
        select_labels(methods),
        reductions,
        config.text_config.num_hidden_layers,
        config.image_seq_length,
        budget,
        instances,
    )
    runs = [
        (
            cell,
            EvalSpec(
                cell.task,
                data,
                model_name,
                cell.config,
                batch_size,
                max_new_tokens,
                segment_score_token=segment_score_token,
            ),
        )
        for cell in cells
        if cell.skipped is None
    ]
    if all(cell.reduction is None for cell, _ in runs):
        reasons = "; ".join(
            dict.fromkeys(f"{c.row} at {c.reduction:g}: {c.skipped}" for c in cells if c.skipped)
        )
        raise ValueError(f"no pruned cell of this sweep can run on this model ({reasons})")
    rank = distributed()[0]
    with locked(out) if rank == 0 else contextlib.nullcontext():
        for cell, spec in runs:
            evaluate(model, spec, out / cell.name, captions=captions, progress=progress)
        if rank == 0:
            (out / "sweep.json").write_text(
                json.dumps({"budget": budget, "cells": [c.to_dict() for c in cells]}, indent=2) + "\n"
            )
            summaries = _summaries(out, cells)
            write_table(out, cells, budget, summaries)
            write_plot(out, cells, summaries)
    return cells


def _summary(out: Path, cell: Cell) -> dict[str, Any] | None:
    path = out / cell.name / "summary.json"
    return json.loads(path.read_text()) if cell.skipped is None and path.exists() else None


def _summaries(out: Path, cells: Sequence[Cell]) -> dict[str, dict[str, Any] | None]:
    """Each cell's summary.json (None where it has none), by the cell's name."""
    return {cell.name: _summary(out, cell) for cell in cells}


def _row_labels(cells: Sequence[Cell], summaries: dict[str, dict[str, Any] | None]) -> dict[str, str]:
    """`row_label` of every row, from the summaries of all its cells."""
    by_row: dict[str, list[Cell]] = {}
    for cell in cells:
        by_row.setdefault(cell.row, []).append(cell)
    return {row: row_label(group[0], [summaries[c.name] for c in group]) for row, group in by_row.items()}


def _pct(value: Any) -> str:
    return "—" if value is None or value != value else f"{100 * value:.1f}"


def row_label(cell: Cell, summaries: Sequence[dict[str, Any] | None] = ()) -> str:
    """Return how the table and the plot name a cell's row: its label, and for a Seg-First row the
    instance source its runs recorded (or, before any ran, the choice)."""
    if cell.instances is None:
        return cell.label
    sources = {s["config"].get("instance_source") for s in summaries if s}
    source = sources.pop() if len(sources) == 1 else cell.instances
    return f"{cell.label}[{INSTANCE_LABELS.get(source, source)}]"


def write_table(
    out: Path,
    cells: Sequence[Cell],
    budget: str = "paper",
    summaries: dict[str, dict[str, Any] | None] | None = None,
) -> Path:
    """Write table.md: one row per (label, reduction), refseg and GCG columns side by side.
    `summaries`: the cells' summaries as `_summaries` reads them (None: read them here)."""
    summaries = _summaries(out, cells) if summaries is None else summaries
    tasks = list(dict.fromkeys(c.task for c in cells))
    rows: dict[tuple[str, float | None], dict[str, Any]] = {}
    for cell in cells:
        rows.setdefault((cell.row, cell.reduction), {})[cell.task] = summaries[cell.name]
    labels = _row_labels(cells, summaries)
    header = ["method", "reduction", "N_avg", "TFLOPs", f"TFLOPs {SCALED_PRESET}"]
    if "refseg" in tasks:
        header += ["gIoU", "cIoU", "small gIoU", "small cIoU"]
    if "gcg" in tasks:
        header += ["AP50", "mIoU", "recall", "small AP50", "small mIoU", "small recall"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for (key, reduction), by_task in rows.items():
        first = next((s for s in (by_task.get(t) for t in tasks) if s), None)
        cost = first["cost"] if first else {}
        row = [labels[key], "0" if reduction is None else f"{reduction:g}"]
        row += (
            [f"{cost['n_avg']:.2f}", f"{cost['tflops']:.3g}", f"{cost[SCALED_PRESET]['tflops']:.2f}"]
            if cost
            else ["—"] * 3
        )
        if "refseg" in tasks:
            acc = (by_task.get("refseg") or {}).get("accuracy", {})
            row += [_pct(acc.get(tag, {}).get(key)) for tag in ("all", "small") for key in ("giou", "ciou")]
        if "gcg" in tasks:
            acc = (by_task.get("gcg") or {}).get("accuracy", {})
            row += [_pct(acc.get(key)) for key in ("ap50", "miou", "recall")]
            row += [_pct(acc.get("small", {}).get(key)) for key in ("ap50", "miou", "recall")]
        lines.append("| " + " | ".join(row) + " |")
    notes = [
        "",
        "Accuracy in percent; small: targets / reference objects under 1% of the image. reduction: "
        + AXES[budget]
        + " TFLOPs: the model's "
        "prefill (from the first task's run); the 7B-336 column runs the same per-layer schedule, scaled by "
        "depth, on LLaVA-1.5-7B-336 with 62 text tokens. — : not run.",
    ]
    skipped = dict.fromkeys(
        (labels[c.row], c.reduction, c.skipped) for c in cells if c.skipped
    )  # once, not per task
    if skipped:
        notes += ["", "Skipped:", ""] + [f"- {label} at {r:g}: {why}" for label, r, why in skipped]
    path = out / "table.md"
    path.write_text("\n".join(lines + notes) + "\n")
    return path


def write_plot(
    out: Path, cells: Sequence[Cell], summaries: dict[str, dict[str, Any] | None] | None = None
) -> Path:
    """Write plot.png: gIoU (refseg) and AP50 (gcg) against 7B-336-equivalent TFLOPs, a line per label.
    `summaries`: as `write_table` takes them."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(c.task for c in cells))
    metric = {"refseg": ("all", "giou", "gIoU (%)"), "gcg": (None, "ap50", "AP50 (%)")}
    summaries = _summaries(out, cells) if summaries is None else summaries
    labels = _row_labels(cells, summaries)
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        tag, key, ylabel = metric[task]
        lines: dict[str, list[tuple[float, float]]] = {}
        for cell in cells:
            summary = summaries[cell.name] if cell.task == task else None
            if summary is None:
                continue
            acc = summary["accuracy"] if tag is None else summary["accuracy"].get(tag, {})
            if acc.get(key) is not None:
                x = summary["cost"][SCALED_PRESET]["tflops"]
                lines.setdefault(labels[cell.row], []).append((x, 100 * acc[key]))
        for label, points in lines.items():
            xs, ys = zip(*sorted(points), strict=True)
            style = (
                {"marker": "*", "markersize": 12, "color": "black"} if label == UNPRUNED else {"marker": "o"}
            )
            ax.plot(xs, ys, label=label, **style)
        ax.set_xlabel(f"TFLOPs ({SCALED_PRESET} equivalent)")
        ax.set_ylabel(ylabel)
        ax.set_title(task)
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "plot.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
