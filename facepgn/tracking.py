"""Decode -> detect -> track: the one loop that finds the faces of a video's sampled frames.

``facepgn preprocess`` (frame pairs, :mod:`facepgn.framepairs`), ``facepgn infer`` (model crops,
:func:`facepgn.inference.iter_face_batches`) and ``facepgn label`` (pseudo-labels) all stream a
video through :func:`track_faces`: each decoded frame (``facepgn.video.VideoReader.frames``, chunked)
goes through the YuNet detector (``facepgn.faces.FaceDetector``), at most ``max_faces`` of its
detections (highest score first) are kept, and the tracker (``facepgn.faces.FaceTracker``) gives
each a track id that stays with the face across frames. A photo is the same loop over one frame
without a tracker (each face keyed by its rank).

Plain values in, plain values out; no Ray. Decode errors propagate from the frame iterator (the
frames before them have been yielded), so each caller keeps its own policy (a partial video, or
a failed one).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterable, Iterator, NamedTuple

import numpy as np

from facepgn.faces import Detection, FaceTracker
from facepgn.video import Frame, VideoReader, local_video

#: ``clock(stage)``: a context manager that books the time spent inside it to ``stage``
#: (``"decode"``, ``"detect"``), e.g. ``facepgn.pipelines.common.StageClock`` or :func:`seconds_into`.
Clock = Callable[[str], ContextManager]


class TrackedFace(NamedTuple):
    """One face of a frame: its track id (a photo: its rank), its rank among the frame's detections
    (0: the highest score) and the detection (frame pixels of the decoded frame)."""

    track_id: int
    rank: int
    detection: Detection


@dataclass
class TrackedFrame:
    """A decoded frame and its faces."""

    step: int  # 0-based position among the frames read
    frame: Frame  # index in the source, time (s), RGB (decoded: possibly downscaled)
    detections: list[Detection]  # at most max_faces, highest score first
    faces: list[TrackedFace] = field(default_factory=list)  # by track id (videos) or rank (photos)

    @property
    def index(self) -> int:
        return self.frame.index

    @property
    def time(self) -> float:
        return self.frame.time

    @property
    def rgb(self) -> np.ndarray:
        return self.frame.rgb


def seconds_into(timings: dict[str, float], suffix: str = "") -> Clock:
    """A :data:`Clock` adding wall seconds to ``timings[stage + suffix]``."""

    @contextlib.contextmanager
    def clock(stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            key = stage + suffix
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0

    return clock


def _no_clock(stage: str) -> ContextManager:
    return contextlib.nullcontext()


def track_faces(frames: Iterable[Frame], detect: Callable[[np.ndarray], list[Detection]], *,
                tracker: FaceTracker | None, max_faces: int | None, clock: Clock | None = None) -> Iterator[TrackedFrame]:
    """Decode -> detect -> track over ``frames``: one :class:`TrackedFrame` per frame (with or
    without faces). ``detect``: RGB -> detections, highest score first (``FaceDetector.detect``);
    ``tracker``: a fresh ``FaceTracker`` per video (None: each face keyed by its rank, as for a
    photo); ``clock`` books the time of ``"decode"`` (pulling the next frame) and ``"detect"``
    (detection and tracking)."""
    clock = clock or _no_clock
    iterator = iter(frames)
    step = -1
    while True:
        with clock("decode"):
            frame = next(iterator, None)
        if frame is None:
            return
        step += 1
        with clock("detect"):
            detections = detect(frame.rgb)
            if max_faces is not None:
                detections = detections[: max(0, int(max_faces))]
            rank = {id(d): i for i, d in enumerate(detections)}
            keyed = tracker.update(detections) if tracker is not None else list(enumerate(detections))
        yield TrackedFrame(step, frame, detections, [TrackedFace(int(key), rank[id(det)], det) for key, det in keyed])


@contextlib.contextmanager
def open_video(path: str, max_side: int | None = None) -> Iterator[VideoReader]:
    """A :class:`facepgn.video.VideoReader` of ``path`` (local or ``s3://``, downloaded to a temp
    file for the duration), decoding at most ``max_side`` pixels on the longer side."""
    with local_video(path) as local:
        yield VideoReader(local, max_side=max_side, display_path=path)


def new_tracker(iou_threshold: float = 0.3, max_centre_shift: float = 0.5, max_missed: int = 2) -> FaceTracker:
    """A fresh :class:`facepgn.faces.FaceTracker` (one per video)."""
    return FaceTracker(iou_threshold, max_centre_shift, max_missed)


def stage_seconds() -> dict[str, float]:
    """An empty ``stage -> seconds`` dict (what :func:`seconds_into` fills)."""
    return defaultdict(float)
