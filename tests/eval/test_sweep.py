"""Budgets (`config_for`) hit their target reductions; the sweep runs end to end and resumes."""

from __future__ import annotations

import json

import pytest

from segprune import METHODS, flops
from segprune.cli import main
from segprune.eval.budgets import achieved_reduction, config_for, paper_config, variants
from segprune.eval.datasets import parse_data
from segprune.eval.sweep import UNPRUNED, plan_sweep, run_sweep, select_labels
from segprune.methods import CSPConfig
from segprune.models.load import load_model

# (layers, image tokens): LLaVA-1.5-7B-336, the tiny shapes model, the tiny random test model.
SHAPES = [(32, 576), (8, 576), (4, 16)]


pytestmark = pytest.mark.usefixtures("one_thread")


def reachable(method: str, reduction: float, layers: int, n: int) -> bool:
    """Whether the method's schedule can reach the reduction at all (its unpruned layers allow it)."""
    if METHODS[method].prunes_before_decoder:
        return True  # every layer pruned
    # Layers that keep all N: before PDrop's first stage; FastV's / ALTP's K; CSP's one scattering layer.
    first = max(1, int((layers / 4 if method == "pdrop" else 2 * layers / 32) + 0.5))
    return reduction <= (1 - first / layers) * (1 - 1 / n) + max(0.025, 0.5 / n)


@pytest.mark.parametrize(("layers", "n"), SHAPES)
@pytest.mark.parametrize("reduction", [0.5, 0.65, 0.75, 0.9])
@pytest.mark.parametrize("label", sorted(variants()))
def test_config_for_hits_the_target(label, reduction, layers, n):
    method, overrides = variants()[label]
    if "pdrop_rule" in overrides:  # a rule of the paper axis
        with pytest.raises(ValueError, match="pdrop_rule sets PyramidDrop on the paper axis"):
            config_for(method, reduction, layers, n, **overrides)
        return
    if not reachable(method, reduction, layers, n):
        with pytest.raises(ValueError, match=f"{method} cannot reach .*closest"):
            config_for(method, reduction, layers, n, **overrides)
        return
    config = config_for(method, reduction, layers, n, **overrides)
    assert all(getattr(config, k) == v for k, v in overrides.items())
    # Within 2.5 points, or half a token step where tokens are that coarse (16 image tokens).
    assert achieved_reduction(config, layers, n) == pytest.approx(reduction, abs=max(0.025, 0.5 / n))


def test_every_registered_method_has_a_budget_rule():
    assert {method for method, _ in variants().values()} == set(METHODS)
    assert {"altp-ddc", "altp-ddf", "csp-seg_first", "csp-uniform", "csp-random", "csp-cls"} <= set(
        variants()
    )


def test_config_for_keeps_each_papers_schedule():
    fastv = config_for("fastv", 0.75, 32, 576)
    assert (fastv.layer, fastv.keep_ratio) == (2, 0.2)  # (2 * 576 + 30 * 115) / 32 = 143.8 = 24.97%
    assert config_for("altp", 0.75, 8, 576).layer == 1  # K = 2 of 32 at 1/4 the depth rounds to 1
    assert config_for("pdrop", 0.5, 32, 576).layers == (8, 16, 24)
    assert config_for("pdrop", 0.5, 8, 576).layers == (2, 4, 6)
    csp = config_for("csp", 0.75, 32, 576)  # Table 6's 7B-336 row at 0.75 is (7, 64, 7, 16)
    assert (csp.cluster_layers, csp.scatter_layers, csp.prune_tokens) == (7, 7, 16)
    live = csp.plan(576, 32).live_counts()
    assert flops.n_avg(live) == pytest.approx(144, abs=0.5)
    zip64 = config_for("visionzip", 1 - 64 / 576, 32, 576)
    assert (zip64.dominant, zip64.contextual) == (54, 10)  # VisionZip's own 64-token setting
    assert config_for("prumerge", 0.75, 32, 576).keep_ratio == 0.25


