"""Plots for the notebooks, and the one helper that saves figures.

Every figure made on the synthetic benchmark says so in its title: pass the
``source`` label from :func:`data_source`.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from .camera import FPHA_DEPTH
from .paths import figures_dir
from .skeleton import ACTIONS, BONES, FINGER_CHAINS, JOINTS

FINGER_COLOURS = {"thumb": "tab:red", "index": "tab:orange", "middle": "tab:green", "ring": "tab:blue", "pinky": "tab:purple"}


FPHA_SUBJECTS = {f"Subject_{i}" for i in range(1, 7)}
FPHA_MIN_SEQUENCES = 1000  # FPHA's action split lists 1,175 sequences of subjects 1-6


def data_source(root: str | Path) -> str:
    """What data a root holds, for every title and results file: ``"synthetic"`` for a
    :mod:`handfuse.synth` tree; ``"FPHA"`` only for a root that looks like FPHA (its action split
    lists at least 1,000 sequences, all of FPHA's six subjects); otherwise the folder's name, as
    ``"data folder '<name>'"`` (a subset, or another dataset in FPHA's format, is not called FPHA)."""
    root = Path(root)
    info = root / "synth_info.json"
    if info.is_file() and json.loads(info.read_text()).get("synthetic"):
        return "synthetic"
    from .fpha import SPLIT_FILE

    split = root / SPLIT_FILE
    subjects = []
    if split.is_file():
        subjects = [line.split("/", 1)[0] for line in split.read_text(errors="replace").splitlines() if "/" in line]
    if len(subjects) >= FPHA_MIN_SEQUENCES and set(subjects) <= FPHA_SUBJECTS:
        return "FPHA"
    return f"data folder '{root.resolve().name}'"


def savefig(fig, name: str, formats=("png", "pdf")) -> list[Path]:
    """Save a figure under a stable name into figures/ (or $HANDFUSE_FIGURES) as PNG and PDF."""
    out = []
    for fmt in formats:
        path = figures_dir() / f"{name}.{fmt}"
        fig.savefig(path, dpi=130, bbox_inches="tight")
        out.append(path)
    return out


def bone_colour(child: int) -> str:
    for finger, chain in FINGER_CHAINS.items():
        if child in chain:
            return FINGER_COLOURS[finger]
    return "k"


def draw_skeleton_2d(ax, uv: np.ndarray, style: str = "-", alpha: float = 1.0, label: str | None = None) -> None:
    """Draw (21, 2) pixel coordinates as coloured bones."""
    for k, (a, b) in enumerate(BONES):
        ax.plot(uv[[a, b], 0], uv[[a, b], 1], style, color=bone_colour(b), lw=1.5, alpha=alpha,
                label=label if k == 0 else None)
    ax.scatter(uv[:, 0], uv[:, 1], s=6, c="w", edgecolors="k", linewidths=0.4, zorder=3, alpha=alpha)


def show_depth(ax, depth: np.ndarray, vmax: float = 1200.0, title: str | None = None) -> None:
    """A depth map in mm with invalid (zero) pixels in black."""
    shown = np.ma.masked_equal(depth, 0)
    cmap = plt.get_cmap("viridis").with_extremes(bad="black")
    ax.imshow(shown, cmap=cmap, vmin=150, vmax=vmax)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def depth_frame_figure(depth: np.ndarray, joints: np.ndarray, title: str):
    """A full 640x480 frame with the projected skeleton and a colour bar in mm."""
    fig, ax = plt.subplots(figsize=(7, 5.4))
    shown = np.ma.masked_equal(depth, 0)
    im = ax.imshow(shown, cmap=plt.get_cmap("viridis").with_extremes(bad="black"), vmin=150, vmax=1200)
    draw_skeleton_2d(ax, FPHA_DEPTH.project(joints))
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.035, label="depth (mm); black = no measurement")
    return fig


def occlusion_heatmap(rates: np.ndarray, actions: list[str], title: str):
    """(A, 21) fraction of frames in which the held object hides each joint, per action."""
    fig, ax = plt.subplots(figsize=(9, 0.22 * len(actions) + 1.5))
    im = ax.imshow(rates, aspect="auto", cmap="magma", vmin=0, vmax=max(0.05, float(rates.max())))
    ax.set_xticks(range(len(JOINTS)), JOINTS, rotation=90, fontsize=7)
    ax.set_yticks(range(len(actions)), actions, fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03, label="fraction of frames hidden by the object")
    return fig


def line_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], xlabel: str, ylabel: str, title: str,
                figsize: tuple[float, float], grid: bool = True, **style):
    """One line per label from ``curves[label] = (x, y)``, labelled axes, a title and a legend."""
    fig, ax = plt.subplots(figsize=figsize)
    for label, (x, y) in curves.items():
        ax.plot(x, y, label=label, **style)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if grid:
        ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return fig


