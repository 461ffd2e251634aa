"""A 21-joint kinematic right hand with joint-angle limits and per-subject shape.

Hand frame: origin at the wrist, +y towards the middle MCP, +z the palm normal
(palmar side), +x towards the thumb.  Each finger is a planar chain: an
abduction angle in the palm plane, then MCP, PIP and DIP flexion towards +z.
The thumb leaves the palm plane by an opposition angle and flexes towards the
palm.  Angles are in degrees.  Joint order is FPHA's (``handfuse.skeleton``).

Posture array layout, shape (..., 5, 4): rows thumb, index, middle, ring, pinky;
columns for fingers ``abd, mcp, pip, dip``, for the thumb ``abd, opp, mcp, ip``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..skeleton import FINGER_CHAINS, FINGERS, NUM_JOINTS

# Nominal adult hand (mm).  MCP positions in the hand frame, phalanx lengths and radii.
MCP_POS = np.array([
    [34.0, 36.0, 14.0],  # thumb MCP
    [22.0, 87.0, 0.0],  # index
    [0.0, 90.0, 0.0],  # middle
    [-19.0, 85.0, 0.0],  # ring
    [-36.0, 76.0, 0.0],  # pinky
])
PHALANX = np.array([
    [33.0, 30.0, 25.0],
    [40.0, 24.0, 19.0],
    [45.0, 28.0, 21.0],
    [42.0, 27.0, 20.0],
    [33.0, 20.0, 18.0],
])
RADIUS = np.array([  # radius of each phalanx (proximal, middle, distal)
    [10.5, 9.5, 8.5],
    [9.0, 8.0, 7.0],
    [9.5, 8.5, 7.5],
    [9.0, 8.0, 7.0],
    [8.0, 7.0, 6.5],
])
PALM_HALF_THICKNESS = 13.0
REST_SPLAY = np.array([40.0, 7.0, 0.0, -8.0, -17.0])  # in-plane angle from +y towards +x, per finger

# Joint-angle limits, (5, 4, 2): [low, high] for each posture entry.
LIMITS = np.array([
    [[-15, 60], [0, 85], [-10, 70], [-15, 85]],  # thumb: abd, opp, mcp, ip
    [[-20, 20], [-25, 95], [0, 110], [-5, 85]],
    [[-15, 15], [-25, 95], [0, 110], [-5, 85]],
    [[-15, 15], [-25, 95], [0, 110], [-5, 85]],
    [[-20, 20], [-25, 95], [0, 110], [-5, 85]],
], dtype=float)


def clip_posture(posture: np.ndarray) -> np.ndarray:
    """Clamp a (..., 5, 4) posture to the joint-angle limits."""
    return np.clip(posture, LIMITS[..., 0], LIMITS[..., 1])


@dataclass(frozen=True)
class HandShape:
    """One subject's hand: MCP positions, phalanx lengths and radii (mm)."""

    mcp: np.ndarray  # (5, 3)
    phalanx: np.ndarray  # (5, 3)
    radius: np.ndarray  # (5, 3)
    forearm_radius: float

    @classmethod
    def nominal(cls) -> "HandShape":
        return cls(MCP_POS.copy(), PHALANX.copy(), RADIUS.copy(), 27.0)

    @classmethod
    def sample(cls, rng: np.random.Generator, spread: float = 0.15) -> "HandShape":
        """A subject: an overall scale spanning about ``spread`` across subjects, a palm
        width factor, and a few per-cent of independent variation per bone."""
        scale = 1.0 + rng.uniform(-spread / 2, spread / 2)
        palm_w = 1.0 + rng.uniform(-0.05, 0.05)
        mcp = MCP_POS * scale * np.array([palm_w, 1.0, 1.0])
        phalanx = PHALANX * scale * rng.normal(1.0, 0.03, PHALANX.shape)
        radius = RADIUS * (0.5 + 0.5 * scale) * palm_w
        return cls(mcp, phalanx, radius, 27.0 * scale)


