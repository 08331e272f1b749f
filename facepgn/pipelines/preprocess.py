"""Unlabelled videos -> frame-pair Parquet shards (``FRAME_PAIR_SCHEMA``), streamed with Ray Data.

Graph: ``ray.data.from_items(videos)`` (one block per video) -> ``map(process one video)`` as
tasks with fractional CPUs, so Ray schedules as many videos at once as the cluster has CPUs for
(4 on 2 CPUs, hundreds on a big cluster). Each task streams its video (chunked decode -> detect ->
track -> crop -> pair -> DIS flow -> quality filters) and writes the video's shards itself, at most
``shard_max_pairs`` rows each, so memory per task is bounded whatever the video or corpus size.
Only a small JSON result per video travels back to the driver.

Output layout (a local folder or an ``s3://`` prefix)::

    shards/<video_id>/part-00000.parquet   frame pairs, FRAME_PAIR_SCHEMA (the only Parquet files)
    videos/<video_id>.json                 done marker: the video's result (ok / partial / skipped + reason)
    videos/_compacted.jsonl.gz             every marker in one file, rewritten per run (facepgn.markers: planning reads it in one GET)
    summary.json                           counts, errors (videos not fully read and why), rejections, timings, versions, config
    errors.csv                             video_id, path, status, reason of every video not fully read

Resume: a video counts as done when its marker exists; markers are written after the video's
shards, and every file is written atomically, so an interrupted run leaves no half-written file
and a rerun redoes exactly the unfinished videos (their stale shards removed first). Pair choice is
seeded per (seed, video, track), so a resumed run writes the same shards as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from facepgn import framepairs, paths, records, storage
from facepgn.cluster import require_shared_storage
from facepgn.config import PreprocessConfig
from facepgn.errors import FacepgnError, InputError
from facepgn.markers import Markers, compact_markers, load_markers
from facepgn.pipelines import common
from facepgn.pipelines.runner import per_process
from facepgn.summary import SUMMARY_FILE, versions, write_summary

log = logging.getLogger("facepgn.preprocess")

SHARDS_DIR = "shards"
MARKERS_DIR = "videos"
STAGES = ("decode", "detect", "crop", "landmarks", "flow", "encode", "write")


# ---- one video -------------------------------------------------------------------------------


@dataclass
class VideoResult:
    video_id: str
    path: str
    subject_id: str
    status: str = "ok"  # ok | partial (decoding stopped early) | skipped
    reason: str = ""
    frames_sampled: int = 0
    faces_detected: int = 0
    tracks: int = 0
    pairs: int = 0
    shards: list[str] = field(default_factory=list)
    rejections: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of the process while it worked on this video
    peak_rss_mb: float = 0.0
    width: int = 0
    height: int = 0
    fps: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


video_seed = framepairs.pair_seed  # a track's pair-choice seed (the earlier name)


def pair_settings(cfg: PreprocessConfig) -> framepairs.PairSettings:
    """The settings pair building reads, from the job's config."""
    q = cfg.quality
    return framepairs.PairSettings(
        image_size=cfg.image_size, crop_margin=cfg.crop_margin, jpeg_quality=cfg.jpeg_quality, min_gap=cfg.min_gap,
        max_gap=cfg.max_gap, pairs_per_frame=cfg.pairs_per_frame, seed=cfg.seed, min_face_size=q.min_face_size,
        min_det_score=q.min_det_score, min_blur=q.min_blur, min_flow_magnitude=q.min_flow_magnitude,
        max_flow_magnitude=q.max_flow_magnitude)


def sampling(cfg: PreprocessConfig) -> framepairs.Sampling:
    """Which frames a video is read at, from the job's config."""
    return framepairs.Sampling(target_fps=cfg.target_fps, max_frames=cfg.max_frames_per_video,
                               max_side=cfg.decode_max_side, chunk=cfg.decode_chunk)


def marker_path(output: str, video_id: str) -> str:
    return storage.join(output, MARKERS_DIR, f"{video_id}.json")


