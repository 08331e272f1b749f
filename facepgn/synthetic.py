"""Synthetic labelled faces, videos and frame pairs rendered from the face model.

Why: exact ground truth (3D landmarks, pose, coefficients, visibility, dense flow) for tests,
benchmarks and as labelled training data. Faces are the face model's mesh with its eye and mouth
holes closed, per-vertex skin albedo (a random skin tone, low-frequency blotches, darker lips, brows,
lash lines and nostrils, optional hair at the top), Lambertian shading and a random textured
background, rendered by :mod:`facepgn.render`.

Labelled faces (:func:`synthesize_face`) are made to look less like renders, since a network that
only saw clean renders fails on real faces: the rest of the head around the face mask (a skull-shaped
cap with hair or bald skin, long hair, a fringe, locks over the cheeks: :func:`hair_mesh`, z-buffered
with the face), occluders drawn over it (hands, glasses, microphones: :func:`add_occluders`), real
background patches cut from photos and videos away from their faces (:mod:`facepgn.backgrounds`,
with ``FaceSettings.backgrounds``), and camera effects (:func:`camera_effects`). Landmarks that hair
or an occluder covers are marked not visible. The faces fill the crop like the evaluation's crops
(``config.SyntheticFacesConfig.face_fill``). Videos and frame pairs keep the plain look.

Everything is deterministic by seed: face ``i`` of a dataset with seed ``s`` comes from
``np.random.default_rng([s, i])`` whatever the sharding or number of worker processes.

Geometry follows :mod:`facepgn.geometry` (``p = s * F @ R @ X + t``); records follow
:mod:`facepgn.records` (crop pixels, 3D landmark z centred).

Outputs:

* :func:`generate_faces`: ``part-NNNNN.parquet`` shards in ``FACE_RECORD_SCHEMA`` (face model truncated
  with ``FaceModel.truncated(num_id, num_exp)``, so ``id_coeffs``/``exp_coeffs`` have those lengths).
* :func:`generate_videos`: ``synthetic-NNNN.mp4`` (mp4v) and ``synthetic-NNNN.gt.npz`` with, per frame
  (T first): ``pose`` (pitch, yaw, roll rad), ``scale``, ``translation``, ``exp_coeffs``,
  ``landmarks_2d``/``landmarks_3d`` (frame px, z centred), ``landmarks_visible``, ``face_box`` (x, y, w, h
  of the rendered mesh), ``frame_index``, ``time``; and once: ``id_coeffs``, ``fps``, ``size``,
  ``face_model``, ``exp_names``, ``seed``, ``index``.
* :func:`render_pair` / :func:`synthetic_pair_rows`: two frames with known motion, the exact flow A -> B
  and its validity (for losses tests and flow benchmarks), and ``FRAME_PAIR_SCHEMA`` rows.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import tempfile
import time
import weakref
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import cv2
import numpy as np

from facepgn import records, render, storage
from facepgn.errors import ConfigError
from facepgn.facemodel import FaceModel, load_face_model, resolve_landmark_definition
from facepgn.geometry import euler_to_matrix, project

# iBUG 68 landmark index groups.
_BROW_R, _BROW_L = list(range(17, 22)), list(range(22, 27))
_EYE_R, _EYE_L = list(range(36, 42)), list(range(42, 48))
_LIPS_OUTER, _LIPS_INNER = list(range(48, 60)), list(range(60, 68))

_SKIN_TONES = np.array(
    [
        [0.98, 0.84, 0.74],
        [0.93, 0.76, 0.64],
        [0.86, 0.66, 0.52],
        [0.76, 0.56, 0.41],
        [0.62, 0.43, 0.30],
        [0.45, 0.30, 0.21],
        [0.33, 0.22, 0.16],
    ],
    dtype=np.float32,
)
_HAIR_COLOURS = np.array(
    [[0.08, 0.06, 0.05], [0.20, 0.13, 0.08], [0.35, 0.23, 0.13], [0.55, 0.40, 0.22], [0.75, 0.62, 0.40], [0.45, 0.43, 0.42]],
    dtype=np.float32,
)
_IRIS_COLOURS = np.array([[0.25, 0.15, 0.08], [0.12, 0.08, 0.05], [0.30, 0.40, 0.50], [0.30, 0.35, 0.20]], dtype=np.float32)


# ---- the renderable face: closed holes + appearance regions --------------------------------


@dataclass(frozen=True)
class FaceSkin:
    """The face model's mesh made renderable, and where its facial features are.

    ``triangles`` index the model's vertices followed by the extra vertices (E) that close the
    eye and mouth holes (``extra = fill_weights @ verts[fill_ids] + fill_offsets`` in model units);
    ``regions`` are per-vertex weights in [0, 1] over all vertices (lips, brows, lash lines, nostrils,
    eye fill: sclera/iris/pupil, mouth inside) plus ``height`` (0 at the brows, 1 at the top of the
    mesh) used for the hairline.
    """

    triangles: np.ndarray
    fill_ids: np.ndarray
    fill_weights: np.ndarray
    fill_offsets: np.ndarray
    regions: dict[str, np.ndarray]
    texture_coords: np.ndarray  # (V_all, 3) mean-shape positions normalised by the face height

    def close(self, verts: np.ndarray) -> np.ndarray:
        """Model-frame vertices (V, 3) -> (V + E, 3) with the E hole-filling vertices appended."""
        extra = np.einsum("ek,kc->ec", self.fill_weights, verts[self.fill_ids]) + self.fill_offsets
        return np.concatenate([verts, extra.astype(verts.dtype)], 0)


def _boundary_loops(triangles: np.ndarray) -> list[np.ndarray]:
    """Closed boundary loops (vertex ids in order) of a triangle mesh."""
    edges = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    key = np.sort(edges, 1)
    uniq, counts = np.unique(key, axis=0, return_counts=True)
    boundary = uniq[counts == 1]
    neighbours: dict[int, list[int]] = {}
    for a, b in boundary:
        neighbours.setdefault(int(a), []).append(int(b))
        neighbours.setdefault(int(b), []).append(int(a))
    seen: set[int] = set()
    loops = []
    for start in sorted(neighbours):
        if start in seen:
            continue
        loop, prev, cur = [start], -1, start
        seen.add(start)
        while True:
            nxt = [n for n in neighbours[cur] if n != prev and n not in seen]
            if not nxt:
                break
            prev, cur = cur, nxt[0]
            seen.add(cur)
            loop.append(cur)
        if len(loop) >= 3:
            loops.append(np.array(loop, dtype=np.int64))
    return loops


def _polyline_distance(points: np.ndarray, poly: np.ndarray, closed: bool) -> np.ndarray:
    """Distance from 2D points (N, 2) to a polyline (M, 2)."""
    segs_a = poly if closed else poly[:-1]
    segs_b = np.roll(poly, -1, 0) if closed else poly[1:]
    ab = segs_b - segs_a
    ap = points[:, None, :] - segs_a[None]
    t = np.clip((ap * ab[None]).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12)[None], 0, 1)
    closest = segs_a[None] + t[..., None] * ab[None]
    return np.linalg.norm(points[:, None, :] - closest, axis=-1).min(1)


def _inside(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    path = poly.astype(np.float32).reshape(-1, 1, 2)
    return np.array([cv2.pointPolygonTest(path, (float(x), float(y)), False) >= 0 for x, y in points])


_SKIN_CACHE: "weakref.WeakKeyDictionary[FaceModel, FaceSkin]" = weakref.WeakKeyDictionary()


def face_skin(model: FaceModel) -> FaceSkin:
    """Build (once per model object) the closed mesh and feature regions from the mean shape."""
    cached = _SKIN_CACHE.get(model)
    if cached is not None:
        return cached
    mean = np.asarray(model.mean, dtype=np.float64)
    tris = np.asarray(model.triangles, dtype=np.int64)
    lm_ids = np.asarray(model.landmark_ids)
    lm = np.where((lm_ids >= 0)[:, None], mean[np.maximum(lm_ids, 0)], np.nan)
    face_h = float(np.nanmax(lm[:, 1]) - np.nanmin(lm[:, 1])) or float(np.ptp(mean[:, 1]))

    loops = _boundary_loops(tris)
    if loops:
        loops.sort(key=len)
        loops = loops[:-1]  # the longest loop is the outer border of the mask
    centres = {
        "eye_r": np.nanmean(lm[_EYE_R], 0),
        "eye_l": np.nanmean(lm[_EYE_L], 0),
        "mouth": np.nanmean(lm[_LIPS_INNER], 0),
    }
    fill_ids: list[int] = []
    weight_rows: list[dict[int, float]] = []
    offsets: list[np.ndarray] = []
    new_tris: list[tuple[int, int, int]] = []
    extra_kind: list[str] = []
    v_base = len(mean)

    def add_vertex(weights: dict[int, float], offset: np.ndarray, kind: str) -> int:
        weight_rows.append(weights)
        offsets.append(offset)
        extra_kind.append(kind)
        return v_base + len(weight_rows) - 1

    for loop in loops:
        c = mean[loop].mean(0)
        name = min(centres, key=lambda k: np.linalg.norm(c[:2] - centres[k][:2]) if np.all(np.isfinite(centres[k])) else np.inf)
        if not np.all(np.isfinite(centres[name])) or np.linalg.norm(c[:2] - centres[name][:2]) > 0.25 * face_h:
            continue
        # Orient the loop so the fan triangles face the camera like the mesh (CCW seen from +z).
        pts = mean[loop, :2]
        area = 0.5 * np.sum(pts[:, 0] * np.roll(pts[:, 1], -1) - np.roll(pts[:, 0], -1) * pts[:, 1])
        if area < 0:
            loop = loop[::-1]
        n = len(loop)
        uniform = {int(i): 1.0 / n for i in loop}
        if name == "mouth":
            centre = add_vertex(uniform, np.array([0.0, 0.0, -0.05 * face_h]), "mouth")
            for k in range(n):
                new_tris.append((int(loop[k]), int(loop[(k + 1) % n]), centre))
        else:
            # Concentric rings towards the centre: sclera, sclera, iris edge, then the pupil.
            centre = add_vertex(uniform, np.zeros(3), "pupil")
            rings = [[int(v) for v in loop]]
            for frac, kind in ((0.85, "sclera"), (0.5, "sclera"), (0.36, "iris")):
                ring = []
                for k in range(n):
                    w = {i: (1 - frac) / n for i in map(int, loop)}
                    w[int(loop[k])] += frac
                    ring.append(add_vertex(w, np.zeros(3), kind))
                rings.append(ring)
            for outer_ring, inner_ring in zip(rings[:-1], rings[1:]):
                for k in range(n):
                    a, b = outer_ring[k], outer_ring[(k + 1) % n]
                    ra, rb = inner_ring[k], inner_ring[(k + 1) % n]
                    new_tris += [(a, b, rb), (a, rb, ra)]
            inner_ring = rings[-1]
            for k in range(n):
                new_tris.append((inner_ring[k], inner_ring[(k + 1) % n], centre))

    all_ids = sorted({i for row in weight_rows for i in row})
    col = {v: j for j, v in enumerate(all_ids)}
    weights = np.zeros((len(weight_rows), len(all_ids)), dtype=np.float32)
    for r, row in enumerate(weight_rows):
        for v, w in row.items():
            weights[r, col[v]] = w
    fill_ids = np.array(all_ids, dtype=np.int64)
    offs = np.array(offsets, dtype=np.float32).reshape(-1, 3)
    triangles = np.concatenate([tris, np.array(new_tris, dtype=np.int64).reshape(-1, 3)]).astype(np.int32)
    closed_mean = np.concatenate([mean, weights @ mean[fill_ids] + offs]) if len(weight_rows) else mean

    # Feature regions, from the frontal (x, y) layout of the mean shape.
    xy = closed_mean[:, :2]
    v_all = len(closed_mean)
    unit = face_h
    regions: dict[str, np.ndarray] = {}

    def soft(dist: np.ndarray, width: float) -> np.ndarray:
        return np.clip(1.0 - dist / (width * unit), 0.0, 1.0).astype(np.float32)

    is_base = np.arange(v_all) < v_base
    front = closed_mean[:, 2] > np.nanmin(lm[:, 2]) - 0.1 * unit  # not the sides/back of the mask
    if np.all(np.isfinite(lm[_LIPS_OUTER])):
        outer = lm[_LIPS_OUTER, :2]
        inside_lips = _inside(xy, outer)
        d = _polyline_distance(xy, outer, closed=True)
        regions["lips"] = np.where(inside_lips, 1.0, soft(d, 0.02)).astype(np.float32) * front * is_base
    for name, ids in (("brow_r", _BROW_R), ("brow_l", _BROW_L)):
        if np.all(np.isfinite(lm[ids])):
            poly = lm[ids, :2].copy()
            poly[:, 1] += 0.01 * unit  # brow hair sits a little above the landmarks' line
            d = _polyline_distance(xy, poly, closed=False)
            # Thicker towards the inner end (ids 21 / 22) is the usual brow shape.
            regions[name] = (soft(d, 0.045) * front * is_base).astype(np.float32)
    lash = np.zeros(v_all, np.float32)
    for ids in (_EYE_R, _EYE_L):
        if np.all(np.isfinite(lm[ids])):
            lash = np.maximum(lash, soft(_polyline_distance(xy, lm[ids, :2], closed=True), 0.018))
    regions["lash"] = lash * front * is_base
    if np.all(np.isfinite(lm[[31, 33, 35]])):
        nostril = np.zeros(v_all, np.float32)
        for a, b in ((31, 33), (35, 33)):
            spot = 0.6 * lm[a, :2] + 0.4 * lm[b, :2]
            nostril = np.maximum(nostril, soft(np.linalg.norm(xy - spot, axis=1), 0.03))
        regions["nostril"] = nostril * is_base
    kinds = np.array(["skin"] * v_base + extra_kind)
    for kind in ("pupil", "iris", "sclera", "mouth"):
        regions[kind] = (kinds == kind).astype(np.float32)
    brow_y = np.nanmax(lm[_BROW_R + _BROW_L, 1]) if np.all(np.isfinite(lm[_BROW_R + _BROW_L])) else np.nanmax(lm[:, 1])
    top = float(mean[:, 1].max())
    regions["height"] = ((closed_mean[:, 1] - brow_y) / max(top - brow_y, 1e-6)).astype(np.float32)
    regions["front"] = front.astype(np.float32)

    centre = np.nanmean(lm, 0)
    skin = FaceSkin(
        triangles=triangles,
        fill_ids=fill_ids,
        fill_weights=weights,
        fill_offsets=offs,
        regions=regions,
        texture_coords=((closed_mean - centre) / unit).astype(np.float32),
    )
    _SKIN_CACHE[model] = skin
    return skin


def random_albedo(skin: FaceSkin, rng: np.random.Generator, hair: bool | None = None,
                  colours: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Per-vertex albedo (V_all, 3) in [0, 1] for one identity: tone, blotches, features, hair.
    ``colours``, when given, receives the identity's ``skin`` tone and ``hair`` colour (for the
    head, hands and hair drawn around the mesh)."""
    reg = skin.regions
    t = rng.uniform(0, len(_SKIN_TONES) - 1)
    lo = int(np.floor(t))
    base = _SKIN_TONES[lo] * (1 - (t - lo)) + _SKIN_TONES[min(lo + 1, len(_SKIN_TONES) - 1)] * (t - lo)
    base = np.clip(base * rng.uniform(0.92, 1.06) + rng.normal(0, 0.015, 3), 0.05, 1.0)
    uv = skin.texture_coords
    # Low-frequency blotches: a few random plane waves over the mean shape, mostly luminance + redness.
    freqs = rng.normal(0, 1, (6, 3)) * rng.uniform(2.0, 7.0, (6, 1))
    phases = rng.uniform(0, 2 * np.pi, 6)
    # einsum rather than @: multi-threaded BLAS on these thin products costs more than it saves.
    waves = np.sin(np.einsum("vc,kc->vk", uv, freqs) + phases)  # (V, 6)
    mix = rng.normal(0, 1, (6, 3)) * 0.012 + rng.normal(0, 1, (6, 1)) * 0.03
    albedo = base[None, :] * (1.0 + np.einsum("vk,kc->vc", waves, mix))
    redness = np.clip(np.sin(np.einsum("vc,c->v", uv, rng.normal(0, 3, 3)) + rng.uniform(0, 6.3)), 0, 1) * rng.uniform(0, 0.05)
    albedo[:, 0] += redness
    albedo[:, 2] -= 0.5 * redness

    def paint(weight: np.ndarray, colour: np.ndarray, strength: float = 1.0) -> None:
        w = (np.clip(weight, 0, 1) * strength)[:, None]
        albedo[:] = albedo * (1 - w) + colour[None, :] * w

    hair_colour = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.85, 1.1)
    if colours is not None:
        colours["skin"], colours["hair"] = np.clip(base, 0, 1).astype(np.float32), np.clip(hair_colour, 0, 1).astype(np.float32)
    lip_colour = base * np.array([0.78, 0.52, 0.52]) * rng.uniform(0.8, 1.05)
    if "lips" in reg:
        paint(reg["lips"], lip_colour, rng.uniform(0.6, 0.9))
    brow_colour = np.minimum(hair_colour, base * 0.45)
    for name in ("brow_r", "brow_l"):
        if name in reg:
            paint(np.clip(reg[name] * 1.6, 0, 1), brow_colour, rng.uniform(0.6, 0.9))
    if "lash" in reg:
        paint(np.clip(reg["lash"] * 1.5, 0, 1), base * 0.25, 0.8)
    if "nostril" in reg:
        paint(reg["nostril"], base * 0.3, 0.8)
    if hair if hair is not None else rng.random() < 0.8:
        line = rng.uniform(0.45, 0.8)  # hairline height between brows (0) and mesh top (1)
        w = np.clip((reg["height"] - line) / 0.08, 0, 1)
        paint(w, hair_colour)
    sclera = np.array([0.85, 0.83, 0.80]) * rng.uniform(0.8, 1.0)
    paint(reg["sclera"], sclera)
    paint(reg["iris"], _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))])
    paint(reg["pupil"], np.array([0.03, 0.03, 0.03]))
    paint(reg["mouth"], np.array([0.15, 0.05, 0.05]))
    return np.clip(albedo, 0.0, 1.0).astype(np.float32)


