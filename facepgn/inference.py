"""Batch inference over videos and photos, as plain per-item functions (no Ray here).

The Ray Data graph (``facepgn.pipelines.infer``) and the plain-loop baseline (same module, and
``bench/bench_infer.py``) call exactly these functions:

1. :func:`iter_item_batches` — one input item, by kind: :func:`video_face_batches` for a video
   (``facepgn.tracking.track_faces``: chunked decode, YuNet detection and tracking, the loop
   ``preprocess`` and ``label`` use too; square crops (``facepgn.crops``); one row per face per
   sampled frame), :func:`photo_face_batches` for a photo (decoded once, detected on a downscaled
   copy, cropped from the full-resolution image; one row per face, each face its own track, frame
   0, time 0). Either yields column batches and, last, one *footer* row with the item's totals or
   the reason it failed. Both take the few values they read; :func:`iter_face_batches` and
   :func:`iter_photo_batches` are the same with those values read from an ``InferConfig``.
2. ``facepgn.predictor.Predictor`` — the model on a batch of crops, torch eager or onnxruntime (the
   networks in ONNX, the closed-form pose fit in torch: SVD/eigh have no ONNX operator).
   :func:`frame_outputs` maps its crop-pixel outputs back to the original frame.
3. :func:`finalize_video` — one item's rows: temporal smoothing per track (videos only;
   ``facepgn.smoothing``), the Parquet file (``records.FACE_TRACK_SCHEMA``), meshes of selected
   frames, the overlay (a video, or an image for a photo), and last the done marker. Every file is
   written atomically, so a rerun skips finished items and redoes the rest.

The output layout and the row tables are ``facepgn.outputs``; overlays ``facepgn.overlay``; mesh
files ``facepgn.meshio``.
"""

from __future__ import annotations

import json
import time as _time
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from facepgn import storage
from facepgn.config import InferConfig
from facepgn.errors import InputError
from facepgn.meshio import mesh_bytes
from facepgn.outputs import OutputLayout, mesh_selected, parse_mesh_selection, rows_table, write_parquet
from facepgn.overlay import posed_vertices, write_overlay, write_photo_overlay

if TYPE_CHECKING:
    from facepgn.predictor import Predictor

# Row kinds in the stream between the stages.
KIND_FACE = 0
KIND_FOOTER = 1


# --------------------------------------------------------------------------------------------
# stage 1: decode, detect, track, crop
# --------------------------------------------------------------------------------------------


def _empty_face_batch() -> dict[str, list]:
    return {
        "video_id": [], "source_path": [], "frame_index": [], "time": [], "track_id": [], "box": [],
        "det_score": [], "crop": [], "crop_to_frame": [],
    }


def _face_batch(rows: dict[str, list], size: int) -> list[dict[str, np.ndarray]]:
    """The collected face rows as one batch, or nothing when there are none."""
    return [_stack_batch(rows, size, KIND_FACE)] if rows["frame_index"] else []


def _stack_batch(rows: dict[str, list], size: int, kind: int, footer: dict | None = None) -> dict[str, np.ndarray]:
    n = len(rows["frame_index"])
    out = {
        "kind": np.full(n, kind, np.int8),
        "video_id": np.array(rows["video_id"], dtype=object),
        "source_path": np.array(rows["source_path"], dtype=object),
        "frame_index": np.asarray(rows["frame_index"], np.int64),
        "time": np.asarray(rows["time"], np.float64),
        "track_id": np.asarray(rows["track_id"], np.int32),
        "box": np.asarray(rows["box"], np.float32).reshape(n, 4),
        "det_score": np.asarray(rows["det_score"], np.float32),
        "crop": np.asarray(rows["crop"], np.uint8).reshape(n, size, size, 3),
        "crop_to_frame": np.asarray(rows["crop_to_frame"], np.float32).reshape(n, 2, 3),
    }
    meta = footer or {}
    out["total_rows"] = np.full(n, int(meta.get("total_rows", -1)), np.int64)
    out["error"] = np.array([str(meta.get("error", ""))] * n, dtype=object)
    out["info"] = np.array([json.dumps(meta.get("info", {}))] * n if footer else [""] * n, dtype=object)
    return out


