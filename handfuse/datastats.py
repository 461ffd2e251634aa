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


def realism(fpha: FPHA, refs: list[SequenceRef], frames_per_sequence: int | None = 2) -> dict[str, float | int]:
    """Realism of the depth on ``frames_per_sequence`` evenly spaced frames of each sequence
    (None: every frame):

    - ``zero_fraction``: the mean fraction of zero (invalid) pixels;
    - ``hand_mm_p5`` / ``_p95``: percentiles of the hand's depth, from its joints;
    - ``background_mm_p5`` / ``_p95``: of the valid pixels more than 150 mm behind the farthest joint;
    - ``valid_mm_p5`` / ``_p50`` / ``_p95``: of all valid pixels, pooled over the frames;
    - ``no_gap_fraction``: the fraction of frames with no empty 40 mm stretch of depth between
      the hand and the rest of the scene (:func:`no_depth_gap`);
    - ``frames``: how many frames were measured.
    """
    zeros, hand, background, no_gap = [], [], [], []
    valid = np.zeros(1 << 16, dtype=np.int64)  # pooled histogram of valid depths, 1 mm bins
    for ref in refs:
        joints = fpha.read_skeleton(ref)
        count = len(joints) if frames_per_sequence is None else frames_per_sequence
        for t in np.unique(np.linspace(0, len(joints) - 1, count).astype(int)):
            depth = fpha.read_depth(ref, int(t))
            zeros.append(float((depth == 0).mean()))
            hand.append(joints[t, :, 2])
            far = depth[depth > joints[t, :, 2].max() + 150]
            background.append(far[:: max(1, far.size // 2000)])
            valid += np.bincount(depth.ravel(), minlength=1 << 16)
            no_gap.append(no_depth_gap(depth, joints[t]))
    hand_z, back_z = np.concatenate(hand), np.concatenate(background)
    valid[0] = 0
    cum = np.cumsum(valid) / max(valid.sum(), 1)
    p5, p50, p95 = (float(np.searchsorted(cum, q)) for q in (0.05, 0.50, 0.95))
    return {"zero_fraction": float(np.mean(zeros)),
            "hand_mm_p5": float(np.percentile(hand_z, 5)), "hand_mm_p95": float(np.percentile(hand_z, 95)),
            "background_mm_p5": float(np.percentile(back_z, 5)), "background_mm_p95": float(np.percentile(back_z, 95)),
            "valid_mm_p5": p5, "valid_mm_p50": p50, "valid_mm_p95": p95,
            "no_gap_fraction": float(np.mean(no_gap)), "frames": len(no_gap)}


GAP_MM = 40.0  # the empty stretch of depth that separates the hand from the rest of the scene
GAP_BIN_MM = 10.0
GAP_REACH_MM = 150.0  # how far behind the hand's farthest joint such a stretch may begin


def no_depth_gap(depth: np.ndarray, joints: np.ndarray) -> bool:
    """True when a frame has no empty 40 mm stretch of depth between the hand and the rest of
    the scene, so that no depth threshold cuts the hand out of it.

    Precisely: the valid pixels of ``depth`` (H, W, mm; 0 = invalid) are binned in 10 mm bins
    from the depth of the hand's farthest joint (``joints`` (21, 3), mm, camera frame) to 190 mm
    behind it; a bin is empty when it holds at most max(2, 0.2 % of the frame's valid pixels),
    the rule of the depth-only hand centre (``handfuse.preprocess.foreground_threshold``), so
    that a few flying pixels do not fill it.  The frame has a gap when 4 consecutive bins (40 mm)
    are empty, that is an empty 40 mm stretch beginning within 150 mm behind the farthest
    joint (the hand's surface and a held object lie within that); otherwise it has none.
    Nothing at all behind the hand counts as a gap."""
    z = depth[depth > 0]
    bins = int(round((GAP_REACH_MM + GAP_MM) / GAP_BIN_MM))
    edges = float(np.max(joints[:, 2])) + GAP_BIN_MM * np.arange(bins + 1)
    counts, _ = np.histogram(z, edges)
    empty = (counts <= max(2.0, 0.002 * z.size)).astype(int)
    run = int(round(GAP_MM / GAP_BIN_MM))
    return not bool((np.convolve(empty, np.ones(run, dtype=int), "valid") == run).any())


def realism_reference() -> dict:
    """The real FPHA figures that scene v2 is calibrated against: **a user's measurement on the
    84 frames of one real FPHA sequence** (``Subject_1/put_salt/1``, issue 23), not a
    measurement of FPHA as a whole.  Keys as :func:`realism`'s; ``zero_fraction_range`` is the
    per-frame range, ``hand_mm_raised`` / ``hand_mm_lowering`` the hand's depth while raised and
    while lowering the salt shaker toward the table, whose near edge lay at ``near_table_mm``."""
    return {"source": "a user's measurement on 84 real FPHA frames of Subject_1/put_salt/1 (issue 23)",
            "frames": 84, "zero_fraction": 0.326, "zero_fraction_range": (0.30, 0.34),
            "valid_mm_p5": 330.0, "valid_mm_p50": 684.0, "valid_mm_p95": 900.0,
            "no_gap_fraction": 28 / 84, "hand_mm_raised": (310.0, 380.0), "hand_mm_lowering": (355.0, 451.0),
            "near_table_mm": (420.0, 650.0)}


def realism_table(measured: dict, source: str = "synthetic") -> str:
    """A Markdown table of :func:`realism`'s measures (``measured``, on data from ``source``)
    beside :func:`realism_reference`'s real FPHA figures, labelled as a user's measurement on one
    sequence."""
    ref = realism_reference()
    rows = [("frames measured", f"{measured['frames']}", f"{ref['frames']}"),
            ("zero pixels", f"{100 * measured['zero_fraction']:.1f} %",
             f"{100 * ref['zero_fraction']:.1f} % (per frame {100 * ref['zero_fraction_range'][0]:.0f}-"
             f"{100 * ref['zero_fraction_range'][1]:.0f} %)"),
            ("valid depth p5 / p50 / p95 (mm)",
             " / ".join(f"{measured[f'valid_mm_p{q}']:.0f}" for q in (5, 50, 95)),
             " / ".join(f"{ref[f'valid_mm_p{q}']:.0f}" for q in (5, 50, 95))),
            ("frames with no empty 40 mm of depth between hand and scene",
             f"{100 * measured['no_gap_fraction']:.0f} %", f"{100 * ref['no_gap_fraction']:.0f} % (28 of 84)"),
            ("hand depth (mm)", f"p5-p95 {measured['hand_mm_p5']:.0f}-{measured['hand_mm_p95']:.0f}",
             f"{ref['hand_mm_raised'][0]:.0f}-{ref['hand_mm_raised'][1]:.0f} raised, "
             f"{ref['hand_mm_lowering'][0]:.0f}-{ref['hand_mm_lowering'][1]:.0f} lowering"),
            ("background depth p5-p95 (mm)", f"{measured['background_mm_p5']:.0f}-{measured['background_mm_p95']:.0f}",
             f"near table edge {ref['near_table_mm'][0]:.0f}-{ref['near_table_mm'][1]:.0f}")]
    head = ["measure", f"measured ({source})", "real FPHA: a user's measurement, 84 frames of Subject_1/put_salt/1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


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