def shard_dir(output: str, video_id: str) -> str:
    return storage.join(output, SHARDS_DIR, video_id)


class VideoProcessor:
    """Turns one video into frame-pair shards and its done marker. Plain Python: used by Ray tasks
    and by the local loop. The pairs come from :func:`facepgn.framepairs.iter_video_pairs`; this
    class holds the models (detector, landmark model, flow estimator: one instance serves many
    videos) and writes the shards.
    """

    def __init__(self, config: PreprocessConfig | dict, output: str):
        import cv2

        from facepgn.faces import FaceDetector, LandmarkModel
        from facepgn.flow import FlowEstimator

        self.cfg = config if isinstance(config, PreprocessConfig) else PreprocessConfig.model_validate(config)
        self.output = output
        cv2.setNumThreads(max(0, int(self.cfg.cv2_threads)))
        d = self.cfg.detector
        self.detector = FaceDetector(
            d.model_path, score_threshold=d.score_threshold, nms_threshold=d.nms_threshold, top_k=d.top_k, detect_width=d.detect_width
        )
        self.landmarks = LandmarkModel(self.cfg.landmark_model) if self.cfg.landmarks else None
        self.flow = FlowEstimator(self.cfg.flow_preset)
        self.settings = pair_settings(self.cfg)

    # -- entry point ------------------------------------------------------------------------

    def __call__(self, item: dict) -> VideoResult:
        """Process one video (``VideoItem`` as a dict). Never raises for bad input: the reason is
        recorded in the result and in the video's marker."""
        result = VideoResult(video_id=item["video_id"], path=item["path"], subject_id=item["subject_id"])
        start, cpu_start = time.perf_counter(), time.process_time()
        timings = defaultdict(float)
        try:
            storage.remove(shard_dir(self.output, result.video_id))  # stale shards of an interrupted run
            self._process(item, result, timings)
        except Exception as exc:  # noqa: BLE001 - bad input, or a bug / library error: record it, go on
            result.status = "partial" if result.pairs else "skipped"
            result.reason = common.failure_reason(exc, item["path"], log)
        result.timings = {k: round(v, 4) for k, v in timings.items()}
        result.seconds = round(time.perf_counter() - start, 4)
        result.cpu_seconds = round(time.process_time() - cpu_start, 4)
        result.peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
        storage.atomic_write_text(marker_path(self.output, result.video_id), json.dumps(result.to_dict(), indent=1))
        return result

    # -- one video: framepairs.iter_video_pairs, its rows written as shards ----------------

    def _process(self, item: dict, result: VideoResult, timings: dict[str, float]) -> None:
        from facepgn.tracking import new_tracker

        cfg = self.cfg
        t = cfg.tracker
        stats = framepairs.VideoStats(rejections=result.rejections, timings=timings)
        buffer: list[dict] = []
        try:
            for row in framepairs.iter_video_pairs(
                item["path"], result.video_id, result.subject_id, detect=self.detector.detect, flow=self.flow,
                tracker=new_tracker(t.iou_threshold, t.max_centre_shift, t.max_missed), max_faces=t.max_faces,
                sampling=sampling(cfg), settings=self.settings, stats=stats,
                landmarks=self.landmarks.predict if self.landmarks is not None else None,
            ):
                buffer.append(row)
                if len(buffer) >= cfg.shard_max_pairs:
                    self._write_shard(result, buffer, timings)
        finally:
            result.frames_sampled, result.faces_detected, result.tracks = stats.frames_sampled, stats.faces_detected, stats.tracks
            result.width, result.height, result.fps = stats.width, stats.height, stats.fps
            if buffer:  # keep what was paired before a decode error
                self._write_shard(result, buffer, timings)

    def _write_shard(self, result: VideoResult, buffer: list[dict], timings: dict) -> None:
        rows = buffer[: self.cfg.shard_max_pairs]
        del buffer[: len(rows)]
        t0 = time.perf_counter()
        data = common.parquet_bytes(records.to_table(rows, "frame_pair"))
        timings["encode"] += time.perf_counter() - t0
        name = f"part-{len(result.shards):05d}.parquet"
        t0 = time.perf_counter()
        storage.atomic_write_bytes(storage.join(shard_dir(self.output, result.video_id), name), data)
        timings["write"] += time.perf_counter() - t0
        result.shards.append(f"{SHARDS_DIR}/{result.video_id}/{name}")
        result.pairs += len(rows)