def video_face_batches(video_path: str, video_id: str, image_size: int, detector, *, crop_margin: float,
                       stride: int = 1, max_frames: int | None = None, chunk_frames: int = 32,
                       tracker=None, max_faces: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Stage 1 for one video: yields a column batch of face crops per ``chunk_frames`` decoded
    frames (frames without faces yield nothing), then a footer.

    Frames: every ``stride``-th of the first ``max_frames`` (``video.stride_indices``), through
    :func:`facepgn.tracking.track_faces` (``detector``: a ``faces.FaceDetector``; ``tracker``: a
    fresh ``faces.FaceTracker``, default settings if None; at most ``max_faces`` per frame); one
    square crop (``crops.square_crop``, ``crop_margin``) of ``image_size`` px per tracked face.
    The footer (``kind == KIND_FOOTER``, always last, always yielded) carries ``total_rows`` (rows
    of this video including itself), ``error`` ("" or the one-line reason the video failed) and
    ``info`` (JSON: frame count, fps, size, stage timings). Memory is bounded by one chunk.
    """
    import cv2

    from facepgn import crops, tracking, video

    cv2.setNumThreads(1)
    emitted = 0
    timings = {"decode_s": 0.0, "detect_s": 0.0, "crop_s": 0.0}
    timings_cpu = 0.0
    info: dict[str, Any] = {"kind": "video"}
    error = ""
    try:
        with tracking.open_video(video_path) as reader:
            meta = reader.info
            info.update(num_frames=meta.num_frames, fps=meta.fps, width=meta.width, height=meta.height)
            indices = video.stride_indices(meta.num_frames, stride, max_frames)
            info["sampled_frames"] = len(indices)
            frames = reader.frames(indices, chunk_size=chunk_frames)
            stream = tracking.track_faces(frames, detector.detect, tracker=tracker if tracker is not None else tracking.new_tracker(),
                                          max_faces=max_faces, clock=tracking.seconds_into(timings, "_s"))
            rows, in_chunk = _empty_face_batch(), 0
            # CPU time (not wall: that also counts waiting for a core), chunk by chunk: between
            # yields the consumer runs in this thread too (plain loop)
            c0 = _time.thread_time()
            for tracked in stream:
                t0 = _time.perf_counter()
                for face in tracked.faces:
                    crop, crop_to_frame = crops.square_crop(tracked.rgb, face.detection.box, crop_margin, image_size)
                    _add_face(rows, video_id, video_path, tracked.index, tracked.time, face.track_id, face.detection, crop, crop_to_frame)
                timings["crop_s"] += _time.perf_counter() - t0
                in_chunk += 1
                if in_chunk >= chunk_frames:
                    timings_cpu += _time.thread_time() - c0
                    for batch in _face_batch(rows, image_size):
                        emitted += len(batch["frame_index"])
                        yield batch
                    rows, in_chunk = _empty_face_batch(), 0
                    c0 = _time.thread_time()
            timings_cpu += _time.thread_time() - c0
            for batch in _face_batch(rows, image_size):
                emitted += len(batch["frame_index"])
                yield batch
            info["faces"] = emitted
    except InputError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - a batch job records a bad video and goes on
        error = _unexpected(video_path, exc)
    info.update(timings)
    info["decode_cpu_s"] = timings_cpu
    yield _footer(video_path, video_id, image_size, emitted, error, info)


def _add_face(rows: dict[str, list], item_id: str, path: str, frame_index: int, time: float, track_id: int, det, crop, crop_to_frame) -> None:
    rows["video_id"].append(item_id)
    rows["source_path"].append(path)
    rows["frame_index"].append(frame_index)
    rows["time"].append(time)
    rows["track_id"].append(track_id)
    rows["box"].append(det.box)
    rows["det_score"].append(det.score)
    rows["crop"].append(crop)
    rows["crop_to_frame"].append(crop_to_frame)


def detector_for(settings, detect_width: int | None = None):
    """A YuNet ``faces.FaceDetector`` from detector settings (``FaceDetectorConfig``: model_path,
    score_threshold, nms_threshold, top_k, detect_width; ``detect_width`` overrides the last)."""
    from facepgn import faces

    return faces.FaceDetector(settings.model_path, score_threshold=settings.score_threshold, nms_threshold=settings.nms_threshold,
                              top_k=settings.top_k, detect_width=settings.detect_width if detect_width is None else detect_width)


def iter_face_batches(video_path: str, video_id: str, cfg: InferConfig, image_size: int, detector=None) -> Iterator[dict[str, np.ndarray]]:
    """:func:`video_face_batches` with the settings ``cfg`` has for it (``detector``, ``tracker``,
    ``crop_margin``, ``stride``, ``max_frames``, ``chunk_frames``)."""
    t = cfg.tracker
    try:
        detector = detector if detector is not None else detector_for(cfg.detector)
    except Exception as exc:  # noqa: BLE001 - as before: a detector that cannot load fails the video, in its footer
        yield _footer(video_path, video_id, image_size, 0, _unexpected(video_path, exc), {"kind": "video"})
        return
    from facepgn.tracking import new_tracker

    yield from video_face_batches(video_path, video_id, image_size, detector, crop_margin=cfg.crop_margin, stride=cfg.stride,
                                  max_frames=cfg.max_frames, chunk_frames=cfg.chunk_frames,
                                  tracker=new_tracker(t.iou_threshold, t.max_centre_shift, t.max_missed), max_faces=t.max_faces)


def _footer(path: str, item_id: str, image_size: int, emitted: int, error: str, info: dict) -> dict[str, np.ndarray]:
    """The last row of an item's stream: ``total_rows`` (the ``emitted`` face rows and itself),
    ``error`` ("" or the one-line reason the item failed) and ``info``."""
    rows = _empty_face_batch()
    rows["video_id"].append(item_id)
    rows["source_path"].append(path)
    rows["frame_index"].append(-1)
    rows["time"].append(0.0)
    rows["track_id"].append(-1)
    rows["box"].append(np.zeros(4, np.float32))
    rows["det_score"].append(0.0)
    rows["crop"].append(np.zeros((image_size, image_size, 3), np.uint8))
    rows["crop_to_frame"].append(np.zeros((2, 3), np.float32))
    return _stack_batch(rows, image_size, KIND_FOOTER, {"total_rows": emitted + 1, "error": error, "info": info})


def footer_batch(path: str, item_id: str, image_size: int, error: str, info: dict | None = None) -> dict[str, np.ndarray]:
    """The whole stream of an item that yields no face rows: its footer alone (``error``: "" or
    the one-line reason it failed)."""
    return _footer(path, item_id, image_size, 0, error, dict(info or {}))


def _unexpected(path: str, exc: Exception) -> str:
    """One line for a failure that is not bad input (a library error): path, exception, message."""
    text = str(exc).strip()
    return f"{path}: {exc.__class__.__name__}: {text.splitlines()[0][:200] if text else ''}"


def photo_detector(cfg: InferConfig):
    """YuNet as configured for photos: ``cfg.detector`` at ``cfg.photo_detect_width``."""
    return detector_for(cfg.detector, cfg.photo_detect_width)


def detect_photo(photo, detector, max_faces: int | None = None) -> list:
    """The faces of a :class:`facepgn.video.Photo`, highest score first (at most ``max_faces``),
    detected on its downscaled copy; boxes and points in full-resolution pixels."""
    from facepgn.faces import Detection
    from facepgn.tracking import track_faces
    from facepgn.video import Frame

    tracked = next(track_faces([Frame(0, 0.0, photo.small)], detector.detect, tracker=None, max_faces=max_faces))
    k = np.float32(photo.to_source)
    return [Detection(box=(d.box * k).astype(np.float32), points=(d.points * k).astype(np.float32), score=d.score) for d in tracked.detections]


def photo_face_batches(photo_path: str, item_id: str, image_size: int, detector, *, crop_margin: float,
                       max_side: int | None = 1280, max_faces: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Stage 1 for one photo: decode once (full resolution, and a copy downscaled to ``max_side``
    for detection), ``detector`` on the copy (:func:`detect_photo`), one square crop per face cut
    from the full-resolution photo (so ``crop_to_frame`` and every coordinate are in the photo's
    own pixels). Yields one batch of face rows (frame 0, time 0, ``track_id`` the face's rank by
    detector score: each face is its own track), then the footer. A photo that cannot be read
    yields only the footer, with the one-line reason; a photo without a face, 0 rows."""
    import cv2

    from facepgn import crops, video

    cv2.setNumThreads(1)
    info: dict[str, Any] = {"kind": "photo", "num_frames": 1, "fps": 0.0, "sampled_frames": 1}
    timings = {"decode_s": 0.0, "detect_s": 0.0, "crop_s": 0.0}
    c0 = _time.thread_time()
    error = ""
    batch = None
    try:
        t0 = _time.perf_counter()
        photo = video.read_photo(photo_path, max_side)
        t1 = _time.perf_counter()
        info.update(width=photo.size[0], height=photo.size[1], detect_size=[int(photo.small.shape[1]), int(photo.small.shape[0])])
        dets = detect_photo(photo, detector, max_faces)
        t2 = _time.perf_counter()
        rows = _empty_face_batch()
        for rank, det in enumerate(dets):
            crop, crop_to_frame = crops.square_crop(photo.rgb, det.box, crop_margin, image_size)
            _add_face(rows, item_id, photo_path, 0, 0.0, rank, det, crop, crop_to_frame)
        del photo  # only the crops leave this function, whatever the photo's size
        timings.update(decode_s=t1 - t0, detect_s=t2 - t1, crop_s=_time.perf_counter() - t2)
        info["faces"] = len(dets)
        if dets:
            batch = _stack_batch(rows, image_size, KIND_FACE)
    except InputError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - a batch job records a bad photo and goes on
        error = _unexpected(photo_path, exc)
    info.update(timings)
    info["decode_cpu_s"] = _time.thread_time() - c0
    emitted = 0
    if batch is not None:
        emitted = len(batch["frame_index"])
        yield batch
    yield _footer(photo_path, item_id, image_size, emitted, error, info)


def iter_photo_batches(photo_path: str, item_id: str, cfg: InferConfig, image_size: int, detector=None) -> Iterator[dict[str, np.ndarray]]:
    """:func:`photo_face_batches` with the settings ``cfg`` has for it (``detector`` at
    ``photo_detect_width``, ``photo_max_side``, ``photo_max_faces``, ``crop_margin``)."""
    try:
        detector = detector if detector is not None else photo_detector(cfg)
    except Exception as exc:  # noqa: BLE001 - as before: a detector that cannot load fails the photo, in its footer
        yield _footer(photo_path, item_id, image_size, 0, _unexpected(photo_path, exc), {"kind": "photo"})
        return
    yield from photo_face_batches(photo_path, item_id, image_size, detector, crop_margin=cfg.crop_margin,
                                  max_side=cfg.photo_max_side, max_faces=cfg.photo_max_faces)


def iter_item_batches(path: str, item_id: str, kind: str, cfg: InferConfig, image_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Stage 1 for one input item of any kind (``video``, ``photo``; anything else yields only a
    footer saying why it was not read)."""
    if kind == "video":
        yield from iter_face_batches(path, item_id, cfg, image_size)
    elif kind == "photo":
        yield from iter_photo_batches(path, item_id, cfg, image_size)
    else:
        yield _footer(path, item_id, image_size, 0, f"{path}: not a video or photo (unknown file extension)", {"kind": kind})


# --------------------------------------------------------------------------------------------
# stage 2: model outputs -> frame pixels
# --------------------------------------------------------------------------------------------

_FLIP = np.diag([1.0, -1.0, 1.0])


def frame_outputs(outputs: dict[str, np.ndarray], crop_to_frame: np.ndarray, det_score: np.ndarray, image_size: int) -> dict[str, np.ndarray]:
    """Crop-pixel model outputs (B, ...) -> the numeric fields of an inference row, in frame pixels.

    A crop->frame similarity ``A = a [Q | o]`` (``a`` scale, ``Q`` an in-plane rotation, identity for
    the axis-aligned crops of ``facepgn.faces``) turns the weak-perspective pose
    ``p = s F R X + t`` into ``s' = a s``, ``R' = F Q3 F R``, ``t' = (A [t_x, t_y, 1], a t_z)``.
    """
    from facepgn import geometry

    A = np.asarray(crop_to_frame, np.float64).reshape(-1, 2, 3)
    b = A.shape[0]
    lin = A[:, :, :2]
    a = np.sqrt(np.abs(np.linalg.det(lin)))  # (B,)
    q = lin / a[:, None, None]
    q3 = np.tile(np.eye(3), (b, 1, 1))
    q3[:, :2, :2] = q

    def to_frame(pts: np.ndarray) -> np.ndarray:
        pts = np.asarray(pts, np.float64)
        xy = np.einsum("bij,bnj->bni", lin, pts[..., :2]) + A[:, None, :, 2]
        return np.concatenate([xy, pts[..., 2:] * a[:, None, None]], axis=-1)

    lm3d = to_frame(outputs["landmarks_3d"])
    rot = np.asarray(outputs["rotation"], np.float64)
    rot_f = _FLIP @ q3 @ _FLIP @ rot
    t = np.asarray(outputs["translation"], np.float64)
    t_xy = np.einsum("bij,bj->bi", lin, t[:, :2]) + A[:, :, 2]
    trans_f = np.concatenate([t_xy, t[:, 2:3] * a[:, None]], axis=1)
    scale_f = np.asarray(outputs["scale"], np.float64).reshape(b) * a
    angles = np.degrees(np.asarray(geometry.matrix_to_euler(rot_f), np.float64))  # pitch, yaw, roll
    mask = np.asarray(outputs.get("landmark_mask", np.ones((b, lm3d.shape[1]))), np.float64)
    dist = np.linalg.norm(outputs["landmarks_3d"][..., :2] - outputs["mesh_landmarks"][..., :2], axis=-1)
    fit_error = (dist * mask).sum(1) / np.maximum(mask.sum(1), 1.0) / float(image_size)
    quality = np.asarray(det_score, np.float64) * np.exp(-fit_error / 0.05)
    return {
        "pitch": angles[:, 0].astype(np.float32),
        "yaw": angles[:, 1].astype(np.float32),
        "roll": angles[:, 2].astype(np.float32),
        "rotation": rot_f.astype(np.float32),
        "scale": scale_f.astype(np.float32),
        "translation": trans_f.astype(np.float32),
        "landmarks_2d": lm3d[..., :2].astype(np.float32),
        "landmarks_3d": lm3d.astype(np.float32),
        "id_coeffs": np.asarray(outputs["id_coeffs"], np.float32),
        "exp_coeffs": np.asarray(outputs["exp_coeffs"], np.float32),
        "quality": np.clip(quality, 0.0, 1.0).astype(np.float32),
        "fit_error": fit_error.astype(np.float32),
    }


def infer_batch(runner: Predictor, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stage 2 on one column batch: runs the model on the face rows, passes footers through, drops
    the crops. Output columns: the inputs (minus ``crop``) plus the fields of :func:`frame_outputs`."""
    t0 = _time.perf_counter()
    c0 = _time.thread_time()
    kind = np.asarray(batch["kind"])
    n = kind.shape[0]
    faces = np.nonzero(kind == KIND_FACE)[0]
    out = {k: v for k, v in batch.items() if k != "crop"}
    num_id, num_exp = runner.model.cfg.num_id, runner.model.cfg.num_exp
    fields = {
        "pitch": np.zeros(n, np.float32), "yaw": np.zeros(n, np.float32), "roll": np.zeros(n, np.float32),
        "rotation": np.zeros((n, 3, 3), np.float32), "scale": np.zeros(n, np.float32),
        "translation": np.zeros((n, 3), np.float32), "landmarks_2d": np.zeros((n, 68, 2), np.float32),
        "landmarks_3d": np.zeros((n, 68, 3), np.float32), "id_coeffs": np.zeros((n, num_id), np.float32),
        "exp_coeffs": np.zeros((n, num_exp), np.float32), "quality": np.zeros(n, np.float32),
        "fit_error": np.zeros(n, np.float32),
    }
    if faces.size:
        outputs = runner(np.asarray(batch["crop"])[faces])
        mapped = frame_outputs(outputs, np.asarray(batch["crop_to_frame"])[faces], np.asarray(batch["det_score"])[faces], runner.input_size)
        for k, v in mapped.items():
            fields[k][faces] = v
    out.update(fields)
    elapsed = _time.perf_counter() - t0
    out["model_s"] = np.full(n, elapsed / max(n, 1), np.float64)
    out["model_cpu_s"] = np.full(n, (_time.thread_time() - c0) / max(n, 1), np.float64)
    return out


def iter_item_outputs(path: str, item_id: str, kind: str, cfg: InferConfig, image_size: int, runner: Predictor
                      ) -> Iterator[dict[str, np.ndarray]]:
    """Stages 1 and 2 in one process: one item's crop batches (:func:`iter_item_batches`) through
    the model in batches of about ``cfg.batch_size`` faces; yields :func:`infer_batch` outputs, the
    footer last. The plain loop runs this, and so does a Ray task when the model runs on CPU (no
    crops cross processes, and every core does whole items)."""
    pending: list[dict[str, np.ndarray]] = []
    pending_rows = 0
    for batch in iter_item_batches(path, item_id, kind, cfg, image_size):
        pending.append(batch)
        pending_rows += len(batch["kind"])
        if pending_rows >= cfg.batch_size:
            yield infer_batch(runner, concat_batches(pending))
            pending, pending_rows = [], 0
    if pending:
        yield infer_batch(runner, concat_batches(pending))


def concat_batches(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Column batches with the same columns, as one."""
    return batches[0] if len(batches) == 1 else {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


# --------------------------------------------------------------------------------------------
# stage 3: per-video outputs
# --------------------------------------------------------------------------------------------


def smooth_rows(rows: dict[str, np.ndarray], cfg) -> dict[str, np.ndarray]:
    """Temporal smoothing (``SmoothingConfig``) of one video's rows, per track, in place of the raw
    values: landmarks, rotation (re-orthonormalised; Euler angles recomputed), scale, translation,
    expressions; identity is the track's quality-weighted mean (one person) unless configured
    otherwise. Rows must be sorted by (track_id, frame_index)."""
    from facepgn import geometry, smoothing

    out = {k: np.array(v, copy=True) for k, v in rows.items()}
    kw = dict(method=cfg.method, sigma=cfg.sigma_s, min_cutoff=cfg.min_cutoff, beta=cfg.beta)
    for track in np.unique(out["track_id"]):
        idx = np.nonzero(out["track_id"] == track)[0]
        for seg in smoothing.split_segments(out["frame_index"][idx], cfg.max_gap_frames):
            ids = idx[seg]
            if ids.size < 2:
                continue
            t = out["time"][ids]
            for key in ("landmarks_3d", "scale", "translation", "exp_coeffs"):
                out[key][ids] = smoothing.smooth_series(out[key][ids], t, **kw).astype(np.float32)
            out["landmarks_2d"][ids] = out["landmarks_3d"][ids][..., :2]
            rot = smoothing.smooth_rotations(out["rotation"][ids], t, **kw)
            out["rotation"][ids] = rot.astype(np.float32)
            ang = np.degrees(np.asarray(geometry.matrix_to_euler(rot), np.float64))
            out["pitch"][ids], out["yaw"][ids], out["roll"][ids] = ang[:, 0], ang[:, 1], ang[:, 2]
            if cfg.identity == "track_mean":
                w = np.clip(out["quality"][ids].astype(np.float64), 1e-3, None)
                out["id_coeffs"][ids] = (out["id_coeffs"][ids] * w[:, None]).sum(0) / w.sum()
            else:
                out["id_coeffs"][ids] = smoothing.smooth_series(out["id_coeffs"][ids], t, **kw).astype(np.float32)
    out["smoothed"] = np.ones(len(out["frame_index"]), bool)
    return out


def collect_rows(batches: list[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], dict]:
    """Concatenate one video's stage-2 batches -> (face rows sorted by track and frame, footer)."""
    footer: dict = {}
    parts = []
    for b in batches:
        kind = np.asarray(b["kind"])
        for i in np.nonzero(kind == KIND_FOOTER)[0]:
            footer = {"error": str(b["error"][i]), "info": json.loads(str(b["info"][i]) or "{}")}
        face = np.nonzero(kind == KIND_FACE)[0]
        if face.size:
            parts.append({k: np.asarray(v)[face] for k, v in b.items()})
    if parts:
        rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    else:
        rows = {k: np.asarray(v)[:0] for k, v in batches[0].items()} if batches else {}
    if rows and len(rows.get("frame_index", [])):
        order = np.lexsort((rows["frame_index"], rows["track_id"]))
        rows = {k: v[order] for k, v in rows.items()}
    return rows, footer


def finalize_video(video_id: str, batches: list[dict[str, np.ndarray]], cfg: InferConfig, face_model=None, face_model_name: str = "") -> dict:
    """Stage 3 for one item (video or photo): smoothing (videos only: a photo has no time axis),
    rows Parquet, meshes, overlay (a video, or an image for a photo), then the done marker.

    Returns the item's stats (also the done marker's content). An item whose footer carries an
    error gets ``errors/<video_id>.json`` instead and no other output.
    """
    layout = OutputLayout(cfg.output)
    rows, footer = collect_rows(batches)
    info = footer.get("info", {})
    kind = str(info.get("kind", "video"))
    source_path = str(rows["source_path"][0]) if len(rows.get("frame_index", [])) else ""
    if not source_path:
        for b in batches:
            if len(b["source_path"]):
                source_path = str(b["source_path"][0])
                break
    stats: dict[str, Any] = {"video_id": video_id, "kind": kind, "source_path": source_path, "info": info}
    if footer.get("error"):
        stats["error"] = footer["error"]
        storage.atomic_write_text(layout.error(video_id), json.dumps(stats, indent=2))
        return stats
    t0 = _time.perf_counter()
    c0 = _time.thread_time()
    n = len(rows.get("frame_index", []))
    smoothed = bool(cfg.smoothing.enabled) and kind == "video"
    if n and smoothed:
        rows = smooth_rows(rows, cfg.smoothing)
    else:
        rows["smoothed"] = np.zeros(n, bool)
    rows["face_model"] = np.array([face_model_name] * n, dtype=object)
    t1 = _time.perf_counter()
    write_parquet(rows_table(rows), layout.rows(video_id))
    t2 = _time.perf_counter()
    meshes = 0
    selection = parse_mesh_selection(cfg.meshes)
    if selection is not None and face_model is not None:
        for i in range(n):
            if mesh_selected(selection, int(rows["frame_index"][i])):
                row = {k: rows[k][i] for k in ("id_coeffs", "exp_coeffs", "scale", "rotation", "translation")}
                data = mesh_bytes(posed_vertices(face_model, row), face_model.triangles, cfg.mesh_format)
                storage.atomic_write_bytes(layout.mesh(video_id, int(rows["frame_index"][i]), int(rows["track_id"][i]), cfg.mesh_format), data)
                meshes += 1
    t3 = _time.perf_counter()
    overlay_frames = overlay = None
    if cfg.overlay:
        overlay = layout.overlay_image(video_id, source_path) if kind == "photo" else layout.overlay(video_id)
        writer = write_photo_overlay if kind == "photo" else write_overlay
        overlay_frames = writer(source_path, rows, cfg, overlay, face_model)
        overlay = "overlays/" + storage.basename(overlay)
    t4 = _time.perf_counter()
    tracks = np.unique(rows["track_id"]) if n else np.zeros(0)
    stats.update(
        rows=n,
        tracks=int(tracks.size),
        frames_with_faces=int(np.unique(rows["frame_index"]).size) if n else 0,
        meshes=meshes,
        overlay_frames=overlay_frames,
        overlay=overlay,  # relative to the output
        smoothed=smoothed,
        timings={**{k: info.get(k, 0.0) for k in ("decode_s", "detect_s", "crop_s")}, "model_s": float(np.sum(rows.get("model_s", 0.0))),
                 "decode_cpu_s": float(info.get("decode_cpu_s", 0.0)), "model_cpu_s": float(np.sum(rows.get("model_cpu_s", 0.0))),
                 "finalize_cpu_s": _time.thread_time() - c0,
                 "smooth_s": t1 - t0, "write_s": t2 - t1, "meshes_s": t3 - t2, "overlay_s": t4 - t3},
    )
    storage.atomic_write_text(layout.done(video_id), json.dumps(stats, indent=2, default=_json_default))
    if storage.exists(layout.error(video_id)):
        storage.remove(layout.error(video_id))
    return stats


def _json_default(value: Any):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


