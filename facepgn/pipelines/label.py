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

import functools
import logging
import os
import resource
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from facepgn import paths, records, storage
from facepgn.config import LabelConfig
from facepgn.errors import FacepgnError, InputError
from facepgn.pipelines import common

log = logging.getLogger("facepgn.label")

DATA_DIR = "data"
MARKERS_DIR = "items"
STAGES = ("decode", "detect", "label", "write")
LOST_REASON = "the worker processing it crashed or was killed (see the Ray logs); retry with retry_failed=true"


# ---- inputs --------------------------------------------------------------------------------------


def list_items(cfg: LabelConfig) -> list[dict]:
    """The input videos and photos (folder, glob, ``s3://`` prefix or .csv/.jsonl manifest with
    ``path`` and optional ``subject_id``), sorted by path: dicts with item_id, path, subject_id and
    kind (``video``, ``photo``, or ``other`` for a manifest entry of another type)."""
    from facepgn.video import list_videos

    videos = tuple(e.lower() for e in cfg.video_extensions)
    photos = tuple(e.lower() for e in cfg.image_extensions)
    items = []
    for it in list_videos(cfg.input, videos + photos):
        ext = os.path.splitext(it.path)[1].lower()
        kind = "video" if ext in videos else "photo" if ext in photos else "other"
        items.append({"item_id": it.video_id, "path": it.path, "subject_id": it.subject_id, "kind": kind})
    return items


def shard_path(output: str, item_id: str) -> str:
    return storage.join(output, DATA_DIR, f"part-{item_id}.parquet")


def marker_path(output: str, item_id: str) -> str:
    return storage.join(output, MARKERS_DIR, f"{item_id}.json")


def spread(indices: list[int], max_count: int | None) -> list[int]:
    """At most ``max_count`` of ``indices``, evenly spaced over them (first and last kept)."""
    if max_count is None or len(indices) <= max_count:
        return list(indices)
    picks = np.unique(np.linspace(0, len(indices) - 1, max(0, max_count)).round().astype(int))
    return [indices[i] for i in picks]


# ---- one item ------------------------------------------------------------------------------------


