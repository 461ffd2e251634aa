"""Training-time augmentation of normalised depth crops and their joints, applied consistently.

After DeepPrior++ (Oberweger & Lepetit 2017, "DeepPrior++: Improving Fast and
Accurate 3D Hand Pose Estimation", ICCV Workshops), which augments by in-plane
rotation, scaling of the metric cube and translation of its centre, and re-crops.
Here the three are drawn per frame, combined, and applied to a whole batch of
*already normalised* crops at once (``affine_grid`` + ``grid_sample``, nearest
neighbour like the cropping itself), so no full-resolution frame is needed.

Conventions (those of :mod:`handfuse.preprocess`): a crop covers the cube's
projection, so a joint's normalised (x, y) is, up to perspective, its position in
the crop in ``grid_sample`` units (-1 at the left/top edge, +1 at the right/bottom
edge, ``align_corners=False``); depth is ``(d - z_c) / (cube / 2)`` clipped to
[-1, 1], with +1 for missing pixels and everything behind the cube.

For one frame, with angle ``a``, cube scale ``s`` and cube shift ``t`` (mm):

* rotation about the crop centre (the camera ray through the hand centre): joints'
  (x, y) turn by ``a`` (positive turns +x towards +y, i.e. clockwise on screen
  where y points down) and the crop with them; z is unchanged;
* scale: the cube's edge becomes ``s * cube``.  The box it projects to grows by
  ``s``, so the crop zooms out by ``s``; normalised joints (x, y *and* z) and
  normalised depth values are divided by ``s``, since all are divided by the
  half-size of a cube that is ``s`` times bigger;
* translation: the cube centre moves by ``t``: normalised joints lose
  ``t / (cube / 2)`` on every axis, the crop's pixels move by the (x, y) part, and
  normalised depth values lose the z part.

Approximations, all of which the full re-crop from the depth frame would avoid:
pixels that come from outside the original crop are unknown and become background
(+1); depth that the original crop had clipped (in front of the cube: -1; behind
it or missing: +1) stays clipped, so moving the cube back does not reveal what was
behind it; the box's size is left unchanged by a z shift (it would scale by
``z_c / (z_c + t_z)``, about 3 % for 10 mm at 350 mm) and x, y shifts ignore
perspective, as the crop's normalisation does not keep ``z_c``.

Defaults (``AugmentConfig``): full in-plane rotation (+-180 degrees, as DeepPrior++),
scale ``s ~ N(1, 0.05)`` clipped to 1 +- 3 sigma (DeepPrior++'s code uses sigma
0.02-0.05), translation ``t ~ N(0, 10 mm)`` per axis (DeepPrior++: 5 mm for its
centre refinement, more when the centre comes from a detector; our depth-only
centre errs by ~20 mm).  DeepPrior++ applies one of them per sample; here all
three are combined and ``p`` leaves a fraction of the frames untouched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import check


@dataclass(frozen=True)
class AugmentConfig:
    """Random ranges of the augmentation; see the module docstring for the defaults' origin."""

    rotation_deg: float = 180.0  # in-plane angle uniform in [-rotation_deg, rotation_deg]
    scale: float = 0.05  # std of the cube's scale factor around 1 (clipped to 1 +- 3 std)
    translate_mm: float = 10.0  # std of the cube centre's shift on each axis, in mm
    p: float = 1.0  # probability that a frame is augmented at all

    def __post_init__(self):
        check(0.0 <= self.rotation_deg <= 180.0, "augment.rotation_deg", self.rotation_deg, "degrees in [0, 180]")
        check(0.0 <= self.scale <= 0.3, "augment.scale", self.scale, "a std in [0, 0.3] (so that 1 - 3 std > 0)")
        check(self.translate_mm >= 0.0, "augment.translate_mm", self.translate_mm, "a std in mm >= 0")
        check(0.0 <= self.p <= 1.0, "augment.p", self.p, "a probability in [0, 1]")


