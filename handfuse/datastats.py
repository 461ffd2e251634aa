"""Descriptive statistics of an FPHA-shaped root: counts, realism of the depth, occlusion.

The same functions describe the real FPHA and the synthetic benchmark, so that
the two can be compared side by side (the data notebook and the benchmarks use them).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .fpha import FPHA, SequenceRef
from .skeleton import ACTIONS, NUM_JOINTS


def summary(fpha: FPHA) -> dict[str, int]:
    """Subjects, sequences and frames on each side of the action split."""
    out = {"subjects": len(fpha.subjects), "actions": len({r.action for r in fpha.sequences})}
    for side in ("train", "test"):
        refs = fpha.split(side)
        out[f"{side}_sequences"] = len(refs)
        out[f"{side}_frames"] = sum(fpha.num_frames(r) for r in refs)
    return out


def realism(fpha: FPHA, refs: list[SequenceRef], frames_per_sequence: int = 2) -> dict[str, float]:
    """Zero-pixel fraction, the hand's depth range (from the joints) and the background's
    depth range (valid pixels more than 150 mm behind the farthest joint), as percentiles."""
    zeros, hand, background = [], [], []
    for ref in refs:
        joints = fpha.read_skeleton(ref)
        for t in np.linspace(0, len(joints) - 1, frames_per_sequence).astype(int):
            depth = fpha.read_depth(ref, int(t))
            zeros.append(float((depth == 0).mean()))
            hand.append(joints[t, :, 2])
            far = depth[depth > joints[t, :, 2].max() + 150]
            background.append(far[:: max(1, far.size // 2000)])
    hand_z, back_z = np.concatenate(hand), np.concatenate(background)
    return {"zero_fraction": float(np.mean(zeros)),
            "hand_mm_p5": float(np.percentile(hand_z, 5)), "hand_mm_p95": float(np.percentile(hand_z, 95)),
            "background_mm_p5": float(np.percentile(back_z, 5)), "background_mm_p95": float(np.percentile(back_z, 95))}


def object_occlusion(root: str | Path, fpha: FPHA) -> tuple[np.ndarray, np.ndarray]:
    """Per action: the fraction of frames in which the object hides each joint (45, 21), and the
    number of frames per action (45,).  Synthetic roots only (they record visibility)."""
    from .synth import read_visibility

    hidden = np.zeros((len(ACTIONS), NUM_JOINTS))
    frames = np.zeros(len(ACTIONS))
    for ref in fpha.sequences:
        vis = read_visibility(root, ref)  # (T, 21) codes
        hidden[ref.label] += (vis == "o").sum(axis=0)
        frames[ref.label] += len(vis)
    return hidden / np.maximum(frames, 1)[:, None], frames
