"""Face profiling's sequences: nearby views of one face with exact flow (for the fidelity bench)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import cv2
import numpy as np

from facepgn import records, render
from facepgn.facemodel import FaceModel
from facepgn.geometry import euler_to_matrix, project
from facepgn.profiling.head import head_mesh
from facepgn.profiling.texture import outline_radii, render_head, surround_warp
from facepgn.profiling.views import SourceFace, prepare_source, render_view, skip_reason
from facepgn.synthetic import place_face, single_threaded

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
