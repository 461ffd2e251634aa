"""A small ray-casting z-buffer renderer for solid primitives, and a depth-sensor model.

Primitives are capsules (bones, forearm, sticks), capped cylinders (bottles,
cans), oriented boxes (sponges, phones, the palm, scene v2's table) and infinite
planes (scene v1's table, scene v2's wall).  Each is intersected analytically
with the camera rays inside its projected bounding box only, so a primitive costs only the pixels it may cover,
not the whole 640 x 480 frame.  The sensor model then turns the clean z-buffer into a
structured-light-like measurement: distance-dependent jitter, projector
shadows beside near edges, invalid pixels at grazing angles and on dark
patches, and millimetre quantisation (cf. Khoshelham & Elberink 2012 for the
quadratic noise model).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..camera import FPHA_DEPTH, Intrinsics

# What a pixel shows (the id buffer): used for visibility bookkeeping, never written as data.
# The last three occur in scene v2 only: clutter of absorbing (dark) material, the other,
# unannotated hand and its forearm, and the wall behind the table.
NOTHING, TABLE, CLUTTER, OBJECT, HAND, ARM, DARK, OTHER_HAND, WALL = range(9)
LABEL_NAMES = ("nothing", "table", "clutter", "object", "hand", "arm", "dark clutter", "other hand", "wall")


@dataclass
class Scene:
    """Primitives in camera coordinates (mm); each carries a label from the constants above."""

    capsules: list[tuple[np.ndarray, np.ndarray, float, int]] = field(default_factory=list)  # (a, b, radius, label)
    cylinders: list[tuple[np.ndarray, np.ndarray, float, int]] = field(default_factory=list)  # (a, b, radius, label)
    boxes: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = field(default_factory=list)  # (centre, R, half, label)
    plane: tuple[np.ndarray, float] | None = None  # (unit normal n, offset d): points with n . p = d
    walls: list[tuple[np.ndarray, float, int]] = field(default_factory=list)  # more planes: (n, d, label)

    def turned(self, rotation: np.ndarray, shift: np.ndarray | None = None) -> "Scene":
        """The same scene seen by a camera turned about its centre by ``rotation`` (3, 3), which maps
        this camera's coordinates to the new one's (about the optical axis: the camera rolled), and
        then, with ``shift`` (3,) mm, moved: a point p of this camera is ``rotation @ p + shift`` in the
        new one (a shift of (0, 0, -60): the camera 60 mm nearer the scene)."""
        def turn(p):
            return rotation @ p if shift is None else rotation @ p + shift

        def plane(n, d):  # n . p = d becomes n' . p' = d + n' . shift, with n' = rotation @ n
            n = rotation @ n
            return n, d if shift is None else d + float(n @ shift)
        return Scene([(turn(a), turn(b), r, label) for a, b, r, label in self.capsules],
                     [(turn(a), turn(b), r, label) for a, b, r, label in self.cylinders],
                     [(turn(c), rotation @ axes, half, label) for c, axes, half, label in self.boxes],
                     None if self.plane is None else plane(*self.plane),
                     [(*plane(n, d), label) for n, d, label in self.walls])


class Renderer:
    """Casts rays for one camera; ``render(scene)`` -> (depth float mm with inf = no hit, label map).

    Each primitive is intersected inside its projected bounding box.  The dot products of the
    rays with the primitive's vectors are taken over that whole box with one BLAS call per box
    row, as they always were: BLAS rounds the last few entries of a call differently, so the
    box, not just the pixel, fixes the result, and the written depth depends on it.  Everything
    after them is element-wise, so it runs only on the pixels whose rays can meet the
    primitive (``_capsules``, ``_cylinder`` and ``_box`` return those), and for all capsules at
    once: the very same numbers, with far fewer NumPy calls.
    """

    def __init__(self, intrinsics: Intrinsics = FPHA_DEPTH):
        self.K = intrinsics
        rx, ry = intrinsics.rays()
        d = np.stack([rx, ry, np.ones_like(rx)], axis=-1)
        norm = np.linalg.norm(d, axis=-1, keepdims=True)
        self.rd = (d / norm).astype(np.float32)  # (H, W, 3) unit ray directions
        self.rd_z = self.rd[..., 2]  # depth = t * rd_z
        self._rd_flat = self.rd.reshape(-1, 3)  # (H * W, 3) view, to gather rays by pixel index
        self._rd_z_flat = self.rd_z.ravel()  # a contiguous copy, likewise

    def _bbox(self, centre: np.ndarray, radius: float):
        """Pixel slices covering a bounding sphere, or None if it lies behind the camera/out of view."""
        K = self.K
        (cx, cy, cz), radius = centre.tolist(), float(radius)  # the same doubles, cheaper arithmetic
        zn, zf = cz - radius, cz + radius
        if zf <= 1.0:
            return None
        if zn <= 1.0:
            return slice(0, K.height), slice(0, K.width)
        xs = [(cx - radius) / zn, (cx - radius) / zf, (cx + radius) / zn, (cx + radius) / zf]
        ys = [(cy - radius) / zn, (cy - radius) / zf, (cy + radius) / zn, (cy + radius) / zf]
        u0 = math.floor(K.u0 + K.fx * min(xs)) - 1
        u1 = math.ceil(K.u0 + K.fx * max(xs)) + 2
        v0 = math.floor(K.v0 + K.fy * min(ys)) - 1
        v1 = math.ceil(K.v0 + K.fy * max(ys)) + 2
        u0, v0, u1, v1 = max(u0, 0), max(v0, 0), min(u1, K.width), min(v1, K.height)
        if u0 >= u1 or v0 >= v1:
            return None
        return slice(v0, v1), slice(u0, u1)

    def render(self, scene: Scene, background: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Z-buffer (float32 mm, inf = no hit) and label map of a scene, drawn over an optional
        pre-rendered ``background`` (e.g. the static table and clutter of a sequence)."""
        zbuf, ids, _ = self.render_over(scene, background)
        return zbuf, ids

    def render_over(self, scene: Scene, background: tuple[np.ndarray, np.ndarray] | None = None
                    ) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice] | None]:
        """``render``, plus the pixel rectangle (row and column slices) outside which the result
        equals the ``background`` (None: the scene changed no pixel)."""
        H, W = self.K.height, self.K.width
        if background is not None:
            zbuf, ids = background[0].copy(), background[1].copy()
        else:
            zbuf = np.full((H, W), np.inf, dtype=np.float32)
            ids = np.zeros((H, W), dtype=np.uint8)
        zflat, idflat = zbuf.reshape(-1), ids.reshape(-1)  # views: both are fresh contiguous arrays
        with np.errstate(divide="ignore", invalid="ignore"):
            if scene.plane is not None:
                self._plane(zbuf, ids, *scene.plane)
            for n, d, label in scene.walls:
                self._plane(zbuf, ids, n, d, label)
            for (a, b, r, label), hits in zip(scene.capsules, self._capsules(scene.capsules)):
                if hits is not None:
                    self._splat(zflat, idflat, hits[0], hits[1] * np.take(self._rd_z_flat, hits[0]), label)
            for a, b, r, label in scene.cylinders:
                box = self._bbox((a + b) / 2, np.hypot(np.linalg.norm(b - a) / 2, r))
                if box is not None:
                    self._draw(zflat, idflat, box, _cylinder(self.rd[box], a, b, r), label)
            for c, R, half, label in scene.boxes:
                box = self._bbox(c, float(np.linalg.norm(half)))
                if box is not None:
                    self._draw(zflat, idflat, box, _box(self.rd[box], c, R, half), label)
        return zbuf, ids, _extent(zbuf != (np.inf if background is None else background[0]))

    def _plane(self, zbuf: np.ndarray, ids: np.ndarray, n: np.ndarray, d: float, label: int = TABLE) -> None:
        """Depth-test the plane n . p = d over the whole frame."""
        denom = self.rd @ n.astype(np.float32)
        z = np.where(denom > 1e-6, d / denom, np.inf) * self.rd_z
        nearer = z < zbuf
        zbuf[nearer] = z[nearer]
        ids[nearer] = label

    def _capsules(self, capsules: list) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Ray / capsule distances: for each capsule, (frame pixel indices that may hit, t with inf
        where they miss after all), or None when it is out of view.

        The capsules whose scalars have the same types are solved together: a NumPy float64
        radius makes the quadratic float64 where a Python float keeps it float32, and batching
        only like with like gives every element the arithmetic it would get alone."""
        out: list = [None] * len(capsules)
        batches: dict = {}
        for i, (a, b, r, _) in enumerate(capsules):
            box = self._bbox((a + b) / 2, np.linalg.norm(b - a) / 2 + r)
            if box is not None:
                terms = _CapsuleTerms.of(a, b, r)
                batches.setdefault((terms.k0.dtype, terms.hc[0].dtype), []).append((i, box, terms))
        for batch in batches.values():
            for (i, _, _), hits in zip(batch, self._capsule_batch(batch)):
                out[i] = hits
        return out

    def _capsule_batch(self, batch: list[tuple[int, tuple[slice, slice], _CapsuleTerms]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``_capsules`` for capsules with like scalar types: the pixels of all their boxes in one
        array, in capsule order and each box in row order."""
        n = len(batch)
        boxes, terms = [box for _, box, _ in batch], [c for _, _, c in batch]
        size = np.array([(rows.stop - rows.start) * (cols.stop - cols.start) for rows, cols in boxes])
        start = np.zeros(n + 1, dtype=np.intp)
        np.cumsum(size, out=start[1:])
        bard, rdoa = np.empty(start[-1], dtype=np.float32), np.empty(start[-1], dtype=np.float32)
        for box, c, s, e in zip(boxes, terms, start[:-1], start[1:]):
            rd = self.rd[box]
            np.matmul(rd, c.ba, out=bard[s:e].reshape(rd.shape[:2]))  # one BLAS call per box row, as ever
            np.matmul(rd, c.oa, out=rdoa[s:e].reshape(rd.shape[:2]))
        baba, baoa = _per_pixel([c.baba for c in terms], size), _per_pixel([c.baoa for c in terms], size)
        k2 = baba - bard * bard
        k1 = baba * rdoa - baoa * bard
        h = k1 * k1 - k2 * _per_pixel([c.k0 for c in terms], size)
        hit = np.flatnonzero(h >= 0)  # rays that meet the infinite cylinder around the axis
        bard, k1, k2, h = (np.take(x, hit) for x in (bard, k1, k2, h))
        if n > 1:
            baba, baoa = np.take(baba, hit), np.take(baoa, hit)
        bounds = np.searchsorted(hit, start)  # each capsule's hits
        pix = self._frame_pixels(boxes, start, hit, bounds)
        t = np.full(hit.shape, np.inf, dtype=np.float32)
        tb = (-k1 - np.sqrt(np.maximum(h, 0))) / k2
        y = baoa + tb * bard
        body = (y > 0) & (y < baba) & (k2 > 1e-12)
        t[body] = tb[body]
        # the end caps are spheres at a (y <= baba / 2) or b (y > baba / 2)
        half = baba / 2
        at_b = ~body & (y > half)
        cap = np.flatnonzero((~body & (y <= half)) | at_b)
        capsule = np.searchsorted(start, hit[cap], side="right") - 1
        cap, t_end = self._capsule_ends(terms, cap, 2 * capsule + at_b[cap], pix)
        t[cap] = t_end
        return [(pix[s:e], t[s:e]) for s, e in zip(bounds[:-1], bounds[1:])]

    def _frame_pixels(self, boxes: list[tuple[slice, slice]], start: np.ndarray, hit: np.ndarray, bounds: np.ndarray) -> np.ndarray:
        """Frame (flat) indices of the batch pixels ``hit``; box i holds batch pixels start[i]:start[i+1]
        and hits bounds[i]:bounds[i+1]."""
        pix = np.empty(hit.shape, dtype=np.intp)
        for (rows, cols), s, b0, b1 in zip(boxes, start, bounds, bounds[1:]):
            r, c = np.divmod(hit[b0:b1] - s, cols.stop - cols.start)
            pix[b0:b1] = (r + rows.start) * self.K.width + (c + cols.start)
        return pix

    def _capsule_ends(self, terms: list[_CapsuleTerms], cap: np.ndarray, end: np.ndarray, pix: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Distances to the end spheres for the hits ``cap``, ``end`` = 2 * capsule (+ 1 for end b):
        (the hits reordered, their t).  Each end's rays go to BLAS in one call, in row order, as
        ``rd[selected] @ oc`` did, since the call's length decides how its last entries round."""
        order = np.argsort(end, kind="stable")
        cap, end = cap[order], end[order]
        count = np.bincount(end, minlength=2 * len(terms))
        rays = np.take(self._rd_flat, pix[cap], axis=0)  # (rd[mask] does the same, more slowly)
        bb = np.empty(cap.shape, dtype=np.float32)
        oc = [oc for c in terms for oc in c.oc]
        s = 0
        for g in np.flatnonzero(count):
            np.matmul(rays[s:s + count[g]], oc[g], out=bb[s:s + count[g]])
            s += count[g]
        hh = bb * bb - np.repeat(np.array([hc for c in terms for hc in c.hc]), count)
        ts = -bb - np.sqrt(np.maximum(hh, 0))
        return cap, np.where((hh >= 0) & (ts > 0), ts, np.inf)

    def _draw(self, zflat, idflat, box, hits: tuple[np.ndarray, np.ndarray], label: int) -> None:
        """Depth-test the distances ``hits`` = (flat indices into the box, t) of one primitive into the buffers."""
        local, t = hits
        rows, cols = np.divmod(local, box[1].stop - box[1].start)
        pix = (rows + box[0].start) * self.K.width + (cols + box[1].start)
        self._splat(zflat, idflat, pix, t * np.take(self._rd_z_flat, pix), label)

    @staticmethod
    def _splat(zflat, idflat, pix, z, label) -> None:
        nearer = z < np.take(zflat, pix)
        pix = pix[nearer]
        zflat[pix] = z[nearer]
        idflat[pix] = label


@dataclass(frozen=True)
class _CapsuleTerms:
    """A capsule's scalars, computed exactly as a single capsule's ray test always computed them."""

    ba: np.ndarray  # float32 (3,): b - a
    oa: np.ndarray  # float32 (3,): -a
    baba: np.float32
    baoa: np.float32
    k0: np.floating  # float32 or float64, after the radius's type
    oc: tuple[np.ndarray, np.ndarray]  # -a and -b: the end spheres' centres seen from the ray
    hc: tuple[np.floating, np.floating]  # |oc|^2 - r^2 of each end sphere

    @classmethod
    def of(cls, a: np.ndarray, b: np.ndarray, r: float) -> "_CapsuleTerms":
        a, b = a.astype(np.float32), b.astype(np.float32)
        ba, oa = b - a, -a
        baba, baoa, oaoa = ba @ ba, ba @ oa, oa @ oa
        k0 = baba * oaoa - baoa * baoa - r * r * baba
        oc = (-a, -b)
        return cls(ba, oa, baba, baoa, k0, oc, tuple(c @ c - r * r for c in oc))


def _extent(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The smallest (row, column) slices holding the True pixels of ``mask`` (None if there are none)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask[rows[0]:rows[-1] + 1].any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _per_pixel(values: list, size: np.ndarray) -> np.ndarray:
    """Per-capsule scalars spread over the capsules' box pixels (one capsule: a (1,) array that broadcasts)."""
    values = np.array(values)  # keeps the scalars' type: float32 or float64
    return values if len(values) == 1 else np.repeat(values, size)


# The intersections below take an (h, w, 3) box of unit rays from the origin and return
# (flat indices into the box, float32 distances t): the only pixels that may hit, with inf
# where they miss after all; every other pixel of the box misses.


def _cylinder(rd: np.ndarray, a: np.ndarray, b: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    """Ray / capped cylinder distances."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    ba, oc = b - a, -a
    baba, baoc = ba @ ba, ba @ oc
    bard, rdoc = rd @ ba, rd @ oc
    k2 = baba - bard * bard
    k1 = baba * rdoc - baoc * bard
    k0 = baba * (oc @ oc) - baoc * baoc - r * r * baba
    h = k1 * k1 - k2 * k0
    local = np.flatnonzero(h >= 0)  # body and caps both need the infinite cylinder hit
    bard, k1, k2, h = (x.reshape(-1)[local] for x in (bard, k1, k2, h))
    t = np.full(local.shape, np.inf, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        hs = np.sqrt(np.maximum(h, 0))
        tb = (-k1 - hs) / k2
        y = baoc + tb * bard
        body = (y > 0) & (y < baba) & (tb > 0)
        t[body] = tb[body]
        tc = (np.where(y < 0, 0.0, baba) - baoc) / bard
        cap = ~body & (np.abs(k1 + k2 * tc) < hs) & (tc > 0)
        t[cap] = tc[cap]
    return local, t


def _box(rd: np.ndarray, c: np.ndarray, R: np.ndarray, half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray / oriented box distances (slab method).  R: box-to-camera rotation."""
    o = (R.T @ (-c)).astype(np.float32)  # ray origin in the box frame
    d = rd @ R.astype(np.float32)  # (h, w, 3) directions in the box frame
    half = half.astype(np.float32)
    near_face, far_face = -half - o, half - o
    tn = tf = None
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(3):  # one slab per axis; fmax / fmin skip NaN (0 * inf) as nanmax / nanmin do
            inv = 1.0 / d[..., k]
            t1, t2 = near_face[k] * inv, far_face[k] * inv
            lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
            tn, tf = (lo, hi) if tn is None else (np.fmax(tn, lo), np.fmin(tf, hi))
    local = np.flatnonzero((tn <= tf) & (tf > 0))
    return local, np.maximum(tn.reshape(-1)[local], 0)


# ----------------------------------------------------------------------------- sensor


@dataclass(frozen=True)
class Backdrop:
    """A sensor's per-pixel terms of a static z-buffer (a sequence's table and clutter): what
    every frame of the sequence shares outside the pixels its moving hand changes."""

    z: np.ndarray  # (H, W) float32 depth within range, 0 = no surface
    disp: np.ndarray  # (H, W) float32 disparity f * b / z before jitter and quantisation
    lit: np.ndarray  # (H, W) bool: a surface the projector reaches (z > 0, not in a shadow)
    ray: np.ndarray | None  # (H, W) float32 shadow disparity + column (None without dropout)
    reach: np.ndarray | None  # (H, W) float32 its running maximum along each row
    drop_at: np.ndarray | None  # flat indices of the pixels with a grazing-angle or edge dropout
    drop_p: np.ndarray | None  # their probability of it (a few per cent of the pixels: the rest have 0)


@dataclass(frozen=True)
class _Patch:
    """A frame's sensor terms near the pixels its moving part changed: windows and their values."""

    win: tuple[slice, slice]  # the changed rectangle
    disp: np.ndarray  # disparity there
    lit_win: tuple[slice, slice]  # the changed rectangle and the shadows it may cast to its right
    lit: np.ndarray
    p_win: tuple[slice, slice] | None  # the changed rectangle and 3 pixels around it
    p_drop: np.ndarray | None


@dataclass(frozen=True)
class SensorModel:
    """Structured-light-like artefacts; each knob scales one process (0 switches it off).

    ``measure(zbuf, rng)`` works on the whole frame.  A sequence renders the same static
    background under a moving hand, so ``measure(zbuf, rng, backdrop=self.backdrop(background),
    changed=rect)`` reuses the background's terms and recomputes them only near ``rect``, the
    pixels where ``zbuf`` differs from it: every term is local (filters of radius 3, shadows
    that only reach rightwards along a row), so the result is bit for bit the same.
    """

    jitter: float = 1.0  # depth noise std = jitter * 2.85e-6 * z^2 mm (0.45 mm at 400, 2.9 mm at 1000)
    dropout: float = 1.0  # scales the shadow, grazing-angle, dark-patch and speckle processes
    max_range: float = 1100.0  # no measurement beyond (mm)
    baseline_mm: float = 28.0  # projector-camera baseline: projector shadows beside near edges
    dark_patches: bool = True  # random blobs of invalid pixels (scene v2 models its holes instead)

    def measure(self, zbuf: np.ndarray, rng: np.random.Generator, K: Intrinsics = FPHA_DEPTH,
                backdrop: Backdrop | None = None, changed: tuple[slice, slice] | None = None) -> np.ndarray:
        """Clean z-buffer (inf = no surface) -> uint16 depth in mm with 0 = invalid.

        Depth is measured as disparity (f * b / z) with Gaussian jitter and quantised to
        1/8 pixel, as structured-light sensors do: the depth step grows with z^2
        (about 1.2 mm at 300 mm, 9 mm at 800 mm) and so does the jitter.  ``backdrop`` and
        ``changed``: see the class docstring (``changed`` None: ``zbuf`` is the backdrop's)."""
        if backdrop is None:
            backdrop, changed = self.backdrop(zbuf, K), None
        patch = None if changed is None else self._patch(backdrop, zbuf, changed, K)
        H, W = zbuf.shape
        if self.dropout > 0:  # the draws keep their order: grazing, dark patches, speckle, jitter
            grazing = rng.random(zbuf.shape, dtype=np.float32)  # dropouts at grazing angles and depth edges
            lost = np.zeros(zbuf.shape, dtype=bool)  # a draw in [0, 1) is never below a probability of 0
            lost.reshape(-1)[backdrop.drop_at] = grazing.reshape(-1)[backdrop.drop_at] < backdrop.drop_p
            if patch is not None:
                np.less(grazing[patch.p_win], patch.p_drop, out=lost[patch.p_win])
            if self.dark_patches:
                lost |= self._dark_patches(zbuf.shape, rng)
            ok = rng.random(zbuf.shape, dtype=np.float32) >= 0.03 * self.dropout  # no speckle
            valid = ok & backdrop.lit
            if patch is not None:
                valid[patch.lit_win] = ok[patch.lit_win] & patch.lit
            np.greater(valid, lost, out=valid)  # valid and not lost
        else:
            valid = backdrop.lit.copy()
            if patch is not None:
                valid[patch.lit_win] = patch.lit
        if self.jitter > 0:  # spatially correlated: the sensor matches windows of several pixels
            coarse = rng.standard_normal((H // 4, W // 4), dtype=np.float32)
            disp = cv2.resize(coarse, (W, H), interpolation=cv2.INTER_LINEAR)
            np.multiply(disp, np.float32(0.08 * self.jitter), out=disp)  # the jitter, in pixels
            near = None if patch is None else patch.disp + disp[patch.win]
            np.add(backdrop.disp, disp, out=disp)
            if patch is not None:
                disp[patch.win] = near
        else:
            disp = backdrop.disp.copy()
            if patch is not None:
                disp[patch.win] = patch.disp
        # quantise to 1/8 pixel (at least 1/8) and go back to depth, in place but step by step
        # as written: disp = max(rint(disp * 8) / 8, 0.125); depth = rint(fb / disp)
        np.multiply(disp, 8.0, out=disp)
        np.rint(disp, out=disp)
        np.divide(disp, 8.0, out=disp)
        np.maximum(disp, 0.125, out=disp)
        np.divide(np.float32(K.fx * self.baseline_mm), disp, out=disp)
        np.rint(disp, out=disp)
        out = disp.astype(np.uint16)  # valid pixels lie within range, so below 65535 mm
        return np.multiply(out, valid, out=out)  # 0 where invalid (faster than a masked copy)

    def backdrop(self, zbuf: np.ndarray, K: Intrinsics = FPHA_DEPTH) -> Backdrop:
        """The per-pixel terms of a whole z-buffer, for ``measure`` to reuse."""
        z = self._in_range(zbuf)
        disp = self._disparity(z, K)
        if self.dropout <= 0:
            return Backdrop(z, disp, z > 0, None, None, None, None)
        ray = self._shadow_ray(z, 0, K)
        reach = np.maximum.accumulate(ray, axis=1)  # furthest column each row's left part shadows
        p_drop = self._grazing(z, (slice(None), slice(None)), K).reshape(-1)
        drop_at = np.flatnonzero(p_drop > 0)
        return Backdrop(z, disp, self._lit(z, ray, reach), ray, reach, drop_at, p_drop[drop_at])

    def _patch(self, bd: Backdrop, zbuf: np.ndarray, changed: tuple[slice, slice], K: Intrinsics) -> _Patch:
        """The terms of ``zbuf`` that may differ from the backdrop's, near the ``changed`` rectangle."""
        H, W = zbuf.shape
        r0, r1, c0, c1 = changed[0].start, changed[0].stop, changed[1].start, changed[1].stop
        b0, b1 = max(r0 - 6, 0), min(r1 + 6, H)  # a full-width band: the filters' support around the change
        z = bd.z[b0:b1].copy()
        rows = slice(r0 - b0, r1 - b0)
        z[rows, c0:c1] = self._in_range(zbuf[r0:r1, c0:c1])
        win = slice(r0, r1), slice(c0, c1)
        disp = self._disparity(z[rows, c0:c1], K)
        if self.dropout <= 0:
            return _Patch(win, disp, win, z[rows, c0:c1] > 0, None, None)
        # shadows: a changed pixel can only shadow pixels to its right in its row.  The running
        # maximum restarts at c0 from the backdrop's value left of it; past c1 it is the larger of
        # the two rows' reach at c1 and the backdrop's rays, and since a ray at column c is >= c,
        # from column max(reach at c1) on it is the backdrop's again
        ray = self._shadow_ray(z[rows, c0:c1], c0, K)
        reach = np.maximum.accumulate(ray, axis=1)
        if c0 > 0:
            np.maximum(reach, bd.reach[r0:r1, c0 - 1:c0], out=reach)
        edge = np.maximum(reach[:, -1], bd.reach[r0:r1, c1 - 1])
        c2 = min(W, max(c1, math.ceil(float(edge.max())) + 1))
        if c2 > c1:
            more = np.maximum.accumulate(bd.ray[r0:r1, c1:c2], axis=1)
            np.maximum(more, reach[:, -1:], out=more)
            ray, reach = np.hstack([ray, bd.ray[r0:r1, c1:c2]]), np.hstack([reach, more])
        lit = self._lit(z[rows, c0:c2], ray, reach)
        # grazing angles and edges: filters of radius 2 + 1, so 3 pixels around the change.  They
        # run on the full-width band, whose rows match the whole frame's (their vectorised loops
        # split a row as for the whole frame); the band's rows within 3 of its ends are not used
        p0, p1, q0, q1 = max(r0 - 3, 0), min(r1 + 3, H), max(c0 - 3, 0), min(c1 + 3, W)
        p_drop = self._grazing(z, (slice(p0 - b0, p1 - b0), slice(q0, q1)), K)
        return _Patch(win, disp, (slice(r0, r1), slice(c0, c2)), lit, (slice(p0, p1), slice(q0, q1)), p_drop)

    def _in_range(self, zbuf: np.ndarray) -> np.ndarray:
        return np.where(zbuf < self.max_range, zbuf, np.float32(0.0))

    def _disparity(self, z: np.ndarray, K: Intrinsics) -> np.ndarray:
        return np.float32(K.fx * self.baseline_mm) / np.maximum(z, 1.0)

    def _shadow_ray(self, z: np.ndarray, col0: int, K: Intrinsics) -> np.ndarray:
        """Disparity (in pixels, f * b / z, 0 where no surface) plus the column, for columns col0... of z."""
        disp = np.where(z > 0, np.float32(K.fx * self.baseline_mm * self.dropout) / np.maximum(z, 1.0), 0.0)
        return disp + np.arange(col0, col0 + z.shape[1], dtype=np.float32)

    @staticmethod
    def _lit(z: np.ndarray, ray: np.ndarray, reach: np.ndarray) -> np.ndarray:
        """Surfaces the projector (to the camera's left) reaches: no nearer surface to their left has
        a disparity that reaches past them."""
        return (z > 0) & ~(reach > ray + 1.0)

    def _grazing(self, z: np.ndarray, window: tuple[slice, slice], K: Intrinsics) -> np.ndarray:
        """Dropout probability in ``window`` of the full-width rows ``z``: surfaces seen at grazing
        angles return no signal (more often the steeper they are), nor do depth edges."""
        zs = cv2.GaussianBlur(z, (5, 5), 0)
        gx = cv2.Sobel(zs, cv2.CV_32F, 1, 0, ksize=3)[window] / 8.0
        gy = cv2.Sobel(zs, cv2.CV_32F, 0, 1, ksize=3)[window] / 8.0
        slope2 = (gx * gx + gy * gy) * np.float32(K.fx**2) / np.maximum(z[window], 1.0) ** 2  # tan^2 of the surface tilt
        cos_view = 1.0 / np.sqrt(1.0 + slope2)
        strength = np.float32(min(self.dropout, 1.0))
        p_drop = np.clip((0.35 - cos_view) * 4.0, 0.0, 1.0) * strength
        edges = np.abs(cv2.Laplacian(zs, cv2.CV_32F)[window]) > 25.0  # flying pixels at depth discontinuities
        return np.where(edges, np.maximum(p_drop, 0.7 * strength), p_drop)

    def _dark_patches(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """Low-frequency blobs of absorbing or specular material."""
        coarse = rng.standard_normal((shape[0] // 24, shape[1] // 24)).astype(np.float32)
        field_ = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
        return field_ > 2.0 - 0.6 * self.dropout
