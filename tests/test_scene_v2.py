"""Scene v2 (handfuse.synth.scene_v2): determinism, rigid bones, the hand near the table, and
realism against a real FPHA sequence (handfuse.datastats).  Scene v1's bytes are pinned in
test_synth.py."""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from handfuse.config import SynthConfig, get_preset
from handfuse.datastats import no_depth_gap, realism, realism_reference, realism_table
from handfuse.errors import ConfigError
from handfuse.fpha import FPHA, read_skeleton_file
from handfuse.skeleton import ACTIONS, BONES
from handfuse.synth import generate, read_visibility
from handfuse.synth.annotation import angle_noise, position_jitter
from handfuse.synth.generate import INFO_FILE, subject_shape
from handfuse.synth.hand import HandShape
from handfuse.synth.scene_v2 import LOWERED, part_bottom
from handfuse.synth.sequence import TABLE_PLANE, joint_radius, make_sequence

# 1 subject x 45 actions x 2 reps of 4 frames: 360 frames, a few seconds to write.  Seed 1000, not a
# preset's, like the calibration (the measurement that set scene_v2's constants).
TINY_V2 = SynthConfig(subjects=1, reps=2, fps=2.0, duration_s=1.6, seed=1000, scene="v2")


@pytest.fixture(scope="module")
def v2_root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("v2") / "a", TINY_V2, workers=2, progress=False)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_scene_is_checked():
    with pytest.raises(ConfigError, match="synth.scene"):
        SynthConfig(scene="v3")
    assert SynthConfig().scene == "v2"  # the presets' data since generator 2.0


def test_v2_is_deterministic_and_records_its_scene(v2_root, tmp_path):
    again = generate(tmp_path / "b", TINY_V2, workers=1, progress=False)  # the worker count must not matter
    assert _digest(again) == _digest(v2_root)
    assert json.loads((v2_root / INFO_FILE).read_text())["config"]["scene"] == "v2"
    v1 = generate(tmp_path / "c", replace(TINY_V2, scene="v1", render=False), workers=2, progress=False)
    skeletons = [k for k in _digest(v1) if k.endswith("skeleton.txt")]
    assert skeletons and all(_digest(v1)[k] != _digest(v2_root)[k] for k in skeletons)


def _bone_spread(root: Path) -> np.ndarray:
    """Per sequence, the largest range (max - min over its frames, mm) of any bone's length."""
    out = []
    for path in sorted(root.rglob("skeleton.txt")):
        joints = read_skeleton_file(path)  # (T, 21, 3)
        lengths = np.stack([np.linalg.norm(joints[:, a] - joints[:, b], axis=-1) for a, b in BONES], -1)
        out.append((lengths.max(0) - lengths.min(0)).max())
    return np.array(out)


def test_v2_bones_are_rigid_and_v1s_are_not(tmp_path):
    skeletons = replace(TINY_V2, render=False)
    v2 = _bone_spread(generate(tmp_path / "v2", skeletons, progress=False))
    v1 = _bone_spread(generate(tmp_path / "v1", replace(skeletons, scene="v1"), progress=False))
    assert len(v2) == len(v1) == 90
    assert v2.max() < 0.5, f"a bone's length varies by {v2.max():.3f} mm within a v2 sequence"
    assert np.median(v1) > 0.5  # i.i.d. joint noise stretches bones (about 3 mm at 1.5 mm per coordinate)


def test_v2_annotation_noise_keeps_the_knobs_meaning():
    """pose_noise_mm is the equivalent per-coordinate joint jitter in v2 too (annotation.py)."""
    cfg, shape = replace(get_preset("cpu").synth, scene="v2"), HandShape.nominal()
    for noise in (1.5, 4.0):
        found = []
        for k, action in enumerate(("put_salt", "write", "high_five", "pour_milk", "give_coin", "flip_pages")):
            rng = np.random.default_rng(k)
            f = make_sequence(action, shape, cfg, rng)
            found.append(position_jitter(f.joints, angle_noise(shape, f.posture, f.hand_rot, f.wrist, noise, rng)))
        assert abs(np.mean(found) / noise - 1.0) < 0.15, f"{np.mean(found):.2f} mm of jitter for pose_noise_mm={noise}"