def random_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random textured background: smooth colour field, a few blurred shapes, sensor noise."""
    grid = rng.integers(2, 6)
    field = rng.uniform(0, 255, (grid, grid, 3)).astype(np.float32)
    field = field * rng.uniform(0.3, 1.0) + rng.uniform(0, 120)
    img = cv2.resize(field, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(2, 7)):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cx, cy = int(rng.uniform(0, width)), int(rng.uniform(0, height))
        if rng.random() < 0.5:
            axes = (int(rng.uniform(0.05, 0.4) * width), int(rng.uniform(0.05, 0.4) * height))
            cv2.ellipse(img, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        else:
            w, h = int(rng.uniform(0.05, 0.5) * width), int(rng.uniform(0.05, 0.5) * height)
            cv2.rectangle(img, (cx - w // 2, cy - h // 2), (cx + w // 2, cy + h // 2), colour, -1)
    sigma = rng.uniform(0.5, 3.0) * max(height, width) / 128
    img = cv2.GaussianBlur(img, (0, 0), sigma)
    img += rng.normal(0, rng.uniform(2, 8), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


@contextlib.contextmanager
def single_threaded():
    """One torch intra-op thread while rendering: on these small tensors thread wake-ups cost more
    (~10 ms a call on a busy machine) than they save. Restores the previous setting."""
    import torch

    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


def _one_thread(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with single_threaded():
            return fn(*args, **kwargs)

    return wrapper


# ---- sampling ------------------------------------------------------------------------------


@dataclass
class FaceParams:
    """Ground truth of one rendered face (crop/frame pixels, model frame per facepgn.geometry)."""

    id_coeffs: np.ndarray
    exp_coeffs: np.ndarray
    pose: np.ndarray  # pitch, yaw, roll radians
    scale: float
    translation: np.ndarray  # (3,)


def sample_identity(rng: np.random.Generator, num_id: int, id_std: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(num_id) * id_std).astype(np.float32)


def sample_expression(rng: np.random.Generator, num_exp: int, active_prob: float = 0.15) -> np.ndarray:
    """Sparse blendshape weights in [0, 1]: each expression is on with ``active_prob``."""
    on = rng.random(num_exp) < active_prob
    return np.where(on, rng.uniform(0.1, 1.0, num_exp), 0.0).astype(np.float32)


def sample_pose(rng: np.random.Generator, yaw_max_deg: float = 90, pitch_max_deg: float = 40, roll_max_deg: float = 30) -> np.ndarray:
    """(pitch, yaw, roll) radians. |yaw| is uniform in [0, yaw_max], so the AFLW2000-3D buckets
    [0,30], (30,60], (60,90] are equally represented; pitch and roll are truncated normals."""
    yaw = rng.uniform(0, yaw_max_deg) * rng.choice([-1.0, 1.0])
    pitch = float(np.clip(rng.normal(0, pitch_max_deg / 2), -pitch_max_deg, pitch_max_deg))
    roll = float(np.clip(rng.normal(0, roll_max_deg / 2), -roll_max_deg, roll_max_deg))
    return np.radians([pitch, yaw, roll]).astype(np.float32)


def place_face(
    model: FaceModel,
    id_coeffs: np.ndarray,
    exp_coeffs: np.ndarray,
    pose: np.ndarray,
    box_size: float,
    centre: tuple[float, float],
) -> tuple[float, np.ndarray]:
    """Scale and translation putting the face's 68-landmark box (side ``box_size`` px, the larger of
    its width and height) at ``centre``; translation z centres the landmarks' depth at 0."""
    lm = model.landmarks(id_coeffs, exp_coeffs)[model.landmark_mask].astype(np.float64)
    R = euler_to_matrix(np.asarray(pose, dtype=np.float64))
    p = project(lm, 1.0, R, np.zeros(3))
    extent = max(float(np.ptp(p[:, 0])), float(np.ptp(p[:, 1])), 1e-6)
    scale = box_size / extent
    mid = (p.max(0) + p.min(0)) / 2 * scale
    t = np.array([centre[0] - mid[0], centre[1] - mid[1], -float(p[:, 2].mean()) * scale])
    return float(scale), t


