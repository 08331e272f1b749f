"""The protocol's numbers: landmark NME (2D/3D, 68/51 points), the |yaw| buckets, pose errors, and
:func:`evaluate_landmarks`, which scores named landmark sets into an :class:`EvaluationResult`.

Protocol (as in cleardusk/3DDFA ``benchmark_aflw2000.py``, reproduced exactly for 2D-68):

* per image NME = mean over the points of the Euclidean error, divided by ``sqrt(w * h)`` of the
  ground truth's 68-point 2D bounding box (the same normaliser for every variant);
* 2D uses (x, y); 3D uses (x, y, z) after centring z of prediction and ground truth separately (the
  z origin of image-space landmarks is arbitrary);
* the 51-point variant drops the jaw line (points 0..16, keeps 17..67);
* images are bucketed by ``|yaw|`` in degrees, as published (no wrapping: the standard
  ``AFLW2000-3D.pose.npy`` has 7 images with ``|yaw| > 90`` which land in (60, 90]), giving
  1312/383/305 images over the full 2000; the headline is the mean of the three bucket means.

All NME values are fractions of the face size (the report shows them in percent). Pose errors are
in degrees, with differences wrapped into [-180, 180).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from facepgn.errors import FacepgnError

NUM_LANDMARKS = 68
JAWLESS_POINTS = np.arange(17, 68)  # the 51-point variant
YAW_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("[0,30]", -math.inf, 30.0),
    ("(30,60]", 30.0, 60.0),
    ("(60,90]", 60.0, math.inf),
)

# ---- array helpers -----------------------------------------------------------------------------


def as_landmarks(array: Any, name: str = "landmarks") -> np.ndarray:
    """(N, 68, D) float64 from (N, 68, D), (N, D, 68) (3DDFA layout), (68, D) or (D, 68); D in {2, 3}."""
    a = np.asarray(array, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise FacepgnError(f"{name}: expected (N, 68, 2|3) or (N, 2|3, 68) landmarks, got shape {a.shape}")
    if a.shape[1] == NUM_LANDMARKS and a.shape[2] in (2, 3):
        return a
    if a.shape[2] == NUM_LANDMARKS and a.shape[1] in (2, 3):
        return a.transpose(0, 2, 1)
    raise FacepgnError(f"{name}: expected (N, 68, 2|3) or (N, 2|3, 68) landmarks, got shape {a.shape}")


def face_size(gt: np.ndarray) -> np.ndarray:
    """(N,) ``sqrt(w * h)`` of each ground truth's 2D bounding box (the NME normaliser)."""
    gt = as_landmarks(gt, "ground truth")
    extent = gt[..., :2].max(axis=1) - gt[..., :2].min(axis=1)
    return np.sqrt(extent[:, 0] * extent[:, 1])


