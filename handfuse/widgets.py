"""Interactive explorers of the fusion methods on single sequences: ipywidgets controls over plotly figures.

Each is one line in a notebook (``07_explore``) and returns an :class:`Explorer`
(a ``VBox``: controls, a status line, a plotly ``FigureWidget``).  A change of a
control rewrites the traces' data in place (``FigureWidget.batch_update``), so
nothing is re-rendered from scratch; the time it took is kept in ``latency_s``.

* :func:`p_eq_explorer`: action feedback (the 2019 study's method #2) fed the coin's
  expectation ``p_eq * w_eq + (1 - p_eq) * prediction`` at evaluation (deterministic;
  ``FusionConfig.eval_feed="mix"``), re-run on one sequence as ``p_eq`` moves:
  the per-frame pose error and the running action probabilities;
* :func:`attention_viewer`: several methods' temporal attention over the frames
  (Zhu et al. 2016's LSTM with the attention readout the original found best), a
  strip of the depth crops and each method's predicted action;
* :func:`frame_scrubber`: one frame at a time, the crop with both skeletons drawn on
  it, both 3D skeletons, the per-joint errors and the running top-5 actions.

The plain functions beneath them (:func:`p_eq_curves`, :func:`attention_of`,
:func:`crop_pixels`) return numpy arrays, so tests check the values without a browser.
Model outputs come from :func:`handfuse.animate.sequence_outputs` (eval mode, inference
mode) and are computed once per sequence, except where p_eq is the point.
"""
from __future__ import annotations

import time
from functools import lru_cache

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
from matplotlib.colors import to_hex
from plotly.colors import qualitative
from plotly.subplots import make_subplots
from torch import nn

from .animate import (BONE_GROUPS, OTHER_COLOUR, TRUE_COLOUR, bone_polyline, cube_ranges, scene_layout,
                      sequence_outputs, skeleton_traces_3d, top_classes)
from .datasets import SequenceDataset
from .methods import options
from .plots import FINGER_COLOURS
from .skeleton import ACTIONS, BONES, JOINTS, finger_of

NO_ATTENTION = "last-step readout, no attention"
CACHED_SEQUENCES = 16  # per explorer: model outputs of this many sequences are kept


class Explorer(widgets.VBox):
    """What every explorer returns: its controls in a row, a status line and the figure.
    ``controls`` (by name) and ``figure`` are there to be driven from code; ``latency_s`` is the
    seconds the last update took (model run included)."""

    def __init__(self, controls: dict[str, widgets.Widget], figure: go.FigureWidget):
        status = widgets.HTML()
        super().__init__([widgets.HBox(list(controls.values())), status, figure])
        self.controls, self.figure, self.status = controls, figure, status
        self.latency_s = float("nan")


def sequence_options(data: SequenceDataset, labels: list[str] | None = None) -> list[tuple[str, int]]:
    """Dropdown options (text, index) for the sequences of ``data``: ``labels`` or "index: action"."""
    if labels is None:
        actions = data.cache.labels[data.seq_indices]  # (n,) without reading any depth
        labels = [f"{i}: {ACTIONS[int(a)]}" for i, a in enumerate(actions)]
    if len(labels) != len(data):
        raise ValueError(f"{len(labels)} labels for {len(data)} sequences")
    return [(text, i) for i, text in enumerate(labels)]


def _suffix(source: str) -> str:
    return f" ({source})" if source else ""


def _timed(explorer: Explorer, update, *args) -> None:
    """Run ``update(*args)`` and record its wall time on ``explorer.latency_s``."""
    start = time.perf_counter()
    update(*args)
    explorer.latency_s = time.perf_counter() - start


# ----------------------------------------------------------------------------- p_eq


def p_eq_curves(model: nn.Module, item: dict, p_eq: float) -> dict[str, np.ndarray]:
    """A feedback-capable method (``ActionFeedback``, or the ensemble's second pass) on one sequence,
    fed ``p_eq * w_eq + (1 - p_eq) * prediction`` after every frame (deterministic), its config restored
    after.  ``frame_error_mm`` (T,) mean joint error per frame, ``probs`` (T, 45) ``softmax(step_logits)``,
    ``joints_mm`` (T, 21, 3).  p_eq = 1 is the w_eq-fed chain; p_eq = 0 the method as evaluated."""
    with options(model, eval_feed="mix", eval_mix=float(p_eq)):
        out = sequence_outputs(model, item)
    return {k: out[k] for k in ("frame_error_mm", "probs", "joints_mm")}


