"""How much of a batch-1 graphed prefill is the vision tower + projector (docs/benchmarks.md).

    python benchmarks/vision_share.py [--preset llava-1.5-7b-336] [--batch 1]

Times, each as one CUDA graph (median of 50 replays after warm-up): the vision tower + projector
alone, and the whole unpruned prefill (`GraphedPrefill`). CUDA only.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from segprune import bench
from segprune.graph import GraphedPrefill


def graphed_ms(fn, repeats: int = 50) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return replay_ms(graph.replay, repeats)


def replay_ms(fn, repeats: int = 50) -> float:
    times = []
    for _ in range(repeats + 5):
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times[5:])


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llava-1.5-7b-336")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    model = bench.build_model(args.preset, "cuda", torch.bfloat16)
    inputs = bench.bench_inputs(model, args.batch)
    llava, config = model.model, model.config
    pixels = inputs["pixel_values"]

    def vision():
        return llava.get_image_features(
            pixel_values=pixels,
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        )

    vision_ms = graphed_ms(vision)
    runner = GraphedPrefill(model, inputs["input_ids"], pixels)
    full_ms = replay_ms(lambda: runner(inputs["input_ids"], pixels, check=False))
    print(
        f"{args.preset}, batch {args.batch}, {torch.cuda.get_device_name()}: vision tower + projector "
        f"{vision_ms:.2f} ms of {full_ms:.2f} ms unpruned prefill ({vision_ms / full_ms:.0%}), "
        "both as CUDA graphs, CUDA-event medians of 50"
    )


if __name__ == "__main__":
    main()