@dataclass
class FaceRender:
    """A rendered face with its ground truth."""

    image: np.ndarray  # RGB uint8
    params: FaceParams
    landmarks_3d: np.ndarray  # (68, 3) image px, NaN rows for unmapped landmarks
    landmarks_visible: np.ndarray  # (68,) bool
    verts: np.ndarray  # (V_all, 3) image-space vertices of the closed mesh
    rendering: render.Rendering


def render_face(
    model: FaceModel,
    params: FaceParams,
    albedo: np.ndarray,
    height: int,
    width: int,
    background: np.ndarray | None = None,
    light_dir=(0.3, -0.4, 1.0),
    ambient: float = 0.45,
    diffuse: float = 0.6,
    vertex_colours: np.ndarray | None = None,
    draw_inside: bool = True,
    extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> FaceRender:
    """Render one face; ``vertex_colours`` (pre-shaded, [0, 1]) bypasses the lighting (for pairs
    with brightness constancy). ``draw_inside`` draws the inside of the open face mask (seen past
    its border at steep poses) in a dark flat colour instead of letting the background through.
    ``extra`` (model-frame vertices (E, 3), triangles (T, 3) into them, albedo (E, 3)) is more
    geometry posed with the face and z-buffered with it (hair: :func:`hair_mesh`); its triangles come
    after the face's in the raster, and landmarks it covers are not visible."""
    skin = face_skin(model)
    verts_model = skin.close(model_vertices(model, params.id_coeffs, params.exp_coeffs))
    R = euler_to_matrix(np.asarray(params.pose, dtype=np.float64))
    verts = project(verts_model, float(params.scale), R, np.asarray(params.translation, dtype=np.float64))
    if vertex_colours is None:
        top = skin.regions["height"] > 0.9
        back = albedo[top].mean(0) * 0.45 if top.any() else albedo.mean(0) * 0.45
        all_verts, all_tris, all_albedo = verts, skin.triangles, albedo
        if extra is not None:
            extra_verts = project(np.asarray(extra[0], np.float64), float(params.scale), R, np.asarray(params.translation, dtype=np.float64))
            all_verts = np.concatenate([verts, extra_verts])
            all_tris = np.concatenate([skin.triangles, np.asarray(extra[1]) + len(verts)]).astype(np.int32)
            all_albedo = np.concatenate([albedo, np.asarray(extra[2], albedo.dtype)])
        rendering = render.render(all_verts, all_tris, all_albedo, height, width, background, light_dir, ambient, diffuse,
                                  cull_backfaces=not draw_inside, back_colour=back)
    else:
        raster = render.rasterize(verts, skin.triangles, height, width, cull_backfaces=not draw_inside)
        image = np.zeros((height, width, 3), np.uint8) if background is None else background.copy()
        mask = raster.mask
        colours = render.interpolate(raster, skin.triangles, vertex_colours)
        image[mask] = np.clip(colours[mask] * 255 + 0.5, 0, 255).astype(np.uint8)
        rendering = render.Rendering(image, raster)
    lm_ids = np.asarray(model.landmark_ids)
    lm = np.full((len(lm_ids), 3), np.nan)
    ok = lm_ids >= 0
    lm[ok] = verts[lm_ids[ok]]
    visible = np.zeros(len(lm_ids), dtype=bool)
    extent = float(np.ptp(verts[: model.num_vertices, :2], axis=0).max())
    visible[ok] = render.vertex_visibility(lm[ok], rendering.raster, tolerance=max(1.0, 0.015 * extent))
    return FaceRender(rendering.image, params, lm, visible, verts, rendering)


def model_vertices(model: FaceModel, id_coeffs: np.ndarray, exp_coeffs: np.ndarray) -> np.ndarray:
    """The face model's mesh (V, 3) float64, evaluated with torch (one intra-op thread under
    :func:`single_threaded`) rather than numpy's multi-threaded BLAS, which burns CPU on this thin product."""
    import torch

    ids = torch.from_numpy(np.asarray(id_coeffs, dtype=np.float32))
    exps = torch.from_numpy(np.asarray(exp_coeffs, dtype=np.float32))
    return model.vertices(ids, exps).numpy().astype(np.float64)


def shade_albedo(verts: np.ndarray, triangles: np.ndarray, albedo: np.ndarray, light_dir=(0.3, -0.4, 1.0), ambient=0.45, diffuse=0.6) -> np.ndarray:
    return render.shade_vertices(render.vertex_normals(verts, triangles), albedo, light_dir, ambient, diffuse)


def _random_light(rng: np.random.Generator) -> tuple[tuple[float, float, float], float, float]:
    light = (rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.4), rng.uniform(0.6, 1.2))
    ambient = rng.uniform(0.4, 0.65)
    diffuse = rng.uniform(0.45, 0.75)
    return light, ambient, diffuse