def finger_directions(posture: np.ndarray) -> np.ndarray:
    """Unit directions of the three phalanges of each finger: (..., 5, 3, 3) in the hand frame."""
    p = np.radians(clip_posture(posture))
    ex, ey, ez = np.eye(3)
    # fingers: base direction in the palm plane, flexion rotates it towards +z
    splay = np.radians(REST_SPLAY)[1:] + p[..., 1:, 0]  # (..., 4)
    base = np.sin(splay)[..., None] * ex + np.cos(splay)[..., None] * ey  # (..., 4, 3)
    towards = np.broadcast_to(ez, base.shape)
    flex = np.cumsum(p[..., 1:, 1:], axis=-1)  # (..., 4, 3) cumulative MCP, PIP, DIP
    # thumb: in-plane spread, then opposition lifts it out of the palm plane
    beta = np.radians(REST_SPLAY[0]) + p[..., 0, 0]
    opp = p[..., 0, 1]
    planar = np.sin(beta)[..., None] * ex + np.cos(beta)[..., None] * ey
    t_base = np.cos(opp)[..., None] * planar + np.sin(opp)[..., None] * ez  # (..., 3)
    goal = 0.6 * ez - 0.8 * ex  # the thumb curls towards the palm and the index
    t_tow = goal - np.sum(goal * t_base, axis=-1, keepdims=True) * t_base
    t_tow = t_tow / np.linalg.norm(t_tow, axis=-1, keepdims=True)
    t_flex = np.cumsum(np.stack([np.zeros_like(opp), p[..., 0, 2], p[..., 0, 3]], axis=-1), axis=-1)
    t_flex = t_flex + np.radians(10.0)  # the thumb metacarpal already points slightly palmwards
    base = np.concatenate([t_base[..., None, :], base], axis=-2)  # (..., 5, 3)
    towards = np.concatenate([t_tow[..., None, :], towards], axis=-2)
    flex = np.concatenate([t_flex[..., None, :], flex], axis=-2)  # (..., 5, 3)
    return np.cos(flex)[..., None] * base[..., None, :] + np.sin(flex)[..., None] * towards[..., None, :]


def forward_kinematics(shape: HandShape, posture: np.ndarray) -> np.ndarray:
    """Joints in the hand frame, FPHA order: (..., 5, 4) posture -> (..., 21, 3) mm."""
    dirs = finger_directions(posture)  # (..., 5, 3, 3)
    segs = dirs * shape.phalanx[..., None]  # (..., 5, 3, 3)
    chain = shape.mcp[:, None, :] + np.cumsum(segs, axis=-2)  # (..., 5, 3, 3): PIP, DIP, TIP
    out = np.zeros(posture.shape[:-2] + (NUM_JOINTS, 3))
    for f, finger in enumerate(FINGERS):
        _, mcp, pip, dip, tip = FINGER_CHAINS[finger]
        out[..., mcp, :] = shape.mcp[f]
        out[..., [pip, dip, tip], :] = chain[..., f, :, :]
    return out


def rotation_from_euler(pitch: np.ndarray, roll: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Hand-local rotations in degrees: pitch about x (wrist flexion), roll about y (forearm
    twist), yaw about z (radial/ulnar deviation), applied yaw, then pitch, then roll: (..., 3, 3)."""
    a, b, c = (np.radians(np.asarray(v, dtype=float)) for v in (pitch, roll, yaw))
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    one, zero = np.ones_like(a), np.zeros_like(a)
    rx = np.stack([one, zero, zero, zero, ca, -sa, zero, sa, ca], -1).reshape(a.shape + (3, 3))
    ry = np.stack([cb, zero, sb, zero, one, zero, -sb, zero, cb], -1).reshape(a.shape + (3, 3))
    rz = np.stack([cc, -sc, zero, sc, cc, zero, zero, zero, one], -1).reshape(a.shape + (3, 3))
    return ry @ rx @ rz


def frame_from_axes(fingers: np.ndarray, palm: np.ndarray) -> np.ndarray:
    """A hand-to-camera rotation from where the fingers (+y) and the palm normal (+z) point."""
    y = np.asarray(fingers, float) / np.linalg.norm(fingers)
    z = np.asarray(palm, float) - np.dot(palm, y) * y
    z = z / np.linalg.norm(z)
    return np.stack([np.cross(y, z), y, z], axis=-1)  # columns: x, y, z of the hand in the camera