def p_eq_explorer(model: nn.Module, data: SequenceDataset, labels: list[str] | None = None, k: int = 5,
                  sequence: int = 0, source: str = "") -> Explorer:
    """A p_eq slider (0..1, step 0.05) and a sequence dropdown (option texts ``labels``, default
    "index: action") over action feedback ``model``: the per-frame mean 3D error at that p_eq beside
    p_eq = 1 (w_eq fed) and p_eq = 0 (prediction fed) (left), and the probabilities after each frame
    of the true class (black) and the ``k`` others most probable on average (right)."""
    slider = widgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.05, description="p_eq", readout_format=".2f",
                                 continuous_update=False)
    dropdown = widgets.Dropdown(options=sequence_options(data, labels), value=sequence, description="sequence")
    item = lru_cache(CACHED_SEQUENCES)(lambda i: data[i])
    ends = lru_cache(CACHED_SEQUENCES)(lambda i: {p: p_eq_curves(model, item(i), p) for p in (0.0, 1.0)})

    fig = make_subplots(rows=1, cols=2, subplot_titles=("3D error per frame (mm)", "P(action) after each frame"),
                        horizontal_spacing=0.12)
    # the two reference curves are created with their data: their names never change afterwards, so an
    # update would not re-send them, and a front end drops the names of traces created empty ("trace 1")
    start = ends(sequence)
    steps = np.arange(len(start[1.0]["frame_error_mm"]))
    fig.add_scatter(mode="lines+markers", name="this p_eq", line={"color": "#1f77b4", "width": 3}, row=1, col=1)
    fig.add_scatter(x=steps, y=start[1.0]["frame_error_mm"], mode="lines", name="p_eq = 1 (w_eq fed)",
                    line={"color": "grey", "dash": "dot"}, row=1, col=1)
    fig.add_scatter(x=steps, y=start[0.0]["frame_error_mm"], mode="lines", name="p_eq = 0 (prediction fed)",
                    line={"color": "grey", "dash": "dash"}, row=1, col=1)
    fig.add_scatter(mode="lines+markers", name="true class", line={"color": TRUE_COLOUR, "width": 4}, row=1, col=2)
    for j in range(k):
        fig.add_scatter(mode="lines", line={"color": qualitative.Plotly[1 + j % 9], "width": 1.5}, row=1, col=2)
    fig.update_xaxes(title_text="frame")
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_layout(height=420, legend={"font": {"size": 10}})
    figure = go.FigureWidget(fig)
    explorer = Explorer({"sequence": dropdown, "p_eq": slider}, figure)

    def update() -> None:
        i, p = dropdown.value, float(slider.value)
        label = int(item(i)["label"])
        now, fixed = p_eq_curves(model, item(i), p), ends(i)
        others = [c for c in top_classes(now["probs"], label, k) if c != label]
        frames = np.arange(len(now["probs"]))
        with figure.batch_update():
            names = (f"p_eq = {p:.2f}", "p_eq = 1 (w_eq fed)", "p_eq = 0 (prediction fed)")
            for trace, curve, name in zip(figure.data[:3], (now, fixed[1.0], fixed[0.0]), names):
                trace.update(x=frames, y=curve["frame_error_mm"], name=name)  # names re-sent: see frame_scrubber
            for trace, c in zip(figure.data[3:], [label] + others):
                trace.x, trace.y = frames, now["probs"][:, c]
                trace.name = ACTIONS[c] + (" (true)" if c == label else "")
            figure.layout.title.text = f"Action feedback at p_eq = {p:.2f}, sequence {i}: {ACTIONS[label]}{_suffix(source)}"
        guess = ACTIONS[int(now["probs"][-1].argmax())]
        explorer.status.value = (f"p_eq = {p:.2f}: mean error {now['frame_error_mm'].mean():.2f} mm "
                                 f"(w_eq fed {fixed[1.0]['frame_error_mm'].mean():.2f}, prediction fed "
                                 f"{fixed[0.0]['frame_error_mm'].mean():.2f}); belief after the last frame: {guess}")

    for control in (slider, dropdown):
        control.observe(lambda change: _timed(explorer, update), names="value")
    _timed(explorer, update)
    return explorer