# ---- Ray task ----------------------------------------------------------------------------------


def _processor_for(config_json: str, output: str) -> VideoProcessor:
    """One processor per worker process and config (models load once, not per video)."""
    return per_process(_build_processor, config_json, output)


def _build_processor(config_json: str, output: str) -> VideoProcessor:
    return VideoProcessor(json.loads(config_json), output)


def _ray_process_row(row: dict[str, Any], config_json: str, output: str, counter=None) -> dict[str, Any]:
    if not common.attempt_allowed(counter, row["video_id"]):  # its worker died on every attempt
        raise common.GivenUpError(f"{row['path']}: given up after {common.MAX_ATTEMPTS} attempts (its worker died each time)")
    result = _processor_for(config_json, output)(row)
    return {"video_id": result.video_id, "result": json.dumps(result.to_dict())}


# ---- the job -----------------------------------------------------------------------------------


def resolve_config(cfg: PreprocessConfig) -> PreprocessConfig:
    """Fill the model paths (so workers and the summary see concrete files); fail early if missing."""
    cfg = cfg.model_copy(deep=True)
    cfg.detector.model_path = str(paths.resolve_asset("detector", cfg.detector.model_path))
    if cfg.landmarks:
        cfg.landmark_model = str(paths.resolve_asset("landmarks", cfg.landmark_model))
    if cfg.min_gap < 1 or cfg.max_gap < cfg.min_gap:
        raise FacepgnError(f"preprocess: need 1 <= min_gap <= max_gap, got {cfg.min_gap}, {cfg.max_gap}")
    if cfg.shard_max_pairs < 1:
        raise FacepgnError("preprocess: shard_max_pairs must be >= 1")
    return cfg


@dataclass
class VideoPlan:
    """What a run will do: the input's videos, the done markers read (``loaded``: all of them;
    ``markers``: those of this input's videos), the videos to process and how many are done."""

    items: list
    loaded: Markers
    markers: dict[str, dict]
    pending: list
    already_done: int


def plan_videos(cfg: PreprocessConfig) -> VideoPlan:
    """List the input (one read of a manifest, or one listing) and the done markers in bulk
    (:func:`facepgn.markers.load_markers`: one listing plus the compacted file, no GET per video),
    and pick the videos to process."""
    from facepgn.video import list_videos

    items = list_videos(cfg.input, cfg.extensions)
    if not items:
        raise InputError(cfg.input, f"no video files found (extensions {', '.join(cfg.extensions)})")
    markers_dir = storage.join(cfg.output.rstrip("/"), MARKERS_DIR)
    loaded = Markers(markers_dir, {}) if cfg.overwrite else load_markers(markers_dir, "video_id")
    item_ids = {it.video_id for it in items}
    markers = {k: v for k, v in loaded.by_id.items() if k in item_ids}

    def is_done(video_id: str) -> bool:
        m = markers.get(video_id)
        return m is not None and (m["status"] != "skipped" or not cfg.retry_failed)

    pending = [it for it in items if not is_done(it.video_id)]
    already_done = len(items) - len(pending)
    if cfg.max_videos is not None:
        pending = pending[: max(0, cfg.max_videos)]
    return VideoPlan(items, loaded, markers, pending, already_done)


