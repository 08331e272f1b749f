"""The rest of the head around the face mask: skull cap, hair, fringe and locks, strand texture."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from facepgn import render
from facepgn.facemodel import FaceModel
from facepgn.synthetic.skin import face_skin

# Head and hair are laid out in the ICT face model's frame (cm; +x subject's left, +y up, +z towards
# the viewer) relative to the 68 landmarks' bounding-box centre, and scaled by their height, so a
# face model of other units gets the same proportions. Measured on the ICT mean face: brows at
# y = 5.9, the mesh ends at y = 12.4 (mid-forehead, where a scalp starts), z from -3 (the mesh's
# back edge) to 13 (nose tip); the forehead is at z = 10.8 (y = 6) to 8.0 (y = 12).
_ICT_REF = np.array([0.0, -0.656, 8.363])
_ICT_FACE_H = 13.822
_ICT_BROW_Y = 5.9


@dataclass(frozen=True)
class HeadFrame:
    """ICT-centimetre layout -> a face model's frame: ``point(p) = ref + (p - ICT_REF) * unit``."""

    ref: np.ndarray
    unit: float  # model units per ICT centimetre

    def point(self, p) -> np.ndarray:
        return self.ref + (np.asarray(p, np.float64) - _ICT_REF) * self.unit


def head_frame(model: FaceModel) -> HeadFrame:
    """The head layout of ``model`` from its mean shape's 68 landmarks."""
    lm = np.asarray(model.mean, np.float64)[np.asarray(model.landmark_ids)[model.landmark_mask]]
    if len(lm) < 3:
        return HeadFrame(np.zeros(3), 1.0)
    return HeadFrame((lm.max(0) + lm.min(0)) / 2, float(np.ptp(lm[:, 1])) / _ICT_FACE_H)


