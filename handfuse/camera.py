"""The FPHA depth camera: intrinsics and the pinhole projection helpers.

Facts from the FPHA release (Garcia-Hernando et al. 2018): 640 x 480 depth in
millimetres, u = u0 + fx * x / z, v = v0 + fy * y / z, camera frame x right,
y down, z forward.  No extrinsic is needed for depth.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Intrinsics:
    fx: float = 475.065948
    fy: float = 475.065857
    u0: float = 315.944855
    v0: float = 245.287079
    width: int = 640
    height: int = 480

    def project(self, xyz: np.ndarray) -> np.ndarray:
        """(..., 3) camera-frame points in mm -> (..., 2) pixel coordinates (u, v)."""
        xyz = np.asarray(xyz, dtype=np.float64)
        z = xyz[..., 2]
        return np.stack([self.u0 + self.fx * xyz[..., 0] / z, self.v0 + self.fy * xyz[..., 1] / z], axis=-1)

    def backproject(self, uv: np.ndarray, z: np.ndarray) -> np.ndarray:
        """(..., 2) pixels and (...) depths in mm -> (..., 3) camera-frame points."""
        uv = np.asarray(uv, dtype=np.float64)
        z = np.asarray(z, dtype=np.float64)
        x = (uv[..., 0] - self.u0) * z / self.fx
        y = (uv[..., 1] - self.v0) * z / self.fy
        return np.stack([x, y, z], axis=-1)

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-pixel ray directions with z = 1: (H, W) arrays of x/z and y/z at pixel centres."""
        u = np.arange(self.width, dtype=np.float64)
        v = np.arange(self.height, dtype=np.float64)
        return np.meshgrid((u - self.u0) / self.fx, (v - self.v0) / self.fy)

    def depth_to_points(self, depth: np.ndarray, stride: int = 1) -> np.ndarray:
        """Valid pixels of an (H, W) depth map in mm -> (N, 3) camera-frame points."""
        d = np.asarray(depth)[::stride, ::stride].astype(np.float64)
        v, u = np.nonzero(d > 0)
        return self.backproject(np.stack([u * stride, v * stride], axis=-1), d[v, u])


FPHA_DEPTH = Intrinsics()
