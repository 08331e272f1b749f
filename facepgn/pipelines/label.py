"""Real videos and photos -> pseudo-labelled face records (``FACE_RECORD_SCHEMA`` v2), on Ray Data.

Graph: the input items not done yet (``from_items``, one block per item) stream through
``map_batches`` on an actor pool (``ActorPoolStrategy``, fractional CPUs, as many actors as the
cluster's CPUs hold; :func:`facepgn.pipelines.common.run_items`). Each actor holds the YuNet
detector and a :class:`facepgn.pseudolabel.FaceLabeller` (teachers + face model, loaded once per
actor) and processes one item per call: decode (videos: sampled frames, chunked decord decode;
photos: one image) -> detect (YuNet; videos also track faces across the sampled frames) ->
label (``FaceLabeller.label`` on batches of faces) -> the item's shard, written by the actor.
Only a small JSON result per item travels back to the driver, and no frame ever enters the object
store, whatever the photo's size.

Output layout (a local folder or an ``s3://`` prefix)::

    data/part-<item_id>.parquet   face records of one item (FACE_RECORD_SCHEMA v2; the only Parquet files)
    items/<item_id>.json          done marker: status (ok / partial / skipped + reason), counts, timings
    summary.json                  counts, rejections by reason, yaw histogram, throughput, versions, config
    errors.csv                    item_id, path, status, reason of every item not fully read
    contact_sheet.png             a sample of the kept faces with their 68 landmarks drawn

``pyarrow.dataset.dataset(<output>/data)`` reads the records, and the output folder itself can be
given to training as ``data.labelled`` (it lists ``*.parquet`` files only).

Resume: an item is done when its marker exists; the marker is written after the item's shard and
every file atomically, so a rerun does only the unfinished items (``retry_failed``: also the
skipped ones; ``overwrite``: all).

Subject ids: a video is one subject per face track (``<subject>`` for track 0,
``<subject>/track<N>`` for the others), a photo one subject per face (``<subject>`` for the
highest-scoring face, ``<subject>/face<N>`` for the others); ``<subject>`` is the manifest's
``subject_id`` column, else the item id. The shared corpora repeat people across clips and photos,
so splitting train/evaluation by person needs a manifest with subject ids.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from facepgn import paths
from facepgn.config import LabelConfig
from facepgn.errors import FacepgnError, InputError
from facepgn.pipelines import common

log = logging.getLogger("facepgn.label")

STAGES = ("decode", "detect", "label", "write")


# ---- inputs --------------------------------------------------------------------------------------


def list_items(cfg: LabelConfig) -> list[dict]:
    """The input videos and photos (folder, glob, ``s3://`` prefix or .csv/.jsonl manifest with
    ``path`` and optional ``subject_id``), sorted by path: dicts with item_id, path, subject_id and
    kind (``video``, ``photo``, or ``other`` for a manifest entry of another type), as
    :func:`facepgn.video.list_media` lists them (``facepgn infer`` lists its inputs the same way)."""
    from facepgn.video import list_media

    return [it.to_dict() for it in list_media(cfg.input, cfg.video_extensions, cfg.image_extensions)]


def spread(indices: list[int], max_count: int | None) -> list[int]:
    """At most ``max_count`` of ``indices``, evenly spaced over them (first and last kept)."""
    if max_count is None or len(indices) <= max_count:
        return list(indices)
    picks = np.unique(np.linspace(0, len(indices) - 1, max(0, max_count)).round().astype(int))
    return [indices[i] for i in picks]


# ---- one item ------------------------------------------------------------------------------------


@dataclass
class LabelResult(common.ItemResult):
    """An item's done marker: what was decoded, detected, kept and rejected, and how long it took."""

    kind: str = ""  # video | photo | other
    subject_id: str = ""
    frames: int = 0  # decoded (photos: 1)
    faces_detected: int = 0
    faces_kept: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # LabelOutcome.reason -> faces
    yaw_histogram: list[int] = field(default_factory=lambda: [0] * 9)  # kept faces, 10-degree bins of |yaw|
    kept_without_pose: int = 0
    labeller_s: dict[str, float] = field(default_factory=dict)  # LabelOutcome.timings summed
    width: int = 0  # source pixels
    height: int = 0


