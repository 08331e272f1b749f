"""``facepgn synth faces`` and ``facepgn synth videos`` on Ray Data or on this machine.

Graph: faces ``[0, n)`` cut into chunks of ``rows_per_shard`` (clips: one chunk each), each one
item of :func:`facepgn.pipelines.chunks.run_chunks`: a Ray task with ``num_cpus_per_task`` CPUs
(``executor: ray``) or, here (``executor: local``), a loop or ``workers`` processes, running
:func:`facepgn.synthetic.write_face_chunk` (:func:`facepgn.synthetic.write_video`) on it. Face
``i`` comes from ``(seed, i)`` alone, so a chunk is the same bytes on any executor. With
``backgrounds`` the driver builds the real-background bank once (cached in ``background_cache``)
and writes it beside the data (``background_bank.npz``), which every task reads.

Output layouts (a local folder or an ``s3://`` prefix)::

    faces:  data/part-NNNNN.parquet (the only Parquet files), items/NNNNN.json (done markers),
            summary.json, errors.csv, contact_sheet.png, background_bank.npz (with backgrounds)
    videos: synthetic-NNNN.mp4 + synthetic-NNNN.gt.npz, items/NNNN.json, summary.json, errors.csv

A faces folder written before ``data/`` (shards at its top level) is resumed in place
(:func:`facepgn.synthetic.data_dir`).
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any, Callable

import numpy as np

from facepgn import records, storage, synthetic
from facepgn.config import SyntheticFacesConfig, SyntheticVideosConfig
from facepgn.pipelines import chunks
from facepgn.summary import SUMMARY_FILE, versions, write_summary

log = logging.getLogger("facepgn.synth")

#: the real-background patches the faces of an output are drawn on (with ``backgrounds``), beside ``data/``
BANK_FILE = "background_bank.npz"

#: settings that do not change what a chunk renders (left out of its item, so changing them redoes nothing)
RUN_SETTINGS = ("n", "output", "executor", "workers", "num_cpus_per_task", "max_tasks", "overwrite", "contact_sheet",
                "rows_per_shard", "shared_storage")


def worker_count(requested: int) -> int:
    """``workers`` for ``executor: local``: as given, or one per CPU this process may use (0)."""
    if requested > 0:
        return requested
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _pool(workers: int) -> Callable[[int], Executor] | None:
    """Worker processes for ``executor: local`` (None: a loop in this process)."""
    if workers <= 1:
        return None
    from facepgn.synthetic.threads import _init_worker, _pool_context

    return lambda tasks: ProcessPoolExecutor(max_workers=min(workers, tasks), mp_context=_pool_context(), initializer=_init_worker)


def _settings(cfg: SyntheticFacesConfig | SyntheticVideosConfig) -> dict[str, Any]:
    return {k: v for k, v in cfg.model_dump(mode="json").items() if k not in RUN_SETTINGS}


# ---- faces ---------------------------------------------------------------------------------------


def face_chunks(cfg: SyntheticFacesConfig, shard_dir: str, bank: str | None) -> list[dict]:
    """The chunks of faces ``[0, n)``: index range, the rendering settings, the shard below the
    output, the background bank file below the output (None: procedural backgrounds)."""
    settings = _settings(cfg)
    items = []
    for index, start in enumerate(range(0, cfg.n, cfg.rows_per_shard)):
        stop = min(cfg.n, start + cfg.rows_per_shard)
        name = f"part-{index:05d}.parquet"
        items.append({"item_id": f"{index:05d}", "path": f"synthetic:seed={cfg.seed}/faces {start}-{stop - 1}",
                      "start": start, "stop": stop, "settings": settings, "bank": bank,
                      "files": [name if shard_dir == "." else f"{shard_dir}/{name}"]})
    return items


def render_face_item(item: dict, output: str) -> dict[str, Any]:
    """A face chunk's worker function (:func:`facepgn.synthetic.write_face_chunk`)."""
    from facepgn.synthetic.threads import _init_worker

    _init_worker()  # one OpenCV and torch thread: parallelism comes from the tasks
    settings = SyntheticFacesConfig.model_validate(item["settings"])
    if item["bank"]:  # the driver's bank, beside the data: no task needs the source photos
        settings = settings.model_copy(update={"backgrounds": [chunks.below(output, item["bank"])]})
    return synthetic.write_face_chunk(chunks.below(output, item["files"][0]), item["start"], item["stop"],
                                      settings.seed, settings)


