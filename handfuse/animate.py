"""Animations of one sequence: the 3D pose beside the action probabilities, frame by frame.

What a fusion method does on a single sequence, for slides and for a closer look:
the estimated skeleton against the ground truth, and the action
recogniser's running belief after every frame (``softmax(step_logits[t])``, the
distribution that action feedback feeds to frame t+1).

* :func:`sequence_outputs` runs a method on one sequence (eval mode, inference
  mode: deterministic) and returns numpy arrays; :mod:`handfuse.widgets` reuses it;
* :func:`pose_action_animation`: a plotly figure with frames, a slider and a play button;
* :func:`export_animation` and :func:`method_comparison_animation`: the same for slides,
  through ``matplotlib.animation``, as ``figures/{name}.gif`` (Pillow, always) and
  ``figures/{name}.mp4`` (only where ffmpeg is installed; otherwise a message says so).

The 3D views show the camera frame turned so that up is up: x right, the depth z
into the screen, -y up (the camera's y points down).  For the ensemble, ``step_logits``
are its first pass's (the second pass only starts once the whole sequence is seen).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import plotly.graph_objects as go
import torch
from matplotlib import animation
from matplotlib.colors import to_hex
from plotly.subplots import make_subplots
from torch import nn

from .datasets import collate_sequences
from .methods.common import see_labels
from .paths import figures_dir
from .plots import bone_colour
from .skeleton import ACTIONS, BONES

TRUE_COLOUR = "#222222"  # the ground-truth skeleton and the true class, everywhere
OTHER_COLOUR = "#7f9fbf"  # the other classes' bars


def _bone_groups() -> dict[str, list[tuple[int, int]]]:
    """The bones grouped by finger colour (as hex, which plotly also reads): one line trace per finger."""
    groups: dict[str, list[tuple[int, int]]] = {}
    for a, b in BONES:
        groups.setdefault(to_hex(bone_colour(b)), []).append((a, b))
    return groups


BONE_GROUPS = _bone_groups()


# ----------------------------------------------------------------------------- model outputs


def sequence_outputs(model: nn.Module, item: dict) -> dict:
    """A fusion method on one :class:`~handfuse.datasets.SequenceDataset` item, in eval mode under
    ``torch.inference_mode`` (the model's training mode is restored after).

    Returns numpy arrays: ``joints_mm`` (T, 21, 3) predicted, ``joints_true`` (T, 21, 3),
    ``centre`` (T, 3), ``frame_error_mm`` (T,) (mean joint error per frame), ``probs`` (T, 45)
    (``softmax(step_logits)``: the belief after each frame), ``sequence_probs`` (45,)
    (``softmax(logits)``), ``attention`` (T,) or None, and ``label`` (int)."""
    batch = collate_sequences([item])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            see_labels(model, batch["label"])
            out = model(batch["depth"].to(device), batch["centre"].to(device), batch["mask"].to(device))
    finally:
        model.train(was_training)
    T = int(item["length"])
    joints = out["joints_mm"][0, :T].double().cpu().numpy()  # (T, 21, 3)
    truth = item["joints_mm"].double().numpy()  # (T, 21, 3)
    attention = out.get("attention")
    return {
        "joints_mm": joints,
        "joints_true": truth,
        "centre": item["centre"].double().numpy(),
        "frame_error_mm": np.linalg.norm(joints - truth, axis=-1).mean(-1),  # (T,)
        "probs": torch.softmax(out["step_logits"][0, :T].double(), -1).cpu().numpy(),  # (T, 45)
        "sequence_probs": torch.softmax(out["logits"][0].double(), -1).cpu().numpy(),  # (45,)
        "attention": None if attention is None else attention[0, :T].double().cpu().numpy(),
        "label": int(item["label"]),
    }


def top_classes(probs: np.ndarray, label: int, k: int = 5) -> list[int]:
    """The true class and the ``k`` other classes of highest mean probability over frames (T, 45),
    in decreasing mean probability: always k + 1 classes, so that a plot keeps its bars in place."""
    probs = np.asarray(probs)
    mean = probs.reshape(-1, probs.shape[-1]).mean(0)  # (45,)
    others = [int(c) for c in np.argsort(-mean, kind="stable") if c != label][:k]
    return sorted(others + [int(label)], key=lambda c: -mean[c])


# ----------------------------------------------------------------------------- geometry


def upright(joints: np.ndarray) -> np.ndarray:
    """(..., 3) camera-frame mm -> (..., 3) display coordinates (x, z, -y): depth into the screen, up up."""
    joints = np.asarray(joints, dtype=np.float64)
    return np.stack([joints[..., 0], joints[..., 2], -joints[..., 1]], -1)


def bone_polyline(points: np.ndarray, bones: list[tuple[int, int]]) -> np.ndarray:
    """(21, D) points -> (3 * len(bones), D): each bone's two ends then a NaN row (a gap in a line trace)."""
    segments = np.full((len(bones), 3, points.shape[-1]), np.nan)
    segments[:, 0] = points[[a for a, _ in bones]]
    segments[:, 1] = points[[b for _, b in bones]]
    return segments.reshape(-1, points.shape[-1])


def cube_ranges(*joints: np.ndarray, margin_mm: float = 15.0) -> list[list[float]]:
    """Equal [low, high] ranges of the three display axes that hold every joint of every array
    (..., 21, 3), so that a skeleton keeps its proportions and the view does not jump between frames."""
    pts = np.concatenate([upright(j).reshape(-1, 3) for j in joints])  # (N, 3)
    low, high = pts.min(0), pts.max(0)
    centre, half = (low + high) / 2, (high - low).max() / 2 + margin_mm
    return [[float(c - half), float(c + half)] for c in centre]


def skeleton_traces_3d(joints_pred: np.ndarray, joints_true: np.ndarray) -> list[go.Scatter3d]:
    """Plotly traces of one frame: the predicted bones, one trace per finger colour, then the true
    skeleton dashed in black.  Joints (21, 3) in camera-frame mm."""
    pred, true = upright(joints_pred), upright(joints_true)
    traces = []
    for k, (colour, bones) in enumerate(BONE_GROUPS.items()):
        xyz = bone_polyline(pred, bones)
        traces.append(go.Scatter3d(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], mode="lines+markers", name="predicted",
                                   legendgroup="predicted", showlegend=k == 0, line={"color": colour, "width": 6},
                                   marker={"size": 2, "color": colour}))
    xyz = bone_polyline(true, list(BONES))
    traces.append(go.Scatter3d(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], mode="lines", name="true",
                               line={"color": TRUE_COLOUR, "width": 3, "dash": "dash"}))
    return traces