def run_preprocess(cfg: PreprocessConfig, progress: bool = True) -> dict[str, Any]:
    """Run the whole job; returns the summary (also written to ``<output>/summary.json``).

    Raises :class:`FacepgnError` (one line) when there are no inputs, or when not a single video
    could be read (the summary is still written first).
    """
    if not cfg.input:
        raise FacepgnError("preprocess: no input given (--input or input: in the config)")
    if not cfg.output:
        raise FacepgnError("preprocess: no output given (--output or output: in the config)")
    cfg = resolve_config(cfg)
    if cfg.executor == "ray":  # a local output on a multi-node cluster: refused before any work
        require_shared_storage({"output": cfg.output}, cfg.shared_storage)
    output = cfg.output.rstrip("/")
    started = time.perf_counter()
    storage.check_writable(output)  # an output that cannot be written: one line before any work
    plan = plan_videos(cfg)
    items, loaded, markers, pending, already_done = plan.items, plan.loaded, plan.markers, plan.pending, plan.already_done
    log.info("preprocess: %d videos found, %d already done, %d to process", len(items), already_done, len(pending))

    run_started = time.perf_counter()
    results: list[dict] = []
    for n, result in enumerate(_execute(pending, cfg, output), 1):
        results.append(result)
        markers[result["video_id"]] = result
        if progress:
            note = f"{result['pairs']} pairs" if result["status"] != "skipped" else f"skipped: {result['reason']}"
            log.info("[%d/%d] %s: %s (%.1fs)", n, len(pending), result["video_id"], note, result["seconds"])
    returned = {r["video_id"] for r in results}
    for item in pending:  # a worker that died (segfault in a decoder, OOM kill) returns nothing
        if item.video_id not in returned:
            crashed = VideoResult(item.video_id, item.path, item.subject_id, status="skipped",
                                  reason=common.LOST_REASON).to_dict()
            storage.remove(shard_dir(output, item.video_id))
            storage.atomic_write_text(marker_path(output, item.video_id), json.dumps(crashed, indent=1))
            results.append(crashed)
            markers[item.video_id] = crashed
            log.warning("%s: %s", item.path, crashed["reason"])
    run_seconds = time.perf_counter() - run_started

    summary = _write_summary(cfg, items, markers, results, already_done, run_seconds, time.perf_counter() - started)
    storage.atomic_write_text(storage.join(output, "errors.csv"), common.errors_csv([markers.get(it.video_id) for it in items], "video_id"))
    if results or not loaded.compacted_is_current:  # every marker in one file: the next run's planning reads it in one GET
        compact_markers(loaded.folder, {**loaded.by_id, **markers})
    if summary["videos_read"] == 0 and summary["videos_skipped_count"]:
        first = summary["videos_skipped"][0]
        raise FacepgnError(
            f"{cfg.input}: none of the {len(items)} videos could be read (e.g. {first['path']}: {first['reason']}); see {storage.join(output, 'errors.csv')}"
        )
    return summary


def _execute(pending: list, cfg: PreprocessConfig, output: str) -> Iterable[dict]:
    if not pending:
        return
    if cfg.executor == "local":
        processor = VideoProcessor(cfg, output)
        for item in pending:
            yield processor(item.to_dict()).to_dict()
        return
    import ray

    config_json = cfg.model_dump_json()
    # A video whose task dies (common.MAX_ATTEMPTS times) must not fail the whole job: Ray Data
    # skips its block; run_preprocess records it as skipped.
    with common.ray_data_context(max_errored_blocks=len(pending), whole_item_tasks=True):  # each task a whole video
        ds = ray.data.from_items([it.to_dict() for it in pending], override_num_blocks=len(pending))
        ds = ds.map(
            _ray_process_row,
            fn_kwargs={"config_json": config_json, "output": output, "counter": common.attempt_counter()},
            num_cpus=cfg.num_cpus_per_video,
            compute=ray.data.TaskPoolStrategy(size=cfg.max_concurrent_videos or None),
        )
        for row in ds.iter_rows():
            yield json.loads(row["result"])