def _camera_effects(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Slight blur and sensor noise, so crops look less like clean renders."""
    img = image.astype(np.float32)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 0.9))
    img += rng.normal(0, rng.uniform(0.5, 3.0), img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def camera_effects(image: np.ndarray, rng: np.random.Generator, grayscale_prob: float = 0.08,
                   jpeg_quality: tuple[int, int] = (30, 92)) -> np.ndarray:
    """What cameras and the web do to real face crops, so synthetic ones are not told apart by it:
    a colour cast and exposure/gamma change, Gaussian or motion blur, down-and-up scaling, sensor
    noise (some of it chroma), grey-scale now and then, and JPEG re-encoding at a random quality.
    Geometry is unchanged (blur kernels are centred, resampling keeps pixel centres)."""
    s = image.shape[0]
    img = image.astype(np.float32) / 255.0
    gains = rng.uniform(0.85, 1.15, 3) * rng.uniform(0.8, 1.15)
    img = np.clip(img * gains, 0, 1) ** rng.uniform(0.8, 1.25)
    kind = rng.random()
    if kind < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.4) * s / 128)
    elif kind < 0.42:
        length = max(3, int(round(rng.uniform(3, 9) * s / 128)) | 1)
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0
        rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), float(rng.uniform(0, 180)), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (length, length))
        img = cv2.filter2D(img, -1, kernel / max(float(kernel.sum()), 1e-6), borderType=cv2.BORDER_REFLECT_101)
    if rng.random() < 0.3:
        small = max(8, int(round(s * rng.uniform(0.3, 0.75))))
        img = cv2.resize(cv2.resize(img, (small, small), interpolation=cv2.INTER_AREA), (s, s),
                         interpolation=cv2.INTER_LINEAR if rng.random() < 0.5 else cv2.INTER_CUBIC)
    img = img + rng.normal(0, rng.uniform(0.002, 0.025), img.shape).astype(np.float32)
    if rng.random() < 0.3:  # chroma noise: blotchy, at a lower resolution
        k = max(4, s // 4)
        chroma = cv2.resize(rng.normal(0, rng.uniform(0.005, 0.02), (k, k, 3)).astype(np.float32), (s, s))
        img = img + chroma
    img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < grayscale_prob:
        img = np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    if rng.random() < 0.7:
        quality = int(rng.integers(jpeg_quality[0], jpeg_quality[1] + 1))
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return img


# ---- realism: head and hair, occluders -------------------------------------------------------

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
    rows = cap.shape[0]
    verts = [cap.reshape(-1, 3)]
    tris = [_orient(verts[0], _grid_triangles(rows, n_theta, wrap=True), outward_from=c)]
    count = len(verts[0])

    def z_cap(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        q = 1 - ((x - c[0]) / r[0]) ** 2 - ((y - c[1]) / r[1]) ** 2
        return c[2] + r[2] * np.sqrt(np.clip(q, 0, None))

    surface = None
    sheets: list[tuple[np.ndarray, np.ndarray]] = []  # (x, y) grids of sheets lying on the face
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
    for xs, ys in sheets:
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


class _Layer:
    """Occluders drawn over the image: premultiplied colour and coverage (alpha), anti-aliased."""

    def __init__(self, size: int):
        self.alpha = np.zeros((size, size), np.float32)
        self.colour = np.zeros((size, size, 3), np.float32)  # premultiplied by alpha, [0, 255]

    def paint(self, shape: np.ndarray, colour: np.ndarray) -> None:
        """``shape`` (S, S) coverage in [0, 1]; ``colour`` (3,) or (S, S, 3) in [0, 255]."""
        a = np.clip(shape, 0, 1).astype(np.float32)
        col = np.broadcast_to(np.asarray(colour, np.float32), self.colour.shape)
        self.colour = col * a[..., None] + self.colour * (1 - a[..., None])
        self.alpha = a + self.alpha * (1 - a)

    def composite(self, image: np.ndarray) -> np.ndarray:
        out = self.colour + image.astype(np.float32) * (1 - self.alpha[..., None])
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)


_SS = 4  # supersampling of occluder shapes


def _shape_canvas(size: int) -> np.ndarray:
    return np.zeros((size * _SS, size * _SS), np.uint8)


def _done(canvas: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _pt(p) -> tuple[int, int]:
    return int(round(float(p[0]) * _SS + (_SS - 1) / 2)), int(round(float(p[1]) * _SS + (_SS - 1) / 2))


def _capsule(canvas: np.ndarray, a, b, width: float) -> None:
    cv2.line(canvas, _pt(a), _pt(b), 255, max(1, int(round(width * _SS))), cv2.LINE_AA)
    for p in (a, b):
        cv2.circle(canvas, _pt(p), max(1, int(round(width * _SS / 2))), 255, -1, cv2.LINE_AA)


def _rounded_shading(shape: np.ndarray, scale: float) -> np.ndarray:
    """0.7 at the edge of a shape rising to 1 inside it: a rounded look for flat-coloured blobs."""
    inner = cv2.distanceTransform((shape > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
    return 0.7 + 0.3 * np.clip(inner / max(scale, 1e-6), 0, 1)


def _draw_hand(layer: _Layer, lm: np.ndarray, box: float, skin: np.ndarray, rng: np.random.Generator) -> None:
    """A hand (palm, four fingers, thumb) and forearm reaching in from below: over the chin, the
    mouth or a cheek."""
    size = layer.alpha.shape[0]
    anchor_kind = rng.integers(3)
    if anchor_kind == 0:
        anchor = lm[8] + np.array([0.0, 0.08]) * box  # chin resting on the hand
        angle = np.radians(rng.uniform(-110, -70))
    elif anchor_kind == 1:
        anchor = lm[62] + rng.normal(0, 0.04, 2) * box  # hand over the mouth
        angle = np.radians(rng.uniform(-120, -60))
    else:
        side = int(rng.integers(2))
        anchor = lm[[3, 13][side]] + np.array([[-0.02, 0.0], [0.02, 0.0]][side]) * box
        angle = np.radians(rng.uniform(-100, -60) if side == 0 else rng.uniform(-120, -80))
    hand = box * rng.uniform(0.85, 1.15)
    d = np.array([np.cos(angle), np.sin(angle)])  # from the wrist to the fingers (angle < 0: up)
    n = np.array([-d[1], d[0]])
    palm = anchor - d * 0.05 * hand
    canvas = _shape_canvas(size)
    cv2.ellipse(canvas, _pt(palm), (int(0.17 * hand * _SS), int(0.21 * hand * _SS)),
                float(np.degrees(angle)) + 90.0, 0, 360, 255, -1, cv2.LINE_AA)
    for k, (offset, length) in enumerate(zip((-0.11, -0.04, 0.035, 0.105), (0.17, 0.2, 0.19, 0.15))):
        base = palm + d * 0.15 * hand + n * offset * hand
        fan = np.radians(rng.normal(0, 6) + (k - 1.5) * 4)
        fd = np.array([np.cos(angle + fan), np.sin(angle + fan)])
        _capsule(canvas, base, base + fd * length * hand * rng.uniform(0.85, 1.1), 0.065 * hand)
    thumb_side = 1.0 if rng.random() < 0.5 else -1.0
    tbase = palm + n * thumb_side * 0.14 * hand
    tdir = np.array([np.cos(angle + thumb_side * 0.9), np.sin(angle + thumb_side * 0.9)])
    _capsule(canvas, tbase, tbase + tdir * 0.15 * hand, 0.07 * hand)
    _capsule(canvas, palm, palm - d * 2.0 * size, 0.27 * hand)  # forearm, out of the crop
    shape = _done(canvas, size)
    tone = np.clip(skin * rng.uniform(0.85, 1.1) * rng.uniform(0.95, 1.05, 3), 0, 1) * 255
    shading = _rounded_shading(shape, 0.06 * hand)[..., None]
    grain = 1.0 + rng.normal(0, 0.03, (size, size, 1)).astype(np.float32)
    layer.paint(shape, tone[None, None, :] * shading * grain)


def _draw_microphone(layer: _Layer, lm: np.ndarray, box: float, rng: np.random.Generator) -> None:
    """A hand-held or stand microphone: a bar from the bottom of the crop to a ball head below or
    beside the mouth."""
    size = layer.alpha.shape[0]
    head = lm[57] + np.array([rng.uniform(-0.15, 0.15), rng.uniform(0.08, 0.2)]) * box
    radius = rng.uniform(0.09, 0.13) * box
    angle = np.radians(rng.uniform(55, 125))  # the bar goes down (y grows)
    d = np.array([np.cos(angle), np.sin(angle)])
    canvas = _shape_canvas(size)
    _capsule(canvas, head, head + d * 2.0 * size, rng.uniform(0.06, 0.09) * box)
    bar = _done(canvas, size)
    grey = rng.uniform(15, 70)
    layer.paint(bar, np.full(3, grey) * _rounded_shading(bar, 0.02 * box)[..., None])
    canvas = _shape_canvas(size)
    cv2.circle(canvas, _pt(head), int(radius * _SS), 255, -1, cv2.LINE_AA)
    ball = _done(canvas, size)
    foam = rng.random() < 0.3
    base = rng.uniform(40, 220, 3) if foam else np.full(3, rng.uniform(20, 90))
    ys, xs = np.mgrid[:size, :size].astype(np.float32)
    mesh = 1.0 - 0.25 * ((np.sin(xs * 2.2) * np.sin(ys * 2.2)) > 0.3) * (not foam)
    layer.paint(ball, base[None, None, :] * (_rounded_shading(ball, 0.5 * radius) * mesh)[..., None])


def _draw_glasses(layer: _Layer, model: FaceModel, params: FaceParams, face: FaceRender, rng: np.random.Generator) -> None:
    """Glasses as a 3D wire frame in front of the eyes (lenses, bridge, temples to the ears),
    posed with the head and hidden where the face is in front of them; sometimes tinted lenses."""
    size = layer.alpha.shape[0]
    frame = head_frame(model)
    u = frame.unit
    X = model.landmarks(params.id_coeffs, params.exp_coeffs).astype(np.float64)
    if not model.landmark_mask[36:48].all():
        return
    eye_w = float(np.linalg.norm(X[39] - X[36]) + np.linalg.norm(X[45] - X[42])) / 2
    a = eye_w * rng.uniform(0.75, 0.95)
    b = a * rng.uniform(0.6, 0.85)
    power = rng.choice([2.0, 3.0, 4.0])
    t = np.linspace(0, 2 * np.pi, 33)
    ring = np.stack([np.sign(np.cos(t)) * np.abs(np.cos(t)) ** (2 / power) * a,
                     np.sign(np.sin(t)) * np.abs(np.sin(t)) ** (2 / power) * b], -1)
    z_front = max(X[36:48, 2].max(), X[27, 2]) + rng.uniform(0.6, 1.0) * u
    lenses = []
    for ids in (range(36, 42), range(42, 48)):
        centre = X[list(ids)].mean(0) + np.array([0.0, rng.normal(0, 0.1) * u, 0.0])
        lenses.append(np.stack([centre[0] + ring[:, 0], centre[1] + ring[:, 1] - 0.1 * u, np.full(len(t), z_front)], -1))
    inner_r = lenses[0][np.argmax(lenses[0][:, 0] * np.sign(X[42, 0] - X[39, 0]))]
    inner_l = lenses[1][np.argmin(lenses[1][:, 0] * np.sign(X[42, 0] - X[39, 0]))]
    bridge = np.stack([inner_r, (inner_r + inner_l) / 2 + np.array([0, 0.2 * u, 0.1 * u]), inner_l])
    polylines = [lenses[0], lenses[1], bridge]
    for lens in lenses:
        outer = lens[np.argmax(np.abs(lens[:, 0] - (X[39, 0] + X[42, 0]) / 2))]
        ear = frame.point([np.sign(outer[0] - frame.ref[0]) * 8.9, 0.0, 0.5])
        ear[1] = outer[1]
        polylines.append(np.linspace(outer, ear, 12))
    R = euler_to_matrix(np.asarray(params.pose, np.float64))
    tol = 0.3 * u * float(params.scale)
    depth = face.rendering.raster.depth
    thick = max(1.0, float(np.ptp(face.landmarks_3d[:, 0]) * rng.uniform(0.012, 0.03)))
    canvas = _shape_canvas(size)
    for line in polylines:
        p = project(line, float(params.scale), R, np.asarray(params.translation, np.float64))
        xi = np.clip(np.round(p[:, 0]).astype(int), 0, size - 1)
        yi = np.clip(np.round(p[:, 1]).astype(int), 0, size - 1)
        seen = p[:, 2] >= depth[yi, xi] - tol  # -inf depth (no face there) is always behind
        for k in range(len(p) - 1):
            if seen[k] and seen[k + 1]:
                cv2.line(canvas, _pt(p[k]), _pt(p[k + 1]), 255, max(1, int(round(thick * _SS))), cv2.LINE_AA)
    shape = _done(canvas, size)
    palette = np.array([[20, 20, 22], [60, 35, 20], [110, 70, 35], [170, 150, 110], [190, 190, 195]], np.float32)
    layer.paint(shape, palette[rng.integers(len(palette))] * rng.uniform(0.8, 1.1))
    if rng.random() < 0.25:  # sunglasses: dark lenses where the lens is in front of the face
        for lens in lenses:
            p = project(lens, float(params.scale), R, np.asarray(params.translation, np.float64))
            c = p.mean(0)
            ci, cj = int(np.clip(round(c[1]), 0, size - 1)), int(np.clip(round(c[0]), 0, size - 1))
            if c[2] < depth[ci, cj] - tol:
                continue
            canvas = _shape_canvas(size)
            cv2.fillPoly(canvas, [np.array([_pt(q) for q in p], np.int32)], 255, cv2.LINE_AA)
            layer.paint(_done(canvas, size) * rng.uniform(0.8, 0.95), np.full(3, rng.uniform(5, 40)))


def add_occluders(face: FaceRender, model: FaceModel, rng: np.random.Generator, colours: dict[str, np.ndarray],
                  hand_prob: float = 0.15, glasses_prob: float = 0.2, microphone_prob: float = 0.06) -> np.ndarray:
    """Draw glasses, a hand and/or a microphone over ``face.image`` (each with its probability, each
    from its own stream of ``rng``) and mark the landmarks they cover as not visible. Returns the
    occluder coverage (S, S) in [0, 1] (the landmarks at pixels covered above one half are hidden)."""
    size = face.image.shape[0]
    layer = _Layer(size)
    lm = np.nan_to_num(face.landmarks_3d[:, :2])
    box = float(max(np.ptp(lm[:, 0]), np.ptp(lm[:, 1]), 1.0))
    draws = rng.random(3)
    streams = [np.random.default_rng(rng.integers(2**63)) for _ in range(3)]
    if draws[0] < glasses_prob:
        _draw_glasses(layer, model, face.params, face, streams[0])
    if draws[1] < hand_prob:
        _draw_hand(layer, lm, box, colours["skin"], streams[1])
    if draws[2] < microphone_prob:
        _draw_microphone(layer, lm, box, streams[2])
    if layer.alpha.max() > 0:
        face.image = layer.composite(face.image)
        xi = np.round(lm[:, 0]).astype(int)
        yi = np.round(lm[:, 1]).astype(int)
        inside = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size)
        covered = np.zeros(len(lm), bool)
        covered[inside] = layer.alpha[yi[inside], xi[inside]] > 0.5
        face.landmarks_visible = face.landmarks_visible & ~covered
    return layer.alpha


# ---- labelled faces ------------------------------------------------------------------------


@dataclass
class FaceSettings:
    """What the labelled-face generator samples (mirrors ``config.SyntheticFacesConfig``, see there
    for what each field means; :meth:`from_config` copies one)."""

    size: int = 128
    num_id: int = 40
    num_exp: int = 20
    id_std: float = 1.0
    expression_prob: float = 0.15
    yaw_max_deg: float = 90.0
    pitch_max_deg: float = 40.0
    roll_max_deg: float = 30.0
    face_fill: tuple[float, float] = (0.62, 0.80)  # landmark box side / crop side (AFLW2000-3D roi crops: 0.707)
    centre_jitter: float = 0.05  # of the crop side
    image_format: str = ".jpg"
    face_model: str | None = None
    landmarks: str = "auto"  # facemodel.LANDMARK_DEFINITIONS
    backgrounds: tuple[str, ...] = ()  # photos/videos for facepgn.backgrounds; empty: procedural
    background_bank_size: int = 512
    background_cache: str | None = None
    hair_prob: float = 0.85
    long_hair_prob: float = 0.35
    fringe_prob: float = 0.3
    hand_prob: float = 0.12
    glasses_prob: float = 0.2
    microphone_prob: float = 0.05
    camera_effects: bool = True
    grayscale_prob: float = 0.08
    jpeg_quality: tuple[int, int] = (30, 92)

    @classmethod
    def from_config(cls, cfg: Any) -> "FaceSettings":
        """The settings of a ``config.SyntheticFacesConfig`` (every field of this class it has)."""
        from dataclasses import fields

        values = {}
        for f in fields(cls):
            if hasattr(cfg, f.name):
                value = getattr(cfg, f.name)
                values[f.name] = tuple(value) if isinstance(value, (list, tuple)) else value
        return cls(**values)


def face_model_for(settings: FaceSettings) -> FaceModel:
    """The face model truncated to the settings' modes, with the settings' landmark definition
    applied after truncating (as ``FaceModel.with_landmarks`` asks); cached per process."""
    landmarks = getattr(settings, "landmarks", "auto")
    key = (settings.face_model, settings.num_id, settings.num_exp, landmarks)
    model = _TRUNCATED.get(key)
    if model is None:
        model = load_face_model(settings.face_model).truncated(settings.num_id, settings.num_exp)
        try:
            model = model.with_landmarks(landmarks)
        except ValueError as exc:
            raise ConfigError(f"landmarks={landmarks!r}: {exc}") from None
        _TRUNCATED[key] = model
    return model


_TRUNCATED: dict[tuple, FaceModel] = {}


_BANKS: dict[tuple, np.ndarray] = {}


def _background_bank(settings: FaceSettings) -> np.ndarray | None:
    """The real-background bank of the settings (None: procedural backgrounds); built and cached
    on disk by the first caller (:func:`generate_faces` does it before starting workers), then
    kept per process."""
    if not settings.backgrounds:
        return None
    key = (tuple(settings.backgrounds), settings.size, settings.background_bank_size, settings.background_cache)
    bank = _BANKS.get(key)
    if bank is None:
        from facepgn import backgrounds

        bank = backgrounds.load_background_bank(list(settings.backgrounds), settings.size, settings.background_bank_size,
                                                seed=0, cache_dir=settings.background_cache)
        _BANKS[key] = bank
    return bank


def _image_direction(R: np.ndarray, model_dir) -> np.ndarray:
    """A model-frame direction as an image-plane (dx, dy) direction."""
    return (np.diag([1.0, -1.0, 1.0]) @ R @ np.asarray(model_dir, np.float64))[:2]


@_one_thread
def synthesize_face(index: int, seed: int, settings: FaceSettings, model: FaceModel | None = None) -> tuple[FaceRender, dict[str, Any]]:
    """Face ``index`` of the dataset with ``seed``: its rendering and its FACE_RECORD_SCHEMA row.

    The identity, pose, light and (procedural) background come from ``default_rng([seed, index])``;
    the head and hair, the occluders, the real background and the camera each from a stream of their
    own (``[seed, index, k]``), so switching one of them off leaves the rest of the face as it was."""
    model = model or face_model_for(settings)
    rng = np.random.default_rng([seed, index])
    s = settings.size
    params = FaceParams(
        id_coeffs=sample_identity(rng, model.num_id, settings.id_std),
        exp_coeffs=sample_expression(rng, model.num_exp, settings.expression_prob),
        pose=sample_pose(rng, settings.yaw_max_deg, settings.pitch_max_deg, settings.roll_max_deg),
        scale=0.0,
        translation=np.zeros(3),
    )
    box = rng.uniform(*settings.face_fill) * s
    centre = (s / 2 + rng.uniform(-1, 1) * settings.centre_jitter * s, s / 2 + rng.uniform(-1, 1) * settings.centre_jitter * s)
    params.scale, params.translation = place_face(model, params.id_coeffs, params.exp_coeffs, params.pose, box, centre)
    hair_rng = np.random.default_rng([seed, index, 5])
    has_hair = bool(hair_rng.random() < settings.hair_prob)
    long_hair = has_hair and bool(hair_rng.random() < settings.long_hair_prob)
    fringe = has_hair and bool(hair_rng.random() < settings.fringe_prob)
    colours: dict[str, np.ndarray] = {}
    skin = face_skin(model)
    albedo = random_albedo(skin, rng, hair=has_hair, colours=colours)
    light, ambient, diffuse = _random_light(rng)
    background = random_background(rng, s, s)
    bank = _background_bank(settings)
    if bank is not None:
        from facepgn import backgrounds

        background = backgrounds.random_background(bank, np.random.default_rng([seed, index, 8]), s)
    verts_model = model_vertices(model, params.id_coeffs, params.exp_coeffs)
    head = hair_mesh(model, verts_model, hair_rng, colours, hair=has_hair, long_hair=long_hair, fringe=fringe)
    face = render_face(model, params, albedo, s, s, background, light, ambient, diffuse, extra=head)
    if has_hair:
        hair_pixels = face.rendering.raster.triangle_ids >= len(skin.triangles)
        down = _image_direction(euler_to_matrix(np.asarray(params.pose, np.float64)), [0.0, -1.0, 0.0])
        face.image = _strand_texture(face.image, hair_pixels, down, np.random.default_rng([seed, index, 9]))
    add_occluders(face, model, np.random.default_rng([seed, index, 6]), colours, settings.hand_prob,
                  settings.glasses_prob, settings.microphone_prob)
    if settings.camera_effects:
        face.image = camera_effects(face.image, np.random.default_rng([seed, index, 7]), settings.grayscale_prob,
                                    tuple(settings.jpeg_quality))
    else:
        face.image = _camera_effects(face.image, rng)
    row = face_record(face, index, seed, settings, model)
    return face, row


def face_record(face: FaceRender, index: int, seed: int, settings: FaceSettings, model: FaceModel) -> dict[str, Any]:
    """The FACE_RECORD_SCHEMA row of a synthetic face (unmapped landmarks are stored as 0, hidden)."""
    s = settings.size
    lm = np.nan_to_num(face.landmarks_3d, nan=0.0)
    return {
        "record_id": f"synthetic-s{seed}/{index:08d}",
        "source": "synthetic",
        "subject_id": f"synthetic-s{seed}-{index:08d}",
        "image": records.encode_image(face.image, settings.image_format),
        "image_size": s,
        "landmarks_2d": lm[:, :2].astype(np.float32),
        "landmarks_3d": lm.astype(np.float32),
        "landmarks_visible": face.landmarks_visible.astype(bool),
        "pose": np.asarray(face.params.pose, np.float32),
        "scale": float(face.params.scale),
        "translation": np.asarray(face.params.translation, np.float32),
        "id_coeffs": np.asarray(face.params.id_coeffs, np.float32),
        "exp_coeffs": np.asarray(face.params.exp_coeffs, np.float32),
        "face_model": model.name,
        "crop_to_frame": records.crop_transform(0, 0, s, s).reshape(-1),
        "source_path": f"synthetic:seed={seed}",
        "landmark_definition": resolve_landmark_definition(model, getattr(settings, "landmarks", "auto")),
    }


def _init_worker() -> None:
    cv2.setNumThreads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def _pool_context():
    """Worker processes forked from a clean forkserver that has imported this module once (cheap
    starts, no threads inherited); spawn where forkserver does not exist."""
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["facepgn.synthetic"])
        return ctx
    return mp.get_context("spawn")


def _write_shard(task: tuple[int, int, int, int, FaceSettings, str]) -> dict[str, Any]:
    """Generate faces [start, stop) and write them as one Parquet shard (atomic); returns stats."""
    import pyarrow.parquet as pq

    shard, start, stop, seed, settings, out_dir = task
    path = storage.join(out_dir, f"part-{shard:05d}.parquet")
    t0, cpu0 = time.perf_counter(), time.process_time()
    model = face_model_for(settings)
    rows = [synthesize_face(i, seed, settings, model)[1] for i in range(start, stop)]
    table = records.to_table(rows, "face_record")
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.atomic_write_bytes(path, buf.getvalue())
    yaws = np.degrees(np.abs([r["pose"][1] for r in rows]))
    return {
        "shard": shard,
        "path": path,
        "rows": len(rows),
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - cpu0,
        "yaw_buckets": np.histogram(yaws, bins=[0, 30, 60, 90.0001])[0].tolist(),
        "visible_fraction": float(np.mean([np.mean(r["landmarks_visible"]) for r in rows])),
    }


def generate_faces(
    out_dir: str,
    n: int,
    seed: int = 0,
    settings: FaceSettings | None = None,
    rows_per_shard: int = 256,
    workers: int = 1,
    resume: bool = True,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write ``n`` synthetic labelled faces as ``part-NNNNN.parquet`` shards under ``out_dir``.

    Shards are independent tasks run on ``workers`` processes; each is written atomically, and with
    ``resume`` a rerun skips shards already present. ``progress(rows)`` is called as shards finish.
    Returns counts and timings (what ``summary.json`` records).
    """
    settings = settings or FaceSettings()
    storage.makedirs(out_dir)
    _background_bank(settings)  # build (and cache) a real-background bank once, before any worker needs it
    tasks = []
    skipped = []
    for shard, start in enumerate(range(0, n, rows_per_shard)):
        stop = min(n, start + rows_per_shard)
        path = storage.join(out_dir, f"part-{shard:05d}.parquet")
        if resume and storage.exists(path):
            skipped.append({"shard": shard, "path": path, "rows": stop - start})
            if progress:
                progress(stop - start)
            continue
        tasks.append((shard, start, stop, seed, settings, out_dir))
    t0 = time.perf_counter()
    done: list[dict[str, Any]] = []
    if workers <= 1 or len(tasks) <= 1:
        with single_threaded():
            for task in tasks:
                done.append(_write_shard(task))
                if progress:
                    progress(done[-1]["rows"])
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=_pool_context(), initializer=_init_worker) as pool:
            for result in pool.map(_write_shard, tasks):
                done.append(result)
                if progress:
                    progress(result["rows"])
    elapsed = time.perf_counter() - t0
    rows = sum(d["rows"] for d in done)
    buckets = np.sum([d["yaw_buckets"] for d in done], 0).tolist() if done else [0, 0, 0]
    return {
        "faces": n,
        "written": rows,
        "skipped_existing": sum(s["rows"] for s in skipped),
        "shards": sorted([d["path"] for d in done] + [s["path"] for s in skipped]),
        "seconds": elapsed,
        "faces_per_second": rows / elapsed if elapsed > 0 and rows else None,
        "cpu_seconds": float(sum(d["cpu_seconds"] for d in done)),  # in the processes that rendered
        "yaw_buckets_deg": {"[0,30]": buckets[0], "(30,60]": buckets[1], "(60,90]": buckets[2]},
        "mean_visible_landmarks": float(np.mean([d["visible_fraction"] for d in done])) * 68 if done else None,
    }


