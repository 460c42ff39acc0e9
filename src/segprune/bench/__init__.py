"""Wall-clock prefill and decode timing of pruning methods on preset LLaVA-1.5 architectures.

Models are built with random weights (speed does not depend on the values) at the real sizes:
CLIP ViT-L/14 vision tower, the two-layer projector and a Llama decoder (`models`). Each row times
the whole prefill (vision tower + projector + selection + decoder) and a fixed number of cached
greedy decode steps, after warm-up, with the device synchronised around every timed call (`timing`).

Two reference rows accompany each method and budget (`matrix`):
* **ideal**: the method's own live-token counts by plain index dropping (its recorded live sets
  replayed, no scoring, no superpixels, no merging): the floor any implementation of the schedule
  can reach;
* **eager**: the same method with every layer on eager attention, which is what peers that read
  scores from attention weights have to run.

`gcg` times grounded generation end to end (a prompt and N greedy tokens: time to first token,
decode ms/token, total) for the no-cache reference design, cached eager decoding and the graphed
path (`segprune.patch.static_decode`), at batch 1 and the largest batch each row fits.

`render` writes the tables; `segprune bench` (`segprune.cli.bench`) runs the matrix from the command
line, and `segprune bench --e2e` the generation tables.
"""

from segprune.bench.gcg import GCGRow, run_gcg
from segprune.bench.matrix import Row, run
from segprune.bench.models import TINY, bench_inputs, build_model, llava_config, seg_token_id
from segprune.bench.render import gcg_markdown, markdown, summary
from segprune.bench.timing import cache_bytes, measure, prefill, time_calls, time_decode

__all__ = [
    "TINY",
    "GCGRow",
    "Row",
    "bench_inputs",
    "build_model",
    "cache_bytes",
    "gcg_markdown",
    "llava_config",
    "markdown",
    "measure",
    "prefill",
    "run",
    "run_gcg",
    "seg_token_id",
    "summary",
    "time_calls",
    "time_decode",
]
