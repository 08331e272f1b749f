"""What an AFLW2000-3D evaluation runs over (:func:`plan_aflw2000`): each face's ground truth and
pose, read from a folder laid out like AFLW2000-3D (or given as ``labelled.LabelledFace``), and
its crop: the standard 3DDFA roi box when the face is one of the standard 2000 (found by its
``pt3d_68``), else a square box around its ground-truth landmarks."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence, TypedDict

import numpy as np

from facepgn import storage
from facepgn.crops import DEFAULT_LANDMARK_MARGIN, landmark_box, roi_affine
from facepgn.errors import FacepgnError, InputError
from facepgn.evaluation.arrays import load_array, match_standard_rows, standard_arrays_dir


@dataclass
class Aflw2000Plan:
    """What an AFLW2000-3D evaluation runs over: ground truth, poses and the crop of every face."""

    image_paths: list[str]
    gt: np.ndarray  # (N, 68, 3|2) image pixels
    pose_degrees: np.ndarray  # (N, 3) pitch, yaw, roll (Pose_Para, degrees, unwrapped)
    crop_to_frame: np.ndarray  # (N, 2, 3)
    box: str  # how the crops were chosen
    standard_rows: np.ndarray | None  # row of each face in the standard arrays, if matched
    faces: list[Any] | None = None  # LabelledFace objects when given in memory
    errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [storage.basename(os.path.splitext(p)[0]) for p in self.image_paths]


class PlanOptions(TypedDict, total=False):
    """How :func:`plan_aflw2000` chooses the faces and their crops, as ``evaluate_aflw2000`` passes
    them on (its own ``image_size`` and ``skip_bad`` go too)."""

    box: str
    margin: float | None
    arrays_dir: str | os.PathLike | None
    limit: int | None


def plan_aflw2000(
    data: str | os.PathLike | Sequence[Any],
    *,
    image_size: int = 128,
    box: str = "auto",
    margin: float | None = None,
    arrays_dir: str | os.PathLike | None = None,
    skip_bad: bool = False,
    limit: int | None = None,
) -> Aflw2000Plan:
    """Read the ground truth of a folder laid out like AFLW2000-3D (or a list of
    ``labelled.LabelledFace``) and choose each face's crop: ``box="roi"`` the standard 3DDFA boxes
    (every face must match the standard arrays in ``arrays_dir``, default the shared copy),
    ``"landmarks"`` a square box around the ground-truth landmarks (``margin``), ``"auto"`` the roi
    boxes when every face matches, else the landmark box. ``skip_bad``: a bad .mat is recorded in
    ``errors``, not raised."""
    if box not in ("auto", "roi", "landmarks"):
        raise FacepgnError(f"box must be auto, roi or landmarks, not {box!r}")
    gts, poses, image_paths, faces, errors = _read_ground_truth(data, skip_bad, limit)
    if not gts:
        raise InputError(str(data), "no faces to evaluate")
    dims = min(g.shape[1] for g in gts)
    gt = np.stack([g[:, :dims] for g in gts]).astype(np.float64)
    pose_deg = np.degrees(np.stack(poses).astype(np.float64))
    affines, box_used, rows = _choose_crops(gt, str(data), image_size, box, margin, arrays_dir)
    return Aflw2000Plan(image_paths, gt, pose_deg, affines, box_used, rows, faces, errors)


def _read_ground_truth(data: str | os.PathLike | Sequence[Any], skip_bad: bool, limit: int | None):
    """(landmarks, Pose_Para pitch/yaw/roll radians, image paths, the faces if given in memory,
    errors) of each face."""
    from facepgn import labelled

    errors: list[dict[str, str]] = []
    gts: list[np.ndarray] = []
    poses: list[np.ndarray] = []
    image_paths: list[str] = []
    if not isinstance(data, (str, os.PathLike)):
        faces = list(data)[:limit]
        for f in faces:
            if f.pose is None:
                raise InputError(f.mat_path, "no Pose_Para (needed for the yaw buckets)")
        return [f.landmarks for f in faces], [f.pose for f in faces], [f.source_path for f in faces], faces, errors
    for p in labelled.list_labelled_images(str(data))[:limit]:
        mat_path = os.path.splitext(p)[0] + ".mat"
        try:
            mat = labelled.read_mat(mat_path)
            lm = labelled.landmarks_from_mat(mat, mat_path)
            pose_para = labelled.mat_vector(mat, "Pose_Para", 7, mat_path)
            if pose_para is None:
                raise InputError(mat_path, "no Pose_Para (needed for the yaw buckets)")
        except InputError as exc:
            if not skip_bad:
                raise
            errors.append({"path": exc.path, "reason": exc.cause})
            continue
        gts.append(lm)
        poses.append(pose_para[:3])
        image_paths.append(p)
    return gts, poses, image_paths, None, errors


def _choose_crops(gt: np.ndarray, data: str, image_size: int, box: str, margin: float | None,
                  arrays_dir: str | os.PathLike | None) -> tuple[np.ndarray, str, np.ndarray | None]:
    """(crop->frame affines (N, 2, 3), how they were chosen, the standard rows if matched)."""
    if box in ("auto", "roi"):
        adir = str(arrays_dir) if arrays_dir else str(standard_arrays_dir())
        pts_file = storage.join(adir, "AFLW2000-3D.pts68.npy")
        roi_file = storage.join(adir, "AFLW2000-3D_crop.roi_box.npy")
        rows = None
        if gt.shape[2] == 3 and storage.exists(pts_file) and storage.exists(roi_file):
            rows = match_standard_rows(gt, load_array(pts_file, "standard landmarks"))
        if rows is not None:
            roi = load_array(roi_file, "roi boxes").astype(np.float64)
            affines = np.stack([roi_affine(roi[r], image_size) for r in rows])
            return affines, f"standard 3DDFA roi boxes ({storage.basename(roi_file)})", rows
        if box == "roi":
            raise InputError(data, f"faces do not match the standard AFLW2000-3D arrays in {adir}; use box=landmarks")
    margin = DEFAULT_LANDMARK_MARGIN if margin is None else margin
    boxes = [landmark_box(g, margin) for g in gt]
    affines = np.stack([np.array([[sd / image_size, 0, x0], [0, sd / image_size, y0]]) for x0, y0, sd in boxes])
    return affines, f"square boxes around the ground-truth landmarks (margin {margin})", None
