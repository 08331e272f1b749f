"""3D pseudo-labels for real faces: the face model fitted to a teacher's 468 points.

Per-item code, no Ray: :class:`FaceLabeller` holds the teachers and the face model (build one per
process or actor) and turns detected faces into face records (``FACE_RECORD_SCHEMA`` rows, schema
v2) in facepgn's own landmark definition, or rejections with a reason.

Rejection reasons (the ``reason`` of a :class:`LabelOutcome`): ``no_face`` (teacher's presence score
low), ``teachers_disagree``, ``fit_residual``, ``yaw_out_of_range``, ``too_small``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch

from facepgn import geometry

REJECT_REASONS = ("no_face", "teachers_disagree", "fit_residual", "yaw_out_of_range", "too_small")


@dataclass
class FaceToLabel:
    """One detected face: the whole RGB frame/photo and the detector box (x, y, w, h, frame pixels)."""

    image: np.ndarray
    box: np.ndarray
    source_path: str
    subject_id: str
    frame_index: int = 0
    face_index: int = 0  # which face of the frame (0-based, detector order)
    points: np.ndarray | None = None  # (5, 2) the detector's eye, nose and mouth points: level the teacher's crop


@dataclass
class LabelOutcome:
    """A face record row (``record``) or a rejection (``reason``); ``figures`` holds the quality
    figures either way (teacher_agreement, fit_residual, yaw_deg, presence)."""

    record: dict[str, Any] | None
    reason: str | None
    figures: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage for this face


#: MediaPipe's face-oval points (its ``FACEMESH_FACE_OVAL``): they follow the silhouette, not fixed
#: vertices, so the fit trusts them less.
MESH_FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
                  152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
#: Anchors that start the correspondence: MediaPipe mesh index -> iBUG-68 index (eye corners, mouth
#: corners, nose tip, chin).
_ANCHORS_MESH = (33, 133, 362, 263, 61, 291, 1, 152)
_ANCHORS_68 = (36, 39, 42, 45, 48, 54, 30, 8)


# ---- the one-time correspondence -------------------------------------------------------------


def mesh_correspondence(face_model: Any, canonical: np.ndarray | None = None, iterations: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """For each of MediaPipe's 468 canonical points, the face-model vertex it corresponds to, and
    the distance (model units) left after the fit.

    The canonical mesh is aligned to the model's mean face by a similarity on 8 anchors (eye and
    mouth corners, nose tip, chin; from the model's *upstream* landmark ids), then the model's
    identity and expression are fitted to it (nearest-vertex ICP, regularised least squares), so the
    correspondence is between like shapes. ICT: median 1.3 mm, max 4 mm."""
    from scipy.spatial import cKDTree

    from facepgn.teachers import read_canonical_mesh

    canon = (read_canonical_mesh()[0] if canonical is None else np.asarray(canonical)).astype(np.float64)
    lm = np.asarray(face_model.mean, np.float64)[np.asarray(face_model.landmark_ids)[list(_ANCHORS_68)]]
    s, R, t = geometry.similarity_fit(canon[list(_ANCHORS_MESH)], lm)
    aligned = float(s) * canon @ np.asarray(R).T + np.asarray(t)
    verts = np.asarray(face_model.mean, np.float64)
    dist, idx = cKDTree(verts).query(aligned)
    for _ in range(iterations):
        basis = np.concatenate([face_model.id_basis[:, idx].reshape(face_model.num_id, -1),
                                face_model.exp_basis[:, idx].reshape(face_model.num_exp, -1)]).astype(np.float64)
        rhs = (aligned - np.asarray(face_model.mean, np.float64)[idx]).reshape(-1)
        coeffs = np.linalg.solve(basis @ basis.T + np.eye(len(basis)), basis @ rhs)
        exp = np.clip(coeffs[face_model.num_id:], 0, 1) if face_model.exp_kind == "blendshapes" else coeffs[face_model.num_id:]
        verts = face_model.vertices(coeffs[: face_model.num_id].astype(np.float32), exp.astype(np.float32)).astype(np.float64)
        s, R, t = geometry.similarity_fit(canon, verts[idx])
        aligned = float(s) * canon @ np.asarray(R).T + np.asarray(t)
        dist, idx = cKDTree(verts).query(aligned)
    return idx.astype(np.int64), dist.astype(np.float32)


# ---- fitting the face model to 3D points -------------------------------------------------------


@dataclass
class FitSettings:
    """How :func:`fit_face_model` weighs the data against the priors (model units: the face model's,
    e.g. cm for ICT; residuals are measured after dividing by the fitted scale)."""

    iterations: int = 8
    id_reg: float = 0.5  # weight of |id|^2 (prior N(0, 1)) against the summed squared point residuals
    exp_reg: float = 0.5  # weight of |exp|^2
    z_weight: float = 0.5  # the teacher's depth counts this much of x and y
    oval_weight: float = 1.0  # silhouette points (MESH_FACE_OVAL); 0.3 scored no better on real faces
    robust_scale: float = 2.5  # Geman-McClure scale, in multiples of the median residual
    # joint Gauss-Newton steps after the alternation: they reach the objective's exact optimum
    # (known pose to < 0.5 deg where the alternation alone leaves up to ~5 deg in the shape/rotation
    # valley), but on real MediaPipe points the alternation's landmarks score better (AFLW2000-3D
    # dev, [0,30]: 3.34% vs 3.46% NME), so labelling leaves them off
    refine_iterations: int = 0


@dataclass
class FitResult:
    """Batched fit: coefficients, weak-perspective pose (``project(X, s, R, t)``), the model's 68
    landmarks in image pixels, and the residuals (mean 2D distance / face size)."""

    id_coeffs: np.ndarray  # (B, K)
    exp_coeffs: np.ndarray  # (B, E)
    scale: np.ndarray  # (B,)
    rotation: np.ndarray  # (B, 3, 3)
    translation: np.ndarray  # (B, 3)
    landmarks_3d: np.ndarray  # (B, 68, 3) image pixels, z as project() gives it
    residual: np.ndarray  # (B,) mean 2D distance of the fitted points to the targets / face size
    weights: np.ndarray  # (B, N) final robust weights


def _skew(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrices: skew(a) @ b = a x b."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(*v.shape, 3)


def _gauss_newton_step(q, mean, basis, coeffs, s, R, t, w, axis_w, reg, k, blend):
    """One joint Gauss-Newton step on (coefficients, rotation, scale, translation): the alternation
    alone crawls along the valley where identity modes and rotation trade off."""
    b, n, _ = q.shape
    c = coeffs.shape[1]
    flip = torch.tensor([1.0, -1.0, 1.0], dtype=q.dtype)
    X = mean + torch.einsum("bc,cnd->bnd", coeffs, basis)  # (B, N, 3) model frame
    RX = torch.einsum("bij,bnj->bni", R, X)
    r = (RX * flip) * s[:, None, None] + t[:, None] - q  # (B, N, 3) residuals
    j_c = torch.einsum("bij,cnj->bnic", R, basis) * (flip[:, None] * s[:, None, None, None])  # (B, N, 3, C)
    j_w = -_skew(RX) * (flip[:, None] * s[:, None, None, None])  # d/d omega of (R <- exp(omega) R)
    j_s = (RX * flip)[..., None]
    j_t = torch.eye(3, dtype=q.dtype).expand(b, n, 3, 3)
    J = torch.cat([j_c, j_w, j_s, j_t], -1).reshape(b, n * 3, -1)  # (B, 3N, C+7)
    sw = (w[:, :, None] * axis_w).reshape(b, n * 3, 1)
    scale2 = (s**2)[:, None]  # the prior is in model units; residuals are in pixels
    damp = torch.cat([reg.expand(b, -1) * w.mean(1, keepdim=True) * scale2, torch.full((b, 7), 1e-6, dtype=q.dtype)], 1)
    lhs = J.transpose(1, 2) @ (J * sw) + torch.diag_embed(damp)
    prior_grad = torch.cat([reg.expand(b, -1) * w.mean(1, keepdim=True) * scale2 * coeffs, torch.zeros(b, 7, dtype=q.dtype)], 1)
    rhs = -(J.transpose(1, 2) @ (r.reshape(b, -1, 1) * sw))[..., 0] - prior_grad
    delta = torch.linalg.solve(lhs, rhs[..., None])[..., 0]
    coeffs = coeffs + delta[:, :c]
    if blend:
        coeffs[:, k:] = coeffs[:, k:].clamp(0.0, 1.0)
    omega = delta[:, c:c + 3]
    angle = omega.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    K = _skew(omega / angle)
    a = angle[..., None]
    rot = torch.eye(3, dtype=q.dtype) + torch.sin(a) * K + (1 - torch.cos(a)) * (K @ K)
    return coeffs, s + delta[:, c + 3], rot @ R, t + delta[:, c + 4:]


def fit_face_model(face_model: Any, targets: np.ndarray, vertex_ids: np.ndarray, point_weights: np.ndarray | None = None,
                   settings: FitSettings | None = None) -> FitResult:
    """Fit identity, expression and pose of ``face_model`` to ``targets`` (B, N, 3) image-space
    points (x, y pixels, z towards the camera, scaled like x) that correspond to model vertices
    ``vertex_ids`` (N,).

    Alternates the closed-form weak-perspective pose (:func:`facepgn.geometry.fit_pose`) with a
    regularised linear least-squares solve of the coefficients given the pose (the projection is
    linear in them), reweighting points robustly (Geman-McClure) each round. Blendshape weights are
    kept in [0, 1]. Batched in torch (float64), no autograd."""
    settings = settings or FitSettings()
    q = torch.as_tensor(np.asarray(targets), dtype=torch.float64)
    b, n, _ = q.shape
    ids = torch.as_tensor(np.array(vertex_ids), dtype=torch.long)
    mean = torch.as_tensor(np.array(face_model.mean), dtype=torch.float64)[ids]  # (N, 3)
    basis = torch.cat([torch.as_tensor(np.array(face_model.id_basis), dtype=torch.float64)[:, ids],
                       torch.as_tensor(np.array(face_model.exp_basis), dtype=torch.float64)[:, ids]])  # (K+E, N, 3)
    k, e = face_model.num_id, face_model.num_exp
    base_w = torch.ones(b, n, dtype=torch.float64) if point_weights is None else torch.as_tensor(np.array(point_weights), dtype=torch.float64)
    axis_w = torch.tensor([1.0, 1.0, settings.z_weight], dtype=torch.float64)
    reg = torch.cat([torch.full((k,), settings.id_reg), torch.full((e,), settings.exp_reg)]).to(torch.float64)
    coeffs = torch.zeros(b, k + e, dtype=torch.float64)
    robust = torch.ones(b, n, dtype=torch.float64)
    blend = face_model.exp_kind == "blendshapes"
    flip = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    for _ in range(settings.iterations):
        w = base_w * robust
        model_pts = mean + torch.einsum("bc,cnd->bnd", coeffs, basis)
        s, R, t = geometry.fit_pose(model_pts, q, w)
        # q ≈ s F R (mean + B c) + t, so F (q - t) / s - R mean ≈ R B c: linear in c; solved in the
        # camera frame, where the teacher's weaker depth axis can be weighted
        basis_cam = torch.einsum("cnd,bed->bcne", basis, R)  # R @ basis
        target_cam = (q - t[:, None]) * flip / s[:, None, None] - torch.einsum("nd,bed->bne", mean, R)
        sw = (w[:, :, None] * axis_w).sqrt()  # (B, N, 3)
        a = (basis_cam * sw[:, None]).reshape(b, k + e, -1)  # (B, C, N*3)
        y = (target_cam * sw).reshape(b, -1)
        lhs = a @ a.transpose(1, 2) + torch.diag_embed(reg.expand(b, -1) * w.mean(1, keepdim=True))
        coeffs = torch.linalg.solve(lhs, (a @ y[:, :, None]))[..., 0]
        if blend:
            coeffs[:, k:] = coeffs[:, k:].clamp(0.0, 1.0)
        model_pts = mean + torch.einsum("bc,cnd->bnd", coeffs, basis)
        s, R, t = geometry.fit_pose(model_pts, q, w)
        fitted = geometry.project(model_pts, s, R, t)
        r = (fitted - q)[..., :2].norm(dim=-1)  # (B, N)
        med = r.median(dim=1, keepdim=True).values.clamp_min(1e-6) * settings.robust_scale
        robust = (med**2 / (med**2 + r**2)) ** 2
    model_pts = mean + torch.einsum("bc,cnd->bnd", coeffs, basis)
    s, R, t = geometry.fit_pose(model_pts, q, base_w * robust)
    for _ in range(settings.refine_iterations):
        coeffs, s, R, t = _gauss_newton_step(q, mean, basis, coeffs, s, R, t, base_w * robust, axis_w, reg, k, blend)
    model_pts = mean + torch.einsum("bc,cnd->bnd", coeffs, basis)
    fitted = geometry.project(model_pts, s, R, t)
    lo, hi = q[..., :2].min(1).values, q[..., :2].max(1).values
    size = (hi - lo).prod(-1).clamp_min(1e-6).sqrt()
    residual = (fitted - q)[..., :2].norm(dim=-1).mean(1) / size
    lm_ids = torch.as_tensor(np.maximum(np.asarray(face_model.landmark_ids), 0), dtype=torch.long)
    id_b = torch.as_tensor(np.array(face_model.id_basis), dtype=torch.float64)[:, lm_ids]
    exp_b = torch.as_tensor(np.array(face_model.exp_basis), dtype=torch.float64)[:, lm_ids]
    lm_model = torch.as_tensor(np.array(face_model.mean), dtype=torch.float64)[lm_ids] + torch.einsum(
        "bc,cnd->bnd", coeffs, torch.cat([id_b, exp_b]))
    lm = geometry.project(lm_model, s, R, t)
    return FitResult(
        id_coeffs=coeffs[:, :k].numpy().astype(np.float32), exp_coeffs=coeffs[:, k:].numpy().astype(np.float32),
        scale=s.numpy(), rotation=R.numpy(), translation=t.numpy(), landmarks_3d=lm.numpy(),
        residual=residual.numpy(), weights=(base_w * robust).numpy())


def mesh_to_68(face_model: Any, vertex_ids: np.ndarray) -> np.ndarray:
    """For each of the model's 68 landmark vertices, the MediaPipe point whose corresponding vertex
    is nearest: the teacher's own 68-point answer, for comparing it with other teachers."""
    from scipy.spatial import cKDTree

    verts = np.asarray(face_model.mean, np.float64)
    return cKDTree(verts[vertex_ids]).query(verts[np.asarray(face_model.landmark_ids)])[1].astype(np.int64)