# ----------------------------------------------------------------------------- attention


def attention_of(model: nn.Module, item: dict) -> tuple[np.ndarray | None, int]:
    """A method's temporal attention weights (T,) over one sequence (None for a last-step readout)
    and its predicted action (the argmax of its sequence logits)."""
    out = sequence_outputs(model, item)
    return out["attention"], int(out["sequence_probs"].argmax())


def frame_strip(depth: np.ndarray, frames: int = 12) -> tuple[np.ndarray, list[int], list[float]]:
    """Up to ``frames`` evenly spaced crops of depth (T, 1, S, S) side by side, one NaN column (a gap) apart:
    the image (S, n * (S + 1) - 1), the frames shown and the x of each crop's centre."""
    T, S = len(depth), depth.shape[-1]
    shown = sorted({int(t) for t in np.round(np.linspace(0, T - 1, min(T, frames)))})
    strip = np.full((S, len(shown) * (S + 1) - 1), np.nan)
    for j, t in enumerate(shown):
        strip[:, j * (S + 1): j * (S + 1) + S] = depth[t, 0]
    return strip, shown, [j * (S + 1) + (S - 1) / 2 for j in range(len(shown))]


def attention_viewer(models: dict[str, nn.Module], data: SequenceDataset, frames: int = 12, sequence: int = 0,
                     source: str = "") -> Explorer:
    """A sequence dropdown over a strip of up to ``frames`` depth crops (top) and, per method of
    ``models`` (label -> method), its attention weights over the frames as bars (or the message
    "last-step readout, no attention"), titled with its predicted and the true action."""
    dropdown = widgets.Dropdown(options=sequence_options(data), value=sequence, description="sequence")
    outputs = lru_cache(CACHED_SEQUENCES)(lambda i: {name: attention_of(m, data[i]) for name, m in models.items()})
    n = len(models)
    fig = make_subplots(rows=n + 1, cols=1, row_heights=[1.3] + [1.0] * n, vertical_spacing=0.28 / (n + 1),
                        subplot_titles=["depth crops"] + list(models))
    fig.add_heatmap(colorscale="gray", zmin=-1, zmax=1, showscale=False, hoverongaps=False, row=1, col=1)
    for r in range(n):
        fig.add_bar(marker={"color": "#1f77b4"}, showlegend=False, row=r + 2, col=1)
        fig.add_annotation(text="", showarrow=False, xref=f"x{r + 2} domain", yref=f"y{r + 2} domain", x=0.5, y=0.5,
                           font={"size": 13, "color": "grey"})
    fig.update_yaxes(autorange="reversed", showticklabels=False, scaleanchor="x", row=1, col=1)
    for r in range(n):
        fig.update_xaxes(title_text="frame", row=r + 2, col=1)
        fig.update_yaxes(title_text="weight", row=r + 2, col=1)
    fig.update_layout(height=230 + 170 * n)
    figure = go.FigureWidget(fig)
    explorer = Explorer({"sequence": dropdown}, figure)

    def update() -> None:
        i = dropdown.value
        item = data[i]
        label, T = int(item["label"]), int(item["length"])
        strip, shown, centres = frame_strip(item["depth"].numpy(), frames)
        with figure.batch_update():
            figure.data[0].z = np.where(np.isnan(strip), None, strip).tolist()  # 2D goes as JSON: gaps as null, not NaN
            figure.layout.xaxis.update(tickvals=centres, ticktext=[f"t={t}" for t in shown])
            figure.layout.annotations[0].text = f"sequence {i}: {ACTIONS[label]}, {T} frames{_suffix(source)}"
            for r, (name, (weights, guess)) in enumerate(outputs(i).items()):
                bars = figure.data[r + 1]
                bars.x, bars.y = (np.arange(T), weights) if weights is not None else ([], [])
                verdict = "right" if guess == label else "wrong"
                figure.layout.annotations[r + 1].text = f"{name}: predicted {ACTIONS[guess]} ({verdict}), true {ACTIONS[label]}"
                figure.layout.annotations[n + 1 + r].text = NO_ATTENTION if weights is None else ""
                figure.layout[f"xaxis{r + 2}"].range = [-0.6, T - 0.4]
        explorer.status.value = "bars: each frame's weight in the sequence's action (they sum to 1)"

    dropdown.observe(lambda change: _timed(explorer, update), names="value")
    _timed(explorer, update)
    return explorer