def test_config_for_errors():
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        config_for("fastv", 1.0, 32, 576)
    with pytest.raises(ValueError, match="no budget rule for method 'nope'"):
        config_for("nope", 0.5, 32, 576)
    with pytest.raises(ValueError, match=r"pdrop cannot reach .* 0.9 .*closest: 0.749"):
        config_for("pdrop", 0.9, 32, 576)


@pytest.mark.parametrize(("reduction", "left"), [(0.5, 288), (0.75, 144), (0.9, 57)])
def test_paper_config_leaves_altp_table1_token_counts(reduction, left):
    for method in ("fastv", "altp", "pdrop", "visionzip", "prumerge"):
        rule = {"pdrop_rule": "last_stage"} if method == "pdrop" else {}
        live = paper_config(method, reduction, 576, **rule).plan(576, 32).live_counts()
        assert live[-1] == left, method
    assert paper_config("fastv", reduction, 576).layer == 2
    assert paper_config("altp", reduction, 576, allocation="ddc").allocation == "ddc"
    assert paper_config("pdrop", reduction, 576, pdrop_rule="last_stage").layers == (8, 16, 24)
    csp = paper_config("csp", reduction, 576, cluster="uniform")
    if reduction in (0.75, 0.9):  # Table 6 rows; 0.5 has none and is solved for N_avg
        assert csp == CSPConfig.preset("llava-1.5-7b-336", reduction, cluster="uniform")
    else:
        assert achieved_reduction(csp, 32, 576) == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match=r"reduction=1\.0"):
        paper_config("fastv", 1.0, 576)


@pytest.mark.parametrize(("reduction", "fastv_fraction"), [(0.5, 0.5487), (0.75, 0.3280)])
def test_paper_pdrop_costs_what_fastv_costs(reduction, fastv_fraction):
    """ALTP Table 1 compares PyramidDrop at FastV's FLOPs: 55% and 33% of dense (ALTP Eq. 5, 7B-336)."""
    dims = flops.preset("llava-1.5-7b-336")
    fastv = paper_config("fastv", reduction, 576).plan(576, 32).live_counts()
    assert flops.altp_fraction(fastv, dims) == pytest.approx(fastv_fraction, abs=1e-4)
    pdrop = paper_config("pdrop", reduction, 576)
    assert pdrop.layers == (8, 16, 24)
    cost = flops.altp_fraction(pdrop.plan(576, 32).live_counts(), dims)
    assert cost == pytest.approx(fastv_fraction, abs=0.01)
    # One token step more at every stage costs more than the tolerance allows for: it is the closest.
    wider = type(pdrop)(layers=pdrop.layers, ratio=pdrop.ratio * 1.05)
    assert abs(flops.altp_fraction(wider.plan(576, 32).live_counts(), dims) - fastv_fraction) > abs(
        cost - fastv_fraction
    )


def test_paper_pdrop_cannot_reach_fastvs_90_percent_cost():
    # FastV keeps 57 tokens after layer 2: 19.6% of dense; stages 8/16/24 cost at least 29.0%.
    expected = r"cannot reach FastV's 19\.6% of dense FLOPs \(its lowest is 29\.0%\)"
    with pytest.raises(ValueError, match=expected):
        paper_config("pdrop", 0.9, 576)
    with pytest.raises(ValueError, match=r"pdrop_rule='nope'; valid: \['flops', 'last_stage'\]"):
        paper_config("pdrop", 0.5, 576, pdrop_rule="nope")


