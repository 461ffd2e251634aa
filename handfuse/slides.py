"""Slide figures that summarise the study: the unrolled architectures, the results table, the effect of attention.

* :func:`architecture_figure` draws a method unrolled over a few frames with
  matplotlib patches: the sequential baseline of the 2019 study (depth crop ->
  HPE -> pose -> LSTM, the hidden state chained frame to frame -> action), action
  feedback (the action after frame t conditions the FiLM HPE of frame t+1) and the
  two-HPE ensemble (pass 1 as the baseline; its sequence action fed to a FiLM HPE2
  on every frame in pass 2, through the same HAR; the two mixed by eta and zeta);
* :func:`results_table_figure` renders :func:`handfuse.report.results_table` (ours
  with 95 % intervals, labelled with the data source, the original's FPHA numbers in
  their own shaded columns) as a figure, cell for cell;
* :func:`attention_effect_figure`: accuracy with and without temporal attention, for
  every row of the table that was run both ways.

Every box and arrow of the architecture carries a ``gid`` (``box:<kind>``,
``arrow:<kind>``), so tests count them.  Figures are saved with :func:`handfuse.plots.savefig`.
"""
from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from . import report

METHODS = ("baseline", "feedback", "ensemble")
TITLES = {"baseline": "Sequential baseline", "feedback": "Method #2, action feedback",
          "ensemble": "Method #3, two-HPE ensemble"}
FILL = {"crop": "0.85", "hpe": "#c6dbef", "film": "#fdd0a2", "pose": "#c7e9c0", "lstm": "#dadaeb",
        "action": "#fcbba1", "mix": "white"}
FEEDBACK_COLOUR = "tab:red"
DX, DY = 2.9, 1.2  # column and row spacing (data units)
W, H = 1.5, 0.7  # a box
W2 = 1.35  # a box of the ensemble's two sub-columns
OURS_FILL, ORIGINAL_FILL = "#deebf7", "0.9"

# ----------------------------------------------------------------------------- drawing primitives


def _box(ax, x: float, y: float, text: str, kind: str, width: float = W) -> None:
    """A rounded box centred on (x, y) with ``text``."""
    ax.add_patch(FancyBboxPatch((x - width / 2, y - H / 2), width, H, boxstyle="round,pad=0,rounding_size=0.12",
                                fc=FILL[kind], ec="0.3", lw=1.0, gid=f"box:{kind}"))
    ax.text(x, y, text, ha="center", va="center", fontsize=8)


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], kind: str = "data", label: str | None = None,
           rad: float = 0.0) -> None:
    """An arrow from ``start`` to ``end`` (points on box edges), optionally labelled at its middle."""
    colour = FEEDBACK_COLOUR if kind == "feedback" else "0.2"
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=9, lw=1.1, color=colour,
                                 connectionstyle=f"arc3,rad={rad}",
                                 shrinkA=0, shrinkB=0, gid=f"arrow:{kind}"))
    if label:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 - 0.1, label, ha="center", va="top", fontsize=8,
                color=colour)


def _up(ax, x: float, y0: float, y1: float, kind: str = "data") -> None:
    """A vertical arrow between the boxes centred at heights ``y0`` and ``y1`` (either direction)."""
    sign = 1 if y1 > y0 else -1
    _arrow(ax, (x, y0 + sign * H / 2), (x, y1 - sign * H / 2), kind)


def _chain(ax, xs: list[float], y: float, width: float, label: str) -> None:
    """The hidden state carried left to right between the LSTM boxes at ``xs``."""
    for t, (a, b) in enumerate(zip(xs[:-1], xs[1:]), start=1):
        _arrow(ax, (a + width / 2, y), (b - width / 2, y), "state", label.format(t=t))


# ----------------------------------------------------------------------------- the architectures


def _single_pass(ax, xs: list[float], film: bool) -> None:
    """Baseline and feedback: per frame crop -> HPE -> pose -> LSTM -> action; the action after frame t
    conditions the HPE of frame t+1 when ``film``."""
    for t, x in enumerate(xs, start=1):
        _box(ax, x, 0, f"depth crop $x_{t}$", "crop")
        _box(ax, x, DY, "HPE + FiLM" if film else "HPE", "film" if film else "hpe")
        _box(ax, x, 2 * DY, f"pose $y_{t}$", "pose")
        _box(ax, x, 3 * DY, "LSTM", "lstm")
        _box(ax, x, 4 * DY, f"action $p_{t}$", "action")
        for level in range(4):
            _up(ax, x, level * DY, (level + 1) * DY)
    _chain(ax, xs, 3 * DY, W, "$h_{t}$")
    if not film:
        return
    ax.text(xs[0] - W / 2 - 0.15, DY, "$w_{eq}$", ha="right", va="center", fontsize=9, color=FEEDBACK_COLOUR)
    for a, b in zip(xs[:-1], xs[1:]):
        _arrow(ax, (a + W / 2, 4 * DY), (b - W / 2, DY + H / 4), "feedback", rad=-0.25)


