"""Teacher networks for pseudo-labelling real faces: MediaPipe's face mesh (468 points in 3D) and
the 68-point 2D network (Peppa) as a second opinion.

Per-item functions and small classes, no Ray. Each teacher takes a whole RGB frame and a face box
(x, y, w, h, frame pixels) and answers in frame pixels.

* :class:`MediaPipeMesh` runs ``face_landmark.tflite`` with ``ai-edge-litert`` (the optional
  ``teachers`` extra; the ``mediapipe`` wheels do not install beside numpy 2). As MediaPipe's own
  graph does, the 192x192 input is a square crop of 1.5x the face, rotated so the eyes are level,
  and a second pass re-crops from the first pass's points (MediaPipe's tracking mode), which is
  what makes the points stable on loose detector boxes.
* :func:`teacher_agreement` compares the two teachers on the 51 inner points (no jawline: the two
  networks place the contour differently at large yaw) as a fraction of the face size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from facepgn import paths
from facepgn.errors import FacepgnError

NUM_MESH_POINTS = 468
#: MediaPipe mesh points used to level and centre its crop: the eyes' outer/inner corners.
MESH_RIGHT_EYE = (33, 133)  # subject's right eye (image left): outer, inner corner
MESH_LEFT_EYE = (362, 263)  # subject's left eye: inner, outer corner
INNER_POINTS = np.arange(17, 68)  # iBUG 68: brows, nose, eyes, mouth (no jawline)


@dataclass
class MeshResult:
    """MediaPipe's answer for one face: 468 points (x, y frame pixels; z towards the camera, scaled
    like x and centred on the points' mean), the face-presence probability, and the crop used."""

    points: np.ndarray  # (468, 3) float32
    presence: float
    crop_to_frame: np.ndarray  # (2, 3) float32, of the last pass's 192x192 input


def _rotated_square(centre: np.ndarray, side: float, angle: float, size: int) -> np.ndarray:
    """2x3 crop->frame affine of a ``side``-pixel square at ``centre`` rotated by ``angle`` (radians),
    sampled at ``size`` pixels."""
    c, s = np.cos(angle), np.sin(angle)
    k = side / size
    rot = np.array([[c, -s], [s, c]]) * k
    offset = np.asarray(centre, np.float64) - rot @ np.array([size / 2.0, size / 2.0])
    return np.concatenate([rot, offset[:, None]], axis=1).astype(np.float32)