@lru_cache(maxsize=4)
def _correspondence_for(model_path: str | None) -> np.ndarray:
    from facepgn.facemodel import load_face_model

    return mesh_correspondence(load_face_model(model_path))[0]


@lru_cache(maxsize=4)
def _mediapipe_68_ids(model_path: str | None, landmarks: str) -> np.ndarray:
    from facepgn.facemodel import load_face_model

    return mesh_to_68(load_face_model(model_path).with_landmarks(landmarks), _correspondence_for(model_path))


def mediapipe_68_ids(face_model: str | None = None, landmarks: str = "auto") -> np.ndarray:
    """(68,) index into MediaPipe's 468 points of each iBUG-68 landmark: :func:`mesh_to_68` through
    the correspondence to ``face_model`` (None: the default) in the landmark definition
    ``landmarks`` -- the mapping :class:`FaceLabeller` compares its teachers with (its ``map68``
    with the same settings), used by ``teachers.MediaPipe68``."""
    return _mediapipe_68_ids(face_model, landmarks).copy()


def crop_around(landmarks_2d: np.ndarray, face_fill: float, size: int) -> np.ndarray:
    """crop->frame affine of a square centred on the landmarks' box, which fills ``face_fill`` of it."""
    from facepgn import records

    lo, hi = landmarks_2d.min(0), landmarks_2d.max(0)
    side = float(max(hi - lo)) / face_fill
    centre = (lo + hi) / 2
    return records.crop_transform(centre[0] - side / 2, centre[1] - side / 2, side, size)


