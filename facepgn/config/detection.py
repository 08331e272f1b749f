"""Face detection and tracking, shared by preprocess, infer and label (facepgn.faces)."""

from __future__ import annotations

from typing import Optional

from facepgn.config.base import StrictModel


class FaceDetectorConfig(StrictModel):
    """YuNet face detection (facepgn.faces.FaceDetector)."""

    model_path: Optional[str] = None  # None: facepgn.paths.resolve_asset("detector")
    score_threshold: float = 0.6  # detector's own threshold (lower scores are never seen)
    nms_threshold: float = 0.3
    top_k: int = 50
    detect_width: int = 480  # frames are downscaled to this width (px) before detection


class FaceTrackerConfig(StrictModel):
    """IoU/centre tracker (facepgn.faces.FaceTracker); units: sampled frames and box sides."""

    iou_threshold: float = 0.3
    max_centre_shift: float = 0.5
    max_missed: int = 2
    max_faces: int = 8  # per frame, largest-score first
