"""`segprune demo` end to end on a small setting: pictures, sheet and table are written."""

from __future__ import annotations

import pytest

from segprune import METHODS
from segprune.demo import demo_rows, demo_scene, run_demo
from segprune.models.tiny import WEIGHTS


def test_rows_cover_every_method_at_both_budgets():
    rows = demo_rows()
    assert rows[0].config is None
    names = {(r.config.name, r.reduction) for r in rows[1:]}
    assert names == {(m, r) for m in METHODS for r in ("75%", "90%")}
    for row in rows[1:]:
        final = row.config.plan(576, 32).live_counts()[-1]
        if row.config.name != "csp":  # CSP's budgets are its Table 6 settings
            assert final == {"75%": 144, "90%": 57}[row.reduction]
    # The table's rows and order, as the README shows them.
    labels = ["FastV", "PDrop", "ALTP", "CSP", "VisionZip", "PruMerge+"]
    assert [r.label for r in rows] == ["Unpruned", *labels, *labels]
    assert len({r.slug for r in rows}) == len(rows)


def test_default_query_is_spatial():
    scene, query = demo_scene()
    assert query.type == "spatial" and not query.small
    assert demo_scene(query_index=0)[1].text == scene.queries[0].text


@pytest.mark.skipif(not (WEIGHTS / "config.json").is_file(), reason="no bundled tiny model")
def test_demo_writes_pictures_and_table(tmp_path, capsys):
    results = run_demo(tmp_path, repeats=1, quick=True)
    assert [r.row.label for r in results] == ["Unpruned", "FastV", "CSP"]
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["csp-90.png", "fastv-90.png", "sheet.png", "table.md", "unpruned.png"]
    table = (tmp_path / "table.md").read_text()
    assert "| FastV | 90% | 1x576 7x57 |" in table  # K = 2 of 32 layers -> 1 of 8
    unpruned, fastv, _ = results
    assert unpruned.n_avg == 576 and fastv.n_avg == pytest.approx((576 + 7 * 57) / 8)
    assert fastv.tflops_7b < unpruned.tflops_7b and fastv.gflops_tiny < unpruned.gflops_tiny
    assert all(0 <= r.iou <= 1 for r in results)
    assert "N_avg" in capsys.readouterr().out
