"""Face profiling's head proxy: the face model's closed mesh plus a shell round the back of the head,
its topology once per face model and its geometry per fitted face."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla
from scipy.spatial import cKDTree

from facepgn.facemodel import FaceModel
from facepgn.synthetic import FaceSkin, _boundary_loops, face_skin, model_vertices

# Shell: rings between the face border and the back pole (path fractions, denser near the border
# where the source sees the shell), and the head ellipsoid relative to the jaw width W = |lm0 - lm16|.
_RING_T = (np.arange(1, 13) / 13.0) ** 1.35
_HEAD_RADII = np.array([0.60, 0.90, 0.69])  # x (half width), y (half height), z (half depth) / W
_HEAD_CENTRE_BELOW_EYES = 0.10  # / W
_HEAD_CENTRE_BEHIND_NOSE = 0.85  # / W


# ---- the head proxy mesh (once per face model) -------------------------------------------------


@dataclass(frozen=True)
class HeadMesh:
    """The closed face mesh of a face model plus a head shell, and what texturing needs of it.

    Vertex order: the model's vertices, ``FaceSkin``'s hole-filling vertices (together
    ``num_closed``), then the shell rings (``len(boundary)`` vertices each, ring by ring), then the
    back pole. ``triangles[:num_face_triangles]`` are the face's (``FaceSkin.triangles``); all are
    wound outward. ``mirror`` is each vertex's left/right partner; ``adjacency`` the mesh graph
    (symmetric 0/1); ``core`` the face vertices inside the 68-landmark outline (jaw and brows) and
    the forehead up to the hair, which are always foreground (GrabCut's sure seeds); ``rigid`` blends the neck from turning with the head (at the jaw)
    to staying put (the bottom of the mesh), as a real neck twists while the shoulders stay.
    """

    skin: FaceSkin
    num_closed: int
    boundary: np.ndarray  # (N,) the face mask's outer border loop, model vertex ids in order
    triangles: np.ndarray  # (F, 3) int32
    num_face_triangles: int
    mirror: np.ndarray  # (V,) int64
    adjacency: sp.csr_matrix
    is_shell: np.ndarray  # (V,) bool
    core: np.ndarray  # (V,) bool
    rigid: np.ndarray  # (V,) 1: moves with the head; 0: stays where the source has it (the neck's base)
    ear_ids: np.ndarray  # model vertices of the ears, flattened to a membrane (see head_geometry)
    ear_solve: Any  # splu factor of the Laplacian on ear_ids
    ear_coupling: sp.csr_matrix  # Laplacian rows of ear_ids, columns of the other model vertices

    @property
    def num_vertices(self) -> int:
        return int(len(self.mirror))

    @property
    def num_rings(self) -> int:
        return len(_RING_T)


def _landmarks_of(model: FaceModel, verts: np.ndarray) -> np.ndarray:
    ids = np.asarray(model.landmark_ids)
    return np.where((ids >= 0)[:, None], verts[np.maximum(ids, 0)], np.nan)


def _head_ellipsoid(verts: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and radii (model frame) of an ellipsoid standing in for the whole head, sized from the
    fitted face (jaw width, eye height, nose tip) so it follows the identity."""
    lm = np.asarray(landmarks, np.float64)
    jaw_ok = bool(np.all(np.isfinite(lm[[0, 16]])))
    width = float(np.linalg.norm(lm[16] - lm[0])) if jaw_ok else 0.8 * float(np.ptp(verts[:, 0]))
    eyes = lm[36:48] if np.all(np.isfinite(lm[36:48])) else verts
    nose_z = float(lm[30, 2]) if np.all(np.isfinite(lm[30])) else float(verts[:, 2].max())
    centre_x = float((lm[0, 0] + lm[16, 0]) / 2) if jaw_ok else float(verts[:, 0].mean())
    centre = np.array([centre_x, float(eyes[:, 1].mean()) - _HEAD_CENTRE_BELOW_EYES * width,
                       nose_z - _HEAD_CENTRE_BEHIND_NOSE * width])
    return centre, _HEAD_RADII * width


def _shell_vertices(boundary_pts: np.ndarray, centre: np.ndarray, radii: np.ndarray,
                    extent: np.ndarray | None = None) -> np.ndarray:
    """Shell rings (K*N, 3) + back pole (1, 3): each border point's path runs at constant azimuth
    (about the view axis) from its own polar angle to the back pole, settling onto the ellipsoid
    scaled by ``extent`` (N,) along that path (1: the plain ellipsoid)."""
    lam = np.ones(len(boundary_pts)) if extent is None else np.asarray(extent, np.float64)
    r_path = radii[None, :] * lam[:, None]  # (N, 3)
    u = (boundary_pts - centre) / r_path
    rho = np.linalg.norm(u, axis=1)
    d = u / np.maximum(rho, 1e-9)[:, None]
    theta0 = np.arccos(np.clip(d[:, 2], -1, 1))
    phi = np.arctan2(d[:, 1], d[:, 0])
    rings = []
    for t in _RING_T:
        theta = theta0 + (np.pi - theta0) * t
        r = 1.0 + (rho - 1.0) * (1.0 - min(1.0, t / 0.35)) ** 2
        p = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], 1) * r[:, None]
        rings.append(centre + p * r_path)
    pole = centre + np.array([0.0, 0.0, -1.0]) * radii * float(lam.mean())
    return np.concatenate(rings + [pole[None]], 0)