def _write_summary(cfg, items, markers, results, already_done, run_seconds, total_seconds) -> dict[str, Any]:
    """summary.json (:mod:`facepgn.summary`'s shape); the counts are also kept at the top level,
    where this summary had them before ``counts`` existed."""
    by_id = {it.video_id: it for it in items}
    read = [m for vid, m in markers.items() if vid in by_id and m["status"] in ("ok", "partial")]
    skipped = [m for vid, m in markers.items() if vid in by_id and m["status"] == "skipped"]
    partial = [m for m in read if m["status"] == "partial"]
    stage = defaultdict(float)
    rejections = defaultdict(int)
    for r in results:
        for k, v in r["timings"].items():
            stage[k] += v
        for k, v in r["rejections"].items():
            rejections[k] += v
    frames = sum(r["frames_sampled"] for r in results)
    counts = {
        "videos_found": len(items),
        "videos_already_done": already_done,
        "videos_processed_this_run": len(results),
        "videos_pending": len(items) - len(read) - len(skipped),
        "videos_read": len(read),
        "videos_partial_count": len(partial),
        "videos_skipped_count": len(skipped),
        "pairs_written": int(sum(m["pairs"] for m in read)),
        "pairs_written_this_run": int(sum(r["pairs"] for r in results)),
        "shards": int(sum(len(m["shards"]) for m in read)),
        "tracks": int(sum(m.get("tracks", 0) for m in read)),
        "frames_sampled_this_run": int(frames),
    }
    errors = [{"video_id": markers[it.video_id]["video_id"], "path": markers[it.video_id]["path"],
               "status": markers[it.video_id]["status"], "reason": markers[it.video_id]["reason"]}
              for it in items if it.video_id in markers and markers[it.video_id]["status"] != "ok"]
    timings = {
        "wall_s": round(total_seconds, 3),
        "run_s": round(run_seconds, 3),
        "frames_per_s": round(frames / run_seconds, 2) if run_seconds > 0 else None,
        "stage_s": {k: round(stage.get(k, 0.0), 3) for k in STAGES},
        "video_s": round(sum(r["seconds"] for r in results), 3),  # summed over videos (wall, per worker)
        "cpu_s": round(sum(r.get("cpu_seconds", 0.0) for r in results), 3),  # CPU time spent on them
        "max_worker_rss_mb": max((r["peak_rss_mb"] for r in results), default=None),
    }
    extra = {
        **counts,
        "input": cfg.input,
        "output": cfg.output,
        "videos_partial": [{"video_id": m["video_id"], "path": m["path"], "reason": m["reason"]} for m in partial],
        "videos_skipped": [{"video_id": m["video_id"], "path": m["path"], "reason": m["reason"]} for m in skipped],
        "rejections_this_run": dict(rejections),
    }
    return write_summary(storage.join(cfg.output.rstrip("/"), SUMMARY_FILE), job="preprocess", counts=counts, errors=errors,
                         timings=timings, config=cfg.model_dump(mode="json"), extra=extra,
                         versions=versions("ray", "cv2", "pyarrow", "decord"))


# ---- reading shards back ---------------------------------------------------------------------


def list_shards(path: str) -> list[str]:
    """The frame-pair Parquet files under a preprocess output (or any folder/prefix of shards)."""
    path = str(path).rstrip("/")
    shards = storage.list_files(storage.join(path, SHARDS_DIR), extensions=[".parquet"])
    if not shards:
        shards = storage.list_files(path, extensions=[".parquet"])
    return shards


def read_frame_pairs(path: str | list[str], **read_kwargs) -> "ray.data.Dataset":  # noqa: F821
    """A Ray Dataset of frame pairs from preprocess outputs (local or ``s3://``).

    Raises a one-line :class:`FacepgnError` if ``path`` holds no shards or they are not frame pairs.
    """
    import pyarrow.parquet as pq
    import ray

    sources = [path] if isinstance(path, str) else list(path)
    shards: list[str] = []
    for src in sources:
        found = list_shards(src)
        if not found:
            raise FacepgnError(f"{src}: no frame-pair shards (*.parquet) found; run `facepgn preprocess` first")
        shards.extend(found)
    fs, _ = storage.pyarrow_filesystem(shards[0])
    stripped = [storage.pyarrow_filesystem(s)[1] for s in shards]
    schema = pq.read_schema(stripped[0], filesystem=fs)
    records.check_table(schema.empty_table(), "frame_pair", source=shards[0])
    return ray.data.read_parquet(stripped, filesystem=fs, **read_kwargs)
