"""Faces in frames: YuNet detection, a simple IoU/centre tracker, square crops, 68-point pseudo-labels.

* :class:`FaceDetector` wraps ``cv2.FaceDetectorYN`` (YuNet). It takes RGB frames (decord's
  order), converts to BGR, detects on a copy downscaled to ``detect_width`` and maps boxes back.
* :class:`FaceTracker` links detections across sampled frames by IoU (then centre distance), so
  each face keeps one integer track id (0, 1, ... in order of appearance: deterministic).
* :func:`square_crop` (from :mod:`facepgn.crops`, the home of crop geometry) cuts a square around
  a box with a margin, resized to the training size, and returns its ``crop_to_frame`` transform.
* :class:`LandmarkModel` runs the Peppa 68-point ONNX model with ``cv2.dnn``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import cv2
import numpy as np

from facepgn import crops, paths
from facepgn.errors import FacepgnError


@contextlib.contextmanager
def opencv_quiet():
    """OpenCV's own log at errors only while a model loads (``setPreferableTarget Targets are not
    supported by the new graph engine``, once per detector and process otherwise); restored after."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:
        yield
        return
    level = logging.getLogLevel()
    logging.setLogLevel(min(level, logging.LOG_LEVEL_ERROR))
    try:
        yield
    finally:
        logging.setLogLevel(level)


@dataclass
class Detection:
    """A detected face in frame pixels: box (x, y, w, h), 5 points (eyes, nose, mouth corners), score."""

    box: np.ndarray  # (4,) float32
    points: np.ndarray  # (5, 2) float32
    score: float

    @property
    def side(self) -> float:
        return float(max(self.box[2], self.box[3]))

    @property
    def centre(self) -> np.ndarray:
        return np.array([self.box[0] + self.box[2] / 2, self.box[1] + self.box[3] / 2], dtype=np.float32)