def _ear_membrane(model: FaceModel, mean: np.ndarray, lm: np.ndarray, adjacency: sp.csr_matrix, boundary: np.ndarray,
                  pinned: np.ndarray) -> tuple[np.ndarray, Any, sp.csr_matrix]:
    """The ears (vertices near the mesh's widest points, behind the jaw) and a factorised harmonic
    fill of them from their surroundings. Why: seen edge-on in a frontal source, an ear's folds all
    sample the same thin strip of pixels; turned into view they print swirls. A flat membrane
    shows that strip as one smooth stretch instead."""
    nv = model.num_vertices
    width = float(np.linalg.norm(lm[16] - lm[0])) if np.all(np.isfinite(lm[[0, 16]])) else 0.8 * float(np.ptp(mean[:, 0]))
    xm = float(np.abs(mean[:, 0]).max())
    region = np.zeros(nv, bool)
    for side in (1.0, -1.0):
        sel = side * mean[:, 0] > 0.95 * xm
        if not sel.any():
            continue
        centre = mean[sel].mean(0) - np.array([side * 0.08 * width, 0.06 * width, 0.0])
        if np.all(np.isfinite(lm[[0, 16]])) and centre[2] > max(lm[0, 2], lm[16, 2]):
            continue  # the widest points are not behind the jaw: no ears in this model
        region |= np.linalg.norm(mean - centre, axis=1) < 0.27 * width
    region[boundary] = False
    region &= ~pinned
    ids = np.flatnonzero(region)
    if not len(ids):
        return ids, None, sp.csr_matrix((0, nv))
    a = adjacency[:nv, :nv]
    lap = sp.diags(np.asarray(a.sum(1)).ravel()) - a
    rows = lap[ids]
    other = np.flatnonzero(~region)
    return ids, sla.splu(rows[:, ids].tocsc()), rows[:, other].tocsr()


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


_HEAD_CACHE: "weakref.WeakKeyDictionary[FaceModel, HeadMesh]" = weakref.WeakKeyDictionary()