def existing_face_chunk(item: dict, output: str) -> dict[str, Any]:
    """The stats of a shard written without a marker, from its pose and visibility columns."""
    import io

    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(storage.read_bytes(chunks.below(output, item["files"][0]))),
                          columns=["pose", "landmarks_visible"])
    stats = synthetic.face_chunk_stats(table.column("pose").to_pylist(), table.column("landmarks_visible").to_pylist())
    return {**stats, "rows": table.num_rows}


def _write_bank(cfg: SyntheticFacesConfig, output: str) -> str | None:
    """The real-background bank (``backgrounds``), built (or read from ``background_cache``) once
    here and written beside the data as :data:`BANK_FILE`, where every task on every node reads the
    same patches; its name below the output (None without real backgrounds)."""
    import io

    bank = synthetic.background_bank(cfg)
    if bank is None:
        return None
    path = storage.join(output, BANK_FILE)
    buf = io.BytesIO()
    np.savez_compressed(buf, patches=bank)
    storage.atomic_write_bytes(path, buf.getvalue())
    return BANK_FILE


def run_synth_faces(cfg: SyntheticFacesConfig, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Render ``cfg.n`` faces into ``cfg.output``; returns the summary (also ``summary.json``).
    ``progress(faces)`` as chunks finish (the chunks done earlier first)."""
    started = time.perf_counter()
    output = cfg.output.rstrip("/")
    synthetic.face_model_for(cfg)  # a missing or bad face model fails here, in one line
    chunks.preflight(output, cfg.executor, cfg.shared_storage)  # one line before the bank is built: where it may write
    bank = _write_bank(cfg, output)
    shard_dir = chunks.relative(output, synthetic.data_dir(output)) or "."
    workers = worker_count(cfg.workers)

    def on_chunk(marker: dict) -> None:
        if progress:
            progress(int(marker.get("rows", 0)))

    run = chunks.run_chunks(output, face_chunks(cfg, shard_dir, bank), render_face_item, executor=cfg.executor,
                            num_cpus=cfg.num_cpus_per_task, max_tasks=cfg.max_tasks, pool=_pool(workers),
                            overwrite=cfg.overwrite, existing=existing_face_chunk, progress=on_chunk)
    if progress:
        progress(sum(int(m.get("rows", 0)) for m in run.earlier))
    shards = sorted(chunks.below(output, f) for m in run.ok for f in m["files"])
    sheet_path = None
    if cfg.contact_sheet > 0 and shards:
        sheet = synthetic.contact_sheet_from_records(shards, limit=cfg.contact_sheet)
        sheet_path = storage.join(output, "contact_sheet.png")
        storage.atomic_write_bytes(sheet_path, records.encode_image(sheet, ".png"))
    errors = chunks.error_entries(run.markers)
    chunks.write_errors_csv(output, errors)
    summary = _faces_summary(cfg, run, shards, errors, started, workers, sheet_path)
    chunks.fail_if_none_done(run, "face chunks", output)
    return summary


def _faces_summary(cfg: SyntheticFacesConfig, run: chunks.ChunkRun, shards: list[str], errors: list[dict],
                   started: float, workers: int, sheet_path: str | None) -> dict[str, Any]:
    ok = run.ok
    written = sum(int(r.get("rows", 0)) for r in run.results if r["status"] == "ok")
    earlier = sum(int(m.get("rows", 0)) for m in run.earlier)
    counts = {"faces": cfg.n, "written": written, "skipped_existing": earlier, "shards": len(shards), **chunks.chunk_counts(run)}
    buckets = np.sum([m["yaw_buckets"] for m in ok], 0).tolist() if ok else [0, 0, 0]
    visible = [(m["visible_fraction"], m["rows"]) for m in ok if m.get("visible_fraction") is not None]
    timings = chunks.chunk_timings(run, started)
    timings.update(render_s=timings["run_s"], faces_per_s=round(written / run.run_seconds, 2) if run.run_seconds > 0 and written else None)
    extra = {  # the counts also at the top level, where this summary had them before ``counts`` existed
        "faces": cfg.n, "written": written, "skipped_existing": earlier, "shards": shards,
        "yaw_buckets_deg": {"[0,30]": buckets[0], "(30,60]": buckets[1], "(60,90]": buckets[2]},  # every face of the output
        "mean_visible_landmarks": 68 * sum(f * n for f, n in visible) / sum(n for _, n in visible) if visible else None,
        "executor": cfg.executor, "workers": workers if cfg.executor == "local" else None, "contact_sheet": sheet_path,
    }
    return write_summary(storage.join(cfg.output.rstrip("/"), SUMMARY_FILE), job="synth faces", counts=counts, errors=errors,
                         timings=timings, config=cfg.model_dump(mode="json"), extra=extra,
                         versions=versions("ray", "cv2", "pyarrow", "torch"))


# ---- videos --------------------------------------------------------------------------------------


def video_chunks(cfg: SyntheticVideosConfig) -> list[dict]:
    """One chunk per clip: its index, the rendering settings, its two files."""
    settings = _settings(cfg)
    return [{"item_id": f"{i:04d}", "path": f"synthetic:seed={cfg.seed}/video {i}", "index": i, "settings": settings,
             "files": [f"{synthetic.clip_name(i)}.gt.npz", f"{synthetic.clip_name(i)}.mp4"]} for i in range(cfg.n)]


def render_video_item(item: dict, output: str) -> dict[str, Any]:
    """A clip's worker function (:func:`facepgn.synthetic.write_video`)."""
    from facepgn.synthetic.threads import _init_worker

    _init_worker()
    settings = SyntheticVideosConfig.model_validate(item["settings"])
    return synthetic.write_video(item["index"], settings.seed, settings, output)


def existing_video(item: dict, output: str) -> dict[str, Any]:
    return {"frames": int(item["settings"]["frames"])}


def run_synth_videos(cfg: SyntheticVideosConfig, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Render ``cfg.n`` clips into ``cfg.output``; returns the summary (also ``summary.json``)."""
    started = time.perf_counter()
    output = cfg.output.rstrip("/")
    synthetic.face_model_for(SyntheticFacesConfig(num_id=cfg.num_id, num_exp=cfg.num_exp, face_model=cfg.face_model))
    chunks.preflight(output, cfg.executor, cfg.shared_storage)
    workers = worker_count(cfg.workers)
    run = chunks.run_chunks(output, video_chunks(cfg), render_video_item, executor=cfg.executor,
                            num_cpus=cfg.num_cpus_per_task, max_tasks=cfg.max_tasks, pool=_pool(workers),
                            overwrite=cfg.overwrite, existing=existing_video,
                            progress=(lambda m: progress(1)) if progress else None)
    if progress:
        progress(len(run.earlier))
    errors = chunks.error_entries(run.markers)
    chunks.write_errors_csv(output, errors)
    written = sum(r["status"] == "ok" for r in run.results)
    counts = {"videos": cfg.n, "written": written, "skipped_existing": len(run.earlier), **chunks.chunk_counts(run)}
    timings = chunks.chunk_timings(run, started)
    timings["render_s"] = timings["run_s"]
    files = sorted(chunks.below(output, f) for m in run.ok for f in m["files"] if f.endswith(".mp4"))
    extra = {  # the counts also at the top level, where this summary had them before ``counts`` existed
        "videos": cfg.n, "written": written, "skipped_existing": len(run.earlier), "files": files,
        "frames_per_video": cfg.frames, "executor": cfg.executor, "workers": workers if cfg.executor == "local" else None,
    }
    summary = write_summary(storage.join(output, SUMMARY_FILE), job="synth videos", counts=counts, errors=errors,
                            timings=timings, config=cfg.model_dump(mode="json"), extra=extra,
                            versions=versions("ray", "cv2", "torch"))
    chunks.fail_if_none_done(run, "clips", output)
    return summary
