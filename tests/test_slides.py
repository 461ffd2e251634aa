"""The slide figures draw what they say: the boxes of each unrolled method, the table's cells, the attention bars."""
from __future__ import annotations

from collections import Counter

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from handfuse import plots, report, slides  # noqa: E402


def _expected_parts(method: str, T: int) -> Counter:
    """What a method unrolled over T frames is made of: boxes by kind, arrows by kind."""
    if method == "ensemble":  # pass 1 and pass 2 per frame, one crop shared; z', z'' and their mix
        return Counter({"box:crop": T, "box:hpe": T, "box:film": T, "box:pose": 2 * T, "box:lstm": 2 * T,
                        "box:action": 2, "box:mix": 1, "arrow:data": 6 * T + 2, "arrow:feedback": T,
                        "arrow:state": 2 * (T - 1) + 2})
    hpe = "box:film" if method == "feedback" else "box:hpe"
    return Counter({"box:crop": T, hpe: T, "box:pose": T, "box:lstm": T, "box:action": T, "arrow:data": 4 * T,
                    "arrow:feedback": T - 1 if method == "feedback" else 0, "arrow:state": T - 1})


def _parts(fig) -> Counter:
    ax = fig.axes[0]
    return Counter(str(p.get_gid()) for p in ax.patches if p.get_gid())


@pytest.mark.parametrize("method", slides.METHODS)
@pytest.mark.parametrize("steps", [2, 4])
def test_architecture_has_the_boxes_and_arrows_of_the_method(method, steps):
    fig = slides.architecture_figure(method, steps)
    fig.canvas.draw()  # lays out every patch and text: fails on a broken mathtext label
    parts, expected = _parts(fig), _expected_parts(method, steps)
    assert {k: parts[k] for k in expected} == dict(expected)
    assert not set(parts) - set(expected), set(parts) - set(expected)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert f"depth crop $x_{steps}$" in texts and f"depth crop $x_{steps + 1}$" not in texts
    assert str(steps) in fig.axes[0].get_title()
    plt.close(fig)


def test_architecture_boxes_all_lie_inside_the_axes():
    fig = slides.architecture_figure("ensemble", 3)
    ax = fig.axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    for patch in ax.patches:
        if str(patch.get_gid()).startswith("box:"):
            bx, by = patch.get_x(), patch.get_y()
            assert x0 <= bx and bx + patch.get_width() <= x1 and y0 <= by and by + patch.get_height() <= y1
    plt.close(fig)


def test_architecture_refuses_unknown_methods_and_a_single_frame():
    with pytest.raises(ValueError, match="one of"):
        slides.architecture_figure("boosting")
    with pytest.raises(ValueError, match="at least 2"):
        slides.architecture_figure("baseline", 1)


ROWS = {"har_gt": {"gt": {"accuracy": [80.0, 2.0]}},
        "har_gt_att": {"gt": {"accuracy": [81.5, float("nan")]}},
        "baseline": {"gt": {"error_mm": [12.0, 0.5], "accuracy": [75.5, 1.0]},
                     "depth": {"error_mm": [20.0, 1.0], "accuracy": [60.0, 3.0]}},
        "ensemble": {"gt": {"error_mm": [11.0, 0.4], "accuracy": [77.0, 1.5]}},
        "ensemble_att": {"gt": {"error_mm": [11.2, 0.3], "accuracy": [78.25, 2.5]}}}


def test_table_cells_reads_a_markdown_table():
    header, body = slides.table_cells("| a | b |\n|---|:-:|\n| x | - |\n| y | 2 |\n\nnote")
    assert header == ["a", "b"] and body == [["x", "-"], ["y", "2"]]


def test_results_table_figure_shows_the_report_table_cell_for_cell():
    fig = slides.results_table_figure(ROWS, "synthetic", 3)
    fig.canvas.draw()
    table = fig.axes[0].tables[0]
    cells = table.get_celld()
    n_rows, n_cols = max(r for r, _ in cells) + 1, max(c for _, c in cells) + 1
    header, body = slides.table_cells(report.results_table(ROWS, "synthetic", 3))
    assert (n_rows, n_cols) == (len(body) + 1, len(header)) == (len(ROWS) + 1, 8)
    text = {(r, c): cell.get_text().get_text().replace("\n", " ") for (r, c), cell in cells.items()}
    labels = [text[(r, 0)] for r in range(1, n_rows)]
    assert labels == [report.ROWS[k][0] for k in report.ROWS if k in ROWS]  # table order, only rows that ran
    base = labels.index(report.ROWS["baseline"][0]) + 1
    assert text[(base, 1)] == report.fmt([12.0, 0.5]) and text[(base, 2)] == report.fmt([75.5, 1.0], 1)
    assert text[(base, 6)] == str(report.ROWS["baseline"][1])  # the original's number, in its own column
    assert "synthetic" in text[(0, 1)] and "FPHA" in text[(0, 7)]
    for r in range(n_rows):  # theirs shaded grey and in italics, ours not
        assert cells[(r, 7)].get_facecolor() == to_rgba(slides.ORIGINAL_FILL)
        assert cells[(r, 7)].get_text().get_fontstyle() == "italic"
        assert cells[(r, 1)].get_text().get_fontstyle() == "normal"
    title = fig.axes[0].get_title()
    assert "synthetic" in title and "3 seed(s)" in title
    plt.close(fig)


def _bars(ax):
    return [c for c in ax.containers if isinstance(c, matplotlib.container.BarContainer)]


def test_attention_effect_has_a_pair_of_bars_per_method_run_both_ways():
    assert slides.attention_pairs(ROWS) == ["har_gt", "ensemble"]  # "baseline" has no "_att" row
    fig = slides.attention_effect_figure(ROWS, "synthetic", 3)
    ax = fig.axes[0]
    without, with_ = _bars(ax)
    assert [b.get_height() for b in without] == [80.0, 77.0]
    assert [b.get_height() for b in with_] == [81.5, 78.25]
    spans = [seg[1][1] - seg[0][1] for seg in with_.errorbar.lines[2][0].get_segments()]
    np.testing.assert_allclose(spans, [0.0, 5.0])  # 2 x the half-width; one seed's NaN drawn as none
    originals = [line for line in ax.lines if line.get_gid() == "original"]
    shown = sorted(y for line in originals for y in line.get_ydata())
    assert shown == sorted(v for k in ("har_gt", "ensemble", "ensemble_att") for v in [report.ROWS[k][2]])
    assert "original, FPHA (2019)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert "synthetic" in ax.get_title()
    plt.close(fig)


def test_attention_effect_refuses_results_without_a_pair():
    with pytest.raises(ValueError, match="with and without attention"):
        slides.attention_effect_figure({k: v for k, v in ROWS.items() if not k.endswith("_att")}, "synthetic", 3)


def test_slide_figures_save_under_their_stable_names(tmp_path, monkeypatch):
    monkeypatch.setenv("HANDFUSE_FIGURES", str(tmp_path))
    for name, fig in (("baseline_architecture", slides.architecture_figure("baseline")),
                      ("summary_results_table", slides.results_table_figure(ROWS, "synthetic", 3))):
        paths = plots.savefig(fig, name)
        plt.close(fig)
        assert sorted(p.name for p in paths) == [f"{name}.pdf", f"{name}.png"]
        assert all(p.stat().st_size > 5_000 for p in paths)
