"""The benchmark protocol: landmark NME (AFLW2000-3D, 3DDFA protocol), pose error, dense shape error,
and the report writer (Markdown table, cumulative error distribution plot, metrics.json).

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

:func:`evaluate_aflw2000` scores two crop conventions in one run: the standard 3DDFA roi boxes (the
published protocol, ``metrics["landmarks"]``) and, with ``detector_boxes``, what a user's pipeline
feeds the model: YuNet on the whole image as ``facepgn infer`` runs it on a photo
(``facepgn.inference.photo_detector`` / ``detect_photo``), the detection nearest the labelled face,
cropped exactly as ``facepgn infer`` crops a detected face (``facepgn.faces.square_crop`` with
``InferConfig``'s margin; ``metrics["detector_boxes"]``). An image where no detection matches
the labelled face is counted as missed, per bucket; the detector NME is over the detected images.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from facepgn import storage
from facepgn.errors import FacepgnError, InputError

log = logging.getLogger(__name__)

NUM_LANDMARKS = 68
JAWLESS_POINTS = np.arange(17, 68)  # the 51-point variant
YAW_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("[0,30]", -math.inf, 30.0),
    ("(30,60]", 30.0, 60.0),
    ("(60,90]", 60.0, math.inf),
)
STANDARD_ARRAYS = "media/aflw2000-3d-arrays"  # inside the shared folder
STANDARD_NUM_IMAGES = 2000

# predict_fn: RGB uint8 crops (B, S, S, 3) -> (B, 68, 2|3) crop-pixel landmarks, or a mapping of
# named landmark sets (B, 68, 2|3) plus an optional "pose" (B, 3): pitch, yaw, roll radians.
PredictFn = Callable[[np.ndarray], "np.ndarray | Mapping[str, np.ndarray]"]
# A compared model's sets are named "<name>/<set>" and its pose "<name>/pose" (see with_compared_models).
# frame_peer_fn: (RGB image, the model crop's crop->frame affine (2, 3), crop side px) -> (68, 2|3)
# landmarks in image pixels: a peer that crops the image itself (see mediapipe_peer).
FramePeerFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
POSE_KEY = "pose"


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


# ---- dense shape error -------------------------------------------------------------------------


@dataclass
class ShapeError:
    """Dense shape error after similarity alignment of the prediction onto the ground truth."""

    rmse: float  # sqrt(mean squared distance), ground-truth units (mm for Florence scans)
    mean_distance: float
    num_points: int  # ground-truth points used (after the nose-tip crop)
    iterations: int
    scale: float
    rotation: np.ndarray
    translation: np.ndarray
    aligned: np.ndarray  # the prediction's vertices aligned onto the ground truth


def similarity_align(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None):
    """``(s, R, t)`` with ``dst ≈ s R src + t`` (proper rotation) -- ``facepgn.geometry.similarity_fit``."""
    from facepgn.geometry import similarity_fit

    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    s, R, t = similarity_fit(src, dst, w)
    return float(s), np.asarray(R, dtype=np.float64), np.asarray(t, dtype=np.float64)


def _apply(points: np.ndarray, s: float, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    return s * points @ R.T + t


def shape_error(
    pred_vertices: np.ndarray,
    gt_vertices: np.ndarray,
    *,
    correspondence: str = "known",
    pred_landmarks: np.ndarray | None = None,
    gt_landmarks: np.ndarray | None = None,
    crop_radius: float | None = None,
    gt_nose_tip: np.ndarray | int | None = None,
    allow_scale: bool = True,
    max_iterations: int = 30,
    tolerance: float = 1e-5,
) -> ShapeError:
    """Dense 3D shape error (Florence / FaceWarehouse style).

    ``correspondence="known"``: the meshes share a topology (vertex i matches vertex i); one
    similarity fit, then the RMSE over the (cropped) ground-truth vertices.
    ``correspondence="nearest"``: different topologies; start from a landmark fit (if both landmark
    sets are given) or from matching centroids and RMS radii, then iterate: each ground-truth point's
    nearest aligned predicted vertex (``scipy.spatial.cKDTree``) -> similarity refit, until the RMSE
    stops improving. Distances are ground truth -> prediction, as in the Florence protocol.
    ``crop_radius``: keep only ground-truth points within this distance of ``gt_nose_tip`` (a point or
    a vertex index), e.g. 95 (mm) for Florence. ``allow_scale=False`` gives a rigid fit.
    """
    with _SingleTorchThread():
        return _shape_error(pred_vertices, gt_vertices, correspondence, pred_landmarks, gt_landmarks, crop_radius,
                            gt_nose_tip, allow_scale, max_iterations, tolerance)


class _SingleTorchThread:
    """Run the many small similarity fits of an ICP loop on one torch thread: on a busy CPU the
    thread pool's hand-offs cost more than these 4x4 problems (measured ~4x slower with 2 threads)."""

    def __enter__(self):
        import torch

        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self._threads)


def _shape_error(pred_vertices, gt_vertices, correspondence, pred_landmarks, gt_landmarks, crop_radius,
                 gt_nose_tip, allow_scale, max_iterations, tolerance) -> ShapeError:
    pred = np.asarray(pred_vertices, dtype=np.float64).reshape(-1, 3)
    gt = np.asarray(gt_vertices, dtype=np.float64).reshape(-1, 3)
    keep = np.arange(gt.shape[0])
    if crop_radius is not None:
        if gt_nose_tip is None:
            raise ValueError("crop_radius needs gt_nose_tip (a vertex index or a 3D point)")
        tip = gt[int(gt_nose_tip)] if np.ndim(gt_nose_tip) == 0 else np.asarray(gt_nose_tip, dtype=np.float64)
        keep = np.flatnonzero(np.linalg.norm(gt - tip, axis=1) <= crop_radius)
        if keep.size < 3:
            raise FacepgnError(f"only {keep.size} ground-truth points within {crop_radius} of the nose tip")

    def fit(src: np.ndarray, dst: np.ndarray):
        s, R, t = similarity_align(src, dst)
        if not allow_scale:
            # rigid: refit t with unit scale
            s = 1.0
            t = dst.mean(axis=0) - src.mean(axis=0) @ R.T
        return s, R, t

    if correspondence == "known":
        if pred.shape != gt.shape:
            raise FacepgnError(f"known correspondence needs equal vertex counts, got {pred.shape[0]} and {gt.shape[0]}")
        s, R, t = fit(pred[keep], gt[keep])
        aligned = _apply(pred, s, R, t)
        d = np.linalg.norm(aligned[keep] - gt[keep], axis=1)
        return ShapeError(float(np.sqrt((d**2).mean())), float(d.mean()), int(keep.size), 1, s, R, t, aligned)
    if correspondence != "nearest":
        raise ValueError("correspondence must be 'known' or 'nearest'")

    from scipy.spatial import cKDTree

    target = gt[keep]
    if pred_landmarks is not None and gt_landmarks is not None:
        s, R, t = fit(np.asarray(pred_landmarks, np.float64).reshape(-1, 3), np.asarray(gt_landmarks, np.float64).reshape(-1, 3))
    else:
        pc, gc = pred.mean(axis=0), target.mean(axis=0)
        s = float(np.sqrt(((target - gc) ** 2).sum(1).mean() / max(((pred - pc) ** 2).sum(1).mean(), 1e-30)))
        s = s if allow_scale else 1.0
        R, t = np.eye(3), gc - s * pc
    best = None
    prev = math.inf
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        aligned = _apply(pred, s, R, t)
        d, idx = cKDTree(aligned).query(target)
        rmse = float(np.sqrt((d**2).mean()))
        if best is None or rmse < best[0]:
            best = (rmse, float(d.mean()), s, R, t, aligned)
        if prev - rmse <= tolerance * max(rmse, 1e-12):
            break
        prev = rmse
        s, R, t = fit(pred[idx], target)
    rmse, mean_d, s, R, t, aligned = best
    return ShapeError(rmse, mean_d, int(keep.size), iterations, s, R, t, aligned)


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