def _height_map(verts: np.ndarray, triangles: np.ndarray, frame: HeadFrame) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """z of the mesh's front surface at model-frame (x, y) (NaN off the mesh), from an orthographic
    z-buffer of the closed mesh seen from the front at 3 px per ICT cm."""
    k = 3.0 / frame.unit
    lo = verts[:, :2].min(0) - 1.0 / k
    hi = verts[:, :2].max(0) + 1.0 / k
    w, h = int(np.ceil((hi[0] - lo[0]) * k)) + 1, int(np.ceil((hi[1] - lo[1]) * k)) + 1
    img = np.stack([(verts[:, 0] - lo[0]) * k, (hi[1] - verts[:, 1]) * k, verts[:, 2]], 1)
    depth = render.rasterize(img, triangles, h, w, cull_backfaces=False).depth.astype(np.float64)
    depth[~np.isfinite(depth)] = np.nan

    def lookup(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        col = np.clip(np.round((np.asarray(x) - lo[0]) * k).astype(int), 0, w - 1)
        row = np.clip(np.round((hi[1] - np.asarray(y)) * k).astype(int), 0, h - 1)
        return depth[row, col]

    return lookup


def _grid_triangles(rows: int, cols: int, wrap: bool = False) -> np.ndarray:
    """Two triangles per cell of a rows x cols vertex grid (row-major); ``wrap`` joins the last
    column to the first."""
    tris = []
    last = cols if wrap else cols - 1
    for r in range(rows - 1):
        for c in range(last):
            a, b = r * cols + c, r * cols + (c + 1) % cols
            d, e = a + cols, b + cols
            tris += [(a, b, e), (a, e, d)]
    return np.asarray(tris, np.int64).reshape(-1, 3)


def _orient(verts: np.ndarray, tris: np.ndarray, outward_from: np.ndarray | None = None) -> np.ndarray:
    """Wind triangles to face the viewer (+z) or, with ``outward_from``, away from that point."""
    a, b, c = verts[tris[:, 0]], verts[tris[:, 1]], verts[tris[:, 2]]
    n = np.cross(b - a, c - a)
    facing = n[:, 2] if outward_from is None else np.einsum("tc,tc->t", n, (a + b + c) / 3 - outward_from)
    out = tris.copy()
    out[facing < 0] = out[facing < 0][:, [0, 2, 1]]
    return out


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((np.asarray(x, np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def hair_mesh(model: FaceModel, verts_model: np.ndarray, rng: np.random.Generator, colours: dict[str, np.ndarray],
              hair: bool = True, long_hair: bool = False, fringe: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rest of the head around the face mask, as ``render_face(extra=...)`` geometry (model
    frame): a skull-shaped cap (ellipsoid) that the face mesh hides except above and behind it,
    covered with hair (or bald skin), with optional long hair falling at the sides and back, a fringe
    over the forehead and strands over the sides of the face. The fringe and strands lie a few
    millimetres in front of the skin, so the z-buffer hides the landmarks under them."""
    frame = head_frame(model)
    u = frame.unit
    colour = colours["hair"] if hair else colours["skin"]
    c = frame.point([0.0, 5.0 + rng.normal(0, 0.3), -1.2 + rng.normal(0, 0.3)])
    r = np.array([8.3, 11.0, 10.3]) * (rng.uniform(0.98, 1.1, 3) if hair else rng.uniform(0.96, 1.0, 3)) * u
    cap = _skull_cap(frame, c, r, rng, hair, long_hair)
    rows, n_theta = cap.shape[:2]
    verts = [cap.reshape(-1, 3)]
    tris = [_orient(verts[0], _grid_triangles(rows, n_theta, wrap=True), outward_from=c)]
    count = len(verts[0])

    def z_cap(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        q = 1 - ((x - c[0]) / r[0]) ** 2 - ((y - c[1]) / r[1]) ** 2
        return c[2] + r[2] * np.sqrt(np.clip(q, 0, None))

    surface = None
    for xs, ys in _hair_sheets(rng, hair, long_hair, fringe):
        if surface is None:
            skin = face_skin(model)
            surface = _height_map(skin.close(verts_model), skin.triangles, frame)
        # ICT cm -> model frame, then onto the skin (or the cap where there is no skin) plus an offset.
        pts = frame.point(np.stack([xs, ys, np.zeros_like(xs)], -1).reshape(-1, 3))
        z = surface(pts[:, 0], pts[:, 1])
        z = np.where(np.isfinite(z), z, z_cap(pts[:, 0], pts[:, 1]))
        pts[:, 2] = np.maximum(z, z_cap(pts[:, 0], pts[:, 1])) + rng.uniform(0.5, 0.8) * u
        verts.append(pts)
        tris.append(_orient(pts, _grid_triangles(*xs.shape)) + count)
        count += len(pts)
    all_verts = np.concatenate(verts).astype(np.float64)
    shade = 1.0 + rng.normal(0, 0.06 if hair else 0.02, (len(all_verts), 1))
    albedo = np.clip(colour[None, :] * shade, 0, 1).astype(np.float32)
    return all_verts, np.concatenate(tris).astype(np.int32), albedo


def _skull_cap(frame: HeadFrame, c: np.ndarray, r: np.ndarray, rng: np.random.Generator, hair: bool,
               long_hair: bool) -> np.ndarray:
    """The cap's vertex grid (rows, columns, 3), model frame: an ellipsoid (centre ``c``, radii
    ``r``) from where it ends (above the temples, at the nape) to the crown, lumpy, with long hair
    continuing down at the sides and back (first rows)."""
    u = frame.unit
    # Where the cap ends: above the temples at the front and sides, at the nape behind.
    y_front = (rng.uniform(1.5, 4.0) if hair else 4.0)
    y_back = (rng.uniform(-5.0, -2.0) if hair else -3.0)
    n_theta, n_phi = 40, 12
    theta = np.linspace(-np.pi, np.pi, n_theta, endpoint=False)
    back = _smoothstep(np.abs(theta), np.radians(80), np.radians(135))
    y_cut = frame.ref[1] + (y_front + (y_back - y_front) * back - _ICT_REF[1]) * u
    phi_min = np.arcsin(np.clip((y_cut - c[1]) / r[1], -0.99, 0.99))
    t = np.linspace(0.0, 1.0, n_phi)[:, None]
    phi = phi_min[None, :] + t * (np.pi / 2 - phi_min[None, :])  # (rows, cols), last row the crown
    bumps = np.zeros_like(phi)
    for _ in range(3):  # lumpy volume, not a perfect ellipsoid
        bumps += rng.normal(0, 0.02 if hair else 0.008) * np.sin(rng.integers(1, 4) * theta[None, :] + rng.integers(1, 3) * phi + rng.uniform(0, 6.3))
    rad = 1.0 + bumps
    cap = np.stack([c[0] + r[0] * np.sin(theta)[None] * np.cos(phi) * rad,
                    c[1] + r[1] * np.sin(phi) * rad,
                    c[2] + r[2] * np.cos(theta)[None] * np.cos(phi) * rad], -1)
    if long_hair:
        # Long hair: each column at the sides and back continues down from the cut, widening a little.
        length = rng.uniform(6.0, 14.0) * u * _smoothstep(np.abs(theta), np.radians(70), np.radians(110))
        k_rows = 6
        s = np.linspace(1.0, 0.0, k_rows, endpoint=False)[::-1][:, None]  # 1/k .. 1 below the cut
        top = cap[0]
        spread = 1.0 + 0.12 * s
        ext = np.stack([c[0] + (top[:, 0] - c[0]) * spread, top[:, 1] - s * length, c[2] + (top[:, 2] - c[2]) * spread], -1)
        cap = np.concatenate([ext[::-1], cap], 0)
    return cap


def _hair_sheets(rng: np.random.Generator, hair: bool, long_hair: bool, fringe: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """(x, y) grids, ICT cm, of the hair sheets that lie on the face: a fringe, locks in front of the ears."""
    sheets: list[tuple[np.ndarray, np.ndarray]] = []
    if hair and fringe:
        # A fringe: its lower edge rises towards the temples, waves, and ends in ragged tips.
        w = rng.uniform(5.0, 7.5)
        xs = np.linspace(-w, w, 25)
        low = _ICT_BROW_Y + rng.uniform(-1.2, 2.5) + rng.uniform(0.0, 2.0) * (xs / w) ** 2
        low += rng.uniform(0.1, 0.6) * np.sin(xs * rng.uniform(1.5, 4.0) + rng.uniform(0, 6.3))
        low += rng.uniform(0.0, 0.7) * rng.random(len(xs)) * (np.arange(len(xs)) % 2)
        ys = low[None, :] + np.linspace(0, 1, 6)[:, None] * (13.5 - low[None, :])
        sheets.append((np.broadcast_to(xs, ys.shape).copy(), ys))
    if hair and long_hair:
        for side in (-1.0, 1.0):
            if rng.random() < 0.4:
                # A lock in front of the ear, narrowing to its tip and swaying a little.
                t = np.linspace(0.0, 1.0, 12)[:, None]
                width = rng.uniform(1.2, 2.2) * (1.0 - 0.8 * t)
                centre = rng.uniform(6.6, 7.6) + rng.uniform(0.2, 0.6) * np.sin(t * rng.uniform(2, 5) + rng.uniform(0, 6.3))
                xs = side * (centre + (np.linspace(-0.5, 0.5, 4)[None, :]) * width)
                ys = (10.0 + t * (rng.uniform(-6.0, 0.0) - 10.0)) * np.ones((1, 4))
                sheets.append((xs, ys))
    return sheets


def _strand_texture(image: np.ndarray, mask: np.ndarray, down: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Streaks along the hair's fall direction ``down`` (image (dx, dy)) over the hair pixels."""
    if not mask.any():
        return image
    s = image.shape[0]
    length = max(3, int(0.08 * s)) | 1
    kernel = np.zeros((length, length), np.float32)
    mid = (length - 1) / 2
    d = down / max(float(np.linalg.norm(down)), 1e-6)
    for t in np.linspace(-mid, mid, 2 * length):
        kernel[int(round(mid + t * d[1])), int(round(mid + t * d[0]))] = 1.0
    noise = cv2.filter2D(rng.normal(0, 1, (s, s)).astype(np.float32), -1, kernel / kernel.sum())
    noise /= max(float(noise.std()), 1e-6)
    out = image.astype(np.float32)
    gain = np.clip(1.0 + rng.uniform(0.06, 0.14) * noise, 0.6, 1.4)
    out[mask] *= gain[mask][:, None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)

