"""The face model's mesh made renderable (eye and mouth holes closed) and its per-vertex
appearance: feature regions (lips, brows, lash lines, nostrils, eyes, mouth) and random albedo."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import cv2
import numpy as np

from facepgn.facemodel import FaceModel

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

    weight_rows, offsets, new_tris, extra_kind = _hole_fills(mean, tris, lm, face_h)
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
    regions = _feature_regions(closed_mean, mean, lm, extra_kind, face_h)

    centre = np.nanmean(lm, 0)
    skin = FaceSkin(
        triangles=triangles,
        fill_ids=fill_ids,
        fill_weights=weights,
        fill_offsets=offs,
        regions=regions,
        texture_coords=((closed_mean - centre) / face_h).astype(np.float32),
    )
    _SKIN_CACHE[model] = skin
    return skin


def _hole_fills(mean: np.ndarray, tris: np.ndarray, lm: np.ndarray, face_h: float
                ) -> tuple[list[dict[int, float]], list[np.ndarray], list[tuple[int, int, int]], list[str]]:
    """The vertices and triangles that close the eye and mouth holes of the mesh (mean shape
    ``mean``, landmarks ``lm``): per extra vertex its weights over the mesh's vertices, its offset
    and its kind (mouth, pupil, sclera, iris), and the new triangles (ids after the V mesh vertices)."""
    loops = _boundary_loops(tris)
    if loops:
        loops.sort(key=len)
        loops = loops[:-1]  # the longest loop is the outer border of the mask
    centres = {
        "eye_r": np.nanmean(lm[_EYE_R], 0),
        "eye_l": np.nanmean(lm[_EYE_L], 0),
        "mouth": np.nanmean(lm[_LIPS_INNER], 0),
    }
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
    return weight_rows, offsets, new_tris, extra_kind


def _feature_regions(closed_mean: np.ndarray, mean: np.ndarray, lm: np.ndarray, extra_kind: list[str],
                     face_h: float) -> dict[str, np.ndarray]:
    """Per-vertex feature weights over the closed mean shape, from its frontal (x, y) layout."""
    xy = closed_mean[:, :2]
    v_all = len(closed_mean)
    v_base = len(mean)
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
    return regions


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
