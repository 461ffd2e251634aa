"""Scene v2 (``SynthConfig.scene = "v2"``): the synthetic scene brought closer to real FPHA frames.

A user who ran the depth-only hand centre on 84 real FPHA frames (``Subject_1/put_salt/1``,
issue 23) found what v1's scene lacks; v2 adds it, with v1's hands, actions, randomisation and
annotation format (``sequence``), and the same determinism:

- **A nearer table.** The camera is lower over the table (520-580 mm against v1's 680) and
  looks down less steeply (44-50 degrees against 55; ``draw_view``).  The table's near edge
  lies 540-720 mm deep straight ahead, nearer where the hand rests on the table, with nothing
  in range beyond it; a wall closes the table 760-900 mm ahead.  Per frame, the nearest
  valid table pixel lies at 500-670 mm (5th-95th percentile; median 546), within a few cm of
  the hand's farthest joints.
- **Lowering.** Actions that set the held object down or work on the table (``LOWERED``) bring
  it to 3-20 mm above the table in some phases (``settle``); in every action nothing goes
  through the table, and an object held by the unseen other hand stands on it.
- **Clutter within reach.** One to three objects stand on the table beside the working hand's
  path, three to six more farther back (``table_scene``); some are dark (they absorb the
  projector's light and read zero).
- **The other hand.** In some sequences, from half way through or later, the other hand and its
  forearm slide in at the bottom left and come to rest above the table (``other_hand``); its
  joints are not annotated.
- **The working arm** enters from the bottom, right of centre: the hand is placed right of the
  optical axis, its arm is turned to point inwards (``View.heading``), and the forearm droops
  towards the elbow (``sequence.forearm_direction``).
- **Structured holes** (``static_holes``): from 840 mm the return fades out in large patches,
  and beyond 980 mm it is gone (the far table and the wall: out of range or absorbing); dark
  objects read zero; v1's sensor adds projector shadows beside near edges (its 28 mm baseline:
  about 14 pixels beside a hand 200 mm in front of the table, 2 % of the pixels), grazing-angle
  and edge dropouts and speckle, but not its random dark blobs.
- **Rigid bones.** The written skeleton carries joint-angle noise (``annotation``).

Calibration: the constants below were set on a cpu-preset dataset of 2 subjects (358
sequences, 4,698 frames) made with seed 1000, not a preset's::

    cfg = replace(get_preset("cpu").synth, subjects=2, seed=1000, scene="v2")
    fpha = FPHA(generate(out, cfg)); datastats.realism(fpha, fpha.sequences, frames_per_sequence=None)

which gives (real FPHA, ``datastats.realism_reference``, in brackets): zero fraction 0.318
(0.30-0.34), valid depth p5 / p50 / p95 321 / 709 / 894 mm (330 / 684 / 900), 37.8 % of frames
with no empty 40 mm of depth between hand and scene (33 %), and bone lengths constant within
0.001 mm per sequence.  v1 on the same settings: 0.275, 332 / 766 / 1054 mm, 1.2 %, and a bone's
length varying within a sequence by 2.0 mm (median standard deviation; median range 7 mm).  The hand lies deeper than in the real sequence
when lowered (joint depth p95 550 mm; real 355-451).

Geometry is in mm; world frame X right, Y forward, Z up, with the camera at the origin.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..camera import FPHA_DEPTH
from ..dataconfig import SynthConfig
from . import render as R
from .actions import ACTION_SPECS, ORIENTS, POSTURES, Action, Part
from .hand import HandShape, forward_kinematics, frame_from_axes, rotation_from_euler
from .sequence import (SequenceFrames, _keyed, joint_radius, place_parts, program_motion, random_rotation,
                       reverse_frames, smoothstep)

# The camera, per sequence: pitch (degrees below the horizon), height above the table and the
# wall's distance ahead (mm); uniform ranges.  v1: 55 degrees, 680 mm, no wall.
PITCH_DEG = (44.0, 50.0)
TABLE_BELOW_MM = (520.0, 580.0)
WALL_AHEAD_MM = (760.0, 900.0)
# The working hand: its wrist, camera frame (mm), right of the optical axis, jittered per sequence;
# and the heading of the arm (degrees, turned inwards about the vertical).
WRIST_NOMINAL = np.array([45.0, 45.0, 355.0])
WRIST_JITTER = np.array([35.0, 25.0, 40.0])
HEADING_DEG = (10.0, 25.0)
# The table: a slab (half extents, mm) whose near edge, turned about the vertical by up to
# EDGE_YAW_DEG, lies EDGE_DEPTH_MM deep straight ahead, or EDGE_BEHIND_MM behind where the hand
# rests on the table (uniform ranges).
TABLE_HALF = np.array([3000.0, 1500.0, 20.0])
EDGE_DEPTH_MM = (540.0, 720.0)
EDGE_BEHIND_MM = (40.0, 90.0)
EDGE_YAW_DEG = 20.0
# Heights (mm) above the table: the least clearance of the hand and its object, and where a
# lowering phase brings the lowest of them (uniform range).
FLOOR_MM = 6.0
REST_GAP_MM = (3.0, 20.0)
RAMP = 0.12  # a lowering phase's blend in and out, in phase units

# Phases (windows of the program's phase s) in which the held object rests on the table or
# works just above it.  Played-backwards actions follow their program.
_PUT = ((0.0, 0.1), (0.9, 1.0))  # picked up from the table at the start and put back at the end
LOWERED: dict[str, tuple[tuple[float, float], ...]] = {
    "sprinkle": _PUT, "put_salt": _PUT,
    "pour_juice_bottle": _PUT, "pour_milk": _PUT, "pour_liquid_soap": _PUT, "pour_wine": _PUT,
    "put_sugar": ((0.0, 0.15),),  # the spoon scoops from a bowl on the table
    "scoop_spoon": ((0.35, 0.45),),
    "put_tea_bag": ((0.5, 0.85),),  # dipped into a mug on the table
    "stir": ((0.0, 1.0),), "prick": ((0.0, 1.0),), "write": ((0.0, 1.0),),  # in a cup, on a plate, on paper
}
assert set(LOWERED) <= set(ACTION_SPECS)

OTHER_HAND_P = 0.4  # the share of sequences the other hand enters
FADE_MM = (840.0, 980.0)  # the return fades out over this range of depth, in patches
DARK_P = 0.3  # the share of clutter objects that absorb


@dataclass(frozen=True)
class View:
    """One sequence's camera and room: world -> camera rotation, the arm's heading (a world
    rotation), the table and wall planes (camera frame, n . p = d with n pointing away from the
    camera) and the nominal wrist (camera frame)."""

    world_to_cam: np.ndarray  # (3, 3)
    heading: np.ndarray  # (3, 3)
    table: tuple[np.ndarray, float]
    wall: tuple[np.ndarray, float]
    wrist: np.ndarray  # (3,)

    @property
    def up(self) -> np.ndarray:
        """The world's up, camera frame (3,)."""
        return -self.table[0]

    def height(self, p: np.ndarray) -> np.ndarray:
        """Height above the table (mm) of camera-frame points (..., 3)."""
        return self.table[1] + p @ self.up

    def ground(self, p: np.ndarray) -> np.ndarray:
        """World X, Y (mm) of camera-frame points (..., 3): where they stand on the table."""
        return (p @ self.world_to_cam)[..., :2]


