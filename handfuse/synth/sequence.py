"""One synthetic sequence: an action program, randomised, turned into per-frame joints and a scene.

Per sequence this randomises the speed (and so the length), idle lead-in and
tail, a smooth time warp, the amplitudes and cycles of the motion, the phase of
oscillations, the wrist placement and orientation, and a personal finger style.
The camera is head-mounted and looks down at 55 degrees onto a table 680 mm
below it, with FPHA's intrinsics (scene v1; ``scene_v2`` builds its own room on the same
program, motion and parts).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dataconfig import SynthConfig
from ..skeleton import ACTIONS
from . import render as R
from .actions import CHANNELS, OBJECTS, ORIENTS, POSTURES, WRIST_CHANNELS, Action, Part, program
from .hand import PALM_HALF_THICKNESS, HandShape, clip_posture, forward_kinematics, frame_from_axes, rotation_from_euler

PITCH_DEG = 55.0
TABLE_BELOW_MM = 680.0
_phi = np.radians(PITCH_DEG)
# World (X right, Y forward, Z up) -> camera (x right, y down, z forward): rows are camera axes in the world.
WORLD_TO_CAM = np.array([[1.0, 0.0, 0.0], [0.0, -np.sin(_phi), -np.cos(_phi)], [0.0, np.cos(_phi), -np.sin(_phi)]])
TABLE_PLANE = (WORLD_TO_CAM @ np.array([0.0, 0.0, -1.0]), TABLE_BELOW_MM)  # n . p = d in camera coordinates
WRIST_NOMINAL = np.array([10.0, 75.0, 370.0])  # camera frame, mm


@dataclass
class SequenceFrames:
    """Everything needed to render and annotate one sequence, in camera coordinates (mm)."""

    joints: np.ndarray  # (T, 21, 3) clean joints
    hand_rot: np.ndarray  # (T, 3, 3) hand -> camera
    wrist: np.ndarray  # (T, 3)
    shape: HandShape
    parts: list[tuple[Part, np.ndarray, np.ndarray]]  # (part, (T, 3, 3) rotations, (T, 3) centres)
    clutter: R.Scene  # static table-top objects
    posture: np.ndarray | None = None  # (T, 5, 4) joint angles (hand.py's layout), for annotation noise
    table: tuple[np.ndarray, float] | None = None  # scene v2: the table's plane (n . p = d, n down)
    other: list[R.Scene | None] | None = None  # scene v2: the other hand's primitives per frame (None: absent)

    def __len__(self) -> int:
        return len(self.joints)


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _keyed(keys: list[tuple[float, np.ndarray]], s: np.ndarray) -> np.ndarray:
    """Piecewise smoothstep interpolation of keyframe values at phases s: (T, ...)"""
    out = np.broadcast_to(keys[0][1], s.shape + keys[0][1].shape).copy()
    for (s0, v0), (s1, v1) in zip(keys[:-1], keys[1:]):
        w = smoothstep((s - s0) / max(s1 - s0, 1e-6))
        w = w.reshape(w.shape + (1,) * v0.ndim)
        inside = (s >= s0)
        out = np.where(inside.reshape(w.shape), v0 + (v1 - v0) * w, out)
    return out


def phases(n: int, rng: np.random.Generator) -> np.ndarray:
    """Phase s in [0, 1] per frame: idle lead-in and tail, and a smooth monotone time warp."""
    lead, tail = rng.uniform(0.0, 0.12, 2)
    u = np.linspace(0.0, 1.0, n)
    s = np.clip((u - lead) / (1.0 - lead - tail), 0.0, 1.0)
    warp = rng.uniform(-0.08, 0.08)
    return np.clip(s + warp * np.sin(np.pi * s), 0.0, 1.0)


def animate(spec: Action, s: np.ndarray, cfg: SynthConfig, rng: np.random.Generator):
    """Wrist channels (T, 6) [X, Y, Z mm world; pitch, roll, yaw deg] and postures (T, 5, 4).

    Wrist and finger randomness come from separate streams, so look-alike classes that
    differ only in their finger channels share the very same wrist motion for a seed."""
    wrist_rng, finger_rng = rng.spawn(2)
    amp = wrist_rng.uniform(1 - cfg.amplitude_jitter, 1 + cfg.amplitude_jitter)
    keys = [(0.0, np.zeros(6), POSTURES[spec.grip])]
    for k in spec.keys:
        keys.append((k.s, np.array(k.pos + k.rot, float) * amp, POSTURES[k.posture] if k.posture else keys[-1][2]))
    wrist = _keyed([(k[0], k[1]) for k in keys], s)
    posture = _keyed([(k[0], k[2]) for k in keys], s)
    for o in spec.osc:
        finger = o.channel in CHANNELS
        r = finger_rng if finger else wrist_rng
        a = o.amp * r.uniform(1 - cfg.amplitude_jitter, 1 + cfg.amplitude_jitter)
        cycles = o.cycles * r.uniform(0.85, 1.15)
        w = np.clip((s - o.start) / (o.end - o.start), 0.0, 1.0)
        inside = (s >= o.start) & (s <= o.end)
        wave = np.sin(2 * np.pi * (cycles * w + o.phase + r.uniform(-0.1, 0.1))) * inside
        if finger:  # finger articulation: the only difference between look-alike classes
            posture = posture + (cfg.articulation_gap * a * wave)[:, None, None] * CHANNELS[o.channel]
        else:
            wrist[:, WRIST_CHANNELS.index(o.channel)] += a * wave
    for channel, deg in spec.art:
        posture = posture + cfg.articulation_gap * deg * CHANNELS[channel]
    style_rng = rng.spawn(1)[0]
    style = style_rng.normal(0.0, cfg.style_deg, (5, 4)) * np.array([0.5, 1.0, 1.0, 1.0])  # abduction varies less
    tremor = np.cumsum(style_rng.normal(0.0, 0.4, posture.shape), axis=0) * 0.5
    return wrist, clip_posture(posture + style + tremor)


def random_rotation(rng: np.random.Generator, deg: float) -> np.ndarray:
    return rotation_from_euler(*rng.normal(0.0, deg, 3))


def part_pose(part: Part, shape: HandShape, grip_joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A part's rotation (columns: its axis and two normals) and centre in the hand frame."""
    axis = np.asarray(part.axis, float) / np.linalg.norm(part.axis)
    helper = np.array([0.0, 0.0, 1.0]) if abs(axis[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
    n1 = np.cross(axis, helper)
    n1 /= np.linalg.norm(n1)
    rot = np.stack([axis, n1, np.cross(axis, n1)], axis=-1) if part.kind != "box" else np.eye(3)  # boxes: hand-aligned
    if part.anchor == "pinch":
        base = (grip_joints[8] + grip_joints[11]) / 2
    else:
        mid = (shape.mcp[1] + shape.mcp[4]) / 2 * np.array([1.0, 0.6, 0.0])
        base = mid + np.array([0.0, 0.0, PALM_HALF_THICKNESS])
        if part.anchor == "palm":  # rest the part on the palm: push it out by its extent along +z
            base = base + np.array([0.0, 0.0, _extent_z(part, rot)])
    return rot, base + np.asarray(part.offset, float)


def _extent_z(part: Part, rot: np.ndarray) -> float:
    if part.kind == "box":
        return part.dims[2]
    radius, half = part.dims
    return radius + half * abs(rot[2, 0])


def make_sequence(action: str, shape: HandShape, cfg: SynthConfig, rng: np.random.Generator) -> SequenceFrames:
    """One sequence of ``action`` in the scene ``cfg.scene`` (v2: ``scene_v2.make_sequence``)."""
    if cfg.scene == "v2":
        from .scene_v2 import make_sequence as make_v2  # it builds on this module

        return make_v2(action, shape, cfg, rng)
    spec, reverse, s, wrist_ch, posture = program_motion(action, cfg, rng)
    fingers, palm = ORIENTS[spec.orient]
    base = frame_from_axes(np.array(fingers), np.array(palm)) @ random_rotation(rng, cfg.orient_jitter_deg)
    local = rotation_from_euler(wrist_ch[:, 3], wrist_ch[:, 4], wrist_ch[:, 5])
    hand_rot = WORLD_TO_CAM @ base @ local  # (T, 3, 3)
    place = WRIST_NOMINAL + rng.uniform([-40, -25, -40], [40, 25, 50])
    wrist = place + wrist_ch[:, :3] @ WORLD_TO_CAM.T
    joints = np.einsum("tij,tkj->tki", hand_rot, forward_kinematics(shape, posture)) + wrist[:, None, :]
    parts = place_parts(spec, shape, posture, hand_rot, wrist)
    frames = SequenceFrames(joints, hand_rot, wrist, shape, parts, table_clutter(rng), posture)
    return reverse_frames(frames) if reverse else frames


def program_motion(action: str, cfg: SynthConfig, rng: np.random.Generator):
    """The action's program, whether it is played backwards, the phases (T,), wrist channels
    (T, 6) and finger postures (T, 5, 4) of one randomised performance of it."""
    spec, reverse = program(action)
    duration = cfg.duration_s * rng.uniform(1 - cfg.speed_jitter, 1 + cfg.speed_jitter)
    n = max(4, int(round(duration * cfg.fps)))
    s = phases(n, rng)
    wrist_ch, posture = animate(spec, s, cfg, rng)
    if cfg.action_pose_coupling < 1.0:
        posture = decouple(posture, s, cfg, rng)
    return spec, reverse, s, wrist_ch, posture


def place_parts(spec: Action, shape: HandShape, posture: np.ndarray, hand_rot: np.ndarray, wrist: np.ndarray
                ) -> list[tuple[Part, np.ndarray, np.ndarray]]:
    """The object's parts per frame: (part, (T, 3, 3) rotations, (T, 3) centres), camera frame."""
    parts, n = [], len(wrist)
    if spec.obj is not None:
        grip_joints = forward_kinematics(shape, posture[0])
        for part in OBJECTS[spec.obj]:
            rot, centre = part_pose(part, shape, grip_joints)
            rots = hand_rot @ rot
            centres = np.einsum("tij,j->ti", hand_rot, centre) + wrist
            if part.world:  # held by the other hand: stays where it was on the program's first frame
                rots, centres = np.repeat(rots[:1], n, 0), np.repeat(centres[:1], n, 0)
            parts.append((part, rots, centres))
    return parts


def decouple(posture: np.ndarray, s: np.ndarray, cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """The finger postures (T, 5, 4) with the action's hold on them loosened: ``c`` times the action's
    own plus ``1 - c`` times those of another action drawn at random (``c = cfg.action_pose_coupling``),
    animated over the same phases.  The draws come from a generator derived from ``rng``'s seed
    without advancing ``rng``, so that every other draw of the sequence stays what it is at c = 1."""
    seq = rng.bit_generator.seed_seq
    other_rng = np.random.default_rng(np.random.SeedSequence(seq.entropy, spawn_key=(*seq.spawn_key, 0xC0DE)))
    other, _ = program(ACTIONS[other_rng.integers(len(ACTIONS))])
    _, other_posture = animate(other, s, cfg, other_rng)
    c = cfg.action_pose_coupling
    return clip_posture(c * posture + (1.0 - c) * other_posture)


def reverse_frames(f: SequenceFrames) -> SequenceFrames:
    return SequenceFrames(f.joints[::-1].copy(), f.hand_rot[::-1].copy(), f.wrist[::-1].copy(), f.shape,
                          [(p, r[::-1].copy(), c[::-1].copy()) for p, r, c in f.parts], f.clutter,
                          None if f.posture is None else f.posture[::-1].copy(), f.table,
                          None if f.other is None else f.other[::-1])


def table_clutter(rng: np.random.Generator) -> R.Scene:
    """Two to four boxes and cylinders standing on the table, away from the hand."""
    scene = R.Scene(plane=TABLE_PLANE)
    up = WORLD_TO_CAM @ np.array([0.0, 0.0, 1.0])
    for _ in range(rng.integers(2, 5)):
        ground = np.array([rng.uniform(-420, 420), rng.uniform(380, 900), -TABLE_BELOW_MM])
        h, w = rng.uniform(40, 160), rng.uniform(25, 70)
        centre = WORLD_TO_CAM @ (ground + np.array([0.0, 0.0, h / 2]))
        if rng.random() < 0.5:
            scene.cylinders.append((centre - up * h / 2, centre + up * h / 2, w, R.CLUTTER))
        else:
            yaw = rotation_from_euler(0.0, 0.0, rng.uniform(0, 90))
            scene.boxes.append((centre, WORLD_TO_CAM @ yaw, np.array([w, rng.uniform(25, 70), h / 2]), R.CLUTTER))
    return scene


def frame_scene(f: SequenceFrames, t: int) -> R.Scene:
    """The moving primitives of frame t: forearm, palm, bones and object parts."""
    sh, rot, wrist, j = f.shape, f.hand_rot[t], f.wrist[t], f.joints[t]
    scene = R.Scene()  # the moving part only: the static clutter is rendered once per sequence
    y_axis = rot[:, 1]
    if f.table is None:
        scene.capsules.append((wrist - 5 * y_axis, wrist - 300 * y_axis, sh.forearm_radius, R.ARM))
    else:  # scene v2: the forearm droops towards the elbow, above the table
        arm = forearm_direction(-y_axis, wrist, f.table, sh.forearm_radius)
        scene.capsules.append((wrist + 5 * arm, wrist + 300 * arm, sh.forearm_radius, R.ARM))
    palm_lo, palm_hi = np.array([sh.mcp[4, 0] - 4, 0.0]), np.array([sh.mcp[1, 0] + 6, sh.mcp[2, 1] - 4])
    palm_c = np.array([*(palm_lo + palm_hi) / 2, 0.0])
    scene.boxes.append((rot @ palm_c + wrist, rot, np.array([*(palm_hi - palm_lo) / 2, PALM_HALF_THICKNESS]), R.HAND))
    scene.capsules.append((wrist, j[1], sh.radius[0, 0] + 3, R.HAND))  # thumb metacarpal
    for finger in range(5):
        chain = [1 + finger, 6 + 3 * finger, 7 + 3 * finger, 8 + 3 * finger]
        for k in range(3):
            scene.capsules.append((j[chain[k]], j[chain[k + 1]], sh.radius[finger, k], R.HAND))
    for part, rots, centres in f.parts:
        c, pr = centres[t], rots[t]
        if part.kind == "cyl":
            scene.cylinders.append((c - pr[:, 0] * part.dims[1], c + pr[:, 0] * part.dims[1], part.dims[0], R.OBJECT))
        elif part.kind == "stick":
            scene.capsules.append((c - pr[:, 0] * part.dims[1], c + pr[:, 0] * part.dims[1], part.dims[0], R.OBJECT))
        else:
            scene.boxes.append((c, pr, np.asarray(part.dims, float), R.OBJECT))
    if f.other is not None and f.other[t] is not None:  # scene v2: the other hand, not annotated
        scene.capsules.extend(f.other[t].capsules)
        scene.boxes.extend(f.other[t].boxes)
    return scene


def forearm_direction(arm: np.ndarray, wrist: np.ndarray, table: tuple[np.ndarray, float], radius: float,
                      droop_deg: float = 25.0, length: float = 300.0, clearance: float = 10.0) -> np.ndarray:
    """The unit direction (3,) from the wrist to the elbow: ``arm`` (the hand's -y axis) turned
    down by ``droop_deg`` (the elbow hangs below the wrist), but never so far that the forearm's
    far end comes within ``clearance`` mm of the table."""
    down, d = table  # n . p = d on the table, n pointing into it
    up = -down
    floor = radius + clearance - (d + wrist @ up)  # the elbow's lowest allowed height, relative to the wrist
    flat = arm - (arm @ up) * up  # the arm's horizontal part
    flat = flat / max(np.linalg.norm(flat), 1e-9)
    rise = np.arcsin(np.clip(arm @ up, -1.0, 1.0)) - np.radians(droop_deg)
    rise = max(rise, -np.radians(80.0), np.arcsin(np.clip(floor / length, -1.0, 1.0)))
    return np.cos(rise) * flat + np.sin(rise) * up


def joint_radius(shape: HandShape) -> np.ndarray:
    """The surface radius around each of the 21 joints (mm), for visibility tests."""
    r = np.empty(21)
    r[0] = 18.0
    r[1:6] = [shape.radius[0, 0], *shape.radius[1:, 0]]
    for finger in range(5):
        r[6 + 3 * finger: 9 + 3 * finger] = [shape.radius[finger, 0], shape.radius[finger, 1], shape.radius[finger, 2]]
    return r