def contact_sheet_from_records(paths: Iterable[str], limit: int = 64, columns: int = 8) -> np.ndarray:
    """A grid of the first ``limit`` faces of face-record shards with their 68 landmarks drawn
    (visible green, hidden red)."""
    import pyarrow.parquet as pq

    tiles = []
    for path in paths:
        table = pq.read_table(io.BytesIO(storage.read_bytes(path)))
        for row in table.slice(0, limit - len(tiles)).to_pylist():
            img = records.decode_image(row["image"])
            lm = np.asarray(row["landmarks_2d"], np.float32).reshape(-1, 2)
            vis = row["landmarks_visible"]
            tiles.append(render.draw_landmarks(img, lm, visible=vis))
        if len(tiles) >= limit:
            break
    return render.contact_sheet(tiles, columns=columns)


# ---- videos --------------------------------------------------------------------------------


@dataclass
class VideoSettings:
    """What the synthetic video generator samples (mirrors ``config.SyntheticVideosConfig``)."""

    frames: int = 60
    size: int = 256
    fps: float = 25.0
    num_id: int = 40
    num_exp: int = 20
    id_std: float = 1.0
    expression_prob: float = 0.25
    face_px: tuple[float, float] = (80.0, 110.0)  # landmark box side in frame pixels
    yaw_amplitude_deg: float = 45.0
    pitch_amplitude_deg: float = 15.0
    roll_amplitude_deg: float = 10.0
    drift_px: float = 12.0
    face_model: str | None = None


