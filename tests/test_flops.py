"""Tests for segprune.flops against CSP Table 6, ALTP Table 1 and hand-computed cases."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segprune.flops import (
    FLOPS_PER_MAC,
    FORMULAS,
    PRESETS,
    TEXT_TOKENS,
    GQADims,
    ModelDims,
    altp_fraction,
    decoder_flops,
    format_report,
    layer_flops,
    n_avg,
    preset,
    report,
)


def csp_schedule(dims: ModelDims, lc: int, nc: float, ls: int, np_: float) -> tuple[float, ...]:
    """Live image tokens per layer of CSP (Lc, Nc, Ls, Np): Nc for Lc layers, all N for Ls, then Np."""
    return (nc,) * lc + (dims.image_tokens,) * ls + (np_,) * (dims.num_layers - lc - ls)


def drop_schedule(dims: ModelDims, k: int, kept: float) -> tuple[float, ...]:
    """Live image tokens per layer of one-shot pruning (FastV / ALTP): N for K layers, then `kept`."""
    return (dims.image_tokens,) * k + (kept,) * (dims.num_layers - k)


# CSP paper, Table 6: preset -> (dense N_avg, dense TFLOPs, [((Lc, Nc, Ls, Np), N_avg, TFLOPs), ...]).
CSP_TABLE6 = {
    "llava-1.5-7b-224": (
        256,
        4.12,
        [
            ((6, 96, 8, 8), 86, 1.93),
            ((7, 80, 7, 8), 78, 1.83),
            ((8, 64, 6, 4), 66, 1.68),
            ((10, 48, 4, 8), 51, 1.48),
            ((11, 32, 3, 8), 39, 1.33),
            ((12, 32, 2, 2), 29, 1.2),
        ],
    ),
    "llava-1.5-7b-336": (
        576,
        8.25,
        [
            ((6, 128, 9, 32), 203, 3.44),
            ((6, 32, 9, 16), 176, 3.1),
            ((7, 64, 7, 16), 149, 2.74),
            ((8, 24, 6, 8), 118, 2.35),
            ((9, 32, 4, 8), 85, 1.92),
            ((11, 32, 3, 2), 66, 1.68),
        ],
    ),
    "llava-1.5-13b-224": (
        256,
        8.05,
        [
            ((5, 64, 11, 16), 88, 3.83),
            ((6, 64, 10, 8), 78, 3.58),
            ((7, 32, 9, 8), 68, 3.32),
            ((9, 16, 7, 8), 53, 2.95),
            ((11, 16, 5, 8), 41, 2.65),
            ((12, 32, 2, 8), 27, 2.31),
        ],
    ),
}

# Relative TFLOPs tolerance per model. 7B: 3% as required (observed max 2.75%, the 7B-336 dense row);
# 13B: observed max 1.27% (dense row), asserted at 1.5%.
TFLOPS_TOL = {"llava-1.5-7b-224": 0.03, "llava-1.5-7b-336": 0.03, "llava-1.5-13b-224": 0.015}

PRUNED_ROWS = [(name, *row) for name, (_, _, rows) in CSP_TABLE6.items() for row in rows]
DENSE_ROWS = [(name, navg, tflops) for name, (navg, tflops, _) in CSP_TABLE6.items()]

# ALTP paper, Table 1 (GLaMM = Vicuna-7B, 576 image tokens, K = 2, T = 32): kept tokens -> FLOPS %.
ALTP_TABLE1 = [(57, 20), (144, 33), (288, 55)]


def _rel_err(name: str, live: tuple[float, ...], paper_tflops: float, text: float | None = None) -> float:
    """Return |ours / paper - 1| for the CSP TFLOPs of a schedule."""
    ours = decoder_flops(live, preset(name), text_tokens=text) / 1e12
    return abs(ours / paper_tflops - 1)


@pytest.mark.parametrize(("name", "config", "paper_navg", "paper_tflops"), PRUNED_ROWS)
def test_csp_table6_pruned_rows(name: str, config: tuple, paper_navg: int, paper_tflops: float) -> None:
    """Each pruned Table 6 row: floor(N_avg) exact, TFLOPs within the model's tolerance."""
    live = csp_schedule(preset(name), *config)
    assert math.floor(n_avg(live)) == paper_navg
    assert _rel_err(name, live, paper_tflops) <= TFLOPS_TOL[name]


@pytest.mark.parametrize(("name", "paper_navg", "paper_tflops"), DENSE_ROWS)
def test_csp_table6_dense_rows(name: str, paper_navg: int, paper_tflops: float) -> None:
    """Each dense Table 6 row: N_avg = N, TFLOPs within the model's tolerance."""
    dims = preset(name)
    live = (dims.image_tokens,) * dims.num_layers
    assert n_avg(live) == paper_navg
    assert _rel_err(name, live, paper_tflops) <= TFLOPS_TOL[name]