def scene_layout(ranges: list[list[float]]) -> dict:
    """A plotly 3D scene looking from the camera (eye on the -depth side), with fixed equal ranges."""
    titles = ("x (mm)", "z: depth (mm)", "-y: up (mm)")
    return {**{f"{axis}axis": {"range": r, "title": {"text": t}} for axis, r, t in zip("xyz", ranges, titles)},
            "aspectmode": "cube", "camera": {"eye": {"x": 0.25, "y": -1.9, "z": 0.45}, "up": {"x": 0, "y": 0, "z": 1}}}


# ----------------------------------------------------------------------------- plotly


def pose_action_animation(joints_pred: np.ndarray, joints_true: np.ndarray, probs: np.ndarray, label: int,
                          title: str, k: int = 5, fps: float = 4.0) -> go.Figure:
    """An animated plotly figure, one frame per sequence frame: the predicted and true 3D skeletons
    (T, 21, 3) mm (left) beside the probabilities (T, 45) of the true class (black) and the ``k``
    others most probable on average (right), with a frame slider and a play button."""
    T = len(probs)
    classes = top_classes(probs, label, k)
    names = [ACTIONS[c] for c in classes]
    colours = [TRUE_COLOUR if c == label else OTHER_COLOUR for c in classes]

    def traces(t: int) -> list:
        bars = go.Bar(x=probs[t, classes], y=names, orientation="h", marker={"color": colours}, showlegend=False,
                      text=[f"{p:.2f}" for p in probs[t, classes]], textposition="outside")
        return skeleton_traces_3d(joints_pred[t], joints_true[t]) + [bars]

    def heading(t: int) -> str:
        guess = ACTIONS[int(probs[t].argmax())]
        return f"{title}<br><sub>frame {t + 1}/{T}: predicted {guess}, true {ACTIONS[label]}</sub>"

    fig = make_subplots(rows=1, cols=2, specs=[[{"type": "scene"}, {"type": "xy"}]], column_widths=[0.55, 0.45],
                        subplot_titles=("3D pose (mm): predicted vs true (dashed)", "action probability after the frame"))
    first = traces(0)
    for trace in first[:-1]:
        fig.add_trace(trace, row=1, col=1)
    fig.add_trace(first[-1], row=1, col=2)
    indices = list(range(len(first)))
    fig.frames = [go.Frame(data=traces(t), traces=indices, name=str(t), layout={"title": {"text": heading(t)}})
                  for t in range(T)]
    step = {"frame": {"duration": 0, "redraw": True}, "mode": "immediate", "transition": {"duration": 0}}
    play = {"frame": {"duration": 1000 / fps, "redraw": True}, "fromcurrent": True, "transition": {"duration": 0}}
    fig.update_layout(
        title={"text": heading(0)}, height=520, margin={"t": 90},
        scene=scene_layout(cube_ranges(joints_pred, joints_true)),
        xaxis={"range": [0, 1.15], "title": {"text": "probability"}}, yaxis={"autorange": "reversed"},
        updatemenus=[{"type": "buttons", "direction": "left", "x": 0.0, "y": -0.05, "xanchor": "left",
                      "buttons": [{"label": "play", "method": "animate", "args": [None, play]},
                                  {"label": "pause", "method": "animate", "args": [[None], step]}]}],
        sliders=[{"active": 0, "x": 0.12, "len": 0.88, "y": -0.02, "currentvalue": {"prefix": "frame "},
                  "steps": [{"label": str(t), "method": "animate", "args": [[str(t)], step]} for t in range(T)]}])
    return fig