def smooth_signal(rng: np.random.Generator, times: np.ndarray, amplitude: float, components: int = 3,
                  max_hz: float = 0.6) -> np.ndarray:
    """A smooth random signal (sum of a few sinusoids of at most ``max_hz``) with peak near ``amplitude``."""
    out = np.zeros_like(times, dtype=np.float64)
    weights = rng.dirichlet(np.ones(components))
    for w in weights:
        f = rng.uniform(0.08, max_hz)
        out += w * np.sin(2 * np.pi * f * times + rng.uniform(0, 2 * np.pi))
    return amplitude * out


@_one_thread
def synthesize_video(index: int, seed: int, settings: VideoSettings | None = None,
                     model: FaceModel | None = None) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Frames (RGB uint8) of clip ``index`` (one identity, smooth pose/expression/translation) and
    per-frame ground truth in frame pixels (3D landmark z centred per frame)."""
    settings = settings or VideoSettings()
    if model is None:
        model = face_model_for(FaceSettings(num_id=settings.num_id, num_exp=settings.num_exp, face_model=settings.face_model))
    rng = np.random.default_rng([seed, index, 1])
    n, size = settings.frames, settings.size
    times = np.arange(n) / settings.fps
    id_coeffs = sample_identity(rng, model.num_id, settings.id_std)
    albedo = random_albedo(face_skin(model), rng)
    light, ambient, diffuse = _random_light(rng)
    background = random_background(rng, size, size)
    yaw_centre = rng.uniform(-0.3, 0.3) * settings.yaw_amplitude_deg
    pose = np.stack(
        [
            smooth_signal(rng, times, settings.pitch_amplitude_deg),
            yaw_centre + smooth_signal(rng, times, settings.yaw_amplitude_deg),
            smooth_signal(rng, times, settings.roll_amplitude_deg),
        ],
        1,
    )
    pose = np.radians(pose).astype(np.float32)
    active = rng.random(model.num_exp) < settings.expression_prob
    exp = np.zeros((n, model.num_exp), np.float32)
    for k in np.flatnonzero(active):
        exp[:, k] = np.clip(0.5 + smooth_signal(rng, times, 0.9, 2, 0.8), 0.0, 1.0) * rng.uniform(0.4, 1.0)
    box = rng.uniform(*settings.face_px)
    box_t = box * (1 + smooth_signal(rng, times, 0.08, 2, 0.3))
    cx = size / 2 + smooth_signal(rng, times, settings.drift_px, 2, 0.3)
    cy = size / 2 + smooth_signal(rng, times, settings.drift_px, 2, 0.3)

    frames: list[np.ndarray] = []
    gt: dict[str, list] = {k: [] for k in ("scale", "translation", "landmarks_3d", "landmarks_visible", "face_box")}
    for i in range(n):
        params = FaceParams(id_coeffs, exp[i], pose[i], 0.0, np.zeros(3))
        params.scale, params.translation = place_face(model, id_coeffs, exp[i], pose[i], float(box_t[i]), (float(cx[i]), float(cy[i])))
        face = render_face(model, params, albedo, size, size, background, light, ambient, diffuse)
        frame_rng = np.random.default_rng([seed, index, 2, i])
        frames.append(_camera_effects(face.image, frame_rng))
        ys, xs = np.nonzero(face.rendering.mask)
        gt["face_box"].append([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] if len(xs) else [0, 0, 0, 0])
        gt["scale"].append(params.scale)
        gt["translation"].append(params.translation)
        gt["landmarks_3d"].append(np.nan_to_num(face.landmarks_3d))
        gt["landmarks_visible"].append(face.landmarks_visible)
    lm3d = np.asarray(gt["landmarks_3d"], np.float32)
    truth = {
        "frame_index": np.arange(n, dtype=np.int64),
        "time": times.astype(np.float64),
        "fps": np.float64(settings.fps),
        "size": np.int64(size),
        "pose": pose,
        "scale": np.asarray(gt["scale"], np.float32),
        "translation": np.asarray(gt["translation"], np.float32),
        "id_coeffs": id_coeffs,
        "exp_coeffs": exp,
        "landmarks_2d": lm3d[..., :2].copy(),
        "landmarks_3d": lm3d,
        "landmarks_visible": np.asarray(gt["landmarks_visible"], bool),
        "face_box": np.asarray(gt["face_box"], np.float32),
        "face_model": np.array(model.name),
        "exp_names": np.array(model.exp_names),
        "seed": np.int64(seed),
        "index": np.int64(index),
    }
    return frames, truth


def write_mp4(frames: list[np.ndarray], path: str, fps: float) -> None:
    """Encode RGB frames as an mp4 (OpenCV 'mp4v'), written atomically to a local or s3:// path."""
    if not frames:
        raise ValueError("no frames to write")
    h, w = frames[0].shape[:2]
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "clip.mp4")
        writer = cv2.VideoWriter(local, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
        if not writer.isOpened():
            raise RuntimeError(f"{path}: OpenCV could not open an mp4v video writer")
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        storage.atomic_write_file(local, path)


def _write_video_task(task: tuple[int, int, VideoSettings, str]) -> dict[str, Any]:
    index, seed, settings, out_dir = task
    t0 = time.perf_counter()
    name = f"synthetic-{index:04d}"
    frames, truth = synthesize_video(index, seed, settings)
    buf = io.BytesIO()
    np.savez_compressed(buf, **truth)
    storage.atomic_write_bytes(storage.join(out_dir, f"{name}.gt.npz"), buf.getvalue())
    video_path = storage.join(out_dir, f"{name}.mp4")
    write_mp4(frames, video_path, settings.fps)  # written last: its presence marks the clip done
    return {"video": video_path, "frames": len(frames), "seconds": time.perf_counter() - t0,
            "visible_landmarks": float(truth["landmarks_visible"].mean() * 68)}


def generate_videos(out_dir: str, n: int, seed: int = 0, settings: VideoSettings | None = None,
                    workers: int = 1, resume: bool = True,
                    progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write ``n`` clips as ``synthetic-NNNN.mp4`` + ``synthetic-NNNN.gt.npz`` under ``out_dir``."""
    settings = settings or VideoSettings()
    storage.makedirs(out_dir)
    tasks, skipped = [], []
    for i in range(n):
        path = storage.join(out_dir, f"synthetic-{i:04d}.mp4")
        if resume and storage.exists(path) and storage.exists(storage.join(out_dir, f"synthetic-{i:04d}.gt.npz")):
            skipped.append(path)
            if progress:
                progress(1)
            continue
        tasks.append((i, seed, settings, out_dir))
    t0 = time.perf_counter()
    done = []
    if workers <= 1 or len(tasks) <= 1:
        with single_threaded():
            for task in tasks:
                done.append(_write_video_task(task))
                if progress:
                    progress(1)
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=_pool_context(), initializer=_init_worker) as pool:
            for result in pool.map(_write_video_task, tasks):
                done.append(result)
                if progress:
                    progress(1)
    return {
        "videos": n,
        "written": len(done),
        "skipped_existing": len(skipped),
        "files": sorted([d["video"] for d in done] + skipped),
        "frames_per_video": settings.frames,
        "seconds": time.perf_counter() - t0,
    }


# ---- frame pairs with exact flow -----------------------------------------------------------


@dataclass
class FramePair:
    """Two renders of one face with known motion and the exact dense flow A -> B.

    ``flow`` (S, S, 2) float32: pixel (x, y) of A shows the surface point that is at
    (x + u, y + v) in B. ``valid`` (S, S) bool: the pixel is on the face in A and that surface point
    is visible in B (inside B's face, not occluded, away from B's silhouette by a pixel).
    The vertex colours are shaded once and kept for both frames (the light moves with the head), so
    the photometric constancy holds exactly up to resampling.
    """

    image_a: np.ndarray
    image_b: np.ndarray
    flow: np.ndarray
    valid: np.ndarray
    face_a: FaceRender
    face_b: FaceRender


def exact_flow(raster_a: render.Raster, triangles: np.ndarray, verts_a: np.ndarray, verts_b: np.ndarray,
               raster_b: render.Raster | None = None, tolerance: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Dense flow A -> B from the surface each pixel of A sees (barycentric interpolation of the
    per-vertex displacement) and, with ``raster_b``, whether that point is visible in B."""
    h, w = raster_a.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    pos_b = render.interpolate(raster_a, triangles, np.asarray(verts_b, np.float64))
    mask_a = raster_a.mask
    flow = np.zeros((h, w, 2), np.float32)
    flow[mask_a, 0] = pos_b[mask_a, 0] - xs[mask_a]
    flow[mask_a, 1] = pos_b[mask_a, 1] - ys[mask_a]
    valid = mask_a.copy()
    if raster_b is not None:
        if tolerance is None:
            tolerance = max(1.0, 0.015 * float(np.ptp(np.asarray(verts_b)[:, :2], axis=0).max()))
        inner_b = cv2.erode(raster_b.mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        bx = np.round(pos_b[..., 0]).astype(np.int64)
        by = np.round(pos_b[..., 1]).astype(np.int64)
        inside = mask_a & (bx >= 0) & (bx < raster_b.shape[1]) & (by >= 0) & (by < raster_b.shape[0])
        ok = np.zeros_like(mask_a)
        bxi, byi = bx[inside], by[inside]
        ok[inside] = inner_b[byi, bxi] & (pos_b[inside, 2] >= raster_b.depth[byi, bxi] - tolerance)
        valid = ok
    return flow, valid


@_one_thread
def render_pair(seed: int, size: int = 128, max_rotation_deg: float = 6.0, max_shift_px: float = 3.0,
                expression_change: float = 0.2, settings: FaceSettings | None = None,
                model: FaceModel | None = None) -> FramePair:
    """A frame pair of one identity: frame B is frame A moved by a small random rotation, shift,
    scale change and expression change; returns both images, the exact flow and its validity."""
    # Pairs stand in for preprocess crops of real videos (detector box + margin), where faces fill
    # less of the crop than in the evaluation's crops: keep their own fill range.
    settings = settings or FaceSettings(size=size, face_fill=(0.45, 0.65))
    model = model or face_model_for(settings)
    rng = np.random.default_rng([seed, 7])
    id_coeffs = sample_identity(rng, model.num_id, settings.id_std)
    exp_a = sample_expression(rng, model.num_exp, settings.expression_prob)
    pose_a = sample_pose(rng, min(settings.yaw_max_deg, 60), min(settings.pitch_max_deg, 25), min(settings.roll_max_deg, 20))
    box = rng.uniform(*settings.face_fill) * size
    centre = np.array([size / 2, size / 2]) + rng.uniform(-2, 2, 2)
    params_a = FaceParams(id_coeffs, exp_a, pose_a, 0.0, np.zeros(3))
    params_a.scale, params_a.translation = place_face(model, id_coeffs, exp_a, pose_a, box, tuple(centre))
    exp_b = np.clip(exp_a + rng.uniform(-1, 1, model.num_exp) * expression_change * (exp_a > 0), 0, 1).astype(np.float32)
    pose_b = (pose_a + np.radians(rng.uniform(-1, 1, 3) * max_rotation_deg)).astype(np.float32)
    params_b = FaceParams(id_coeffs, exp_b, pose_b, params_a.scale * rng.uniform(0.97, 1.03),
                          params_a.translation + np.r_[rng.uniform(-1, 1, 2) * max_shift_px, 0.0])
    skin = face_skin(model)
    albedo = random_albedo(skin, rng)
    light, ambient, diffuse = _random_light(rng)
    background = random_background(rng, size, size)
    # Shade once with A's geometry; both frames use these colours (brightness constancy).
    verts_a_model = skin.close(model_vertices(model, id_coeffs, exp_a))
    verts_a = project(verts_a_model, params_a.scale, euler_to_matrix(pose_a.astype(np.float64)), params_a.translation)
    colours = shade_albedo(verts_a, skin.triangles, albedo, light, ambient, diffuse)
    face_a = render_face(model, params_a, albedo, size, size, background, vertex_colours=colours)
    face_b = render_face(model, params_b, albedo, size, size, background, vertex_colours=colours)
    flow, valid = exact_flow(face_a.rendering.raster, skin.triangles, face_a.verts, face_b.verts, face_b.rendering.raster)
    return FramePair(face_a.image, face_b.image, flow, valid, face_a, face_b)


def _five_points(landmarks: np.ndarray) -> np.ndarray:
    """YuNet-style 5 points from the 68: eye centres (subject's right first), nose tip, mouth corners."""
    lm = np.asarray(landmarks)[:, :2]
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]]).astype(np.float32)