# ----------------------------------------------------------------------------- frame by frame


def crop_pixels(joints_mm: np.ndarray, centre: np.ndarray, half_cube: float, size: int) -> np.ndarray:
    """(..., 21, 3) joints in camera-frame mm -> (..., 21, 2) pixel coordinates (x right, y down) in the
    S x S crop around ``centre`` (..., 3), pixel centres at integers: where the crop shows them.

    The crop (``preprocess.crop``) is a perspective view of the cube: a joint's crop-normalised
    (x, y) is its (x, y) scaled to the centre's depth, ``(x * z_c / z - x_c) / half_cube`` (the
    normalised joint units (x - x_c) / half_cube for a joint at the centre's depth), and [-1, 1]
    spans the crop: ``pixel = (n + 1) * S / 2 - 0.5``.  The same as
    ``preprocess.joints_to_crop_pixels``, whose intrinsics cancel."""
    j = np.asarray(joints_mm, dtype=np.float64)
    c = np.asarray(centre, dtype=np.float64)[..., None, :]  # (..., 1, 3)
    n = (j[..., :2] * (c[..., 2:] / np.maximum(j[..., 2:], 1.0)) - c[..., :2]) / half_cube  # (..., 21, 2)
    return (n + 1) * size / 2 - 0.5


def _joint_colour(j: int) -> str:
    finger = finger_of(j)
    return to_hex(FINGER_COLOURS[finger]) if finger else "#555555"


