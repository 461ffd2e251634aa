"""Annotation noise in the kinematic chain (scene v2): rigid bones, jittered pose.

FPHA's skeletons come from magnetic sensors on the hand, fitted by inverse
kinematics to a hand model of each subject (Garcia-Hernando et al., CVPR 2018),
so a subject's bone lengths are the same in every frame while the fitted pose
jitters.  Scene v1 adds i.i.d. Gaussian noise to every joint coordinate, which
lets a bone's length vary by a few mm within a sequence; v2 perturbs the pose
instead and re-poses the subject's rigid hand with forward kinematics:

- a translation of the whole hand, per axis;
- a rotation of the hand about the wrist, per axis;
- an offset of each of the 20 joint angles (``hand.py``'s posture layout).

All three are Gaussian, drawn per frame, and scaled by ``pose_noise_mm`` with the
fixed proportions below, chosen so that the joints' position jitter (root mean
square per coordinate over the 21 joints, :func:`position_jitter`) equals
``pose_noise_mm``: the knob keeps v1's meaning as an equivalent per-coordinate
jitter in mm.  The angles are clamped to the joint limits like any posture, so a
joint at its limit jitters to one side only.
"""
from __future__ import annotations

import numpy as np

from .hand import HandShape, forward_kinematics, rotation_from_euler

# Per mm of pose_noise_mm: translation std (mm per axis), hand rotation std (degrees per axis) and
# joint-angle std (degrees per angle).  The last two were scaled together so that the jitter of a
# 1 mm setting measures 1.0 mm (test_scene_v2 measures it on the nominal hand in every posture).
TRANSLATION_MM = 0.55
ROTATION_DEG = 0.36
ANGLE_DEG = 0.97


def angle_noise(shape: HandShape, posture: np.ndarray, hand_rot: np.ndarray, wrist: np.ndarray, noise_mm: float,
                rng: np.random.Generator) -> np.ndarray:
    """Annotated joints (T, 21, 3), camera frame, of a hand of ``shape`` with postures (T, 5, 4),
    hand-to-camera rotations (T, 3, 3) and wrists (T, 3), with ``noise_mm`` of pose noise."""
    n = len(posture)
    shift = rng.normal(0.0, TRANSLATION_MM * noise_mm, (n, 3))
    turn = rotation_from_euler(*rng.normal(0.0, ROTATION_DEG * noise_mm, (3, n)))  # (T, 3, 3) in the hand frame
    angles = posture + rng.normal(0.0, ANGLE_DEG * noise_mm, posture.shape)
    local = forward_kinematics(shape, angles)  # (T, 21, 3)
    return np.einsum("tij,tkj->tki", hand_rot @ turn, local) + (wrist + shift)[:, None, :]


def position_jitter(clean: np.ndarray, noisy: np.ndarray) -> float:
    """Root mean square per coordinate (mm) of ``noisy - clean`` joints, (..., 21, 3) each."""
    return float(np.sqrt(np.mean((np.asarray(noisy) - np.asarray(clean)) ** 2)))