def _heights(f, table) -> tuple[np.ndarray, np.ndarray]:
    """Per frame (T,) each, from the scene geometry: the height above the table plane (mm) of the
    hand's lowest surface (each joint's height minus the hand's radius there), and of the lowest
    point of the hand and the object it holds together."""
    n, d = table
    hand = (d - f.joints @ n - joint_radius(f.shape)).min(axis=1)
    held = [part_bottom(part, rots, centres, table) for part, rots, centres in f.parts if not part.world]
    return hand, np.min([hand, *held], axis=0)


# The object held comes to rest a few mm above the table; the hand itself within a few cm, or, holding
# the milk carton by its side, about half the carton's height above it.
@pytest.mark.parametrize("action, hand_mm", [("put_salt", 50.0), ("sprinkle", 50.0), ("put_tea_bag", 50.0),
                                             ("write", 50.0), ("pour_milk", 120.0)])
def test_the_hand_comes_down_to_the_table_in_lowering_phases(action, hand_mm):
    assert action in LOWERED
    shape = subject_shape(get_preset("cpu").synth, 1)
    for seed in range(4):
        v2 = make_sequence(action, shape, replace(get_preset("cpu").synth, scene="v2"), np.random.default_rng(seed))
        hand, lowest = _heights(v2, v2.table)
        assert lowest.min() < 25.0 and hand.min() < hand_mm, (seed, lowest.min(), hand.min())
        assert lowest.min() > -2.0  # on the table, not through it
        v1 = make_sequence(action, shape, get_preset("cpu").synth, np.random.default_rng(seed))
        assert _heights(v1, TABLE_PLANE)[1].min() > 80.0  # v1: the hand and its object stay far above its table


def test_nothing_goes_through_the_table_and_the_other_hand_comes_late():
    cfg, shape = replace(get_preset("cpu").synth, scene="v2"), subject_shape(get_preset("cpu").synth, 2)
    entered = 0
    for k, action in enumerate(ACTIONS):
        f = make_sequence(action, shape, cfg, np.random.default_rng(100 + k))
        n, d = f.table
        assert (d - f.joints @ n).min() > 0.0, f"{action}: a joint lies below the table"
        if f.other is not None:
            present = [t for t, o in enumerate(f.other) if o is not None]
            assert present and present[0] >= len(f) // 2 and present[-1] == len(f) - 1
            ends = [(d - end @ n - r) for a, b, r, _ in f.other[-1].capsules for end in (a, b)]
            assert min(ends) > 0.0, f"{action}: the other hand goes through the table"
            entered += 1
    assert 5 <= entered <= 35  # some sequences, not all (OTHER_HAND_P of them)


def test_a_v2_frame_measured_near_its_change_equals_the_whole_frame():
    """The generator's speed path (test_synth's check of it) on a v2 scene: a slab table, a wall,
    dark clutter and the other hand, whose shadows reach across the frame."""
    from handfuse.synth.render import OTHER_HAND, Renderer, SensorModel
    from handfuse.synth.sequence import frame_scene

    cfg, shape = replace(get_preset("cpu").synth, scene="v2"), HandShape.nominal()
    f = next(f for seed in range(20)
             if (f := make_sequence("put_salt", shape, cfg, np.random.default_rng(seed))).other is not None)
    renderer, sensor = Renderer(), SensorModel(dark_patches=False)
    background = renderer.render(f.clutter)
    zbuf, ids, changed = renderer.render_over(frame_scene(f, len(f) - 1), background)
    assert (ids == OTHER_HAND).any()
    whole = sensor.measure(zbuf, np.random.default_rng(3))
    near = sensor.measure(zbuf, np.random.default_rng(3), backdrop=sensor.backdrop(background[0]), changed=changed)
    assert np.array_equal(whole, near) and (whole > 0).any()


