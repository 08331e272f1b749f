"""The benchmark protocol: landmark NME (AFLW2000-3D, 3DDFA protocol), pose error, dense shape error,
and the report writer (Markdown table, cumulative error distribution plot, metrics.json).

One concept per module: :mod:`~facepgn.evaluation.metrics` (NME, |yaw| buckets, pose errors,
``evaluate_landmarks`` and its result; the protocol is described there), :mod:`~.shape` (dense
shape error after similarity alignment), :mod:`~.arrays` (the standard AFLW2000-3D arrays,
precomputed predictions), :mod:`~.plan` (what a run covers: ground truth and each face's crop),
:mod:`~.predictors` (what runs on the crops: facepgn models, compared models, peers),
:mod:`~.detector` (the detector-box pass, as ``facepgn infer`` crops), :mod:`~.aflw2000` (the run:
``evaluate_aflw2000``), :mod:`~.report` (report.md, the CED plot, metrics.json, per_image.csv) and
:mod:`~.figures` (predictions drawn on the images). Every public name is importable from
:mod:`facepgn.evaluation`; ``crop_batch`` and ``roi_affine`` are :mod:`facepgn.crops`'s.
"""

from facepgn.crops import crop_batch, roi_affine
from facepgn.evaluation.aflw2000 import evaluate_aflw2000
from facepgn.evaluation.arrays import STANDARD_ARRAYS, STANDARD_NUM_IMAGES, evaluate_arrays, load_array, match_standard_rows, standard_arrays_dir
from facepgn.evaluation.detector import DETECTOR_MATCH_RADIUS, detect_as_infer, infer_crop_margin, infer_detector, match_detection
from facepgn.evaluation.figures import BOX_COLOUR, GT_COLOUR, PRED_COLOUR, face_tile, grid_sample, headline_set, report_figures
from facepgn.evaluation.metrics import (
    DETECTOR_KEY,
    JAWLESS_POINTS,
    NUM_LANDMARKS,
    YAW_BUCKETS,
    DetectorPass,
    EvaluationResult,
    as_landmarks,
    bucket_counts,
    bucket_means,
    crop_side_over_face,
    evaluate_landmarks,
    face_size,
    nme,
    pose_errors,
    pose_mae,
    wrap_degrees,
    yaw_bucket_index,
)
from facepgn.evaluation.plan import Aflw2000Plan, PlanOptions, plan_aflw2000
from facepgn.evaluation.predictors import (
    GENERIC_MODEL_STEMS,
    PEER_2D_CROP_NOTE,
    POSE_KEY,
    FramePeerFn,
    PredictFn,
    compared_model_names,
    mediapipe_peer,
    model_predictor,
    peer_landmark_predictor,
    set_legend,
    with_compared_models,
    with_peer_landmarks,
)
from facepgn.evaluation.report import CED_MANY_SETS, ced_plot_png, report_markdown, write_report
from facepgn.evaluation.shape import ShapeError, shape_error, similarity_align

__all__ = [
    "BOX_COLOUR", "CED_MANY_SETS", "DETECTOR_KEY", "DETECTOR_MATCH_RADIUS", "GENERIC_MODEL_STEMS", "GT_COLOUR", "JAWLESS_POINTS", "NUM_LANDMARKS",
    "PEER_2D_CROP_NOTE", "POSE_KEY", "PRED_COLOUR", "STANDARD_ARRAYS", "STANDARD_NUM_IMAGES", "YAW_BUCKETS", "Aflw2000Plan", "DetectorPass",
    "EvaluationResult", "FramePeerFn", "PlanOptions", "PredictFn", "ShapeError", "as_landmarks", "bucket_counts", "bucket_means", "ced_plot_png",
    "compared_model_names", "crop_batch", "crop_side_over_face", "detect_as_infer", "evaluate_aflw2000", "evaluate_arrays", "evaluate_landmarks",
    "face_size", "face_tile", "grid_sample", "headline_set", "infer_crop_margin", "infer_detector", "load_array", "match_detection",
    "match_standard_rows", "mediapipe_peer", "model_predictor", "nme", "peer_landmark_predictor", "plan_aflw2000", "pose_errors", "pose_mae",
    "report_figures", "report_markdown", "roi_affine", "set_legend", "shape_error", "similarity_align", "standard_arrays_dir", "with_compared_models",
    "with_peer_landmarks", "wrap_degrees", "write_report", "yaw_bucket_index"
]