def _two_passes(ax, xs: list[float]) -> None:
    """The ensemble: the crop in the middle, pass 1 (HPE1, y', LSTM -> z') above it, pass 2 (FiLM HPE2
    fed z' on every frame, y'', the same LSTM -> z'') below it, then the two mixes on the right."""
    for t, x in enumerate(xs, start=1):
        _box(ax, x, 0, f"depth crop $x_{t}$", "crop")
        for sign, hpe, kind, pose in ((1, "HPE1", "hpe", f"$y'_{t}$"), (-1, "HPE2 + FiLM", "film", f"$y''_{t}$")):
            _box(ax, x, sign * DY, hpe, kind, W2)
            _box(ax, x, sign * 2 * DY, pose, "pose", W2)
            _box(ax, x, sign * 3 * DY, "LSTM", "lstm", W2)
            for level in range(3):  # crop -> HPE2 off centre: z' comes in beside it
                _up(ax, x - 0.25 * (sign < 0 and level == 0), sign * level * DY, sign * (level + 1) * DY)
    for sign, label in ((1, "$h'_{t}$"), (-1, "$h''_{t}$")):
        _chain(ax, xs, sign * 3 * DY, W2, label)
    right = xs[-1] + DX
    for sign, name in ((1, "$z'$"), (-1, "$z''$")):
        _box(ax, right, sign * 3 * DY, f"action {name}", "action", W2)
        _arrow(ax, (xs[-1] + W2 / 2, sign * 3 * DY), (right - W2 / 2, sign * 3 * DY), "state", "$h_T$")
    _feed_every_frame(ax, xs, right)
    _box(ax, right + DX * 0.9, 0, "$\\zeta \\log p(z'')$\n$+ (1-\\zeta) \\log p(z')$", "mix", 1.9)
    for sign in (1, -1):
        _arrow(ax, (right + W2 / 2, sign * 3 * DY), (right + DX * 0.9, sign * H / 2), rad=-0.2 * sign)
    ax.text(right + DX * 0.9, -H / 2 - 0.15, "action", ha="center", va="top", fontsize=8)
    ax.text(xs[0] - W2 / 2 - 0.2, 2 * DY, "pass 1", ha="right", va="center", fontsize=9, rotation=90)
    ax.text(xs[0] - W2 / 2 - 0.2, -2 * DY, "pass 2 (the same LSTM)", ha="right", va="center", fontsize=9, rotation=90)
    ax.text(right, -4 * DY + 0.2, "pose of every frame: $\\eta\\, y'' + (1-\\eta)\\, y'$", ha="center", va="center",
            fontsize=8, bbox={"fc": FILL["mix"], "ec": "0.3", "boxstyle": "round"})


def _feed_every_frame(ax, xs: list[float], right: float) -> None:
    """z' (pass 1's sequence action) to every HPE2: a red bus between the crops and the HPE2s."""
    bus_y = -DY / 2
    ax.add_line(Line2D([right, right, xs[0] + 0.25], [3 * DY - H / 2, bus_y, bus_y], color=FEEDBACK_COLOUR, lw=1.1,
                       ls="--", gid="line:feedback"))
    for x in xs:
        _arrow(ax, (x + 0.25, bus_y), (x + 0.25, -DY + H / 2), "feedback")
    ax.text(right - 0.1, DY, "$z'$ fed to HPE2\non every frame", ha="right", va="center", fontsize=8,
            color=FEEDBACK_COLOUR)


def architecture_figure(method: str = "baseline", steps: int = 3):
    """``method`` ("baseline", "feedback" or "ensemble") unrolled over ``steps`` frames, as boxes and
    arrows; frames run left to right."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: one of {METHODS}")
    if steps < 2:
        raise ValueError(f"steps = {steps}: at least 2 frames, to show the chain")
    xs = [t * DX for t in range(steps)]
    two = method == "ensemble"
    fig, ax = plt.subplots(figsize=(2.2 * steps + (4.2 if two else 0.6), 6.4 if two else 4.6))
    if two:
        _two_passes(ax, xs)
    else:
        _single_pass(ax, xs, film=method == "feedback")
    ax.set_title(f"{TITLES[method]}, unrolled over {steps} frames", fontsize=10)
    ax.set_aspect("equal")
    ax.set_axis_off()
    _fit(ax)
    return fig


def _fit(ax, margin: float = 0.4) -> None:
    """Axis limits around every box and text (patches do not autoscale an axis on their own)."""
    boxes = [p for p in ax.patches if str(p.get_gid()).startswith("box")]
    xs = [b.get_x() for b in boxes] + [b.get_x() + b.get_width() for b in boxes] + [t.get_position()[0] for t in ax.texts]
    ys = [b.get_y() for b in boxes] + [b.get_y() + b.get_height() for b in boxes] + [t.get_position()[1] for t in ax.texts]
    ax.set_xlim(min(xs) - margin - 0.6, max(xs) + margin + 0.6)
    ax.set_ylim(min(ys) - margin, max(ys) + margin)


# ----------------------------------------------------------------------------- the results


def table_cells(markdown: str) -> tuple[list[str], list[list[str]]]:
    """The header and the body rows of the Markdown table in ``markdown`` (its lines that start with "|")."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    body = [row for row in cells[1:] if not all(c and set(c) <= set("-:") and len(c) >= 3 for c in row)]
    return cells[0], body