def world_to_cam(pitch_deg: float) -> np.ndarray:
    """World (X right, Y forward, Z up) -> camera (x right, y down, z forward) for a camera
    pitched down by ``pitch_deg``: rows are the camera's axes in the world (v1's formula)."""
    phi = np.radians(pitch_deg)
    return np.array([[1.0, 0.0, 0.0], [0.0, -np.sin(phi), -np.cos(phi)], [0.0, np.cos(phi), -np.sin(phi)]])


def draw_view(rng: np.random.Generator) -> View:
    """One sequence's camera, room and wrist placement, drawn from the ranges above."""
    w2c = world_to_cam(rng.uniform(*PITCH_DEG))
    table = (w2c @ np.array([0.0, 0.0, -1.0]), rng.uniform(*TABLE_BELOW_MM))
    wall = (w2c @ np.array([0.0, 1.0, 0.0]), rng.uniform(*WALL_AHEAD_MM))
    heading = rotation_from_euler(0.0, 0.0, rng.uniform(*HEADING_DEG))  # about world Z: fingers inwards
    wrist = WRIST_NOMINAL + rng.uniform(-WRIST_JITTER, WRIST_JITTER)
    return View(w2c, heading, table, wall, wrist)


def make_sequence(action: str, shape: HandShape, cfg: SynthConfig, rng: np.random.Generator) -> SequenceFrames:
    """``sequence.make_sequence`` in scene v2: the same program and randomisation, in v2's room."""
    spec, reverse, s, wrist_ch, posture = program_motion(action, cfg, rng)
    view = draw_view(rng)
    to_cam = view.world_to_cam @ view.heading  # the arm's world (turned by its heading) -> camera
    fingers, palm = ORIENTS[spec.orient]
    base = frame_from_axes(np.array(fingers), np.array(palm)) @ random_rotation(rng, cfg.orient_jitter_deg)
    local = rotation_from_euler(wrist_ch[:, 3], wrist_ch[:, 4], wrist_ch[:, 5])
    hand_rot = to_cam @ base @ local  # (T, 3, 3)
    wrist = view.wrist + wrist_ch[:, :3] @ to_cam.T
    name = ACTION_SPECS[action].reverse_of or action
    dz, resting = settle(name, spec, s, shape, hand_rot, wrist, view, rng)
    wrist = wrist + dz[:, None] * view.up
    joints = np.einsum("tij,tkj->tki", hand_rot, forward_kinematics(shape, posture)) + wrist[:, None, :]
    parts = place_parts(spec, shape, posture, hand_rot, wrist)
    clutter = table_scene(view, joints, parts, resting, rng)
    frames = SequenceFrames(joints, hand_rot, wrist, shape, parts, clutter, posture, view.table)
    frames = reverse_frames(frames) if reverse else frames
    frames.other = other_hand(view, len(frames), rng)  # near the end of the sequence as written
    return frames