class ItemLabeller:
    """Turns one input item (video or photo) into a face-record shard and a done marker. Plain
    Python: Ray actors and the local loop use it; one instance serves many items (the detector and
    the :class:`facepgn.pseudolabel.FaceLabeller` load once)."""

    def __init__(self, config_json: str, output: str):
        import cv2

        from facepgn.faces import FaceDetector

        self.cfg = LabelConfig.model_validate_json(config_json)
        self.output = output
        cv2.setNumThreads(max(0, int(self.cfg.cv2_threads)))
        _torch_threads(self.cfg.torch_threads)
        d = self.cfg.detector
        self.detector = FaceDetector(d.model_path, score_threshold=d.score_threshold, nms_threshold=d.nms_threshold, top_k=d.top_k, detect_width=d.detect_width)
        self._labeller = None  # built with the first face to label: a job of bad items loads no model

    @property
    def labeller(self):
        if self._labeller is None:
            from facepgn.pseudolabel import FaceLabeller

            self._labeller = FaceLabeller(**self.cfg.labeller.model_dump())
        return self._labeller

    def __call__(self, item: dict) -> dict:
        """Process one item; never raises for bad input (the reason goes into the result and marker)."""
        result = LabelResult(item["item_id"], item["path"], kind=item["kind"], subject_id=item["subject_id"])
        return common.process_item(self.output, result, lambda clock: self._process(item, result, clock), log)

    def _process(self, item: dict, result: LabelResult, clock: common.StageClock) -> list[dict]:
        from facepgn.pseudolabel import FaceToLabel
        from facepgn.tracking import new_tracker, track_faces

        cfg = self.cfg
        rows: list[dict] = []
        yaws: list[float | None] = []
        pending: list[tuple[Any, float]] = []
        with self._frames(item, result, clock) as (frames, to_source):
            if item["kind"] == "video":
                t = cfg.tracker
                tracker, suffix = new_tracker(t.iou_threshold, t.max_centre_shift, t.max_missed), "track"
            else:
                tracker, suffix = None, "face"
            # decode -> detect -> track (facepgn.tracking, as preprocess and infer)
            for tracked in track_faces(frames, self.detector.detect, tracker=tracker, max_faces=cfg.tracker.max_faces, clock=clock):
                result.frames += 1
                result.faces_detected += len(tracked.detections)
                for face in tracked.faces:  # track_id: the track (videos) or the face's rank (photos)
                    key, det = face.track_id, face.detection
                    subject = item["subject_id"] if key == 0 else f"{item['subject_id']}/{suffix}{key}"
                    pending.append((FaceToLabel(image=tracked.rgb, box=det.box.copy(), source_path=item["path"], subject_id=subject,
                                                frame_index=int(tracked.index), face_index=face.rank, points=det.points.copy()), to_source))
                if len(pending) >= cfg.label_batch_size:
                    self._label(pending, item["item_id"], result, rows, yaws, clock)
                    pending = []
        if pending:
            self._label(pending, item["item_id"], result, rows, yaws, clock)
        if result.frames == 0:
            raise InputError(item["path"], "no frames decoded")
        if result.faces_detected == 0:
            where = f"in {result.frames} sampled frames" if item["kind"] == "video" else "in the photo"
            raise InputError(item["path"], f"no face found {where}")
        result.yaw_histogram = common.yaw_histogram(y for y in yaws if y is not None)
        result.kept_without_pose = sum(y is None for y in yaws)
        result.labeller_s = {k: round(v, 4) for k, v in result.labeller_s.items()}
        return rows

    def _label(self, pending: list, item_id: str, result: LabelResult, rows: list, yaws: list, clock: common.StageClock) -> None:
        faces = [face for face, _ in pending]
        with clock("load"):  # the models, once per actor (not part of the label stage's throughput)
            labeller = self.labeller
        with clock("label"):
            outcomes = labeller.label(faces)
        if len(outcomes) != len(faces):
            raise RuntimeError(f"the labeller returned {len(outcomes)} outcomes for {len(faces)} faces")
        for (face, to_source), outcome in zip(pending, outcomes):
            common.add_counts(result.labeller_s, outcome.timings)
            if outcome.record is None:
                reason = outcome.reason or "unknown"
                result.rejected[reason] = result.rejected.get(reason, 0) + 1
                continue
            row = _job_fields(dict(outcome.record), face, item_id, to_source)
            rows.append(row)
            yaws.append(common.record_yaw_deg(row))
            result.faces_kept += 1

    @contextlib.contextmanager
    def _frames(self, item: dict, result: LabelResult, clock: common.StageClock):
        """(the item's frames, decoded -> source pixel factor): a video's sampled frames (decoded
        in chunks), or the photo as one frame (downscaled to ``decode_max_side``)."""
        from facepgn.tracking import open_video
        from facepgn.video import Frame, read_photo

        cfg = self.cfg
        if item["kind"] == "photo":
            with clock("decode"):
                photo = read_photo(item["path"], cfg.decode_max_side)
                result.height, result.width = photo.rgb.shape[:2]
            yield [Frame(0, 0.0, photo.small)], photo.to_source
            return
        if item["kind"] != "video":
            raise InputError(item["path"], "not a video or photo (unknown file extension)")
        with contextlib.ExitStack() as stack:
            with clock("decode"):
                reader = stack.enter_context(open_video(item["path"], max_side=cfg.decode_max_side))
            result.width, result.height = reader.source_size
            indices = spread(reader.sample_indices(cfg.target_fps), cfg.max_frames_per_video)
            yield _until_decode_error(reader.frames(indices, chunk_size=cfg.decode_chunk), result), reader.scale_to_source


