"""Finding the hand in depth frames alone: the crop centre when no annotation is at hand.

:func:`locate_sequence` is the one entry point (``python -m handfuse locate`` and
``python -m handfuse predict`` call it, and so does the crop cache's ``centre="depth"``).  It returns, for every frame, the hand
centre (an estimate of the middle MCP, mm, camera frame), its pixel, and a status:
:data:`LOCATED`, or :data:`LOST` (a NaN centre: a frame is never silently given another's
centre), with how a located frame was found (detected afresh, or tracked from the previous one).

What a frame goes through (every step works on every ``STRIDE``-th pixel):

1. *Table removal.*  The dominant plane of the frame (RANSAC, Fischler & Bolles 1981) is
   the table when it holds a large share of the valid pixels; everything within
   ``TABLE_CLEARANCE_MM`` above it, or behind it, is dropped.  A hand lowered onto the
   table leaves its histogram no empty stretch of depth, but it stands above the plane.
2. *Depth-continuous regions.*  A pixel whose 3 x 3 neighbourhood holds a depth step
   steeper than a ~72 degree slope (:func:`_step_mm`) is an edge; the rest falls into
   8-connected regions (region growing without a global depth threshold).  The arm and
   the strip of table beside it part at the arm's silhouette.
3. *Detection* (the first frame, and after a lost track): the forearm enters from the
   bottom edge, nearer than anything else there; FPHA annotates the right hand, and a
   right forearm enters right of a left one, so of the regions entering within
   ``ARM_TIE_MM`` of the nearest the rightmost is taken.  The hand is its far end
   (:func:`_far_end`).  A region whose far end lies less than ``REACH_SHARE`` times as far
   from where it enters as that of the farthest-reaching one is left out: a forearm reaches
   up into the frame, while a box or a can standing at the bottom edge beside it, as near,
   does not.  The other hand's forearm, entering in the left ``OTHER_HAND_SIDE`` of the
   bottom edge, does not count against the others: it can reach far while the right one,
   lowered toward the table, does not (the rightmost rule parts the two).  A taller object
   standing on the table at the bottom edge is left out too: it enters within
   ``UPRIGHT_BASE_MM`` of the table plane and rises along the plane's normal, while a forearm
   enters in the air and reaches across the table.  Where no region enters at the bottom, the
   same rules pick among those entering from the right edge: FPHA's camera sits on the
   shoulder, and as the body leans (the camera rolls) the forearm comes in from the right.  A
   region enters where it crosses the frame's edge (:func:`_entering`): its pixels on the bottom
   rows and the right columns, both for a forearm across the bottom right corner, whose two
   lowest rows alone would point its axis along the corner.  A frame without such a
   region falls back to DeepPrior++'s centre of mass of the nearest hand-sized region.
4. *Tracking*: sequences are continuous, so the previous frame's centre is the prior.
   The far ends of the regions within ``TRACK_RADIUS_MM`` of it are the candidates; the
   one nearest the prior within ``MAX_STEP_MM`` is taken (a clutter object or the other
   hand, farther off, is not).  An object standing on the table at the bottom edge, which
   detection leaves out, is no candidate either: a hand that moved farther than a step
   would otherwise leave the track on it.  If none is that near, the track is held by the
   centre of mass of the region's points within ``HAND_RADIUS_MM`` of the prior, for at most
   ``MAX_HELD`` frames in a row (so it cannot drift along the arm or onto the table);
   then, or with nothing near the prior, the hand is detected afresh, and a frame where
   detection finds nothing is lost.
5. *Learned detection* (with a refiner trained with one, as every preset's is): a small fully
   convolutional net (:class:`HandDetector`) looks at the whole frame (every ``DETECT_STRIDE``-th
   pixel) and scores where the middle MCP is, cell by cell, with its offset and depth.  It sees what
   the rules above cannot: the fingers above a board held in front of the palm, a hand lowered beside
   the object it put down.  Where its hand and the centre found so far lie more than ``SWITCH_MM``
   apart and it finds the latter unlikely (:func:`overrules`), its hand is taken, and the track goes
   on from there.  It is trained in the refiner's run, on whole training frames.  The crop cache lets it
   overrule in every frame; ``locate`` and ``predict`` on a recording only in frames without a table plane,
   unless asked otherwise (:data:`DETECTOR_ON_RECORDINGS`).
6. *Learned refinement* (optional): DeepPrior++'s ComRefNet (Oberweger & Lepetit,
   "DeepPrior++", ICCV Workshops 2017, section 3.1): a small CNN that regresses, from a
   metric-cube crop around the current estimate, the offset to the middle MCP; applied
   ``iterations`` times; then, optionally, a second ComRefNet on a smaller cube at a finer
   resolution (``RefineConfig.fine_cube_mm``), trained on estimates closer to the truth,
   applied ``fine_iterations`` times.  :func:`train_refiner` trains both on the training split's frames
   with initial estimates perturbed around the truth, as DeepPrior++ does, and, for a share
   of them, where the tracker itself lands on that frame (``RefineConfig.tracked``); each crop's cube
   is scaled at random (``RefineConfig.scale_sigma``), as DeepPrior++ augments, so that hands smaller
   or larger than the synthetic subjects' cost it less (docs/benchmarks.md); training crops can also lose
   pixels to holes (``RefineConfig.hole_share``, :func:`holed`; off in every preset, for what it costs on
   whole hands: docs/benchmarks.md), so that a sensor that loses part of the hand's surface costs it less; through
   :func:`handfuse.train.fit` into a run folder keyed by its configuration
   (``python -m handfuse.localise train --preset cpu``).  ``python -m handfuse.localise ship`` writes the
   cpu preset's refiner into the package (:data:`SHIPPED`), which ``locate`` takes where none is trained.
7. *Both ways* (``locate`` and ``predict`` on a recording: :data:`BOTH_WAYS_ON_RECORDINGS`): a recording is
   located whole, so steps 3-6 also run from its last frame back to its first.  A track that starts on the
   other hand or on clutter keeps to it, as the tracker is meant to; the pass from the other end, starting
   elsewhere, shows where.  Where the two passes put the hand more than ``BOTH_WAYS_AGREE_MM`` apart, each
   frame of that stretch is located on its own (step 3 and on), and the stretch is taken from the backward pass
   where more of them, and at least ``BOTH_WAYS_MIN_VOTES``, agree with it where it tracked the hand than with
   the forward pass (:func:`settle`).  The crop cache runs the forward
   pass alone, as it always has.

The parameters were set on the synthetic benchmark's training sequences and on the
difficulties measured on 84 real FPHA frames (docs/data.md): a hand at 355-451 mm against
a table edge at 420-650 mm, large structured holes, the other hand entering at the bottom
left.  ``benchmarks/localise.py`` measures it; its numbers are synthetic, not FPHA numbers.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .atomic import atomic_path, write_json
from .camera import FPHA_DEPTH, Intrinsics
from .errors import DataError, check
from .fpha import check_png_header, depth_frame_indices, read_depth_png
from .preprocess import SURFACE_TO_JOINT_MM, _arm_end, _refine_com, centre_from_joints, crop_affine

LOCATED, LOST = "located", "lost"
DETECTED, TRACKED, HELD = "detected", "tracked", "held"  # how a located frame was found (Located.how)
NET = "net"  # ... or taken from the learned detector over the tracker's choice (SWITCH_MM)
FORWARD, BACKWARD = "forward", "backward"  # the pass through the sequence a centre comes from (Located.way)
LOCALISER_VERSION = "tracker-8"  # bump when the localiser's code changes its centres (the crop cache keys on it)

STRIDE = 4  # work on every 4th pixel (160 x 120)
MAX_RANGE_MM = 900.0  # an egocentric hand is within arm's reach: nothing farther is considered
PLANE_SAMPLES = 3000  # valid points the table plane is fitted on
PLANE_ITERATIONS = 80  # RANSAC hypotheses
MIN_PLANE_SHARE = 0.25  # a plane holding less of the valid points is not taken for the table
TABLE_CLEARANCE_MM = 12.0  # points nearer the table plane than this (or behind it) are the table
SLOPE = 3.0  # an edge: a depth step larger than SLOPE x the pixel's footprint (tan 72 deg) ...
STEP_NOISE_MM = 25.0  # ... plus this much sensor noise
MIN_REGION_PX = 300  # a region smaller than this (full-resolution pixels) is not an arm or a hand
BOTTOM_BAND = 0.06  # a region "enters from the bottom" if it reaches this fraction of the height
MAX_ENTRY_MM = 650.0  # where it enters the forearm is nearer than this
ARM_TIE_MM = 150.0  # of the regions entering this close in depth to the nearest, the rightmost is the right forearm
# a forearm reaches at least this share as far from its entry as the farthest-reaching region.  Chosen on the
# dev benchmark, never on test (docs/benchmarks.md; cpu preset, the refiner and w_eq HPE of seed 0): the pose
# error on depth centres is 21.69 mm without the rule, 20.28 with 0.5 and with 0.7 (-1.22 +- 0.41 mm over 3
# refiner seeds at 0.5); the lower share keeps the other hand's forearm in the running
REACH_SHARE = 0.5
# the share of the bottom edge, from the left, where the other hand's forearm enters (docs/data.md): its reach
# does not count against the others.  On the hard frames of seeds 100-299 (never the test's 0-39) it takes the
# refined centres from 28.6 to 25.9 mm mean (the right forearm lowered beside the other hand's, 2 frames), and it
# changes nothing on the dev benchmark (20.28 mm, refiner seed 0)
OTHER_HAND_SIDE = 1 / 3
# an object standing on the table at the bottom edge is not a forearm: where it enters lies within UPRIGHT_BASE_MM
# of the table plane, and its far end rises from there along the plane's normal (|cos| above UPRIGHT_COS).  A
# forearm enters in the air and reaches across the table.  Set on the dev benchmarks, never on test
# (docs/benchmarks.md): there the objects taken for the forearm entered 15-22 mm above the table and rose at
# |cos| 0.94-0.99, the forearms entered 60-135 mm above it at 0.05-0.40.  Pose error on depth centres (refiner
# seeds 0-2, the w_eq HPE of seed 0): generator seed 2, 21.09/20.55/21.37 -> 20.64/20.23/20.76 mm (-0.46 +- 0.35,
# paired, 3 seeds, 95 % t); generator seed 1, -0.06 +- 0.22; the hard frames of seeds 100-299 unchanged
# Tracking leaves such an object out too (tracker-5): on generator seed 2 the pose error on depth centres of the
# seed-0 HPE went 20.69 -> 20.32 mm and of the trained baseline 19.17 -> 18.80 (-0.37 +- 0.04 both, paired by
# refiner and baseline seed 0-2, 95 % t), 7 fewer frames more than 80 mm off; on generator seed 1 no frame moved
UPRIGHT_BASE_MM = 40.0
UPRIGHT_COS = 0.8
# where no region enters at the bottom, one entering from the right edge is a forearm only if its far end lies at
# least this far from where it enters.  Set on the dev benchmarks, never on test (docs/benchmarks.md), before the
# rule: on seed 1's test sequences seen by a camera rolled by -30 degrees the right edge's pick was within 100 mm
# of the hand in 134 of 136 frames (every other one), and those reached 68 mm or more (5th percentile 170); at -15
# degrees it once took an object cut by the edge, reaching 9 mm, and on a hard frame of seeds 100-299 another,
# reaching 82 mm, 476 mm from the hand
RIGHT_REACH_MM = 100.0
TRACK_RADIUS_MM = 150.0  # regions with a point this close to the prior are candidates
MAX_STEP_MM = 110.0  # a tracked centre moves at most this far from the prior in one frame
HAND_RADIUS_MM = 70.0  # the hand's points around a centre, for the local centre of mass
MAX_HELD = 3  # frames a track may be held by that centre of mass alone before the hand is detected afresh
MAX_REFINE_MM = 110.0  # the learned refinement moves a centre at most this far in all
# nor, in use, nearer the camera than this (FPHA's sensor sees nothing within about 200 mm; the synthetic hands
# come to 95 mm): with the restarts a centre may travel twice as far, and a net that has not learned (a refiner
# whose training made no steps) may push every step the same way; its centre can still be cropped.  No trained refiner's
# centre on the dev benchmarks (refiners 0-2) comes within 79 mm of the camera
MIN_CENTRE_Z_MM = 50.0
# once refined, a centre is refined again from itself and from RESTART_MM along each axis either side of it, and
# the 7 results are averaged: the net's error depends on where it starts, and the mean of 7 starts halves some
# of it.  On seed 2's dev benchmark (every 10th test frame, 985, refiner seed 0) the centre error went from a mean
# of 8.59 to 7.93 mm and a median of 4.65 to 4.10, frames more than 30 mm off from 40 to 32; refining once more
# from the centre alone, 8.43 and 4.77; starts 3 mm off, 7.93 and 4.11; a second round, 7.97 and 4.09
RESTART_MM = 6.0
RESTARTS = np.vstack([np.zeros(3), np.eye(3), -np.eye(3)]) * RESTART_MM  # (7, 3)
# the learned detector overrules the tracker when they put the hand more than SWITCH_MM apart, the detector gives
# the tracker's cell (with its 8 neighbours) less than SWITCH_MASS of its probability, and its own peak's cells
# SWITCH_RATIO times that.  Screened on the dev benchmarks (their test splits, generator seeds 1 and 2; refiners
# 0-2 with one detector, trained alone, each frame decided on its own): a mean centre error of 7.53/7.27/7.59 mm
# stayed 7.52/7.24/7.55 on seed 1's and 7.82/7.59/8.03 went to 7.24/7.05/7.17 on seed 2's (frames more than 80 mm
# off 57/36/59 to 40/29/33); masses 0.02 and 0.1 and ratio 3 did no better (docs/benchmarks.md)
SWITCH_MM = 80.0
SWITCH_MASS = 0.05
SWITCH_RATIO = 10.0
# when the learned detector may overrule the rules' centre (locate_sequence's ``detector``): in every frame, only in
# frames where no table plane was found (the rules' strongest cue is missing there), or never
ALWAYS, NO_TABLE, NEVER = "always", "no-table", "never"
DETECTOR_POLICIES = (ALWAYS, NO_TABLE, NEVER)
# what `locate` and `predict` run on a recording (--detector chooses another).  The detector is trained on one
# dataset's training frames, and the study's crop cache lets it overrule in every frame of the same (chosen on dev
# benchmark 2, where it lowered the trained baseline's depth-centred pose error by 0.56 +- 0.22 mm, 3 seeds, 95 % t;
# docs/benchmarks.md).  On scenes built apart from
# the generator it was trained on, as a recording is, it is confidently wrong: on the hard sequences of the seeds kept
# for tuning (benchmarks.localise --hard-sequences: 200 of 12 frames; refiners 0-2) the mean centre error was
# 102.9 / 100.4 / 92.8 mm with it and 40.3 / 43.9 / 40.8 without (-57.0 +- 13.2, paired, 3 seeds, 95 % t), frames
# more than 100 mm off 869 / 825 / 786 against 245 / 290 / 261 of 2,400; needing its own cells to hold 0.9 of its
# probability did less (52.7 / 66.5 / 65.9 mm).  Where no table plane is found the rules lose their footing and it
# carries the frame: on dev benchmark 1 with no plane fitted (every 6th test sequence, refiners 0-2) the refined
# centre is 9.31 / 8.40 / 8.97 mm off with it and 51.46 / 46.36 / 42.07 without (+37.7 +- 11.3).  Overruling only
# where no plane is found, it costs the trained baselines on the generator's own dev scenes (seeds 0-2, each on its
# seed's refiner, every 3rd test sequence) +0.12 +- 0.27 mm on dev benchmark 1 and +0.47 +- 0.43 on dev benchmark 2
# against overruling in every frame (never: +0.12 +- 0.28 and +0.83 +- 0.29; docs/benchmarks.md): the price of not
# trusting it where it was not trained
DETECTOR_ON_RECORDINGS = NO_TABLE
# the forward and the backward pass (locate_sequence's ``both_ways``) agree on a frame where their centres lie within
# this of each other, and so does a frame located alone with either (settle)
BOTH_WAYS_AGREE_MM = 80.0
# a stretch where the passes part goes to the backward pass only on at least this many frames' agreement (settle)
BOTH_WAYS_MIN_VOTES = 2
# what `locate` and `predict` run on a recording (--forward-only runs one pass, as the crop cache does).  Chosen on the
# hard sequences of the seeds kept for tuning (benchmarks.localise --hard-sequences, 200 of 12 frames; refiners 0-2):
# mean centre error 40.3 / 43.9 / 40.8 mm forward, 33.0 / 33.9 / 31.2 both ways (-9.0 +- 3.6, paired, 3 seeds, 95 % t),
# frames more than 100 mm off 245 / 290 / 261 -> 199 / 212 / 189 (-65 +- 42); on every 3rd test sequence of both dev
# benchmarks no frame's centre changes.  One vote instead of BOTH_WAYS_MIN_VOTES did as well there but moved frames of
# dev benchmark 2 (the trained baselines' pose error -0.12 / +0.14 / -0.13 mm, -0.04 +- 0.39, 3 seeds, 95 % t);
# counting a pass's own detections as votes put 18-19 hard frames per refiner more than 100 mm off, against 14-16
# (docs/benchmarks.md)
BOTH_WAYS_ON_RECORDINGS = True


@dataclass
class Located:
    """Per frame of a sequence: ``centres`` (T, 3) float32 mm (NaN where lost), ``uv`` (T, 2)
    float32 pixel column and row of the centre (NaN where lost), ``status`` (T,) of
    :data:`LOCATED` / :data:`LOST`, ``how`` (T,): how a located frame was found (:data:`DETECTED`
    afresh, :data:`TRACKED` from the previous frame's centre, :data:`HELD` there by the centre of
    mass around it, or :data:`NET`: the learned detector's, which overruled them; "" where lost),
    ``localiser``: which localiser made them, ``planes`` (T,): each frame's table plane
    (:func:`table_plane`; None where there is none), and ``way`` (T,): the pass a frame's centre comes
    from (:data:`FORWARD`, or :data:`BACKWARD` where ``locate_sequence(both_ways=True)`` took it from there)."""

    centres: np.ndarray
    uv: np.ndarray
    status: list[str]
    localiser: str
    how: list[str] = field(default_factory=list)
    planes: list = field(default_factory=list)
    way: list[str] = field(default_factory=list)

    @property
    def lost(self) -> list[int]:
        """The frames that were not located."""
        return [t for t, s in enumerate(self.status) if s == LOST]

    @property
    def found(self) -> list[int]:
        """The frames that were located."""
        return [t for t, s in enumerate(self.status) if s == LOCATED]


# ----------------------------------------------------------------------------- one frame


@dataclass
class Regions:
    """A frame's depth-continuous regions: ``labels`` (h, w) int32 (0: none), ``points`` (h, w, 3)
    mm of every pixel, ``depth`` (h, w) mm (0: invalid), ``count`` (R + 1,) pixels per label,
    ``stride`` and the table plane ``(n, d)`` (n . p = d, n pointing away from the camera) or None."""

    labels: np.ndarray
    points: np.ndarray
    depth: np.ndarray
    count: np.ndarray
    stride: int
    plane: tuple[np.ndarray, float] | None

    def big(self) -> list[int]:
        """Labels of the regions large enough to be an arm or a hand."""
        return [int(r) for r in np.flatnonzero(self.count * self.stride**2 >= MIN_REGION_PX) if r > 0]

    def of(self, label: int) -> tuple[np.ndarray, np.ndarray | None]:
        """A region's points (N, 3) mm and the mask (N,) of where it enters the frame
        (:func:`_entering`; None where it does not)."""
        v, u = np.nonzero(self.labels == label)
        return self.points[v, u], _entering(v, u, self.labels.shape)


def regions(depth: np.ndarray, intrinsics: Intrinsics = FPHA_DEPTH, stride: int = STRIDE, table: bool = True) -> Regions:
    """Steps 1 and 2 of the module docstring: table removal and depth-continuous regions; with ``table``
    False no plane is fitted, and the table stays in the regions (as where clutter hides it)."""
    d = np.asarray(depth)[::stride, ::stride].astype(np.float32)  # (h, w) mm, 0 = invalid
    h, w = d.shape
    vv, uu = np.mgrid[0:h, 0:w]
    points = intrinsics.backproject(np.stack([uu, vv], -1) * stride, d).astype(np.float32)  # (h, w, 3)
    valid = (d > 0) & (d < MAX_RANGE_MM)
    plane = table_plane(points[d > 0]) if table else None
    fg = valid
    if plane is not None:
        n, off = plane
        fg = fg & (points @ n.astype(np.float32) < off - TABLE_CLEARANCE_MM)  # above the table
    big = np.float32(1e6)
    hi = cv2.dilate(np.where(fg, d, 0).astype(np.float32), np.ones((3, 3), np.uint8))
    lo = cv2.erode(np.where(fg, d, big).astype(np.float32), np.ones((3, 3), np.uint8))
    step = _step_mm(d, intrinsics, stride)
    inner = fg & (hi - d < step) & (d - lo < step)  # no neighbour across a depth edge
    count, labels = _components(inner)
    return Regions(labels, points, np.where(fg, d, 0), count, stride, plane)


def _step_mm(d: np.ndarray, intrinsics: Intrinsics, stride: int) -> np.ndarray:
    """The largest depth step (mm) between neighbouring (strided) pixels of one surface, per pixel."""
    footprint = stride * d / intrinsics.fx  # mm between neighbouring pixels at that depth
    return SLOPE * footprint + STEP_NOISE_MM


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(count per label (R + 1,), labels (h, w) int32) of a mask's 8-connected components."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    count = stats[:, cv2.CC_STAT_AREA].copy()
    count[0] = 0
    return count, labels


def table_plane(points: np.ndarray) -> tuple[np.ndarray, float] | None:
    """The dominant plane (n, d) of valid points (N, 3), n . p = d with n pointing away from the camera,
    or None when no plane holds ``MIN_PLANE_SHARE`` of them, or more of them lie behind it than in front.

    RANSAC with a fixed seed (the same frame always gives the same plane), then least squares on
    the inliers.  The inlier band grows with depth as the sensor's depth step does."""
    if len(points) < 50:
        return None
    rng = np.random.default_rng(0)
    sample = points[rng.choice(len(points), min(PLANE_SAMPLES, len(points)), replace=False)].astype(np.float64)
    tol = 6.0 + 1e-5 * sample[:, 2] ** 2  # (N,) mm
    triples = sample[rng.integers(0, len(sample), (PLANE_ITERATIONS, 3))]  # (I, 3, 3)
    normals = np.cross(triples[:, 1] - triples[:, 0], triples[:, 2] - triples[:, 0])  # (I, 3)
    norm = np.linalg.norm(normals, axis=1)
    ok = norm > 1e-6
    if not ok.any():
        return None
    normals, triples = normals[ok] / norm[ok, None], triples[ok]
    offsets = np.einsum("ij,ij->i", normals, triples[:, 0])  # (I,)
    # (N, I) distances, summed per axis rather than by a matrix product: BLAS would start its own
    # threads here, which only compete with the crop cache's worker processes
    dist = sample[:, :1] * normals[:, 0] + sample[:, 1:2] * normals[:, 1] + sample[:, 2:] * normals[:, 2]
    inliers = np.abs(dist - offsets) < tol[:, None]  # (N, I)
    best = int(np.argmax(inliers.sum(0)))
    inside = sample[inliers[:, best]]
    if len(inside) < MIN_PLANE_SHARE * len(sample):
        return None
    centre = inside.mean(0)
    normal = np.linalg.svd(inside - centre, full_matrices=False)[2][-1]  # least squares on the inliers
    if normal @ centre < 0:
        normal = -normal  # away from the camera: points in front of the plane have n . p < d
    offset = float(normal @ centre)
    height = offset - sample @ normal  # (N,) mm in front of the plane
    if (height < -3 * tol).sum() > (height > 3 * tol).sum():
        return None  # more lies behind it than in front: an arm or a hand filling the view, not the table
    return normal, offset


def _entering(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """Where a region of these rows and columns (N,) (strided pixels, of ``shape``) enters the frame,
    as a mask (N,): its two lowest rows where it reaches the bottom edge's band (``BOTTOM_BAND`` of the
    height), and its two rightmost columns where it reaches as near the right edge (a forearm from
    the right or across the bottom right corner, as FPHA's shoulder camera shows it when it rolls);
    None where it reaches neither."""
    height, width = shape
    border = (rows >= height - 2) | (cols >= width - 2)
    if border.any():
        return border
    band = height * BOTTOM_BAND
    if rows.max() >= height - band:
        return rows >= rows.max() - 1
    if cols.max() >= width - band:
        return cols >= cols.max() - 1
    return None


def _far_end(points: np.ndarray, entering: np.ndarray | None) -> np.ndarray:
    """The hand's visible surface centre (3,) of a region's points (N, 3): for a region entering the
    frame where ``entering`` (N,) says (:func:`_entering`), the far end of the forearm seen from there,
    as :func:`handfuse.preprocess.centre_from_depth` finds it (a tube around the forearm's axis, so a
    held object beside the hand is left out); else its centre of mass."""
    if entering is None:
        return points.mean(0)
    return _arm_end(points, points[entering].mean(0))


def _reach(points: np.ndarray, entering: np.ndarray) -> tuple[np.ndarray, float]:
    """A region's far end (3,) (:func:`_far_end`) and how far (mm) it lies from where the region
    enters the frame."""
    entry = points[entering].mean(0)
    end = _arm_end(points, entry)
    return end, float(np.linalg.norm(end - entry))


def _upright(points: np.ndarray, rows: np.ndarray, entering: np.ndarray | None, end: np.ndarray,
             plane: tuple[np.ndarray, float] | None) -> bool:
    """Whether a region entering the frame (points (N, 3), rows (N,), :func:`_entering`'s mask (N,), far
    end (3,)) stands on the table ``plane``: its foot, its two lowest rows, lies within ``UPRIGHT_BASE_MM``
    of the plane, and the far end rises from there along the plane's normal."""
    if plane is None or entering is None:
        return False
    normal, offset = plane
    foot = points[rows >= rows.max() - 1].mean(0)
    rise = end - foot
    return bool(offset - foot @ normal < UPRIGHT_BASE_MM
                and abs(rise @ normal) > UPRIGHT_COS * max(float(np.linalg.norm(rise)), 1e-6))


def _behind_surface(surface: np.ndarray) -> np.ndarray:
    return (surface + np.array([0.0, 0.0, SURFACE_TO_JOINT_MM])).astype(np.float32)


def _forearms(reg: Regions, side: str) -> list[tuple[float, float, np.ndarray, float]]:
    """The regions that may be the right forearm entering at the frame's ``side`` ("bottom" or "right"):
    (entry depth (mm), entry column (strided pixels; the right edge's own for "right"), the far end (3,),
    how far it lies from the entry (mm)) each, by step 3 of the module docstring."""
    h, w = reg.labels.shape
    arms = []
    for label in reg.big():
        v, u = np.nonzero(reg.labels == label)
        at = v >= h * (1 - BOTTOM_BAND) if side == "bottom" else u >= w - h * BOTTOM_BAND
        if at.sum() * reg.stride**2 < MIN_REGION_PX / 10 or (side == "right" and v.max() >= h * (1 - BOTTOM_BAND)):
            continue  # too little of it there, or a region at the bottom edge, already weighed as such
        entering = _entering(v, u, (h, w))
        entry_z = float(np.median(reg.depth[v[at], u[at]]))
        if entry_z < MAX_ENTRY_MM:
            points = reg.points[v, u]
            end, reach = _reach(points, entering)
            if side == "right" and reach < RIGHT_REACH_MM:
                continue  # an object cut by the right edge, not a forearm reaching in from it
            if not _upright(points, v, entering, end, reg.plane):  # an object standing on the table at the edge
                arms.append((entry_z, float(u[at].mean()) if side == "bottom" else float(w), end, reach))
    # the other hand's forearm, entering at the bottom left, reaches far while the right one, lowered, may not
    longest = max((a[3] for a in arms if a[1] >= OTHER_HAND_SIDE * w), default=0.0)
    return [a for a in arms if a[3] >= REACH_SHARE * longest]  # an object standing at the edge is short


def detect(reg: Regions, cube_mm: float = 250.0) -> np.ndarray | None:
    """Step 3 of the module docstring: the hand centre (3,) of a frame without a prior, or None."""
    arms = _forearms(reg, "bottom") or _forearms(reg, "right")
    if arms:
        nearest = min(a[0] for a in arms)
        return _behind_surface(max((a for a in arms if a[0] <= nearest + ARM_TIE_MM), key=lambda a: a[1])[2])
    blobs = reg.big()
    if not blobs:
        return None
    label = min(blobs, key=lambda r: float(np.median(reg.depth[reg.labels == r])))  # the nearest hand-sized region
    fg = reg.points[reg.depth > 0]  # (N, 3) everything above the table
    return _behind_surface(_refine_com(fg, reg.of(label)[0].mean(0), cube_mm, 10))


def track(reg: Regions, prior: np.ndarray) -> tuple[np.ndarray | None, bool]:
    """Step 4 of the module docstring: (the hand centre (3,) near ``prior`` (3,), or None; whether it
    is only held: the centre of mass around the prior, because no region's far end was near it)."""
    surface_prior = prior - np.array([0.0, 0.0, SURFACE_TO_JOINT_MM])
    near = np.linalg.norm(reg.points - surface_prior, axis=-1) <= TRACK_RADIUS_MM  # (h, w)
    ends, local = [], []
    for label in np.unique(reg.labels[near & (reg.labels > 0)]):
        if reg.count[label] * reg.stride**2 < MIN_REGION_PX:
            continue
        v, u = np.nonzero(reg.labels == label)
        points, entering = reg.points[v, u], _entering(v, u, reg.labels.shape)
        end = _far_end(points, entering)
        if _upright(points, v, entering, end, reg.plane):
            continue  # an object standing on the table at the bottom edge: detection leaves it out too
        ends.append(_behind_surface(end))
        local.append(points[np.linalg.norm(points - surface_prior, axis=1) <= HAND_RADIUS_MM])
    steps = [float(np.linalg.norm(c - prior)) for c in ends]
    if steps and min(steps) <= MAX_STEP_MM:
        return ends[int(np.argmin(steps))], False
    local = [p for p in local if len(p) * reg.stride**2 >= MIN_REGION_PX]
    if not local:
        return None, False
    return _behind_surface(max(local, key=len).mean(0)), True


# ----------------------------------------------------------------------------- a sequence


def locate_sequence(depths, intrinsics: Intrinsics = FPHA_DEPTH, cube_mm: float = 250.0,
                    refiner: "Refiner | None" = None, progress: bool = False, table: bool = True,
                    detector: str = ALWAYS, both_ways: bool = False) -> Located:
    """The hand centre of every frame of one sequence: ``depths`` (H, W) uint16 depth maps in mm, in
    order (a list, or any iterable).  With a ``refiner`` (:func:`load_refiner`) each centre found is
    refined by the learned ComRefNet before it becomes the next frame's prior; when the refiner has a
    learned detector, the detector's hand replaces the centre found first where :func:`overrules` says so,
    in every frame (``detector`` :data:`ALWAYS`, the crop cache's), only in frames where no table plane was
    found (:data:`NO_TABLE`, what ``locate`` and ``predict`` run on a recording: :data:`DETECTOR_ON_RECORDINGS`)
    or never (:data:`NEVER`).  With ``table`` False no frame's table plane is fitted or removed
    (:func:`regions`), for the refiner either.

    With ``both_ways`` (what ``locate`` and ``predict`` run on a recording: :data:`BOTH_WAYS_ON_RECORDINGS`)
    the sequence is also tracked from its last frame back to its first, and wherever the two passes part,
    the stretch is taken from the backward pass where enough of its frames, each located on its own, agree
    with it rather than with the forward pass (:func:`settle`): a track that starts on the wrong hand or on
    clutter keeps to it, and the pass from the other end shows it."""
    check(detector in DETECTOR_POLICIES, "detector", detector, f"one of {DETECTOR_POLICIES}")
    how = dict(intrinsics=intrinsics, cube_mm=cube_mm, refiner=refiner, table=table, detector=detector)
    if not both_ways:
        return _one_way(depths, progress=progress, desc="locating", **how)
    frames = list(depths)
    ahead = _one_way(frames, progress=progress, desc="locating forward", **how)
    back = _one_way(frames[::-1], progress=progress, desc="locating backward", way=BACKWARD, **how)
    back = replace(back, centres=back.centres[::-1], uv=back.uv[::-1], status=back.status[::-1], how=back.how[::-1],
                   planes=back.planes[::-1])  # in the frames' order

    def tracked(located: Located) -> np.ndarray:  # (T,) bool: where a pass followed the hand from the frame before
        return np.isin(located.how, (TRACKED, HELD))

    taken = settle(ahead.centres, back.centres, lambda t: _one_way([frames[t]], **how).centres[0],
                   tracked(ahead), tracked(back), progress)

    def pick(forward: list, backward: list) -> list:
        return [b if k else f for f, b, k in zip(forward, backward, taken)]

    return Located(np.where(taken[:, None], back.centres, ahead.centres), np.where(taken[:, None], back.uv, ahead.uv),
                   pick(ahead.status, back.status), describe(refiner, detector, both_ways), pick(ahead.how, back.how),
                   ahead.planes, pick(ahead.way, back.way))


def settle(ahead: np.ndarray, back: np.ndarray, alone, tracked_ahead: np.ndarray | None = None,
           tracked_back: np.ndarray | None = None, progress: bool = False) -> np.ndarray:
    """Which frames to take from the backward pass: (T,) bool, for a sequence's forward and backward
    centres (T, 3) mm (NaN where lost).  Where the passes lie within ``BOTH_WAYS_AGREE_MM`` of each other
    (or both lost the hand) the forward pass is kept.  Every stretch of consecutive frames where they part
    (or one lost it) is taken whole from the backward pass where more of its frames, each located on its own
    (``alone(t)``: frame t's centre (3,), NaN where lost, asked only of those frames), agree with it than with
    the forward pass, and at least ``BOTH_WAYS_MIN_VOTES``; on a tie, from the pass that located more of them,
    then from the forward one.  A frame counts for a pass only where the pass tracked the hand there
    (``tracked_ahead``, ``tracked_back`` (T,) bool; default everywhere): where it detected the hand afresh, its
    centre is that of the frame located alone, and no evidence."""
    lost_a, lost_b = np.isnan(ahead).any(1), np.isnan(back).any(1)
    with np.errstate(invalid="ignore"):
        apart = np.where(lost_a | lost_b, lost_a != lost_b, np.linalg.norm(ahead - back, axis=1) > BOTH_WAYS_AGREE_MM)
    tracked_ahead = np.ones(len(ahead), bool) if tracked_ahead is None else np.asarray(tracked_ahead, bool)
    tracked_back = np.ones(len(back), bool) if tracked_back is None else np.asarray(tracked_back, bool)
    taken = np.zeros(len(ahead), bool)
    bar = tqdm(total=int(apart.sum()), desc="locating alone where the passes part", unit="frame", disable=not progress)
    t = 0
    while t < len(ahead):
        if not apart[t]:
            t += 1
            continue
        end = t + int(np.argmin(np.append(apart[t:], False)))  # the stretch t..end-1
        own = np.stack([alone(k) for k in range(t, end)])
        bar.update(end - t)
        with np.errstate(invalid="ignore"):
            near_a = np.linalg.norm(own - ahead[t:end], axis=1) <= BOTH_WAYS_AGREE_MM
            near_b = np.linalg.norm(own - back[t:end], axis=1) <= BOTH_WAYS_AGREE_MM
        votes_a, votes_b = int((near_a & tracked_ahead[t:end]).sum()), int((near_b & tracked_back[t:end]).sum())
        found_a, found_b = int((~lost_a[t:end]).sum()), int((~lost_b[t:end]).sum())
        taken[t:end] = ((votes_b > votes_a and votes_b >= BOTH_WAYS_MIN_VOTES)
                        or (votes_b == votes_a and found_b > found_a))
        t = end
    bar.close()
    return taken


def _one_way(depths, intrinsics: Intrinsics, cube_mm: float, refiner: "Refiner | None", table: bool, detector: str,
             progress: bool = False, desc: str = "locating", way: str = FORWARD) -> Located:
    """:func:`locate_sequence` in one pass through ``depths`` in the order given (``way`` says which it is)."""
    centres, status, hows, planes = [], [], [], []
    prior, held = None, 0
    for depth in tqdm(depths, desc=desc, unit="frame", disable=not progress):
        reg = regions(depth, intrinsics, table=table)
        found, how = None, ""
        if prior is not None:
            found, only_held = track(reg, prior)
            held = held + 1 if only_held else 0
            how = HELD if only_held else TRACKED
            if held > MAX_HELD:  # held too long without an arm's end in reach: look afresh
                found, held = None, 0
        if found is None:
            found = detect(reg, cube_mm)
            how = "" if found is None else DETECTED
        may = detector == ALWAYS or (detector == NO_TABLE and reg.plane is None)
        if found is not None and refiner is not None and may and refiner.net.detector is not None:
            point, prob = refiner.detect(depth, intrinsics)
            if overrules(found, point, prob, intrinsics):
                found, how = point, NET
        if found is not None and refiner is not None:
            found = refiner.refine(depth, found, intrinsics, reg.plane)
        prior = found
        centres.append(np.full(3, np.nan, np.float32) if found is None else found.astype(np.float32))
        status.append(LOST if found is None else LOCATED)
        hows.append(how)
        planes.append(reg.plane)
    c = np.stack(centres).astype(np.float32) if centres else np.zeros((0, 3), np.float32)
    with np.errstate(invalid="ignore"):
        uv = np.stack([intrinsics.fx * c[:, 0] / c[:, 2] + intrinsics.u0,
                       intrinsics.fy * c[:, 1] / c[:, 2] + intrinsics.v0], -1).astype(np.float32)
    return Located(c, uv.reshape(-1, 2), status, describe(refiner, detector), hows, planes, [way] * len(status))


def describe(refiner: "Refiner | None", detector: str = ALWAYS, both_ways: bool = False) -> str:
    """Which localiser :func:`locate_sequence` runs with ``refiner``, ``detector`` and ``both_ways``, in words."""
    base = "depth tracker (table plane removed, depth-continuous regions, far end of the arm; handfuse.localise)"
    if both_ways:
        base += (", run forward and backward through the sequence (where the two part, the backward pass where more"
                 " of those frames located alone agree with it)")
    if refiner is None:
        return base + ", no learned refinement"
    cfg = refiner.cfg
    fine = f", then x{cfg.fine_iterations} on a {cfg.fine_cube_mm:g} mm cube" if cfg.fine_cube_mm else ""
    net = ""
    if refiner.net.detector is not None:
        net = {ALWAYS: ", overruled by a learned whole-frame detector where it disagrees",
               NO_TABLE: ", overruled by a learned whole-frame detector where it disagrees in a frame without a table"
                         " plane",
               NEVER: ", its learned whole-frame detector left out"}[detector]
    return base + (f"{net} + ComRefNet refinement x{cfg.iterations}{fine}, the mean of {len(RESTARTS)} restarts"
                   f" ({refiner.source})")


# ----------------------------------------------------------------------------- learned refinement


@dataclass(frozen=True)
class RefineConfig:
    """DeepPrior++'s ComRefNet as used here: a ``size`` x ``size`` crop of a ``cube_mm`` cube around
    the estimate -> the offset to the middle MCP; trained on estimates perturbed by ``sigma_mm``
    (per axis, normal, at most ``max_offset_mm`` in all) around the truth."""

    size: int = 32
    cube_mm: float = 300.0
    channels: tuple[int, ...] = (16, 32, 64)
    fc: int = 256
    sigma_mm: float = 25.0
    max_offset_mm: float = 80.0
    iterations: int = 3
    draws: int = 2  # perturbed estimates per training frame and epoch
    frame_stride: int = 1  # every k-th frame of the training sequences
    test_stride: int = 4  # every k-th frame of the validation and test sequences
    without_table: bool = True  # the net sees the frame with the table plane removed (:func:`without_table`)
    # share of the training estimates taken where the tracker itself lands on that training frame (plus
    # TRACKED_JITTER_MM of noise, shrunk to max_offset_mm like the rest) instead of around the truth: the
    # errors the net must undo at use, such as a far end on a held object, which random offsets rarely draw
    tracked: float = 0.0
    # the fine stage (0: none): a second net of the same layers on a fine_cube_mm cube at fine_size pixels,
    # trained on estimates perturbed by fine_sigma_mm (at most fine_max_offset_mm) around the truth, applied
    # fine_iterations times after the first; trained with it, in the same run
    fine_cube_mm: float = 0.0
    fine_size: int = 48
    fine_sigma_mm: float = 12.0
    fine_max_offset_mm: float = 40.0
    fine_iterations: int = 2
    fine_share: float = 1.0  # the share of each training batch's frames that also train the fine stage
    # the learned whole-frame detector (HandDetector; empty: none): its six layers' widths, trained in the same run
    # on detect_batch whole frames beside each batch of crops
    detector: tuple[int, ...] = ()
    detect_batch: int = 16
    # hand-size augmentation (0: none): each training crop's cube is scaled by exp(N(0, scale_sigma)), clipped to
    # 2 sigma, and its depths and target offset are normalised by that cube, so that the net sees the hand
    # larger or smaller than the subjects' (DeepPrior++ scales the cube so); the detector is trained unscaled
    scale_sigma: float = 0.0
    # hole augmentation (0: none): half of the training crops (the fine stage's too, with hole_fine) lose a share
    # U(0, hole_share) of their pixels, in runs of two along the row, and, with probability hole_widen each, every
    # missing pixel's neighbour on one side along the row (left or right at random), as a sensor's dropouts and a
    # wider projector shadow take the hand's surface (:func:`holed`)
    hole_share: float = 0.0
    hole_widen: float = 1.0
    hole_fine: bool = True

    def __post_init__(self):
        check(self.size >= 8 and self.size % 2 ** len(self.channels) == 0, "refine.size", self.size,
              f"an integer >= 8 divisible by 2**{len(self.channels)} (one pooling per conv block)")
        check(self.cube_mm > 0 and self.sigma_mm > 0 and self.max_offset_mm > 0, "refine.cube_mm/sigma_mm/max_offset_mm",
              (self.cube_mm, self.sigma_mm, self.max_offset_mm), "positive sizes in mm")
        check(self.iterations >= 1 and self.draws >= 1, "refine.iterations/draws", (self.iterations, self.draws),
              "integers >= 1")
        check(self.frame_stride >= 1 and self.test_stride >= 1, "refine.frame_stride/test_stride",
              (self.frame_stride, self.test_stride), "integers >= 1")
        check(0.0 <= self.tracked <= 1.0, "refine.tracked", self.tracked, "a share in [0, 1]")
        check(self.fine_cube_mm >= 0, "refine.fine_cube_mm", self.fine_cube_mm, "a size in mm (0: no fine stage)")
        check(self.fine_size >= 8 and self.fine_size % 2 ** len(self.channels) == 0, "refine.fine_size", self.fine_size,
              f"an integer >= 8 divisible by 2**{len(self.channels)} (one pooling per conv block)")
        check(self.fine_sigma_mm > 0 and self.fine_max_offset_mm > 0, "refine.fine_sigma_mm/fine_max_offset_mm",
              (self.fine_sigma_mm, self.fine_max_offset_mm), "positive sizes in mm")
        check(self.fine_iterations >= 1, "refine.fine_iterations", self.fine_iterations, "an integer >= 1")
        check(0.0 < self.fine_share <= 1.0, "refine.fine_share", self.fine_share, "a share in (0, 1]")
        check(len(self.detector) in (0, 6) and all(isinstance(w, int) and w >= 1 for w in self.detector),
              "refine.detector", self.detector, "() or six positive layer widths")
        check(self.detect_batch >= 1, "refine.detect_batch", self.detect_batch, "an integer >= 1")
        check(0.0 <= self.hole_share <= 1.0, "refine.hole_share", self.hole_share, "a share in [0, 1] (0: no holes)")
        check(0.0 <= self.hole_widen <= 1.0, "refine.hole_widen", self.hole_widen, "a probability in [0, 1]")
        # the largest cube, around an estimate max_offset_mm off, must lie inside the wide patch around the truth
        check(0.0 <= self.scale_sigma and math.exp(2 * self.scale_sigma) * self.cube_mm / 2 + self.max_offset_mm
              <= WIDE * self.cube_mm / 2, "refine.scale_sigma", self.scale_sigma,
              f"a std >= 0 whose largest cube (x exp(2 std)) around an estimate max_offset_mm off stays inside the"
              f" {WIDE:g}-cube patch")

    def fine_stage(self) -> "RefineConfig | None":
        """The fine stage as a one-stage config of its own (the same layers), or None without one."""
        if not self.fine_cube_mm:
            return None
        return replace(self, size=self.fine_size, cube_mm=self.fine_cube_mm, sigma_mm=self.fine_sigma_mm,
                       max_offset_mm=self.fine_max_offset_mm, iterations=self.fine_iterations, tracked=0.0,
                       fine_cube_mm=0.0, detector=())


class ComRefNet(nn.Module):
    """(B, 1, S, S) normalised crop -> (B, 3) offset from the crop's centre to the hand centre, in
    cube half-sizes: conv blocks (3 x 3 conv, batch norm, ReLU, 2 x 2 max pool), then two FC layers.
    With a fine stage (:meth:`RefineConfig.fine_stage`), ``fine`` is its own ComRefNet; with
    ``cfg.detector``, ``detector`` is the learned whole-frame detector (:class:`HandDetector`).  Built
    channels_last, which suits CPU convolutions and pooling (docs/benchmarks.md); crops follow."""

    def __init__(self, cfg: RefineConfig):
        super().__init__()
        self.cfg = cfg
        layers, c_in = [], 1
        for c in cfg.channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = cfg.size // 2 ** len(cfg.channels)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, cfg.fc), nn.ReLU(inplace=True),
                                  nn.Linear(cfg.fc, 3))
        fine = cfg.fine_stage()
        self.fine = ComRefNet(fine) if fine is not None else None
        self.detector = HandDetector(cfg.detector) if cfg.detector else None  # built last: the rest starts as without it
        self.to(memory_format=torch.channels_last)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(crops.contiguous(memory_format=torch.channels_last)))  # (B, 3)

    @staticmethod
    def loss(offsets: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.smooth_l1_loss(offsets.float(), targets, beta=0.05)


# ----------------------------------------------------------------------------- learned detection

DETECT_STRIDE = 8  # the detector sees every 8th pixel of a frame (80 x 60 of FPHA's 640 x 480) ...
DETECT_CELL = 4 * DETECT_STRIDE  # ... and scores cells of 32 x 32 frame pixels (after two stride-2 layers)
DETECT_FAR_M = 1.5  # depths beyond this (m) are clipped to it
DETECT_SHIFT = 4  # training frames are shifted by up to this many of its pixels each way


class HandDetector(nn.Module):
    """A whole frame (:func:`detector_input`, (B, 2, h, w)) -> (B, 4, h / 4, w / 4): per cell of
    ``DETECT_CELL`` frame pixels, the logit that the middle MCP projects into it, and the MCP's offset
    from the cell's centre (columns, rows; in cells) and its depth (m).  Six 3 x 3 conv blocks (conv,
    batch norm, ReLU) of the given widths: strides 2, 1, 2, 1, then dilations 2 and 4, so that a cell
    sees about 40 cells around it: the whole forearm, or the board held in front of the palm.

    Where the rule-based tracker follows the arm, this net is trained to point at the hand in the whole
    frame (a CenterNet-style heat map: Zhou et al. 2019, "Objects as Points"); :func:`locate_sequence`
    takes its hand where the two disagree and the net finds the tracker's choice unlikely."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()

        def block(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, dilation, dilation=dilation, bias=False),
                                 nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
        w = widths
        self.body = nn.Sequential(block(2, w[0], 2), block(w[0], w[1]), block(w[1], w[2], 2), block(w[2], w[3]),
                                  block(w[3], w[4], dilation=2), block(w[4], w[5], dilation=4))
        self.head = nn.Conv2d(w[5], 4, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(frames.contiguous(memory_format=torch.channels_last)))

    @staticmethod
    def loss(out: torch.Tensor, cell: torch.Tensor, offset: torch.Tensor, z_m: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the cells, plus the offset's and depth's smooth L1 at the true cell."""
        b = len(out)
        at = out.float()[torch.arange(b), 1:, cell // out.shape[3], cell % out.shape[3]]  # (B, 3)
        f = nn.functional
        return (f.cross_entropy(out.float()[:, 0].reshape(b, -1), cell) + f.smooth_l1_loss(at[:, :2], offset, beta=0.1)
                + 10.0 * f.smooth_l1_loss(at[:, 2], z_m, beta=0.01))


def detector_frame(depth: np.ndarray) -> np.ndarray:
    """What the detector keeps of an (H, W) uint16 frame: every ``DETECT_STRIDE``-th pixel, (h, w) uint16."""
    half = DETECT_STRIDE // 2
    return np.ascontiguousarray(depth[..., half::DETECT_STRIDE, half::DETECT_STRIDE])


def detector_input(frames: np.ndarray) -> torch.Tensor:
    """(B, h, w) uint16 kept frames (:func:`detector_frame`) -> (B, 2, h, w) float32: depth in m, clipped
    at ``DETECT_FAR_M`` (0 where missing), and whether it is valid."""
    d = frames.astype(np.float32) / 1000.0
    return torch.from_numpy(np.stack([np.minimum(d, DETECT_FAR_M), (frames > 0).astype(np.float32)], 1))


def detector_targets(centres: np.ndarray, grid: tuple[int, int], intrinsics: Intrinsics,
                     shift_px: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The detector's targets for centres (N, 3) mm on a (rows, columns) grid of cells, the frames moved
    by ``shift_px`` (columns, rows; frame pixels): the cell index (N,) int64 (a centre off the frame
    goes to the nearest border cell), the offset from its centre (N, 2) float32, in cells, and z (N,) m."""
    u, v = (intrinsics.project(centres) + np.asarray(shift_px, np.float64)).T
    gx = np.clip(np.floor(u / DETECT_CELL), 0, grid[1] - 1)
    gy = np.clip(np.floor(v / DETECT_CELL), 0, grid[0] - 1)
    offset = np.stack([u / DETECT_CELL - gx - 0.5, v / DETECT_CELL - gy - 0.5], 1).astype(np.float32)
    return (gy * grid[1] + gx).astype(np.int64), offset, (centres[:, 2] / 1000.0).astype(np.float32)


def detector_grid(shape: tuple[int, ...]) -> tuple[int, int]:
    """The detector's (rows, columns) of cells for kept frames of ``shape`` (h, w): two stride-2 layers."""
    return tuple(math.ceil(math.ceil(int(n) / 2) / 2) for n in shape[-2:])


def _shifted(frames: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Kept frames (B, h, w) moved ``dx`` columns right and ``dy`` rows down, missing (0) where nothing moved in."""
    out = np.zeros_like(frames)
    h, w = frames.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        frames[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def decode_detections(out: torch.Tensor, intrinsics: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """The detector's output (B, 4, rows, columns) -> its hand (B, 3) mm (the likeliest cell, moved by its
    offset, at its depth) and each frame's probabilities over the cells (B, rows, columns)."""
    out = out.float()
    b, _, rows, cols = out.shape
    prob = out[:, 0].reshape(b, -1).softmax(1)
    k = prob.argmax(1)
    gy, gx = k // cols, k % cols
    at = out[torch.arange(b), 1:, gy, gx].cpu().numpy().astype(np.float64)  # (B, 3)
    u = (gx.cpu().numpy() + 0.5 + at[:, 0]) * DETECT_CELL
    v = (gy.cpu().numpy() + 0.5 + at[:, 1]) * DETECT_CELL
    points = intrinsics.backproject(np.stack([u, v], 1), np.maximum(at[:, 2] * 1000.0, MIN_CENTRE_Z_MM))
    return points, prob.reshape(b, rows, cols).cpu().numpy()


def cell_mass(prob: np.ndarray, point: np.ndarray, intrinsics: Intrinsics) -> float:
    """The detector's probability (one frame's (rows, columns)) of the cell ``point`` (3,) mm projects
    into and its 8 neighbours (a point off the frame: the nearest border cell's)."""
    cell = detector_targets(np.asarray(point, np.float64)[None], prob.shape, intrinsics)[0][0]
    gy, gx = divmod(int(cell), prob.shape[1])
    return float(prob[max(gy - 1, 0):gy + 2, max(gx - 1, 0):gx + 2].sum())


def overrules(found: np.ndarray, point: np.ndarray, prob: np.ndarray, intrinsics: Intrinsics) -> bool:
    """Whether the detector's hand ``point`` (3,) mm replaces the centre ``found`` (3,) mm: they lie more than
    ``SWITCH_MM`` apart, the detector's probabilities ``prob`` give ``found``'s cells less than ``SWITCH_MASS``,
    and its own point's ``SWITCH_RATIO`` times as much."""
    if np.linalg.norm(np.asarray(found, np.float64) - point) <= SWITCH_MM:
        return False
    mass = cell_mass(prob, found, intrinsics)
    return mass < SWITCH_MASS and cell_mass(prob, point, intrinsics) > SWITCH_RATIO * mass


WIDE = 2.0  # the patch a frame is kept as spans WIDE cubes ...
WIDE_RES = 1.75  # ... at WIDE_RES times the crop's resolution


def wide_patch(depth: np.ndarray, anchor: np.ndarray, cfg: RefineConfig, intrinsics: Intrinsics) -> np.ndarray:
    """The (P, P) uint16 depth patch spanning ``WIDE`` cubes around ``anchor`` from which every
    refiner crop near the anchor is cut (:func:`refiner_crop`): training keeps frames as these."""
    size = _wide_size(cfg)
    affine = crop_affine(anchor, intrinsics, WIDE * cfg.cube_mm, size)
    return cv2.warpAffine(np.ascontiguousarray(depth), affine, (size, size), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def without_table(depth: np.ndarray, plane: tuple[np.ndarray, float] | None, intrinsics: Intrinsics) -> np.ndarray:
    """(H, W) uint16 depth with the table (within ``TABLE_CLEARANCE_MM`` of ``plane`` or behind it) set to
    0, missing; the depth itself if there is no plane.  What the refiner sees, so that a table right
    against the hand looks to it as a far one does."""
    if plane is None:
        return depth
    n, offset = plane
    rx, ry = _rays(intrinsics)
    height = offset - depth * (n[0] * rx + n[1] * ry + n[2])  # (H, W) mm in front of the plane
    return np.where(height > TABLE_CLEARANCE_MM, depth, 0).astype(np.uint16)


@lru_cache(maxsize=4)
def _rays(intrinsics: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    return tuple(r.astype(np.float32) for r in intrinsics.rays())


def _wide_size(cfg: RefineConfig) -> int:
    return int(round(cfg.size * WIDE * WIDE_RES))


def refiner_crop(patch: np.ndarray, anchor: np.ndarray, centre: np.ndarray, cfg: RefineConfig,
                 intrinsics: Intrinsics, scale: float = 1.0) -> np.ndarray:
    """The refiner's (S, S) float32 input around ``centre``, cut from a wide patch around ``anchor``:
    normalised as :func:`handfuse.preprocess.crop` normalises (the same path at training and at use).
    ``scale`` (training's hand-size augmentation) cuts a cube ``scale`` times ``cfg.cube_mm`` and normalises
    by it, so that the scene looks ``1 / scale`` times its size."""
    cube = cfg.cube_mm * scale
    wide = np.vstack([crop_affine(anchor, intrinsics, WIDE * cfg.cube_mm, _wide_size(cfg)), [0, 0, 1]])
    target = np.vstack([crop_affine(centre, intrinsics, cube, cfg.size), [0, 0, 1]])
    affine = (target @ np.linalg.inv(wide))[:2]  # wide patch pixels -> crop pixels
    out = cv2.warpAffine(patch, affine, (cfg.size, cfg.size), flags=cv2.INTER_NEAREST,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(np.float32)
    missing = out <= 0
    out = (out - np.float32(centre[2])) / np.float32(cube / 2)
    out[missing] = 1.0
    return np.clip(out, -1.0, 1.0, out=out)


@dataclass
class Refiner:
    """A trained ComRefNet and where its weights came from (``source``): :meth:`refine` applies it."""

    net: ComRefNet
    cfg: RefineConfig
    source: str

    def refine(self, depth: np.ndarray, centre: np.ndarray, intrinsics: Intrinsics = FPHA_DEPTH,
               plane: tuple[np.ndarray, float] | None = None) -> np.ndarray:
        """``centre`` (3,) mm moved ``cfg.iterations`` times by the net's offset (at most ``MAX_REFINE_MM`` in
        all), then ``cfg.fine_iterations`` times by the fine stage's, when there is one; then refined so
        again from the result and from :data:`RESTARTS` around it, the mean of those 7; no step takes a
        centre nearer the camera than ``MIN_CENTRE_Z_MM``.  ``plane``: the frame's table plane
        (:func:`table_plane`), removed first if the net was trained so."""
        start = np.asarray(centre, np.float64)
        if self.cfg.without_table:
            depth = without_table(depth, plane, intrinsics)
        found = self._refine(depth, start, start[None], intrinsics)[0]
        return self._refine(depth, found, found + RESTARTS, intrinsics).mean(0).astype(np.float32)

    def detect(self, depth: np.ndarray, intrinsics: Intrinsics = FPHA_DEPTH) -> tuple[np.ndarray, np.ndarray]:
        """The learned detector's hand (3,) mm in a whole (H, W) uint16 frame, and its probabilities over
        the frame's cells (rows, columns); the refiner must have a detector (``cfg.detector``)."""
        net = self.net.detector
        net.eval()
        with torch.inference_mode():
            out = net(detector_input(detector_frame(depth)[None]).to(next(self.net.parameters()).device))
        points, prob = decode_detections(out, intrinsics)
        return points[0], prob[0]

    def _refine(self, depth: np.ndarray, anchor: np.ndarray, starts: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
        """Both stages from each of ``starts`` (K, 3) mm, the first stage's crops cut from one wide patch
        around ``anchor`` -> (K, 3) mm."""
        patch = wide_patch(depth, anchor, self.cfg, intrinsics)
        k = len(starts)
        found = refine_batch(self.net, np.broadcast_to(patch, (k, *patch.shape)), np.broadcast_to(anchor, (k, 3)),
                             starts, self.cfg, intrinsics, min_z=MIN_CENTRE_Z_MM)
        fine = self.cfg.fine_stage()
        if fine is not None:
            patches = np.stack([wide_patch(depth, f, fine, intrinsics) for f in found])
            found = refine_batch(self.net.fine, patches, found, found, fine, intrinsics, min_z=MIN_CENTRE_Z_MM)
        return found


def refine_batch(net: ComRefNet, patches: np.ndarray, anchors: np.ndarray, starts: np.ndarray, cfg: RefineConfig,
                 intrinsics: Intrinsics, iterations: int | None = None, min_z: float | None = None) -> np.ndarray:
    """Iterated refinement of a batch of estimates, each inside its wide patch: patches (B, P, P), anchors
    and starts (B, 3) -> (B, 3) mm; with ``min_z``, no centre is moved nearer the camera than that (mm)."""
    net.eval()
    centres = np.asarray(starts, np.float64).copy()
    device = next(net.parameters()).device
    with torch.inference_mode():
        for _ in range(cfg.iterations if iterations is None else iterations):
            x = np.stack([refiner_crop(p, a, c, cfg, intrinsics) for p, a, c in zip(patches, anchors, centres)])
            step = net(torch.from_numpy(x)[:, None].to(device)).float().cpu().numpy().astype(np.float64)
            centres = centres + step * cfg.cube_mm / 2
            moved = centres - starts
            far = np.linalg.norm(moved, axis=1, keepdims=True)
            centres = np.where(far > MAX_REFINE_MM, starts + moved * MAX_REFINE_MM / np.maximum(far, 1e-9), centres)
            if min_z is not None:
                centres[:, 2] = np.maximum(centres[:, 2], min_z)
    return centres


# ----------------------------------------------------------------------------- training the refiner


# half the training estimates start where the tracker lands (RefineConfig.tracked).  On validation (cpu preset,
# seed 0's split, the same pose estimator on the localiser's crops, refiner seeds 0 and 1) that lowered the pose
# error from 21.86 and 21.08 to 20.83 and 20.11 mm (-1.00 +- 0.38, paired, 95 % t-interval) and the frames more
# than 40 mm off from 72 and 61 to 44 and 33 of 1,151; a share of 0.8 did worse (21.43 mm, seed 0)
TRACKED_SHARE = 0.5
TRACKED_JITTER_MM = 8.0
# the fine stage: a 200 mm cube at 40 pixels (5 mm a pixel, against the first stage's 7.5), trained on estimates
# 12 mm per axis (at most 40 mm) off the truth, applied twice.  Chosen on validation (as above; refiner seed 0's first
# stage, then a fine net trained on its own, 48 pixels): a 200 mm cube gave 20.45 mm against 21.85 without, 160 and
# 250 mm 21.25 and 20.89; 64 pixels 20.42; 16 mm perturbations (at most 50) 20.48.  Trained with the first stage on
# half of each batch, for time: paired by refiner seed (0-2) it lowers the pose error by 0.99 +- 0.17 mm, and half
# against every row is +0.25 +- 0.79 mm (docs/benchmarks.md)
FINE = dict(fine_cube_mm=200.0, fine_size=40, fine_sigma_mm=12.0, fine_max_offset_mm=40.0, fine_iterations=2,
            fine_share=0.5)
# the cpu preset trains 16 epochs: on the same validation split (refiner seeds 0-2, both stages, half of each batch
# for the fine one) 16 against 10 gave pose errors of 19.41, 18.77 and 18.76 mm against 20.81, 19.29 and 19.34
# (-0.83 +- 1.21 mm, paired, 3 seeds, 95 % t-interval; every seed lower), centre errors of 7.3, 5.9 and 5.7 mm
# against 9.6, 7.3 and 7.1 (-1.66 +- 1.40), frames more than 40 mm off 23, 4 and 9 against 41, 16 and 18
# the learned detector: layers 8, 16, 32, 32, 32 and 32 wide, 16 whole frames beside each batch of crops (the cpu
# preset: 84k frames over its 16 epochs).  Screened alone on the cpu training split (one seed each; scored as at
# SWITCH_MM, mean centre error on seed 2's dev benchmark, refiners 0-2): 7.05-7.24 mm; 16-24-32-32-32-32 7.19-7.36;
# 16-32-32-48-32-32 7.13-7.29, and 7.21-7.49 on half the frames; 24-48-48-64-48-48 on 211k frames 6.99-7.10, a
# far larger net on more frames (its cost: docs/benchmarks.md)
DETECTOR = dict(detector=(8, 16, 32, 32, 32, 32), detect_batch=16)
# hand-size augmentation: training crops' cubes scaled by exp(N(0, 0.08)), 0.85-1.17 times (2 sigma), which spans
# the scene sizes `benchmarks.localise --sensor` tries (0.85 and 1.1 times).  Chosen on the dev benchmarks, never on test
# (their test splits, generator seeds 1 and 2 pooled, every 6th sequence; refiners 0-2 on the cpu training split,
# paired by seed, 95 % t; docs/benchmarks.md): the mean centre error over the scene as rendered, 15 % smaller and
# 10 % larger went from 10.33/10.72/10.18 to 8.76/8.26/8.67 mm (-1.85 +- 1.33); as rendered +0.12 +- 1.22 (no
# difference), smaller -3.96 +- 1.69, larger -1.71 +- 1.33.  The one sigma tried
SCALE = dict(scale_sigma=0.08)
# hole augmentation (hole_share) stays off in every preset.  Screened the same way (cpu preset, refiners 0-2, dev
# benchmarks 1 and 2 pooled, paired by seed, 95 % t; docs/benchmarks.md): hole_share 0.4 in the first stage's crops
# alone took the mean centre error with holes cut across the hand from 34.1/32.7/29.2 to 22.5/24.4/22.2 mm (-8.98 +-
# 5.91) and left wider shadows (+0.09 +- 1.05) and speckle (+0.13 +- 0.88) where they were, but cost whole hands:
# as rendered +0.21 +- 0.70 mm, the plain HPE's pose error on its centres +0.19 +- 0.16 mm (the depth-centred target,
# at most 1.2 times the true-centred, has no room for it); in both stages, as rendered +0.69 +- 0.79 and the frames
# 15 % smaller +1.27 +- 0.84
REFINE_PRESETS: dict[str, tuple[RefineConfig, dict]] = {  # preset -> (refiner, TrainConfig fields)
    "smoke": (RefineConfig(draws=8, test_stride=2, tracked=TRACKED_SHARE, **{**FINE, "fine_size": 32}, **DETECTOR,
                           **SCALE),
              dict(epochs=6, batch_size=32, patience=6, lr=2e-3, schedule="cosine")),
    "cpu": (RefineConfig(size=40, sigma_mm=30.0, max_offset_mm=100.0, draws=3, tracked=TRACKED_SHARE, **FINE, **DETECTOR,
                         **SCALE),
            dict(epochs=16, batch_size=64, patience=16, lr=2e-3, schedule="cosine")),
    "paper": (RefineConfig(size=64, channels=(16, 32, 64, 64), frame_stride=2, tracked=TRACKED_SHARE,
                           **{**FINE, "fine_size": 64, "fine_share": 1.0}, **{**DETECTOR, "detect_batch": 32}, **SCALE),
              dict(epochs=20, batch_size=128, patience=6, lr=1e-3, schedule="cosine")),
}
RUN_PREFIX = "localise-comref"


@dataclass
class RefineFrames:
    """Frames kept for refinement training: wide patches (N, P, P) uint16 around the true centres (N, 3),
    when kept, where the tracker (no refinement) put each frame's centre (N, 3; NaN where lost), with
    a fine stage, its own wide patches (N, Q, Q) around the true centres, and with a detector, the whole
    frames as it sees them (N, h, w) uint16 (:func:`detector_frame`)."""

    patches: np.ndarray
    centres: np.ndarray
    tracked: np.ndarray | None = None
    fine_patches: np.ndarray | None = None
    frames: np.ndarray | None = None


def refine_frames(fpha, refs, cfg: RefineConfig, stride: int, progress: bool = True,
                  tracked: bool = False) -> RefineFrames:
    """Every ``stride``-th frame of the sequences ``refs`` of an FPHA root, kept as wide patches around
    the middle MCP (decoded once; a DataError names a bad file); with ``tracked``, also the tracker's
    centre of each (:func:`locate_sequence` without refinement, run over every frame of the sequence)."""
    fine = cfg.fine_stage()
    patches, centres, found, fine_patches, frames = [], [], [], [], []
    for ref in tqdm(refs, desc="refiner frames", unit="sequence", disable=not progress):
        joints = fpha.read_skeleton(ref)
        depths = [fpha.read_depth(ref, t) for t in range(fpha.num_frames(ref))]
        located = locate_sequence(depths, fpha.intrinsics) if tracked else None
        if located is not None:
            found.append(located.centres[::stride])
        for t in range(0, len(depths), stride):
            centre = centre_from_joints(joints[t]).astype(np.float64)
            depth = depths[t]
            if cfg.without_table:  # the tracker found each frame's table plane already
                plane = located.planes[t] if located is not None else regions(depth, fpha.intrinsics).plane
                depth = without_table(depth, plane, fpha.intrinsics)
            patches.append(wide_patch(depth, centre, cfg, fpha.intrinsics))
            centres.append(centre)
            if fine is not None:
                fine_patches.append(wide_patch(depth, centre, fine, fpha.intrinsics))
            if cfg.detector:
                frames.append(detector_frame(depths[t]))

    def stacked(kept: list, stage: RefineConfig) -> np.ndarray:
        return np.stack(kept) if kept else np.zeros((0, _wide_size(stage), _wide_size(stage)), np.uint16)

    return RefineFrames(stacked(patches, cfg), np.stack(centres) if centres else np.zeros((0, 3)),
                        (np.concatenate(found).astype(np.float64) if found else np.zeros((0, 3))) if tracked else None,
                        stacked(fine_patches, fine) if fine is not None else None,
                        (np.stack(frames) if frames else np.zeros((0, 1, 1), np.uint16)) if cfg.detector else None)


def perturb(centres: np.ndarray, cfg: RefineConfig, rng: np.random.Generator, near: float = 0.0) -> np.ndarray:
    """Initial estimates (N, 3) around true centres (N, 3): normal per axis (``sigma_mm``; for a share
    ``near`` of them a third of it, so that the net is also accurate close to the truth, where the
    second and third refinements start), shrunk to at most ``max_offset_mm`` from the truth."""
    scale = np.where(rng.random((len(centres), 1)) < near, 1 / 3, 1.0)
    off = rng.normal(0.0, cfg.sigma_mm, centres.shape) * scale
    return centres + _shrunk(off, cfg.max_offset_mm)


def cube_scales(n: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` cube scales for the hand-size augmentation: ``exp(N(0, sigma))`` clipped to ``exp(+-2 sigma)``;
    all 1 (and ``rng`` untouched) when ``sigma`` is 0."""
    if sigma == 0:
        return np.ones(n)
    return np.exp(np.clip(rng.normal(0.0, sigma, n), -2 * sigma, 2 * sigma))


def holed(crops: np.ndarray, share: float, rng: np.random.Generator, widen: float = 1.0) -> np.ndarray:
    """Training's hole augmentation of normalised refiner crops (B, S, S), where 1 is missing (or far): each crop,
    with probability 1/2, loses a share ``U(0, share)`` of its pixels in runs of two along the row, and a missing
    pixel's row neighbour on one side (left or right, at random per crop) goes missing too, with probability
    ``widen`` each, as a wider shadow takes an edge.  Returns a new array; ``crops`` itself (and ``rng``
    untouched) when ``share`` is 0."""
    if share == 0:
        return crops
    b, s = crops.shape[:2]
    hit = rng.random(b) < 0.5
    dropped = rng.random((b, s, (s + 1) // 2)) < rng.uniform(0.0, share, b)[:, None, None]
    right = rng.random(b) < 0.5
    missing = crops >= 1.0
    grown = np.zeros_like(missing)
    grown[right, :, 1:] = missing[right, :, :-1]  # the pixel right of a missing one
    grown[~right, :, :-1] = missing[~right, :, 1:]  # ... or the one left of it
    grown &= rng.random(grown.shape) < widen
    mask = (np.repeat(dropped, 2, axis=2)[:, :, :crops.shape[2]] | grown) & hit[:, None, None]
    return np.where(mask, np.float32(1.0), crops).astype(crops.dtype)


def _shrunk(off: np.ndarray, limit_mm: float) -> np.ndarray:
    """Offsets (N, 3) scaled down, each along itself, to at most ``limit_mm`` long."""
    norm = np.linalg.norm(off, axis=1, keepdims=True)
    return off * np.minimum(1.0, limit_mm / np.maximum(norm, 1e-9))


def tracked_starts(centres: np.ndarray, tracked: np.ndarray, starts: np.ndarray, cfg: RefineConfig,
                   rng: np.random.Generator) -> np.ndarray:
    """``starts`` (N, 3) with a share ``cfg.tracked`` of them replaced by the tracker's centres (N, 3) of
    the same frames, jittered by ``TRACKED_JITTER_MM`` per axis and shrunk to at most ``max_offset_mm``
    from the true centres (N, 3); frames the tracker lost (NaN) keep their start."""
    use = (rng.random(len(centres)) < cfg.tracked) & np.isfinite(tracked).all(1)
    off = np.nan_to_num(tracked - centres) + rng.normal(0.0, TRACKED_JITTER_MM, centres.shape)
    return np.where(use[:, None], centres + _shrunk(off, cfg.max_offset_mm), starts)


@dataclass
class RefineTask:
    """The refiner's task for :func:`handfuse.train.fit`: batches of crops around perturbed estimates
    with their offsets to the truth (and, with a fine stage, its own crops around estimates perturbed
    as it is trained; the two losses add up); evaluated as the mean 3-D distance (mm) to the middle MCP
    after the whole refinement of fixed perturbed estimates (``error_mm``), beside the estimates' own
    distance (``initial_mm``), that after one refinement (``one_step_mm``) and, with a fine stage, that
    before it (``coarse_mm``).  With a detector, each batch also holds ``cfg.detect_batch`` whole frames
    (drawn from their own random stream, so the refiner's batches are those it gets without one), shifted
    together by up to ``DETECT_SHIFT`` of the detector's pixels; its hand's distance to the middle MCP is
    reported as ``detect_mm`` (mean), ``detect_median_mm`` and ``detect_over_80mm`` (% of frames)."""

    data: dict[str, RefineFrames]
    cfg: RefineConfig
    intrinsics: Intrinsics = FPHA_DEPTH
    metric: str = "error_mm"
    higher_is_better: bool = False

    def batches(self, split, epoch, train_cfg):
        from .train import epoch_generator

        frames = self.data[split]
        rng = np.random.default_rng([train_cfg.seed, epoch, 31])
        index = np.tile(np.arange(len(frames.centres)), self.cfg.draws)
        order = torch.randperm(len(index), generator=epoch_generator(train_cfg.seed, epoch, 31)).numpy()
        starts = perturb(frames.centres[index[order]], self.cfg, rng, near=0.5)
        if self.cfg.tracked > 0 and frames.tracked is not None:
            starts = tracked_starts(frames.centres[index[order]], frames.tracked[index[order]], starts, self.cfg, rng)
        fine = self.cfg.fine_stage()
        if fine is not None:
            fine_starts = perturb(frames.centres[index[order]], fine, rng, near=0.5)
        scales = cube_scales(len(order), self.cfg.scale_sigma, np.random.default_rng([train_cfg.seed, epoch, 41]))
        hrng = np.random.default_rng([train_cfg.seed, epoch, 43])  # the holes' own stream (RefineConfig.hole_share)
        detect = bool(self.cfg.detector) and frames.frames is not None and len(frames.frames) > 0
        if detect:
            drng = np.random.default_rng([train_cfg.seed, epoch, 37])
            grid = detector_grid(frames.frames.shape[1:])
        n_batches = len(order) // train_cfg.batch_size
        for b in range(min(n_batches, train_cfg.max_batches or n_batches)):
            rows = slice(b * train_cfg.batch_size, (b + 1) * train_cfg.batch_size)
            idx, start, scale = index[order[rows]], starts[rows], scales[rows]
            x = np.stack([refiner_crop(frames.patches[i], frames.centres[i], s, self.cfg, self.intrinsics, k)
                          for i, s, k in zip(idx, start, scale)])
            x = holed(x, self.cfg.hole_share, hrng, self.cfg.hole_widen)
            target = (frames.centres[idx] - start) / (self.cfg.cube_mm * scale[:, None] / 2)
            batch = {"crop": torch.from_numpy(x)[:, None], "target": torch.from_numpy(target.astype(np.float32))}
            if fine is not None:  # the batch's first rows (a random subset: the order is shuffled)
                keep = max(1, round(len(idx) * self.cfg.fine_share))
                idx, start, scale = idx[:keep], fine_starts[rows][:keep], scale[:keep]
                x = np.stack([refiner_crop(frames.fine_patches[i], frames.centres[i], s, fine, self.intrinsics, k)
                              for i, s, k in zip(idx, start, scale)])
                x = holed(x, self.cfg.hole_share if self.cfg.hole_fine else 0.0, hrng, self.cfg.hole_widen)
                target = (frames.centres[idx] - start) / (fine.cube_mm * scale[:, None] / 2)
                batch |= {"fine_crop": torch.from_numpy(x)[:, None],
                          "fine_target": torch.from_numpy(target.astype(np.float32))}
            if detect:
                pick = drng.integers(0, len(frames.frames), self.cfg.detect_batch)
                dx, dy = (int(d) for d in drng.integers(-DETECT_SHIFT, DETECT_SHIFT + 1, 2))
                cell, offset, z = detector_targets(frames.centres[pick], grid, self.intrinsics,
                                                   (dx * DETECT_STRIDE, dy * DETECT_STRIDE))
                batch |= {"frames": detector_input(_shifted(frames.frames[pick], dx, dy)),
                          "cell": torch.from_numpy(cell), "offset": torch.from_numpy(offset), "z": torch.from_numpy(z)}
            yield batch

    def loss(self, model, batch):
        loss = model.loss(model(batch["crop"]), batch["target"])
        if "fine_crop" in batch:
            loss = loss + model.loss(model.fine(batch["fine_crop"]), batch["fine_target"])
        if "frames" in batch:
            loss = loss + model.detector.loss(model.detector(batch["frames"]), batch["cell"], batch["offset"], batch["z"])
        return loss

    def evaluate(self, model, split, train_cfg):
        frames = self.data[split]
        starts = perturb(frames.centres, self.cfg, np.random.default_rng([12345, len(frames.centres)]))
        out = {"initial_mm": float(np.linalg.norm(starts - frames.centres, axis=1).mean())}

        def refined(net, patches, stage, begin, iterations=None):
            return np.concatenate([refine_batch(net, patches[s:s + 256], frames.centres[s:s + 256], begin[s:s + 256],
                                                stage, self.intrinsics, iterations)
                                   for s in range(0, len(begin), 256)] or [np.zeros((0, 3))])

        def error(found):
            return float(np.linalg.norm(found - frames.centres, axis=1).mean())

        out["one_step_mm"] = error(refined(model, frames.patches, self.cfg, starts, 1))
        found = refined(model, frames.patches, self.cfg, starts)
        fine = self.cfg.fine_stage()
        if fine is not None:  # the fine stage's crops are cut from its own patches, around the truth as well
            out["coarse_mm"] = error(found)
            found = refined(model.fine, frames.fine_patches, fine, found)
        out["error_mm"] = error(found)
        if self.cfg.detector and frames.frames is not None and len(frames.frames) > 0:
            model.eval()
            device = next(model.parameters()).device
            with torch.inference_mode():
                points = np.concatenate([decode_detections(model.detector(detector_input(frames.frames[s:s + 256]).to(device)),
                                                           self.intrinsics)[0] for s in range(0, len(frames.frames), 256)])
            far = np.linalg.norm(points - frames.centres, axis=1)
            out |= {"detect_mm": float(far.mean()), "detect_median_mm": float(np.median(far)),
                    "detect_over_80mm": float(100.0 * np.mean(far > 80.0))}
        return out


def refiner_run(fpha, preset, seed: int = 0, device: str = "cpu", root=None, refine: RefineConfig | None = None):
    """Where :func:`train_refiner` trains (run folder), with its run config, training settings and refiner config
    (``refine``, default the preset's: another config trains into a folder of its own)."""
    from .runs import run_config, run_folder, thread_record
    from .train import TrainConfig

    check(preset.name in REFINE_PRESETS, "preset", preset.name, f"one of {sorted(REFINE_PRESETS)}")
    cfg, train = REFINE_PRESETS[preset.name]
    cfg = cfg if refine is None else refine
    cfg_train = replace(TrainConfig(**train), seed=seed, device=device)
    config = run_config(fpha, preset, refine=cfg, **thread_record(device))
    return run_folder(preset, RUN_PREFIX, config, cfg_train, seed, root), config, cfg_train, cfg


def train_refiner(fpha, preset, seed: int = 0, device: str = "cpu", root=None, progress: bool = True,
                  refine: RefineConfig | None = None):
    """Train (or load, when its run is finished) the ComRefNet of a preset on ``fpha``'s training
    split (validation held out per class, as the HPE's; test: the test split), through
    :func:`handfuse.train.fit`; ``refine`` replaces the preset's refiner config (for screening one).
    Returns (:class:`Refiner`, FitResult)."""
    from .pool import one_thread
    from .standalone import splits
    from .train import RESULT, _jsonable, finished, fit, recorded

    run, config, cfg_train, cfg = refiner_run(fpha, preset, seed, device, root, refine)
    strides = {"train": cfg.frame_stride, "val": cfg.test_stride, "test": cfg.test_stride}
    if finished(run) and json.loads((run / RESULT).read_text()).get("config") == _jsonable({**config, "train": recorded(cfg_train)}):
        data = {name: RefineFrames(np.zeros((0, 1, 1), np.uint16), np.zeros((0, 3))) for name in strides}  # fit only loads
    else:
        parts = splits(fpha, preset, seed)
        data = {name: refine_frames(fpha, parts[name], cfg, stride, progress, tracked=name == "train" and cfg.tracked > 0)
                for name, stride in strides.items()}
    torch.manual_seed(seed)
    net = ComRefNet(cfg)
    with one_thread(device):
        result = fit(net, RefineTask(data, cfg, fpha.intrinsics), cfg_train, run, config, progress=progress)
    return Refiner(net.cpu().eval(), cfg, str(run)), result


def load_refiner(where: str | Path | None = None) -> Refiner | None:
    """The trained refiner at ``where``: a run folder (holding ``best.pt``), or a folder searched for
    the newest finished ``localise-comref-*`` run (a preset's models folder, or a runs folder with
    ``<preset>/models`` below it, where any other preset's run goes before the smoke preset's, which
    is trained for tests, not for use); default the runs folder (:func:`handfuse.paths.runs_dir`).  None
    when there is none.  Weights load with ``weights_only=True``; the refiner's config comes from the
    checkpoint."""
    from .paths import runs_dir
    from .train import BEST

    where = Path(where) if where is not None else runs_dir()
    if (where / BEST).is_file():
        run = where
    else:
        found = [p.parent for pattern in (f"{RUN_PREFIX}-*/{BEST}", f"*/models/{RUN_PREFIX}-*/{BEST}")
                 for p in where.glob(pattern) if (p.parent / "result.json").is_file()]
        if not found:
            return None
        run = max(found, key=lambda p: (p.parent.parent.name != "smoke" or p.parent.name != "models",
                                        (p / BEST).stat().st_mtime_ns, str(p)))
    return _refiner_from(run / BEST, str(run))


def _refiner_from(path: Path, source: str) -> Refiner:
    """The :class:`Refiner` of a checkpoint (``model`` and ``config``, as a run's ``best.pt``), loaded with
    ``weights_only=True``; its config comes from the checkpoint."""
    from .train import load_checkpoint

    ck = load_checkpoint(path)
    config = json.loads(ck["config"])
    if "refine" not in config:
        raise ValueError(f"{path}: not a ComRefNet run (no 'refine' in its config)")
    values = dict(config["refine"])
    values["channels"] = tuple(values["channels"])
    values["detector"] = tuple(values.get("detector", ()))
    cfg = RefineConfig(**values)
    net = ComRefNet(cfg)
    net.load_state_dict(ck["model"])
    return Refiner(net.eval(), cfg, source)


# the cpu preset's refiner of seed 0, shipped in the package (python -m handfuse.localise ship), so that `locate`
# has the learned localiser on a fresh clone, before anything is trained.  Trained on the synthetic benchmark only.
SHIPPED = Path(__file__).parent / "weights" / "localise-cpu-seed0.pt"


def shipped_refiner(path: str | Path = SHIPPED) -> Refiner | None:
    """The refiner shipped with handfuse (:data:`SHIPPED`, and its ``.json`` record: where and at which commit it
    was trained), or None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    record = json.loads(path.with_suffix(".json").read_text())
    commit = record["commit"] or "an unknown commit"
    return _refiner_from(path, f"shipped with handfuse: {path.name}, the {record['preset']} preset's refiner of seed"
                               f" {record['seed']}, trained on the synthetic benchmark at {commit}")


def ship(preset_name: str = "cpu", seed: int = 0, runs: str | Path | None = None, out: str | Path | None = None,
         progress: bool = True) -> Path:
    """Train (or find) ``preset_name``'s refiner of ``seed`` on the preset's synthetic benchmark (:func:`train_refiner`;
    the package ships nothing trained on other data) and write its weights and
    config to ``out`` (default :data:`SHIPPED`'s folder, ``localise-<preset>-seed<seed>.pt``), atomically, beside
    a ``.json`` record: the run, the commit, the training command, the weights' SHA-256 and the run's held-out
    errors.  Returns the weights' path."""
    import hashlib

    from .config import get_preset
    from .fpha import FPHA
    from .paths import ensure_synthetic
    from .runs import code_version
    from .train import load_checkpoint

    preset = get_preset(preset_name)
    fpha = FPHA(ensure_synthetic(preset_name))
    root = Path(runs) / preset.name / "models" if runs else None
    _, result = train_refiner(fpha, preset, seed, "cpu", root, progress=progress)
    target = Path(out) if out is not None else SHIPPED.with_name(f"localise-{preset_name}-seed{seed}.pt")
    ck = load_checkpoint(Path(result.run_dir) / "best.pt")
    with atomic_path(target, "the shipped refiner") as tmp:
        torch.save({"model": ck["model"], "config": ck["config"]}, tmp)
    record = {"preset": preset_name, "seed": seed, "run": Path(result.run_dir).name, "commit": code_version()["commit"],
              "command": f"python -m handfuse.localise ship --preset {preset_name} --seed {seed}",
              "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
              "held_out": {k: v for k, v in result.test.items() if isinstance(v, (int, float))},
              "note": "trained on the synthetic benchmark (handfuse.synth), never on FPHA data"}
    write_json(target.with_suffix(".json"), record, "the shipped refiner's record", indent=1)
    return target


# ----------------------------------------------------------------------------- command line


def read_depth_folder(folder: str | Path, intrinsics: Intrinsics = FPHA_DEPTH) -> list[Path]:
    """The depth PNGs of a folder, ``depth_0000.png`` onwards without a gap, in order, their headers
    checked.  A DataError names the problem's file: not a folder, no PNGs, a PNG not named
    ``depth_NNNN.png``, a gap, a PNG that is not 16-bit greyscale of the camera's size, or truncated."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "not a folder of depth frames" + (" (a file)" if folder.exists() else " (not found)"))
    indices = depth_frame_indices(folder)  # refuses a .png with a non-FPHA name, naming it
    if not indices:
        raise DataError(folder, "no depth frames: expected FPHA-named PNGs depth_0000.png, depth_0001.png, ...")
    for expected, found in enumerate(indices):
        if found != expected:
            raise DataError(folder / f"depth_{expected:04d}.png", f"frame missing: the frame numbers jump from"
                            f" {expected - 1} to {found}" if expected else
                            f"frame missing: the first frame is depth_{found:04d}.png; frames start at depth_0000.png")
    paths = [folder / f"depth_{t:04d}.png" for t in indices]
    for path in paths:  # signature, 16-bit grey, the camera's size, complete: before any work starts
        check_png_header(path, intrinsics)
    return paths


def write_centres_csv(path: str | Path, located: Located) -> None:
    """``frame,u,v,z_mm,status``, one row per frame; a lost frame's u, v and z_mm are ``nan``."""
    with atomic_path(path, "the centres") as tmp, open(tmp, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["frame", "u", "v", "z_mm", "status"])
        for t, ((u, v), z, s) in enumerate(zip(located.uv, located.centres[:, 2], located.status)):
            out.writerow([t, *(f"{x:.2f}" if np.isfinite(x) else "nan" for x in (u, v, z)), s])


# ----------------------------------------------------------------------------- the contact sheet

SHEET_TILES = 120  # a contact sheet shows at most this many frames: every k-th of a longer sequence
SHEET_SCALE = 4  # its tiles are the frames' every SHEET_SCALE-th pixel (160 x 120 of FPHA's 640 x 480)
SHEET_COLUMNS = 10
SHEET_NEAR_MM, SHEET_FAR_MM = 150.0, 1200.0  # the depth colours' range (as handfuse.plots.show_depth's)
SHEET_CAPTION_PX = 16  # the strip above each tile that names its frame
SHEET_GAP_PX = 2  # grey between tiles side by side
SHEET_RED = (0, 0, 255)  # BGR: the centre's cross, and a lost frame's border and caption (no depth colour is red)
SHEET_WHITE = (255, 255, 255)  # the hand cube's outline (nor is any depth colour white)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def sheet_step(frames: int, tiles: int = SHEET_TILES) -> int:
    """Every how many frames a contact sheet of a ``frames``-frame sequence shows one (``tiles`` at most)."""
    return max(1, math.ceil(frames / tiles))


def sheet_thumbnail(depth: np.ndarray) -> np.ndarray:
    """What a contact sheet keeps of an (H, W) frame: every ``SHEET_SCALE``-th pixel, (H / 4, W / 4)."""
    return np.ascontiguousarray(depth[::SHEET_SCALE, ::SHEET_SCALE])


def depth_colours(depth: np.ndarray) -> np.ndarray:
    """(h, w) depth in mm -> (h, w, 3) uint8 BGR: viridis from ``SHEET_NEAR_MM`` (dark) to ``SHEET_FAR_MM``
    (yellow), black where the sensor measured nothing (0)."""
    scale = 255.0 / (SHEET_FAR_MM - SHEET_NEAR_MM)
    level = np.clip((depth.astype(np.float32) - SHEET_NEAR_MM) * scale, 0, 255).astype(np.uint8)
    out = cv2.applyColorMap(level, cv2.COLORMAP_VIRIDIS)
    out[depth == 0] = 0
    return out


def _text_lines(text: str, width: int, scale: float) -> list[str]:
    """``text`` wrapped into lines no wider than ``width`` pixels in ``_FONT`` at ``scale``."""
    lines: list[str] = []
    for word in text.split():
        line = f"{lines[-1]} {word}" if lines else word
        if lines and cv2.getTextSize(line, _FONT, scale, 1)[0][0] <= width:
            lines[-1] = line
        else:
            lines.append(word)
    return lines


def _tile(thumb: np.ndarray, t: int, located: Located, intrinsics: Intrinsics, cube_mm: float) -> np.ndarray:
    """One frame's tile: its caption strip over its depth colours, with the centre's red cross and the
    hand cube's white outline, or a red border where the frame was lost."""
    h, w = thumb.shape
    tile = np.zeros((SHEET_CAPTION_PX + h, w, 3), np.uint8)
    image = tile[SHEET_CAPTION_PX:]
    image[:] = depth_colours(thumb)
    if located.status[t] == LOST:
        cv2.rectangle(image, (0, 0), (w - 1, h - 1), SHEET_RED, 2)
        caption, colour = f"{t} lost", SHEET_RED
    else:
        (u, v), z = located.uv[t] / SHEET_SCALE, float(located.centres[t, 2])
        half = intrinsics.fx * cube_mm / 2 / z / SHEET_SCALE  # the cube's half width, in tile pixels
        cv2.rectangle(image, (round(u - half), round(v - half)), (round(u + half), round(v + half)), SHEET_WHITE, 1)
        cv2.drawMarker(image, (round(u), round(v)), SHEET_RED, cv2.MARKER_CROSS, 11, 2)
        how = f" {located.how[t]}" if located.how else ""
        how += " back" if located.way and located.way[t] == BACKWARD else ""
        caption, colour = f"{t}{how} {z:.0f} mm", SHEET_WHITE
    cv2.putText(tile, caption, (3, SHEET_CAPTION_PX - 4), _FONT, 0.4, colour, 1, cv2.LINE_AA)
    return tile


def centre_sheet(thumbs: dict[int, np.ndarray], located: Located, title: str, intrinsics: Intrinsics = FPHA_DEPTH,
                 cube_mm: float = 250.0) -> np.ndarray:
    """A contact sheet (BGR uint8 image) of where :func:`locate_sequence` put the hand: one tile per frame of
    ``thumbs`` (frame index -> :func:`sheet_thumbnail`, in order), ``SHEET_COLUMNS`` to a row, under a
    header that says what it shows (``title``, the counts, the localiser, the colours)."""
    frames = sorted(thumbs)
    tiles = [_tile(thumbs[t], t, located, intrinsics, cube_mm) for t in frames]
    th, tw = tiles[0].shape[:2]
    pitch = tw + SHEET_GAP_PX
    columns = min(SHEET_COLUMNS, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    width = columns * pitch - SHEET_GAP_PX
    lost = located.lost
    shown = "every frame" if len(frames) == len(located.status) else \
        f"1 frame in {frames[1] - frames[0]} ({len(frames)} of {len(located.status)})"
    lines = [title,
             f"{len(located.status)} frames: {len(located.status) - len(lost)} located, {len(lost)} lost"
             + (f" (frames {', '.join(map(str, lost[:20]))}{' ...' if len(lost) > 20 else ''})" if lost else "")
             + f"; {shown}",
             f"localiser: {located.localiser}",
             f"red cross: the hand centre (caption: frame, how it was found: detected, tracked, held, or net for the"
             f" learned detector's, and back where the backward pass's was taken; its depth); white square: the"
             f" {cube_mm:g} mm hand cube at that depth; red border: lost; black: no depth; colours from"
             f" {SHEET_NEAR_MM:g} mm (dark) to {SHEET_FAR_MM:g} mm (yellow)"]
    wrapped = [part for line in lines for part in _text_lines(line, width - 8, 0.45)]
    header = np.zeros((8 + 18 * len(wrapped), width, 3), np.uint8)
    for k, line in enumerate(wrapped):
        cv2.putText(header, line, (4, 18 * (k + 1)), _FONT, 0.45, SHEET_WHITE, 1, cv2.LINE_AA)
    grid = np.full((rows * th, width, 3), 96, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        grid[r * th:(r + 1) * th, c * pitch:c * pitch + tw] = tile
    return np.vstack([header, grid])


def write_centre_sheet(path: str | Path, image: np.ndarray) -> None:
    """Write a contact sheet (:func:`centre_sheet`) as a PNG, atomically."""
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"{path}: could not encode the contact sheet as PNG")
    with atomic_path(path, "the contact sheet") as tmp:
        tmp.write_bytes(png.tobytes())


def _locate(args) -> int:
    paths = read_depth_folder(args.depth_dir)
    if args.sheet is not None:
        check(Path(args.sheet).suffix.lower() == ".png", "--sheet", args.sheet, "a path ending in .png")
    refiner = None
    if not args.no_refine:  # trained weights first; without --runs, the shipped ones where none are trained
        refiner = load_refiner(args.runs) or (shipped_refiner() if args.runs is None else None)
    step, thumbs = sheet_step(len(paths)), {}

    def depths():  # decoded one at a time (a bad PNG is named when reached); the sheet keeps thumbnails only
        for t, path in enumerate(paths):
            depth = read_depth_png(path)
            if args.sheet is not None and t % step == 0:
                thumbs[t] = sheet_thumbnail(depth)
            yield depth

    located = locate_sequence(depths(), FPHA_DEPTH, args.cube_mm, refiner, progress=True, detector=args.detector,
                              both_ways=not args.forward_only)
    write_centres_csv(args.out, located)
    if args.sheet is not None:
        write_centre_sheet(args.sheet, centre_sheet(thumbs, located, f"{Path(args.depth_dir).resolve()}",
                                                    FPHA_DEPTH, args.cube_mm))
        print(f"wrote the contact sheet {args.sheet}")
    print(f"localiser: {located.localiser}")
    print(f"{len(paths)} frames: {len(paths) - len(located.lost)} located, {len(located.lost)} lost"
          + (f" (frames {', '.join(map(str, located.lost[:10]))}{' ...' if len(located.lost) > 10 else ''})"
             if located.lost else "") + f"; wrote {args.out}")
    if refiner is None and not args.no_refine:
        print("no trained refinement weights found (python -m handfuse.localise train --preset cpu)", file=sys.stderr)
    return 0


def _ship(args) -> int:
    path = ship(args.preset, args.seed, args.runs, args.out)
    print(f"wrote {path} and {path.with_suffix('.json').name}")
    return 0


def _train(args) -> int:
    from .config import get_preset
    from .fpha import FPHA
    from .paths import ensure_synthetic

    preset = get_preset(args.preset)
    fpha = FPHA(args.data_root) if args.data_root else FPHA(ensure_synthetic(args.preset))
    root = Path(args.runs) / preset.name / "models" if args.runs else None
    refiner, result = train_refiner(fpha, preset, args.seed, args.device, root)
    print(f"ComRefNet: {result.run_dir}")
    print(json.dumps({k: v for k, v in result.test.items() if k in ("initial_mm", "one_step_mm", "coarse_mm", "error_mm",
                                                                      "detect_mm", "detect_over_80mm")}))
    return 0


def add_localiser_arguments(parser: argparse.ArgumentParser, no_refine_help: str) -> None:
    """``--no-refine`` and ``--detector`` (exclusive) and ``--forward-only``, the localiser's options of ``locate``
    and ``predict``."""
    alone = parser.add_mutually_exclusive_group()
    alone.add_argument("--no-refine", action="store_true", help=no_refine_help)
    alone.add_argument("--detector", choices=DETECTOR_POLICIES, default=DETECTOR_ON_RECORDINGS,
                       help="where the learned whole-frame detector may overrule the tracker: in every frame (always,"
                            " as the study's depth-centred test sets), only in frames without a table plane (no-table,"
                            " the default: elsewhere, on scenes unlike those it was trained on, it can be confidently"
                            " wrong; docs/benchmarks.md), or never")
    parser.add_argument("--forward-only", action="store_true",
                        help="track the hand from the first frame on only, as the study's depth-centred test sets do"
                             " (default: forward and backward, each stretch where the two part taken from the one its"
                             " frames located alone agree with: a track that starts wrong is put right; each frame is"
                             " located twice; docs/benchmarks.md)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m handfuse.localise", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("locate", help="the hand centre of every frame of a folder of FPHA depth PNGs, as a CSV")
    p.add_argument("depth_dir", metavar="DEPTH_DIR", help="a folder of depth_0000.png, depth_0001.png, ...")
    p.add_argument("--out", required=True, help="the CSV to write: frame,u,v,z_mm,status")
    p.add_argument("--runs", default=None, help="where the trained refinement is: a run folder, a models folder or"
                                                " a runs folder (default runs/ or $HANDFUSE_RUNS, then the refiner"
                                                " shipped with handfuse)")
    add_localiser_arguments(p, "the tracker alone, without the learned detector and refinement")
    p.add_argument("--cube-mm", type=float, default=250.0, help="the hand cube's edge (mm)")
    p.add_argument("--sheet", default=None, metavar="PNG",
                   help=f"also draw a contact sheet: every frame (every k-th beyond {SHEET_TILES}) with its centre")
    p.set_defaults(func=_locate)
    p = sub.add_parser("train", help="train the learned refinement (ComRefNet) of a preset")
    p.add_argument("--preset", default="cpu", choices=sorted(REFINE_PRESETS))
    p.add_argument("--data-root", default=None, help="an FPHA root; default: the preset's synthetic benchmark")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", default=None, help="runs folder (default runs/ or $HANDFUSE_RUNS)")
    p.set_defaults(func=_train)
    p = sub.add_parser("ship", help="train (or find) a preset's refinement on its synthetic benchmark and write it"
                                    " into the package, for locate")
    p.add_argument("--preset", default="cpu", choices=sorted(REFINE_PRESETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default=None, help="runs folder (default runs/ or $HANDFUSE_RUNS)")
    p.add_argument("--out", default=None, help=f"the weights to write (default {SHIPPED.parent.name}/"
                                               "localise-<preset>-seed<seed>.pt in the package)")
    p.set_defaults(func=_ship)
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