class FaceLabeller:
    """Teachers + face-model fit for batches of detected faces (one per process or actor).

    Settings (the ``labeller`` section of the label job's config):
    ``landmarks`` the landmark definition of the records (``facemodel.LANDMARK_DEFINITIONS``);
    ``num_id`` / ``num_exp`` the face model's truncation (the training model's, so the coefficients
    supervise it); ``image_size`` and ``crop_margin`` the record crops (0.2 of the landmarks'
    extent on each side: the face fills 0.71 of the crop, as in AFLW2000-3D's roi crops);
    rejection thresholds ``min_presence`` (MediaPipe's face probability), ``min_face_size``
    (detector box side, pixels),
    ``max_teacher_disagreement`` (inner-point distance between MediaPipe and the 68-point network,
    / face size), ``max_fit_residual`` (/ face size), ``max_abs_yaw_deg`` (MediaPipe is poor beyond
    about 45-60 degrees); ``fit_iterations``, ``id_reg``, ``exp_reg``; the files ``face_model``,
    ``mediapipe_model``, ``landmark_model`` (None: the defaults, ``facepgn.paths``).
    """

    def __init__(
        self,
        *,
        landmarks: str = "auto",
        num_id: int = 40,
        num_exp: int = 20,
        image_size: int = 128,
        crop_margin: float = 0.2,
        min_presence: float = 0.5,
        min_face_size: float = 40.0,
        max_teacher_disagreement: float = 0.06,
        max_fit_residual: float = 0.04,
        max_abs_yaw_deg: float = 55.0,
        fit_iterations: int = 8,
        id_reg: float = 0.5,
        exp_reg: float = 0.5,
        face_model: str | None = None,
        mediapipe_model: str | None = None,
        landmark_model: str | None = None,
        threads: int = 1,
    ):
        from facepgn import faces, teachers
        from facepgn.facemodel import load_face_model, resolve_landmark_definition

        full = load_face_model(face_model)
        self.model = full.truncated(num_id, num_exp).with_landmarks(landmarks)
        self.definition = resolve_landmark_definition(full, landmarks)
        self.vertex_ids = _correspondence_for(face_model)
        self.map68 = mesh_to_68(self.model, self.vertex_ids)
        self.weights = np.ones(teachers.NUM_MESH_POINTS)
        self.settings = FitSettings(iterations=fit_iterations, id_reg=id_reg, exp_reg=exp_reg, oval_weight=1.0)
        self.weights[list(MESH_FACE_OVAL)] = self.settings.oval_weight
        self.mesh = teachers.MediaPipeMesh(mediapipe_model, threads=threads)
        self.peppa = faces.LandmarkModel(landmark_model)
        self.image_size, self.face_fill = int(image_size), 1.0 / (1.0 + 2.0 * float(crop_margin))
        self.min_presence, self.min_face_px = float(min_presence), float(min_face_size)
        self.max_disagreement, self.max_residual = float(max_teacher_disagreement), float(max_fit_residual)
        self.max_yaw = float(max_abs_yaw_deg)

    def label(self, faces: Sequence[FaceToLabel]) -> list[LabelOutcome]:
        """Pseudo-label ``faces`` (one batched fit); one outcome per face, in order."""
        import time

        from facepgn import teachers

        outcomes: list[LabelOutcome | None] = [None] * len(faces)
        pending, targets = [], []
        for i, face in enumerate(faces):
            timings: dict[str, float] = {}
            side = float(max(face.box[2], face.box[3]))
            if side < self.min_face_px:
                outcomes[i] = LabelOutcome(None, "too_small", {"box_px": side}, timings)
                continue
            t0 = time.perf_counter()
            eyes = None if face.points is None else np.asarray(face.points)[:2]
            mesh = self.mesh.predict(face.image, face.box, eyes)
            t1 = time.perf_counter()
            peppa = self.peppa.predict(face.image, face.box)
            t2 = time.perf_counter()
            timings.update(mediapipe=t1 - t0, peppa=t2 - t1)
            agreement = teachers.teacher_agreement(mesh.points[self.map68], peppa)
            figures = {"presence": mesh.presence, "teacher_agreement": agreement}
            if mesh.presence < self.min_presence:
                outcomes[i] = LabelOutcome(None, "no_face", figures, timings)
            elif agreement > self.max_disagreement:
                outcomes[i] = LabelOutcome(None, "teachers_disagree", figures, timings)
            else:
                outcomes[i] = LabelOutcome(None, None, figures, timings)
                pending.append(i)
                targets.append(mesh.points)
        if pending:
            t0 = time.perf_counter()
            fit = fit_face_model(self.model, np.stack(targets), self.vertex_ids,
                                 np.broadcast_to(self.weights, (len(pending), len(self.weights))), self.settings)
            per_face = (time.perf_counter() - t0) / len(pending)
            for j, i in enumerate(pending):
                out = outcomes[i]
                t1 = time.perf_counter()
                out.record, out.reason = self._record(faces[i], fit, j, out.figures)
                out.timings.update(fit=per_face, record=time.perf_counter() - t1)
        return outcomes  # type: ignore[return-value]

    def _record(self, face: FaceToLabel, fit: FitResult, j: int, figures: dict[str, float]) -> tuple[dict | None, str | None]:
        import cv2

        from facepgn import records

        R = fit.rotation[j]
        pose = geometry.matrix_to_euler(R)
        yaw = float(np.degrees(pose[1]))
        figures.update(fit_residual=float(fit.residual[j]), yaw_deg=yaw, pitch_deg=float(np.degrees(pose[0])),
                       roll_deg=float(np.degrees(pose[2])))
        if not np.isfinite(fit.residual[j]) or fit.residual[j] > self.max_residual:
            return None, "fit_residual"
        if abs(yaw) > self.max_yaw:
            return None, "yaw_out_of_range"
        size = self.image_size
        crop_to_frame = crop_around(fit.landmarks_3d[j][:, :2], self.face_fill, size)
        k = float(crop_to_frame[0, 0])
        frame_to_crop = records.invert_affine(crop_to_frame)
        crop = cv2.warpAffine(face.image, frame_to_crop, (size, size), flags=cv2.INTER_AREA if k > 1 else cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        scale = float(fit.scale[j]) / k
        t = np.asarray(fit.translation[j], np.float64)
        txy = records.apply_affine(frame_to_crop, t[None, :2])[0]
        verts = self.model.vertices(fit.id_coeffs[j], fit.exp_coeffs[j]).astype(np.float64)
        # numpy, not geometry.project: its torch round trip costs more than this one product
        verts_crop = (verts @ R.T) * (np.array([1.0, -1.0, 1.0]) * scale) + np.array([txy[0], txy[1], t[2] / k])
        lm_ids = np.asarray(self.model.landmark_ids)
        lm = verts_crop[lm_ids]
        dz = lm[:, 2].mean()
        lm[:, 2] -= dz
        verts_crop[:, 2] -= dz
        visible = self._visible(verts_crop, lm_ids, size)
        quality = float(np.clip(1.0 - figures["fit_residual"] / self.max_residual, 0, 1)
                        * np.clip(1.0 - figures["teacher_agreement"] / self.max_disagreement, 0, 1)
                        * figures["presence"])
        figures["quality"] = quality
        record_id = f"{face.source_path}#f{face.frame_index:06d}-{face.face_index:02d}"
        row = {
            "record_id": record_id,
            "source": "pseudo-label",
            "subject_id": face.subject_id,
            "image": records.encode_image(crop),
            "image_size": size,
            "landmarks_2d": lm[:, :2].astype(np.float32),
            "landmarks_3d": lm.astype(np.float32),
            "landmarks_visible": visible,
            "pose": np.asarray(pose, np.float32),
            "scale": scale,
            "translation": np.array([txy[0], txy[1], t[2] / k - dz], np.float32),
            "id_coeffs": fit.id_coeffs[j],
            "exp_coeffs": fit.exp_coeffs[j],
            "face_model": self.model.name,
            "crop_to_frame": crop_to_frame.reshape(-1),
            "source_path": face.source_path,
            "landmark_definition": self.definition,
            "frame_index": int(face.frame_index),
            "quality": quality,
            "fit_residual": figures["fit_residual"],
            "teacher_agreement": figures["teacher_agreement"],
            "parent_record_id": None,
        }
        return row, None

    def _visible(self, verts_crop: np.ndarray, lm_ids: np.ndarray, size: int) -> np.ndarray:
        """Landmarks not hidden by the fitted mesh itself (z-buffer at the crop's resolution)."""
        from facepgn import render

        half = max(16, size // 2)  # the z-buffer at half resolution: visibility needs no more, and costs a quarter
        k = half / size
        small = verts_crop * k
        raster = render.rasterize(small, self.model.triangles, half, half)
        return render.vertex_visibility(small[lm_ids], raster, tolerance=max(1.0, 0.015 * half)).astype(bool)
