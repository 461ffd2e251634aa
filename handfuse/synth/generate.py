"""Write the synthetic benchmark as an FPHA tree (byte-compatible with the real one).

``generate(out, cfg)`` writes, for ``cfg.subjects`` subjects x 45 actions x
``cfg.reps`` repetitions::

    data_split_action_recognition.txt       reps 1..reps/2 -> Training, the rest -> Test
    Video_files/Subject_k/<action>/<rep>/depth/depth_NNNN.png
    Hand_pose_annotation_v1/Subject_k/<action>/<rep>/skeleton.txt
    Subjects_info/Subject_k_info.txt
    synth_info.json                          generator version, seed, parameters, counts
    Synthetic_extras/Subject_k/<action>/<rep>/visibility.txt   per frame, 21 characters:
        '.' visible, 'o' hidden by the object, 'h' by the hand itself, 'a' by the arm (scene v2:
        or by the other hand), 't' by the table, the wall or clutter, 'x' outside the image

``cfg.scene`` picks the scene: v1 (``sequence``) or v2 (``scene_v2``: a nearer table, the other
hand, structured holes, joint-angle annotation noise).

Every sequence draws from its own seed (``seed``, subject, action, rep), so the
output is byte-identical for a seed whatever the number of worker processes.
The tree is built in a temporary folder and renamed into place when complete.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..camera import FPHA_DEPTH
from ..dataconfig import SynthConfig
from ..fpha import INFO_DIR, POSE_DIR, SPLIT_FILE, VIDEO_DIR, SequenceRef, write_depth_png, write_skeleton_file, write_split_file
from ..skeleton import ACTIONS
from . import render as R
from .annotation import angle_noise
from .hand import HandShape
from .scene_v2 import static_holes
from .sequence import frame_scene, joint_radius, make_sequence

GENERATOR_VERSION = "2.0"  # 2.0: scene v2 is the default; 1.1: look-alike oscillations slowed to be resolvable at 6 fps
EXTRAS_DIR = "Synthetic_extras"
INFO_FILE = "synth_info.json"
VIS_CODES = {R.NOTHING: "t", R.TABLE: "t", R.CLUTTER: "t", R.OBJECT: "o", R.HAND: "h", R.ARM: "a",
             R.DARK: "t", R.OTHER_HAND: "a", R.WALL: "t"}
_renderer: R.Renderer | None = None


def sequence_refs(cfg: SynthConfig) -> tuple[list[SequenceRef], list[SequenceRef]]:
    """The 1:1 action split by repetition: (train, test)."""
    train, test = [], []
    for subject in range(1, cfg.subjects + 1):
        for label, action in enumerate(ACTIONS):
            for rep in range(1, cfg.reps + 1):
                (train if rep <= cfg.reps // 2 else test).append(SequenceRef(subject, action, str(rep), label))
    return train, test


def subject_shape(cfg: SynthConfig, subject: int) -> HandShape:
    return HandShape.sample(np.random.default_rng([cfg.seed, subject, 1_000_003]))


def sequence_rng(cfg: SynthConfig, ref: SequenceRef) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, ref.subject, ref.label, int(ref.rep)])


def visibility(zbuf: np.ndarray, ids: np.ndarray, joints: np.ndarray, radius: np.ndarray, tol_mm: float = 6.0) -> str:
    """One character per joint (see the module docstring) from the clean z-buffer."""
    uv = np.floor(FPHA_DEPTH.project(joints)).astype(int)
    out = []
    for (u, v), z, r in zip(uv, joints[:, 2], radius):
        if not (0 <= u < FPHA_DEPTH.width and 0 <= v < FPHA_DEPTH.height):
            out.append("x")
        elif zbuf[v, u] < z - r - tol_mm:
            out.append(VIS_CODES[int(ids[v, u])])
        else:
            out.append(".")
    return "".join(out)


def write_sequence(root: Path, cfg: SynthConfig, ref: SequenceRef) -> int:
    """Render and write one sequence; returns its number of frames."""
    rng = sequence_rng(cfg, ref)
    shape = subject_shape(cfg, ref.subject)
    frames = make_sequence(ref.action, shape, cfg, rng)
    noisy = annotate(frames, shape, cfg, rng)
    pose_dir = root / POSE_DIR / ref.key
    pose_dir.mkdir(parents=True, exist_ok=True)
    write_skeleton_file(pose_dir / "skeleton.txt", noisy)
    if cfg.render:
        depth_dir = root / VIDEO_DIR / ref.key / "depth"
        extras_dir = root / EXTRAS_DIR / ref.key
        depth_dir.mkdir(parents=True, exist_ok=True)
        extras_dir.mkdir(parents=True, exist_ok=True)
        radius, vis = joint_radius(shape), []
        for t, (depth, zbuf, ids) in enumerate(render_frames(frames, cfg, rng)):
            vis.append(visibility(zbuf, ids, frames.joints[t], radius))
            write_depth_png(depth_dir / f"depth_{t:04d}.png", depth, cfg.png_compression)
        (extras_dir / "visibility.txt").write_text("\n".join(vis) + "\n", encoding="ascii")
    return len(frames)


def annotate(frames, shape: HandShape, cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """The skeleton written for a sequence (``make_sequence``'s, of ``shape``): its joints (T, 21, 3)
    with the annotation noise of ``cfg``'s scene."""
    if cfg.scene == "v1":
        return frames.joints + rng.normal(0.0, cfg.pose_noise_mm, frames.joints.shape)
    return angle_noise(shape, frames.posture, frames.hand_rot, frames.wrist, cfg.pose_noise_mm, rng)  # rigid bones


def render_frames(frames, cfg: SynthConfig, rng: np.random.Generator, rotation: np.ndarray | None = None,
                  shift: np.ndarray | None = None):
    """Each frame of a sequence (``make_sequence``'s) as the sensor reads it: (depth (H, W) uint16 mm,
    the clean z-buffer (H, W) float32 mm, the label map (H, W)) per frame, in order.  With ``rotation``
    (3, 3) and ``shift`` (3,) mm the scene is seen by a camera turned and moved by them
    (:meth:`handfuse.synth.render.Scene.turned`; the joints are then ``frames.joints @ rotation.T + shift``)."""
    global _renderer
    _renderer = _renderer or R.Renderer(FPHA_DEPTH)

    def seen(scene: R.Scene) -> R.Scene:
        if rotation is None and shift is None:
            return scene
        return scene.turned(np.eye(3) if rotation is None else rotation, shift)

    sensor = R.SensorModel(jitter=cfg.depth_noise, dropout=cfg.dropout, dark_patches=cfg.scene == "v1")
    background = _renderer.render(seen(frames.clutter))  # the static table and clutter, once per sequence
    backdrop = sensor.backdrop(background[0])  # and the sensor's terms of it
    holes = None if cfg.scene == "v1" else static_holes(background, rng, cfg.dropout)  # v2: the static scene's zeros
    for t in range(len(frames)):
        zbuf, ids, changed = _renderer.render_over(seen(frame_scene(frames, t)), background)
        depth = sensor.measure(zbuf, rng, backdrop=backdrop, changed=changed)
        if holes is not None:
            depth[holes & (zbuf == background[0])] = 0
        yield depth, zbuf, ids


def _write_sequence_job(args):
    return write_sequence(*args)


def generate(out: str | Path, cfg: SynthConfig, workers: int | None = None, progress: bool = True) -> Path:
    """Write the benchmark to ``out`` (which must not exist yet) and return it."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; remove it or choose another --out")
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    train, test = sequence_refs(cfg)
    refs = train + test
    workers = workers or min(4, os.cpu_count() or 1)
    start = time.perf_counter()
    jobs = [(tmp, cfg, ref) for ref in refs]
    bar = tqdm(total=len(refs), desc=f"synth {out.name}", unit="seq", disable=not progress)
    if workers == 1:
        lengths = []
        for job in jobs:
            lengths.append(_write_sequence_job(job))
            bar.update()
    else:
        with ProcessPoolExecutor(workers) as pool:
            lengths = []
            for n in pool.map(_write_sequence_job, jobs, chunksize=4):
                lengths.append(n)
                bar.update()
    bar.close()
    frames = dict(zip((r.key for r in refs), lengths))
    write_split_file(tmp / SPLIT_FILE, train, test)
    _write_subject_info(tmp, refs, frames)
    info = {
        "generator": "handfuse.synth", "version": GENERATOR_VERSION, "synthetic": True,
        "config": _recorded(cfg),
        "counts": {"subjects": cfg.subjects, "actions": len(ACTIONS), "sequences": len(refs),
                   "train_sequences": len(train), "test_sequences": len(test), "frames": int(sum(lengths))},
        "note": "Synthetic data in the FPHA format. Numbers measured on it are not FPHA numbers.",
    }
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, out)
    if progress:
        elapsed = time.perf_counter() - start
        print(f"wrote {len(refs)} sequences, {sum(lengths)} frames to {out} in {elapsed:.1f} s"
              f" ({sum(lengths) / elapsed:.1f} frames/s, {workers} workers)")
    return out


def _recorded(cfg: SynthConfig) -> dict:
    """The parameters ``synth_info.json`` records: all of them.  (Before generator 2.0 a v1 benchmark
    left ``scene`` out, v1 being the default then; those folders are regenerated anyway, their version
    being older.)"""
    return asdict(cfg)


def _write_subject_info(root: Path, refs: list[SequenceRef], frames: dict[str, int]) -> None:
    (root / INFO_DIR).mkdir(exist_ok=True)
    for subject in sorted({r.subject for r in refs}):
        lines = ["action sequence frames"] + [f"{r.action} {r.rep} {frames[r.key]}" for r in refs if r.subject == subject]
        (root / INFO_DIR / f"Subject_{subject}_info.txt").write_text("\n".join(lines) + "\n", encoding="ascii")


def read_visibility(root: str | Path, ref: SequenceRef) -> np.ndarray:
    """(T, 21) array of visibility codes written by the generator (synthetic roots only)."""
    path = Path(root) / EXTRAS_DIR / ref.key / "visibility.txt"
    lines = path.read_text(encoding="ascii").split()
    return np.array([list(line) for line in lines])
