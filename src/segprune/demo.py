"""`segprune demo`: the bundled tiny model segments one shapes scene unpruned and under every method.

For each row the papers' 32-layer setting is mapped to the tiny model's 8 layers (`scale_layers`),
the model is pruned in place, `segment` runs once (the mask; also the warm-up) and `segprune.stats`
gives the live tokens per layer; then the rows are timed in turn, `repeats` calls each (median CPU
latency). Outputs in `out/`:

    <row>.png     the scene with each patch shaded by how many layers its token was live in, the
                  predicted mask (magenta) and the target's outline (white), and the query
    sheet.png     all rows, one line per method (75% and 90% side by side)
    table.md      method, tokens per layer, N_avg, TFLOPs of LLaVA-1.5-7B-336 under the 32-layer
                  setting and GFLOPs of the tiny model under the mapped one, mask IoU, latency

Budgets (`segprune.eval.budgets.paper_config`, as the sweep's default): "75%" and "90%" mean 144
and 57 of 576 image tokens remain after the (last) pruning step, ALTP Table 1's convention, for FastV,
ALTP, PyramidDrop (whose last stage holds them: the sweep's `pdrop-last_stage` rule, since PyramidDrop
at FastV's cost cannot reach 90%), VisionZip and PruMerge+; CSP uses its own Table 6 settings for 75%
and 90% fewer tokens on average (N_avg). The N_avg column shows what each schedule
really keeps.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import segprune
from segprune import flops
from segprune.checks import check_int
from segprune.methods import METHODS, MethodConfig
from segprune.methods.scale import PAPER_LAYERS, PAPER_MODEL, scale_layers
from segprune.outdir import check_out_dir

DEMO_SEED = 3  # the scene is generate_split(1, DEMO_SEED)[0]
N_IMAGE, PRESET = 576, PAPER_MODEL
BUDGETS = {"75%": 0.75, "90%": 0.90}  # segprune.eval.budgets.paper_config: 144 and 57 tokens left
MASK_COLOUR = np.array([255, 0, 200], dtype=np.float32)


@dataclass(frozen=True)
class DemoRow:
    """One line of the demo: a method label, its nominal reduction, its 32-layer config (None: unpruned)."""

    label: str
    reduction: str
    config: MethodConfig | None

    @property
    def slug(self) -> str:
        """Return the file name stem of the row's picture."""
        stem = self.label.lower().replace("+", "-plus")
        return f"{stem}-{self.reduction.rstrip('%')}" if self.reduction else stem


QUICK = ("fastv", "csp")  # `quick`: two methods, one that drops once and one in three stages


def demo_methods() -> list[type[MethodConfig]]:
    """Return every registered method in the demo's order (`display_order`, then name)."""
    return sorted(METHODS.values(), key=lambda cls: (cls.display_order, cls.name))


def demo_rows(quick: bool = False) -> list[DemoRow]:
    """Return the rows: unpruned, then each method at 75% and 90% (`quick`: only FastV and CSP at 90%)."""
    from segprune.eval.budgets import paper_config

    rows = [DemoRow("Unpruned", "", None)]
    for name, reduction in BUDGETS.items():
        rows += [
            DemoRow(
                cls.label or cls.name,
                name,
                paper_config(cls.name, reduction, N_IMAGE, pdrop_rule="last_stage"),
            )
            for cls in demo_methods()
        ]
    if quick:
        rows = [r for r in rows if r.config is None or (r.reduction == "90%" and r.config.name in QUICK)]
    return rows


@dataclass
class DemoResult:
    """What one row measured."""

    row: DemoRow
    tiny_config: MethodConfig | None
    live: list[int]  # live image tokens per decoder layer of the tiny model
    n_avg: float
    tflops_7b: float
    gflops_tiny: float
    iou: float
    latency_ms: float
    mask: np.ndarray
    live_fraction: np.ndarray  # (N,) fraction of layers each token was live in


def demo_scene(scene_seed: int | None = None, query_index: int | None = None) -> tuple[Any, Any]:
    """Return the demo's scene and query: by default the scene's first spatial query on a non-small object."""
    from segprune.data import generate_split

    if scene_seed is not None:
        check_int("scene_seed", scene_seed, 0)
    scene = generate_split(1, DEMO_SEED if scene_seed is None else scene_seed)[0]
    if query_index is not None:
        return scene, scene.queries[check_int("query_index", query_index, 0, len(scene.queries) - 1)]
    candidates = [q for q in scene.queries if q.type == "spatial" and not q.small] or scene.queries
    return scene, candidates[0]