class FaceDetector:
    """YuNet face detection on RGB frames of any size."""

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 50,
        detect_width: int = 480,
    ):
        self.model_path = str(paths.resolve_asset("detector", model_path))
        try:
            with opencv_quiet():  # OpenCV 5's DNN warns that its new graph engine ignores the (default) target
                self._net = cv2.FaceDetectorYN.create(self.model_path, "", (320, 320), score_threshold, nms_threshold, top_k)
        except cv2.error as exc:
            raise FacepgnError(f"{self.model_path}: cannot load the YuNet detector ({str(exc).strip().splitlines()[-1][:120]})") from None
        self.detect_width = int(detect_width)
        self._size: tuple[int, int] | None = None

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces in an RGB (or grayscale) frame, highest score first."""
        if rgb.ndim == 2:
            rgb = cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB)
        h, w = rgb.shape[:2]
        scale = 1.0
        if self.detect_width and w > self.detect_width:
            scale = self.detect_width / w
            small = cv2.resize(rgb, (self.detect_width, max(1, int(round(h * scale)))), interpolation=cv2.INTER_AREA)
        else:
            small = rgb
        bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
        size = (bgr.shape[1], bgr.shape[0])
        if size != self._size:
            self._net.setInputSize(size)
            self._size = size
        _, faces = self._net.detect(bgr)
        if faces is None:
            return []
        out = []
        for f in faces:
            box = (f[0:4] / scale).astype(np.float32)
            pts = (f[4:14].reshape(5, 2) / scale).astype(np.float32)
            out.append(Detection(box=box, points=pts, score=float(f[14])))
        out.sort(key=lambda d: -d.score)
        return out


# ---- tracking --------------------------------------------------------------------------------


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ax1, ay1, ax2, ay2 = a[0], a[1], a[0] + a[2], a[1] + a[3]
    bx1, by1, bx2, by2 = b[0], b[1], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class _Track:
    track_id: int
    last: Detection
    last_step: int
    hits: int = 1


@dataclass
class FaceTracker:
    """Greedy IoU tracker with a centre-distance fallback.

    ``update`` takes the detections of one sampled frame and returns ``(track_id, detection)``
    pairs. A track survives ``max_missed`` sampled frames without a match; a detection matches a
    track if IoU >= ``iou_threshold`` or its centre is within ``max_centre_shift`` box sides.
    """

    iou_threshold: float = 0.3
    max_centre_shift: float = 0.5
    max_missed: int = 2
    _tracks: list[_Track] = field(default_factory=list)
    _next_id: int = 0
    _step: int = -1

    def update(self, detections: list[Detection]) -> list[tuple[int, Detection]]:
        self._step += 1
        self._tracks = [t for t in self._tracks if self._step - t.last_step <= self.max_missed + 1]
        candidates = []
        for ti, track in enumerate(self._tracks):
            for di, det in enumerate(detections):
                iou = box_iou(track.last.box, det.box)
                shift = float(np.linalg.norm(track.last.centre - det.centre)) / max(track.last.side, 1.0)
                size_ratio = det.side / max(track.last.side, 1.0)
                if iou >= self.iou_threshold or (shift <= self.max_centre_shift and 0.67 <= size_ratio <= 1.5):
                    candidates.append((-iou, shift, ti, di))
        candidates.sort()
        used_t: set[int] = set()
        used_d: set[int] = set()
        assigned: dict[int, int] = {}
        for _, _, ti, di in candidates:
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            assigned[di] = ti
        out = []
        for di, det in enumerate(detections):
            if di in assigned:
                track = self._tracks[assigned[di]]
                track.last, track.last_step = det, self._step
                track.hits += 1
            else:
                track = _Track(track_id=self._next_id, last=det, last_step=self._step)
                self._next_id += 1
                self._tracks.append(track)
            out.append((track.track_id, det))
        out.sort(key=lambda x: x[0])
        return out


# ---- crops: their home is facepgn.crops (these names stay for callers) ------------------------

square_crop_box = crops.square_crop_box
square_crop = crops.square_crop
frame_to_crop = crops.frame_to_crop


def blur_score(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grayscale image: low means blurry (or flat)."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


# ---- 68-point landmarks ----------------------------------------------------------------------


class LandmarkModel:
    """68-point 2D landmarks (Peppa slim 160, ONNX) via ``cv2.dnn``.

    Pre-processing as the model was trained: the detector box expanded by 0.2 of its size on each
    side, resized to 160x160, BGR, ``(x - 127) / 127``, NCHW. The first 136 outputs are the 68
    (x, y) in [0, 1] of that expanded box.
    """

    input_size = 160
    expand = 0.2

    def __init__(self, model_path: str | os.PathLike | None = None):
        self.model_path = str(paths.resolve_asset("landmarks", model_path))
        try:
            self._net = cv2.dnn.readNetFromONNX(self.model_path)
        except cv2.error as exc:
            raise FacepgnError(f"{self.model_path}: cannot load the landmark model ({str(exc).strip().splitlines()[-1][:120]})") from None

    def predict(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """(68, 2) landmarks in frame pixels for the face in ``box`` (x, y, w, h)."""
        x, y, w, h = (float(v) for v in box[:4])
        x0, y0 = x - self.expand * w, y - self.expand * h
        bw, bh = w * (1 + 2 * self.expand), h * (1 + 2 * self.expand)
        s = self.input_size
        # frame -> network input affine (handles boxes that leave the frame: zero padding)
        m = np.array([[s / bw, 0, -x0 * s / bw], [0, s / bh, -y0 * s / bh]], dtype=np.float64)
        patch = cv2.warpAffine(rgb, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        bgr = cv2.cvtColor(patch, cv2.COLOR_RGB2BGR).astype(np.float32)
        blob = ((bgr - 127.0) / 127.0).transpose(2, 0, 1)[None]
        self._net.setInput(blob)
        out = np.asarray(self._net.forward()).reshape(-1)
        pts = out[:136].reshape(68, 2).astype(np.float64)
        pts[:, 0] = x0 + pts[:, 0] * bw
        pts[:, 1] = y0 + pts[:, 1] * bh
        return pts.astype(np.float32)
