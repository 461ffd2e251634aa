"""Hand centre, crop and joint normalisation (handfuse.preprocess)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from handfuse.camera import FPHA_DEPTH
from handfuse.preprocess import (
    SURFACE_TO_JOINT_MM,
    centre_from_depth,
    centre_from_joints,
    crop,
    crop_affine,
    denormalise_joints,
    joints_to_crop_pixels,
    normalise_joints,
)
from handfuse.skeleton import JOINT_INDEX

from conftest import splat_discs

K = FPHA_DEPTH


def egocentric_frame(hand: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A first-person frame: a forearm from below the bottom edge, NEARER than the hand at its far
    end (a fist of radius ~45 mm around ``hand``), a table plane behind, ~30% invalid pixels."""
    depth = np.repeat(700.0 + (K.height - np.arange(K.height))[:, None] * 0.6, K.width, axis=1)  # (H, W) table
    entry = np.array([hand[0] + 30, 230.0, 170.0])  # below the image, near the camera
    wrist = hand + 70 * (entry - hand) / np.linalg.norm(entry - hand)
    arm = entry + np.linspace(0, 1, 60)[:, None] * (wrist - entry)  # (60, 3)
    splat_discs(depth, arm, 35.0)
    fist = hand + rng.uniform(-1, 1, (40, 3)) * np.array([40.0, 35.0, 15.0])
    splat_discs(depth, fist, 14.0)
    depth += rng.normal(0, 1.5, depth.shape)
    depth[rng.random(depth.shape) < 0.3] = 0
    return np.round(depth).astype(np.uint16)


# ----------------------------------------------------------------------------- joints


def test_centre_from_joints_is_the_middle_mcp():
    joints = np.random.default_rng(0).normal(0, 50, (2, 5, 21, 3))
    assert np.array_equal(centre_from_joints(joints), joints[:, :, JOINT_INDEX["MMCP"]])


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_normalise_round_trip(lib):
    rng = np.random.default_rng(1)
    joints = rng.normal([0, 0, 400], 60, (4, 21, 3)).astype(np.float32)  # (B, 21, 3)
    centre = rng.normal([0, 0, 400], 20, (4, 3)).astype(np.float32)  # (B, 3)
    if lib == "torch":
        joints, centre = torch.from_numpy(joints), torch.from_numpy(centre)
    norm = normalise_joints(joints, centre, 250.0)
    assert type(norm) is type(joints) and norm.dtype == joints.dtype
    expected = (np.asarray(joints) - np.asarray(centre)[:, None]) / 125.0
    np.testing.assert_allclose(np.asarray(norm), expected, rtol=1e-6)
    back = denormalise_joints(norm, centre, 250.0)
    np.testing.assert_allclose(np.asarray(back), np.asarray(joints), atol=1e-3)


def test_normalised_centre_joint_is_zero():
    joints = np.random.default_rng(2).normal([0, 0, 400], 50, (21, 3))
    norm = normalise_joints(joints, centre_from_joints(joints), 200.0)
    assert np.allclose(norm[JOINT_INDEX["MMCP"]], 0)
    assert np.abs(norm).max() > 0.1  # the others are not


# ----------------------------------------------------------------------------- crop


def test_crop_normalisation_and_far_face():
    centre = np.array([10.0, -20.0, 420.0])
    depth = np.full((K.height, K.width), 400, np.uint16)  # a wall 20 mm in front of the centre
    u, v = K.project(centre).round().astype(int)
    depth[v - 10:v + 10, u - 40:u - 20] = 0  # missing pixels
    depth[v - 10:v + 10, u + 20:u + 40] = 900  # behind the cube
    depth[v + 20:v + 40, u - 10:u + 10] = 200  # in front of the cube
    out = crop(depth, centre, K, cube_mm=250.0, size=32)
    assert out.shape == (32, 32) and out.dtype == np.float32
    assert out.min() >= -1 and out.max() <= 1
    wall = (400 - 420) / 125
    np.testing.assert_allclose(np.unique(out), [-1.0, wall, 1.0], atol=1e-6)  # clip, wall, far face
    assert np.isclose(out[16, 16], wall)
    s = 32 / (2 * K.fx * 125 / 420)  # crop pixels per image pixel
    assert out[16, int(16 - 30 * s)] == 1.0  # missing -> far face
    assert out[16, int(16 + 30 * s)] == 1.0  # behind -> far face
    assert out[int(16 + 30 * s), 16] == -1.0  # in front -> clipped to the near face