def test_csp_table6_has_18_pruned_rows_and_max_error() -> None:
    """All 18 pruned rows are checked, and the overall max error (dense included) is below 2.8%."""
    assert len(PRUNED_ROWS) == 18
    errs = [_rel_err(n, csp_schedule(preset(n), *c), t) for n, c, _, t in PRUNED_ROWS]
    errs += [_rel_err(n, (preset(n).image_tokens,) * preset(n).num_layers, t) for n, _, t in DENSE_ROWS]
    assert max(errs) < 0.028


def _table6_errors(text: int) -> list[float]:
    """Return the relative TFLOPs errors of all 21 Table 6 entries for a given text-token count."""
    errs = []
    for name, (_, dense_tflops, rows) in CSP_TABLE6.items():
        dims = preset(name)
        errs.append(_rel_err(name, (dims.image_tokens,) * dims.num_layers, dense_tflops, text))
        errs += [_rel_err(name, csp_schedule(dims, *c), t, text) for c, _, t in rows]
    return errs


def test_csp_text_tokens_62_is_best_fit() -> None:
    """62 text tokens minimises the mean and RMS TFLOPs error over the 21 Table 6 entries (0..200).

    The max error alone is minimised by 61 (2.58% vs 2.75% at 62); both keep every entry within 3%.
    """
    assert TEXT_TOKENS["csp"] == 62
    candidates = range(201)
    assert min(candidates, key=lambda t: sum(_table6_errors(t))) == 62
    assert min(candidates, key=lambda t: sum(e * e for e in _table6_errors(t))) == 62
    assert min(candidates, key=lambda t: max(_table6_errors(t))) == 61
    assert max(_table6_errors(61)) < max(_table6_errors(62)) < 0.03


@pytest.mark.parametrize(("kept", "paper_percent"), ALTP_TABLE1)
def test_altp_table1_fraction(kept: int, paper_percent: int) -> None:
    """ALTP Table 1 FLOPS column: 20 / 33 / 55 % with K = 2, T = 32 and 32 text tokens."""
    dims = preset("llava-1.5-7b-336")
    live = drop_schedule(dims, 2, kept)
    assert round(100 * altp_fraction(live, dims)) == paper_percent
    assert round(100 * report(live, dims).altp_fraction) == paper_percent


def test_altp_fraction_matches_eq5() -> None:
    """altp_fraction equals ALTP's (K f(n) + (T-K) f(n_hat)) / (T f(n)) written out directly."""
    dims = preset("llava-1.5-7b-336")
    d, m, text = dims.hidden_size, dims.intermediate_size, TEXT_TOKENS["altp"]
    n, n_hat, k, t = 576 + text, 144 + text, 2, dims.num_layers

    def f(x: float) -> float:
        return layer_flops(x, d, m, "altp")

    expected = (k * f(n) + (t - k) * f(n_hat)) / (t * f(n))
    assert altp_fraction(drop_schedule(dims, k, 144), dims) == pytest.approx(expected, rel=1e-12)


def test_altp_text_tokens_32_is_smallest_fit() -> None:
    """32 is the smallest text-token count for which all three ALTP fractions round to the table."""
    dims = preset("llava-1.5-7b-336")

    def fits(text: int) -> bool:
        return all(
            round(100 * altp_fraction(drop_schedule(dims, 2, kept), dims, text)) == pct
            for kept, pct in ALTP_TABLE1
        )

    assert TEXT_TOKENS["altp"] == 32
    assert fits(32)
    assert not any(fits(text) for text in range(32))


def test_layer_flops_by_hand() -> None:
    """n=2, d=3, m=5 computed by hand.

    csp:  4*2*3^2 + 2*2^2*3 + 3*2*3*5 = 72 + 24 + 90 = 186
    altp: 4*2*3^2 + 2*2^2*3 + 2*2*3*5 = 72 + 24 + 60 = 156
    """
    assert layer_flops(2, 3, 5) == 186
    assert layer_flops(2, 3, 5, "csp") == 186
    assert layer_flops(2, 3, 5, "altp") == 156
    assert layer_flops(0, 3, 5) == 0