def _shell_triangles(boundary: np.ndarray, num_closed: int, face_triangles: np.ndarray) -> np.ndarray:
    """The shell's triangles: strips between the border and the rings, a fan to the pole, wound as the face."""
    n = len(boundary)
    k = len(_RING_T)
    ring_ids = [boundary.astype(np.int64)] + [num_closed + r * n + np.arange(n) for r in range(k)]
    pole = num_closed + k * n
    tris = []
    for a, b in zip(ring_ids[:-1], ring_ids[1:]):
        a1, b1 = np.roll(a, -1), np.roll(b, -1)
        tris += [np.stack([a, a1, b1], 1), np.stack([a, b1, b], 1)]
    last = ring_ids[-1]
    tris.append(np.stack([last, np.roll(last, -1), np.full(n, pole)], 1))
    shell_tris = np.concatenate(tris)
    # The strips are built with one winding; flip them all if the face walks the border edges
    # (a -> next a) the same way the first strip does, so every edge is walked once each way.
    face_tris = face_triangles
    face_edges = set(map(tuple, np.concatenate([face_tris[:, [0, 1]], face_tris[:, [1, 2]], face_tris[:, [2, 0]]]).tolist()))
    same = sum((int(a), int(b)) in face_edges for a, b in zip(boundary, np.roll(boundary, -1)))
    if same > n // 2:
        shell_tris = shell_tris[:, [0, 2, 1]]
    return shell_tris


def _vertex_adjacency(triangles: np.ndarray, v: int) -> sp.csr_matrix:
    """The mesh graph: 1 between vertices that share an edge, 0 on the diagonal."""
    e = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    adj = sp.coo_matrix((np.ones(len(e) * 2), (np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]])), shape=(v, v)).tocsr()
    adj.data[:] = 1.0
    adj.setdiag(0)
    adj.eliminate_zeros()
    return adj


def _core_mask(model: FaceModel, skin: FaceSkin, closed: np.ndarray, lm: np.ndarray, v: int) -> np.ndarray:
    """The vertices surely on the person (GrabCut's seed): the face inside its outline and the forehead."""
    nc = len(closed)
    # Core: inside the outline jaw (0-16) + brows (26..17) raised a little, in the frontal layout.
    core = np.zeros(v, bool)
    outline_ids = list(range(17)) + list(range(26, 16, -1))
    if np.all(np.isfinite(lm[outline_ids])):
        outline = lm[outline_ids, :2].copy()
        top = float(np.nanmax(lm[:, 1]) - np.nanmin(lm[:, 1]))
        outline[17:, 1] += 0.05 * top
        path = outline.astype(np.float32).reshape(-1, 1, 2)
        front = closed[:, 2] > np.nanmin(lm[:, 2])
        core[:nc] = front & np.array([cv2.pointPolygonTest(path, (float(x), float(y)), False) >= 0 for x, y in closed[:, :2]])
    else:
        core[: model.num_vertices] = True
    # ... and the forehead up to the hairline and beyond (hair or scalp: the person either way), so
    # GrabCut learns the hair's colour even where it is the wall's.
    height = skin.regions.get("height")
    if height is not None and np.all(np.isfinite(lm[[0, 16]])):
        half_width = 0.5 * float(np.linalg.norm(lm[16] - lm[0]))
        band = (height > 0.1) & (height < 0.75) & (np.abs(closed[:, 0] - 0.5 * (lm[0, 0] + lm[16, 0])) < 0.7 * half_width)
        core[:nc] |= band & (closed[:, 2] > np.nanmin(lm[:, 2]))
    return core


def _landmark_pins(model: FaceModel) -> np.ndarray:
    """The landmark vertices (68 and jaw contours): their surface must not move."""
    pinned = np.zeros(model.num_vertices, bool)
    for ids in (model.landmark_ids, model.jaw_right_ids, model.jaw_left_ids):
        if ids is not None:
            pinned[np.asarray(ids)[np.asarray(ids) >= 0]] = True
    return pinned


