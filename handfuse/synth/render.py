"""A small ray-casting z-buffer renderer for solid primitives, and a depth-sensor model.

Primitives are capsules (bones, forearm, sticks), capped cylinders (bottles,
cans), oriented boxes (sponges, phones, the palm) and one infinite plane (the
table).  Each is intersected analytically with the camera rays inside its
projected bounding box only, so a 640 x 480 frame of ~50 primitives takes a few
milliseconds.  The sensor model then turns the clean z-buffer into a
structured-light-like measurement: distance-dependent jitter, projector
shadows beside near edges, invalid pixels at grazing angles and on dark
patches, and millimetre quantisation (cf. Khoshelham & Elberink 2012 for the
quadratic noise model).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ..camera import FPHA_DEPTH, Intrinsics

# What a pixel shows (the id buffer): used for visibility bookkeeping, never written as data.
NOTHING, TABLE, CLUTTER, OBJECT, HAND, ARM = range(6)
LABEL_NAMES = ("nothing", "table", "clutter", "object", "hand", "arm")


@dataclass
class Scene:
    """Primitives in camera coordinates (mm); each carries a label from the constants above."""

    capsules: list[tuple[np.ndarray, np.ndarray, float, int]] = field(default_factory=list)  # (a, b, radius, label)
    cylinders: list[tuple[np.ndarray, np.ndarray, float, int]] = field(default_factory=list)  # (a, b, radius, label)
    boxes: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = field(default_factory=list)  # (centre, R, half, label)
    plane: tuple[np.ndarray, float] | None = None  # (unit normal n, offset d): points with n . p = d


class Renderer:
    """Casts rays for one camera; ``render(scene)`` -> (depth float mm with inf = no hit, label map)."""

    def __init__(self, intrinsics: Intrinsics = FPHA_DEPTH):
        self.K = intrinsics
        rx, ry = intrinsics.rays()
        d = np.stack([rx, ry, np.ones_like(rx)], axis=-1)
        norm = np.linalg.norm(d, axis=-1, keepdims=True)
        self.rd = (d / norm).astype(np.float32)  # (H, W, 3) unit ray directions
        self.rd_z = self.rd[..., 2]  # depth = t * rd_z

    def _bbox(self, centre: np.ndarray, radius: float):
        """Pixel slices covering a bounding sphere, or None if it lies behind the camera/out of view."""
        K = self.K
        cx, cy, cz = centre
        zn, zf = cz - radius, cz + radius
        if zf <= 1.0:
            return None
        if zn <= 1.0:
            return slice(0, K.height), slice(0, K.width)
        xs = [(cx - radius) / zn, (cx - radius) / zf, (cx + radius) / zn, (cx + radius) / zf]
        ys = [(cy - radius) / zn, (cy - radius) / zf, (cy + radius) / zn, (cy + radius) / zf]
        u0 = int(np.floor(K.u0 + K.fx * min(xs))) - 1
        u1 = int(np.ceil(K.u0 + K.fx * max(xs))) + 2
        v0 = int(np.floor(K.v0 + K.fy * min(ys))) - 1
        v1 = int(np.ceil(K.v0 + K.fy * max(ys))) + 2
        u0, v0, u1, v1 = max(u0, 0), max(v0, 0), min(u1, K.width), min(v1, K.height)
        if u0 >= u1 or v0 >= v1:
            return None
        return slice(v0, v1), slice(u0, u1)

    def render(self, scene: Scene, background: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Z-buffer (float32 mm, inf = no hit) and label map of a scene, drawn over an optional
        pre-rendered ``background`` (e.g. the static table and clutter of a sequence)."""
        H, W = self.K.height, self.K.width
        if background is not None:
            zbuf, ids = background[0].copy(), background[1].copy()
        else:
            zbuf = np.full((H, W), np.inf, dtype=np.float32)
            ids = np.zeros((H, W), dtype=np.uint8)
        if scene.plane is not None:
            n, d = scene.plane
            denom = self.rd @ n.astype(np.float32)
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.where(denom > 1e-6, d / denom, np.inf)
            _splat(zbuf, ids, (slice(None), slice(None)), t * self.rd_z, TABLE)
        for a, b, r, label in scene.capsules:
            box = self._bbox((a + b) / 2, np.linalg.norm(b - a) / 2 + r)
            if box is not None:
                _splat(zbuf, ids, box, _capsule(self.rd[box], a, b, r) * self.rd_z[box], label)
        for a, b, r, label in scene.cylinders:
            box = self._bbox((a + b) / 2, np.hypot(np.linalg.norm(b - a) / 2, r))
            if box is not None:
                _splat(zbuf, ids, box, _cylinder(self.rd[box], a, b, r) * self.rd_z[box], label)
        for c, R, half, label in scene.boxes:
            box = self._bbox(c, float(np.linalg.norm(half)))
            if box is not None:
                _splat(zbuf, ids, box, _box(self.rd[box], c, R, half) * self.rd_z[box], label)
        return zbuf, ids