def test_decoder_flops_by_hand() -> None:
    """Two layers, d=3, m=5, one text token, live image tokens (1, 0) -> n = 2 then n = 1.

    csp:  layer n=2: 186; layer n=1: 4*9 + 2*3 + 3*15 = 36 + 6 + 45 = 87; 2 * (186 + 87) = 546
    altp: layer n=2: 156; layer n=1: 36 + 6 + 30 = 72;                    2 * (156 + 72) = 456
    """
    dims = ModelDims(num_layers=2, hidden_size=3, intermediate_size=5, image_tokens=4)
    assert FLOPS_PER_MAC == 2
    assert decoder_flops([1, 0], dims, text_tokens=1) == 546
    assert decoder_flops([1, 0], dims, text_tokens=1, formula="altp") == 456
    # default text tokens: 62 for csp
    assert decoder_flops([0, 0], dims) == 2 * 2 * layer_flops(62, 3, 5)


def test_n_avg_is_plain_mean() -> None:
    """N_avg is the unfloored mean, equal to CSP Eq. 9 for a three-stage schedule."""
    assert n_avg([1, 2]) == 1.5
    dims = preset("llava-1.5-7b-224")
    lc, nc, ls, np_ = 6, 96, 8, 8
    lp = dims.num_layers - lc - ls
    eq9 = (nc * lc + dims.image_tokens * ls + np_ * lp) / (lc + ls + lp)
    assert n_avg(csp_schedule(dims, lc, nc, ls, np_)) == pytest.approx(eq9)


def test_presets_and_from_config() -> None:
    """Presets have LLaVA-1.5 dims; from_config reads text_config when present, else the config."""
    assert preset("llava-1.5-7b-336") == ModelDims(32, 4096, 11008, 576)
    assert preset("llava-1.5-13b-224") == ModelDims(40, 5120, 13824, 256)
    text = SimpleNamespace(num_hidden_layers=32, hidden_size=4096, intermediate_size=11008)
    assert ModelDims.from_config(SimpleNamespace(text_config=text), 256) == PRESETS["llava-1.5-7b-224"]
    assert ModelDims.from_config(text, 576) == PRESETS["llava-1.5-7b-336"]
    assert ModelDims.from_config(SimpleNamespace(text_config=None, **vars(text)), 576) == preset(
        "llava-1.5-7b-336"
    )


def test_grouped_query_attention_by_hand() -> None:
    """k and v project to d_kv = kv heads x head size: 2 n d^2 + 2 n d d_kv + 2 n^2 d + k n d m.

    n = 3 tokens, d = 4, d_kv = 2 (1 of 2 heads of size 2), m = 5:
    2*3*16 + 2*3*4*2 + 2*9*4 + 3*3*4*5 = 96 + 48 + 72 + 180 = 396 (csp); 396 - 60 = 336 (altp).
    Without GQA (d_kv = d = 4): 4*3*16 + 72 + 180 = 444."""
    assert layer_flops(3, 4, 5, "csp", kv=2) == 396
    assert layer_flops(3, 4, 5, "altp", kv=2) == 336
    assert layer_flops(3, 4, 5, "csp") == layer_flops(3, 4, 5, "csp", kv=4) == 444
    dims = GQADims(num_layers=2, hidden_size=4, intermediate_size=5, image_tokens=2, kv_size=2)
    assert decoder_flops([2, 1], dims, text_tokens=1) == 2 * (396 + layer_flops(2, 4, 5, kv=2))
    assert ModelDims(2, 4, 5, 2).kv_width == 4 and dims.kv_width == 2
    assert dims != ModelDims(2, 4, 5, 2)


def test_qwen25_vl_presets() -> None:
    """Qwen2.5-VL-7B: 28 layers, d = 3584, 28 heads of 128, 4 kv heads (d_kv = 512), m = 18944; a
    672 px image is 24 x 24 merged tokens of 28 px = 576, a 448 px one 16 x 16 = 256.

    One dense layer at n = 62 + 576 = 638 tokens, by hand (MACs, CSP formula):
    2*638*3584^2 + 2*638*3584*512 + 2*638^2*3584 + 3*638*3584*18944
    = 16_390_291_456 + 2_341_470_208 + 2_917_691_392 + 129_951_596_544 = 151_601_049_600."""
    dims = preset("qwen2.5-vl-7b-672")
    assert dims == GQADims(28, 3584, 18944, 576, kv_size=512)
    assert preset("qwen2.5-vl-7b-448").image_tokens == 256
    n = 638
    by_hand = 2 * n * 3584**2 + 2 * n * 3584 * 512 + 2 * n**2 * 3584 + 3 * n * 3584 * 18944
    assert by_hand == 151_601_049_600
    assert layer_flops(n, 3584, 18944, kv=512) == by_hand
    assert decoder_flops([576] * 28, dims) == 2 * 28 * by_hand  # 8.49 TFLOPs dense
    # Counting k and v at full width would overstate each layer by 2 n d (d - d_kv) = 14.0 GMACs.
    assert layer_flops(n, 3584, 18944) - by_hand == 2 * n * 3584 * (3584 - 512)
    text = SimpleNamespace(
        num_hidden_layers=28,
        hidden_size=3584,
        intermediate_size=18944,
        num_attention_heads=28,
        num_key_value_heads=4,
    )
    assert ModelDims.from_config(SimpleNamespace(text_config=text), 576, grouped_kv=True) == dims
    # Without grouped_kv, the papers' convention (k and v at full width), as recorded results use.
    assert ModelDims.from_config(SimpleNamespace(text_config=text), 576) == ModelDims(28, 3584, 18944, 576)
    dense_heads = SimpleNamespace(**{**vars(text), "num_key_value_heads": 28})
    assert type(ModelDims.from_config(dense_heads, 576, grouped_kv=True)) is ModelDims
    assert "d_kv=512" in format_report(report([576] * 28, "qwen2.5-vl-7b-672"))