@dataclass
class ItemResult:
    item_id: str
    path: str
    kind: str
    subject_id: str
    status: str = "ok"  # ok | partial (video decoding stopped early) | skipped
    reason: str = ""
    frames: int = 0  # decoded (photos: 1)
    faces_detected: int = 0
    faces_kept: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # LabelOutcome.reason -> faces
    yaw_histogram: list[int] = field(default_factory=lambda: [0] * 9)  # kept faces, 10-degree bins of |yaw|
    kept_without_pose: int = 0
    shard: str = ""  # relative to the output
    stage_s: dict[str, float] = field(default_factory=dict)  # wall seconds per stage
    stage_cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds per stage
    labeller_s: dict[str, float] = field(default_factory=dict)  # LabelOutcome.timings summed
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    width: int = 0  # source pixels
    height: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


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
        result = ItemResult(item_id=item["item_id"], path=item["path"], kind=item["kind"], subject_id=item["subject_id"])
        clock = common.StageClock()
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            storage.remove(shard_path(self.output, result.item_id))  # a stale shard of an interrupted run
            rows = self._process(item, result, clock)
            if rows:
                with clock("write"):
                    storage.atomic_write_bytes(shard_path(self.output, result.item_id), common.parquet_bytes(records.to_table(rows, "face_record")))
                result.shard = f"{DATA_DIR}/part-{result.item_id}.parquet"
        except Exception as exc:  # bad input, or a bug / library error: record it, go on
            result.status = "skipped"
            result.reason = common.failure_reason(exc, item["path"], log)
        result.stage_s, result.stage_cpu_s = clock.rounded()
        result.labeller_s = {k: round(v, 4) for k, v in result.labeller_s.items()}
        result.seconds = round(time.perf_counter() - start, 4)
        result.cpu_seconds = round(time.process_time() - cpu_start, 4)
        result.peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
        out = result.to_dict()
        storage.atomic_write_text(marker_path(self.output, result.item_id), common.json_text(out))
        return out

    def _process(self, item: dict, result: ItemResult, clock: common.StageClock) -> list[dict]:
        from facepgn.faces import FaceTracker
        from facepgn.pseudolabel import FaceToLabel

        cfg = self.cfg
        if item["kind"] == "video":
            frames = self._video_frames(item, result, clock)
            t = cfg.tracker
            tracker = FaceTracker(t.iou_threshold, t.max_centre_shift, t.max_missed)
            suffix = "track"
        elif item["kind"] == "photo":
            frames = self._photo(item, result, clock)
            tracker, suffix = None, "face"
        else:
            raise InputError(item["path"], "not a video or photo (unknown file extension)")
        rows: list[dict] = []
        yaws: list[float | None] = []
        pending: list[tuple[Any, float]] = []
        for frame_index, rgb, to_source in frames:
            result.frames += 1
            with clock("detect"):
                detections = self.detector.detect(rgb)[: cfg.tracker.max_faces]
                order = {id(d): i for i, d in enumerate(detections)}
                keyed = tracker.update(detections) if tracker is not None else list(enumerate(detections))
            result.faces_detected += len(detections)
            for key, det in keyed:  # key: the track (videos) or the face's rank (photos)
                subject = item["subject_id"] if key == 0 else f"{item['subject_id']}/{suffix}{key}"
                face = FaceToLabel(image=rgb, box=det.box.copy(), source_path=item["path"], subject_id=subject,
                                   frame_index=int(frame_index), face_index=order[id(det)])
                pending.append((face, to_source))
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
        return rows

    def _label(self, pending: list, item_id: str, result: ItemResult, rows: list, yaws: list, clock: common.StageClock) -> None:
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

    def _video_frames(self, item: dict, result: ItemResult, clock: common.StageClock) -> Iterator[tuple[int, np.ndarray, float]]:
        """(frame index, RGB, decoded -> source pixel factor) of the sampled frames. A decode error
        after some frames ends the stream and marks the item partial; before any, it raises."""
        from facepgn.video import VideoReader, local_video

        cfg = self.cfg
        with local_video(item["path"]) as local_path:
            with clock("decode"):
                reader = VideoReader(local_path, max_side=cfg.decode_max_side, display_path=item["path"])
            result.width, result.height = reader.source_size
            indices = spread(reader.sample_indices(cfg.target_fps), cfg.max_frames_per_video)
            frames = reader.frames(indices, chunk_size=cfg.decode_chunk)
            while True:
                try:
                    with clock("decode"):
                        frame = next(frames, None)
                except InputError as exc:
                    if result.frames == 0:
                        raise
                    result.status, result.reason = "partial", exc.cause
                    return
                if frame is None:
                    return
                yield frame.index, frame.rgb, reader.scale_to_source

    def _photo(self, item: dict, result: ItemResult, clock: common.StageClock) -> Iterator[tuple[int, np.ndarray, float]]:
        import cv2

        from facepgn.labelled import read_image

        with clock("decode"):
            rgb = read_image(item["path"])
            result.height, result.width = rgb.shape[:2]
            side = self.cfg.decode_max_side
            if side and max(rgb.shape[:2]) > side:
                scale = side / max(rgb.shape[:2])
                size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
                rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        yield 0, rgb, result.width / rgb.shape[1]


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
    cfg = resolve_config(cfg)
    output = cfg.output
    started = time.perf_counter()
    items = list_items(cfg)
    if not items:
        raise InputError(cfg.input, "no videos or photos found (extensions " + ", ".join(cfg.video_extensions + cfg.image_extensions) + ")")
    storage.makedirs(output)
    markers = {} if cfg.overwrite else common.read_markers(storage.join(output, MARKERS_DIR), "item_id")
    ids = [it["item_id"] for it in items]
    markers = {k: v for k, v in markers.items() if k in set(ids)}
    pending = [it for it in items if not (it["item_id"] in markers and (markers[it["item_id"]]["status"] != "skipped" or not cfg.retry_failed))]
    already_done = len(items) - len(pending)
    if cfg.max_items is not None:
        pending = pending[: max(0, cfg.max_items)]
    log.info("label: %d items found (%d videos, %d photos), %d already done, %d to process", len(items),
             sum(it["kind"] == "video" for it in items), sum(it["kind"] == "photo" for it in items), already_done, len(pending))

    run_started = time.perf_counter()
    make_worker = functools.partial(ItemLabeller, cfg.model_dump_json(), output)
    results: list[dict] = []
    kept = 0
    for result in common.run_items(pending, make_worker, executor=cfg.executor, num_cpus=cfg.num_cpus_per_actor, max_actors=cfg.max_actors):
        results.append(result)
        markers[result["item_id"]] = result
        kept += result["faces_kept"]
        if progress:
            note = f"skipped: {result['reason']}" if result["status"] == "skipped" else (
                f"{result['faces_kept']}/{result['faces_detected']} faces kept" + (f" ({result['reason']})" if result["reason"] else ""))
            log.info("[%d/%d] %s: %s (%.1fs; %d faces kept this run)", len(results), len(pending), result["item_id"], note, result["seconds"], kept)
    returned = {r["item_id"] for r in results}
    for item in pending:  # an actor that died on it (a decoder crash, an OOM kill) returned nothing
        if item["item_id"] not in returned:
            lost = ItemResult(item["item_id"], item["path"], item["kind"], item["subject_id"], status="skipped", reason=LOST_REASON).to_dict()
            storage.remove(shard_path(output, item["item_id"]))
            storage.atomic_write_text(marker_path(output, item["item_id"]), common.json_text(lost))
            results.append(lost)
            markers[item["item_id"]] = lost
            log.warning("%s: %s", item["path"], LOST_REASON)
    run_seconds = time.perf_counter() - run_started

    done = [markers[i] for i in ids if i in markers]
    sheet = common.contact_sheet_png([storage.join(output, m["shard"]) for m in done if m["shard"]], cfg.contact_sheet)
    if sheet is not None:
        storage.atomic_write_bytes(storage.join(output, "contact_sheet.png"), sheet)
    summary = _summary(cfg, items, done, results, already_done, run_seconds, time.perf_counter() - started, sheet is not None)
    storage.atomic_write_text(storage.join(output, "summary.json"), common.json_text(summary))
    storage.atomic_write_text(storage.join(output, "errors.csv"), common.errors_csv(done, "item_id"))
    if summary["items_read"] == 0 and summary["items_skipped_count"]:
        first = summary["items_skipped"][0]
        raise FacepgnError(
            f"{cfg.input}: none of the {len(items)} videos/photos could be read (e.g. {first['path']}: {first['reason']}); "
            f"see {storage.join(output, 'errors.csv')}"
        )
    return summary


