"""Face profiling: new large-pose views of a fitted real face, with exact 3D landmarks.

Why: the model never sees real faces turning, so it fails on real faces at large yaw. 300W-LP was
made from 300W this way (Zhu et al., "Face Alignment Across Large Poses: A 3D Solution", CVPR 2016,
"Face Profiling"): take a near-frontal face with a fitted 3DMM, texture the fitted mesh from the
photo, rotate it to new poses and re-render; the landmarks of every view are exact by construction.

How (per face record, plain numpy/cv2/torch, no Ray):

* **Head proxy.** The face model's mesh (eye and mouth holes closed by ``FaceSkin.close``; the
  ears, which a frontal photo sees edge-on, flattened to a membrane) is closed at the back by a
  *shell*: rings of vertices running from the face mask's outer border over an ellipsoid fitted
  to the face (sized from the jaw width) to a pole at the back of the head. The shell stands in
  for the hair and skull that the face area does not cover; its extent along each ring is fitted
  so its silhouette in the source meets the person's outline (GrabCut, seeded with the face and
  forehead). Face + shell is closed: no inside of the mask can show. The neck blends from turning
  with the head (at the jaw) to staying put (at the bottom), as a real neck twists.
* **Texture without UVs.** Each vertex samples the source crop at its own projection there (the
  source image is the texture; barycentric interpolation of those source coordinates gives
  per-pixel sampling at the crop's full resolution, so a coarse mesh costs no sharpness). A
  vertex's own sample is trusted by z-buffer visibility times a foreshortening weight; where it
  is not, the vertex takes its left/right partner's sample (the nearest vertex of the x-mirrored
  mean shape), colour-matched to the own side's lighting; where neither side sees it (back of the
  head, under the chin) source coordinates are propagated over the mesh graph from the nearest
  textured vertices on the person, sampled from a blurred source (soft streaks, not sharp ones).
  The three layers blend with interpolated weights: no seams.
* **Surroundings.** The rotated, re-centred, re-scaled head (its 68-landmark box matches the
  input's) is rendered with the project's z-buffer rasteriser over the source crop warped
  radially about the head, so that the source's head outline lands on the view's and the crop
  border stays put: hair, shoulders and scene next to the head follow it continuously (300W-LP's
  triangulated image warp, without its folds). With a ``background`` the scene is replaced and the
  person's own hair and body (the GrabCut foreground) are kept.

Entry points: :func:`profile_views` (the per-item function a Ray job maps over records; rows out),
:func:`profile_record` (the same plus the skip reason and timings), :func:`skip_reason`,
:func:`profile_contact_sheet`, and :func:`fit_photo_record` (a quick 2D-landmark fit of a photo, for
eyeballing profiles before the pseudo-labeller exists; not a labeller).
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla
from scipy.spatial import cKDTree

from facepgn import records, render
from facepgn.facemodel import FaceModel
from facepgn.geometry import euler_to_matrix, matrix_to_euler, project
from facepgn.synthetic import FaceSkin, _boundary_loops, face_skin, model_vertices, place_face, single_threaded

#: Why :func:`profile_record` made no views of a record.
SKIP_REASONS = (
    "no_coefficients",  # id/exp coefficients, pose, scale or translation missing
    "face_model_mismatch",  # the record's face model / coefficient counts are not the given model's
    "yaw_out_of_range",  # source yaw beyond max_source_yaw_deg: too much of the face unseen
    "landmarks_disagree",  # the record's landmarks are not where its coefficients and pose put them
    "bad_image",  # undecodable or not the record's image_size
)

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


_HEAD_CACHE: "weakref.WeakKeyDictionary[FaceModel, HeadMesh]" = weakref.WeakKeyDictionary()


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
    n = len(boundary)
    lm = _landmarks_of(model, mean)
    centre, radii = _head_ellipsoid(mean, lm)
    shell = _shell_vertices(mean[boundary], centre, radii)
    k = len(_RING_T)
    ring_ids = [boundary.astype(np.int64)] + [nc + r * n + np.arange(n) for r in range(k)]
    pole = nc + k * n
    tris = []
    for a, b in zip(ring_ids[:-1], ring_ids[1:]):
        a1, b1 = np.roll(a, -1), np.roll(b, -1)
        tris += [np.stack([a, a1, b1], 1), np.stack([a, b1, b], 1)]
    last = ring_ids[-1]
    tris.append(np.stack([last, np.roll(last, -1), np.full(n, pole)], 1))
    shell_tris = np.concatenate(tris)
    verts = np.concatenate([closed, shell], 0)
    # The strips are built with one winding; flip them all if the face walks the border edges
    # (a -> next a) the same way the first strip does, so every edge is walked once each way.
    face_tris = np.asarray(skin.triangles, np.int64)
    face_edges = set(map(tuple, np.concatenate([face_tris[:, [0, 1]], face_tris[:, [1, 2]], face_tris[:, [2, 0]]]).tolist()))
    same = sum((int(a), int(b)) in face_edges for a, b in zip(boundary, np.roll(boundary, -1)))
    if same > n // 2:
        shell_tris = shell_tris[:, [0, 2, 1]]
    triangles = np.concatenate([np.asarray(skin.triangles, np.int64), shell_tris]).astype(np.int32)
    mirrored = verts * np.array([-1.0, 1.0, 1.0]) + np.array([2 * centre[0], 0.0, 0.0])
    _, mirror = cKDTree(verts).query(mirrored)
    e = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    v = len(verts)
    adj = sp.coo_matrix((np.ones(len(e) * 2), (np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]])), shape=(v, v)).tocsr()
    adj.data[:] = 1.0
    adj.setdiag(0)
    adj.eliminate_zeros()
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
    pinned = np.zeros(model.num_vertices, bool)  # landmark vertices: their surface must not move
    for ids in (model.landmark_ids, model.jaw_right_ids, model.jaw_left_ids):
        if ids is not None:
            pinned[np.asarray(ids)[np.asarray(ids) >= 0]] = True
    ear_ids, ear_solve, ear_coupling = _ear_membrane(model, mean, lm, adj, boundary, pinned)
    rigid = np.ones(v)
    if np.isfinite(lm[8, 1]):
        span = max(lm[8, 1] - float(mean[:, 1].min()), 1e-6)
        rigid[: model.num_vertices] = 1 - _smoothstep((lm[8, 1] - mean[:, 1]) / span, 0.1, 1.0)
        rigid[: model.num_vertices][pinned] = 1.0
        rb = rigid[boundary]
        for r, t in enumerate(_RING_T):
            rigid[nc + r * n: nc + (r + 1) * n] = rb + (1 - rb) * _smoothstep(np.full(n, t), 0.2, 0.8)
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


# ---- the source view: foreground, shell extent, texture ----------------------------------------


def _propagate(adjacency: sp.csr_matrix, values: np.ndarray, known: np.ndarray, max_steps: int = 400) -> np.ndarray:
    """Fill unknown vertices' values front by front from known neighbours (mean of the known ones):
    the nearest known texture is stretched over what the source never saw."""
    values = np.array(values, np.float64, copy=True)
    known = np.array(known, bool, copy=True)
    for _ in range(max_steps):
        if known.all():
            break
        k = known.astype(np.float64)
        count = adjacency @ k
        total = adjacency @ (values * k[:, None])
        new = ~known & (count > 0)
        if not new.any():
            break
        values[new] = total[new] / count[new, None]
        known |= new
    return values


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _sample(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear values (N, C) float of ``image`` (H, W[, C]) at points (N, 2)."""
    xy = np.asarray(xy, np.float32).reshape(-1, 1, 2)
    out = cv2.remap(image, xy[..., 0], xy[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(len(xy), -1).astype(np.float64)


def head_foreground(image: np.ndarray, sure: np.ndarray, likely: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Soft (H, W) float32 mask of the person's head and hair in the source crop, by GrabCut seeded
    with the face core (sure) and the head proxy (likely); everything else starts as likely
    background. Why: the head proxy's ellipsoid is only a guess of where the hair ends, and the
    source's background must not turn with the head."""
    h, w = image.shape[:2]
    fallback = cv2.GaussianBlur(likely.astype(np.float32), (0, 0), 0.7)
    if not sure.any() or likely.all():
        return fallback
    mask = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    mask[likely] = cv2.GC_PR_FGD
    mask[sure] = cv2.GC_FGD
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    try:
        cv2.grabCut(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return fallback
    fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    fg = cv2.morphologyEx(cv2.morphologyEx(fg, cv2.MORPH_OPEN, k), cv2.MORPH_CLOSE, k)
    n, labels = cv2.connectedComponents(fg)
    if n > 2:  # keep what is connected to the face
        keep = np.unique(labels[sure & (fg > 0)])
        fg = np.isin(labels, keep[keep > 0]).astype(np.uint8)
    fg = np.maximum(fg, sure.astype(np.uint8))
    if fg.sum() < 0.5 * sure.sum():
        return fallback
    return cv2.GaussianBlur(fg.astype(np.float32), (0, 0), 0.7)


def _body_prior(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Where the neck and shoulders probably are: below the chin, widening from the jaw's width to
    the whole crop at the bottom (GrabCut's likely foreground, so that a new background keeps the
    person's clothes)."""
    prior = np.zeros((size, size), bool)
    lm = landmarks[np.all(np.isfinite(landmarks[:, :2]), 1)]
    if len(lm) < 3:
        return prior
    top = int(np.clip(np.ceil(lm[:, 1].max()), 0, size))
    left, right = float(lm[:, 0].min()), float(lm[:, 0].max())
    for y in range(top, size):
        t = (y - top) / max(size - 1 - top, 1)
        prior[y, max(0, int(round(left * (1 - t)))): int(round(right + (size - 1 - right) * t)) + 1] = True
    return prior


def fit_shell_extent(head: HeadMesh, verts_src: np.ndarray, centre_src: np.ndarray, foreground: np.ndarray,
                     limits: tuple[float, float] = (0.75, 1.3)) -> np.ndarray:
    """Per-path scale (N,) of the head ellipsoid that puts the shell's silhouette in the source on
    the foreground's edge, so the hair outline turns with the head and no background is carried
    along. Paths pointing down (the neck and body, part of the foreground) are not grown."""
    h, w = foreground.shape
    n, k = len(head.boundary), head.num_rings
    rings = np.concatenate([verts_src[head.boundary][None], verts_src[head.num_closed: head.num_closed + n * k].reshape(k, n, 3)], 0)
    rel = rings[..., :2] - centre_src[:2]  # (K+1, N, 2)
    dist = np.linalg.norm(rel, axis=-1)
    kmax = dist.argmax(0)
    r_shell = dist[kmax, np.arange(n)]
    direction = rel[kmax, np.arange(n)] / np.maximum(r_shell, 1e-6)[:, None]
    r_border = dist[0]
    steps = np.linspace(0.0, limits[1] * 1.05, 64)[None, :] * r_shell[:, None]  # (N, S)
    pts = centre_src[None, None, :2] + steps[..., None] * direction[:, None, :]
    inside = (pts[..., 0] >= 0) & (pts[..., 0] <= w - 1) & (pts[..., 1] >= 0) & (pts[..., 1] <= h - 1)
    fg = _sample(foreground, pts.reshape(-1, 2)).reshape(n, -1)
    outside = (fg < 0.5) & (steps > r_border[:, None]) & inside
    first = np.where(outside.any(1), outside.argmax(1), steps.shape[1] - 1)
    # Off the crop the foreground is unknown: keep the shell as it is where its edge leaves the crop.
    off = ~outside.any(1) & ~inside[:, -1]
    r_fg = steps[np.arange(n), first]
    lam = np.clip(r_fg / np.maximum(r_shell, 1e-6), *limits)
    lam[off] = 1.0
    down = direction[:, 1] > 0.6  # image y down: the neck
    lam[down] = np.minimum(lam[down], 1.0)
    # Smooth round the loop: median against single-ray outliers, then a small blur.
    pad = 6
    wrapped = np.r_[lam[-pad:], lam, lam[:pad]]
    med = np.array([np.median(wrapped[i: i + 2 * pad + 1]) for i in range(n)])
    kernel = np.exp(-0.5 * (np.arange(-pad, pad + 1) / 3.0) ** 2)
    kernel /= kernel.sum()
    return np.convolve(np.r_[med[-pad:], med, med[:pad]], kernel, mode="valid")


@dataclass
class HeadTexture:
    """Per-vertex texture of the head proxy in source-crop coordinates (see the module docstring).

    ``own``/``partner``/``fill`` (V, 2): where each vertex's own projection, its mirror partner's
    and the propagated fill sample the source; ``weights`` (V, 4) blend own, partner, own from the
    blurred source (stretched) and fill (rows sum to 1);
    ``gain`` (V, 3) matches the partner's colour to the own side's lighting; ``opaque`` (V,) 1 on
    the face mesh (foreground whatever the segmentation says), 0 on the shell.
    """

    own: np.ndarray
    partner: np.ndarray
    fill: np.ndarray
    weights: np.ndarray
    gain: np.ndarray
    opaque: np.ndarray
    source_visible: np.ndarray  # (V,) bool, z-buffer visibility in the source view


def head_texture(head: HeadMesh, verts_src: np.ndarray, image: np.ndarray, foreground: np.ndarray,
                 raster: render.Raster | None = None, grazing: tuple[float, float] = (0.12, 0.45),
                 fill_smoothing: int = 20) -> HeadTexture:
    """Texture the head proxy from the source crop (``verts_src``: its image-space vertices there).

    ``grazing`` (lo, hi): surface whose normal's z (towards the camera) is below ``lo`` is too
    foreshortened in the source to trust; above ``hi`` it is fully trusted."""
    h, w = image.shape[:2]
    tris = head.triangles
    if raster is None:
        raster = render.rasterize(verts_src, tris, h, w, cull_backfaces=False)
    visible = render.vertex_visibility(verts_src, raster)
    nz = render.vertex_normals(verts_src, tris)[:, 2]
    own = verts_src[:, :2].astype(np.float64)
    # On the shell (a guess of the hair's extent), a sample of the source's background is no
    # texture: that vertex takes its partner's or the nearest hair instead. The face mesh keeps its
    # own samples whatever the segmentation says (GrabCut loses blonde hair on a beige wall).
    on_person = np.where(head.is_shell, _smoothstep(_sample(foreground, own)[:, 0], 0.3, 0.7), 1.0)
    trust = visible * _smoothstep(nz, *grazing) * on_person
    seen = visible * _smoothstep(nz, -0.1, 0.12) * on_person  # front-facing at all: stretched, but the right place
    partner = own[head.mirror]
    trust_p = trust[head.mirror]
    rest = (1 - trust) * (1 - trust_p)
    # own sharp, partner sharp, own stretched (from the blurred source: a stretched strip is blurry
    # anyway, and sharp it prints streaks), fill (blurred)
    weights = np.stack([trust, (1 - trust) * trust_p, rest * seen, rest * (1 - seen)], 1)
    # Fill: the better of own/partner where either is good (and, on the shell, on the person),
    # propagated over the rest.
    # (Grazing but seen counts: it is the source's silhouette, whose colour -- hair, an ear -- is
    # the best guess for the unseen side of the head, better than the cheek next to it.)
    # Only samples of the person seed the fill: a wall seen past a tight hairdo must not become the
    # back of the head.
    own_q = np.maximum(trust, seen)
    best = np.where((own_q >= trust_p)[:, None], own, partner)
    known = (np.maximum(own_q, trust_p) > 0.5) & (head.core | (_sample(foreground, best)[:, 0] > 0.5))
    fill = _propagate(head.adjacency, best, known) if known.any() else best
    # Smooth where the fronts met (known vertices fixed): no hard edges between stretched patches;
    # few passes, so coordinates stay local (a full harmonic fill would average round the head and
    # sample the middle of the face).
    deg = np.maximum(np.asarray(head.adjacency.sum(1)).ravel(), 1)[:, None]
    free = ~known
    for _ in range(fill_smoothing):
        fill[free] = ((head.adjacency @ fill) / deg)[free]
    # Lighting of the partner's side -> own side: colour ratio where both are seen, spread outward.
    blur = cv2.GaussianBlur(image, (0, 0), max(1.0, w / 64)).astype(np.float32)
    ratio = (_sample(blur, own) + 8.0) / (_sample(blur, partner) + 8.0)
    both = (trust > 0.5) & (trust_p > 0.5) & ~head.is_shell
    gain = np.ones_like(ratio)
    if both.any():
        gain = _propagate(head.adjacency, np.where(both[:, None], ratio, 1.0), both)
        deg = np.maximum(np.asarray(head.adjacency.sum(1)).ravel(), 1)[:, None]
        for _ in range(10):  # a blotchy gain would print its own pattern
            gain = 0.5 * gain + 0.5 * (head.adjacency @ gain) / deg
        gain = np.clip(gain, 0.6, 1.6)
    return HeadTexture(own=own, partner=partner, fill=fill, weights=weights, gain=gain,
                       opaque=(~head.is_shell).astype(np.float64), source_visible=visible)


def render_head(head: HeadMesh, texture: HeadTexture, verts: np.ndarray, image: np.ndarray, blurred: np.ndarray,
                foreground: np.ndarray, feather_px: float = 0.7) -> tuple[np.ndarray, np.ndarray, np.ndarray, render.Raster]:
    """The textured head proxy at image-space ``verts``: colour (H, W, 3) float32, opacity (H, W),
    how much of each pixel's texture the source saw sharply (own or partner sample, (H, W)) and
    the raster. Opacity is 1 on the face mesh and on what the source never saw (the back of
    the head), the source foreground where the shell's texture comes from, feathered at the
    silhouette."""
    h, w = image.shape[:2]
    raster = render.rasterize(verts, head.triangles, h, w, cull_backfaces=False)
    mask = raster.mask
    colour = np.zeros((h, w, 3), np.float32)
    alpha = np.zeros((h, w), np.float32)
    if not mask.any():
        return colour, alpha, np.zeros((h, w), np.float32), raster
    attrs = np.concatenate([texture.own, texture.partner, texture.fill, texture.weights, texture.gain,
                            texture.opaque[:, None]], 1)
    pix = render.interpolate(raster, head.triangles, attrs)
    wts = pix[..., 6:10] / np.maximum(pix[..., 6:10].sum(-1, keepdims=True), 1e-6)
    for j, (src, layer) in enumerate(((image, 0), (image, 2), (blurred, 0), (blurred, 4))):
        if not (wts[..., j][mask] > 1e-3).any():
            continue
        mx, my = pix[..., layer].astype(np.float32), pix[..., layer + 1].astype(np.float32)
        rgb = cv2.remap(src, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        if j == 1:
            rgb = rgb * pix[..., 10:13]
        # The fill covers what the source never saw (the back of the head): opaque.
        fg = cv2.remap(foreground, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) if j < 3 else 1.0
        colour += rgb * wts[..., j: j + 1]
        alpha += fg * wts[..., j]
    alpha = np.maximum(alpha, np.clip(pix[..., 13], 0.0, 1.0)) * mask
    if feather_px > 0:  # soften the silhouette on its inner side only
        edge = np.clip(cv2.GaussianBlur(mask.astype(np.float32), (0, 0), feather_px) * 2.0, 0.0, 1.0)
        alpha *= edge
    return colour, alpha, (wts[..., 0] + wts[..., 1]) * mask, raster


def outline_radii(mask: np.ndarray, centre: np.ndarray, n_angles: int = 180) -> np.ndarray:
    """(n_angles,) distance from ``centre`` to the outermost pixel of ``mask`` along rays at angles
    2 pi k / n (0 where a ray meets none)."""
    h, w = mask.shape
    angles = np.arange(n_angles) * (2 * np.pi / n_angles)
    steps = np.arange(0.0, float(np.hypot(h, w)), 0.5)
    x = centre[0] + np.cos(angles)[:, None] * steps[None]
    y = centre[1] + np.sin(angles)[:, None] * steps[None]
    xi, yi = np.round(x).astype(np.int64), np.round(y).astype(np.int64)
    ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    hit = np.zeros_like(ok)
    hit[ok] = mask[yi[ok], xi[ok]]
    last = np.where(hit.any(1), hit.shape[1] - 1 - np.argmax(hit[:, ::-1], axis=1), 0)
    return steps[last] * hit.any(1)


def _smooth_circular(values: np.ndarray, sigma: float) -> np.ndarray:
    n = len(values)
    half = min(n // 2, int(np.ceil(3 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    return np.convolve(np.r_[values[-half:], values, values[:half]], kernel, mode="valid") if half else values


def surround_warp(size: int, centre: np.ndarray, radii_src: np.ndarray, radii_dst: np.ndarray,
                  smooth: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Backward maps (map_x, map_y) of a radial warp of the crop about ``centre``: the source's
    head outline (``radii_src``, see :func:`outline_radii`) goes onto the view's (``radii_dst``)
    and the crop border stays put, linearly in between. Why: the hair, neck and scene next to the
    head follow its new outline continuously (300W-LP's image warp, without its folds), instead of
    a turned head pasted on a still photo. ``smooth``: circular blur of the radii (angle steps),
    so a jagged outline does not print radial streaks."""
    n = len(radii_dst)
    r_src = _smooth_circular(np.asarray(radii_src, np.float64), smooth)
    r_dst = _smooth_circular(np.asarray(radii_dst, np.float64), smooth)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = xs - centre[0], ys - centre[1]
    rho = np.hypot(dx, dy)
    phi = np.mod(np.arctan2(dy, dx), 2 * np.pi)
    grid = np.arange(n + 1) * (2 * np.pi / n)
    r_t = np.interp(phi, grid, np.r_[r_dst, r_dst[:1]])
    r_s = np.interp(phi, grid, np.r_[r_src, r_src[:1]])
    ux, uy = np.cos(phi), np.sin(phi)
    with np.errstate(divide="ignore", invalid="ignore"):  # distance to the crop border along the ray
        tx = np.where(ux > 1e-9, (size - 1 - centre[0]) / ux, np.where(ux < -1e-9, -centre[0] / ux, np.inf))
        ty = np.where(uy > 1e-9, (size - 1 - centre[1]) / uy, np.where(uy < -1e-9, -centre[1] / uy, np.inf))
    border = np.maximum(np.minimum(tx, ty), np.maximum(r_t, r_s) + 1.0)
    # Where the source head reaches the crop's edge there is next to nothing left to stretch: take
    # the band from inside its outline (hair) rather than smear the last pixels into a sunburst.
    r_s = np.where(r_s > r_t, np.minimum(r_s, border - 0.5 * (border - r_t)), r_s)
    # rho in [r_t, border] maps linearly onto [r_s, border]; inside the head: scaled.
    src_rho = np.where(rho >= r_t, r_s + (rho - r_t) * (border - r_s) / np.maximum(border - r_t, 1e-6),
                       rho * r_s / np.maximum(r_t, 1e-6))
    return (centre[0] + src_rho * ux).astype(np.float32), (centre[1] + src_rho * uy).astype(np.float32)


# ---- views -------------------------------------------------------------------------------------


@dataclass
class ProfileOutcome:
    """What :func:`profile_record` made of one record: rows (maybe fewer than asked), the reason
    when it made none, figures and per-stage seconds."""

    rows: list[dict[str, Any]]
    reason: str | None = None
    figures: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _array(record: Mapping[str, Any], name: str) -> np.ndarray | None:
    value = record.get(name)
    return None if value is None else np.asarray(value, np.float64).reshape(-1)


def skip_reason(record: Mapping[str, Any], face_model: FaceModel, max_source_yaw_deg: float = 45.0,
                max_landmark_error: float = 0.1) -> str | None:
    """Why ``record`` cannot be profiled with ``face_model`` (one of :data:`SKIP_REASONS`), or None.

    ``max_landmark_error``: mean distance between the record's 2D landmarks and the model's
    projected ones, over the landmark box side (catches a wrong model, landmark definition or pose
    convention, which would make every view's labels wrong)."""
    ids, exps = _array(record, "id_coeffs"), _array(record, "exp_coeffs")
    pose, scale, trans = _array(record, "pose"), record.get("scale"), _array(record, "translation")
    if ids is None or exps is None or pose is None or scale is None or trans is None or pose.size != 3 or trans.size != 3:
        return "no_coefficients"
    if not all(np.all(np.isfinite(a)) for a in (ids, exps, pose, trans, np.float64(scale))) or float(scale) <= 0:
        return "no_coefficients"
    name = record.get("face_model")
    if (name is not None and name != face_model.name) or len(ids) != face_model.num_id or len(exps) != face_model.num_exp:
        return "face_model_mismatch"
    yaw = float(np.degrees(matrix_to_euler(euler_to_matrix(pose))[1]))
    if abs(yaw) > max_source_yaw_deg:
        return "yaw_out_of_range"
    lm2d = _array(record, "landmarks_2d")
    if lm2d is not None and lm2d.size == 136:
        lm2d = lm2d.reshape(68, 2)
        with single_threaded():
            pts = face_model.landmarks(ids.astype(np.float32), exps.astype(np.float32))
        pts = project(np.asarray(pts, np.float64), float(scale), euler_to_matrix(pose), trans)[:, :2]
        ok = face_model.landmark_mask & np.all(np.isfinite(lm2d), 1)
        if ok.sum() >= 10:
            side = max(float(np.ptp(pts[ok], 0).max()), 1e-6)
            if float(np.linalg.norm(pts[ok] - lm2d[ok], axis=1).mean()) / side > max_landmark_error:
                return "landmarks_disagree"
    return None


def sample_view_poses(rng: np.random.Generator, n_views: int, source_pose: np.ndarray, yaw_max_deg: float = 90.0,
                      pitch_max_deg: float = 40.0, roll_max_deg: float = 30.0, large_yaw_share: float = 0.5,
                      large_yaw_deg: float = 60.0) -> np.ndarray:
    """(n_views, 3) target (pitch, yaw, roll) radians.

    |yaw| is stratified (one view per quantile band, jittered) over a piecewise-uniform law with
    ``large_yaw_share`` of its mass in (``large_yaw_deg``, ``yaw_max_deg``], so every record's views
    spread up to the maximum and the (60, 90] bucket is well covered. The sign favours the side the
    source already turns to (whose texture is seen best). Pitch and roll are truncated normals."""
    src_yaw = float(np.degrees(source_pose[1]))
    q = (np.arange(n_views) + rng.uniform(0, 1, n_views)) / max(n_views, 1)
    rng.shuffle(q)
    split = min(large_yaw_deg, yaw_max_deg)
    lo_share = 1.0 - large_yaw_share if split < yaw_max_deg else 1.0
    yaw_abs = np.where(q < lo_share, q / max(lo_share, 1e-9) * split,
                       split + (q - lo_share) / max(1.0 - lo_share, 1e-9) * (yaw_max_deg - split))
    p_same = float(np.clip(0.5 + abs(src_yaw) / 60.0, 0.5, 0.9))
    sign_src = 1.0 if src_yaw >= 0 else -1.0
    sign = np.where(rng.random(n_views) < p_same, sign_src, -sign_src)
    pitch = np.clip(rng.normal(0, pitch_max_deg / 2.5, n_views), -pitch_max_deg, pitch_max_deg)
    roll = np.clip(rng.normal(0, roll_max_deg / 2.0, n_views), -roll_max_deg, roll_max_deg)
    return np.radians(np.stack([pitch, sign * np.minimum(yaw_abs, yaw_max_deg), roll], 1))


def _box(points: np.ndarray) -> tuple[float, tuple[float, float]]:
    """Side (the larger extent) and centre of the 2D box of points (N, 2+)."""
    p = points[:, :2]
    side = float(max(np.ptp(p[:, 0]), np.ptp(p[:, 1])))
    centre = (p.max(0) + p.min(0)) / 2
    return side, (float(centre[0]), float(centre[1]))


@dataclass
class SourceFace:
    """What every view of one record shares: the source crop, its head proxy fitted to the person
    (model frame), texture, foreground, and the head's outline for the surrounding warp."""

    image: np.ndarray
    blurred: np.ndarray
    foreground: np.ndarray  # (S, S) float32
    background: np.ndarray | None  # (S, S, 3) uint8 new scene, or None to keep the source's
    head_centre: np.ndarray  # (3,) model frame: the head ellipsoid's centre
    centre_source: np.ndarray  # (2,) the head centre in the source crop
    outline_source: np.ndarray  # (A,) the head proxy's outline there (outline_radii)
    verts_model: np.ndarray  # (V, 3) head proxy, model frame
    verts_source: np.ndarray  # (V, 3) the same in the source crop (image space)
    texture: HeadTexture
    landmarks_model: np.ndarray  # (68, 3) model frame (NaN where unmapped)
    box_side: float  # the source's 68-landmark box, crop pixels
    box_centre: tuple[float, float]


def prepare_source(record: Mapping[str, Any], face_model: FaceModel, image: np.ndarray,
                   background: np.ndarray | None = None) -> SourceFace:
    """Fit the head proxy to the record's face and texture it from its crop (once per record)."""
    size = image.shape[0]
    head = head_mesh(face_model)
    ids = np.asarray(record["id_coeffs"], np.float32)
    exps = np.asarray(record["exp_coeffs"], np.float32)
    R = euler_to_matrix(np.asarray(record["pose"], np.float64))
    scale, trans = float(record["scale"]), np.asarray(record["translation"], np.float64)
    geo = head_geometry(face_model, head, ids, exps)
    verts = geo.vertices(head)
    verts_src = project(verts, scale, R, trans)
    raster = render.rasterize(verts_src, head.triangles, size, size, cull_backfaces=False)
    # Foreground: sure on the projected face core, likely on the rest of the proxy.
    core_tris = head.core[head.triangles].all(1)
    sure = raster.mask & core_tris[np.maximum(raster.triangle_ids, 0)]
    sure = cv2.erode(sure.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    lm_src = project(geo.landmarks, scale, R, trans)
    foreground = head_foreground(image, sure, raster.mask | _body_prior(lm_src, size))
    centre_src = project(geo.centre[None], scale, R, trans)[0]
    extent = fit_shell_extent(head, verts_src, centre_src, foreground)
    verts = geo.vertices(head, extent)
    verts_src = project(verts, scale, R, trans)
    raster = render.rasterize(verts_src, head.triangles, size, size, cull_backfaces=False)
    texture = head_texture(head, verts_src, image, foreground, raster)
    blurred = cv2.GaussianBlur(image, (0, 0), max(1.0, size / 80))
    centre_src = project(geo.centre[None], scale, R, trans)[0]
    outline = outline_radii(raster.mask, centre_src[:2])
    lm_src = project(geo.landmarks[face_model.landmark_mask], scale, R, trans)
    box_side, box_centre = _box(lm_src)
    return SourceFace(image=image, blurred=blurred, foreground=foreground, background=background, head_centre=geo.centre,
                      centre_source=centre_src[:2], outline_source=outline, verts_model=verts, verts_source=verts_src,
                      texture=texture, landmarks_model=geo.landmarks, box_side=box_side, box_centre=box_centre)


def render_view(source: SourceFace, face_model: FaceModel, pose: np.ndarray, id_coeffs: np.ndarray,
                exp_coeffs: np.ndarray) -> dict[str, Any]:
    """One new view: the head turned to ``pose`` (pitch, yaw, roll radians), re-centred and
    re-scaled so its 68-landmark box matches the source's. Returns the image, exact labels, the
    face mesh's pixels (``face_mask``) and ``texture_seen``: the share of them textured by what
    the source saw sharply (own or mirrored samples; the rest is stretched or invented)."""
    head = head_mesh(face_model)
    size = source.image.shape[0]
    s_new, t_new = place_face(face_model, id_coeffs, exp_coeffs, pose, source.box_side, source.box_centre)
    R_new = euler_to_matrix(np.asarray(pose, np.float64))
    w = head.rigid[:, None]
    verts = w * project(source.verts_model, s_new, R_new, t_new) + (1 - w) * source.verts_source
    colour, alpha, sharp, raster = render_head(head, source.texture, verts, source.image, source.blurred, source.foreground)
    centre = source.centre_source
    map_x, map_y = surround_warp(size, centre, source.outline_source, outline_radii(raster.mask, centre))
    base = cv2.remap(source.image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    if source.background is not None:  # a new scene behind the person (hair and body warped along)
        person = cv2.remap(source.foreground, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[..., None]
        base = base * person + source.background.astype(np.float32) * (1 - person)
    a = alpha[..., None]
    image = np.clip(colour * a + base * (1 - a) + 0.5, 0, 255).astype(np.uint8)
    # Visibility against the face mesh alone, as synthetic records define it.
    face_raster = render.rasterize(verts[: head.num_closed], head.skin.triangles, size, size)
    mask = face_model.landmark_mask
    lm = np.full((68, 3), np.nan)
    lm[mask] = project(source.landmarks_model[mask], s_new, R_new, t_new)
    visible = np.zeros(68, bool)
    extent = float(np.ptp(verts[: face_model.num_vertices, :2], axis=0).max())
    visible[mask] = render.vertex_visibility(lm[mask], face_raster, tolerance=max(1.0, 0.015 * extent))
    return {"image": image, "landmarks_3d": lm, "landmarks_visible": visible, "scale": float(s_new),
            "translation": np.asarray(t_new, np.float64), "face_mask": face_raster.mask,
            "texture_seen": float(sharp[face_raster.mask].mean()) if face_raster.mask.any() else 0.0}


def profile_record(record: Mapping[str, Any], face_model: FaceModel, n_views: int, rng: np.random.Generator,
                   background: np.ndarray | None = None, yaw_max_deg: float = 90.0, pitch_max_deg: float = 40.0,
                   roll_max_deg: float = 30.0, max_source_yaw_deg: float = 45.0, large_yaw_share: float = 0.5,
                   poses: np.ndarray | None = None, image_format: str = ".jpg") -> ProfileOutcome:
    """:func:`profile_views` with the skip reason, figures and per-stage seconds (see there)."""
    t0 = time.perf_counter()
    reason = skip_reason(record, face_model, max_source_yaw_deg)
    if reason is not None:
        return ProfileOutcome([], reason)
    try:
        image = records.decode_image(record["image"])
    except (ValueError, TypeError, KeyError):
        return ProfileOutcome([], "bad_image")
    size = int(record.get("image_size") or image.shape[0])
    if image.shape[:2] != (size, size):
        return ProfileOutcome([], "bad_image")
    if background is not None:
        background = np.asarray(background)
        if background.shape != image.shape or background.dtype != np.uint8:
            raise ValueError(f"background must be RGB uint8 {image.shape}, got {background.dtype} {background.shape}")
    ids = np.asarray(record["id_coeffs"], np.float32)
    exps = np.asarray(record["exp_coeffs"], np.float32)
    source_pose = np.asarray(record["pose"], np.float64)
    timings: dict[str, float] = {}
    with single_threaded():
        source = prepare_source(record, face_model, image, background)
        timings["source"] = time.perf_counter() - t0
        if poses is None:
            poses = sample_view_poses(rng, n_views, source_pose, yaw_max_deg, pitch_max_deg, roll_max_deg, large_yaw_share)
        poses = np.asarray(poses, np.float64).reshape(-1, 3)
        parent = str(record["record_id"])
        crop = records.crop_transform(0, 0, size, size).reshape(-1)
        rows: list[dict[str, Any]] = []
        seen: list[float] = []
        t_views = time.perf_counter()
        for k, view_pose in enumerate(poses):
            view = render_view(source, face_model, view_pose, ids, exps)
            seen.append(view["texture_seen"])
            lm = np.nan_to_num(view["landmarks_3d"], nan=0.0)
            rows.append({
                "record_id": f"{parent}/view{k:02d}",
                "source": "profiled",
                "subject_id": record["subject_id"],
                "image": records.encode_image(view["image"], image_format),
                "image_size": size,
                "landmarks_2d": lm[:, :2].astype(np.float32),
                "landmarks_3d": lm.astype(np.float32),
                "landmarks_visible": view["landmarks_visible"],
                "pose": view_pose.astype(np.float32),
                "scale": view["scale"],
                "translation": view["translation"].astype(np.float32),
                "id_coeffs": ids,
                "exp_coeffs": exps,
                "face_model": record.get("face_model") or face_model.name,
                "crop_to_frame": crop,
                "source_path": record.get("source_path") or parent,
                "landmark_definition": record.get("landmark_definition"),
                "frame_index": record.get("frame_index"),
                "quality": record.get("quality"),
                "fit_residual": record.get("fit_residual"),
                "teacher_agreement": record.get("teacher_agreement"),
                "parent_record_id": parent,
            })
        timings["views"] = time.perf_counter() - t_views
    timings["total"] = time.perf_counter() - t0
    head = head_mesh(face_model)
    figures = {
        "source_yaw_deg": float(np.degrees(source_pose[1])),
        "source_visible_fraction": float(source.texture.source_visible[: head.num_closed].mean()),
        "ms_per_view": 1000 * timings["views"] / max(len(rows), 1),
        "texture_seen_mean": float(np.mean(seen)) if seen else 0.0,
    }
    return ProfileOutcome(rows, None, figures, timings)


def profile_views(record: Mapping[str, Any], face_model: FaceModel, n_views: int, rng: np.random.Generator,
                  background: np.ndarray | None = None, yaw_max_deg: float = 90.0, pitch_max_deg: float = 40.0,
                  roll_max_deg: float = 30.0, max_source_yaw_deg: float = 45.0, large_yaw_share: float = 0.5,
                  poses: np.ndarray | None = None, image_format: str = ".jpg") -> list[dict[str, Any]]:
    """New large-pose face-record rows (``FACE_RECORD_SCHEMA`` v2) of the face in ``record``.

    Plain values in, rows out (no Ray; a job maps it over records):

    * ``record``: a face-record row (dict) with ``image``, ``image_size``, ``pose``, ``scale``,
      ``translation``, ``id_coeffs``, ``exp_coeffs``, ``record_id``, ``subject_id`` (others copied).
    * ``face_model``: the model the coefficients belong to, built as
      ``load_face_model(path).truncated(len(id), len(exp)).with_landmarks(record["landmark_definition"])``.
    * ``n_views`` views, poses drawn from ``rng`` by :func:`sample_view_poses` (|yaw| up to
      ``yaw_max_deg``, ``large_yaw_share`` of them beyond 60 degrees; pitch within
      ``pitch_max_deg``, roll within ``roll_max_deg``); or exactly ``poses`` (n, 3) radians.
    * ``background``: an RGB uint8 crop of the record's size, a new scene behind the person (their
      hair and body, the GrabCut foreground, are kept); None: the source crop's own scene, warped
      radially so it meets the turned head's outline.
    * Records with source |yaw| beyond ``max_source_yaw_deg`` are skipped (texture too incomplete).

    Each row: ``source="profiled"``, ``record_id=f"{parent}/view{k:02d}"``, ``parent_record_id``,
    the same ``subject_id``, coefficients, ``face_model``, ``landmark_definition``, ``source_path``
    and quality columns; the new ``pose``/``scale``/``translation`` (the head turned about its own
    centre, re-centred and re-scaled so its landmark box matches the input's), exact
    ``landmarks_3d``/``landmarks_2d`` of the model (z centred), ``landmarks_visible`` from the
    z-buffer of the face mesh, ``crop_to_frame`` the identity (the view's frame is synthetic).
    Returns [] when the record is skipped; :func:`profile_record` says why (:data:`SKIP_REASONS`).
    """
    return profile_record(record, face_model, n_views, rng, background, yaw_max_deg, pitch_max_deg, roll_max_deg,
                          max_source_yaw_deg, large_yaw_share, poses, image_format).rows


# ---- eyeballing ---------------------------------------------------------------------------------


def profile_contact_sheet(sources: Sequence[Mapping[str, Any]], views: Sequence[Sequence[Mapping[str, Any]]],
                          columns: int | None = None, upscale: int = 1) -> np.ndarray:
    """One row per source record: the source crop, then its views, landmarks drawn (visible green,
    hidden red); each tile labelled with its yaw. For judging profiles by eye."""
    columns = columns or 1 + max((len(v) for v in views), default=0)
    tiles: list[np.ndarray] = []
    size = None
    for src, vs in zip(sources, views):
        row_tiles = []
        for rec in [src, *vs]:
            img = records.decode_image(rec["image"])
            size = size or img.shape[0] * upscale
            if img.shape[0] * upscale != size:
                img = cv2.resize(img, (size // upscale, size // upscale))
            lm = np.asarray(rec["landmarks_2d"], np.float32).reshape(-1, 2)
            if upscale != 1:
                img = cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)
                lm = lm * upscale
            tile = render.draw_landmarks(img, lm, visible=rec.get("landmarks_visible"))
            if rec.get("pose") is not None:
                yaw = float(np.degrees(np.asarray(rec["pose"])[1]))
                cv2.putText(tile, f"{yaw:+.0f}", (3, 12 * max(1, size // 128)), cv2.FONT_HERSHEY_SIMPLEX,
                            0.4 * max(1, size // 128), (255, 255, 0), 1, cv2.LINE_AA)
            row_tiles.append(tile)
        while len(row_tiles) < columns:
            row_tiles.append(np.full_like(row_tiles[0], 255))
        tiles += row_tiles[:columns]
    return render.contact_sheet(tiles, columns=columns)


def fit_photo_record(image: np.ndarray, landmarks_2d: np.ndarray, face_model: FaceModel, record_id: str,
                     size: int = 128, fill: float = 0.55, steps: int = 300, id_weight: float = 0.02,
                     exp_weight: float = 0.05, source_path: str = "") -> dict[str, Any]:
    """A face record of a photo from its 68 2D landmarks (frame pixels): a square crop around them
    and the face model's id/exp/pose fitted by a small regularised weak-perspective least-squares.

    A stopgap for testing profiling on real faces by eye before pseudo-labelled records exist; the
    pseudo-labeller (:mod:`facepgn.pseudolabel`) makes the real ones."""
    import torch

    from facepgn.faces import frame_to_crop, square_crop

    pts = np.asarray(landmarks_2d, np.float64)
    side_lm, centre = _box(pts)
    box = np.array([centre[0] - side_lm / 2, centre[1] - side_lm / 2, side_lm, side_lm])
    crop, crop_to_frame = square_crop(image, box, (1 / fill - 1) / 2, size)
    target = torch.tensor(frame_to_crop(pts, crop_to_frame), dtype=torch.float32)
    mask = torch.tensor(face_model.landmark_mask)
    with single_threaded():
        lm_ids = torch.tensor(np.maximum(face_model.landmark_ids, 0), dtype=torch.long)
        mean = torch.tensor(np.asarray(face_model.mean), dtype=torch.float32)[lm_ids]
        idb = torch.tensor(np.asarray(face_model.id_basis), dtype=torch.float32)[:, lm_ids]
        expb = torch.tensor(np.asarray(face_model.exp_basis), dtype=torch.float32)[:, lm_ids]
        ids = torch.zeros(face_model.num_id, requires_grad=True)
        blend = face_model.exp_kind == "blendshapes"  # weights in [0, 1] (sigmoid), else N(0, 1)
        exp_raw = torch.full((face_model.num_exp,), -3.0 if blend else 0.0, requires_grad=True)
        angles = torch.zeros(3, requires_grad=True)
        log_s = torch.tensor(float(np.log(size * fill / 15.0)), requires_grad=True)
        t2 = torch.tensor([size / 2, size / 2], dtype=torch.float32, requires_grad=True)
        opt = torch.optim.Adam([{"params": [ids, exp_raw], "lr": 0.05}, {"params": [angles], "lr": 0.03},
                                {"params": [log_s], "lr": 0.02}, {"params": [t2], "lr": 0.5}])
        norm = size * fill  # the landmark box side in crop pixels
        for step in range(steps):
            shape_on = step >= steps // 3  # pose first, then shape too
            exps = torch.sigmoid(exp_raw) if blend else exp_raw
            x = mean + torch.einsum("k,kvc->vc", ids * shape_on, idb) + torch.einsum("k,kvc->vc", exps * shape_on, expb)
            R = euler_to_matrix(angles)
            p = project(x, torch.exp(log_s), R, torch.cat([t2, torch.zeros(1)]))[:, :2]
            err = ((p - target) ** 2).sum(-1)[mask].mean() / (norm / 100) ** 2
            loss = err + id_weight * (ids ** 2).sum() + exp_weight * (exps ** 2).sum() * 10
            opt.zero_grad()
            loss.backward()
            opt.step()
        ids_np = ids.detach().numpy().astype(np.float32)
        exps_np = (torch.sigmoid(exp_raw) if blend else exp_raw).detach().numpy().astype(np.float32)
        pose = matrix_to_euler(euler_to_matrix(angles.detach().double())).numpy()
        scale = float(torch.exp(log_s.detach()))
        lm_model = np.asarray(face_model.landmarks(ids_np, exps_np), np.float64)
        p3 = project(lm_model, scale, euler_to_matrix(pose), np.r_[t2.detach().numpy(), 0.0])
    trans = np.r_[t2.detach().numpy(), -float(p3[face_model.landmark_mask, 2].mean())]
    lm = np.nan_to_num(project(lm_model, scale, euler_to_matrix(pose), trans), nan=0.0)
    residual = float(np.linalg.norm(lm[:, :2] - target.numpy(), axis=1)[face_model.landmark_mask].mean() / (size * fill))
    return {
        "record_id": record_id,
        "source": "fitted-photo",
        "subject_id": record_id,
        "image": records.encode_image(crop),
        "image_size": size,
        "landmarks_2d": lm[:, :2].astype(np.float32),
        "landmarks_3d": lm.astype(np.float32),
        "landmarks_visible": None,
        "pose": pose.astype(np.float32),
        "scale": scale,
        "translation": trans.astype(np.float32),
        "id_coeffs": ids_np,
        "exp_coeffs": exps_np,
        "face_model": face_model.name,
        "crop_to_frame": np.asarray(crop_to_frame, np.float32).reshape(-1),
        "source_path": source_path,
        "fit_residual": residual,
    }


# ---- sequences: nearby views of one face with exact flow ----------------------------------------
#
# A video of a real face shows it turning a little from frame to frame. Profiling renders exactly
# that from one fitted record: views at nearby poses whose geometry is known, so the flow between
# two of them is exact (where the head is: the motion of the surface each pixel sees; around it:
# the motion of the warped surroundings) and the fitted mesh is the exact 3D shape of every frame.
# Frame pairs of such a sequence train and test the multi-frame losses where shape is known.


@dataclass
class ViewGeometry:
    """Where everything of one view (:func:`render_view`) is, for the flow between two views.

    ``verts`` (V, 3): the head proxy's image-space vertices as rendered; ``raster``: its raster;
    ``alpha`` (S, S): the head's opacity over the surroundings; ``surround`` (map_x, map_y): for each
    view pixel, the source-crop pixel the surroundings there come from (:func:`surround_warp`)."""

    verts: np.ndarray
    raster: render.Raster
    alpha: np.ndarray
    surround: tuple[np.ndarray, np.ndarray]


def view_vertices(source: SourceFace, face_model: FaceModel, pose: np.ndarray, id_coeffs: np.ndarray,
                  exp_coeffs: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """The head proxy's image-space vertices (V, 3) in the view :func:`render_view` makes at
    ``pose``, with that view's scale and translation."""
    head = head_mesh(face_model)
    s_new, t_new = place_face(face_model, id_coeffs, exp_coeffs, pose, source.box_side, source.box_centre)
    R_new = euler_to_matrix(np.asarray(pose, np.float64))
    w = head.rigid[:, None]
    verts = w * project(source.verts_model, s_new, R_new, t_new) + (1 - w) * source.verts_source
    return verts, float(s_new), np.asarray(t_new, np.float64)


def view_geometry(source: SourceFace, face_model: FaceModel, pose: np.ndarray, id_coeffs: np.ndarray,
                  exp_coeffs: np.ndarray) -> ViewGeometry:
    """The geometry of the view :func:`render_view` renders at ``pose`` (same vertices, raster,
    opacity and surroundings warp)."""
    head = head_mesh(face_model)
    size = source.image.shape[0]
    verts, _, _ = view_vertices(source, face_model, pose, id_coeffs, exp_coeffs)
    _, alpha, _, raster = render_head(head, source.texture, verts, source.image, source.blurred, source.foreground)
    centre = source.centre_source
    maps = surround_warp(size, centre, source.outline_source, outline_radii(raster.mask, centre))
    return ViewGeometry(verts, raster, alpha, maps)


def exact_vertex_mask(face_model: FaceModel) -> np.ndarray:
    """(num_vertices,) bool: the face model's vertices that every profiled view renders exactly at
    the posed fitted mesh -- all but the ears (flattened to a membrane, :func:`head_geometry`) and
    the neck below the jaw (blended towards the source's, ``HeadMesh.rigid``). The dense shape
    ground truth of a view holds on these."""
    head = head_mesh(face_model)
    nv = face_model.num_vertices
    keep = head.rigid[:nv] >= 1.0
    keep[head.ear_ids[head.ear_ids < nv]] = False
    return keep


def view_flow(face_model: FaceModel, a: ViewGeometry, b: ViewGeometry, alpha_threshold: float = 0.5,
              iterations: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Flow (S, S, 2) float32 from view ``a`` to view ``b`` of one source (pixel (x, y) of A shows
    what is at (x + u, y + v) in B) and its validity (S, S) bool.

    Where A shows the head (opacity >= ``alpha_threshold``): the motion of the head-proxy surface
    the pixel sees (:func:`facepgn.synthetic.exact_flow`; valid where that point is visible in B).
    Elsewhere: the surroundings' motion -- A's pixel shows source pixel ``m_A(x)``, B shows it where
    ``m_B(y) = m_A(x)`` (solved by fixed-point iteration on the radial warps); valid where it lands
    inside the crop, off B's head."""
    from facepgn.synthetic import exact_flow

    head = head_mesh(face_model)
    size = a.alpha.shape[0]
    mesh_flow, mesh_valid = exact_flow(a.raster, head.triangles, a.verts, b.verts, b.raster)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    target_x, target_y = a.surround
    yx, yy = xs.copy(), ys.copy()
    for _ in range(iterations):
        mx = cv2.remap(b.surround[0], yx, yy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        my = cv2.remap(b.surround[1], yx, yy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        yx = np.clip(yx + (target_x - mx), -1.0, size)
        yy = np.clip(yy + (target_y - my), -1.0, size)
    residual = np.hypot(target_x - mx, target_y - my)
    on_head = (a.alpha >= alpha_threshold) & a.raster.mask
    flow = np.where(on_head[..., None], mesh_flow, np.stack([yx - xs, yy - ys], -1)).astype(np.float32)
    xi, yi = np.round(yx).astype(np.int64), np.round(yy).astype(np.int64)
    inside = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size)
    off_head_b = np.zeros_like(inside)
    off_head_b[inside] = b.alpha[yi[inside], xi[inside]] < alpha_threshold
    valid = np.where(on_head, mesh_valid, inside & off_head_b & (residual < 0.25))
    return flow, valid


def sequence_poses(rng: np.random.Generator, n_frames: int, yaw_start_max_deg: float = 60.0,
                   yaw_step_deg: tuple[float, float] = (4.0, 10.0), pitch_step_deg: float = 3.0,
                   roll_step_deg: float = 2.0, yaw_max_deg: float = 85.0, pitch_max_deg: float = 30.0,
                   roll_max_deg: float = 25.0) -> np.ndarray:
    """(n_frames, 3) pitch, yaw, roll radians of a head turning as in a video: the yaw sweeps one
    way by ``yaw_step_deg`` (uniform range) per frame (turning back at ``yaw_max_deg``), pitch and
    roll drift by up to ``pitch_step_deg`` / ``roll_step_deg`` per frame."""
    yaw = rng.uniform(-yaw_start_max_deg, yaw_start_max_deg)
    pitch = float(np.clip(rng.normal(0, pitch_max_deg / 3), -pitch_max_deg, pitch_max_deg))
    roll = float(np.clip(rng.normal(0, roll_max_deg / 3), -roll_max_deg, roll_max_deg))
    direction = -np.sign(yaw) if yaw != 0 else 1.0  # towards the other side first: the sweep crosses frontal
    out = []
    for k in range(n_frames):
        if k:
            step = direction * rng.uniform(*yaw_step_deg)
            if abs(yaw + step) > yaw_max_deg:
                direction, step = -direction, -step
            yaw += step
            pitch = float(np.clip(pitch + rng.uniform(-pitch_step_deg, pitch_step_deg), -pitch_max_deg, pitch_max_deg))
            roll = float(np.clip(roll + rng.uniform(-roll_step_deg, roll_step_deg), -roll_max_deg, roll_max_deg))
        out.append((pitch, yaw, roll))
    return np.radians(np.asarray(out, np.float64))


@dataclass
class ProfiledSequence:
    """What :func:`profile_sequence` made of one record: a face-record row per frame (exact labels,
    as :func:`profile_views` writes them), a ``FRAME_PAIR_SCHEMA`` row per pair of consecutive frames
    with the exact flow, each pair's flow validity (not stored in the pair rows), and the reason
    when nothing was made."""

    rows: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    valid: list[np.ndarray]
    reason: str | None = None


def profile_sequence(record: Mapping[str, Any], face_model: FaceModel, poses: np.ndarray, fps: float = 25.0,
                     max_source_yaw_deg: float = 45.0, image_format: str = ".jpg") -> ProfiledSequence:
    """A video-like sequence of the face in ``record`` at ``poses`` (T, 3) radians (e.g. from
    :func:`sequence_poses`): T face-record rows (``record_id=f"{parent}/seq{k:02d}"``) and T - 1
    frame pairs (frames k, k + 1; ``video_id=f"{parent}/seq"``) whose ``flow`` is exact
    (:func:`view_flow`) and whose ``landmarks_2d_a/b`` are the frames' exact labels (null them for
    unlabelled use). The fitted coefficients are the exact shape of every frame
    (:func:`exact_vertex_mask` says where the rendered mesh is exactly the fitted one)."""
    from facepgn.synthetic import _five_points, _mask_box

    reason = skip_reason(record, face_model, max_source_yaw_deg)
    if reason is not None:
        return ProfiledSequence([], [], [], reason)
    try:
        image = records.decode_image(record["image"])
    except (ValueError, TypeError, KeyError):
        return ProfiledSequence([], [], [], "bad_image")
    size = int(record.get("image_size") or image.shape[0])
    if image.shape[:2] != (size, size):
        return ProfiledSequence([], [], [], "bad_image")
    ids = np.asarray(record["id_coeffs"], np.float32)
    exps = np.asarray(record["exp_coeffs"], np.float32)
    poses = np.asarray(poses, np.float64).reshape(-1, 3)
    parent = str(record["record_id"])
    crop = records.crop_transform(0, 0, size, size).reshape(-1)
    rows, frames = [], []
    with single_threaded():
        source = prepare_source(record, face_model, image)
        for k, pose in enumerate(poses):
            view = render_view(source, face_model, pose, ids, exps)
            geo = view_geometry(source, face_model, pose, ids, exps)
            lm = np.nan_to_num(view["landmarks_3d"], nan=0.0)
            frames.append((view, geo, lm))
            rows.append({
                "record_id": f"{parent}/seq{k:02d}", "source": "profiled", "subject_id": record["subject_id"],
                "image": records.encode_image(view["image"], image_format), "image_size": size,
                "landmarks_2d": lm[:, :2].astype(np.float32), "landmarks_3d": lm.astype(np.float32),
                "landmarks_visible": view["landmarks_visible"], "pose": pose.astype(np.float32),
                "scale": view["scale"], "translation": view["translation"].astype(np.float32),
                "id_coeffs": ids, "exp_coeffs": exps, "face_model": record.get("face_model") or face_model.name,
                "crop_to_frame": crop, "source_path": record.get("source_path") or parent,
                "landmark_definition": record.get("landmark_definition"), "frame_index": k,
                "quality": record.get("quality"), "fit_residual": record.get("fit_residual"),
                "teacher_agreement": record.get("teacher_agreement"), "parent_record_id": parent,
            })
        pairs, valids = [], []
        video_id = f"{parent}/seq"
        for k in range(len(frames) - 1):
            (va, ga, lm_a), (vb, gb, lm_b) = frames[k], frames[k + 1]
            flow, valid = view_flow(face_model, ga, gb)
            grey = [cv2.cvtColor(v["image"], cv2.COLOR_RGB2GRAY) for v in (va, vb)]
            pairs.append({
                "pair_id": f"{video_id}/0/{k}-{k + 1}", "video_id": video_id, "subject_id": record["subject_id"],
                "track_id": 0, "frame_a": k, "frame_b": k + 1, "time_a": k / fps, "time_b": (k + 1) / fps,
                "image_size": size, "image_a": rows[k]["image"], "image_b": rows[k + 1]["image"],
                "flow": records.encode_flow(flow),
                "box_a": _mask_box(va["face_mask"]), "box_b": _mask_box(vb["face_mask"]),
                "crop_to_frame_a": crop, "crop_to_frame_b": crop,
                "det_landmarks_a": _five_points(lm_a).reshape(-1), "det_landmarks_b": _five_points(lm_b).reshape(-1),
                "det_score_a": 1.0, "det_score_b": 1.0,
                "landmarks_2d_a": lm_a[:, :2].astype(np.float32), "landmarks_2d_b": lm_b[:, :2].astype(np.float32),
                "blur_a": float(cv2.Laplacian(grey[0], cv2.CV_64F).var()),
                "blur_b": float(cv2.Laplacian(grey[1], cv2.CV_64F).var()),
                "flow_magnitude": float(np.linalg.norm(flow[valid], axis=-1).mean()) if valid.any() else 0.0,
                "source_path": record.get("source_path") or parent,
            })
            valids.append(valid)
    return ProfiledSequence(rows, pairs, valids)