def test_report_and_format() -> None:
    """report() fields are consistent and format_report() prints an aligned table."""
    r = report(csp_schedule(preset("llava-1.5-7b-336"), 6, 128, 9, 32), "llava-1.5-7b-336")
    assert r.name == "llava-1.5-7b-336"
    assert math.floor(r.n_avg) == 203
    assert r.tflops == pytest.approx(3.44, rel=0.03)
    assert r.dense_tflops == pytest.approx(8.25, rel=0.03)
    assert r.reduction == pytest.approx(1 - r.tflops / r.dense_tflops)
    assert r.image_token_reduction == pytest.approx(1 - r.n_avg / 576)
    assert 0 < r.altp_fraction < 1
    text = format_report(r)
    assert "llava-1.5-7b-336" in text
    assert "6x128, 9x576, 17x32" in text
    value_columns = {re.match(r"^\S.*?\s{2,}(\S)", line).start(1) for line in text.splitlines()}
    assert len(value_columns) == 1


@given(
    st.lists(st.integers(min_value=0, max_value=256), min_size=32, max_size=32),
    st.sampled_from(FORMULAS),
)
def test_pruning_never_costs_more_than_dense(live: list[int], formula: str) -> None:
    """Any valid schedule costs at most the dense model and at least zero-image-token decoding."""
    dims = preset("llava-1.5-7b-224")
    cost = decoder_flops(live, dims, formula=formula)
    assert decoder_flops([0] * 32, dims, formula=formula) <= cost
    assert cost <= decoder_flops([256] * 32, dims, formula=formula)


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: preset("llava-9b"), "'llava-9b'"),
        (lambda: preset("llava-9b"), "llava-1.5-7b-224"),
        (lambda: layer_flops(2, 3, 5, "fastv"), "'fastv'"),
        (lambda: layer_flops(-1, 3, 5), "-1"),
        (lambda: layer_flops(2, 0, 5), "0"),
        (lambda: layer_flops(float("nan"), 3, 5), "nan"),
        (lambda: decoder_flops([256] * 31, preset("llava-1.5-7b-224")), "31"),
        (lambda: decoder_flops([257] + [0] * 31, preset("llava-1.5-7b-224")), "257"),
        (lambda: decoder_flops([-3] + [0] * 31, preset("llava-1.5-7b-224")), "-3"),
        (lambda: decoder_flops([0] * 32, preset("llava-1.5-7b-224"), text_tokens=-5), "-5"),
        (lambda: decoder_flops([0] * 32, preset("llava-1.5-7b-224"), formula="x"), "'x'"),
        (lambda: n_avg([]), "empty"),
        (lambda: n_avg([1, -2]), "-2"),
        (lambda: ModelDims(0, 4096, 11008, 256), "num_layers"),
        (lambda: ModelDims(32, 4096, 11008, -1), "-1"),
        (lambda: GQADims(32, 4096, 11008, 256, kv_size=8192), "kv_size=8192"),
        (lambda: GQADims(32, 4096, 11008, 256, kv_size=0), "kv_size=0"),
        (lambda: layer_flops(2, 3, 5, kv=0), "0"),
        (lambda: ModelDims.from_config(SimpleNamespace(hidden_size=1), 256), "num_hidden_layers"),
        (lambda: report([0] * 32, "nope"), "'nope'"),
    ],
)
def test_bad_inputs_raise_value_error(call: Callable[[], object], fragment: str) -> None:
    """Bad inputs raise ValueError whose message names the offending value."""
    with pytest.raises(ValueError, match=re.escape(fragment)):
        call()