def _warp(rgb: np.ndarray, crop_to_frame: np.ndarray, size: int) -> np.ndarray:
    frame_to_crop = cv2.invertAffineTransform(crop_to_frame.astype(np.float64))
    return cv2.warpAffine(rgb, frame_to_crop, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


@lru_cache(maxsize=1)
def _litert_interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise FacepgnError("the MediaPipe teacher needs ai-edge-litert: pip install 'facepgn[teachers]'") from None
    return Interpreter


class MediaPipeMesh:
    """MediaPipe face mesh (468 3D points) on RGB frames, via ``ai-edge-litert``."""

    input_size = 192
    crop_scale = 1.5  # MediaPipe's face rect is 1.5x the detection; also used for the second pass

    def __init__(self, model_path: str | os.PathLike | None = None, threads: int = 1, passes: int = 2):
        self.model_path = str(paths.resolve_asset("mediapipe_mesh", model_path))
        interpreter_cls = _litert_interpreter_class()
        try:
            self._interp = interpreter_cls(model_path=self.model_path, num_threads=int(threads))
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise FacepgnError(f"{self.model_path}: cannot load the MediaPipe face mesh ({str(exc).strip().splitlines()[-1][:120]})") from None
        self._input = self._interp.get_input_details()[0]["index"]
        outputs = self._interp.get_output_details()
        by_size = {int(np.prod(d["shape"])): d["index"] for d in outputs}
        if NUM_MESH_POINTS * 3 not in by_size or 1 not in by_size:
            raise FacepgnError(f"{self.model_path}: not the MediaPipe face-mesh model (outputs {sorted(by_size)})")
        self._points_out, self._score_out = by_size[NUM_MESH_POINTS * 3], by_size[1]
        self.passes = max(1, int(passes))

    def _run(self, rgb: np.ndarray, crop_to_frame: np.ndarray) -> tuple[np.ndarray, float]:
        s = self.input_size
        patch = _warp(rgb, crop_to_frame, s).astype(np.float32) / 255.0
        self._interp.set_tensor(self._input, patch[None])
        self._interp.invoke()
        raw = self._interp.get_tensor(self._points_out).reshape(NUM_MESH_POINTS, 3).astype(np.float64)
        logit = float(self._interp.get_tensor(self._score_out).reshape(-1)[0])
        m = crop_to_frame.astype(np.float64)
        k = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
        xy = raw[:, :2] @ m[:, :2].T + m[:, 2]
        z = -raw[:, 2] * k  # MediaPipe's z grows away from the camera
        pts = np.concatenate([xy, (z - z.mean())[:, None]], axis=1)
        return pts.astype(np.float32), float(1.0 / (1.0 + np.exp(-logit)))

    def predict(self, rgb: np.ndarray, box: np.ndarray, eyes: np.ndarray | None = None) -> MeshResult:
        """The mesh for the face in ``box`` (x, y, w, h); ``eyes`` (2, 2): the detector's right and
        left eye points, used to level the first crop (optional)."""
        x, y, w, h = (float(v) for v in box[:4])
        centre = np.array([x + w / 2.0, y + h / 2.0])
        angle = 0.0
        if eyes is not None:
            d = np.asarray(eyes[1], np.float64) - np.asarray(eyes[0], np.float64)
            angle = float(np.arctan2(d[1], d[0]))
        crop = _rotated_square(centre, max(w, h) * self.crop_scale, angle, self.input_size)
        pts, presence = self._run(rgb, crop)
        for _ in range(self.passes - 1):
            crop = self._crop_from_points(pts)
            pts, presence = self._run(rgb, crop)
        return MeshResult(pts, presence, crop)

    def _crop_from_points(self, pts: np.ndarray) -> np.ndarray:
        """MediaPipe's tracking crop: the points' box, levelled by the eye corners, 1.5x."""
        right = pts[list(MESH_RIGHT_EYE), :2].mean(0)
        left = pts[list(MESH_LEFT_EYE), :2].mean(0)
        d = left - right
        angle = float(np.arctan2(d[1], d[0]))
        c, s = np.cos(-angle), np.sin(-angle)
        rel = pts[:, :2] - pts[:, :2].mean(0)
        rot = rel @ np.array([[c, -s], [s, c]]).T
        lo, hi = rot.min(0), rot.max(0)
        mid_rot = (lo + hi) / 2
        c2, s2 = np.cos(angle), np.sin(angle)
        centre = pts[:, :2].mean(0) + np.array([[c2, -s2], [s2, c2]]) @ mid_rot
        side = float(max(hi - lo)) * self.crop_scale
        return _rotated_square(centre, side, angle, self.input_size)


class MediaPipe68:
    """MediaPipe's face mesh answering the 68 iBUG landmarks: its 468 points (:class:`MediaPipeMesh`)
    mapped to the 68 through the face-model correspondence
    (:func:`facepgn.pseudolabel.mediapipe_68_ids`), as the labeller compares its teachers.

    ``mesh`` / ``map68``: reuse a labeller's (``FaceLabeller.mesh``, ``FaceLabeller.map68``);
    otherwise they are built from ``model_path``, ``threads``, ``passes`` and ``face_model`` /
    ``landmarks`` (the face model and landmark definition the 68 are taken in)."""

    def __init__(self, model_path: str | os.PathLike | None = None, *, threads: int = 1, passes: int = 2,
                 face_model: str | None = None, landmarks: str = "auto", mesh: MediaPipeMesh | None = None,
                 map68: np.ndarray | None = None):
        self.mesh = mesh if mesh is not None else MediaPipeMesh(model_path, threads=threads, passes=passes)
        if map68 is None:
            from facepgn.pseudolabel import mediapipe_68_ids

            map68 = mediapipe_68_ids(face_model, landmarks)
        self.map68 = np.asarray(map68, dtype=np.int64).reshape(68)

    def to_68(self, result: MeshResult) -> np.ndarray:
        """(68, 3) of a :class:`MeshResult`'s points (frame pixels; z as in the result)."""
        return np.asarray(result.points, dtype=np.float64)[self.map68]

    def predict(self, rgb: np.ndarray, box: np.ndarray, eyes: np.ndarray | None = None) -> np.ndarray:
        """(68, 2) 2D landmarks (frame pixels) of the face in ``box`` (x, y, w, h); ``eyes`` as for
        :meth:`MediaPipeMesh.predict`."""
        return self.to_68(self.mesh.predict(rgb, box, eyes))[:, :2]


# ---- MediaPipe's canonical mesh ---------------------------------------------------------------


def read_canonical_mesh(path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's canonical face model (``canonical_face_model.obj``): (468, 3) vertices in cm
    (+y up, +z towards the viewer) and its triangles (F, 3), 0-based."""
    from facepgn.facemodel import read_obj

    path = Path(paths.resolve_asset("mediapipe_canonical", path))
    verts, polygons = read_obj(path)
    if verts.shape != (NUM_MESH_POINTS, 3):
        raise FacepgnError(f"{path}: expected 468 vertices in MediaPipe's canonical mesh, got {len(verts)}")
    tris = np.array([p[:3] for p in polygons if len(p) >= 3], dtype=np.int32)
    return verts.astype(np.float32), tris


# ---- agreement --------------------------------------------------------------------------------


def face_size(landmarks_2d: np.ndarray) -> float:
    """sqrt(w*h) of the 68-landmark box: AFLW2000-3D's NME normaliser."""
    lo, hi = landmarks_2d[:, :2].min(0), landmarks_2d[:, :2].max(0)
    return float(np.sqrt(max((hi - lo).prod(), 1e-6)))


def teacher_agreement(a68: np.ndarray, b68: np.ndarray, points: np.ndarray = INNER_POINTS) -> float:
    """Mean 2D distance between two 68-point answers on ``points``, over the face size of ``b68``."""
    d = np.linalg.norm(a68[points, :2] - b68[points, :2], axis=1).mean()
    return float(d / face_size(b68))