def test_v2_keeps_the_actions_occlusion_structure(v2_root):
    fpha = FPHA(v2_root)
    rate = {}
    for ref in fpha.sequences:
        rate.setdefault(ref.action, []).append((read_visibility(v2_root, ref) == "o").mean())
    rate = {a: np.mean(v) for a, v in rate.items()}
    assert rate["handshake"] == 0.0 and rate["high_five"] == 0.0
    assert sum(r > 0.02 for r in rate.values()) >= 10


def test_v2_realism_lies_near_the_real_sequence(v2_root):
    """The calibration targets (realism_reference: one real FPHA sequence) on these 360 frames.

    Over seeds 1000-1005 this small set gave zero fractions of 0.316-0.332 and 31-39 % of frames
    without a depth gap between hand and scene, so the targets themselves (0.30-0.34 and
    25-40 %) are asserted; the valid-depth percentiles within 40 mm of the real ones (their
    median lies 25-30 mm deeper than the real sequence's)."""
    fpha = FPHA(v2_root)
    found = realism(fpha, fpha.sequences, frames_per_sequence=None)
    assert found["frames"] == sum(fpha.num_frames(r) for r in fpha.sequences) == 360
    assert 0.30 <= found["zero_fraction"] <= 0.34
    assert 0.25 <= found["no_gap_fraction"] <= 0.40
    real = realism_reference()
    for q in (5, 50, 95):
        assert abs(found[f"valid_mm_p{q}"] - real[f"valid_mm_p{q}"]) <= 40.0, (q, found[f"valid_mm_p{q}"])


def test_no_depth_gap_follows_its_definition():
    hand = np.zeros((21, 3))
    hand[:, 2] = np.linspace(300.0, 350.0, 21)  # the farthest joint at 350 mm
    depth = np.zeros((480, 640), dtype=np.uint16)
    depth[:100] = 330  # the hand's surface
    depth[100:] = np.linspace(500, 900, 380).astype(np.uint16)[:, None]  # a table from 500 mm back
    assert not no_depth_gap(depth, hand)  # 150 mm of nothing behind the hand
    depth[100:] = np.linspace(362, 900, 380).astype(np.uint16)[:, None]  # the table right behind it
    assert no_depth_gap(depth, hand)
    depth[100:103, :20] = 372  # ... and a few flying pixels fill no bin
    depth[103:] = np.linspace(410, 900, 377).astype(np.uint16)[:, None]  # a 40 mm gap from 370 to 410
    assert not no_depth_gap(depth, hand)
    depth[103:] = np.linspace(400, 900, 377).astype(np.uint16)[:, None]  # only 30 mm
    assert no_depth_gap(depth, hand)
    depth[100:] = np.linspace(600, 900, 380).astype(np.uint16)[:, None]
    assert not no_depth_gap(depth, hand)  # the gap may begin right at the hand
    depth[100:] = 0
    assert not no_depth_gap(depth, hand)  # nothing behind the hand: it stands alone


def test_realism_table_puts_ours_beside_the_labelled_reference():
    measured = {"frames": 360, "zero_fraction": 0.3123, "valid_mm_p5": 301.0, "valid_mm_p50": 677.0,
                "valid_mm_p95": 911.0, "no_gap_fraction": 0.3456, "hand_mm_p5": 281.0, "hand_mm_p95": 455.0,
                "background_mm_p5": 560.0, "background_mm_p95": 930.0}
    text = realism_table(measured, "synthetic v2")
    lines = text.splitlines()
    assert "measured (synthetic v2)" in lines[0] and "84 frames of Subject_1/put_salt/1" in lines[0]
    assert "| 31.2 % | 32.6 %" in text and "301 / 677 / 911 | 330 / 684 / 900" in text
    assert "| 35 % | 33 % (28 of 84)" in text
    assert "issue 23" in realism_reference()["source"]