# ----------------------------------------------------------------------------- matplotlib: GIF and MP4


@dataclass(frozen=True)
class Exported:
    """What an export wrote: the GIF, the MP4 (None when skipped) and why it was skipped ("" if not)."""

    gif: Path
    mp4: Path | None
    message: str = ""

    @property
    def paths(self) -> list[Path]:
        return [p for p in (self.gif, self.mp4) if p is not None]


def _save(anim: animation.FuncAnimation, fig, name: str, fps: float) -> Exported:
    """``figures/{name}.gif`` always; ``figures/{name}.mp4`` when matplotlib finds ffmpeg."""
    gif = figures_dir() / f"{name}.gif"
    anim.save(gif, writer=animation.PillowWriter(fps=fps))
    mp4, message = None, ""
    if animation.writers.is_available("ffmpeg"):
        mp4 = figures_dir() / f"{name}.mp4"
        anim.save(mp4, writer=animation.FFMpegWriter(fps=fps))
    else:
        message = f"{name}: MP4 skipped because ffmpeg is absent (matplotlib found no ffmpeg); wrote {gif.name} only"
        print(message)
    plt.close(fig)
    return Exported(gif, mp4, message)


def _skeleton_axes(ax, ranges: list[list[float]]) -> tuple[list, list]:
    """Set up a 3D axis looking from the camera; returns its predicted and true bone lines (20 each)."""
    ax.set_xlim(*ranges[0]), ax.set_ylim(*ranges[1]), ax.set_zlim(*ranges[2])
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=12, azim=-80)
    ax.set_xlabel("x", fontsize=7), ax.set_ylabel("depth z", fontsize=7), ax.set_zlabel("-y (up)", fontsize=7)
    ax.tick_params(labelsize=6)
    pred = [ax.plot([], [], [], color=bone_colour(b), lw=2.2)[0] for _, b in BONES]
    true = [ax.plot([], [], [], color=TRUE_COLOUR, lw=1.0, ls="--")[0] for _ in BONES]
    return pred, true


def _set_bones(lines: list, joints: np.ndarray) -> None:
    xyz = upright(joints)  # (21, 3)
    for line, (a, b) in zip(lines, BONES):
        line.set_data_3d(xyz[[a, b], 0], xyz[[a, b], 1], xyz[[a, b], 2])


