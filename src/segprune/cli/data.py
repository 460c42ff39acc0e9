"""`segprune data`: the shapes benchmark from the command line: print examples, count query templates,
time generation, write a split to disk (also `python -m segprune.data`).

segprune data examples --seed 0 --scenes 3
segprune data bench --scenes 1000
segprune data write refcoco OUT --scenes 500 --seed 1 --split val
"""

from __future__ import annotations

import argparse
import re
import time
from collections import Counter
from typing import Any


def add_parser(sub: Any, method: Any = None) -> None:
    """Add `data` and its own subcommands to the `segprune` subcommands."""
    data = sub.add_parser(
        "data",
        help="the shapes benchmark: print scenes, count query templates, time generation, write a split",
        description="Print the annotations of a few shapes scenes, count a split's query templates, time "
        "the generation of a split, or write one in the RefCOCO, ReasonSeg or GranDf layout. "
        "See docs/data.md.",
    )
    jobs = data.add_subparsers(dest="job", required=True)
    p = jobs.add_parser("examples", help="print the annotations of a few scenes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes", type=int, default=2)
    p = jobs.add_parser("templates", help="count the query templates of a split, with an example each")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes", type=int, default=200)
    p = jobs.add_parser("bench", help="time the generation of a split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes", type=int, default=1000)
    p.add_argument("--size", type=int, default=336)
    p = jobs.add_parser("write", help="write a split in a real benchmark's layout")
    p.add_argument("format", choices=["refcoco", "reasonseg", "grandf"])
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scenes", type=int, default=100)
    p.add_argument("--split", default="val")
    data.set_defaults(run=run)


def run(args: argparse.Namespace, method: Any = None) -> int:
    """Run the `data` job the command line names."""
    if args.job == "examples":
        examples(args.seed, args.scenes)
    elif args.job == "templates":
        templates(args.seed, args.scenes)
    elif args.job == "bench":
        bench(args.seed, args.scenes, args.size)
    else:
        write(args.format, args.out, args.seed, args.scenes, args.split)
    return 0


def _template(text: str) -> str:
    """Return a query's template: attribute words blanked, and the anchor of a relation too."""
    from segprune.data.scene import COLOURS, SHAPES, SIZE_WORDS

    words = re.compile(r"\b(" + "|".join([*SHAPES, *COLOURS, *SIZE_WORDS]) + r")\b")
    text = words.sub("_", text)
    return re.sub(
        r" (left of|right of|above|below|nearest to) the (?!(top|bottom|left|right)$).*", r" \1 the _", text
    )


def examples(seed: int, scenes: int) -> None:
    """Print every annotation of the first scenes of a split, and one query of each template per type."""
    from segprune.data.scene import QUERY_TYPES
    from segprune.data.shapes import generate_split

    split = generate_split(scenes, seed)
    for scene in split:
        print(f"## {scene.scene_id}: {len(scene.objects)} objects on a {scene.background} background")
        for i, o in enumerate(scene.objects):
            x, y = o.center
            print(f"  object {i}: {o.size_word} {o.colour} {o.shape}, {o.area} px, centre ({x:.0f}, {y:.0f})")
        for kind in QUERY_TYPES:
            queries = [q for q in scene.queries if q.type == kind]
            print(f"  {kind} ({len(queries)}, one per template):")
            shown = set()
            for q in queries:
                if _template(q.text) not in shown:
                    shown.add(_template(q.text))
                    print(f"    {q.text!r} -> object {q.target}{' (small)' if q.small else ''}")
        print(f"  caption: {scene.caption.tagged}")
        for qa in scene.qa[:8]:
            print(f"  QA: {qa.question} -> {qa.answer}")


def templates(seed: int, scenes: int) -> None:
    """Print, per query type, how often each template occurs in a split and one example of it."""
    from segprune.data.scene import QUERY_TYPES
    from segprune.data.shapes import generate_split

    found: dict[str, dict[str, list]] = {kind: {} for kind in QUERY_TYPES}
    for scene in generate_split(scenes, seed):
        for q in scene.queries:
            found[q.type].setdefault(_template(q.text), [0, q.text])[0] += 1
    for kind, table in found.items():
        print(f"{kind}: {sum(n for n, _ in table.values())} queries")
        for n, example in sorted(table.values(), reverse=True):
            print(f"  {n:6d}  {example!r}")


def bench(seed: int, scenes: int, size: int) -> None:
    """Time the generation of a split and summarise what it holds."""
    import numpy as np

    from segprune.data.shapes import generate_split

    start = time.perf_counter()
    objects, queries, small = Counter(), Counter(), 0
    fractions = []
    for scene in generate_split(scenes, seed, size):
        objects[len(scene.objects)] += 1
        queries.update(q.type for q in scene.queries)
        small += sum(q.small for q in scene.queries)
        fractions += [o.area / (size * size) for o in scene.objects]
    seconds = time.perf_counter() - start
    print(
        f"{scenes} scenes of {size}x{size} px in {seconds:.1f} s ({1000 * seconds / scenes:.1f} ms per scene)"
    )
    print(f"objects per scene: {dict(sorted(objects.items()))}")
    total = sum(queries.values())
    print(
        f"queries: {total} ({total / scenes:.1f} per scene): {dict(queries)}; small-object queries: {small}"
    )
    lo, med, hi = np.percentile(fractions, [0, 50, 100])
    print(f"visible area per object: min {lo:.4f}, median {med:.4f}, max {hi:.4f} of the image")


def write(fmt: str, out: str, seed: int, scenes: int, split: str) -> None:
    """Write a generated split in one of the real benchmarks' layouts."""
    from segprune.data import formats
    from segprune.data.shapes import generate_split

    data = generate_split(scenes, seed)
    if fmt == "refcoco":
        path = formats.write_refcoco(data, out, split=split)
    elif fmt == "reasonseg":
        path = formats.write_reasonseg(data, out, split=split)
    else:
        path = formats.write_grandf(data, out, split=split)[0].parent
    print(f"wrote {scenes} scenes to {path}")