@dataclass
class DetectorPass:
    """The detector-box pass of :func:`evaluate_aflw2000`, one row per scored image (NaN where missed)."""

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


# ---- report ------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100.0 * x:.2f}"


DETECTOR_KEY = "detector_boxes"  # metrics.json key and per_image column prefix of the detector-box pass


def _nme_table(landmarks: Mapping[str, Any], counts: Mapping[str, int]) -> list[str]:
    header = ["landmarks", "metric", *counts.keys(), "mean", "all"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for set_name, entry in landmarks.items():
        for key, values in entry.items():
            cells = [set_name, key] + [_pct(values[b]) for b in counts] + [f"**{_pct(values['mean'])}**", _pct(values["all"])]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _pose_lines(p: Mapping[str, float] | None, compared: Mapping[str, Mapping[str, float]] | None = None,
                main: str = "the evaluated model") -> list[str]:
    if not p:
        return []
    if not compared:
        return ["", "Pose MAE (degrees, wrapped):", "", "| yaw | pitch | roll | mean |", "|---|---|---|---|",
                f"| {p['yaw']:.2f} | {p['pitch']:.2f} | {p['roll']:.2f} | {p['mean']:.2f} |"]
    rows = [(main, p)] + [(f"{name} (compared)", v) for name, v in compared.items()]
    return ["", "Pose MAE (degrees, wrapped), per model:", "", "| model | yaw | pitch | roll | mean |", "|---|---|---|---|---|"] + [
        f"| {label} | {v['yaw']:.2f} | {v['pitch']:.2f} | {v['roll']:.2f} | {v['mean']:.2f} |" for label, v in rows]


def _crop_note_lines(m: Mapping[str, Any]) -> list[str]:
    notes = m.get("crop_notes") or {}
    if not notes:
        return []
    return ["Every row set is given these crops (what the model sees), except: "
            + "; ".join(f"`{name}`: {note}" for name, note in notes.items()) + ".", ""]


def _summary_lines(m: Mapping[str, Any], det: Mapping[str, Any] | None) -> list[str]:
    """One row per row set: nme_2d_68 by bucket with each crop convention (the tables below have
    every metric)."""
    counts = list(m["bucket_counts"])
    header = ["row set"] + [f"roi {b}" for b in counts] + ["roi **mean**"]
    if det and det.get("landmarks"):
        header += [f"detector {b}" for b in counts] + ["detector **mean**"]
    lines = ["Summary, 2D NME over 68 points (nme_2d_68, %):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in m["landmarks"].items():
        v = entry["nme_2d_68"]
        cells = [name] + [_pct(v[b]) for b in counts] + [f"**{_pct(v['mean'])}**"]
        if det and det.get("landmarks"):
            d = det["landmarks"].get(name, {}).get("nme_2d_68")
            cells += ([_pct(d[b]) for b in counts] + [f"**{_pct(d['mean'])}**"]) if d else ["n/a"] * (len(counts) + 1)
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _legend_lines(m: Mapping[str, Any]) -> list[str]:
    legend = m.get("legend") or {}
    if not legend:
        return []
    return ["Row sets:", ""] + [f"- `{name}`: {text}" for name, text in legend.items()] + [""]


def _scale_note(m: Mapping[str, Any]) -> str:
    r = m.get("crop_side_over_face")
    return "" if r is None else f"; crop side {r:.2f}x the face's landmark extent (median)"


def _detector_lines(det: Mapping[str, Any], main: str = "the evaluated model") -> list[str]:
    n, found, missed = det["num_images"], det["num_detected"], det["num_missed"]
    lines = ["", "## Detector boxes (what a user's pipeline crops)", "", f"Crop boxes: {det['box']}{_scale_note(det)}.", ""]
    lines += _crop_note_lines(det)
    by_bucket = ", ".join(f"{k}: {v}" for k, v in det["missed_bucket_counts"].items())
    lines += [f"Labelled face detected in {found} of {n} images ({100.0 * found / max(n, 1):.1f}%); "
              f"missed in {missed} ({by_bucket}). The NME below is over the {found} detected images only "
              "(a missed face has no prediction in this pass; the CED plot counts it as a failure).", ""]
    if found:
        lines += _nme_table(det["landmarks"], det["bucket_counts"])
        same = det.get("roi_same_images") or {}
        if same:
            parts = [f"{name} {_pct(v['mean'])}% ("
                     + ", ".join(f"{b} {_pct(v[b])}" for b in det["bucket_counts"]) + ")" for name, v in same.items()]
            lines += ["", f"For comparison, nme_2d_68 of the roi boxes on the same {found} images: " + "; ".join(parts) + "."]
        lines += _pose_lines(det.get("pose_mae_deg"), det.get("pose_mae_deg_compared"), main)
    if det.get("missed"):
        shown = det["missed"][:20]
        lines += ["", "Missed:", ""] + [f"- {e['name']} (yaw {e['yaw_deg']:.0f}): {e['reason']}" for e in shown]
        if len(det["missed"]) > len(shown):
            lines.append(f"- ... and {len(det['missed']) - len(shown)} more (per_image.csv: {DETECTOR_KEY}.detected = 0)")
    return lines


def report_markdown(result: EvaluationResult, title: str = "Evaluation", plot: str | None = None) -> str:
    """The metrics as Markdown: an NME table (percent of face size) per landmark set and crop
    convention (the 3DDFA roi boxes; the detector boxes when that pass ran), pose MAE, the
    cumulative error plot ``plot`` (a path relative to the report) and ``result.figures``."""
    m = result.metrics
    counts = m["bucket_counts"]
    det = m.get(DETECTOR_KEY)
    lines = [f"# {title}", "", f"{m['num_images']} images; |yaw| buckets: "
             + ", ".join(f"{k}: {v}" for k, v in counts.items()) + ".", ""]
    lines += ["NME in % of sqrt(w*h) of the ground-truth 2D landmark box (3DDFA protocol); "
              "'mean' is the mean of the three bucket means (the headline), 'all' the plain mean.", ""]
    lines += _legend_lines(m)
    if len(m["landmarks"]) > 1:
        lines += _summary_lines(m, det)
    main = m.get("model_label") or "the evaluated model"
    if det:
        lines += ["## 3DDFA roi boxes (the published protocol)", "", f"Crop boxes: {m.get('box')}{_scale_note(m)}.", ""]
        lines += _crop_note_lines(m)
    lines += _nme_table(m["landmarks"], counts)
    lines += _pose_lines(m.get("pose_mae_deg"), m.get("pose_mae_deg_compared"), main)
    if det:
        lines += _detector_lines(det, main)
    if plot:
        if det:
            lines += ["", "## Cumulative error distribution"]
        lines += ["", f"![cumulative error distribution]({plot})"]
    if result.figures:
        lines += ["", "## Predictions on the images"]
    for name, caption in result.figures:
        lines += ["", caption, "", f"![{storage.basename(name).rsplit('.', 1)[0]}]({name})"]
    if m.get("box") and not det:
        lines += ["", f"Crop boxes: {m['box']}{_scale_note(m)}."]
        if m.get("crop_notes"):
            lines += [""] + _crop_note_lines(m)[:1]
    if m.get("errors"):
        lines += ["", f"{len(m['errors'])} input(s) skipped:", ""] + [f"- {e['path']}: {e['reason']}" for e in m["errors"]]
    empty = [b for b, c in counts.items() if c == 0]
    if empty:
        lines += ["", f"Note: no images in bucket(s) {', '.join(empty)}; 'mean' averages the others."]
    return "\n".join(lines) + "\n"


CED_MANY_SETS = 3  # above this many landmark sets the CED plot shows 2D 68-point NME only, one panel per convention


def ced_plot_png(result: EvaluationResult, title: str = "Cumulative error distribution", max_nme: float | None = None) -> bytes:
    """PNG bytes: the fraction of images with NME <= x, for each landmark set's 2D/3D 68-point NME;
    solid for the roi boxes, dashed (same colour) for the detector boxes, whose missed faces count
    as failures (the curve levels off at the detected fraction). With more than
    :data:`CED_MANY_SETS` sets (peers, compared models) only the 2D 68-point NME is drawn, the roi
    boxes and the detector boxes in two panels."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    prefix = DETECTOR_KEY + "."
    keys = [k for k in result.per_image if k.endswith("_68") and ".nme_" in k and not k.startswith(prefix)]
    many = len({k.rsplit(".nme_", 1)[0] for k in keys}) > CED_MANY_SETS
    if many:
        keys = [k for k in keys if k.endswith(".nme_2d_68")]
    two_panels = many and any(prefix + k in result.per_image for k in keys)
    curves = []  # (panel, label, finite values in %, number of images, line style, colour)
    for i, key in enumerate(keys):
        label = key.replace(".nme_", " ").replace("_68", " 68pt")
        if many:
            label = key.rsplit(".nme_", 1)[0]
        colour = f"C{i % 10}"
        style = "-" if i < 10 else ":"
        values = 100.0 * np.asarray(result.per_image[key], dtype=np.float64)
        if prefix + key in result.per_image:
            det = 100.0 * np.asarray(result.per_image[prefix + key], dtype=np.float64)
            found = det[np.isfinite(det)]
            mean = f"{found.mean():.2f}%" if found.size else "n/a"
            if two_panels:
                curves.append((0, f"{label} (mean {values.mean():.2f}%)", values, values.size, style, colour))
                curves.append((1, f"{label} ({found.size}/{det.size} detected, mean {mean})", found, det.size, style, colour))
            else:
                curves.append((0, f"{label}, roi boxes (mean {values.mean():.2f}%)", values, values.size, style, colour))
                curves.append((0, f"{label}, detector boxes ({found.size}/{det.size} detected, mean {mean})", found, det.size, "--", colour))
        else:
            curves.append((0, f"{label} (all images: {values.mean():.2f}%)", values, values.size, style, colour))
    if max_nme is None:
        top = max((np.percentile(v, 95) for _, _, v, _, _, _ in curves if v.size), default=10.0)
        max_nme = float(max(10.0, math.ceil(top)))
    panels = 2 if two_panels else 1
    fig, axes = plt.subplots(1, panels, figsize=(7.2 * panels * (0.85 if panels > 1 else 1.0), 4.8), dpi=100, squeeze=False)
    for p, ax in enumerate(axes[0]):
        for panel, label, values, total, style, colour in curves:
            if panel != p:
                continue
            xs = np.concatenate([[0.0], np.sort(values)])
            ys = np.arange(0, values.size + 1) / max(total, 1)
            ax.step(xs, ys, where="post", label=label, linestyle=style, color=colour)
        ax.set_xlim(0, max_nme)
        ax.set_ylim(0, 1.0)
        ax.set_xlabel("2D NME, 68 points (% of face size)" if many else "NME (% of face size)")
        ax.set_ylabel("fraction of images")
        what = f"{title} ({result.metrics['num_images']} images)"
        if two_panels:
            what = ("3DDFA roi boxes" if p == 0 else "detector boxes (missed faces count as failures)") + f", {result.metrics['num_images']} images"
        ax.set_title(what, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
    if two_panels:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# ---- pictures of predictions -------------------------------------------------------------------

GT_COLOUR = (255, 60, 60)  # ground truth: red (RGB)
PRED_COLOUR = (40, 255, 40)  # prediction: green
BOX_COLOUR = (255, 210, 0)  # the detector's box: yellow


def headline_set(names: Sequence[str]) -> str:
    """The landmark set the report's pictures show: the fitted mesh's when scored, else the first."""
    names = list(names)
    return "mesh_landmarks" if "mesh_landmarks" in names else names[0]


def _text(image: np.ndarray, text: str, top: bool, colour=(255, 255, 255)) -> None:
    import cv2

    h, w = image.shape[:2]
    scale = max(0.3, w / 420.0)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    y0 = 0 if top else h - th - base - 4
    image[y0:y0 + th + base + 4, : min(w, tw + 6)] //= 3  # darken behind the text
    cv2.putText(image, text, (3, y0 + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def face_tile(
    image: np.ndarray,
    gt: np.ndarray,
    pred: np.ndarray | None,
    size: int = 160,
    box: np.ndarray | None = None,
    top: str = "",
    bottom: str = "",
) -> np.ndarray:
    """A ``size`` x ``size`` RGB view of one face: ground truth (red) and prediction (green) drawn
    on the image around the ground-truth face (widened to show a far-off prediction), the
    detector's ``box`` (x, y, w, h) in yellow, and a caption line at the top and bottom."""
    import cv2

    from facepgn import labelled, render

    g = np.asarray(gt, dtype=np.float64)[:, :2]
    lo, hi = g.min(axis=0), g.max(axis=0)
    centre, extent = (lo + hi) / 2.0, float(max(hi - lo))
    side = 1.5 * extent
    p = None if pred is None else np.asarray(pred, dtype=np.float64)[:, :2]
    if p is not None and np.isfinite(p).all():
        side = max(side, min(2.2 * float(np.abs(p - centre).max()), 4.0 * extent))
    side = max(side, 8.0)
    x0, y0 = centre - side / 2.0
    crop = labelled.crop_with_affine(image, np.array([[side / size, 0, x0], [0, side / size, y0]]), size)

    def to_tile(q: np.ndarray) -> np.ndarray:
        return (np.asarray(q, dtype=np.float64)[:, :2] - [x0, y0]) * (size / side)

    if box is not None and np.isfinite(box).all():
        (bx0, by0), (bx1, by1) = to_tile(np.array([[box[0], box[1]], [box[0] + box[2], box[1] + box[3]]]))
        cv2.rectangle(crop, (int(round(bx0)), int(round(by0))), (int(round(bx1)), int(round(by1))), BOX_COLOUR, 1, cv2.LINE_AA)
    radius = max(1.0, size / 110.0)
    crop = render.draw_landmarks(crop, to_tile(g), color=GT_COLOUR, radius=radius)
    if p is not None:
        crop = render.draw_landmarks(crop, to_tile(p), color=PRED_COLOUR, radius=radius)
    if top:
        _text(crop, top, True)
    if bottom:
        _text(crop, bottom, False)
    return crop


def grid_sample(values: np.ndarray, yaw_degrees: np.ndarray, per_bucket: int) -> list[list[int]]:
    """Per |yaw| bucket, ``per_bucket`` image indices at evenly spaced quantiles of ``values`` (NME)
    within the bucket, best first (all of a smaller bucket)."""
    values = np.asarray(values, dtype=np.float64)
    idx = yaw_bucket_index(yaw_degrees)
    rows = []
    for b in range(len(YAW_BUCKETS)):
        members = np.flatnonzero(idx == b)
        order = members[np.argsort(values[members], kind="stable")]
        if order.size > per_bucket:
            order = order[np.floor((np.arange(per_bucket) + 0.5) * order.size / per_bucket).astype(np.int64)]
        rows.append([int(i) for i in order])
    return rows


def _sheet(rows: list[list[np.ndarray]], columns: int, size: int) -> np.ndarray:
    """Tiles, each list starting a new grid row (padded with white tiles)."""
    from facepgn import render

    blank = np.full((size, size, 3), 255, np.uint8)
    tiles: list[np.ndarray] = []
    for row in rows:
        if not row:
            continue
        tiles += row + [blank] * ((-len(row)) % columns)
    return render.contact_sheet(tiles or [blank], columns=columns, pad=3)


def _png(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise FacepgnError("could not encode a report image as PNG")
    return buf.tobytes()


def report_figures(
    result: EvaluationResult,
    *,
    per_bucket: int = 6,
    columns: int = 6,
    best_worst: int = 4,
    tile: int = 160,
) -> list[tuple[str, bytes, str]]:
    """(file name, PNG bytes, Markdown caption) of the report's pictures: ``grid.png`` (faces
    sampled across the three |yaw| buckets, roi-box predictions), ``grid_detector.png`` (the same
    faces, detector-box predictions) and ``best_worst.png`` (the best and worst faces by NME). Needs
    ``result.image_source``; empty without it or with ``per_bucket`` and ``best_worst`` both 0."""
    if result.image_source is None or not result.predictions or result.gt is None or (per_bucket <= 0 and best_worst <= 0):
        return []
    set_name = headline_set(result.predictions)
    key = f"{set_name}.nme_2d_68"
    nme_roi = np.asarray(result.per_image[key], dtype=np.float64)
    yaw = np.asarray(result.per_image["yaw_deg"], dtype=np.float64)
    det = result.detector
    nme_det = None if det is None else np.asarray(result.per_image[f"{DETECTOR_KEY}.{key}"], dtype=np.float64)
    cache: dict[int, np.ndarray] = {}

    def image(i: int) -> np.ndarray:
        if i not in cache:
            cache[i] = result.image_source(i)
        return cache[i]

    def det_text(i: int) -> str:
        return "" if nme_det is None else ("det: missed" if not det.detected[i] else f"det {100 * nme_det[i]:.2f}%")

    def roi_tile(i: int, label: str = "") -> np.ndarray:
        bottom = f"roi {100 * nme_roi[i]:.2f}%" + (f"  {det_text(i)}" if nme_det is not None else "")
        return face_tile(image(i), result.gt[i], result.predictions[set_name][i], tile,
                         top=f"{label}{result.names[i]} yaw {yaw[i]:.0f}", bottom=bottom)

    def det_tile(i: int, label: str = "") -> np.ndarray:
        found = bool(det.detected[i])
        return face_tile(image(i), result.gt[i], det.predictions[set_name][i] if found else None, tile,
                         box=det.boxes[i] if found else None, top=f"{label}{result.names[i]} yaw {yaw[i]:.0f}",
                         bottom=det_text(i) if found else f"det: {det.reasons[i]}")

    colours = "ground truth in red, prediction in green"
    what = f"`{set_name}` 68 points, {colours}"
    out: list[tuple[str, bytes, str]] = []
    if per_bucket > 0:
        rows = grid_sample(nme_roi, yaw, per_bucket)
        labels = [b for (b, _, _), r in zip(YAW_BUCKETS, rows) if r]
        cols = max(1, min(columns, max(len(r) for r in rows)))
        layout = (f"one row{'s' if per_bucket > cols else ''} per |yaw| bucket ({', '.join(labels)}), faces at evenly "
                  "spaced NME quantiles of the bucket, best first")
        out.append(("grid.png", _png(_sheet([[roi_tile(i) for i in r] for r in rows], cols, tile)),
                    f"**Predictions on AFLW2000-3D, roi boxes**: {what}; {layout}; roi and detector-box NME under each face."))
        if det is not None:
            out.append(("grid_detector.png", _png(_sheet([[det_tile(i) for i in r] for r in rows], cols, tile)),
                        f"**The same faces, detector boxes** (what `facepgn infer` feeds the model): {what}, "
                        "the YuNet box in yellow."))
    if best_worst > 0:
        k = min(best_worst, nme_roi.size)
        order = np.argsort(nme_roi, kind="stable")
        rows = [[roi_tile(int(i), "best ") for i in order[:k]], [roi_tile(int(i), "worst ") for i in order[::-1][:k]]]
        caption = f"**Best and worst faces by NME**: top row the {k} best, second row the {k} worst (roi boxes)"
        if det is not None and det.detected.any():
            found = np.flatnonzero(det.detected)
            worst = found[np.argsort(nme_det[found], kind="stable")[::-1][:k]]
            rows.append([det_tile(int(i), "worst ") for i in worst])
            caption += f"; third row the {len(worst)} worst with detector boxes (missed faces are listed above)"
        out.append(("best_worst.png", _png(_sheet(rows, max(len(r) for r in rows), tile)),
                    f"{caption}; {what}, NME written on each."))
    return out


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    return value


def write_report(result: EvaluationResult, out_dir: str, title: str = "Evaluation", *, grid_per_bucket: int = 6,
                 grid_columns: int = 6, best_worst: int = 4, grid_tile: int = 160) -> dict[str, str]:
    """Write ``report.md``, ``ced.png``, ``metrics.json`` and ``per_image.csv`` (atomically) to
    ``out_dir``, and the pictures of :func:`report_figures` (embedded in the report) when the
    result has its images."""
    storage.makedirs(out_dir)
    paths = {name: storage.join(out_dir, name) for name in ("report.md", "ced.png", "metrics.json", "per_image.csv")}
    figures = report_figures(result, per_bucket=grid_per_bucket, columns=grid_columns, best_worst=best_worst, tile=grid_tile)
    for name, png, _ in figures:
        paths[name] = storage.join(out_dir, name)
        storage.atomic_write_bytes(paths[name], png)
    result.figures = [(name, caption) for name, _, caption in figures]
    storage.atomic_write_text(paths["report.md"], report_markdown(result, title, plot="ced.png"))
    storage.atomic_write_bytes(paths["ced.png"], ced_plot_png(result, title))
    storage.atomic_write_text(paths["metrics.json"], json.dumps(_json_safe(result.metrics), indent=2))
    columns = list(result.per_image)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["name", *columns])
    for i, name in enumerate(result.names):
        writer.writerow([name, *(f"{float(result.per_image[c][i]):.6g}" for c in columns)])
    storage.atomic_write_text(paths["per_image.csv"], text.getvalue())
    result.report_paths = paths
    return paths


# ---- whole benchmarks --------------------------------------------------------------------------


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
        p = p.copy()
        sx = (roi[:, 2] - roi[:, 0]) / crop_size
        sy = (roi[:, 3] - roi[:, 1]) / crop_size
        p[..., 0] = p[..., 0] * sx[:, None] + roi[:, None, 0]
        p[..., 1] = p[..., 1] * sy[:, None] + roi[:, None, 1]
        if p.shape[2] == 3:
            p[..., 2] *= np.sqrt(sx * sy)[:, None]
    pp = arrays["pred_pose"]
    if pp is not None and gt_pose is None:
        raise FacepgnError("pose MAE needs the ground-truth pose as (N, 3) pitch, yaw, roll degrees")
    result = evaluate_landmarks(p, g, yaw, pred_pose_degrees=pp, gt_pose_degrees=gt_pose if pp is not None else None)
    if out_dir:
        write_report(result, out_dir, title)
    return result


def standard_arrays_dir() -> Path:
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


def crop_batch(images: Sequence[np.ndarray], crop_to_frames: Sequence[np.ndarray], size: int) -> np.ndarray:
    from facepgn.labelled import crop_with_affine

    return np.stack([crop_with_affine(img, m, size) for img, m in zip(images, crop_to_frames)])


def roi_affine(box: np.ndarray, size: int) -> np.ndarray:
    """3DDFA's crop: the box (x0, y0, x1, y1), possibly not square, resized to size x size."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([[(x1 - x0) / size, 0.0, x0], [0.0, (y1 - y0) / size, y0]], dtype=np.float64)


def _pose_owner(key: str) -> str | None:
    """"" for the model's ``pose``, the model name for a compared model's ``<name>/pose``, else None."""
    if key == POSE_KEY:
        return ""
    if key.endswith("/" + POSE_KEY):
        return key[: -len(POSE_KEY) - 1]
    return None


def _split_prediction(out: Any, batch: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(landmark sets, poses by model: "" the model's, else a compared model's name)."""
    poses: dict[str, np.ndarray] = {}
    if isinstance(out, Mapping):
        sets = {}
        for k, v in out.items():
            owner = _pose_owner(k)
            if owner is None:
                sets[k] = np.asarray(v, dtype=np.float64)
            else:
                poses[owner] = np.asarray(v, dtype=np.float64).reshape(batch, 3)
    else:
        sets = {"landmarks": np.asarray(out, dtype=np.float64)}
    for k, v in sets.items():
        if v.shape[0] != batch or v.shape[1:2] != (NUM_LANDMARKS,) or v.shape[2] not in (2, 3):
            raise FacepgnError(f"predictor returned {k} of shape {v.shape}, expected ({batch}, 68, 2|3)")
    return sets, poses


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
    ``labelled.LabelledFace``) and choose each face's crop; see :func:`evaluate_aflw2000`."""
    from facepgn import labelled

    if box not in ("auto", "roi", "landmarks"):
        raise FacepgnError(f"box must be auto, roi or landmarks, not {box!r}")
    margin = labelled.DEFAULT_MARGIN if margin is None else margin
    errors: list[dict[str, str]] = []
    gts: list[np.ndarray] = []
    poses: list[np.ndarray] = []
    image_paths: list[str] = []
    faces = None
    if isinstance(data, (str, os.PathLike)):
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
    else:
        faces = list(data)[:limit]
        for f in faces:
            if f.pose is None:
                raise InputError(f.mat_path, "no Pose_Para (needed for the yaw buckets)")
        gts = [f.landmarks for f in faces]
        poses = [f.pose for f in faces]
        image_paths = [f.source_path for f in faces]
    if not gts:
        raise InputError(str(data), "no faces to evaluate")
    dims = min(g.shape[1] for g in gts)
    gt = np.stack([g[:, :dims] for g in gts]).astype(np.float64)
    pose_deg = np.degrees(np.stack(poses).astype(np.float64))

    rows = None
    if box in ("auto", "roi"):
        adir = str(arrays_dir) if arrays_dir else str(standard_arrays_dir())
        pts_file = storage.join(adir, "AFLW2000-3D.pts68.npy")
        roi_file = storage.join(adir, "AFLW2000-3D_crop.roi_box.npy")
        if dims == 3 and storage.exists(pts_file) and storage.exists(roi_file):
            rows = match_standard_rows(gt, load_array(pts_file, "standard landmarks"))
        if rows is not None:
            roi = load_array(roi_file, "roi boxes").astype(np.float64)
            affines = np.stack([roi_affine(roi[r], image_size) for r in rows])
            box_used = f"standard 3DDFA roi boxes ({storage.basename(roi_file)})"
        elif box == "roi":
            raise InputError(str(data), f"faces do not match the standard AFLW2000-3D arrays in {adir}; use box=landmarks")
    if rows is None:
        boxes = [labelled.landmark_box(g, margin) for g in gt]
        affines = np.stack([np.array([[sd / image_size, 0, x0], [0, sd / image_size, y0]]) for x0, y0, sd in boxes])
        box_used = f"square boxes around the ground-truth landmarks (margin {margin})"
    return Aflw2000Plan(image_paths, gt, pose_deg, affines, box_used, rows, faces, errors)


DETECTOR_MATCH_RADIUS = 0.5  # a detection is the labelled face's if its centre is within this many box sides


def infer_detector():
    """The face detector ``facepgn infer`` runs on a photo (an AFLW2000-3D image is one):
    ``facepgn.inference.photo_detector`` with ``InferConfig``'s defaults."""
    from facepgn.config import InferConfig
    from facepgn.inference import photo_detector

    return photo_detector(InferConfig())


def detect_as_infer(image: np.ndarray, detector: Any) -> list[Any]:
    """The faces ``facepgn infer`` finds in a photo, in its full-resolution pixels: the photo
    downscaled to ``InferConfig().photo_max_side`` (``facepgn.video.downscale``), then
    ``facepgn.inference.detect_photo`` (highest score first, at most ``photo_max_faces``)."""
    from facepgn import video
    from facepgn.config import InferConfig
    from facepgn.inference import detect_photo

    cfg = InferConfig()
    small, to_source = video.downscale(image, cfg.photo_max_side)
    return detect_photo(video.Photo(rgb=image, small=small, to_source=to_source), detector, cfg.photo_max_faces)


def infer_crop_margin() -> float:
    """The context ``facepgn infer`` crops around a detector box (``InferConfig().crop_margin``)."""
    from facepgn.config import InferConfig

    return float(InferConfig().crop_margin)


def match_detection(detections: Sequence[Any], gt: np.ndarray, radius: float = DETECTOR_MATCH_RADIUS) -> tuple[Any, str]:
    """``(detection, "")`` for the detection nearest the centre of the ground-truth landmarks' 2D
    box, or ``(None, reason)`` when there is none or the nearest is another face (its centre further
    than ``radius`` of its box side from the labelled face's)."""
    if not detections:
        return None, "no face detected"
    g = np.asarray(gt, dtype=np.float64)[:, :2]
    centre = (g.min(axis=0) + g.max(axis=0)) / 2.0
    dist = [float(np.linalg.norm(np.asarray(d.centre, np.float64) - centre)) for d in detections]
    best = detections[int(np.argmin(dist))]
    if min(dist) > radius * max(best.side, 1.0):
        return None, f"only other faces detected ({len(detections)})"
    return best, ""


def evaluate_aflw2000(
    predict_fn: PredictFn,
    data: str | os.PathLike | Sequence[Any] | Aflw2000Plan,
    out_dir: str | None = None,
    *,
    image_size: int = 128,
    batch_size: int = 32,
    box: str = "auto",
    margin: float | None = None,
    arrays_dir: str | os.PathLike | None = None,
    skip_bad: bool = False,
    limit: int | None = None,
    title: str = "AFLW2000-3D",
    detector_boxes: bool = True,
    detector: Any = None,
    crop_margin: float | None = None,
    grid_per_bucket: int = 6,
    grid_columns: int = 6,
    best_worst: int = 4,
    grid_tile: int = 160,
    frame_peers: Mapping[str, FramePeerFn] | None = None,
    legend: Mapping[str, str] | None = None,
    crop_notes: Mapping[str, str] | None = None,
    model_labels: Mapping[str, str] | None = None,
) -> EvaluationResult:
    """Run ``predict_fn`` over AFLW2000-3D (a folder laid out like it, the full 2000 included, or a
    list of ``labelled.LabelledFace``, or a plan from :func:`plan_aflw2000`) and score it with the
    3DDFA protocol.

    ``predict_fn`` takes RGB uint8 crops (B, S, S, 3) and returns (B, 68, 2|3) landmarks in crop
    pixels, or a mapping of named landmark sets plus an optional ``"pose"`` (B, 3) pitch, yaw, roll
    radians (gives the pose MAE). Predictions are mapped back to image pixels through each crop's
    ``crop_to_frame``. It is called once per batch and crop convention (roi crops, then detector crops).
    Sets named ``<model>/<set>`` with a ``<model>/pose`` come from compared models
    (:func:`with_compared_models`): their pose MAE is ``metrics["pose_mae_deg_compared"][model]``.

    ``frame_peers`` (name -> :data:`FramePeerFn`): landmark sets from peers that cut their own input
    from the image, given each face's model crop (its crop->frame affine) in both conventions, e.g.
    :func:`mediapipe_peer`; their ``crop_note`` attribute goes into ``metrics["crop_notes"]`` (with
    ``crop_notes``) and the report. ``legend`` (set name -> plain words, default :func:`set_legend`
    with ``model_labels``: "" -> the model, name -> a compared model) names each row set in the report.

    Crops: ``box="roi"`` uses the standard 3DDFA boxes (``AFLW2000-3D_crop.roi_box.npy`` in
    ``arrays_dir``, default the shared copy), found by matching each ``pt3d_68`` to the standard
    ``AFLW2000-3D.pts68.npy`` (so any subset of the 2000, in any folder, gets its own boxes);
    ``"landmarks"`` uses a square box around the ground-truth landmarks; ``"auto"`` uses the roi
    boxes when every face matches, else the landmark box. These are ``metrics["landmarks"]``.

    ``detector_boxes``: also score the crops a user's pipeline makes: ``detector`` (default
    :func:`infer_detector`, YuNet as ``facepgn infer`` runs it on photos) on the whole image
    (:func:`detect_as_infer`), the detection nearest the labelled face (:func:`match_detection`),
    cropped by ``facepgn.faces.square_crop`` with ``crop_margin`` (default ``facepgn infer``'s) as
    inference does. Results in
    ``metrics["detector_boxes"]`` (NME over the detected images; the missed ones counted per bucket
    and listed) and ``per_image["detector_boxes.*"]`` (NaN where missed).

    ``out_dir``: write the report (:func:`write_report`), with pictures of ``grid_per_bucket`` faces
    per yaw bucket (``grid_columns`` a row, ``grid_tile`` pixels each) and the ``best_worst`` best and
    worst faces.

    A bad image/.mat pair is an error naming the file (a benchmark must be complete) unless
    ``skip_bad``, which records it in the metrics and goes on.
    """
    from facepgn import faces, labelled

    start = time.time()
    if isinstance(data, Aflw2000Plan):
        plan = data
    else:
        plan = plan_aflw2000(data, image_size=image_size, box=box, margin=margin, arrays_dir=arrays_dir,
                             skip_bad=skip_bad, limit=limit)
    errors = list(plan.errors)
    n = len(plan.image_paths)
    valid = np.ones(n, dtype=bool)
    predictions: dict[str, list[np.ndarray]] = {}
    pred_pose: dict[str, list[np.ndarray]] = {}  # "" the model's, else a compared model's
    frame_peers = dict(frame_peers or {})
    peer_seconds = {name: 0.0 for name in frame_peers}
    peer_calls = {"n": 0}

    def run_peers(image: np.ndarray, crop_to_frame: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for name, peer in frame_peers.items():
            t0 = time.perf_counter()
            out[name] = np.asarray(peer(image, np.asarray(crop_to_frame, np.float64), image_size), dtype=np.float64)
            peer_seconds[name] += time.perf_counter() - t0
        peer_calls["n"] += 1
        return out
    if detector_boxes:
        detector = detector if detector is not None else infer_detector()
        crop_margin = infer_crop_margin() if crop_margin is None else float(crop_margin)
        det_found = np.zeros(n, dtype=bool)
        det_reason = [""] * n
        det_box = np.full((n, 4), np.nan)
        det_score = np.full(n, np.nan)
        det_affine = np.full((n, 2, 3), np.nan)
        det_pred: dict[str, np.ndarray] = {}
        det_pose: dict[str, np.ndarray] = {}
        detect_s = 0.0
    log.info("evaluate: %d faces, crops %dpx, %s%s", n, image_size, plan.box, "; and detector boxes" if detector_boxes else "")
    for first in range(0, n, batch_size):
        idx = list(range(first, min(n, first + batch_size)))
        images = []
        for i in idx:
            if plan.faces is not None:
                images.append(plan.faces[i].image)
                continue
            try:
                images.append(labelled.read_image(plan.image_paths[i]))
            except InputError as exc:
                if not skip_bad:
                    raise
                errors.append({"path": exc.path, "reason": exc.cause})
                valid[i] = False
                images.append(np.zeros((8, 8, 3), np.uint8))  # placeholder, dropped below
        crops = crop_batch(images, [plan.crop_to_frame[i] for i in idx], image_size)
        sets, poses = _split_prediction(predict_fn(crops), len(idx))
        for name, pts in sets.items():
            predictions.setdefault(name, []).extend(_to_frame(pts[j], plan.crop_to_frame[i]) for j, i in enumerate(idx))
        for name, pose in poses.items():
            pred_pose.setdefault(name, []).append(np.degrees(pose))
        if frame_peers:
            for j, i in enumerate(idx):
                peer_pts = run_peers(images[j], plan.crop_to_frame[i]) if valid[i] else dict.fromkeys(frame_peers)
                for name, pts in peer_pts.items():  # None: an unreadable image, dropped below
                    predictions.setdefault(name, []).append(pts)
        if detector_boxes:
            det_crops, det_idx, det_pick = [], [], []
            for j, i in enumerate(idx):
                if not valid[i]:
                    continue
                t0 = time.perf_counter()
                found, reason = match_detection(detect_as_infer(images[j], detector), plan.gt[i])
                detect_s += time.perf_counter() - t0
                if found is None:
                    det_reason[i] = reason
                    continue
                crop, crop_to_frame = faces.square_crop(images[j], found.box, crop_margin, image_size)  # as facepgn infer
                det_crops.append(crop)
                det_idx.append(i)
                det_pick.append(j)
                det_found[i], det_box[i], det_score[i], det_affine[i] = True, found.box, found.score, crop_to_frame
            if det_crops:
                dsets, dposes = _split_prediction(predict_fn(np.stack(det_crops)), len(det_idx))
                for name, pts in dsets.items():
                    arr = det_pred.setdefault(name, np.full((n, NUM_LANDMARKS, pts.shape[2]), np.nan))
                    for j, i in enumerate(det_idx):
                        arr[i] = _to_frame(pts[j], det_affine[i])
                for name, pose in dposes.items():
                    det_pose.setdefault(name, np.full((n, 3), np.nan))[det_idx] = np.degrees(pose)
                for j, i in zip(det_pick, det_idx):
                    for name, pts in run_peers(images[j], det_affine[i]).items():
                        det_pred.setdefault(name, np.full((n, NUM_LANDMARKS, pts.shape[1]), np.nan))[i] = pts
        log.info("evaluate: %d/%d faces", idx[-1] + 1, n)
    if not valid.any():
        raise InputError(str(data), "no readable faces to evaluate")
    pred_arrays = {k: np.stack([x for x, ok in zip(v, valid) if ok]) for k, v in predictions.items()}
    pose_arrays = {k: np.concatenate(v)[valid] for k, v in pred_pose.items()}
    main_pose = pose_arrays.pop("", None)
    names = [name for name, ok in zip(plan.names, valid) if ok]
    gt_pose = plan.pose_degrees[valid]
    notes = dict(crop_notes or {})
    notes.update({k: p.crop_note for k, p in frame_peers.items() if getattr(p, "crop_note", None)})
    extra = {
        "legend": dict(legend) if legend is not None else set_legend(pred_arrays, model_labels),
        "model_label": (model_labels or {}).get(""),
        "crop_notes": notes,
        "peer_ms_per_face": {k: round(1000.0 * v / max(peer_calls["n"], 1), 2) for k, v in peer_seconds.items()},
        "box": plan.box,
        "image_size": image_size,
        "standard_rows_matched": plan.standard_rows is not None,
        "errors": errors,
        "seconds": round(time.time() - start, 3),
        "data": str(data) if isinstance(data, (str, os.PathLike)) else f"{n} faces",
    }
    result = evaluate_landmarks(
        pred_arrays, plan.gt[valid], gt_pose[:, 1],
        pred_pose_degrees=main_pose,
        gt_pose_degrees=gt_pose if (main_pose is not None or pose_arrays) else None,
        names=names, extra=extra, other_poses_degrees=pose_arrays,
    )
    if plan.standard_rows is not None:
        result.per_image["standard_row"] = plan.standard_rows[valid].astype(np.float64)
    result.metrics["crop_side_over_face"] = crop_side_over_face(plan.crop_to_frame[valid], plan.gt[valid], image_size)
    result.predictions = pred_arrays
    result.gt = plan.gt[valid]
    rows = np.flatnonzero(valid)
    if plan.faces is not None:
        result.image_source = lambda k: plan.faces[rows[k]].image
    else:
        result.image_source = lambda k: labelled.read_image(plan.image_paths[rows[k]])
    if detector_boxes:
        result.detector = DetectorPass(
            det_found[valid], [r for r, ok in zip(det_reason, valid) if ok], det_box[valid], det_score[valid],
            det_affine[valid], {k: v[valid] for k, v in det_pred.items()}, detect_s,
        )
        _score_detector_pass(result, gt_pose, {k: v[valid] for k, v in det_pose.items()}, detector, crop_margin)
        result.metrics["seconds"] = round(time.time() - start, 3)
    if out_dir:
        write_report(result, out_dir, title, grid_per_bucket=grid_per_bucket, grid_columns=grid_columns,
                     best_worst=best_worst, grid_tile=grid_tile)
    return result


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


def _score_detector_pass(result: EvaluationResult, gt_pose: np.ndarray, det_pose: Mapping[str, np.ndarray],
                         detector: Any, crop_margin: float) -> None:
    """``metrics["detector_boxes"]`` and the ``detector_boxes.*`` per-image columns of a result
    whose ``detector`` pass has run."""
    det = result.detector
    n = det.detected.size
    yaw = result.per_image["yaw_deg"]
    found = det.detected
    missed_buckets = bucket_counts(yaw[~found])
    entry: dict[str, Any] = {
        "box": (f"YuNet ({storage.basename(getattr(detector, 'model_path', '') or 'detector')}, detect width "
                f"{getattr(detector, 'detect_width', '?')} px) on the whole image as facepgn infer detects a photo "
                f"(facepgn.inference.detect_photo), the detection nearest the labelled face, square crop of its box "
                f"with margin {crop_margin:g} (facepgn.faces.square_crop, as facepgn infer)"),
        "num_images": n,
        "num_detected": int(found.sum()),
        "num_missed": int((~found).sum()),
        "missed_bucket_counts": missed_buckets,
        "nme_over": "detected images only",
        "missed": [{"name": result.names[i], "yaw_deg": float(yaw[i]), "reason": det.reasons[i]} for i in np.flatnonzero(~found)],
        "seconds_detect": round(det.seconds_detect, 3),
        "ms_per_image_detect": round(1000.0 * det.seconds_detect / max(n, 1), 2),
        "crop_margin": crop_margin,
        "crop_side_over_face": crop_side_over_face(det.crop_to_frame, result.gt, int(result.metrics.get("image_size", 128))),
        "bucket_counts": bucket_counts(yaw[found]),
        "crop_notes": result.metrics.get("crop_notes") or {},
        "landmarks": {},
    }
    result.per_image[f"{DETECTOR_KEY}.detected"] = found.astype(np.float64)
    if found.any():
        main = det_pose.get("")
        others = {k: v[found] for k, v in det_pose.items() if k != ""}
        sub = evaluate_landmarks(
            {k: v[found] for k, v in det.predictions.items()}, result.gt[found], yaw[found],
            pred_pose_degrees=None if main is None else main[found],
            gt_pose_degrees=gt_pose[found] if det_pose else None,
            other_poses_degrees=others,
        )
        entry["landmarks"] = sub.metrics["landmarks"]
        for key in ("pose_mae_deg", "pose_mae_deg_compared"):
            if key in sub.metrics:
                entry[key] = sub.metrics[key]
        entry["roi_same_images"] = {
            name: bucket_means(result.per_image[f"{name}.nme_2d_68"][found], yaw[found]) for name in det.predictions
        }
        for key, values in sub.per_image.items():
            if key == "yaw_deg":
                continue
            column = np.full(n, np.nan)
            column[found] = values
            result.per_image[f"{DETECTOR_KEY}.{key}"] = column
    else:
        for name in result.predictions:  # the columns exist (all NaN) so readers need no special case
            result.per_image[f"{DETECTOR_KEY}.{name}.nme_2d_68"] = np.full(n, np.nan)
    result.metrics[DETECTOR_KEY] = entry


def _to_frame(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Crop-pixel points (68, 2|3) -> image pixels through a 2x3 crop->frame affine."""
    from facepgn.records import apply_affine

    return apply_affine(affine, points)


# ---- predictors --------------------------------------------------------------------------------


def model_predictor(model: Any, device: str = "cpu") -> PredictFn:
    """A ``predict_fn`` for a ``facepgn.model.FaceReconstructor``: crops (B, S, S, 3) uint8 ->
    ``landmarks_3d`` (the PGN's) and ``mesh_landmarks`` (the fitted mesh's) in crop pixels, and the
    pose (pitch, yaw, roll radians) of the fitted rotation. Crops of another size than the model's
    input are resized to it (the same region) and the landmarks scaled back."""
    import cv2

    from facepgn.predictor import Predictor

    predictor = Predictor(model=model, device=device, threads=0)  # what facepgn infer runs
    has_pgn = getattr(model, "pgn", None) is not None
    own = predictor.input_size

    def predict(crops: np.ndarray) -> dict[str, np.ndarray]:
        size = crops.shape[1]
        scale = 1.0
        if own and size != own:
            interp = cv2.INTER_AREA if size > own else cv2.INTER_LINEAR
            crops = np.stack([cv2.resize(c, (own, own), interpolation=interp) for c in crops])
            scale = size / own
        out = predictor(crops)
        result = {"mesh_landmarks": out["mesh_landmarks"] * scale, "pose": out["pose"]}
        if has_pgn:
            result["landmarks_3d"] = out["landmarks_3d"] * scale
        return result

    return predict


def with_compared_models(predict_fn: PredictFn, models: Mapping[str, PredictFn]) -> PredictFn:
    """``predict_fn`` plus every compared model's sets as ``<name>/<set>`` and its pose as
    ``<name>/pose`` (scored as their own rows, and pose MAE per model)."""
    models = dict(models)
    for name in models:
        if not name or "/" in name or name == POSE_KEY:
            raise FacepgnError(f"compared model name {name!r}: give a non-empty name without '/'")

    def predict(crops: np.ndarray) -> dict[str, np.ndarray]:
        out = predict_fn(crops)
        out = dict(out) if isinstance(out, Mapping) else {"landmarks": out}
        for name, other in models.items():
            theirs = other(crops)
            theirs = theirs if isinstance(theirs, Mapping) else {"landmarks": theirs}
            for key, value in theirs.items():
                out[f"{name}/{key}"] = value
        return out

    return predict


GENERIC_MODEL_STEMS = frozenset({"model", "best", "last", "final", "checkpoint"})


def compared_model_names(entries: Sequence[str], taken: Sequence[str] = ()) -> list[tuple[str, str]]:
    """``(name, path)`` of each ``compare_models`` entry: ``NAME=PATH``, or a path named after its
    file stem (``runs/x/old.pt`` -> ``old``); a generic stem (``model``, ``best``, ...) takes the
    folder's name instead (``/root/runs/old-recipe/model.pt`` -> ``old-recipe``). Clashing names
    get ``-2``, ``-3``, ..."""
    out: list[tuple[str, str]] = []
    used = set(taken)
    for entry in entries:
        entry = str(entry)
        head, sep, tail = entry.partition("=")
        if sep and head and "/" not in head and "\\" not in head and ":" not in head:
            name, path = head, tail
        else:
            path = entry
            stem = os.path.splitext(storage.basename(path.rstrip("/")))[0]
            parent = storage.basename(os.path.dirname(path.rstrip("/")))
            name = parent if stem.lower() in GENERIC_MODEL_STEMS and parent else stem
        name = name.replace("/", "_") or "model"
        base, k = name, 2
        while name in used or name == POSE_KEY:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        out.append((name, path))
    return out


PEER_2D_CROP_NOTE = ("the model's crop; its face box is the crop's centre 1/1.4, which its own 0.2 expansion "
                     "turns back into the whole crop")


def peer_landmark_predictor(model_path: str | None = None) -> PredictFn:
    """The shared 68-point 2D landmark network (``facepgn.faces.LandmarkModel``) as a peer: it is
    given the centre 1/1.4 of each crop as its face box, which its 0.2 expansion turns back into
    the whole crop (the crops here are ~1.4x the face)."""
    from facepgn.faces import LandmarkModel

    net = LandmarkModel(model_path)

    def predict(crops: np.ndarray) -> np.ndarray:
        size = crops.shape[1]
        inner = size / (1.0 + 2.0 * net.expand)
        box = np.array([(size - inner) / 2.0, (size - inner) / 2.0, inner, inner])
        return np.stack([net.predict(c, box) for c in crops]).astype(np.float64)

    return predict


def mediapipe_peer(model_path: str | None = None, *, passes: int = 2, threads: int = 1,
                   face_model: str | None = None, landmarks: str = "auto") -> FramePeerFn:
    """MediaPipe's face mesh (the labeller's teacher, ``facepgn.teachers.MediaPipe68``: its 468
    points mapped to the 68 through the face-model correspondence) as a frame peer, 2D.

    Its first pass sees the same square region of the image as the model's crop (its face box is
    the crop's side over MediaPipe's 1.5 expansion, so the region is the crop), sampled from the
    image at MediaPipe's 192 px rather than from the model's smaller crop; with ``passes=2`` (the
    teacher's setting) a second pass re-crops around its own first answer, levelled by the eyes, as
    MediaPipe's tracking mode does. The report's crop note says so."""
    from facepgn.teachers import MediaPipe68

    mp = MediaPipe68(model_path, threads=threads, passes=passes, face_model=face_model, landmarks=landmarks)
    expand = float(mp.mesh.crop_scale)

    def predict(image: np.ndarray, crop_to_frame: np.ndarray, size: int) -> np.ndarray:
        m = np.asarray(crop_to_frame, dtype=np.float64).reshape(2, 3)
        centre = m[:, :2] @ np.array([size / 2.0, size / 2.0]) + m[:, 2]
        side = max(float(np.hypot(*m[:, 0])), float(np.hypot(*m[:, 1]))) * size / expand
        box = np.array([centre[0] - side / 2.0, centre[1] - side / 2.0, side, side])
        return mp.predict(image, box)

    second = (" then a second pass on its own re-crop (its first answer's box x1.5, levelled by the eye corners: "
              "MediaPipe's tracking mode, as the labeller runs it)") if mp.mesh.passes > 1 else ""
    predict.crop_note = (f"MediaPipe cuts its own {mp.mesh.input_size} px input from the image: the first pass covers the "
                         f"same square region as the model's crop (sampled from the image, not from the model's crop),"
                         f"{second}")
    return predict


def set_legend(names: Sequence[str], model_labels: Mapping[str, str] | None = None) -> dict[str, str]:
    """Plain words for each landmark set (row set) of a report: the model's sets, the peers, and
    compared models' ``<name>/<set>``. ``model_labels``: "" -> the evaluated model, name -> a
    compared model (e.g. their files)."""
    labels = dict(model_labels or {})
    main = labels.get("", "the evaluated model")
    what = {
        "mesh_landmarks": "the 68 landmark vertices of its fitted 3D face mesh (3DMM coefficients + closed-form pose)",
        "landmarks_3d": "the 68 3D landmarks its Pose Guidance Network predicts directly",
        "landmarks": "its 68 landmarks",
    }
    peers = {
        "peer_2d": "peer, not a facepgn model: the 68-point 2D landmark network (Peppa, ainrichman, trained on 300W-LP); 2D only",
        "peer_mediapipe": ("peer, not a facepgn model: MediaPipe's face mesh (face_landmark.tflite), its 468 points mapped to "
                           "the 68 through the face-model correspondence, as the labeller uses it as a teacher; 2D only"),
        "gt": "the ground truth served back (a check)",
    }
    out = {}
    for name in names:
        if name in peers:
            out[name] = peers[name]
        elif "/" in name:
            owner, inner = name.split("/", 1)
            out[name] = f"{labels.get(owner, owner)} (compared): " + what.get(inner, inner)
        else:
            out[name] = f"{main}: " + what.get(name, name)
    return out


def with_peer_landmarks(predict_fn: PredictFn, model_path: str | None = None) -> PredictFn:
    """``predict_fn`` plus a ``peer_2d`` landmark set from :func:`peer_landmark_predictor`."""
    peer = peer_landmark_predictor(model_path)

    def predict(crops: np.ndarray) -> dict[str, np.ndarray]:
        out = predict_fn(crops)
        out = dict(out) if isinstance(out, Mapping) else {"landmarks": out}
        out["peer_2d"] = peer(crops)
        return out

    return predict
