"""Synthetic frame pairs: two renders of one face with known motion, the exact dense flow between
them, and FRAME_PAIR_SCHEMA rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from facepgn import records, render
from facepgn.config import SyntheticFacesConfig
from facepgn.facemodel import FaceModel
from facepgn.geometry import euler_to_matrix, project
from facepgn.synthetic.faces import face_model_for
from facepgn.synthetic.scene import (
    FaceParams,
    FaceRender,
    _random_light,
    model_vertices,
    place_face,
    random_background,
    render_face,
    sample_expression,
    sample_identity,
    sample_pose,
    shade_albedo,
)
from facepgn.synthetic.skin import face_skin, random_albedo
from facepgn.synthetic.threads import _one_thread


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
                expression_change: float = 0.2, settings: SyntheticFacesConfig | None = None,
                model: FaceModel | None = None) -> FramePair:
    """A frame pair of one identity: frame B is frame A moved by a small random rotation, shift,
    scale change and expression change; returns both images, the exact flow and its validity."""
    # Pairs stand in for preprocess crops of real videos (detector box + margin), where faces fill
    # less of the crop than in the evaluation's crops: keep their own fill range.
    settings = settings or SyntheticFacesConfig(size=size, face_fill=(0.45, 0.65))
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
