"""How well the hand is found from depth alone, and what it costs the pose: ``python -m benchmarks.localise``.

On the test split of a synthetic benchmark (``--preset cpu``, ``--scene v1`` or ``v2`` where the
generator has it) this measures, for every frame, the 3-D distance (mm) from the crop centre to the
middle MCP, for

* ``centre_from_depth``: the old depth centre (:func:`handfuse.preprocess.centre_from_depth`);
* ``tracker``: :func:`handfuse.localise.locate_sequence` without learned refinement;
* ``tracker+comref``: the same with the ComRefNet refinement (:func:`handfuse.localise.train_refiner`,
  trained here on the training split, or loaded when its run is finished);
* ``tracker+comref-1``: the same refinement without its fine stage (the first stage alone);

with the mean, 90th percentile and largest error and the number of lost frames, and the pose error
(mean joint error, mm) of the preset's pre-trained HPE on crops centred by each, beside the
ground-truth-centred crops and as a ratio to them.  A lost frame is cropped around the nearest
located frame's centre (the crop cache's policy, :func:`handfuse.cache.fill_lost`) and counted.

It also measures the three localisers on :func:`hard_frames`: frames with FPHA's measured
difficulties (docs/data.md) built from the synthetic renderer's primitives: the hand right against
a table whose depth continues the hand's (no empty stretch in the histogram), the near table edge
across the bottom of the frame beside the forearm, clutter, the sensor's holes, and in some the
other hand entering at the bottom left.

With ``--rolled`` it measures the tracker and the refined tracker, frame by frame, on the test
sequences of the dev benchmark (``--dev-seed``) seen by a camera rolled about its optical axis by
each of :data:`ROLLS_DEG` (:func:`rolled_sequences`): FPHA's camera sits on the shoulder, and
as the body leans the forearm enters across the bottom right corner or from the right edge.  The
frames are rendered as the generator renders them (at 0 degrees they are the benchmark's own), with
the share of frames more than 100 mm from the middle MCP and the share whose centre lies more than
40 mm from every joint (off the hand).

With ``--sensor`` (and ``--detector POLICY``: where the refined tracker's learned detector may overrule, default
``always``, as in the crop cache; ``locate`` and ``predict`` run ``no-table``) it measures the same two, on
the same kind of sequences (unrolled, every ``--every``-th,
rendered at ``--fps`` frames a second: FPHA records 30, the cpu preset renders 6), with every frame
changed in one of the ways a real recording may differ from the synthetic sensor model
(:data:`SENSOR_CHANGES`): wider projector shadows, the far return lost in patches, depth smoothed
across silhouettes (mixed depths), more noise, more speckle, the whole scene nearer and smaller or
farther and larger (depths scaled), the camera moved nearer or farther (:data:`CAMERA_MOVES`: the scene
rendered anew, its sizes kept), the localiser run without fitting the table plane (:data:`LOCALISER_CHANGES`:
clutter that hides the table), and, as a stress beyond real frames, holes cut across the hand itself.  Beside each it gives the change of the
mean centre error against the frames as rendered, paired by sequence (95 % t-interval over sequences,
one refiner).

With ``--predict`` it measures what ``python -m handfuse predict`` gives a user: the trained baseline of
each seed (:func:`handfuse.predict.load_pipeline`, as ``make reproduce`` trained it) on the dev benchmark's
test sequences (``--dev-seed``, every ``--every``-th), cropped as ``predict`` crops them around the tracker's
centres alone, the refined ones, and the ground truth: the pose error of each against the annotation,
with the refined minus the tracker-alone error paired by seed (95 % t-interval).

With ``--hard-sequences`` it measures what ``locate`` gives on hard scenes as sequences: one
:func:`hard_sequence` of ``HARD_SEQUENCE_FRAMES`` frames for each of the seeds kept for tuning
(:data:`HARD_SEQUENCE_SEEDS`), located as one recording (the first frame detected, the rest tracked),
by the tracker alone (forward, and both ways as ``locate --no-refine`` runs it) and by the refiner ``locate``
takes (``--runs``, default the one shipped with handfuse) with its learned detector overruling in every frame,
as ``locate`` lets it (only in frames without a table plane) forward only, and as ``locate`` runs it: that,
tracked forward and backward (:data:`SEQUENCE_LOCALISERS`).  These scenes are built apart from the generator
the detector was trained on, as a real recording is.

With ``--dev`` it measures instead where the localiser's settings are chosen: the test split of the
benchmark generated with another generator seed (``--dev-seed``, default 1; settings are also
checked on 2), whose scenes and subjects no model here was trained on and which is not the test
split the study scores, with the hard frames of seeds 100 and up (those 0 and up are the test's).
The refiner and the HPE are
still those of the preset's own benchmark.  The validation split (90 sequences at the cpu preset)
holds too few of the rare failures (a wrong region taken for the forearm) to choose between rules.

Prints the numbers and writes them to ``benchmarks/localise.json`` (``<preset>/<scene>``, or
``<preset>/<scene>-dev<N>`` for generator seed N).  Every number here is synthetic, never an FPHA number.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from handfuse.camera import FPHA_DEPTH
from handfuse.config import get_preset
from handfuse.dataconfig import SynthConfig
from handfuse.localise import (ALWAYS, BOTH_WAYS_ON_RECORDINGS, DETECTOR_ON_RECORDINGS, DETECTOR_POLICIES,
                               locate_sequence)
from handfuse.preprocess import centre_from_depth, centre_from_joints, crop
from handfuse.synth import render as R
from handfuse.synth.hand import HandShape
from handfuse.synth.sequence import frame_scene, make_sequence

ROLLS_DEG = (-30.0, -15.0, 0.0, 15.0, 30.0)  # --rolled's camera rolls (positive: the image turns clockwise)

OUT = Path(__file__).with_name("localise.json")
HARD_ACTIONS = ("put_salt", "sprinkle", "pour_milk", "open_juice_bottle", "scratch_sponge", "use_calculator",
                "write", "give_coin", "stir", "flip_sponge")
_RENDERER: R.Renderer | None = None


# ----------------------------------------------------------------------------- hard frames


def table_through(depth_bottom: float, depth_top: float, K=FPHA_DEPTH) -> tuple[np.ndarray, float]:
    """The plane (n, d), n . p = d, n away from the camera, with no sideways tilt, at depth
    ``depth_bottom`` on the bottom row of the image and ``depth_top`` on the top row."""
    r_b, r_t = (K.height - 1 - K.v0) / K.fy, -K.v0 / K.fy
    # z(v) = d / (a r + b) on the row v with r = (v - v0) / fy: solve a r + b = 1 / z at both rows, d = 1
    a = (1 / depth_bottom - 1 / depth_top) / (r_b - r_t)
    b = 1 / depth_bottom - a * r_b
    n = np.array([0.0, a, b])
    scale = np.linalg.norm(n)
    return n / scale, 1.0 / scale


def _ray(u: float, v: float, K=FPHA_DEPTH) -> np.ndarray:
    return np.array([(u - K.u0) / K.fx, (v - K.v0) / K.fy, 1.0])


def _shift(seq, delta: np.ndarray):
    """A synthetic sequence moved by ``delta`` (3,) mm: joints, wrist and held objects."""
    seq.joints = seq.joints + delta
    seq.wrist = seq.wrist + delta
    seq.parts = [(part, rots, centres + delta) for part, rots, centres in seq.parts]
    return seq


def hard_sequence(seed: int, frames: int = 1, other_hand: bool | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """``frames`` consecutive (H, W) uint16 depth frames of a hand working right against a table,
    with the true centres (T, 3) mm (the middle MCP).  See the module docstring: the table recedes
    from 400-470 mm on the bottom row (the near table edge) to 950-1150 mm on the top row; a
    synthetic hand (an action of :data:`HARD_ACTIONS`) is moved low in the frame until its middle
    MCP lies 15-40 mm in front of the table, so the hand's depths run into the table's without a
    gap; the forearm runs from the wrist to below the bottom edge, right of the hand and above
    the table's near edge; clutter stands on the table; the sensor model adds noise, shadows and dropouts, and large
    holes are cut as in real frames; with ``other_hand`` (default: every third seed) a left forearm
    and fist enter at the bottom left."""
    global _RENDERER
    _RENDERER = _RENDERER or R.Renderer(FPHA_DEPTH)
    K = FPHA_DEPTH
    rng = np.random.default_rng([seed, 4242])
    action = HARD_ACTIONS[seed % len(HARD_ACTIONS)]
    # the hand's motion of scene v1 (this function builds the scene around it itself): the frames stay
    # those the benchmark has always measured
    seq = make_sequence(action, HandShape.sample(rng), SynthConfig(scene="v1"), rng)
    start = int(rng.integers(0, max(1, len(seq) - frames + 1)))
    ts = [min(start + k, len(seq) - 1) for k in range(frames)]
    n, d = table_through(rng.uniform(400, 470), rng.uniform(950, 1150))
    mid = centre_from_joints(seq.joints[ts[len(ts) // 2]])
    ray = _ray(rng.uniform(260, 420), rng.uniform(330, 400))  # the middle MCP goes low in the frame
    table = ray * d / (n @ ray)
    _shift(seq, table * (1 - rng.uniform(15, 40) / table[2]) - mid)
    truth = centre_from_joints(seq.joints[ts]).astype(np.float32)  # (T, 3)
    scene = R.Scene(plane=(n, d))
    for _ in range(rng.integers(2, 5)):  # boxes and cans standing on the table, away from the hand
        ray = _ray(rng.choice([rng.uniform(20, 200), rng.uniform(450, 620)]), rng.uniform(20, 330))
        ground = ray * d / (n @ ray)
        h, w = rng.uniform(40, 160), rng.uniform(25, 60)
        top = ground - n * h
        if rng.random() < 0.5:
            scene.cylinders.append((ground, top, w, R.CLUTTER))
        else:
            side = np.cross(n, [1.0, 0.0, 0.0])
            axes = np.stack([[1.0, 0.0, 0.0], side / np.linalg.norm(side), n], -1)
            scene.boxes.append(((ground + top) / 2, axes, np.array([w, w, h / 2]), R.CLUTTER))
    if other_hand if other_hand is not None else seed % 3 == 2:  # the left forearm and fist, bottom left
        fist = _ray(rng.uniform(60, 180), rng.uniform(330, 420)) * rng.uniform(340, 420)
        entry = _ray(rng.uniform(0, 100), 560.0) * rng.uniform(220, 280)
        scene.capsules.append((entry, fist, 27.0, R.ARM))
        scene.capsules.append((fist, fist + np.array([0.0, -25.0, 10.0]), 38.0, R.HAND))
    background = _RENDERER.render(scene)
    sensor = R.SensorModel()
    holes = _holes(rng, K.project(truth).mean(0))
    depths = []
    elbow = _ray(FPHA_DEPTH.project(truth[0])[0] + rng.uniform(30, 130), 600.0) * rng.uniform(230, 300)
    for t in ts:
        moving = frame_scene(seq, t)
        a, _, radius, label = moving.capsules[0]  # the forearm: from the wrist down to the body, above the table
        moving.capsules[0] = (a, elbow, radius, label)
        zbuf, _ = _RENDERER.render(moving, background)
        depth = sensor.measure(zbuf, rng)
        depth[holes] = 0
        depths.append(depth)
    return depths, truth


def _holes(rng: np.random.Generator, hand_uv: np.ndarray, K=FPHA_DEPTH) -> np.ndarray:
    """(H, W) bool: large structured holes (a few big blobs, as real frames' projector shadows and
    dark or shiny patches), kept off the hand itself (70 pixels around its centre)."""
    holes = np.zeros((K.height, K.width), np.uint8)
    for _ in range(rng.integers(6, 12)):
        centre = (int(rng.uniform(0, K.width)), int(rng.uniform(0, K.height)))
        axes = (int(rng.uniform(30, 110)), int(rng.uniform(15, 60)))
        cv2.ellipse(holes, centre, axes, rng.uniform(0, 180), 0, 360, 1, -1)
    cv2.circle(holes, (int(hand_uv[0]), int(hand_uv[1])), 70, 0, -1)
    return holes.astype(bool)


def hard_frames(seeds) -> tuple[list[np.ndarray], np.ndarray]:
    """One hard frame per seed: (frames, true centres (N, 3))."""
    depths, truth = zip(*(hard_sequence(s) for s in seeds))
    return [d[0] for d in depths], np.concatenate(truth)


# ----------------------------------------------------------------------------- a rolled camera


def roll_rotation(degrees: float) -> np.ndarray:
    """(3, 3): camera coordinates -> those of the camera rolled by ``degrees`` about its optical axis."""
    a = np.radians(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def rolled_sequences(preset, seed: int, degrees: float, every: int = 1, nearer_mm: float = 0.0):
    """The test sequences (every ``every``-th) of ``preset``'s benchmark made with generator ``seed``,
    rendered as :func:`handfuse.synth.generate.write_sequence` renders them but by a camera rolled by
    ``degrees`` and moved ``nearer_mm`` along its optical axis toward the scene (negative: away):
    (depth frames [(H, W) uint16], annotated joints (T, 21, 3) mm in the moved camera) each."""
    from handfuse.synth.generate import annotate, render_frames, sequence_rng, subject_shape

    cfg, refs = _test_refs(preset, seed)
    rotation = roll_rotation(degrees)
    shift = None if nearer_mm == 0 else np.array([0.0, 0.0, -float(nearer_mm)])
    for ref in refs[::every]:
        rng = sequence_rng(cfg, ref)
        shape = subject_shape(cfg, ref.subject)
        frames = make_sequence(ref.action, shape, cfg, rng)
        joints = annotate(frames, shape, cfg, rng)  # drawn first, as the generator does
        depths = [depth for depth, _, _ in render_frames(frames, cfg, rng, rotation, shift)]
        joints = joints @ rotation.T if shift is None else joints @ rotation.T + shift
        yield depths, joints.astype(np.float32)


def measure_rolled(preset, seed: int, refiner, every: int = 3, rolls=ROLLS_DEG, progress: bool = True) -> dict:
    """Per roll of :data:`ROLLS_DEG`: the tracker's and the refined tracker's centre errors
    (:func:`on_hand_errors`) on :func:`rolled_sequences`."""
    out = {}
    for degrees in rolls:
        found = {"tracker": [], "tracker+comref": []}
        joints = []
        for depths, j in tqdm(rolled_sequences(preset, seed, degrees, every), desc=f"rolled {degrees:+g} deg",
                              total=len(_test_refs(preset, seed)[1][::every]), unit="seq",
                              disable=not progress):
            found["tracker"].append(locate_sequence(depths).centres)
            found["tracker+comref"].append(locate_sequence(depths, refiner=refiner).centres)
            joints.append(j)
        j = np.concatenate(joints)
        out[f"{degrees:+g}"] = {name: on_hand_errors(np.concatenate(c), j) for name, c in found.items()}
    return out


def on_hand_errors(found: np.ndarray, joints: np.ndarray) -> dict:
    """:func:`centre_errors` of the found centres (N, 3) (NaN: lost) against the middle MCP of the
    annotated ``joints`` (N, 21, 3), with ``over_100mm_pct``, the share (%) of found frames more than
    100 mm from it, and ``off_hand_pct``, of those more than 40 mm from every joint (off the hand)."""
    c, j = np.asarray(found, np.float64), np.asarray(joints, np.float64)
    truth = centre_from_joints(j)
    err = np.linalg.norm(c - truth, axis=1)
    off = np.min(np.linalg.norm(j - c[:, None], axis=2), axis=1)
    ok = np.isfinite(err)
    return {**centre_errors(c, truth), "over_100mm_pct": float(100 * (err[ok] > 100).mean()),
            "off_hand_pct": float(100 * (off[ok] > 40).mean())}


# ----------------------------------------------------------------------------- another sensor
# What a real recording may do that the synthetic sensor model does not, one change at a time, applied to the
# rendered (H, W) uint16 depth frames of --sensor's sequences: (the change, how it scales the scene: the joints
# move with it).  Each draws from the sequence's own generator, so a run gives the same frames every time.


def _resized(coarse: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A coarse (h, w) float32 field of draws smoothly resized (bilinear) to a frame of ``shape`` (H, W)."""
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def _without(depth: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """``depth`` with the ``holes`` (H, W) mask made 3 pixels wider on each side along the row read as zero."""
    return np.where(cv2.dilate(holes.astype(np.uint8), np.ones((1, 7), np.uint8)) > 0, 0, depth).astype(np.uint16)


def wider_shadows(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every large hole (200 pixels or more: projector shadows, dark patches) 3 pixels wider on
    each side along the row (a sensor with a wider projector baseline); small dropouts stay."""
    zero = depth == 0
    _, labels, stats, _ = cv2.connectedComponentsWithStats(zero.astype(np.uint8), connectivity=8)
    return _without(depth, np.isin(labels, np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= 200)) & zero)


def far_return_lost(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Half of everything beyond 800 mm (the far wall, the back of the table) reads zero, in patches."""
    patches = _resized(rng.random((depth.shape[0] // 16, depth.shape[1] // 16), dtype=np.float32), depth.shape)
    return np.where((depth > 800) & (patches < 0.5), 0, depth).astype(np.uint16)


def smoothed_edges(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each valid pixel the mean of the valid pixels of its 5 x 5 window: a sensor's own filtering,
    which leaves mixed depths along every silhouette; holes stay holes."""
    valid = (depth > 0).astype(np.float32)
    total = cv2.boxFilter(depth.astype(np.float32), -1, (5, 5), normalize=False)
    count = cv2.boxFilter(valid, -1, (5, 5), normalize=False)
    return np.where(depth > 0, np.rint(total / np.maximum(count, 1.0)), 0).astype(np.uint16)


def more_noise(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Added depth noise, correlated over 4 pixels, with a standard deviation of 0.5 % of the depth
    (2.5 mm at 500 mm, where the synthetic sensor model's jitter is 0.7 mm: ``SensorModel.jitter``)."""
    noise = _resized(rng.standard_normal((depth.shape[0] // 4, depth.shape[1] // 4)).astype(np.float32), depth.shape)
    z = depth.astype(np.float32)
    return np.where(depth > 0, np.rint(z * (1 + 0.005 * noise)), 0).astype(np.uint16)


def speckle(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """5 % more pixels, anywhere, read zero."""
    return np.where(rng.random(depth.shape) < 0.05, 0, depth).astype(np.uint16)


def holes_on_the_skin(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A stress, beyond what real frames show: every hole, the sensor's scattered dropouts on the hand
    included, 3 pixels wider on each side along the row, which cuts the hand into strips."""
    return _without(depth, depth == 0)


def scaled(factor: float):
    """The whole scene ``factor`` times as far from the camera (every depth times ``factor``; the
    image is unchanged, so the scene is ``factor`` times its size too)."""
    def change(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.where(depth > 0, np.minimum(np.rint(depth.astype(np.float32) * factor), 65535), 0).astype(np.uint16)
    return change


def as_rendered(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The frame as the synthetic sensor model read it."""
    return depth


SENSOR_CHANGES = {
    "as rendered": (as_rendered, 1.0),
    "wider shadows": (wider_shadows, 1.0),
    "far return lost": (far_return_lost, 1.0),
    "smoothed edges": (smoothed_edges, 1.0),
    "more noise": (more_noise, 1.0),
    "speckle": (speckle, 1.0),
    "scene 15 % nearer, smaller": (scaled(0.85), 0.85),
    "scene 10 % farther, larger": (scaled(1.1), 1.1),
    "holes on the skin (stress)": (holes_on_the_skin, 1.0),
}
# ... and the camera moved along its optical axis, the scene rendered anew (its sizes kept): mm toward the scene
CAMERA_MOVES = {"camera 50 mm nearer": 50.0, "camera 50 mm farther": -50.0}
# ... and the frames as rendered, the localiser run otherwise (handfuse.localise.locate_sequence's keywords): no
# table plane fitted, as where clutter covers so much of a real table that no plane holds a large share of the pixels
LOCALISER_CHANGES = {"table not found": {"table": False}}


def measure_sensor(preset, seed: int, refiner, every: int = 6, changes=None,
                   progress: bool = True, detector: str = ALWAYS) -> dict:
    """Per change of :data:`SENSOR_CHANGES`, :data:`CAMERA_MOVES` and :data:`LOCALISER_CHANGES`: the tracker's and the refined
    tracker's centre errors (:func:`on_hand_errors`) on the test sequences (every ``every``-th) of
    ``preset``'s benchmark made with generator ``seed``, each frame changed so; and, for every change but
    the first, the change of the mean error against the first, per sequence, as a mean with its 95 %
    t-interval over the sequences.  ``detector``: where the refined tracker's learned detector may overrule
    (:func:`handfuse.localise.locate_sequence`)."""
    from handfuse.metrics import mean_ci95

    known = (*SENSOR_CHANGES, *CAMERA_MOVES, *LOCALISER_CHANGES)
    changes = known if changes is None else changes
    unknown = [c for c in changes if c not in known]
    if unknown:
        raise ValueError(f"changes: {unknown} unknown; known: {list(known)}")
    per_seq = {c: {"tracker": [], "tracker+comref": []} for c in changes}
    joints = {c: [] for c in changes}
    moves = sorted({CAMERA_MOVES.get(c, 0.0) for c in changes})  # each camera position rendered once
    total = len(_test_refs(preset, seed)[1][::every])
    rendered = zip(*(rolled_sequences(preset, seed, 0.0, every, nearer_mm=m) for m in moves))
    for k, views in enumerate(tqdm(rendered, desc="sensor changes", total=total, unit="seq", disable=not progress)):
        view = dict(zip(moves, views))
        for name in changes:
            change, factor = SENSOR_CHANGES.get(name, (as_rendered, 1.0))  # a camera move: the frames as rendered
            depths, j = view[CAMERA_MOVES.get(name, 0.0)]
            rng = np.random.default_rng([seed, k, 7001])  # every change of a sequence draws the same numbers
            changed = [change(d, rng) for d in depths]
            how = LOCALISER_CHANGES.get(name, {})
            per_seq[name]["tracker"].append(locate_sequence(changed, **how).centres.astype(np.float64))
            per_seq[name]["tracker+comref"].append(locate_sequence(changed, refiner=refiner, detector=detector, **how)
                                                   .centres.astype(np.float64))
            joints[name].append(j.astype(np.float64) * factor)
    out = {}
    base = changes[0]
    for name in changes:
        out[name] = {}
        for loc, found in per_seq[name].items():
            row = on_hand_errors(np.concatenate(found), np.concatenate(joints[name]))
            if name != base:
                diffs = np.array([_seq_mean(f, jn) - _seq_mean(f0, jb) for f, jn, f0, jb in
                                  zip(found, joints[name], per_seq[base][loc], joints[base])])
                diffs = diffs[np.isfinite(diffs)]
                mean, half = mean_ci95(diffs)
                row["mean_change_mm"] = {"mean": mean, "ci95": half, "sequences": int(len(diffs))}
            out[name][loc] = row
    return out


def _seq_mean(found: np.ndarray, joints: np.ndarray) -> float:
    """One sequence's mean centre error (mm) over its located frames (NaN when none was)."""
    err = np.linalg.norm(found - centre_from_joints(joints), axis=1)
    return float(np.nanmean(err)) if np.isfinite(err).any() else float("nan")


def refuse_own_benchmark(preset, dev_seed: int) -> None:
    """Settings are chosen on a dev benchmark: a ValueError when ``dev_seed`` is the generator seed of the
    preset's own benchmark, whose test split the study scores."""
    if dev_seed == preset.synth.seed:
        raise ValueError(f"--dev-seed {dev_seed} is the preset's own benchmark: its test split is the study's")


def store(preset_name: str, key: str, record: dict, out: Path | None = None) -> None:
    """Write ``record`` into ``out`` (default :data:`OUT`) under ``<preset_name>/<key>``, keeping every other
    record there: under the file's lock (:func:`handfuse.paths.exclusive`), so that modes run side by side
    each keep their record, and atomically, so that a reader never sees a torn file."""
    from handfuse.atomic import write_text
    from handfuse.paths import exclusive

    out = OUT if out is None else out
    with exclusive(out):
        everything = json.loads(out.read_text()) if out.is_file() else {}
        everything.setdefault(preset_name, {})[key] = record
        write_text(out, json.dumps(everything, indent=1) + "\n", "the benchmark's records")


def _test_refs(preset, seed: int) -> tuple:
    """(the generator config, the test sequences' references) of ``preset``'s benchmark made with
    generator ``seed``."""
    from dataclasses import replace

    from handfuse.synth.generate import sequence_refs

    cfg = replace(preset.synth, seed=seed)
    return cfg, sequence_refs(cfg)[1]


# ----------------------------------------------------------------------------- the measurement

LOCALISERS = ("centre_from_depth", "tracker", "tracker+comref-1", "tracker+comref")


def first_stage(refiner):
    """The refiner without its fine stage (:meth:`handfuse.localise.RefineConfig.fine_stage`)."""
    from dataclasses import replace

    from handfuse.localise import Refiner

    return Refiner(refiner.net, replace(refiner.cfg, fine_cube_mm=0.0), refiner.source)


def centre_errors(found: np.ndarray, truth: np.ndarray) -> dict:
    """Mean, 90th percentile and largest 3-D distance (mm) of the found centres (N, 3) (NaN: lost) to
    the true ones (N, 3), over the frames found, and the number lost."""
    err = np.linalg.norm(np.asarray(found, np.float64) - truth, axis=1)
    ok = err[np.isfinite(err)]
    stats = {"mean_mm": float(ok.mean()), "p90_mm": float(np.percentile(ok, 90)), "max_mm": float(ok.max())} if len(ok) \
        else {"mean_mm": float("nan"), "p90_mm": float("nan"), "max_mm": float("nan")}
    return {**stats, "lost": int((~np.isfinite(err)).sum()), "frames": int(len(err))}


def old_centres(depths: list[np.ndarray]) -> np.ndarray:
    """``centre_from_depth`` of every frame (T, 3), NaN where it raises (nothing found)."""
    out = np.full((len(depths), 3), np.nan, np.float32)
    for t, depth in enumerate(depths):
        try:
            out[t] = centre_from_depth(depth)
        except ValueError:
            pass
    return out


def find_hpe(fpha, preset, seed: int = 0, root: Path | None = None) -> Path | None:
    """The newest finished plain HPE run (``hpe-none-*-seed<seed>``) of the preset made on this very
    data (the same data fingerprint), or None."""
    from handfuse.runs import data_fingerprint, models_dir

    mine = data_fingerprint(fpha)
    found = []
    for run in models_dir(preset, root).glob(f"hpe-none-*-seed{seed}"):
        try:
            config = json.loads((run / "result.json").read_text())["config"]
        except (OSError, ValueError, KeyError):
            continue
        if (run / "best.pt").is_file() and config.get("data_fingerprint") == mine and config.get("preset") == preset.name:
            found.append(run)
    return max(found, key=lambda p: (p / "best.pt").stat().st_mtime_ns) if found else None


def load_hpe(run: Path):
    """The DeepPrior++ HPE of a finished pre-training run, built from the config in its ``result.json``."""
    from handfuse.dataconfig import from_dict
    from handfuse.models.hpe import HPEConfig
    from handfuse.models.registry import hpe_entry
    from handfuse.train import load_checkpoint

    config = json.loads((run / "result.json").read_text())["config"]
    net = hpe_entry("deepprior").build(from_dict(HPEConfig, config["hpe"]))
    net.load_state_dict(load_checkpoint(run / "best.pt")["model"])
    return net.eval()


def predict_joints(hpe, depths: list[np.ndarray], centres: np.ndarray, pre) -> np.ndarray:
    """(T, 21, 3) mm: the HPE on crops (``pre``: the preset's PreprocessConfig) around ``centres`` (T, 3)."""
    x = np.stack([crop(d, c, FPHA_DEPTH, pre.cube_mm, pre.crop) for d, c in zip(depths, centres)])
    with torch.inference_mode():
        out = hpe(torch.from_numpy(x)[:, None], None)["joints"].float().numpy()
    return out * pre.cube_mm / 2 + centres[:, None]


def measure(fpha, preset, refiner, hpe, progress: bool = True) -> dict:
    """Centre and pose errors of every localiser on the test split of ``fpha`` (module docstring),
    with the number of sequences where a localiser was more than 80 mm off in some frame."""
    from handfuse.cache import fill_lost
    from handfuse.metrics import mean_joint_error

    names = ("ground truth",) + LOCALISERS
    found = {name: [] for name in names}
    pose = {name: [] for name in names}
    truth_joints, seconds = [], {name: 0.0 for name in LOCALISERS}
    for ref in tqdm(fpha.test, desc="test sequences", unit="seq", disable=not progress):
        joints = fpha.read_skeleton(ref)
        depths = [fpha.read_depth(ref, t) for t in range(len(joints))]
        centres = {"ground truth": centre_from_joints(joints).astype(np.float32)}
        for name, locate in (("centre_from_depth", lambda: old_centres(depths)),
                             ("tracker", lambda: locate_sequence(depths).centres),
                             ("tracker+comref-1", lambda: locate_sequence(depths, refiner=first_stage(refiner)).centres),
                             ("tracker+comref", lambda: locate_sequence(depths, refiner=refiner).centres)):
            t0 = time.perf_counter()
            centres[name] = locate()
            seconds[name] += time.perf_counter() - t0
        for name in names:
            c = centres[name]
            found[name].append(c)
            lost = [t for t in range(len(c)) if not np.all(np.isfinite(c[t]))]
            if hpe is not None and len(lost) < len(c):
                pose[name].append(predict_joints(hpe, depths, fill_lost(c, lost), preset.preprocess))
            elif hpe is not None:  # nothing found in the whole sequence: no crop at all, counted as lost
                pose[name].append(np.full_like(joints, np.nan))
        truth_joints.append(joints)
    truth = centre_from_joints(np.concatenate(truth_joints))
    out = {}
    for name in names:
        out[name] = centre_errors(np.concatenate(found[name]), truth) if name != "ground truth" else {}
        if name != "ground truth":
            out[name]["sequences_off_80mm"] = sum(
                int(not np.all(np.linalg.norm(c - centre_from_joints(j), axis=1) <= 80.0))  # NaN (lost) counts
                for c, j in zip(found[name], truth_joints))
        if hpe is not None:
            pred = np.concatenate(pose[name])
            ok = np.all(np.isfinite(pred), axis=(1, 2))
            out[name]["pose_error_mm"] = float(mean_joint_error(pred[ok], np.concatenate(truth_joints)[ok]))
        if name in seconds:
            out[name]["ms_per_frame"] = 1000 * seconds[name] / len(truth)
    if hpe is not None:
        for name in LOCALISERS:
            out[name]["pose_ratio_to_ground_truth"] = out[name]["pose_error_mm"] / out["ground truth"]["pose_error_mm"]
    return out


def measure_hard(seeds, refiner) -> dict:
    """Centre errors of every localiser on one :func:`hard_sequence` frame per seed."""
    depths, truth = hard_frames(seeds)

    def located(refiner):
        return np.stack([locate_sequence([d], refiner=refiner).centres[0] for d in depths])

    return {"centre_from_depth": centre_errors(old_centres(depths), truth),
            "tracker": centre_errors(located(None), truth),
            "tracker+comref-1": centre_errors(located(first_stage(refiner)), truth),
            "tracker+comref": centre_errors(located(refiner), truth)}


HARD_SEQUENCE_SEEDS = range(100, 300)  # the hard scenes kept for tuning (those below 100 are the test's)
HARD_SEQUENCE_FRAMES = 12
SEQUENCE_LOCALISERS = {  # locate_sequence's keywords; refine=False: the tracker alone.  The last is what locate runs
    "tracker": dict(refine=False), "tracker both ways": dict(refine=False, both_ways=True),
    "tracker+comref+detector": dict(detector=ALWAYS), "tracker+comref forward": dict(detector=DETECTOR_ON_RECORDINGS),
    "tracker+comref": dict(detector=DETECTOR_ON_RECORDINGS, both_ways=BOTH_WAYS_ON_RECORDINGS)}


def measure_hard_sequences(refiner, seeds=HARD_SEQUENCE_SEEDS, frames: int = HARD_SEQUENCE_FRAMES,
                           progress: bool = True) -> dict:
    """Per localiser of :data:`SEQUENCE_LOCALISERS`, the centre errors over every frame of one
    :func:`hard_sequence` of ``frames`` frames per seed (located as one sequence: the first frame detected, the
    rest tracked), with ``over_100mm`` (frames more than 100 mm off), ``sequences_off`` (sequences with such a
    frame) and the mean error with and without the other hand in the scene."""
    scenes = [hard_sequence(s, frames=frames) for s in tqdm(seeds, desc="hard sequences", unit="scene",
                                                           disable=not progress)]
    truth = np.concatenate([t for _, t in scenes])
    other = np.repeat([s % 3 == 2 for s in seeds], frames)  # hard_sequence's default: every third seed
    out = {}
    for name, how in SEQUENCE_LOCALISERS.items():
        r = None if how.get("refine") is False else refiner
        kw = {k: v for k, v in how.items() if k != "refine"}
        found = np.concatenate([locate_sequence(d, refiner=r, **kw).centres
                                for d, _ in tqdm(scenes, desc=name, unit="sequence", disable=not progress)])
        err = np.linalg.norm(found.astype(np.float64) - truth, axis=1)
        off = np.nan_to_num(err, nan=np.inf) > 100
        out[name] = {**centre_errors(found, truth), "over_100mm": int(off.sum()),
                     "sequences_off": int(off.reshape(len(scenes), frames).any(1).sum()),
                     "mean_other_hand_mm": float(np.nanmean(err[other])),
                     "mean_no_other_hand_mm": float(np.nanmean(err[~other]))}
    return out


def run_hard_sequences(preset_name: str = "cpu", runs: str | None = None, frames: int = HARD_SEQUENCE_FRAMES,
                       progress: bool = True) -> dict:
    """``--hard-sequences`` (module docstring): the refiner ``locate`` takes (trained under ``runs``, else the one
    shipped with handfuse) on the hard sequences; written into :data:`OUT` under ``<preset>/hard-sequences``."""
    from handfuse.localise import load_refiner, shipped_refiner
    from handfuse.pool import one_thread

    refiner = (load_refiner(runs) if runs else None) or shipped_refiner()
    if refiner is None:
        raise FileNotFoundError(f"{runs}: no trained localiser refinement there, and none shipped")
    start = time.perf_counter()
    with one_thread():
        results = measure_hard_sequences(refiner, frames=frames, progress=progress)
    record = {
        "note": "Synthetic data (handfuse.synth's renderer), not FPHA: none of these numbers is an FPHA number.",
        "split": f"hard sequences of seeds {HARD_SEQUENCE_SEEDS.start}..{HARD_SEQUENCE_SEEDS.stop - 1} (kept for"
                 f" tuning), {frames} frames each", "preset": preset_name, "refiner": refiner.source,
        "localisers": results, "seconds": time.perf_counter() - start,
    }
    store(preset_name, "hard-sequences", record)
    return record


def report_hard_sequences(record: dict) -> str:
    """A ``--hard-sequences`` record as a small table."""
    lines = [f"{record['split']}; refiner {record['refiner']}; SYNTHETIC, not FPHA",
             f"{'localiser':<24} {'mean':>6} {'p90':>6} {'max':>6} {'lost':>4} {'>100 mm':>8} {'seq off':>8}"
             f" {'other hand':>10} {'without':>8}"]
    for name, r in record["localisers"].items():
        lines.append(f"{name:<24} {r['mean_mm']:6.1f} {r['p90_mm']:6.1f} {r['max_mm']:6.1f} {r['lost']:4d}"
                     f" {r['over_100mm']:8d} {r['sequences_off']:8d} {r['mean_other_hand_mm']:10.1f}"
                     f" {r['mean_no_other_hand_mm']:8.1f}")
    return "\n".join(lines)


def run(preset_name: str = "cpu", scene: str = "v2", seed: int = 0, hard: int = 40, progress: bool = True,
        pose: bool = True, dev_seed: int | None = None) -> dict:
    """The whole benchmark on one preset's synthetic benchmark (``scene`` v1 or v2); returns the results
    and writes them into :data:`OUT` under ``<preset>/<scene>``.  Without ``pose`` the HPE is neither
    found, trained nor run (centre errors only).  With ``dev_seed`` the models trained on the preset's
    benchmark are measured on the test split of the one generated with that seed, and on the hard
    frames of seeds 100 and up (``<preset>/<scene>-dev<dev_seed>``; module docstring)."""
    from handfuse.fpha import FPHA
    from handfuse.localise import train_refiner
    from handfuse.paths import ensure_synthetic
    from handfuse.pool import one_thread
    from handfuse.standalone import pretrain_hpe

    preset = get_preset(preset_name)
    overrides = None if scene == preset.synth.scene else {"scene": scene}
    root = ensure_synthetic(preset_name, overrides=overrides)
    fpha = FPHA(root)
    measured = fpha if dev_seed is None else FPHA(ensure_synthetic(preset_name, dev_seed, overrides=overrides))
    hard_seeds = range(hard) if dev_seed is None else range(100, 100 + hard)
    start = time.perf_counter()
    refiner, fitted = train_refiner(fpha, preset, seed, progress=progress)
    hpe_run = find_hpe(fpha, preset, seed) if pose else None
    if pose and hpe_run is None:
        pretrain_hpe(fpha, preset, seed=seed, progress=progress)
        hpe_run = find_hpe(fpha, preset, seed)
    hpe = load_hpe(hpe_run) if pose else None
    with one_thread():
        results = measure(measured, preset, refiner, hpe, progress)
        hard_results = measure_hard(hard_seeds, refiner)
    record = {
        "note": "Synthetic data (handfuse.synth), not FPHA: none of these numbers is an FPHA number.",
        "data": str(measured.root), "trained_on": str(root), "scene": scene,
        "split": "test" if dev_seed is None else f"dev (the test split of generator seed {dev_seed})",
        "preset": preset_name, "seed": seed,
        "refiner_run": fitted.run_dir, "refiner_test": {k: fitted.test[k] for k in ("initial_mm", "one_step_mm", "coarse_mm", "error_mm")
                                                                if k in fitted.test},
        "refiner_train_seconds": fitted.seconds,
        "hpe_run": str(hpe_run) if hpe_run else None, "test": results,
        "hard_frames": {"seeds": f"{hard_seeds.start}..{hard_seeds.stop - 1}", **hard_results},
        "seconds": time.perf_counter() - start,
    }
    store(preset_name, scene if dev_seed is None else f"{scene}-dev{dev_seed}", record)
    return record


def run_rolled(preset_name: str = "cpu", seed: int = 0, dev_seed: int = 1, every: int = 3,
               progress: bool = True) -> dict:
    """``--rolled`` (module docstring): the preset's refiner of ``seed`` (trained when missing) on
    :func:`rolled_sequences` of generator ``dev_seed``; written into :data:`OUT` under
    ``<preset>/<scene>-dev<dev_seed>-rolled``."""
    from handfuse.fpha import FPHA
    from handfuse.localise import train_refiner
    from handfuse.paths import ensure_synthetic
    from handfuse.pool import one_thread

    preset = get_preset(preset_name)
    refuse_own_benchmark(preset, dev_seed)
    start = time.perf_counter()
    refiner, fitted = train_refiner(FPHA(ensure_synthetic(preset_name)), preset, seed, progress=progress)
    with one_thread():
        results = measure_rolled(preset, dev_seed, refiner, every, progress=progress)
    record = {
        "note": "Synthetic data (handfuse.synth), not FPHA: none of these numbers is an FPHA number.",
        "scene": preset.synth.scene, "split": f"dev (1 in {every} test sequences of generator seed {dev_seed},"
                                              " rendered by a rolled camera)",
        "preset": preset_name, "seed": seed, "refiner_run": fitted.run_dir, "rolls_deg": results,
        "seconds": time.perf_counter() - start,
    }
    store(preset_name, f"{preset.synth.scene}-dev{dev_seed}-rolled", record)
    return record


def run_sensor(preset_name: str = "cpu", seed: int = 0, dev_seed: int = 1, every: int = 6, fps: float | None = None,
               progress: bool = True, detector: str = ALWAYS) -> dict:
    """``--sensor`` (module docstring): the preset's refiner of ``seed`` (trained when missing) on
    --dev-seed's test sequences changed by each of :data:`SENSOR_CHANGES`, rendered at ``fps`` frames a
    second (default the preset's); written into :data:`OUT` under ``<preset>/<scene>-dev<dev_seed>-sensor``
    (``-fps<fps>`` added with ``fps``, ``-detector-<detector>`` with a ``detector`` other than always)."""
    from dataclasses import replace

    from handfuse.fpha import FPHA
    from handfuse.localise import train_refiner
    from handfuse.paths import ensure_synthetic
    from handfuse.pool import one_thread

    preset = get_preset(preset_name)
    refuse_own_benchmark(preset, dev_seed)
    if fps is not None and not fps > 0:
        raise ValueError(f"--fps must be a positive number of frames a second, got {fps}")
    start = time.perf_counter()
    refiner, fitted = train_refiner(FPHA(ensure_synthetic(preset_name)), preset, seed, progress=progress)
    rendered = preset if fps is None else replace(preset, synth=replace(preset.synth, fps=float(fps)))
    with one_thread():
        results = measure_sensor(rendered, dev_seed, refiner, every, progress=progress, detector=detector)
    record = {
        "note": "Synthetic data (handfuse.synth), not FPHA: none of these numbers is an FPHA number.",
        "scene": preset.synth.scene, "fps": rendered.synth.fps,
        "split": f"dev (1 in {every} test sequences of generator seed {dev_seed}, at {rendered.synth.fps:g} frames a"
                 " second, each frame changed as a real sensor might)",
        "preset": preset_name, "seed": seed, "refiner_run": fitted.run_dir, "detector": detector, "changes": results,
        "seconds": time.perf_counter() - start,
    }
    key = (f"{preset.synth.scene}-dev{dev_seed}-sensor" + ("" if fps is None else f"-fps{fps:g}")
           + ("" if detector == ALWAYS else f"-detector-{detector}"))
    store(preset_name, key, record)
    return record


def measure_predict(preset, dev, pipelines, refiner, every: int = 3, progress: bool = True) -> dict:
    """Per localiser (``ground truth``, ``tracker``, ``tracker+comref``), the pose error (mm, mean over every
    joint of every frame) of each pipeline of ``pipelines`` (seed -> :class:`handfuse.predict.Pipeline`) on
    every ``every``-th test sequence of ``dev``, cropped as :func:`handfuse.predict.predict_folder` crops
    (a lost frame around the nearest located frame's centre; the learned detector and the passes as ``predict`` runs
    them by default, :data:`handfuse.localise.DETECTOR_ON_RECORDINGS` and ``BOTH_WAYS_ON_RECORDINGS``)."""
    from handfuse.predict import crop_centres, run_pipeline

    pre = preset.preprocess
    sums = {name: {seed: 0.0 for seed in pipelines} for name in ("ground truth", "tracker", "tracker+comref")}
    frames, lost = 0, {"tracker": 0, "tracker+comref": 0}
    refs = dev.test[::every]
    for ref in tqdm(refs, desc="predict on the dev benchmark", unit="seq", disable=not progress):
        joints = dev.read_skeleton(ref)
        depths = [dev.read_depth(ref, t) for t in range(len(joints))]
        paths = [dev.depth_path(ref, t) for t in range(len(joints))]
        centres = {"ground truth": centre_from_joints(joints).astype(np.float32)}
        for name, r in (("tracker", None), ("tracker+comref", refiner)):
            located = locate_sequence(depths, FPHA_DEPTH, pre.cube_mm, r, detector=DETECTOR_ON_RECORDINGS,
                                      both_ways=BOTH_WAYS_ON_RECORDINGS)
            lost[name] += len(located.lost)
            centres[name] = crop_centres(located.centres, located.status, "fallback", paths, located.localiser)[0]
        for name, c in centres.items():
            crops = np.stack([crop(d, x, FPHA_DEPTH, pre.cube_mm, pre.crop) for d, x in zip(depths, c)])
            crops = crops.astype(np.float16).astype(np.float32)  # as predict crops them
            for seed, pipeline in pipelines.items():
                pred = run_pipeline(pipeline.model, crops, c)["joints_mm"]
                sums[name][seed] += float(np.linalg.norm(pred - joints, axis=-1).mean(1).sum())
        frames += len(joints)
    from handfuse.metrics import mean_ci95

    out = {"sequences": len(refs), "frames": frames, "lost": lost}
    for name, by_seed in sums.items():
        errors = [v / frames for v in by_seed.values()]
        mean, half = mean_ci95(errors)
        out[name] = {"pose_error_mm_by_seed": errors, "pose_error_mm": mean, "ci95_mm": half}
    diff = [a - b for a, b in zip(out["tracker+comref"]["pose_error_mm_by_seed"], out["tracker"]["pose_error_mm_by_seed"])]
    mean, half = mean_ci95(diff)
    out["refined_minus_tracker_mm"] = {"mean": mean, "ci95": half, "seeds": len(diff)}
    for name in ("tracker", "tracker+comref"):
        out[name]["x_ground_truth"] = out[name]["pose_error_mm"] / out["ground truth"]["pose_error_mm"]
    return out


def run_predict(preset_name: str = "cpu", dev_seed: int = 1, seeds=(0, 1, 2), every: int = 3,
                progress: bool = True) -> dict:
    """``--predict`` (module docstring): the trained baselines of ``seeds`` and the refinement of the preset's
    depth-centred test sets, as ``make reproduce`` trained them (nothing is trained here), on generator
    ``dev_seed``'s test sequences; written into :data:`OUT` under ``<preset>/<scene>-dev<dev_seed>-predict``."""
    from handfuse.finetune import DEPTH_LOCALISER_SEED
    from handfuse.fpha import FPHA
    from handfuse.localise import load_refiner, refiner_run
    from handfuse.paths import ensure_synthetic
    from handfuse.pool import one_thread
    from handfuse.predict import load_pipeline
    from handfuse.train import finished

    preset = get_preset(preset_name)
    refuse_own_benchmark(preset, dev_seed)
    start = time.perf_counter()
    fpha = FPHA(ensure_synthetic(preset_name))
    folder = refiner_run(fpha, preset, DEPTH_LOCALISER_SEED)[0]
    if not finished(folder):
        raise FileNotFoundError(f"{folder}: no trained localiser refinement; make reproduce trains it")
    pipelines = {seed: load_pipeline("baseline", preset=preset_name, seed=seed) for seed in seeds}
    with one_thread():
        results = measure_predict(preset, FPHA(ensure_synthetic(preset_name, dev_seed)), pipelines,
                                  load_refiner(folder), every, progress)
    record = {
        "note": "Synthetic data (handfuse.synth), not FPHA: none of these numbers is an FPHA number.",
        "scene": preset.synth.scene, "split": f"dev (1 in {every} test sequences of generator seed {dev_seed})",
        "preset": preset_name, "method": "baseline (trained)", "seeds": list(seeds), "refiner_run": str(folder),
        "fused_runs": {seed: p.runs["fused"] for seed, p in pipelines.items()}, **results,
        "seconds": time.perf_counter() - start,
    }
    store(preset_name, f"{preset.synth.scene}-dev{dev_seed}-predict", record)
    return record


def report_predict(record: dict) -> str:
    """A ``--predict`` record as a small table."""
    lines = [f"{record['preset']} preset, scene {record['scene']}, {record['split']}, {record['frames']} frames;"
             f" the trained baseline of seeds {record['seeds']}; SYNTHETIC, not FPHA",
             f"{'crop centre':<16} {'pose error (mm)':>16} {'x ground truth':>15} {'lost':>5}"]
    for name in ("ground truth", "tracker", "tracker+comref"):
        r = record[name]
        ratio = f"{r['x_ground_truth']:15.2f}" if "x_ground_truth" in r else f"{'':>15}"
        lines.append(f"{name:<16} {r['pose_error_mm']:9.2f} +-{r['ci95_mm']:5.2f}{ratio} {record['lost'].get(name, 0):5d}")
    d = record["refined_minus_tracker_mm"]
    lines.append(f"refined minus tracker alone: {d['mean']:+.2f} +- {d['ci95']:.2f} mm ({d['seeds']} seeds, paired, 95 % t)")
    return "\n".join(lines)


def report_rolled(record: dict) -> str:
    """A rolled-camera record as a small table."""
    lines = [f"{record['preset']} preset, scene {record['scene']}, {record['split']}; SYNTHETIC, not FPHA",
             f"{'roll':>6} {'localiser':<16} {'mean':>7} {'p90':>7} {'max':>7} {'lost':>5} {'>100 mm %':>10} {'off hand %':>11}"]
    for roll, by in record["rolls_deg"].items():
        for name, r in by.items():
            lines.append(f"{roll:>6} {name:<16} {r['mean_mm']:7.1f} {r['p90_mm']:7.1f} {r['max_mm']:7.1f} {r['lost']:5d}"
                         f" {r['over_100mm_pct']:10.2f} {r['off_hand_pct']:11.2f}")
    return "\n".join(lines)


def report_sensor(record: dict) -> str:
    """A sensor-change record as a small table."""
    policy = record.get("detector", ALWAYS)
    detector = "" if policy == ALWAYS else f"; the learned detector overrules: {policy}"
    lines = [f"{record['preset']} preset, scene {record['scene']}, {record['split']}{detector}; SYNTHETIC, not FPHA",
             f"{'change':<27} {'localiser':<15} {'mean':>6} {'p90':>6} {'max':>6} {'lost':>4} {'>100 mm %':>9}"
             f" {'off hand %':>10}  mean change (95 % t over sequences)"]
    for change, by in record["changes"].items():
        for name, r in by.items():
            d = r.get("mean_change_mm")
            delta = "" if d is None else f"  {d['mean']:+6.2f} +- {d['ci95']:.2f} mm ({d['sequences']} sequences)"
            lines.append(f"{change:<27} {name:<15} {r['mean_mm']:6.1f} {r['p90_mm']:6.1f} {r['max_mm']:6.1f} {r['lost']:4d}"
                         f" {r['over_100mm_pct']:9.2f} {r['off_hand_pct']:10.2f}{delta}")
    return "\n".join(lines)


def report(record: dict) -> str:
    """The record as a small table."""
    lines = [f"{record['preset']} preset, scene {record['scene']}, {'test split' if record['split'] == 'test' else record['split']}"
             f" ({record['data']});"
             " SYNTHETIC, not FPHA",
             f"{'localiser':<20} {'mean':>7} {'p90':>7} {'max':>7} {'lost':>6} {'>80 seq':>8} {'pose mm':>8} {'x gt':>6}"]
    for name, r in record["test"].items():
        pose = f" {r['pose_error_mm']:8.2f} {r.get('pose_ratio_to_ground_truth', 1.0):6.2f}" if "pose_error_mm" in r else ""
        if name == "ground truth":
            lines.append(f"{name:<20} {'':>7} {'':>7} {'':>7} {'':>6} {'':>8}{pose}")
        else:
            lines.append(f"{name:<20} {r['mean_mm']:7.1f} {r['p90_mm']:7.1f} {r['max_mm']:7.1f} {r['lost']:6d}"
                         f" {r['sequences_off_80mm']:8d}{pose}")
    lines.append(f"hard frames (table against the hand, seeds {record['hard_frames']['seeds']}):")
    for name in LOCALISERS:
        r = record["hard_frames"][name]
        lines.append(f"{name:<20} {r['mean_mm']:7.1f} {r['p90_mm']:7.1f} {r['max_mm']:7.1f} {r['lost']:6d}")
    lines.append(f"ComRefNet on the test split's perturbed estimates: {record['refiner_test']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.localise", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu", choices=["smoke", "cpu"])
    parser.add_argument("--scene", default="v2", choices=["v1", "v2"], help="the scene generator (default v2, the presets')")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hard", type=int, default=40, help="hard frames to measure (seeds 0..N-1)")
    parser.add_argument("--no-pose", action="store_true", help="centre errors only: no HPE is found, trained or run")
    parser.add_argument("--dev", action="store_true", help="measure where settings are chosen: the test split of the"
                                                           " benchmark generated with --dev-seed, not the study's test")
    parser.add_argument("--dev-seed", type=int, default=1, help="the generator seed of --dev's benchmark (default 1)")
    parser.add_argument("--rolled", action="store_true", help="the tracker on --dev-seed's test sequences seen by a"
                                                              " camera rolled about its optical axis")
    parser.add_argument("--predict", action="store_true", help="predict's trained baselines on --dev-seed's test"
                                                               " sequences, the tracker alone against the refined")
    parser.add_argument("--sensor", action="store_true", help="the tracker on --dev-seed's test sequences with each"
                                                              " frame changed as another sensor might change it")
    parser.add_argument("--fps", type=float, default=None, help="--sensor: render at this many frames a second"
                                                                " (default the preset's; FPHA records 30)")
    parser.add_argument("--every", type=int, default=None, help="--rolled, --predict: every N-th test sequence"
                                                                " (default 3); --sensor: (default 6)")
    parser.add_argument("--detector", default=None, choices=DETECTOR_POLICIES,
                        help="--sensor: where the refined tracker's learned detector may overrule (default always, as"
                             " in the crop cache; locate and predict run no-table)")
    parser.add_argument("--hard-sequences", action="store_true",
                        help="the refiner locate takes on hard sequences, its learned detector overruling in every"
                             " frame and as locate lets it")
    parser.add_argument("--runs", default=None, help="--hard-sequences: the trained refinement (a run, models or runs"
                                                     " folder; default: the one shipped with handfuse)")
    args = parser.parse_args(argv)
    if args.runs is not None and not args.hard_sequences:
        parser.error("--runs goes with --hard-sequences")
    if args.hard_sequences:
        print(report_hard_sequences(run_hard_sequences(args.preset, args.runs)))
        return 0
    if args.every is not None and args.every < 1:
        parser.error(f"--every must be a whole number >= 1, got {args.every}")
    if args.fps is not None and not args.sensor:
        parser.error("--fps goes with --sensor")
    if args.detector is not None and not args.sensor:
        parser.error("--detector goes with --sensor")
    if args.sensor:
        try:
            record = run_sensor(args.preset, args.seed, args.dev_seed, args.every or 6, args.fps,
                                detector=args.detector or ALWAYS)
        except ValueError as e:
            parser.error(str(e))
        print(report_sensor(record))
        return 0
    every = args.every or 3
    if args.predict:
        print(report_predict(run_predict(args.preset, args.dev_seed, every=every)))
        return 0
    if args.rolled:
        print(report_rolled(run_rolled(args.preset, args.seed, args.dev_seed, every)))
        return 0
    if args.dev:
        try:
            refuse_own_benchmark(get_preset(args.preset), args.dev_seed)
        except ValueError as e:
            parser.error(str(e))
    print(report(run(args.preset, args.scene, args.seed, args.hard, pose=not args.no_pose,
                     dev_seed=args.dev_seed if args.dev else None)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
