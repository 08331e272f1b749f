"""The AFLW2000-3D benchmark run (:func:`evaluate_aflw2000`): a ``predict_fn`` over every face of a
plan, in batches, scored with the 3DDFA protocol in two crop conventions in one run.

* The standard 3DDFA roi boxes (the published protocol, ``metrics["landmarks"]``; the plan's crops,
  :func:`facepgn.evaluation.plan.plan_aflw2000`).
* With ``detector_boxes``, what a user's pipeline feeds the model (``metrics["detector_boxes"]``,
  :mod:`facepgn.evaluation.detector`): YuNet on the whole image as ``facepgn infer`` runs it on a
  photo, the detection nearest the labelled face, cropped as ``facepgn infer`` crops it; an image
  where none matches is counted as missed, per bucket, and the detector NME is over the detected
  images (``per_image["detector_boxes.*"]``, NaN where missed).

Frame peers (:data:`facepgn.evaluation.predictors.FramePeerFn`, e.g. MediaPipe) cut their own input
from the image, given each face's model crop in both conventions. A bad image/.mat pair is an error
naming the file (a benchmark must be complete) unless ``skip_bad``, which records it and goes on.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from facepgn import storage
from facepgn.crops import apply_affine, crop_batch
from facepgn.errors import InputError
from facepgn.evaluation.detector import DetectorRun, score_detector_pass
from facepgn.evaluation.metrics import EvaluationResult, crop_side_over_face, evaluate_landmarks
from facepgn.evaluation.plan import Aflw2000Plan, PlanOptions, plan_aflw2000
from facepgn.evaluation.predictors import FramePeerFn, PredictFn, set_legend, split_prediction
from facepgn.evaluation.report import write_report

if TYPE_CHECKING:
    from typing_extensions import Unpack

log = logging.getLogger(__name__)


def evaluate_aflw2000(
    predict_fn: PredictFn,
    data: str | os.PathLike | Sequence[Any] | Aflw2000Plan,
    out_dir: str | None = None,
    *,
    image_size: int = 128,
    batch_size: int = 32,
    skip_bad: bool = False,
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
    **plan_options: Unpack[PlanOptions],
) -> EvaluationResult:
    """Run ``predict_fn`` over AFLW2000-3D (a folder laid out like it, the full 2000 included, a list
    of ``labelled.LabelledFace``, or a plan from :func:`plan_aflw2000`, which gets ``plan_options``:
    ``box``, ``margin``, ``arrays_dir``, ``limit``) and score it with the 3DDFA protocol (the module
    doc: the two crop conventions).

    ``predict_fn`` takes RGB uint8 crops (B, S, S, 3) and returns (B, 68, 2|3) landmarks in crop
    pixels, or a mapping of named landmark sets plus an optional ``"pose"`` (B, 3) pitch, yaw, roll
    radians (gives the pose MAE); it is called once per batch and crop convention, and its answers
    are mapped back to image pixels through each crop's ``crop_to_frame``. Sets named
    ``<model>/<set>`` with a ``<model>/pose`` come from compared models (``with_compared_models``):
    their pose MAE is ``metrics["pose_mae_deg_compared"][model]``.

    ``frame_peers`` (name -> peer): their ``crop_note`` goes into ``metrics["crop_notes"]`` (with
    ``crop_notes``). ``legend`` (set name -> plain words; default :func:`set_legend` with
    ``model_labels``: "" -> the model, name -> a compared model) names each row set in the report.
    ``detector`` (default ``infer_detector()``) and ``crop_margin`` (default ``facepgn infer``'s):
    the detector pass. ``out_dir``: write the report (:func:`write_report`), with pictures of
    ``grid_per_bucket`` faces per yaw bucket (``grid_columns`` a row, ``grid_tile`` pixels each)
    and the ``best_worst`` best and worst faces.
    """
    start = time.time()
    if out_dir:
        storage.check_writable(out_dir)  # a report folder that cannot be written: one line before any work
    plan = data if isinstance(data, Aflw2000Plan) else plan_aflw2000(data, image_size=image_size, skip_bad=skip_bad, **plan_options)
    n = len(plan.image_paths)
    passes = _Passes(plan, predict_fn, image_size, skip_bad, _FramePeers(dict(frame_peers or {}), image_size),
                     DetectorRun(n, image_size, detector, crop_margin) if detector_boxes else None)
    log.info("evaluate: %d faces, crops %dpx, %s%s", n, image_size, plan.box, "; and detector boxes" if detector_boxes else "")
    for first in range(0, n, batch_size):
        rows = list(range(first, min(n, first + batch_size)))
        passes.add_batch(rows)
        log.info("evaluate: %d/%d faces", rows[-1] + 1, n)
    if not passes.valid.any():
        raise InputError(str(data), "no readable faces to evaluate")
    result = _score(passes, data, start, legend, crop_notes, model_labels)
    if out_dir:
        write_report(result, out_dir, title, grid_per_bucket=grid_per_bucket, grid_columns=grid_columns,
                     best_worst=best_worst, grid_tile=grid_tile)
    return result


@dataclass
class _FramePeers:
    """The frame peers of one run, called on a face's image and model crop, and the time each took."""

    peers: dict[str, FramePeerFn]
    image_size: int
    seconds: dict[str, float] = field(default_factory=dict)
    calls: int = 0

    def __post_init__(self) -> None:
        self.seconds = {name: 0.0 for name in self.peers}

    def __call__(self, image: np.ndarray, crop_to_frame: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for name, peer in self.peers.items():
            t0 = time.perf_counter()
            out[name] = np.asarray(peer(image, np.asarray(crop_to_frame, np.float64), self.image_size), dtype=np.float64)
            self.seconds[name] += time.perf_counter() - t0
        self.calls += 1
        return out

    def ms_per_face(self) -> dict[str, float]:
        return {k: round(1000.0 * v / max(self.calls, 1), 2) for k, v in self.seconds.items()}


class _Passes:
    """What the batches of one run collect: which faces' images were readable, the roi pass (the
    plan's crops: each set's landmarks in image pixels, the poses by model, the frame peers'
    answers) and the detector pass, if any."""

    def __init__(self, plan: Aflw2000Plan, predict_fn: PredictFn, image_size: int, skip_bad: bool,
                 peers: _FramePeers, detector: DetectorRun | None):
        self.plan, self.predict_fn, self.image_size, self.skip_bad = plan, predict_fn, image_size, skip_bad
        self.peers, self.detector = peers, detector
        self.valid = np.ones(len(plan.image_paths), dtype=bool)
        self.errors = list(plan.errors)
        self.predictions: dict[str, list[np.ndarray | None]] = {}
        self.poses: dict[str, list[np.ndarray]] = {}  # "" the model's, else a compared model's

    def add_batch(self, rows: list[int]) -> None:
        plan = self.plan
        images = self._read_images(rows)
        crops = crop_batch(images, [plan.crop_to_frame[i] for i in rows], self.image_size)
        sets, poses = split_prediction(self.predict_fn(crops), len(rows))
        for name, pts in sets.items():
            self.predictions.setdefault(name, []).extend(apply_affine(plan.crop_to_frame[i], pts[j]) for j, i in enumerate(rows))
        for name, pose in poses.items():
            self.poses.setdefault(name, []).append(np.degrees(pose))
        if self.peers.peers:
            for j, i in enumerate(rows):
                answers = self.peers(images[j], plan.crop_to_frame[i]) if self.valid[i] else dict.fromkeys(self.peers.peers)
                for name, pts in answers.items():  # None: an unreadable image, dropped when scored
                    self.predictions.setdefault(name, []).append(pts)
        if self.detector is not None:
            self.detector.add_batch(self.predict_fn, images, rows, self.valid, plan.gt, self.peers)

    def _read_images(self, rows: list[int]) -> list[np.ndarray]:
        """The batch's RGB images; an unreadable one (with ``skip_bad``) is recorded, marked not
        valid and stands as a small black placeholder."""
        from facepgn import labelled

        if self.plan.faces is not None:
            return [self.plan.faces[i].image for i in rows]
        images = []
        for i in rows:
            try:
                images.append(labelled.read_image(self.plan.image_paths[i]))
            except InputError as exc:
                if not self.skip_bad:
                    raise
                self.errors.append({"path": exc.path, "reason": exc.cause})
                self.valid[i] = False
                images.append(np.zeros((8, 8, 3), np.uint8))  # placeholder, dropped when scored
        return images


def _score(passes: _Passes, data: Any, start: float, legend: Mapping[str, str] | None,
           crop_notes: Mapping[str, str] | None, model_labels: Mapping[str, str] | None) -> EvaluationResult:
    """The result over the readable faces: the roi pass scored by :func:`evaluate_landmarks`, with
    the run's facts in the metrics, the images the pictures need, and the detector pass scored."""
    plan, valid = passes.plan, passes.valid
    pred_arrays = {k: np.stack([x for x, ok in zip(v, valid) if ok]) for k, v in passes.predictions.items()}
    pose_arrays = {k: np.concatenate(v)[valid] for k, v in passes.poses.items()}
    main_pose = pose_arrays.pop("", None)
    gt_pose = plan.pose_degrees[valid]
    notes = dict(crop_notes or {})
    notes.update({k: p.crop_note for k, p in passes.peers.peers.items() if getattr(p, "crop_note", None)})
    extra = {
        "legend": dict(legend) if legend is not None else set_legend(pred_arrays, model_labels),
        "model_label": (model_labels or {}).get(""),
        "crop_notes": notes,
        "peer_ms_per_face": passes.peers.ms_per_face(),
        "box": plan.box,
        "image_size": passes.image_size,
        "standard_rows_matched": plan.standard_rows is not None,
        "errors": passes.errors,
        "seconds": round(time.time() - start, 3),
        "data": str(data) if isinstance(data, (str, os.PathLike)) else f"{len(plan.image_paths)} faces",
    }
    result = evaluate_landmarks(
        pred_arrays, plan.gt[valid], gt_pose[:, 1],
        pred_pose_degrees=main_pose,
        gt_pose_degrees=gt_pose if (main_pose is not None or pose_arrays) else None,
        names=[name for name, ok in zip(plan.names, valid) if ok], extra=extra, other_poses_degrees=pose_arrays,
    )
    if plan.standard_rows is not None:
        result.per_image["standard_row"] = plan.standard_rows[valid].astype(np.float64)
    result.metrics["crop_side_over_face"] = crop_side_over_face(plan.crop_to_frame[valid], plan.gt[valid], passes.image_size)
    result.predictions = pred_arrays
    result.gt = plan.gt[valid]
    result.image_source = _image_source(plan, np.flatnonzero(valid))
    if passes.detector is not None:
        det = passes.detector
        result.detector = det.result(valid)
        score_detector_pass(result, gt_pose, {k: v[valid] for k, v in det.poses.items()}, det.detector, det.crop_margin)
        result.metrics["seconds"] = round(time.time() - start, 3)
    return result


def _image_source(plan: Aflw2000Plan, rows: np.ndarray):
    """k -> the RGB image of the k-th scored face (read again from its file when not in memory)."""
    from facepgn import labelled

    if plan.faces is not None:
        faces = plan.faces
        return lambda k: faces[rows[k]].image
    return lambda k: labelled.read_image(plan.image_paths[rows[k]])