# ----------------------------------------------------------------------------- lowering


def program_posture(spec: Action, s: np.ndarray) -> np.ndarray:
    """The program's keyed postures at phases s (T, 5, 4), without the finger articulation,
    oscillation and style that tell look-alike classes and performances apart."""
    keys = [(0.0, POSTURES[spec.grip])]
    for k in spec.keys:
        keys.append((k.s, POSTURES[k.posture] if k.posture else keys[-1][1]))
    return _keyed(keys, s)


def part_bottom(part: Part, rots: np.ndarray, centres: np.ndarray, table: tuple[np.ndarray, float]) -> np.ndarray:
    """Height above the ``table`` plane (mm) of a part's lowest point, per frame (T,)."""
    down, d = table
    along = np.abs(rots.transpose(0, 2, 1) @ -down)  # (T, 3): |cos| of each part axis with up
    if part.kind == "box":
        extent = along @ np.asarray(part.dims, float)
    else:
        radius, half = part.dims
        side = radius if part.kind == "stick" else radius * np.sqrt(np.clip(1.0 - along[:, 0] ** 2, 0.0, 1.0))
        extent = half * along[:, 0] + side
    return d - centres @ down - extent


def settle(name: str, spec: Action, s: np.ndarray, shape: HandShape, hand_rot: np.ndarray, wrist: np.ndarray,
           view: View, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """How far to move the hand up (mm, negative: down), per frame (T,), and which frames rest
    on the table (T,) bool: those at least half way into a lowering window.

    The lowest point of the hand and what it holds, on the program's postures (the same for
    look-alike classes, so they keep one wrist motion), is lifted to at least ``FLOOR_MM`` above
    the table, and an object held by the other hand to the table at least.  In each of the
    action's ``LOWERED`` windows the motion is then shifted down as a whole, so that its lowest
    point in the window comes to rest ``REST_GAP_MM`` above the table, blended in and out over
    ``RAMP`` of the phase."""
    base = program_posture(spec, s)
    joints = np.einsum("tij,tkj->tki", hand_rot, forward_kinematics(shape, base)) + wrist[:, None, :]
    lowest = (view.height(joints) - joint_radius(shape)).min(axis=1)  # (T,)
    held_by_other = [0.0]
    for part, rots, centres in place_parts(spec, shape, base, hand_rot, wrist):
        bottom = part_bottom(part, rots, centres, view.table)
        if part.world:
            held_by_other.append(-float(bottom[0]))
        else:
            lowest = np.minimum(lowest, bottom)
    lift = max(FLOOR_MM - float(lowest.min()), *held_by_other)
    dz, resting = np.full(len(s), lift), np.zeros(len(s), dtype=bool)
    for s0, s1 in LOWERED.get(name, ()):
        gap = rng.uniform(*REST_GAP_MM)
        core = (s >= s0) & (s <= s1)
        if core.any():
            blend = smoothstep((s - s0 + RAMP) / RAMP) * smoothstep((s1 + RAMP - s) / RAMP)
            dz = dz + blend * (gap - float((lowest + lift)[core].min()))
            resting |= blend >= 0.5
    return np.maximum(dz, REST_GAP_MM[0] - lowest), resting  # where blends overlap a low motion: still above the table


# ----------------------------------------------------------------------------- the room


def table_scene(view: View, joints: np.ndarray, parts: list, resting: np.ndarray, rng: np.random.Generator
                ) -> R.Scene:
    """The static scene: the table, the wall, and clutter on the table beside the hand's path
    and farther back.  The table is a slab whose near edge, turned by up to ``EDGE_YAW_DEG``,
    lies ``EDGE_DEPTH_MM`` deep straight ahead of the camera, or nearer where the hand's
    ``resting`` frames (T,) or an object held by the other hand need the table under them;
    nothing lies in the sensor's range beyond the edge."""
    path = [joints.reshape(-1, 3)] + [centres for _, _, centres in parts]
    path = view.ground(np.concatenate(path))  # (N, 2) where the hand and its object pass over the table
    yaw = np.radians(rng.uniform(-EDGE_YAW_DEG, EDGE_YAW_DEG))
    inwards = np.array([-np.sin(yaw), np.cos(yaw)])  # the table's side of its edge, on the ground
    cos, sin = view.world_to_cam[2, 1], -view.world_to_cam[2, 2]  # of the camera's pitch
    edge = np.cos(yaw) * (rng.uniform(*EDGE_DEPTH_MM) - sin * view.table[1]) / cos
    supported = [joints[resting].reshape(-1, 3)] + [c[resting] for p, _, c in parts if not p.world]
    supported += [c[:1] for p, _, c in parts if p.world]
    supported = view.ground(np.concatenate(supported))
    margin = rng.uniform(*EDGE_BEHIND_MM)
    if len(supported):
        edge = min(edge, float(np.min(supported @ inwards)) - margin)
    axes = np.array([[np.cos(yaw), -np.sin(yaw), 0.0], [np.sin(yaw), np.cos(yaw), 0.0], [0.0, 0.0, 1.0]])
    middle = np.array([*(edge + TABLE_HALF[1]) * inwards, -view.table[1] - TABLE_HALF[2]])
    scene = R.Scene(walls=[(*view.wall, R.WALL)])
    scene.boxes.append((view.world_to_cam @ middle, view.world_to_cam @ axes, TABLE_HALF, R.TABLE))
    centre = path.mean(axis=0)
    placed: list[tuple[np.ndarray, float]] = []
    for near, count in ((True, rng.integers(1, 4)), (False, rng.integers(3, 7))):
        for _ in range(count):
            for _ in range(30):  # a place in view, off the hand's path and the other objects
                radius, height = rng.uniform(25, 50), rng.uniform(40, 140) if near else rng.uniform(60, 300)
                if near:
                    angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(110, 260)
                    spot = centre + dist * np.array([np.cos(angle), np.sin(angle)])
                else:
                    spot = np.array([rng.uniform(-500, 500), rng.uniform(centre[1] + 100, view.wall[1] - radius)])
                on_table = spot @ inwards > edge + radius + 10.0
                if on_table and _free(spot, radius, path, placed, near) and _in_view(view, spot, height):
                    placed.append((spot, radius))
                    _stand(scene, view, spot, radius, height, R.DARK if rng.random() < DARK_P else R.CLUTTER, rng)
                    break
    return scene


def _free(spot: np.ndarray, radius: float, path: np.ndarray, placed: list, near: bool) -> bool:
    if np.min(np.linalg.norm(path - spot, axis=1)) < radius + (45.0 if near else 80.0):
        return False
    return all(np.linalg.norm(spot - p) > radius + r + 10.0 for p, r in placed)


def _in_view(view: View, spot: np.ndarray, height: float) -> bool:
    top = view.world_to_cam @ np.array([spot[0], spot[1], height - view.table[1]])
    if top[2] <= 50.0:
        return False
    u, v = FPHA_DEPTH.project(top[None])[0]
    return 0.0 <= u < FPHA_DEPTH.width and 0.0 <= v < FPHA_DEPTH.height


def _stand(scene: R.Scene, view: View, spot: np.ndarray, radius: float, height: float, label: int,
           rng: np.random.Generator) -> None:
    """A cylinder or an upright box on the table at world ``spot``."""
    up = view.up
    centre = view.world_to_cam @ np.array([spot[0], spot[1], height / 2 - view.table[1]])
    if rng.random() < 0.5:
        scene.cylinders.append((centre - up * height / 2, centre + up * height / 2, radius, label))
    else:
        yaw = rotation_from_euler(0.0, 0.0, rng.uniform(0, 90))
        half = np.array([radius, rng.uniform(0.5, 1.0) * radius, height / 2])
        scene.boxes.append((centre, view.world_to_cam @ yaw, half, label))


def other_hand(view: View, n: int, rng: np.random.Generator) -> list[R.Scene | None] | None:
    """In ``OTHER_HAND_P`` of sequences: the other hand's primitives per frame (None before it
    enters).  It slides in along its forearm from the bottom left, starting at 50-85 % of the
    sequence, and comes to rest with its fingertips 10-40 mm above the table; its joints are
    not annotated."""
    if rng.random() >= OTHER_HAND_P:
        return None
    start, enter = int(rng.uniform(0.5, 0.85) * n), max(2, int(round(0.25 * n)))
    arm = np.array([-0.45, 0.55, -0.7])  # wrist -> elbow: left, down, nearer
    arm /= np.linalg.norm(arm)
    palm = -view.up - (-view.up @ -arm) * -arm  # the palm faces the table
    palm /= np.linalg.norm(palm)
    across = np.cross(-arm, palm)  # towards the thumb
    across = across if across[0] > 0 else -across  # the left hand's thumb points inwards
    rest = np.array([-150.0, 110.0, 340.0]) + rng.uniform([-40, -25, -30], [40, 25, 30])
    lowest = min(float(view.height(end)) - r for a, b, r, _ in _left_hand(rest, arm, across, palm).capsules[1:]
                 for end in (a, b))
    rest = rest + (rng.uniform(10, 40) - lowest) * view.up
    out: list[R.Scene | None] = [None] * n
    for t in range(start, n):
        come = float(smoothstep(np.array((t - start + 1) / enter)))
        out[t] = _left_hand(rest + (1.0 - come) * 260.0 * arm, arm, across, palm)
    return out


def _left_hand(wrist: np.ndarray, arm: np.ndarray, across: np.ndarray, palm: np.ndarray) -> R.Scene:
    """The other hand, a relaxed left hand palm down, and its forearm (the first capsule)."""
    scene = R.Scene()
    scene.capsules.append((wrist, wrist + 300.0 * arm, 28.0, R.OTHER_HAND))
    scene.boxes.append((wrist - 45.0 * arm, np.stack([across, -arm, palm], axis=-1), np.array([38.0, 45.0, 13.0]),
                        R.OTHER_HAND))
    for k, side in enumerate((-27.0, -9.0, 9.0, 27.0)):  # fingers, curled a little towards the table
        knuckle = wrist - 88.0 * arm + side * across
        tip = knuckle + (60.0 - 6.0 * abs(k - 1.5)) * (np.cos(0.5) * -arm + np.sin(0.5) * palm)
        scene.capsules.append((knuckle, tip, 8.0, R.OTHER_HAND))
    scene.capsules.append((wrist - 25.0 * arm + 30.0 * across, wrist - 70.0 * arm + 58.0 * across, 10.0, R.OTHER_HAND))
    return scene


# ----------------------------------------------------------------------------- holes


def static_holes(background: tuple[np.ndarray, np.ndarray], rng: np.random.Generator, dropout: float = 1.0
                 ) -> np.ndarray:
    """(H, W) bool: the pixels of a sequence's static scene that read zero wherever a frame
    still shows that scene: far surfaces where the return fades out (in patches: a smooth
    random field against the fade; all of it beyond ``FADE_MM[1]``), and dark clutter.
    ``dropout`` (``SynthConfig.dropout``) scales the fade's share of zeros; at 0 neither reads zero."""
    z, ids = background
    far = np.clip((z - FADE_MM[0]) / (FADE_MM[1] - FADE_MM[0]), 0.0, 1.0) * min(dropout, 1.0)  # inf (no surface): 1
    return (_smooth_uniform(z.shape, 40, rng) < far) | ((ids == R.DARK) & (dropout > 0))


def _smooth_uniform(shape: tuple[int, int], cell: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random field (H, W) of features about ``cell`` pixels wide, with uniform [0, 1)
    values (ranks): thresholding it at q marks a fraction q of the pixels, in blobs."""
    h, w = shape
    coarse = rng.standard_normal((h // cell + 2, w // cell + 2)).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    out = np.empty(h * w, dtype=np.float32)
    out[np.argsort(field.ravel(), kind="stable")] = np.arange(h * w, dtype=np.float32) / (h * w)
    return out.reshape(h, w)
