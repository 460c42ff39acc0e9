"""segprune.eval.cost by hand: depth scaling, N_avg and TFLOPs, latency, the environment."""

from __future__ import annotations

import pytest

from segprune import flops
from segprune.eval.cost import SCALED_PRESET, cost_summary, environment, latency_summary, scale_schedule

# Two layers, d = 3, m = 5, four image tokens: small enough to compute every FLOPs count by hand.
DIMS = flops.ModelDims(num_layers=2, hidden_size=3, intermediate_size=5, image_tokens=4)


def test_scale_schedule_reads_the_layer_at_the_same_relative_depth():
    target = flops.ModelDims(num_layers=4, hidden_size=3, intermediate_size=5, image_tokens=10)
    # 4 target layers over 2 source layers: i * 2 // 4 = 0, 0, 1, 1.
    assert scale_schedule([1.0, 0.5], target) == [10, 10, 5, 5]
    # 4 over 3: i * 3 // 4 = 0, 0, 1, 2.
    assert scale_schedule([1.0, 0.5, 0.25], target) == [10, 10, 5, 2.5]


def _record(live, text, index=0, size=1, seconds=1.0, warmup=False, device="cpu"):
    batch = {"index": index, "size": size, "seconds": seconds, "warmup": warmup, "device": device}
    return {"live": live, "text_tokens": text, "batch": batch}


def test_cost_summary_by_hand():
    """Two samples, one text token each, live image tokens (3, 1) and (1, 1).

    CSP layer cost f(n) = 4 n d^2 + 2 n^2 d + 3 n d m = 36 n + 6 n^2 + 45 n with d = 3, m = 5:
    f(4) = 144 + 96 + 180 = 420, f(2) = 72 + 24 + 90 = 186, f(5) = 180 + 150 + 225 = 555.
    Sample 1 sees n = 4 then 2: 2 * (420 + 186) = 1212 FLOPs; sample 2, n = 2 and 2: 2 * 372 = 744.
    Dense, n = 5 in both layers: 2 * 1110 = 2220 each.
    """
    records = [_record([3, 1], 1), _record([1, 1], 1)]
    cost = cost_summary(records, DIMS)
    assert cost["n_avg"] == 1.5  # (3 + 1 + 1 + 1) / 4
    assert cost["image_token_reduction"] == pytest.approx(1 - 1.5 / 4)
    assert cost["live_per_layer"] == [2.0, 1.0]
    assert cost["text_tokens"] == 1
    assert cost["tflops"] == pytest.approx((1212 + 744) / 2 / 1e12)
    assert cost["dense_tflops"] == pytest.approx(2220 / 1e12)
    assert cost["dims"] == {"num_layers": 2, "hidden_size": 3, "intermediate_size": 5, "image_tokens": 4}
    # The 7B-336 equivalent: mean live fractions (0.5, 0.25) over its 32 layers, 16 each.
    scaled = flops.report([288] * 16 + [144] * 16, SCALED_PRESET)
    assert cost[SCALED_PRESET] == {
        "n_avg": 216,
        "tflops": scaled.tflops,
        "dense_tflops": scaled.dense_tflops,
        "text_tokens": 62,
        "altp_fraction": scaled.altp_fraction,
    }
    assert cost_summary([], DIMS) == {}
    with pytest.raises(ValueError, match="records hold 3 layers, the model has 2"):
        cost_summary([_record([1, 1, 1], 1)], DIMS)


def test_latency_summary_leaves_out_warmup_and_counts_a_rerun_batch_once():
    records = [
        _record([4, 4], 1, index=0, size=2, seconds=9.0, warmup=True),
        _record([4, 4], 1, index=1, size=2, seconds=1.0),
        _record([4, 4], 1, index=1, size=2, seconds=2.0),  # batch 1 recomputed: its latest timing counts
        _record([4, 4], 1, index=2, size=1, seconds=3.0, device="cuda:0"),
    ]
    latency = latency_summary(records)
    assert latency["batches_timed"] == 2 and latency["warmup_batches_left_out"] == 1
    assert latency["includes_warmup"] is False
    assert latency["batch_sizes"] == [1, 2]
    assert latency["devices"] == ["cpu", "cuda:0"]
    # Batches of 2.0 s and 3.0 s: percentiles by linear interpolation, p10 = 2.1, p90 = 2.9.
    assert latency["per_batch_s"] == pytest.approx(
        {"median": 2.5, "p10": 2.1, "p90": 2.9, "min": 2, "max": 3}
    )
    # Per sample: 2.0 / 2 = 1.0 and 3.0 / 1 = 3.0.
    assert latency["per_sample_s"] == pytest.approx(
        {"median": 2.0, "p10": 1.2, "p90": 2.8, "min": 1, "max": 3}
    )


def test_latency_summary_of_warmup_batches_only_says_so():
    latency = latency_summary([_record([4, 4], 1, seconds=5.0, warmup=True)])
    assert latency["includes_warmup"] is True and latency["batches_timed"] == 1
    assert latency["per_batch_s"]["median"] == 5.0
    assert latency_summary([]) == {}


def test_environment_names_the_software_and_the_machine():
    import torch
    import transformers

    env = environment("cpu")
    assert env["torch"] == torch.__version__ and env["transformers"] == transformers.__version__
    assert env["device"] == "cpu" and env["torch_threads"] == torch.get_num_threads()
    assert {"python", "platform", "processor", "cpu_count"} <= set(env) and "gpu" not in env
