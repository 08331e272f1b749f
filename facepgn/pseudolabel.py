"""3D pseudo-labels for real faces: the face model fitted to a teacher's 468 points.

Per-item code, no Ray: :class:`FaceLabeller` holds the teachers and the face model (build one per
process or actor) and turns detected faces into face records (``FACE_RECORD_SCHEMA`` rows, schema
v2) in facepgn's own landmark definition, or rejections with a reason.

Rejection reasons (the ``reason`` of a :class:`LabelOutcome`): ``no_face`` (teacher's presence score
low), ``teachers_disagree``, ``fit_residual``, ``yaw_out_of_range``, ``too_small``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

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


@dataclass
class LabelOutcome:
    """A face record row (``record``) or a rejection (``reason``); ``figures`` holds the quality
    figures either way (teacher_agreement, fit_residual, yaw_deg, presence)."""

    record: dict[str, Any] | None
    reason: str | None
    figures: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage for this face


class FaceLabeller:  # filled in by the pseudo-label work; the contract is what callers rely on
    def label(self, faces: Sequence[FaceToLabel]) -> list[LabelOutcome]:
        raise NotImplementedError