def _summary(cfg: LabelConfig, items, done, results, already_done, run_seconds, total_seconds, has_sheet: bool) -> dict[str, Any]:
    read = [m for m in done if m["status"] in ("ok", "partial")]
    skipped = [m for m in done if m["status"] == "skipped"]
    rejected: dict[str, int] = {}
    yaw = [0] * 9
    for m in read:
        common.add_counts(rejected, m["rejected"])
        yaw = [a + b for a, b in zip(yaw, m["yaw_histogram"])]
    wall, cpu, inner = defaultdict(float), defaultdict(float), defaultdict(float)
    for r in results:
        common.add_counts(wall, r["stage_s"])
        common.add_counts(cpu, r["stage_cpu_s"])
        common.add_counts(inner, r["labeller_s"])
    faces_run = sum(r["faces_detected"] for r in results)
    frames_run = sum(r["frames"] for r in results)
    throughput = common.stage_throughput(faces_run, wall, cpu, STAGES)
    throughput["decode"]["frames_per_s_per_core"] = round(frames_run / cpu["decode"], 2) if cpu.get("decode") else None
    for name, seconds in sorted(inner.items()):  # the labeller's own stages (LabelOutcome.timings)
        throughput[f"label.{name}"] = {"s": round(seconds, 3), "per_s_per_core": round(faces_run / seconds, 2) if seconds > 0 else None}
    return {
        "kind": "label",
        "input": cfg.input,
        "output": cfg.output,
        "items_found": len(items),
        "videos_found": sum(it["kind"] == "video" for it in items),
        "photos_found": sum(it["kind"] == "photo" for it in items),
        "items_already_done": already_done,
        "items_processed_this_run": len(results),
        "items_pending": len(items) - len(done),
        "items_read": len(read),
        "items_partial": [{"item_id": m["item_id"], "path": m["path"], "reason": m["reason"]} for m in read if m["status"] == "partial"],
        "items_skipped_count": len(skipped),
        "items_skipped": [{"item_id": m["item_id"], "path": m["path"], "reason": m["reason"]} for m in skipped],
        "frames": int(sum(m["frames"] for m in read)),
        "faces_detected": int(sum(m["faces_detected"] for m in read)),
        "faces_kept": int(sum(m["faces_kept"] for m in read)),
        "faces_rejected": dict(sorted(rejected.items())),
        "faces_kept_this_run": int(sum(r["faces_kept"] for r in results)),
        "shards": int(sum(bool(m["shard"]) for m in read)),
        "yaw_histogram_deg": common.yaw_histogram_labels(yaw),  # kept faces, |yaw| from the record's pose
        "kept_without_pose": int(sum(m["kept_without_pose"] for m in read)),
        "throughput": {
            "unit": "faces (detected, this run) per CPU second of the stage: per core",
            "faces": faces_run,
            "frames": frames_run,
            "stages": throughput,
        },
        "timings": {
            "total_s": round(total_seconds, 3),
            "run_s": round(run_seconds, 3),
            "faces_per_s": round(faces_run / run_seconds, 2) if run_seconds > 0 and faces_run else None,
            "item_s": round(sum(r["seconds"] for r in results), 3),  # summed over items (wall, per actor)
            "cpu_s": round(sum(r["cpu_seconds"] for r in results), 3),
            "max_worker_rss_mb": max((r["peak_rss_mb"] for r in results), default=None),
        },
        "contact_sheet": "contact_sheet.png" if has_sheet else None,
        "versions": common.versions("ray", "decord", "torch"),
        "config": cfg.model_dump(mode="json"),
    }