def _apply(model: Any, config: MethodConfig | None) -> None:
    segprune.unprune(model)
    if config is not None:
        segprune.prune_(model, config)


def run_row(model: Any, row: DemoRow, image: np.ndarray, query: Any) -> DemoResult:
    """Prune `model` as `row` says, segment `query` once and measure everything but the latency."""
    from segprune.eval.metrics import mask_iou
    from segprune.models.tiny import refer_query

    layers = model.config.llava_config.text_config.num_hidden_layers
    tiny_config = None if row.config is None else scale_layers(row.config, PAPER_LAYERS, layers)
    _apply(model, tiny_config)
    text = refer_query(query.text)
    mask = model.segment([image], [text])[0]
    dims = flops.ModelDims.from_config(model.mllm.config, N_IMAGE)
    # Prompt and answer count as prefill text whether segment() runs them as one forward or the
    # answer after a prompt-only prefill (score_token="prompt"), so every row counts them.
    prompt = model._encode([image], [model._prompt(text) + " " + model.config.seg_answer])
    text_tokens = int(prompt["attention_mask"].sum()) - N_IMAGE
    if tiny_config is None:
        live = [N_IMAGE] * layers
        fraction = np.ones(N_IMAGE)
    else:
        stats = segprune.stats(model)
        live = [int(n) for n in stats.live_tokens[:, 0]]
        counts = np.zeros(N_IMAGE)
        for kept in stats.kept_indices:
            counts[kept[0].cpu().numpy()] += 1
        fraction = counts / layers
    gflops = flops.decoder_flops(live, dims, text_tokens, "csp") / 1e9
    paper_live = (
        [N_IMAGE] * PAPER_LAYERS
        if row.config is None
        else row.config.plan(N_IMAGE, PAPER_LAYERS).live_counts()
    )
    segprune.unprune(model)
    mask = mask.cpu().numpy()
    return DemoResult(
        row=row,
        tiny_config=tiny_config,
        live=live,
        n_avg=float(np.mean(live)),
        tflops_7b=flops.report(paper_live, PRESET).tflops,
        gflops_tiny=gflops,
        iou=mask_iou(mask, query.mask),
        latency_ms=float("nan"),
        mask=mask,
        live_fraction=fraction,
    )


def time_rows(model: Any, results: list[DemoResult], image: np.ndarray, text: str, repeats: int) -> None:
    """Set each result's latency: the median of `repeats` `segment` calls, the rows taken in turn.

    Round-robin rather than row by row, so a burst of load from another process on a shared machine
    slows one call of every row instead of every call of one row.
    """
    times: list[list[float]] = [[] for _ in results]
    for _ in range(repeats):
        for i, result in enumerate(results):
            _apply(model, result.tiny_config)
            start = time.perf_counter()
            model.segment([image], [text])
            times[i].append(1000 * (time.perf_counter() - start))
    segprune.unprune(model)
    for result, row_times in zip(results, times, strict=True):
        result.latency_ms = statistics.median(row_times) if row_times else float("nan")


