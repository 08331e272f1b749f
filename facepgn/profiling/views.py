"""Face profiling's views: skip reasons, view poses, the source face, one view rendered, the per-record
entry points, and eyeballing (contact sheet, a quick photo fit)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from facepgn import records, render
from facepgn.facemodel import FaceModel
from facepgn.geometry import euler_to_matrix, matrix_to_euler, project
from facepgn.profiling.head import head_geometry, head_mesh
from facepgn.profiling.texture import HeadTexture, _body_prior, fit_shell_extent, head_foreground, head_texture, outline_radii, render_head, surround_warp
from facepgn.synthetic import place_face, single_threaded

#: Why :func:`profile_record` made no views of a record.
SKIP_REASONS = (
    "no_coefficients",  # id/exp coefficients, pose, scale or translation missing
    "face_model_mismatch",  # the record's face model / coefficient counts are not the given model's
    "yaw_out_of_range",  # source yaw beyond max_source_yaw_deg: too much of the face unseen
    "landmarks_disagree",  # the record's landmarks are not where its coefficients and pose put them
    "bad_image",  # undecodable or not the record's image_size
)


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