def frame_scrubber(model: nn.Module, data: SequenceDataset, k: int = 5, fps: float = 4.0, sequence: int = 0,
                   source: str = "") -> Explorer:
    """A sequence dropdown and a play button linked to a frame slider over ``model``'s outputs (run once
    per sequence, then cached, so scrubbing re-runs nothing): the depth crop of frame t with the
    predicted (finger colours) and true (black dashed) skeletons on it, both 3D skeletons, the
    per-joint errors at t, and the top-``k`` actions of ``softmax(step_logits[t])`` plus the true one."""
    dropdown = widgets.Dropdown(options=sequence_options(data), value=sequence, description="sequence")
    slider = widgets.IntSlider(value=0, min=0, max=1, description="frame", continuous_update=True)
    play = widgets.Play(value=0, min=0, max=1, step=1, interval=int(1000 / fps), description="play")
    widgets.jslink((play, "value"), (slider, "value"))
    half_cube = float(model.half_cube)

    @lru_cache(CACHED_SEQUENCES)
    def cached(i: int) -> tuple[dict, dict]:
        item = data[i]
        return item, sequence_outputs(model, item)

    fig = make_subplots(rows=2, cols=2, specs=[[{"type": "xy"}, {"type": "scene"}], [{"type": "xy"}, {"type": "xy"}]],
                        subplot_titles=("depth crop: predicted and true (dashed)", "3D pose (mm)",
                                        "joint error at this frame (mm)", "action probability after this frame"),
                        row_heights=[0.6, 0.4], vertical_spacing=0.12)
    fig.add_heatmap(colorscale="gray", zmin=-1, zmax=1, showscale=False, row=1, col=1)
    for colour in BONE_GROUPS:
        fig.add_scatter(mode="lines+markers", line={"color": colour, "width": 3}, marker={"size": 4},
                        showlegend=False, row=1, col=1)
    fig.add_scatter(mode="lines", line={"color": TRUE_COLOUR, "width": 1.5, "dash": "dash"}, showlegend=False,
                    row=1, col=1)
    for trace in skeleton_traces_3d(np.zeros((21, 3)), np.zeros((21, 3))):
        fig.add_trace(trace, row=1, col=2)
    fig.add_bar(x=list(JOINTS), marker={"color": [_joint_colour(j) for j in range(len(JOINTS))]}, showlegend=False,
                row=2, col=1)
    fig.add_bar(orientation="h", showlegend=False, row=2, col=2)
    fig.update_yaxes(scaleanchor="x", showticklabels=False, row=1, col=1)  # range set per sequence: y down
    fig.update_xaxes(showticklabels=False, row=1, col=1)
    fig.update_xaxes(tickangle=-90, tickfont={"size": 8}, row=2, col=1)
    fig.update_xaxes(range=[0, 1], row=2, col=2)
    fig.update_yaxes(autorange="reversed", row=2, col=2)
    fig.update_layout(height=820, legend={"x": 0.55, "y": 1.0})
    figure = go.FigureWidget(fig)
    explorer = Explorer({"sequence": dropdown, "play": play, "frame": slider}, figure)
    g = len(BONE_GROUPS)  # traces: 0 crop, 1..g predicted fingers on it, g+1 true skeleton on it,
    pred_2d, true_2d, skeleton_3d = figure.data[1:1 + g], figure.data[1 + g], figure.data[2 + g:3 + 2 * g]  # then 3D
    state = {"quiet": False}

    def draw_frame() -> None:
        i, t = dropdown.value, slider.value
        item, out = cached(i)
        label, T, S = out["label"], len(out["probs"]), item["depth"].shape[-1]
        pred, true = out["joints_mm"][t], out["joints_true"][t]  # (21, 3)
        px_pred, px_true = (crop_pixels(j, out["centre"][t], half_cube, S) for j in (pred, true))  # (21, 2)
        probs = out["probs"][t]  # (45,)
        shown = [int(c) for c in np.argsort(-probs, kind="stable")[:k]]
        shown += [] if label in shown else [label]
        errors = np.linalg.norm(pred - true, axis=-1)  # (21,)
        with figure.batch_update():
            figure.data[0].z = item["depth"][t, 0].numpy()
            for trace, bones in zip(pred_2d, BONE_GROUPS.values()):
                xy = bone_polyline(px_pred, bones)
                trace.x, trace.y = xy[:, 0], xy[:, 1]
            xy = bone_polyline(px_true, list(BONES))
            true_2d.x, true_2d.y = xy[:, 0], xy[:, 1]
            for trace, new in zip(skeleton_3d, skeleton_traces_3d(pred, true)):
                trace.x, trace.y, trace.z = new.x, new.y, new.z
            # colours and names are re-sent with the data: a FigureWidget's front end can drop the
            # styling of traces that were created empty (seen in JupyterLab: one-colour bars, "trace 1")
            figure.data[-2].update(y=errors, marker={"color": [_joint_colour(j) for j in range(len(JOINTS))]})
            figure.data[-1].update(x=probs[shown], y=[ACTIONS[c] for c in shown],
                                   marker={"color": [TRUE_COLOUR if c == label else OTHER_COLOUR for c in shown]})
            figure.layout.title.text = (f"sequence {i}, frame {t + 1}/{T}{_suffix(source)}<br><sup>predicted "
                                        f"{ACTIONS[int(probs.argmax())]}, true {ACTIONS[label]}, mean error "
                                        f"{errors.mean():.1f} mm</sup>")
        explorer.status.value = (f"sequence prediction (all frames): {ACTIONS[int(out['sequence_probs'].argmax())]}; "
                                 f"sequence mean error {out['frame_error_mm'].mean():.2f} mm")

    def new_sequence() -> None:
        item, out = cached(dropdown.value)
        T, S = len(out["probs"]), item["depth"].shape[-1]
        state["quiet"] = True  # the frame controls move below: draw once, at the end
        try:
            slider.value = play.value = 0
            slider.max = play.max = T - 1
        finally:
            state["quiet"] = False
        with figure.batch_update():
            figure.layout.scene.update(scene_layout(cube_ranges(out["joints_mm"], out["joints_true"])))
            figure.layout.xaxis.range = [-0.5, S - 0.5]
            figure.layout.yaxis.range = [S - 0.5, -0.5]  # image rows go down
            figure.data[0].update(x=np.arange(S), y=np.arange(S))
            figure.layout.yaxis2.range = [0, max(1.0, float(np.linalg.norm(out["joints_mm"] - out["joints_true"],
                                                                          axis=-1).max()) * 1.05)]
        draw_frame()

    slider.observe(lambda change: None if state["quiet"] else _timed(explorer, draw_frame), names="value")
    dropdown.observe(lambda change: _timed(explorer, new_sequence), names="value")
    _timed(explorer, new_sequence)
    return explorer