def format_table(results: list[DemoResult]) -> str:
    """Return the results as a Markdown table."""
    lines = [
        "| method | reduction | image tokens per layer (tiny, 8 layers) | N_avg | TFLOPs 7B-336 "
        "| GFLOPs tiny | mask IoU | latency ms |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.row.label} | {r.row.reduction or '-'} | {flops.runs(r.live, sep=' ')} | {r.n_avg:.1f} "
            f"| {r.tflops_7b:.2f} | {r.gflops_tiny:.2f} | {r.iou:.3f} | {r.latency_ms:.0f} |"
        )
    return "\n".join(lines)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def draw_row(result: DemoResult, image: np.ndarray, query: Any) -> Any:
    """Draw one row's picture: token life on the left, predicted mask and target outline on the right."""
    from PIL import Image, ImageDraw

    from segprune.viz import draw_token_life

    grid = (24, 24)
    tokens = draw_token_life(image, grid, result.live_fraction)
    tinted = image.astype(np.float32)
    tinted[result.mask] = 0.45 * tinted[result.mask] + 0.55 * MASK_COLOUR
    target = query.mask
    edge = target & ~(
        np.roll(target, 1, 0) & np.roll(target, -1, 0) & np.roll(target, 1, 1) & np.roll(target, -1, 1)
    )
    tinted[edge] = 255
    mask_panel = Image.fromarray(tinted.round().astype(np.uint8))
    height, width = image.shape[:2]
    header = 100
    picture = Image.new("RGB", (2 * width + 12, height + header), "white")
    picture.paste(tokens, (0, header))
    picture.paste(mask_panel, (width + 12, header))
    draw = ImageDraw.Draw(picture)
    title = result.row.label + (f" {result.row.reduction}" if result.row.reduction else "")
    draw.text((6, 4), title, fill="black", font=_font(26))
    summary = f"N_avg {result.n_avg:.0f}/576   IoU {result.iou:.2f}   {result.latency_ms:.0f} ms"
    draw.text((width + 18, 10), summary, fill="black", font=_font(20))
    draw.text((6, 44), f"query: {query.text}", fill=(40, 40, 40), font=_font(20))
    legend = "left: brighter = token live in more layers     right: predicted mask (magenta), target (white)"
    draw.text((6, 74), legend, fill=(110, 110, 110), font=_font(15))
    return picture


def draw_sheet(pictures: list[Any], labels: list[str]) -> Any:
    """Tile the row pictures into one sheet: one line per method label, its budgets side by side."""
    from PIL import Image

    lines: dict[str, list[Any]] = {}
    for label, picture in zip(labels, pictures, strict=True):
        lines.setdefault(label, []).append(picture)
    width, height = pictures[0].size
    columns, gap = max(len(line) for line in lines.values()), 16
    sheet = Image.new("RGB", (columns * (width + gap) - gap, len(lines) * (height + gap) - gap), "white")
    for r, line in enumerate(lines.values()):
        for c, picture in enumerate(line):
            sheet.paste(picture, (c * (width + gap), r * (height + gap)))
    return sheet


def run_demo(
    out: str | Path = "demo_out",
    model_path: str | Path | None = None,
    scene_seed: int | None = None,
    query_index: int | None = None,
    repeats: int = 5,
    quick: bool = False,
    model: Any = None,
    echo: bool = True,
    threads: int | None = None,
) -> list[DemoResult]:
    """Run every demo row on the tiny model, write the pictures and the table to `out`, print the table.

    `threads` sets torch's CPU threads for the run (None or 0: leave them); it is restored afterwards.
    """
    check_int("repeats", repeats, 1)
    if threads is not None:
        check_int("threads", threads, 0)
    check_out_dir(out)
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_demo(out, model_path, scene_seed, query_index, repeats, quick, model, echo)
    finally:
        torch.set_num_threads(previous)


def _run_demo(out, model_path, scene_seed, query_index, repeats, quick, model, echo) -> list[DemoResult]:
    from segprune.models.tiny import refer_query, tiny

    scene, query = demo_scene(scene_seed, query_index)  # bad choices are refused before anything loads
    if model is None:
        from segprune.models.load import loading

        with loading(model_path or "the bundled tiny model"):
            model = tiny(model_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pictures = []
    with torch.inference_mode():
        results = [run_row(model, row, scene.image, query) for row in demo_rows(quick)]
        time_rows(model, results, scene.image, refer_query(query.text), repeats)
    for result in results:
        picture = draw_row(result, scene.image, query)
        picture.save(out / f"{result.row.slug}.png")
        pictures.append(picture)
    draw_sheet(pictures, [r.row.label for r in results]).save(out / "sheet.png")
    table = format_table(results)
    threads = torch.get_num_threads()
    note = (
        f'Scene {scene.scene_id}, query "{query.text}" ({query.type}). Latency: median of {repeats} '
        f"`segment` calls per row (batch 1, {threads} CPU thread{'s' if threads != 1 else ''}), the rows "
        "timed in turn after one untimed call each."
    )
    (out / "table.md").write_text(table + "\n\n" + note + "\n")
    if echo:
        print(table)
        print()
        print(note)
        print(f"wrote {len(pictures)} pictures, sheet.png and table.md to {out}/")
    return results