def test_crop_outside_the_image_is_far_face():
    depth = np.full((K.height, K.width), 300, np.uint16)
    centre = K.backproject(np.array([2.0, 2.0]), np.array(300.0))  # the cube overhangs the top-left corner
    out = crop(depth, centre, K, cube_mm=250.0, size=16)
    assert out[0, 0] == 1.0 and out[-1, -1] == 0.0
    assert 0.3 < (out == 1.0).mean() < 0.9


def test_crop_refuses_a_centre_behind_the_camera():
    with pytest.raises(ValueError, match="z > 0"):
        crop(np.zeros((K.height, K.width), np.uint16), np.array([0.0, 0.0, 0.0]))


def test_affine_maps_the_box_onto_the_crop():
    centre = np.array([30.0, 10.0, 500.0])
    affine = crop_affine(centre, K, 200.0, 64)
    box_corner = K.project(centre - np.array([100.0, 100.0, 0.0]))  # top-left of the projected cube
    np.testing.assert_allclose(affine[:, :2] @ box_corner + affine[:, 2], [-0.5, -0.5], atol=1e-9)
    np.testing.assert_allclose(affine[:, :2] @ K.project(centre) + affine[:, 2], [31.5, 31.5], atol=1e-9)


def test_joints_land_on_the_hand_in_the_crop(tiny_fpha):
    """The fixture draws a disc of depth z - 9 at each joint: the crop must show it where the joint projects."""
    ref = tiny_fpha.sequences[0]
    joints = tiny_fpha.read_skeleton(ref)[0]  # (21, 3)
    depth = tiny_fpha.read_depth(ref, 0)
    centre, cube, size = centre_from_joints(joints), 250.0, 64
    out = crop(depth, centre, K, cube, size)
    xy = joints_to_crop_pixels(joints, centre, K, cube, size).round().astype(int)  # (21, 2)
    inside = np.all((xy >= 0) & (xy < size), axis=1)
    assert inside.sum() >= 15
    shown = out[xy[inside, 1], xy[inside, 0]]
    expected = np.clip((joints[inside, 2] - 9 - centre[2]) / (cube / 2), -1, 1)
    assert np.all(shown < 1.0)  # never the table (far face)
    assert np.all(shown <= expected + 0.02)  # the joint's disc, or a nearer disc over it
    assert np.mean(np.abs(shown - expected) < 0.02) >= 0.7


# ----------------------------------------------------------------------------- centre from depth


@pytest.mark.parametrize("seed", range(4))
def test_centre_from_depth_finds_the_hand_not_the_nearer_arm(seed):
    rng = np.random.default_rng(seed)
    hand = np.array([rng.uniform(-80, 80), rng.uniform(-90, 10), rng.uniform(330, 480)])
    depth = egocentric_frame(hand, rng)
    valid = depth[depth > 0]
    assert np.percentile(valid, 2) < hand[2] - 100  # the arm really is nearer than the hand
    centre = centre_from_depth(depth, K, 250.0)
    assert centre.shape == (3,) and centre.dtype == np.float32
    assert np.linalg.norm(centre - hand) < 40.0


def test_centre_from_depth_without_an_arm_is_the_blob_centre():
    depth = np.full((K.height, K.width), 900.0)
    hand = np.array([-40.0, 20.0, 400.0])
    splat_discs(depth, hand[None], 50.0)
    centre = centre_from_depth(depth.astype(np.uint16), K, 250.0)
    front = K.backproject(K.project(hand), np.array(hand[2] - 50))  # the disc's centre, on its front face
    np.testing.assert_allclose(centre, front + [0, 0, SURFACE_TO_JOINT_MM], atol=2.0)


@pytest.mark.parametrize("case", ["empty", "speck", "wall"])
def test_centre_from_depth_refuses_a_frame_without_foreground(case):
    depth = np.zeros((K.height, K.width), np.uint16)
    if case == "speck":
        depth[100:104, 200:204] = 300  # 16 valid pixels: not a hand
    if case == "wall":
        depth[:] = 800
        depth[::7] = 0  # a bare wall, nothing in front of it
    with pytest.raises(ValueError, match="nothing found"):
        centre_from_depth(depth)