def results_table_figure(rows: dict[str, dict], source: str, seeds: int):
    """:func:`handfuse.report.results_table` of ``rows`` (``report.table_rows`` of the results files) as a
    figure, cell for cell: our columns (``source`` data) shaded blue, the original's FPHA columns grey and
    in italics, the table's note beneath."""
    markdown = report.results_table(rows, source, seeds)
    header, body = table_cells(markdown)
    header = [textwrap.fill(h, 16) for h in header]
    body = [[textwrap.fill(row[0], 56)] + row[1:] for row in body]
    lines = [max(cell.count("\n") + 1 for cell in row) for row in [header] + body]  # text lines per table row
    fig, ax = plt.subplots(figsize=(14, 0.17 * sum(lines) + 0.14 * len(lines) + 0.9))
    ax.set_axis_off()
    table = ax.table(cellText=body, colLabels=header, cellLoc="center", bbox=[0, 0, 1, 1],
                     colWidths=[0.28] + [0.72 / (len(header) - 1)] * (len(header) - 1))
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    original = {j for j, h in enumerate(header) if h.startswith("original")}
    for (r, c), cell in table.get_celld().items():
        cell.set_height(0.17 * lines[r] + 0.14)  # relative: the bbox rescales the rows to fill the axes
        if c in original:
            cell.set_facecolor(ORIGINAL_FILL)
            cell.get_text().set_fontstyle("italic")
        elif r == 0:
            cell.set_facecolor(OURS_FILL)
        if r == 0:
            cell.get_text().set_fontweight("bold")
        elif c == 0:
            cell.get_text().set_ha("left")
            cell.PAD = 0.02
    note = markdown.split("\n\n", 1)[1].strip() if "\n\n" in markdown else ""
    ax.set_title(f"Results on {source} data (ours) beside the original's FPHA numbers (theirs, grey)\n"
                 + textwrap.fill(note, 170), fontsize=9)
    return fig


def attention_pairs(rows: dict[str, dict]) -> list[str]:
    """The rows run both with and without temporal attention (``key`` and ``key_att``), in table order."""
    return [key for key in report.ROWS if key in rows and f"{key}_att" in rows]


def attention_effect_figure(rows: dict[str, dict], source: str, seeds: int, centre: str = "gt"):
    """Action accuracy without (blue) and with (orange) temporal attention for every pair of
    :func:`attention_pairs`, bars with 95 % intervals over ``seeds`` seeds; the original's FPHA numbers,
    where it had both, as grey squares labelled as theirs."""
    keys = attention_pairs(rows)
    if not keys:
        raise ValueError("no row was run both with and without attention (key and key_att): run notebook 04 first")
    fig, ax = plt.subplots(figsize=(2.4 * len(keys) + 2.5, 4.0))
    x = np.arange(len(keys))
    for offset, suffix, colour, label in ((-0.2, "", "tab:blue", "without attention"),
                                          (0.2, "_att", "tab:orange", "with attention")):
        pairs = [rows[k + suffix][centre]["accuracy"] for k in keys]
        means = np.array([p[0] for p in pairs])
        hw = np.array([0.0 if p[1] is None or math.isnan(p[1]) else p[1] for p in pairs])
        ax.bar(x + offset, means, 0.38, yerr=hw, capsize=4, color=colour, label=f"{label} ({source})")
        for xi, top, m in zip(x + offset, means + hw, means):  # the value above its interval
            ax.text(xi, top + 1.5, f"{m:.1f}", ha="center", va="bottom", fontsize=7)
        original = [(xi + offset, report.ROWS[k + suffix][2]) for xi, k in zip(x, keys)]
        shown = [(xo, o) for xo, o in original if o is not None]
        if shown:
            labelled = any(line.get_label().startswith("original") for line in ax.lines)
            ax.plot(*zip(*shown), "s", mfc="white", mec="k", ms=7, zorder=3, gid="original",
                    label="_" if labelled else "original, FPHA (2019)")
    ax.set_xticks(x, [textwrap.fill(report.ROWS[k][0], 22) for k in keys], fontsize=8)
    ax.set_ylabel("action accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    centred = "ground-truth" if centre == "gt" else "depth"
    ax.set_title(f"Temporal attention: accuracy with and without ({source}, mean ± 95 % interval over {seeds} seed(s),"
                 f" {centred}-centred crops)", fontsize=9)
    fig.tight_layout()
    return fig
