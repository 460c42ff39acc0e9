"""Paired comparisons between sweep cells, from their per-sample records (docs/results.md).

    python benchmarks/sweep_report.py runs/shapes-val [--reductions 0.75,0.9] [--base fastv,pdrop,blind]
    python benchmarks/sweep_report.py runs/new --against runs/old [--reductions 0.75,0.9]

For each reduction, every method row against each base row on the same referring queries: the
mean per-query IoU difference (gIoU points) with a 95% bootstrap interval over queries (paired,
2,000 resamples, seed 0), over all queries and over small targets only (< 1% of the image); and
for GCG the per-image difference in mask recall at IoU >= 0.5 ignoring phrases. With `--against`,
each refseg row instead against the same row of another run directory (new minus old, per query),
beside both gIoUs. Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from segprune.eval.metrics import IoUCounts, pairwise_iou

RESAMPLES = 2000
DENSE = ("unpruned", "blind")  # base rows without a reduction (blind: benchmarks/blind_refseg.py)


def refseg_ious(cell: Path) -> dict[int, tuple[float, bool]]:
    """Return index -> (IoU, small) of a refseg cell; IoU 1 when both masks are empty (LISA's rule)."""
    out = {}
    for path in sorted(cell.glob("samples*.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            out[r["index"]] = (IoUCounts(r["intersection"], r["union"]).iou, "small" in r["tags"])
    return out


def gcg_hits(cell: Path) -> dict[int, float]:
    """Return index -> fraction of reference masks matched by some predicted mask at IoU >= 0.5."""
    out = {}
    for path in sorted(cell.glob("samples*.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            refs, preds = r["ref"]["masks"], r["pred"]["masks"]
            if not refs:
                continue
            if not preds:
                out[r["index"]] = 0.0
                continue
            out[r["index"]] = float((pairwise_iou(preds, refs).max(axis=0) >= 0.5).mean())
    return out


def paired(a: dict, b: dict, pick=lambda v: True) -> tuple[float, float, float, int]:
    """Mean of a - b over shared keys passing `pick` (on a's value), with a 95% bootstrap interval."""
    keys = [k for k in a if k in b and pick(a[k])]
    if not keys:
        return float("nan"), float("nan"), float("nan"), 0
    value = (lambda v: v[0]) if isinstance(a[keys[0]], tuple) else (lambda v: v)
    diff = np.array([value(a[k]) - value(b[k]) for k in keys])
    rng = np.random.default_rng(0)
    means = diff[rng.integers(0, len(diff), (RESAMPLES, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high), len(keys)


def fmt(stats: tuple[float, float, float, int]) -> str:
    mean, low, high, _ = stats
    return f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def against(new: Path, old: Path, reductions: list[str]) -> None:
    """Print each refseg row of `new` beside the same row of `old`: both gIoUs and the paired difference."""
    print("| row | reduction | old gIoU | new gIoU | new − old (points, 95% CI) | queries |")
    print("| --- | --- | ---: | ---: | --- | ---: |")
    for row in sorted(p.name for p in (new / "refseg").iterdir()):
        for r in ["dense"] if row in DENSE else reductions:
            a, b = new / "refseg" / row / r, old / "refseg" / row / r
            if not (a / "summary.json").exists() or not (b / "summary.json").exists():
                continue
            ia, ib = refseg_ious(a), refseg_ious(b)
            stats = paired(ia, ib)
            giou = [100 * float(np.mean([v[0] for v in x.values()])) for x in (ib, ia)]
            print(f"| {row} | {r} | {giou[0]:.1f} | {giou[1]:.1f} | {fmt(stats)} | {stats[3]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--reductions", default="0.75,0.9")
    parser.add_argument("--base", default="fastv,pdrop")
    parser.add_argument("--against", type=Path, help="another run directory: compare each row with its own")
    args = parser.parse_args()
    if args.against is not None:
        against(args.out, args.against, [f"{float(r):g}" for r in args.reductions.split(",")])
        return
    bases = args.base.split(",")
    for reduction in args.reductions.split(","):
        r = f"{float(reduction):g}"
        rows = sorted(p.name for p in (args.out / "refseg").iterdir() if (p / r).is_dir())
        print(f"\n### {float(reduction):.0%}: IoU difference against {', '.join(bases)} (points, 95% CI)\n")
        header = ["method"] + [f"vs {b}: {what}" for b in bases for what in ("all", "small", "GCG recall")]
        print("| " + " | ".join(header) + " |")
        print("|" + " --- |" * len(header))
        for row in rows:
            if row in bases or row in DENSE:
                continue
            cells = [row]
            for base in bases:
                base_r = "dense" if base in DENSE else r
                a, b = args.out / "refseg" / row / r, args.out / "refseg" / base / base_r
                if not (a / "summary.json").exists() or not (b / "samples.jsonl").exists():
                    cells += ["—"] * 3
                    continue
                ia, ib = refseg_ious(a), refseg_ious(b)
                cells += [fmt(paired(ia, ib)), fmt(paired(ia, ib, lambda v: v[1]))]
                ga, gb = args.out / "gcg" / row / r, args.out / "gcg" / base / base_r
                if (ga / "summary.json").exists() and (gb / "summary.json").exists():
                    cells.append(fmt(paired(gcg_hits(ga), gcg_hits(gb))))
                else:
                    cells.append("—")
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
