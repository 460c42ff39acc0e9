"""Time ALTP's grid SLIC eagerly and fused (`torch.compile`), and check both give the same labels.

    python benchmarks/fused_slic.py [--device cuda] [--batches 1,16] [--repeats 50] [--out FILE]

For each batch: the median milliseconds of one `grid_slic` call (336 px images, the 24x24 patch
grid, ALTP's defaults: 10 regions, compactness 5, sigma 1) run op by op and, on CUDA, replayed as a
CUDA graph (as inside `GraphedPrefill`), the number of device kernels one call launches (CUDA
only: torch.profiler), and whether the fused labels equal the eager ones. Images are the seeded
synthetic scenes of `benchmarks/superpixels.py`. Prints a markdown table; `--out` writes it too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from superpixels import scenes

from segprune.bench.timing import time_calls
from segprune.methods.superpixels import grid_slic

GRID, N_REGIONS, COMPACTNESS, SIGMA = (24, 24), 10, 5.0, 1.0


def images(batch: int, device: str) -> torch.Tensor:
    """`batch` scenes, cycling through the seeded set."""
    pool = list(scenes().values())
    return torch.cat([pool[i % len(pool)] for i in range(batch)]).to(device)


def call(x: torch.Tensor, fused: bool) -> torch.Tensor:
    return grid_slic(x, GRID, N_REGIONS, COMPACTNESS, SIGMA, fused=fused)


def median_ms(fn, device: torch.device, repeats: int) -> float:
    """Median wall-clock milliseconds of `repeats` calls (`segprune.bench.timing.time_calls`)."""
    return statistics.median(time_calls(fn, device, repeats, warmup=0))


def kernels(fn) -> int:
    """Device kernels one call launches (CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(e.count for e in prof.key_averages() if e.device_type.name == "CUDA")


def graph_ms(x: torch.Tensor, fused: bool, repeats: int) -> float:
    graph = torch.cuda.CUDAGraph()
    call(x, fused)  # warm (and compile) outside the capture
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        call(x, fused)
    return median_ms(graph.replay, x.device, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    where = torch.cuda.get_device_name(device) if cuda else "CPU"
    lines = [
        f"`python benchmarks/fused_slic.py --device {args.device} --batches {args.batches} --repeats "
        f"{args.repeats}` on {where}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads",
        "",
        "| batch | path | op by op ms | CUDA graph ms | kernels per call | labels equal eager |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    with torch.no_grad():
        for batch in (int(b) for b in args.batches.split(",")):
            x = images(batch, args.device)
            reference = call(x, False)
            for fused in (False, True):
                start = time.perf_counter()
                labels = call(x, fused)  # the first fused call compiles
                first_s = time.perf_counter() - start
                eager_ms = median_ms(lambda x=x, f=fused: call(x, f), device, args.repeats)
                graphed = f"{graph_ms(x, fused, args.repeats):.3f}" if cuda else "—"
                count = str(kernels(lambda x=x, f=fused: call(x, f))) if cuda else "—"
                name = "fused" if fused else "eager"
                if fused:
                    name += f" (first call {first_s:.1f} s)"
                same = (
                    "yes"
                    if torch.equal(labels, reference)
                    else f"no ({(labels != reference).float().mean():.2%} differ)"
                )
                lines.append(f"| {batch} | {name} | {eager_ms:.3f} | {graphed} | {count} | {same} |")
                print(lines[-1], file=sys.stderr, flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