def _until_decode_error(frames: Iterator, result: LabelResult) -> Iterator:
    """``frames``, ended by a decode error after some frames (the item is then partial, with the
    error as its reason); a decode error before any frame raises."""
    while True:
        try:
            frame = next(frames, None)
        except InputError as exc:
            if result.frames == 0:
                raise
            result.status, result.reason = "partial", exc.cause
            return
        if frame is None:
            return
        yield frame


def _job_fields(row: dict, face, item_id: str, to_source: float) -> dict:
    """The fields the job owns, set on a labeller's record: the subject, the input path, the frame,
    a record id if the labeller gave none (``<item_id>/<frame>/<face>``), and ``crop_to_frame`` in
    source pixels (frames may have been decoded downscaled)."""
    row["record_id"] = row.get("record_id") or f"{item_id}/{face.frame_index}/{face.face_index}"
    row["subject_id"] = face.subject_id
    row["source_path"] = face.source_path
    row["frame_index"] = face.frame_index
    if to_source != 1.0:
        row["crop_to_frame"] = np.asarray(row["crop_to_frame"], np.float32).reshape(2, 3) * np.float32(to_source)
    return row


def _torch_threads(n: int) -> None:
    import torch

    if n > 0:
        torch.set_num_threads(n)


# ---- the job -------------------------------------------------------------------------------------


