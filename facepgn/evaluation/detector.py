"""The detector-box pass of an AFLW2000-3D evaluation: what a user's pipeline feeds the model.

YuNet on the whole image as ``facepgn infer`` runs it on a photo (``facepgn.inference.photo_detector``
/ ``detect_photo``), the detection nearest the labelled face (:func:`match_detection`), cropped
exactly as ``facepgn infer`` crops a detected face (``facepgn.crops.square_crop`` with
``InferConfig``'s margin). An image where no detection matches the labelled face is counted as
missed, per bucket; the detector NME is over the detected images. :class:`DetectorRun` collects
the pass batch by batch, :func:`score_detector_pass` scores it into ``metrics["detector_boxes"]``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from facepgn import storage
from facepgn.crops import apply_affine, square_crop
from facepgn.evaluation.metrics import (
    DETECTOR_KEY,
    NUM_LANDMARKS,
    DetectorPass,
    EvaluationResult,
    bucket_counts,
    bucket_means,
    crop_side_over_face,
    evaluate_landmarks,
)
from facepgn.evaluation.predictors import PredictFn, split_prediction

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


class DetectorRun:
    """The detector-box pass as the batches go: per face of the plan, whether the labelled face was
    detected (else why not), its box, score and crop, and the predictions mapped back to the image
    (the model's sets and poses, and the frame peers' answers on the same crop)."""

    def __init__(self, n: int, image_size: int, detector: Any = None, crop_margin: float | None = None):
        self.n, self.image_size = n, image_size
        self.detector = detector if detector is not None else infer_detector()
        self.crop_margin = infer_crop_margin() if crop_margin is None else float(crop_margin)
        self.found = np.zeros(n, dtype=bool)
        self.reasons = [""] * n
        self.boxes = np.full((n, 4), np.nan)
        self.scores = np.full(n, np.nan)
        self.affines = np.full((n, 2, 3), np.nan)
        self.predictions: dict[str, np.ndarray] = {}
        self.poses: dict[str, np.ndarray] = {}
        self.seconds_detect = 0.0

    def add_batch(self, predict_fn: PredictFn, images: Sequence[np.ndarray], rows: Sequence[int], valid: np.ndarray,
                  gt: np.ndarray, peers: Callable[[np.ndarray, np.ndarray], Mapping[str, np.ndarray]]) -> None:
        """Detect, match and crop the faces of one batch (``images[j]`` is face ``rows[j]``; the
        unreadable ones, ``~valid``, are passed over), run ``predict_fn`` on the crops and ``peers``
        on each detected face's image and crop."""
        crops, detected, picks = [], [], []
        for j, i in enumerate(rows):
            if not valid[i]:
                continue
            t0 = time.perf_counter()
            found, reason = match_detection(detect_as_infer(images[j], self.detector), gt[i])
            self.seconds_detect += time.perf_counter() - t0
            if found is None:
                self.reasons[i] = reason
                continue
            crop, crop_to_frame = square_crop(images[j], found.box, self.crop_margin, self.image_size)  # as facepgn infer
            crops.append(crop)
            detected.append(i)
            picks.append(j)
            self.found[i], self.boxes[i], self.scores[i], self.affines[i] = True, found.box, found.score, crop_to_frame
        if not crops:
            return
        self._predict(predict_fn, np.stack(crops), detected)
        for j, i in zip(picks, detected):
            for name, pts in peers(images[j], self.affines[i]).items():
                self._set(name, pts.shape[1])[i] = pts

    def _predict(self, predict_fn: PredictFn, crops: np.ndarray, detected: list[int]) -> None:
        sets, poses = split_prediction(predict_fn(crops), len(detected))
        for name, pts in sets.items():
            column = self._set(name, pts.shape[2])
            for j, i in enumerate(detected):
                column[i] = apply_affine(self.affines[i], pts[j])
        for name, pose in poses.items():
            self.poses.setdefault(name, np.full((self.n, 3), np.nan))[detected] = np.degrees(pose)

    def _set(self, name: str, dims: int) -> np.ndarray:
        """The (N, 68, dims) landmarks of set ``name``, NaN where not (yet) predicted."""
        return self.predictions.setdefault(name, np.full((self.n, NUM_LANDMARKS, dims), np.nan))

    def result(self, valid: np.ndarray) -> DetectorPass:
        """The pass over the readable faces (``valid``)."""
        return DetectorPass(
            self.found[valid], [r for r, ok in zip(self.reasons, valid) if ok], self.boxes[valid], self.scores[valid],
            self.affines[valid], {k: v[valid] for k, v in self.predictions.items()}, self.seconds_detect,
        )


def score_detector_pass(result: EvaluationResult, gt_pose: np.ndarray, det_pose: Mapping[str, np.ndarray],
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