def trajectory_figure(series: dict[str, np.ndarray], ylabel: str, title: str):
    """Curves over normalised time (0..1), one per label."""
    return line_figure({k: (np.linspace(0, 1, len(y)), y) for k, y in series.items()}, "normalised time", ylabel,
                       title, (6, 3), grid=False, marker=".")


def class_counts_figure(labels: list[int], title: str):
    fig, ax = plt.subplots(figsize=(10, 2.6))
    counts = np.bincount(labels, minlength=len(ACTIONS))
    ax.bar(range(len(ACTIONS)), counts, color="tab:blue")
    ax.set_xticks(range(len(ACTIONS)), ACTIONS, rotation=90, fontsize=6)
    ax.set_ylabel("sequences")
    ax.set_title(title, fontsize=10)
    return fig


# ----------------------------------------------------------------------------- training and models


def learning_curves(histories: dict[str, list[dict]], metric: str, ylabel: str, title: str):
    """Train loss (left) and a validation metric (right) per epoch, one line per run."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for label, hist in histories.items():
        epochs = [h["epoch"] for h in hist]
        a.plot(epochs, [h["train_loss"] for h in hist], marker=".", label=label)
        b.plot(epochs, [h[f"val_{metric}"] for h in hist], marker=".", label=label)
    a.set_xlabel("epoch"), a.set_ylabel("training loss"), a.set_yscale("log")
    b.set_xlabel("epoch"), b.set_ylabel(ylabel)
    b.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def per_joint_bars(errors: dict[str, list[float]], title: str):
    """Mean error per joint (mm), grouped bars per model."""
    fig, ax = plt.subplots(figsize=(10, 3.2))
    width = 0.8 / len(errors)
    for k, (label, err) in enumerate(errors.items()):
        ax.bar(np.arange(len(JOINTS)) + k * width, err, width, label=label)
    ax.set_xticks(np.arange(len(JOINTS)) + 0.4 - width / 2, JOINTS, rotation=90, fontsize=7)
    ax.set_ylabel("mean error (mm)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return fig


def success_curves(curves: dict[str, tuple[list[float], list[float]]], title: str):
    """Fraction of frames with every joint within d mm, against d (the standard hand pose curve)."""
    return line_figure({k: (d, np.asarray(frac) * 100) for k, (d, frac) in curves.items()},
                       "max joint error threshold d (mm)", "frames within d (%)", title, (5, 3.5))


def confusion_figure(confusion: np.ndarray, title: str):
    """Row-normalised confusion matrix over the 45 actions (rows: true)."""
    conf = np.asarray(confusion, float)
    conf = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(8.5, 8))
    im = ax.imshow(conf, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(ACTIONS)), ACTIONS, rotation=90, fontsize=5)
    ax.set_yticks(range(len(ACTIONS)), ACTIONS, fontsize=5)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03, label="fraction of the true class")
    return fig


def attention_heatmap(weights: list[np.ndarray], rows: list[str], title: str):
    """Temporal attention over the frames of a few sequences, one row each (padded with blanks)."""
    T = max(len(w) for w in weights)
    grid = np.full((len(weights), T), np.nan)
    for i, w in enumerate(weights):
        grid[i, : len(w)] = w
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.2))
    im = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel("frame")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03, label="attention weight")
    return fig


# ----------------------------------------------------------------------------- fusion methods


def frame_error_figure(series: dict[str, np.ndarray], title: str):
    """Mean 3D joint error (mm) of every frame of one sequence, one line per model."""
    return line_figure({k: (np.arange(len(e)), e) for k, e in series.items()}, "frame", "mean joint error (mm)", title,
                       (6.5, 3), marker=".")


def sweep_figure(x: list[float], curves: dict[str, dict[str, list]], xlabel: str, title: str,
                 original: dict[float, tuple[float, float]] | None = None):
    """Accuracy (left) and pose error (right) against a swept parameter.  ``curves[label]`` has
    ``accuracy`` and ``error_mm`` lists of [mean, half-width]; ``original`` maps x to the original's
    (accuracy, error) on FPHA, drawn apart and labelled as such."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for label, c in curves.items():
        for ax, key in ((a, "accuracy"), (b, "error_mm")):
            mean = np.array([v[0] for v in c[key]])
            hw = np.nan_to_num(np.array([v[1] for v in c[key]], dtype=float))
            ax.errorbar(x, mean, yerr=hw, marker="o", capsize=3, label=label)
    if original:
        xs = sorted(original)
        a.plot(xs, [original[v][0] for v in xs], "s--", color="grey", label="original, FPHA (2019)")
        b.plot(xs, [original[v][1] for v in xs], "s--", color="grey", label="original, FPHA (2019)")
    a.set_ylabel("action accuracy (%)"), b.set_ylabel("pose error (mm)")
    for ax in (a, b):
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    a.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def when_fusion_helps_figure(values: list[float], headroom: list, shares: dict[str, list], title: str):
    """``08``'s answer: the oracle headroom (left, mm) and each method's share of it (right, %) against
    the generator's action-pose coupling; every point a mean with its 95 % interval over seeds."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, curves, label in ((a, {"oracle HPE against the w_eq one": headroom}, "headroom (mm)"),
                              (b, shares, "share of the headroom recovered (%)")):
        for name, points in curves.items():
            mean = np.array([p[0] for p in points], float)
            hw = np.nan_to_num(np.array([p[1] for p in points], dtype=float))
            ax.errorbar(values, mean, yerr=hw, marker="o", capsize=3, label=name)
        ax.set_xlabel("action-pose coupling (1: the action sets the grasp)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    b.axhline(0.0, color="k", lw=0.8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def grid_figure(values: list[float], error_mm: np.ndarray, accuracy: np.ndarray, title: str):
    """Pose error and accuracy over an eta (rows) x zeta (columns) grid, as annotated contour maps."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, z, label, cmap in ((axes[0], error_mm, "pose error (mm)", "viridis_r"),
                               (axes[1], accuracy, "accuracy (%)", "viridis")):
        z = np.asarray(z, float)
        filled = ax.contourf(values, values, z, levels=12, cmap=cmap)
        for i, eta in enumerate(values):
            for j, zeta in enumerate(values):
                ax.annotate(f"{z[i, j]:.1f}", (zeta, eta), ha="center", va="center", fontsize=8, color="white")
        ax.set_xlabel("zeta (action mix)"), ax.set_ylabel("eta (pose mix)")
        fig.colorbar(filled, ax=ax, label=label)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def generality_figure(tables: dict[str, dict], methods: list[str], source: str, seeds: int):
    """Per pair of models (``tables``: pair label -> rows as ``report.results_table`` takes them), the
    test accuracy (left) and pose error (right) of each method, bars with 95 % intervals over seeds
    (ground-truth crop centres)."""
    pairs = list(tables)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(methods)
    x = np.arange(len(pairs))
    for ax, metric, label in ((axes[0], "accuracy", "action accuracy (%)"), (axes[1], "error_mm", "pose error (mm)")):
        for m, name in enumerate(methods):
            cells = [tables[p][name]["gt"][metric] for p in pairs]  # [mean, half-width] each
            means = np.array([c[0] for c in cells])
            hw = np.array([0.0 if not np.isfinite(c[1]) else c[1] for c in cells])
            ax.bar(x + (m - (len(methods) - 1) / 2) * width, means, width * 0.95, yerr=hw, capsize=3, label=name)
        ax.set_xticks(x, pairs, fontsize=8)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        # the axis holds every interval whole (a whisker running off the axis reads as a bigger one)
        cells = np.array([tables[p][n]["gt"][metric] for p in pairs for n in methods], dtype=float)  # (n, 2)
        means, hw = cells[:, 0], np.nan_to_num(cells[:, 1], nan=0.0, posinf=0.0)
        low, high = float((means - hw).min()), float((means + hw).max())
        pad = 0.08 * (high - low) + 0.2
        ax.set_ylim(max(0.0, low - pad), high + pad)
    axes[0].legend(fontsize=8, ncol=2)
    fig.suptitle(f"Every method with every pair of models ({source}, 95 % intervals over {seeds} seeds)")
    fig.tight_layout()
    return fig
