"""The standard AFLW2000-3D arrays (3DDFA's ``AFLW2000-3D.pts68.npy``, ``.pose.npy``,
``_crop.roi_box.npy``): reading ``.npy`` files, finding a face's row in them, and
:func:`evaluate_arrays`, which scores precomputed predictions against them."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from facepgn import storage
from facepgn.crops import apply_affine, roi_affine
from facepgn.errors import FacepgnError, InputError
from facepgn.evaluation.metrics import EvaluationResult, as_landmarks, evaluate_landmarks
from facepgn.evaluation.report import write_report

STANDARD_ARRAYS = "media/aflw2000-3d-arrays"  # inside the shared folder
STANDARD_NUM_IMAGES = 2000


def load_array(path: str, what: str) -> np.ndarray:
    """A ``.npy`` array (local or ``s3://``) with a one-line error naming the file."""
    try:
        data = storage.read_bytes(str(path))
    except FileNotFoundError:
        raise InputError(path, f"{what} file not found") from None
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a bad file
        raise InputError(path, f"not a readable .npy {what} array ({type(exc).__name__})") from None


def evaluate_arrays(
    pred: np.ndarray | str,
    gt: np.ndarray | str,
    pose: np.ndarray | str,
    *,
    pred_pose: np.ndarray | str | None = None,
    roi_boxes: np.ndarray | str | None = None,
    crop_size: int | None = None,
    out_dir: str | None = None,
    title: str = "AFLW2000-3D (precomputed predictions)",
) -> EvaluationResult:
    """Evaluate precomputed predictions against ground-truth arrays (arrays or ``.npy`` paths).

    ``pose``: (N,) yaw in degrees (like ``AFLW2000-3D.pose.npy``) or (N, 3) pitch, yaw, roll in
    degrees. ``pred_pose`` (N, 3) degrees gives the pose MAE (needs a (N, 3) ``pose``). With
    ``roi_boxes`` (N, 4: x0, y0, x1, y1) and ``crop_size`` the predictions are in crop pixels and
    are mapped back to the image as 3DDFA does (x * (x1 - x0) / crop_size + x0, likewise y; z scaled
    by the geometric mean of the two scales).
    """
    sources = {"pred": pred, "gt": gt, "pose": pose, "pred_pose": pred_pose, "roi": roi_boxes}
    arrays = {k: (load_array(v, k) if isinstance(v, (str, os.PathLike)) else v) for k, v in sources.items()}
    p = as_landmarks(arrays["pred"], str(pred) if isinstance(pred, (str, os.PathLike)) else "prediction")
    g = as_landmarks(arrays["gt"], str(gt) if isinstance(gt, (str, os.PathLike)) else "ground truth")
    pose_arr = np.asarray(arrays["pose"], dtype=np.float64)
    if pose_arr.ndim == 2 and pose_arr.shape[1] == 3:
        yaw, gt_pose = pose_arr[:, 1], pose_arr
    elif pose_arr.ndim == 1:
        yaw, gt_pose = pose_arr, None
    else:
        raise InputError(str(pose), f"expected (N,) yaw or (N, 3) pitch/yaw/roll degrees, got shape {pose_arr.shape}")
    if arrays["roi"] is not None:
        if crop_size is None:
            raise FacepgnError("roi boxes need the crop size the predictions are in (crop_size)")
        roi = np.asarray(arrays["roi"], dtype=np.float64).reshape(-1, 4)
        if roi.shape[0] != p.shape[0]:
            raise FacepgnError(f"{roi.shape[0]} roi boxes for {p.shape[0]} predictions")
        p = np.stack([apply_affine(roi_affine(box, crop_size), points) for box, points in zip(roi, p)])
    pp = arrays["pred_pose"]
    if pp is not None and gt_pose is None:
        raise FacepgnError("pose MAE needs the ground-truth pose as (N, 3) pitch, yaw, roll degrees")
    result = evaluate_landmarks(p, g, yaw, pred_pose_degrees=pp, gt_pose_degrees=gt_pose if pp is not None else None)
    if out_dir:
        write_report(result, out_dir, title)
    return result


def standard_arrays_dir() -> Path:
    """The shared copy of the standard AFLW2000-3D arrays (``pts68``, ``pose``, ``roi_box``)."""
    from facepgn.paths import shared_path

    return shared_path(STANDARD_ARRAYS)


def match_standard_rows(landmarks: np.ndarray, pts68: np.ndarray, tolerance: float = 1e-2) -> np.ndarray | None:
    """Row of the standard ``AFLW2000-3D.pts68.npy`` (2000, 3, 68) holding each face's ``pt3d_68``
    (equal up to float32 rounding), or None if any face is not found."""
    from scipy.spatial import cKDTree

    lm = as_landmarks(landmarks, "landmarks")
    ref = as_landmarks(pts68, "standard landmarks")
    if lm.shape[2] != 3:
        return None
    flat_ref = ref.reshape(ref.shape[0], -1)
    flat = lm.reshape(lm.shape[0], -1)
    _, rows = cKDTree(flat_ref[:, :12]).query(flat[:, :12])
    if np.abs(flat_ref[rows] - flat).max(initial=0.0) > tolerance:
        return None
    return rows.astype(np.int64)