def _splat(zbuf, ids, box, z, label):
    region = zbuf[box]
    nearer = z < region
    region[nearer] = z[nearer]
    ids[box][nearer] = label


def _capsule(rd: np.ndarray, a: np.ndarray, b: np.ndarray, r: float) -> np.ndarray:
    """Ray (from the origin) / capsule distance, inf where missed.  rd: (..., 3) unit."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    ba, oa = b - a, -a
    baba, baoa, oaoa = ba @ ba, ba @ oa, oa @ oa
    bard, rdoa = rd @ ba, rd @ oa
    k2 = baba - bard * bard
    k1 = baba * rdoa - baoa * bard
    k0 = baba * oaoa - baoa * baoa - r * r * baba
    h = k1 * k1 - k2 * k0
    t = np.full(rd.shape[:-1], np.inf, dtype=np.float32)
    hit = h >= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        tb = (-k1 - np.sqrt(np.maximum(h, 0))) / k2
        y = baoa + tb * bard
        body = hit & (y > 0) & (y < baba) & (k2 > 1e-12)
        t[body] = tb[body]
        # the end caps are spheres at a (y <= 0) or b (y >= baba)
        for end, sel in ((a, hit & ~body & (y <= baba / 2)), (b, hit & ~body & (y > baba / 2))):
            oc = -end
            bb = rd[sel] @ oc
            hh = bb * bb - (oc @ oc - r * r)
            ts = -bb - np.sqrt(np.maximum(hh, 0))
            t[sel] = np.where((hh >= 0) & (ts > 0), ts, np.inf)
    return t


def _cylinder(rd: np.ndarray, a: np.ndarray, b: np.ndarray, r: float) -> np.ndarray:
    """Ray / capped cylinder distance, inf where missed."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    ba, oc = b - a, -a
    baba, baoc = ba @ ba, ba @ oc
    bard, rdoc = rd @ ba, rd @ oc
    k2 = baba - bard * bard
    k1 = baba * rdoc - baoc * bard
    k0 = baba * (oc @ oc) - baoc * baoc - r * r * baba
    h = k1 * k1 - k2 * k0
    t = np.full(rd.shape[:-1], np.inf, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        hs = np.sqrt(np.maximum(h, 0))
        tb = (-k1 - hs) / k2
        y = baoc + tb * bard
        body = (h >= 0) & (y > 0) & (y < baba) & (tb > 0)
        t[body] = tb[body]
        tc = (np.where(y < 0, 0.0, baba) - baoc) / bard
        cap = (h >= 0) & ~body & (np.abs(k1 + k2 * tc) < hs) & (tc > 0)
        t[cap] = tc[cap]
    return t


def _box(rd: np.ndarray, c: np.ndarray, R: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Ray / oriented box distance (slab method), inf where missed.  R: box-to-camera rotation."""
    o = (R.T @ (-c)).astype(np.float32)  # ray origin in the box frame
    d = rd @ R.astype(np.float32)  # (..., 3) directions in the box frame
    half = half.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1 = (-half - o) * inv
        t2 = (half - o) * inv
    tn = np.nanmax(np.minimum(t1, t2), axis=-1)
    tf = np.nanmin(np.maximum(t1, t2), axis=-1)
    return np.where((tn <= tf) & (tf > 0), np.maximum(tn, 0), np.inf)


# ----------------------------------------------------------------------------- sensor


@dataclass(frozen=True)
class SensorModel:
    """Structured-light-like artefacts; each knob scales one process (0 switches it off)."""

    jitter: float = 1.0  # depth noise std = jitter * 2.85e-6 * z^2 mm (0.45 mm at 400, 2.9 mm at 1000)
    dropout: float = 1.0  # scales the shadow, grazing-angle, dark-patch and speckle processes
    max_range: float = 1100.0  # no measurement beyond (mm)
    baseline_mm: float = 28.0  # projector-camera baseline: projector shadows beside near edges

    def measure(self, zbuf: np.ndarray, rng: np.random.Generator, K: Intrinsics = FPHA_DEPTH) -> np.ndarray:
        """Clean z-buffer (inf = no surface) -> uint16 depth in mm with 0 = invalid.

        Depth is measured as disparity (f * b / z) with Gaussian jitter and quantised to
        1/8 pixel, as structured-light sensors do: the depth step grows with z^2
        (about 1.2 mm at 300 mm, 9 mm at 800 mm) and so does the jitter."""
        z = np.where(zbuf < self.max_range, zbuf, np.float32(0.0))
        valid = z > 0
        if self.dropout > 0:
            valid &= ~self._shadows(z, K)
            valid &= ~self._grazing(z, K, rng)
            valid &= ~self._dark_patches(z.shape, rng)
            valid &= rng.random(z.shape, dtype=np.float32) >= 0.03 * self.dropout  # speckle
        fb = np.float32(K.fx * self.baseline_mm)
        disp = fb / np.maximum(z, 1.0)
        if self.jitter > 0:  # spatially correlated: the sensor matches windows of several pixels
            coarse = rng.standard_normal((z.shape[0] // 4, z.shape[1] // 4), dtype=np.float32)
            disp += cv2.resize(coarse, (z.shape[1], z.shape[0]), interpolation=cv2.INTER_LINEAR) * np.float32(0.08 * self.jitter)
        disp = np.maximum(np.rint(disp * 8.0) / 8.0, 0.125)
        out = np.where(valid, np.rint(fb / disp), np.float32(0.0))
        return out.astype(np.uint16)  # fb / disp <= fb / 0.125 < 65535

    def _shadows(self, z: np.ndarray, K: Intrinsics) -> np.ndarray:
        """Pixels the projector (to the camera's left) cannot light: a nearer surface to their
        left has a disparity that reaches past them.  Disparity in pixels = f * b / z."""
        disp = np.where(z > 0, np.float32(K.fx * self.baseline_mm * self.dropout) / np.maximum(z, 1.0), 0.0)
        u = np.arange(z.shape[1], dtype=np.float32)
        reach = np.maximum.accumulate(disp + u, axis=1)  # furthest column each row's left part shadows
        return (z > 0) & (reach > disp + u + 1.0)

    def _grazing(self, z: np.ndarray, K: Intrinsics, rng: np.random.Generator) -> np.ndarray:
        """Surfaces seen at grazing angles return no signal (more often the steeper they are)."""
        zs = cv2.GaussianBlur(z, (5, 5), 0)
        gx = cv2.Sobel(zs, cv2.CV_32F, 1, 0, ksize=3) / 8.0
        gy = cv2.Sobel(zs, cv2.CV_32F, 0, 1, ksize=3) / 8.0
        slope2 = (gx * gx + gy * gy) * np.float32(K.fx**2) / np.maximum(z, 1.0) ** 2  # tan^2 of the surface tilt
        cos_view = 1.0 / np.sqrt(1.0 + slope2)
        strength = np.float32(min(self.dropout, 1.0))
        p_drop = np.clip((0.35 - cos_view) * 4.0, 0.0, 1.0) * strength
        edges = np.abs(cv2.Laplacian(zs, cv2.CV_32F)) > 25.0  # flying pixels at depth discontinuities
        p_drop = np.where(edges, np.maximum(p_drop, 0.7 * strength), p_drop)
        return rng.random(z.shape, dtype=np.float32) < p_drop

    def _dark_patches(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """Low-frequency blobs of absorbing or specular material."""
        coarse = rng.standard_normal((shape[0] // 24, shape[1] // 24)).astype(np.float32)
        field_ = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
        return field_ > 2.0 - 0.6 * self.dropout
