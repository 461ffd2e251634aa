"""Augmentation of normalised crops and joints (handfuse.augment): pixels and joints move together."""
from __future__ import annotations

import math

import pytest
import torch

from handfuse.augment import AugmentConfig, augment_batch, jitter_centres, sample_params, transform
from handfuse.errors import ConfigError

S = 32


def pixel_to_norm(col: float, row: float) -> tuple[float, float]:
    """Crop pixel centre -> normalised (x, y) (grid_sample, align_corners=False)."""
    return (2 * col + 1) / S - 1, (2 * row + 1) / S - 1


def foreground_centroid(depth: torch.Tensor) -> torch.Tensor:
    """(1, S, S) crop -> normalised (x, y) centroid of the pixels nearer than the background."""
    rows, cols = torch.nonzero(depth[0] < 1, as_tuple=True)
    return torch.tensor(pixel_to_norm(cols.float().mean().item(), rows.float().mean().item()))


def one_pixel(col: int, row: int, value: float = -0.5, size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A crop with a (2 size + 1)^2 block at (col, row) on background, and joints all at its centre."""
    depth = torch.ones(1, 1, S, S)
    depth[0, 0, row - size:row + size + 1, col - size:col + size + 1] = value
    x, y = pixel_to_norm(col, row)
    return depth, torch.tensor([x, y, value]).expand(1, 21, 3).clone()


def params(angle=0.0, scale=1.0, shift=(0.0, 0.0, 0.0)):
    return torch.tensor([angle]), torch.tensor([scale]), torch.tensor([shift])


def test_rotation_by_90_degrees_moves_the_pixel_and_the_joint_alike():
    depth, joints = one_pixel(col=20, row=5)
    out, new = transform(depth, joints, *params(angle=math.pi / 2))
    rows, cols = torch.nonzero(out[0, 0] < 1, as_tuple=True)
    assert len(rows) == 1 and out[0, 0, rows[0], cols[0]] == -0.5
    # +x turns to +y: the pixel at (x, y) goes to (-y, x), i.e. column 31 - row, row = column
    assert (cols.item(), rows.item()) == (S - 1 - 5, 20)
    assert torch.allclose(new[0, 0, :2], torch.tensor(pixel_to_norm(cols.item(), rows.item())), atol=1e-6)
    assert new[0, 0, 2] == joints[0, 0, 2]  # z unchanged


def test_translation_in_z_shifts_depth_and_joint_z_alike_and_keeps_background():
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(2, 1, S, S, generator=g) * 1.8 - 0.9
    depth[:, :, :8] = 1.0  # background rows
    joints = torch.rand(2, 21, 3, generator=g) - 0.5
    shift = torch.tensor([[0.0, 0.0, 0.2], [0.0, 0.0, -0.2]])
    out, new = transform(depth, joints, torch.zeros(2), torch.ones(2), shift)
    assert (out[:, :, :8] == 1).all()
    fg = depth < 1
    assert torch.allclose(out[fg], (depth - shift[:, 2, None, None, None]).clamp(-1, 1)[fg], atol=1e-6)
    assert torch.allclose(new[..., 2], joints[..., 2] - shift[:, None, 2], atol=1e-6)
    assert torch.allclose(new[..., :2], joints[..., :2])
    assert out.min() == -1 and out.max() == 1  # clipped, not beyond


def test_translation_in_xy_moves_pixel_and_joint_alike_and_fills_with_background():
    depth, joints = one_pixel(col=10, row=12)
    out, new = transform(depth, joints, *params(shift=(4 / S, -6 / S, 0.0)))  # 2 columns left, 3 rows down
    rows, cols = torch.nonzero(out[0, 0] < 1, as_tuple=True)
    assert (cols.item(), rows.item()) == (8, 15)
    assert torch.allclose(new[0, 0, :2], torch.tensor(pixel_to_norm(8, 15)), atol=1e-6)
    everywhere = torch.zeros(1, 1, S, S)  # no background at all: what comes from outside must be +1
    out, _ = transform(everywhere, joints, *params(shift=(1.0, 0.0, 0.0)))
    assert (out[..., S // 2:] == 1).all() and (out[..., : S // 2] == 0).all()


def test_scale_zooms_pixels_and_divides_joints_and_depth():
    depth, joints = one_pixel(col=22, row=9, value=-0.6, size=2)
    out, new = transform(depth, joints, *params(scale=2.0))
    assert torch.allclose(new, joints / 2)
    assert torch.allclose(out[out < 1], torch.tensor(-0.3))
    assert torch.allclose(foreground_centroid(out[0]), new[0, 0, :2], atol=1 / S)


@pytest.mark.parametrize("seed", range(5))
def test_random_transforms_keep_the_joint_on_its_blob(seed):
    depth, joints = one_pixel(col=19, row=13, value=0.0, size=1)
    g = torch.Generator().manual_seed(seed)
    angle, _, shift = sample_params(1, AugmentConfig(translate_mm=20.0), 125.0, g)
    scale = torch.ones(1)  # keep the 3x3 block intact under nearest sampling
    out, new = transform(depth, joints, angle, scale, shift)
    assert torch.allclose(foreground_centroid(out[0]), new[0, 0, :2], atol=1.5 / S)
    assert torch.allclose(out[out < 1], -shift[0, 2].expand((out < 1).sum()), atol=1e-6)


def test_same_seed_same_output_and_p_zero_is_the_identity():
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(8, 1, S, S, generator=g) * 2 - 1
    joints = torch.rand(8, 21, 3, generator=g) - 0.5
    cfg = AugmentConfig()
    a = augment_batch(depth, joints, cfg, 125.0, torch.Generator().manual_seed(3))
    b = augment_batch(depth, joints, cfg, 125.0, torch.Generator().manual_seed(3))
    c = augment_batch(depth, joints, cfg, 125.0, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert a[0].min() >= -1 and a[0].max() <= 1
    same = augment_batch(depth, joints, AugmentConfig(p=0.0), 125.0, torch.Generator().manual_seed(3))
    assert torch.equal(same[0], depth) and torch.equal(same[1], joints)


def test_parameters_follow_the_config():
    angle, scale, shift = sample_params(4000, AugmentConfig(rotation_deg=30, scale=0.1, translate_mm=5), 125.0,
                                        torch.Generator().manual_seed(0))
    assert angle.abs().max() <= math.radians(30) and angle.abs().max() > math.radians(29)
    assert scale.min() >= 0.7 - 1e-6 and scale.max() <= 1.3 + 1e-6 and abs(scale.std() - 0.1) < 0.01
    assert abs(shift.std() * 125.0 - 5) < 0.3


@pytest.mark.parametrize("key, value", [("rotation_deg", 200), ("scale", 0.5), ("translate_mm", -1), ("p", 1.5)])
def test_config_refuses_impossible_values_naming_them(key, value):
    with pytest.raises(ConfigError, match=f"augment.{key}"):
        AugmentConfig(**{key: value})


def sequence_batch(seed: int = 0, half_cube: float = 100.0) -> dict:
    """A collated batch of 2 sequences of 3 frames: one foreground block per crop, joints at its centre."""
    g = torch.Generator().manual_seed(seed)
    depth = torch.ones(2, 3, 1, S, S)
    depth[..., 12:17, 12:17] = -0.2  # a 5 x 5 block round crop pixel (14, 14)
    x, y = pixel_to_norm(14, 14)
    joints = torch.tensor([x, y, -0.2]).expand(2, 3, 21, 3).clone()
    centre = torch.rand(2, 3, 3, generator=g) * 100 + torch.tensor([0.0, 0.0, 400.0])
    return {"depth": depth, "joints": joints, "centre": centre, "joints_mm": joints * half_cube + centre[:, :, None],
            "mask": torch.ones(2, 3, dtype=torch.bool), "label": torch.tensor([0, 1])}


def test_centre_jitter_moves_the_crop_and_keeps_the_world_joints():
    """Each frame's centre moves by its own shift; the joints in the world (normalised joints times the
    half cube, plus the centre) stay where they were; the foreground moves against the centre's shift."""
    half_cube = 100.0
    batch = sequence_batch(half_cube=half_cube)
    out = jitter_centres(batch, 10.0, half_cube, torch.Generator().manual_seed(1))
    moved = out["centre"] - batch["centre"]  # (2, 3, 3) mm
    assert moved.abs().min() > 0 and len({tuple(m.tolist()) for m in moved.reshape(-1, 3)}) == 6
    world = out["joints"] * half_cube + out["centre"][:, :, None]
    assert torch.allclose(world, batch["joints_mm"], atol=1e-3)
    for b in range(2):
        for t in range(3):
            centroid = foreground_centroid(out["depth"][b, t])  # where the block is now, normalised
            expected = torch.tensor(pixel_to_norm(14, 14)) - moved[b, t, :2] / half_cube
            assert torch.allclose(centroid, expected, atol=2.5 / S)  # within nearest-neighbour rounding
            fg = out["depth"][b, t] < 1
            assert torch.allclose(out["depth"][b, t][fg], torch.tensor(-0.2) - moved[b, t, 2] / half_cube, atol=1e-5)
    assert out["label"] is batch["label"] and out["mask"] is batch["mask"]


def test_centre_jitter_is_seeded_and_scales_with_its_std():
    batch = sequence_batch()
    a, b = (jitter_centres(batch, 10.0, 100.0, torch.Generator().manual_seed(3)) for _ in range(2))
    c = jitter_centres(batch, 10.0, 100.0, torch.Generator().manual_seed(4))
    assert torch.equal(a["centre"], b["centre"]) and torch.equal(a["depth"], b["depth"])
    assert not torch.equal(a["centre"], c["centre"])
    wide = jitter_centres(batch, 30.0, 100.0, torch.Generator().manual_seed(3))
    assert torch.allclose(wide["centre"] - batch["centre"], 3 * (a["centre"] - batch["centre"]), atol=1e-4)