def nme(
    pred: np.ndarray,
    gt: np.ndarray,
    dims: int = 2,
    points: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """(N,) normalised mean error per image, 2D (x, y) or 3D (x, y, centred z); see the module doc."""
    pred = as_landmarks(pred, "prediction")
    gt = as_landmarks(gt, "ground truth")
    if pred.shape[0] != gt.shape[0]:
        raise FacepgnError(f"prediction has {pred.shape[0]} faces, ground truth {gt.shape[0]}")
    if dims not in (2, 3):
        raise ValueError("dims must be 2 or 3")
    if dims == 3 and (pred.shape[2] < 3 or gt.shape[2] < 3):
        raise FacepgnError("3D NME needs 3D landmarks in both prediction and ground truth")
    p, g = pred[..., :dims].copy(), gt[..., :dims].copy()
    if dims == 3:
        p[..., 2] -= p[..., 2].mean(axis=1, keepdims=True)
        g[..., 2] -= g[..., 2].mean(axis=1, keepdims=True)
    idx = np.arange(NUM_LANDMARKS) if points is None else np.asarray(points)
    dist = np.linalg.norm(p[:, idx] - g[:, idx], axis=-1)
    return dist.mean(axis=1) / face_size(gt)


def yaw_bucket_index(yaw_degrees: np.ndarray) -> np.ndarray:
    """(N,) bucket 0, 1, 2 for |yaw| in [0,30], (30,60], (60,...) degrees (unwrapped, as published)."""
    a = np.abs(np.asarray(yaw_degrees, dtype=np.float64).reshape(-1))
    out = np.full(a.shape, 2, dtype=np.int64)
    out[a <= 60.0] = 1
    out[a <= 30.0] = 0
    return out


def bucket_counts(yaw_degrees: np.ndarray) -> dict[str, int]:
    idx = yaw_bucket_index(yaw_degrees)
    return {name: int((idx == i).sum()) for i, (name, _, _) in enumerate(YAW_BUCKETS)}


def bucket_means(values: np.ndarray, yaw_degrees: np.ndarray) -> dict[str, float]:
    """Per-bucket means of per-image ``values``, ``mean`` (the mean of the bucket means: the
    headline) and ``all`` (the plain mean). An empty bucket is NaN and left out of ``mean``."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    idx = yaw_bucket_index(yaw_degrees)
    if idx.shape != values.shape:
        raise FacepgnError(f"{values.size} values but {idx.size} yaw angles")
    out: dict[str, float] = {}
    for i, (name, _, _) in enumerate(YAW_BUCKETS):
        sel = values[idx == i]
        out[name] = float(sel.mean()) if sel.size else float("nan")
    present = [out[name] for name, _, _ in YAW_BUCKETS if not math.isnan(out[name])]
    out["mean"] = float(np.mean(present)) if present else float("nan")
    out["all"] = float(values.mean()) if values.size else float("nan")
    return out


def wrap_degrees(angles: np.ndarray) -> np.ndarray:
    """Angles (degrees) wrapped into [-180, 180)."""
    return (np.asarray(angles, dtype=np.float64) + 180.0) % 360.0 - 180.0


def pose_errors(pred_degrees: np.ndarray, gt_degrees: np.ndarray) -> np.ndarray:
    """(N, 3) absolute wrapped differences of (pitch, yaw, roll) in degrees."""
    p = np.asarray(pred_degrees, dtype=np.float64).reshape(-1, 3)
    g = np.asarray(gt_degrees, dtype=np.float64).reshape(-1, 3)
    if p.shape != g.shape:
        raise FacepgnError(f"pose prediction has {p.shape[0]} rows, ground truth {g.shape[0]}")
    return np.abs(wrap_degrees(p - g))


def pose_mae(pred_degrees: np.ndarray, gt_degrees: np.ndarray) -> dict[str, float]:
    """Mean absolute error in degrees of pitch, yaw, roll (wrapped) and their mean."""
    err = pose_errors(pred_degrees, gt_degrees)
    out = {name: float(err[:, i].mean()) for i, name in enumerate(("pitch", "yaw", "roll"))}
    out["mean"] = float(err.mean())
    return out

# ---- landmark evaluation -----------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """Metrics (JSON-ready) and the per-image values behind them."""

    metrics: dict[str, Any]
    per_image: dict[str, np.ndarray]  # name -> (N,) values; "name" and "yaw_deg" included
    names: list[str] = field(default_factory=list)
    report_paths: dict[str, str] = field(default_factory=dict)
    # what the report's pictures are drawn from (evaluate_aflw2000; empty for precomputed arrays)
    predictions: dict[str, np.ndarray] = field(default_factory=dict)  # roi pass, (N, 68, D) image pixels
    gt: np.ndarray | None = None  # (N, 68, D) image pixels
    detector: "DetectorPass | None" = None
    image_source: Callable[[int], np.ndarray] | None = None  # i -> RGB image of face i
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file next to report.md, caption)


DETECTOR_KEY = "detector_boxes"  # metrics.json key and per_image column prefix of the detector-box pass


@dataclass
class DetectorPass:
    """The detector-box pass of ``evaluate_aflw2000``, one row per scored image (NaN where missed)."""

    detected: np.ndarray  # (N,) bool
    reasons: list[str]  # "" or why the labelled face has no crop
    boxes: np.ndarray  # (N, 4) x, y, w, h of the matched detection
    scores: np.ndarray  # (N,)
    crop_to_frame: np.ndarray  # (N, 2, 3) the model crop's crop->frame affine
    predictions: dict[str, np.ndarray]  # name -> (N, 68, D) image pixels
    seconds_detect: float = 0.0


def evaluate_landmarks(
    predictions: np.ndarray | Mapping[str, np.ndarray],
    gt: np.ndarray,
    yaw_degrees: np.ndarray,
    *,
    pred_pose_degrees: np.ndarray | None = None,
    gt_pose_degrees: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
    other_poses_degrees: Mapping[str, np.ndarray] | None = None,
) -> EvaluationResult:
    """NME (2D/3D, 68/51 points, per yaw bucket) of one or more named landmark sets in image pixels,
    and the pose MAE when both poses are given (``metrics["pose_mae_deg"]``); ``other_poses_degrees``
    (name -> (N, 3), compared models) adds ``metrics["pose_mae_deg_compared"][name]`` and the
    ``<name>/pose_error.*`` columns."""
    gt = as_landmarks(gt, "ground truth")
    n = gt.shape[0]
    yaw = np.asarray(yaw_degrees, dtype=np.float64).reshape(-1)
    if yaw.size != n:
        raise FacepgnError(f"{yaw.size} yaw angles for {n} faces")
    sets = {"landmarks": predictions} if not isinstance(predictions, Mapping) else dict(predictions)
    per_image: dict[str, np.ndarray] = {"yaw_deg": yaw}
    metrics: dict[str, Any] = {"num_images": n, "bucket_counts": bucket_counts(yaw), "landmarks": {}}
    for set_name, pred in sets.items():
        pred = as_landmarks(pred, set_name)
        if pred.shape[0] != n:
            raise FacepgnError(f"{set_name}: {pred.shape[0]} predictions for {n} faces")
        variants = [("nme_2d_68", 2, None), ("nme_2d_51", 2, JAWLESS_POINTS)]
        if pred.shape[2] == 3 and gt.shape[2] == 3:
            variants += [("nme_3d_68", 3, None), ("nme_3d_51", 3, JAWLESS_POINTS)]
        entry = {}
        for key, dims, points in variants:
            values = nme(pred, gt, dims, points)
            per_image[f"{set_name}.{key}"] = values
            entry[key] = bucket_means(values, yaw)
        metrics["landmarks"][set_name] = entry
    if pred_pose_degrees is not None and gt_pose_degrees is not None:
        err = pose_errors(pred_pose_degrees, gt_pose_degrees)
        for i, angle in enumerate(("pitch", "yaw", "roll")):
            per_image[f"pose_error.{angle}"] = err[:, i]
        metrics["pose_mae_deg"] = pose_mae(pred_pose_degrees, gt_pose_degrees)
    if other_poses_degrees and gt_pose_degrees is not None:
        metrics["pose_mae_deg_compared"] = {}
        for model_name, pose in other_poses_degrees.items():
            err = pose_errors(pose, gt_pose_degrees)
            for i, angle in enumerate(("pitch", "yaw", "roll")):
                per_image[f"{model_name}/pose_error.{angle}"] = err[:, i]
            metrics["pose_mae_deg_compared"][model_name] = pose_mae(pose, gt_pose_degrees)
    if extra:
        metrics.update(extra)
    return EvaluationResult(metrics, per_image, list(names) if names is not None else [str(i) for i in range(n)])


def crop_side_over_face(crop_to_frame: np.ndarray, gt: np.ndarray, image_size: int) -> float | None:
    """Median of crop side (frame pixels; sqrt of the area for a non-square crop) over the longer
    side of the ground-truth landmarks' 2D box: how large the face is in what the model sees
    (the 3DDFA roi boxes: about 1.41). NaN crops (missed faces) are left out."""
    a = np.asarray(crop_to_frame, dtype=np.float64).reshape(-1, 2, 3)
    keep = np.isfinite(a).all(axis=(1, 2))
    if not keep.any():
        return None
    side = np.sqrt(np.abs(np.linalg.det(a[keep, :, :2]))) * image_size
    g = as_landmarks(gt)[keep, :, :2]
    extent = (g.max(axis=1) - g.min(axis=1)).max(axis=1)
    return round(float(np.median(side / np.maximum(extent, 1e-9))), 4)
