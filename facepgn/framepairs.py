"""One video -> frame-pair rows (``records.FRAME_PAIR_SCHEMA``): plain functions, no Ray.

:func:`iter_video_pairs` streams a video through :func:`facepgn.tracking.track_faces` (chunked
decode, YuNet, the tracker) and, per tracked face: the quality checks (face size, detector score),
the square crop (:func:`facepgn.crops.square_crop`), its blur score, the 68-point pseudo-labels
(optional), the JPEG; then pairs it with earlier crops of the same track ``min_gap..max_gap``
sampled frames back (``pairs_per_frame`` of them, chosen by a generator seeded per (seed, video,
track), so reruns pair the same frames), DIS flow A -> B and the flow-magnitude checks. Memory is
bounded by one decode chunk plus ``max_gap + 1`` crops per live track.

``facepgn.pipelines.preprocess`` runs it per video (Ray tasks or a local loop) and writes the rows
as Parquet shards; :class:`PairSettings` are the job settings it reads.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from facepgn import crops, records, tracking
from facepgn.errors import InputError


@dataclass(frozen=True)
class PairSettings:
    """What pair building reads (``PreprocessConfig``'s crop, pair and ``quality`` settings)."""

    image_size: int = 128  # crop side, pixels
    crop_margin: float = 0.3  # context around the detector box, fraction of its side, each side
    jpeg_quality: int = 95
    min_gap: int = 1  # pair gap range, in sampled frames
    max_gap: int = 5
    pairs_per_frame: int = 1  # pairs ending at each sampled frame of a track
    seed: int = 0
    min_face_size: float = 40.0  # detector box side, source pixels
    min_det_score: float = 0.7
    min_blur: float = 15.0  # variance of the Laplacian of the crop
    min_flow_magnitude: float = 0.0  # mean |flow|, crop pixels
    max_flow_magnitude: float = 0.15  # mean |flow| as a fraction of the crop size


@dataclass(frozen=True)
class Sampling:
    """Which frames of a video are read, and how (``PreprocessConfig``'s decode settings)."""

    target_fps: float | None = 10.0  # None: every frame
    max_frames: int | None = None
    max_side: int | None = 1280  # decode downscaled so the longer side is at most this
    chunk: int = 16  # sampled frames decoded at a time


@dataclass
class VideoStats:
    """What :func:`iter_video_pairs` saw, filled as it streams (kept when it stops early)."""

    frames_sampled: int = 0
    faces_detected: int = 0
    frames_with_face: int = 0
    tracks: int = 0  # set when the video was read to its end
    pairs: int = 0  # rows yielded
    width: int = 0  # source pixels
    height: int = 0
    fps: float = 0.0
    rejections: dict[str, int] = field(default_factory=dict)  # reason -> crops or pairs
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # stage -> wall seconds


@dataclass
class CropEntry:
    """One quality-checked face crop of a track at one sampled frame."""

    step: int
    frame: int
    time: float
    crop: np.ndarray
    jpeg: bytes
    box: np.ndarray  # source-video pixels
    crop_to_frame: np.ndarray  # crop px -> source-video px
    points: np.ndarray  # 5 detector points, crop px
    score: float
    blur: float
    landmarks: np.ndarray | None  # 68 points, crop px


@dataclass
class _TrackState:
    history: deque
    rng: np.random.Generator


def pair_seed(seed: int, video_id: str, track_id: int) -> int:
    """The seed of a track's pair choice: the same on every machine and rerun (64 bits of the
    SHA-256 of ``"seed/video_id/track_id"``)."""
    digest = hashlib.sha256("/".join(str(p) for p in (seed, video_id, track_id)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _reject(stats: VideoStats, reason: str) -> None:
    stats.rejections[reason] = stats.rejections.get(reason, 0) + 1


def crop_entry(tracked: tracking.TrackedFrame, det, to_source: float, settings: PairSettings, stats: VideoStats,
               landmarks: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> CropEntry | None:
    """The crop of one detection (None, with the reason counted, if it fails a quality check).
    ``to_source``: decoded -> source pixels; ``landmarks``: (RGB frame, box) -> 68 frame points."""
    t = stats.timings
    if det.side * to_source < settings.min_face_size:
        _reject(stats, "face_too_small")
        return None
    if det.score < settings.min_det_score:
        _reject(stats, "low_detector_score")
        return None
    t0 = time.perf_counter()
    crop, crop_to_frame = crops.square_crop(tracked.rgb, det.box, settings.crop_margin, settings.image_size)
    from facepgn.faces import blur_score

    blur = blur_score(crop)
    points = crops.frame_to_crop(det.points, crop_to_frame)
    t["crop"] += time.perf_counter() - t0
    if blur < settings.min_blur:
        _reject(stats, "blurry")
        return None
    lm = None
    if landmarks is not None:
        t0 = time.perf_counter()
        lm = crops.frame_to_crop(landmarks(tracked.rgb, det.box), crop_to_frame)
        t["landmarks"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    jpeg = records.encode_image(crop, quality=settings.jpeg_quality)
    t["encode"] += time.perf_counter() - t0
    # crop px -> source-video px (frames may have been decoded downscaled)
    to_src = np.asarray(crop_to_frame, dtype=np.float32) * np.float32(to_source)
    return CropEntry(
        step=tracked.step, frame=tracked.index, time=tracked.time, crop=crop, jpeg=jpeg,
        box=(det.box * to_source).astype(np.float32), crop_to_frame=to_src, points=points,
        score=det.score, blur=blur, landmarks=lm,
    )


def pair_rows(b: CropEntry, state: _TrackState, track_id: int, video_id: str, subject_id: str, source_path: str,
              settings: PairSettings, flow: Callable[[np.ndarray, np.ndarray], np.ndarray], stats: VideoStats) -> list[dict[str, Any]]:
    """The frame-pair rows ending at crop ``b``: ``pairs_per_frame`` earlier crops of its track
    ``min_gap..max_gap`` steps back, chosen by the track's generator, that pass the flow checks."""
    from facepgn.flow import flow_magnitude

    t = stats.timings
    candidates = [a for a in state.history if settings.min_gap <= b.step - a.step <= settings.max_gap]
    if not candidates:
        return []
    k = min(max(1, settings.pairs_per_frame), len(candidates))
    chosen = sorted(state.rng.choice(len(candidates), size=k, replace=False).tolist())
    rows = []
    for i in chosen:
        a = candidates[i]
        t0 = time.perf_counter()
        field_ab = flow(a.crop, b.crop)
        magnitude = flow_magnitude(field_ab)
        t["flow"] += time.perf_counter() - t0
        if magnitude < settings.min_flow_magnitude:
            _reject(stats, "flow_too_small")
            continue
        if magnitude > settings.max_flow_magnitude * settings.image_size:
            _reject(stats, "flow_too_large")
            continue
        t0 = time.perf_counter()
        flow_bytes = records.encode_flow(field_ab)
        t["encode"] += time.perf_counter() - t0
        rows.append({
            "pair_id": f"{video_id}/{track_id}/{a.frame}-{b.frame}",
            "video_id": video_id,
            "subject_id": subject_id if track_id == 0 else f"{subject_id}/track{track_id}",
            "track_id": track_id,
            "frame_a": a.frame,
            "frame_b": b.frame,
            "time_a": a.time,
            "time_b": b.time,
            "image_size": settings.image_size,
            "image_a": a.jpeg,
            "image_b": b.jpeg,
            "flow": flow_bytes,
            "box_a": a.box,
            "box_b": b.box,
            "crop_to_frame_a": a.crop_to_frame,
            "crop_to_frame_b": b.crop_to_frame,
            "det_landmarks_a": a.points,
            "det_landmarks_b": b.points,
            "det_score_a": a.score,
            "det_score_b": b.score,
            "landmarks_2d_a": a.landmarks,
            "landmarks_2d_b": b.landmarks,
            "blur_a": a.blur,
            "blur_b": b.blur,
            "flow_magnitude": magnitude,
            "source_path": source_path,
        })
    return rows


def iter_video_pairs(path: str, video_id: str, subject_id: str, *, detect, flow, tracker, max_faces: int | None,
                     sampling: Sampling, settings: PairSettings, stats: VideoStats,
                     landmarks: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> Iterator[dict[str, Any]]:
    """Frame-pair rows of one video, in order (by sampled frame, then track).

    ``detect``: RGB -> detections (``FaceDetector.detect``); ``flow``: (crop A, crop B) -> flow
    (``FlowEstimator``); ``tracker``: a fresh ``FaceTracker``; ``landmarks``: (RGB, box) -> 68
    points (``LandmarkModel.predict``) or None. ``stats`` fills as it goes. A decode error ends the
    stream with its :class:`InputError` (rows before it have been yielded); a video without frames,
    without a face, or without a pair that passed the checks ends with a one-line InputError."""
    t = stats.timings
    tracks: dict[int, _TrackState] = {}
    finished_tracks = 0
    t0 = time.perf_counter()
    with tracking.open_video(path, max_side=sampling.max_side) as reader:
        t["decode"] += time.perf_counter() - t0
        stats.width, stats.height = reader.source_size
        stats.fps = reader.info.fps
        to_source = reader.scale_to_source
        frames = reader.frames(reader.sample_indices(sampling.target_fps, sampling.max_frames), chunk_size=sampling.chunk)
        for tracked in tracking.track_faces(frames, detect, tracker=tracker, max_faces=max_faces, clock=tracking.seconds_into(t)):
            stats.frames_sampled += 1
            stats.faces_detected += len(tracked.detections)
            stats.frames_with_face += bool(tracked.detections)
            for face in tracked.faces:
                entry = crop_entry(tracked, face.detection, to_source, settings, stats, landmarks)
                if entry is None:
                    continue
                state = tracks.get(face.track_id)
                if state is None:
                    state = _TrackState(deque(maxlen=max(1, settings.max_gap + 1)),
                                        np.random.default_rng(pair_seed(settings.seed, video_id, face.track_id)))
                    tracks[face.track_id] = state
                for row in pair_rows(entry, state, face.track_id, video_id, subject_id, path, settings, flow, stats):
                    stats.pairs += 1
                    yield row
                state.history.append(entry)
            # forget tracks whose newest crop is too old to pair (memory stays bounded however
            # many faces come and go in a long video)
            for track_id in [k for k, st in tracks.items() if st.history and tracked.step - st.history[-1].step > settings.max_gap]:
                del tracks[track_id]
                finished_tracks += 1
    stats.tracks = finished_tracks + len(tracks)
    if stats.frames_sampled == 0:
        raise InputError(path, "no frames decoded")
    if stats.frames_with_face == 0:
        raise InputError(path, f"no face found in {stats.frames_sampled} sampled frames")
    if stats.pairs == 0:
        top = ", ".join(f"{k} {v}" for k, v in sorted(stats.rejections.items(), key=lambda kv: -kv[1])[:3]) or "too few frames per track"
        raise InputError(path, f"no frame pair passed the filters ({top})")