def resolve_config(cfg: LabelConfig) -> LabelConfig:
    """Concrete model paths (workers and the summary see the files); fails early, in one line, when
    one is missing or a setting is out of range."""
    if not cfg.input:
        raise FacepgnError("label: no input given (--input or input: in the config)")
    if not cfg.output:
        raise FacepgnError("label: no output given (--output or output: in the config)")
    if cfg.label_batch_size < 1 or cfg.decode_chunk < 1:
        raise FacepgnError("label: label_batch_size and decode_chunk must be >= 1")
    cfg = cfg.model_copy(deep=True)
    cfg.output = cfg.output.rstrip("/")
    cfg.detector.model_path = str(paths.resolve_asset("detector", cfg.detector.model_path))
    lab = cfg.labeller
    lab.face_model = str(paths.resolve_asset("face_model", lab.face_model))
    lab.landmark_model = str(paths.resolve_asset("landmarks", lab.landmark_model))
    if "mediapipe_mesh" in paths.ASSETS:
        lab.mediapipe_model = str(paths.resolve_asset("mediapipe_mesh", lab.mediapipe_model))
    return cfg


def run_label(cfg: LabelConfig, progress: bool = True) -> dict[str, Any]:
    """Run the whole job; returns the summary (also written to ``<output>/summary.json``).

    Raises a one-line :class:`FacepgnError` when there are no inputs, or when not a single item
    could be read (summary.json and errors.csv are written first)."""
    started = time.perf_counter()
    cfg = resolve_config(cfg)
    items = list_items(cfg)
    if not items:
        raise InputError(cfg.input, "no videos or photos found (extensions " + ", ".join(cfg.video_extensions + cfg.image_extensions) + ")")
    log.info("label: %d videos, %d photos", sum(it["kind"] == "video" for it in items), sum(it["kind"] == "photo" for it in items))
    run = common.run_item_job(
        cfg, items, functools.partial(ItemLabeller, cfg.model_dump_json(), cfg.output),
        lost=lambda it: LabelResult(it["item_id"], it["path"], kind=it["kind"], subject_id=it["subject_id"]),
        note=lambda r: f"{r['faces_kept']}/{r['faces_detected']} faces kept" + (f" ({r['reason']})" if r["reason"] else ""),
        log=log, progress=progress, started=started,
    )
    counts, errors, extra = _summary(cfg, run)
    return common.finish_item_job(cfg, run, "label", counts, errors, extra, "videos/photos", "decord", "torch")


def _summary(cfg: LabelConfig, run: common.ItemRun) -> tuple[dict[str, int], list[dict], dict[str, Any]]:
    counts, errors, extra = common.item_summary(cfg, run)
    t = common.totals(run.done, run.results, "rejected", "labeller_s")
    faces_run = sum(r["faces_detected"] for r in run.results)
    frames_run = sum(r["frames"] for r in run.results)
    stages = common.stage_throughput(faces_run, t.wall_s, t.cpu_s, STAGES, t.inner_s, "label")
    stages["decode"]["frames_per_s_per_core"] = round(frames_run / t.cpu_s["decode"], 2) if t.cpu_s.get("decode") else None
    counts.update({
        "videos_found": sum(it["kind"] == "video" for it in run.items),
        "photos_found": sum(it["kind"] == "photo" for it in run.items),
        "frames": int(sum(m["frames"] for m in t.read)),
        "faces_detected": int(sum(m["faces_detected"] for m in t.read)),
        "faces_kept": int(sum(m["faces_kept"] for m in t.read)),
        "faces_kept_this_run": int(sum(r["faces_kept"] for r in run.results)),
        "kept_without_pose": int(sum(m["kept_without_pose"] for m in t.read)),
    })
    extra.update({
        "faces_rejected": t.reasons,  # by LabelOutcome.reason
        "yaw_histogram_deg": common.yaw_histogram_labels(t.yaw_histogram),  # kept faces, |yaw| from the record's pose
        "throughput": {
            "unit": "faces (detected, this run) per CPU second of each stage (per core); label.*: per second of the labeller's own stage timings",
            "faces": faces_run,
            "frames": frames_run,
            "load_models_s": round(t.wall_s.get("load", 0.0), 3),  # once per actor, not in the stages
            "stages": stages,
            "faces_per_s": round(faces_run / run.run_seconds, 2) if run.run_seconds > 0 and faces_run else None,  # wall, all actors
        },
    })
    return counts, errors, extra