def _rigidity(model: FaceModel, mean: np.ndarray, lm: np.ndarray, boundary: np.ndarray, nc: int, v: int,
              pinned: np.ndarray) -> np.ndarray:
    """How much each vertex turns with the head: 1 down to the jaw, fading to 0 down the neck; the shell's
    rings blend from the border's value to 1."""
    n = len(boundary)
    rigid = np.ones(v)
    if np.isfinite(lm[8, 1]):
        span = max(lm[8, 1] - float(mean[:, 1].min()), 1e-6)
        rigid[: model.num_vertices] = 1 - _smoothstep((lm[8, 1] - mean[:, 1]) / span, 0.1, 1.0)
        rigid[: model.num_vertices][pinned] = 1.0
        rb = rigid[boundary]
        for r, t in enumerate(_RING_T):
            rigid[nc + r * n: nc + (r + 1) * n] = rb + (1 - rb) * _smoothstep(np.full(n, t), 0.2, 0.8)
    return rigid


def head_mesh(model: FaceModel) -> HeadMesh:
    """Build (once per model object) the head proxy's topology from the mean shape."""
    cached = _HEAD_CACHE.get(model)
    if cached is not None:
        return cached
    skin = face_skin(model)
    mean = np.asarray(model.mean, np.float64)
    closed = skin.close(mean)
    nc = len(closed)
    loops = _boundary_loops(np.asarray(model.triangles, np.int64))
    if not loops:
        raise ValueError(f"{model.name}: the face mesh has no open border to grow a head shell from")
    boundary = max(loops, key=len)
    lm = _landmarks_of(model, mean)
    centre, radii = _head_ellipsoid(mean, lm)
    shell = _shell_vertices(mean[boundary], centre, radii)
    shell_tris = _shell_triangles(boundary, nc, np.asarray(skin.triangles, np.int64))
    verts = np.concatenate([closed, shell], 0)
    triangles = np.concatenate([np.asarray(skin.triangles, np.int64), shell_tris]).astype(np.int32)
    mirrored = verts * np.array([-1.0, 1.0, 1.0]) + np.array([2 * centre[0], 0.0, 0.0])
    _, mirror = cKDTree(verts).query(mirrored)
    v = len(verts)
    adj = _vertex_adjacency(triangles, v)
    core = _core_mask(model, skin, closed, lm, v)
    pinned = _landmark_pins(model)
    ear_ids, ear_solve, ear_coupling = _ear_membrane(model, mean, lm, adj, boundary, pinned)
    rigid = _rigidity(model, mean, lm, boundary, nc, v, pinned)
    head = HeadMesh(skin=skin, num_closed=nc, boundary=np.asarray(boundary, np.int64), triangles=triangles,
                    num_face_triangles=len(skin.triangles), mirror=np.asarray(mirror, np.int64), adjacency=adj,
                    is_shell=np.arange(v) >= nc, core=core, rigid=rigid, ear_ids=ear_ids, ear_solve=ear_solve,
                    ear_coupling=ear_coupling)
    _HEAD_CACHE[model] = head
    return head


@dataclass
class HeadGeometry:
    """The fitted face's closed mesh (model frame) and the head ellipsoid its shell grows onto."""

    closed: np.ndarray  # (num_closed, 3)
    centre: np.ndarray
    radii: np.ndarray
    landmarks: np.ndarray  # (68, 3), NaN where the model has none

    def vertices(self, head: HeadMesh, extent: np.ndarray | None = None) -> np.ndarray:
        """All head proxy vertices (V, 3), the shell scaled per path by ``extent``."""
        shell = _shell_vertices(self.closed[head.boundary], self.centre, self.radii, extent)
        return np.concatenate([self.closed, shell], 0)


def head_geometry(model: FaceModel, head: HeadMesh, id_coeffs: np.ndarray, exp_coeffs: np.ndarray) -> HeadGeometry:
    verts = model_vertices(model, id_coeffs, exp_coeffs)
    lm = _landmarks_of(model, verts)
    centre, radii = _head_ellipsoid(verts, lm)
    if len(head.ear_ids):
        other = np.ones(len(verts), bool)
        other[head.ear_ids] = False
        verts = verts.copy()
        verts[head.ear_ids] = head.ear_solve.solve(-(head.ear_coupling @ verts[other]))
    return HeadGeometry(head.skin.close(verts), centre, radii, lm)