def _mask_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return np.zeros(4, np.float32)
    return np.array([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1], np.float32)


def synthetic_pair_rows(n: int, seed: int = 0, size: int = 128, **pair_kwargs) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """``n`` FRAME_PAIR_SCHEMA rows from synthetic pairs (exact flow in the ``flow`` column,
    GT 68-landmark pseudo-labels), plus their ground truth stacked in a side dict: ``flow`` and
    ``valid`` (n, S, S[, 2]), ``landmarks_3d_a/b`` (n, 68, 3), ``visible_a/b``, ``pose_a/b``,
    ``scale_a/b``, ``translation_a/b``, ``id_coeffs``, ``exp_coeffs_a/b``."""
    rows, gt = [], {k: [] for k in ("flow", "valid", "landmarks_3d_a", "landmarks_3d_b", "visible_a", "visible_b",
                                    "pose_a", "pose_b", "scale_a", "scale_b", "translation_a", "translation_b",
                                    "id_coeffs", "exp_coeffs_a", "exp_coeffs_b")}
    crop = records.crop_transform(0, 0, size, size).reshape(-1)
    for i in range(n):
        pair = render_pair(seed * 1_000_003 + i, size=size, **pair_kwargs)
        fa, fb = pair.face_a, pair.face_b
        lm_a, lm_b = np.nan_to_num(fa.landmarks_3d), np.nan_to_num(fb.landmarks_3d)
        video_id = f"synthetic-s{seed}-{i:06d}"
        rows.append({
            "pair_id": f"{video_id}/0/0-1",
            "video_id": video_id,
            "subject_id": video_id,
            "track_id": 0,
            "frame_a": 0,
            "frame_b": 1,
            "time_a": 0.0,
            "time_b": 1 / 25,
            "image_size": size,
            "image_a": records.encode_image(pair.image_a),
            "image_b": records.encode_image(pair.image_b),
            "flow": records.encode_flow(pair.flow),
            "box_a": _mask_box(fa.rendering.mask),
            "box_b": _mask_box(fb.rendering.mask),
            "crop_to_frame_a": crop,
            "crop_to_frame_b": crop,
            "det_landmarks_a": _five_points(lm_a).reshape(-1),
            "det_landmarks_b": _five_points(lm_b).reshape(-1),
            "det_score_a": 1.0,
            "det_score_b": 1.0,
            "landmarks_2d_a": lm_a[:, :2].astype(np.float32),
            "landmarks_2d_b": lm_b[:, :2].astype(np.float32),
            "blur_a": float(cv2.Laplacian(cv2.cvtColor(pair.image_a, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()),
            "blur_b": float(cv2.Laplacian(cv2.cvtColor(pair.image_b, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()),
            "flow_magnitude": float(np.linalg.norm(pair.flow[pair.valid], axis=-1).mean()) if pair.valid.any() else 0.0,
            "source_path": f"synthetic-pairs:seed={seed}",
        })
        for key, value in (("flow", pair.flow), ("valid", pair.valid), ("landmarks_3d_a", lm_a), ("landmarks_3d_b", lm_b),
                           ("visible_a", fa.landmarks_visible), ("visible_b", fb.landmarks_visible),
                           ("pose_a", fa.params.pose), ("pose_b", fb.params.pose), ("scale_a", fa.params.scale),
                           ("scale_b", fb.params.scale), ("translation_a", fa.params.translation),
                           ("translation_b", fb.params.translation), ("id_coeffs", fa.params.id_coeffs),
                           ("exp_coeffs_a", fa.params.exp_coeffs), ("exp_coeffs_b", fb.params.exp_coeffs)):
            gt[key].append(value)
    return rows, {k: np.asarray(v) for k, v in gt.items()}