def test_paper_budget_reaches_90_percent_on_the_tiny_depth():
    cells = plan_sweep(["refseg"], list(variants()), (0.5, 0.75, 0.9), 8, 576, budget="paper")
    skipped = {(c.label, c.reduction) for c in cells if c.skipped}
    assert skipped == {("pdrop", 0.9)}  # FastV's 90% cost is below what PDrop's stages allow
    by = {(c.label, c.reduction): c.config for c in cells}
    assert by["fastv", 0.9].layer == 1 and by["altp-ddf", 0.9].layer == 1  # K = 2 of 32 -> 1 of 8
    assert by["pdrop-last_stage", 0.9].layers == (2, 4, 6)
    assert by["pdrop", 0.75].layers == (2, 4, 6)
    assert (by["csp-cls", 0.9].cluster_layers, by["csp-cls", 0.9].scatter_layers) == (3, 1)
    navg = plan_sweep(["refseg"], ["fastv"], (0.9,), 8, 576, budget="navg")
    assert navg[1].skipped and "cannot reach" in navg[1].skipped
    with pytest.raises(ValueError, match="budget='x'"):
        plan_sweep(["refseg"], ["fastv"], (0.9,), 8, 576, budget="x")


def test_select_labels():
    assert select_labels(["altp", "fastv"]) == ["altp-ddc", "altp-ddf", "fastv"]
    assert select_labels(["csp-uniform"]) == ["csp-uniform"]
    with pytest.raises(ValueError, match="unknown sweep method 'x'"):
        select_labels(["x"])


def test_sweep_end_to_end(tmp_path):
    model = load_model("tiny-random")
    data = parse_data("shapes:0:1", queries_per_scene=2)
    options = {"reductions": (0.5, 0.9), "budget": "navg", "batch_size": 2, "max_new_tokens": 4}
    options["progress"] = False
    cells = run_sweep(model, "tiny-random", data, tmp_path, **options)
    labels = [UNPRUNED, *variants()]
    run = [c for c in cells if c.skipped is None]
    # 16 image tokens in 4 layers: every method reaches 0.5; only the pre-LLM ones reach 0.9 (0.875).
    # PDrop's last-stage rule belongs to the paper axis: on this (N_avg) axis it is skipped.
    assert {(c.label, c.reduction) for c in run if c.task == "refseg"} == {(UNPRUNED, None)} | {
        (label, r)
        for label in labels[1:]
        for r in (0.5, 0.9)
        if (r == 0.5 or label in ("visionzip", "prumerge")) and label != "pdrop-last_stage"
    }
    assert {c.task for c in cells} == {"refseg", "gcg"}
    for cell in run:
        summary = json.loads((tmp_path / cell.name / "summary.json").read_text())
        assert summary["samples"]["complete"]
        if cell.label == "csp-uniform" and cell.task == "gcg":
            assert summary["config"]["method"]["score_token"] == "last"
    table = (tmp_path / "table.md").read_text()
    assert table.startswith("| method | reduction | N_avg | TFLOPs |")
    header = "| gIoU | cIoU | small gIoU | small cIoU | AP50 | mIoU | recall | small AP50 | small mIoU "
    header += "| small recall |"
    assert header in table.splitlines()[0] + " |"
    for label in labels:
        # A Seg-First row names the instance source its runs used: the model's SAM by default.
        shown = f"{label}[sam instances]" if label == "csp-seg_first" else label
        assert f"| {shown} |" in table
    assert "| unpruned | 0 | 16.00 |" in table and "| fastv | 0.5 | 7.75 |" in table
    assert "- fastv at 0.9: fastv cannot reach" in table
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(json.loads((tmp_path / "sweep.json").read_text())["cells"]) == len(cells)
    # A second sweep into the same directory resumes every cell: nothing is recomputed.
    records = {c.name: (tmp_path / c.name / "samples.jsonl").read_text() for c in run}
    run_sweep(model, "tiny-random", data, tmp_path, **options)
    assert records == {c.name: (tmp_path / c.name / "samples.jsonl").read_text() for c in run}


def test_sweep_command(tmp_path, capsys):
    args = ["sweep", "--model", "tiny-random", "--data", "shapes:0:1", "--queries-per-scene", "1"]
    args += [
        "--methods",
        "fastv",
        "--reductions",
        "0.5",
        "--tasks",
        "refseg",
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    assert main(args) == 0
    assert "table.md" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "refseg").iterdir()) == ["fastv", "unpruned"]