def export_animation(joints_pred: np.ndarray, joints_true: np.ndarray, probs: np.ndarray, label: int, name: str,
                     title: str, fps: float = 4.0, k: int = 5) -> Exported:
    """:func:`pose_action_animation` for slides: ``figures/{name}.gif`` (and ``.mp4`` with ffmpeg).
    Never raises for a missing ffmpeg: the returned :class:`Exported` (and a printed line) says so."""
    T = len(probs)
    classes = top_classes(probs, label, k)
    fig = plt.figure(figsize=(10, 4.6))
    grid = fig.add_gridspec(1, 2, width_ratios=[1.25, 1])
    ax3 = fig.add_subplot(grid[0], projection="3d")
    pred, true = _skeleton_axes(ax3, cube_ranges(joints_pred, joints_true))
    ax3.set_title("pose (mm): predicted, true dashed", fontsize=8)
    axb = fig.add_subplot(grid[1])
    bars = axb.barh(range(len(classes)), probs[0, classes],
                    color=[TRUE_COLOUR if c == label else OTHER_COLOUR for c in classes])
    axb.set_yticks(range(len(classes)), [ACTIONS[c] + (" (true)" if c == label else "") for c in classes], fontsize=7)
    axb.invert_yaxis()
    axb.set_xlim(0, 1), axb.set_xlabel("probability after the frame", fontsize=8)
    heading = fig.suptitle("", fontsize=9)
    fig.subplots_adjust(left=0.0, right=0.97, top=0.84, wspace=0.6)

    def update(t: int) -> list:
        _set_bones(pred, joints_pred[t])
        _set_bones(true, joints_true[t])
        for bar, p in zip(bars, probs[t, classes]):
            bar.set_width(p)
        heading.set_text(f"{title}\nframe {t + 1}/{T}: predicted {ACTIONS[int(probs[t].argmax())]}, true {ACTIONS[label]}")
        return pred + true + list(bars) + [heading]

    anim = animation.FuncAnimation(fig, update, frames=T, interval=1000 / fps, blit=False)
    return _save(anim, fig, name, fps)


def method_comparison_animation(runs: dict[str, dict], joints_true: np.ndarray, label: int, name: str, title: str,
                                fps: float = 4.0) -> Exported:
    """Several methods side by side on one sequence: per method (``runs[method]`` has ``joints_mm``
    (T, 21, 3) and ``probs`` (T, 45), e.g. from :func:`sequence_outputs`) its 3D skeleton against the
    truth (T, 21, 3) and its running top action, green when right, red when wrong.
    ``figures/{name}.gif`` (and ``.mp4`` with ffmpeg)."""
    T = len(joints_true)
    lengths = {m: (len(r["joints_mm"]), len(r["probs"])) for m, r in runs.items()}
    if any(n != (T, T) for n in lengths.values()):
        raise ValueError(f"every method needs {T} frames of joints and probabilities, got {lengths}")
    ranges = cube_ranges(joints_true, *[r["joints_mm"] for r in runs.values()])
    fig = plt.figure(figsize=(3.4 * len(runs), 3.9))
    panels = []
    for i, method in enumerate(runs):
        ax = fig.add_subplot(1, len(runs), i + 1, projection="3d")
        panels.append((method, ax, *_skeleton_axes(ax, ranges)))
    heading = fig.suptitle("", fontsize=9)
    fig.subplots_adjust(left=0.0, right=1.0, top=0.8, wspace=0.05)

    def update(t: int) -> list:
        artists = [heading]
        for method, ax, pred, true in panels:
            r = runs[method]
            _set_bones(pred, r["joints_mm"][t])
            _set_bones(true, joints_true[t])
            guess = int(r["probs"][t].argmax())
            error = float(np.linalg.norm(r["joints_mm"][t] - joints_true[t], axis=-1).mean())
            ax.set_title(f"{method}\n{ACTIONS[guess]} ({r['probs'][t, guess]:.2f}), {error:.1f} mm", fontsize=8,
                         color="tab:green" if guess == label else "tab:red")
            artists += pred + true
        heading.set_text(f"{title}\nframe {t + 1}/{T}, true action {ACTIONS[label]} (black dashed: true pose)")
        return artists

    anim = animation.FuncAnimation(fig, update, frames=T, interval=1000 / fps, blit=False)
    return _save(anim, fig, name, fps)