def sample_params(batch: int, cfg: AugmentConfig, half_cube_mm: float,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (angle (B,) radians, scale (B,), shift (B, 3) in cube half-sizes), deterministic in
    ``generator``.  Frames left alone (probability 1 - p) get (0, 1, 0)."""
    u = torch.rand(batch, generator=generator) * 2 - 1  # (B,) uniform in [-1, 1]
    angle = u * math.radians(cfg.rotation_deg)
    scale = 1 + (torch.randn(batch, generator=generator) * cfg.scale).clamp(-3 * cfg.scale, 3 * cfg.scale)
    shift = torch.randn(batch, 3, generator=generator) * (cfg.translate_mm / half_cube_mm)  # (B, 3)
    keep = torch.rand(batch, generator=generator) >= cfg.p  # (B,) True: leave this frame alone
    angle = angle.masked_fill(keep, 0.0)
    scale = scale.masked_fill(keep, 1.0)
    shift = shift.masked_fill(keep[:, None], 0.0)
    return angle, scale, shift


def transform(depth: torch.Tensor, joints: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor,
              shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate by ``angle`` (B,) radians, scale the cube by ``scale`` (B,) and move it by ``shift``
    (B, 3) (cube half-sizes): crops (B, 1, S, S) and joints (B, 21, 3) -> the same, transformed."""
    depth = depth.float()
    cos, sin = torch.cos(angle), torch.sin(angle)  # (B,)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B, 2, 2) R(a)
    # joints: j' = R(a) (j_xy - t_xy) / s, z' = (z - t_z) / s
    xy = (joints[..., :2] - shift[:, None, :2]) @ rot.transpose(1, 2)  # (B, 21, 2)
    z = joints[..., 2:] - shift[:, None, 2:]  # (B, 21, 1)
    new_joints = torch.cat([xy, z], -1) / scale[:, None, None]
    # pixels: the output at p' samples the input at p = s R(-a) p' + t_xy, the inverse of the joints' map
    theta = torch.cat([scale[:, None, None] * rot.transpose(1, 2), shift[:, :2, None]], -1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(depth.shape), align_corners=False)  # (B, S, S, 2)
    # grid_sample pads with 0: sample depth - 1 so that outside the crop becomes background (+1)
    warped = F.grid_sample(depth - 1, grid, mode="nearest", padding_mode="zeros", align_corners=False) + 1
    background = warped >= 1  # (B, 1, S, S) missing or behind the cube, stays so
    values = ((warped - shift[:, 2, None, None, None]) / scale[:, None, None, None]).clamp(-1, 1)
    return torch.where(background, torch.ones_like(values), values), new_joints.to(joints.dtype)


def augment_batch(depth: torch.Tensor, joints: torch.Tensor, cfg: AugmentConfig, half_cube_mm: float,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment crops (B, 1, S, S) and normalised joints (B, 21, 3) with random parameters drawn from
    ``generator`` (same seed, same output); ``half_cube_mm`` converts ``translate_mm`` to crop units."""
    angle, scale, shift = (p.to(depth.device) for p in sample_params(len(depth), cfg, half_cube_mm, generator))
    return transform(depth, joints, angle, scale, shift)


def jitter_centres(batch: dict, std_mm: float, half_cube_mm: float,
                   generator: torch.Generator | None = None) -> dict:
    """A collated sequence batch whose crop centres each move by a random shift ``t ~ N(0, std_mm)`` per
    axis (mm), its crops and normalised joints moved with them (:func:`transform`, translation only).

    The batch's ``centre`` becomes ``centre + t``, so that a method's world-space output (normalised
    output times ``half_cube_mm`` plus the centre) and its joint loss stay consistent: the network sees
    the hand off-centre, as it will around a centre found from depth, while the target is unchanged.
    ``depth`` (B, T, 1, S, S), ``joints`` (B, T, 21, 3) and ``centre`` (B, T, 3) are replaced; the
    rest is shared with ``batch``.  Deterministic in ``generator``."""
    depth, joints, centre = batch["depth"], batch["joints"], batch["centre"]
    b, t = centre.shape[:2]
    shift_mm = torch.randn(b * t, 3, generator=generator).to(centre.device, centre.dtype) * std_mm  # (B*T, 3)
    none = torch.zeros(b * t, device=depth.device)
    moved, new_joints = transform(depth.reshape(b * t, *depth.shape[2:]), joints.reshape(b * t, *joints.shape[2:]),
                                  none, none + 1, (shift_mm / half_cube_mm).to(depth.device))
    return {**batch, "depth": moved.reshape(depth.shape).to(depth.dtype), "joints": new_joints.reshape(joints.shape),
            "centre": centre + shift_mm.reshape(b, t, 3)}
