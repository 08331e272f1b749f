"""``facepgn labelled convert`` on Ray Data or in one process: a labelled folder (AFLW2000-3D,
300W-LP: ``<name>.jpg`` + ``<name>.mat``) -> face-record shards.

Graph: the sorted image list (:func:`facepgn.labelled.list_labelled_images`, ``limit``) cut into
chunks of ``shard_size`` images, each one item of :func:`facepgn.pipelines.chunks.run_chunks`: a
Ray task with ``num_cpus_per_task`` CPUs (``executor: ray``) or a loop here (``executor: local``),
running :func:`facepgn.labelled.convert_chunk` on it. With ``box: roi`` the driver plans the roi
crops once and gives each chunk its images' affines.

Output layout (a local folder or an ``s3://`` prefix)::

    data/part-NNNNN.parquet   chunk NNNNN's face records (the only Parquet files; none for a chunk of bad pairs only)
    items/NNNNN.json          its done marker: status, shard, the pairs it left out with their reasons, counts, timings
    summary.json              counts, every pair left out, timings, versions, config
    errors.csv                item_id (the chunk), path, status, reason of every pair left out
    contact_sheet.png         a sample of the records with their 68 landmarks drawn

A folder written before ``data/`` (shards at its top level) is resumed in place
(:func:`facepgn.labelled.data_dir`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np

from facepgn import labelled, records, storage
from facepgn.config import LabelledConfig
from facepgn.errors import InputError
from facepgn.pipelines import chunks, common
from facepgn.summary import SUMMARY_FILE, versions, write_summary

log = logging.getLogger("facepgn.labelled")

#: the settings a chunk's records depend on (part of each chunk's item, so changing one redoes it)
RECORD_SETTINGS = ("source", "image_size", "margin", "box")


def list_chunks(cfg: LabelledConfig, data: str, shard_dir: str) -> tuple[list[dict], int]:
    """The chunks of ``data`` (items of JSON values: the images, their roi affines or None, the
    record settings, the shard below the output) and the number of images."""
    images = labelled.list_labelled_images(data)
    if cfg.limit is not None:
        images = images[: max(0, cfg.limit)]
    roi = labelled.roi_crops(data, cfg.image_size, cfg.limit) if cfg.box == "roi" else None
    settings = {k: getattr(cfg, k) for k in RECORD_SETTINGS}
    items = []
    for index, first in enumerate(range(0, len(images), cfg.shard_size)):
        chunk = images[first:first + cfg.shard_size]
        crops = None
        if roi is not None:
            crops = [None if roi.get(p) is None else np.asarray(roi[p], np.float32).reshape(-1).tolist() for p in chunk]
        name = f"part-{index:05d}.parquet"
        items.append({"item_id": f"{index:05d}", "path": chunk[0], "images": chunk, "crops": crops,
                      "settings": settings, "files": [name if shard_dir == "." else f"{shard_dir}/{name}"]})
    return items, len(images)


def convert_item(item: dict, output: str) -> dict[str, Any]:
    """A chunk's worker function (:func:`facepgn.labelled.convert_chunk` on the item's fields)."""
    s = item["settings"]
    stats = labelled.convert_chunk(item["images"], chunks.below(output, item["files"][0]), source=s["source"],
                                   image_size=s["image_size"], margin=s["margin"], crops=item["crops"])
    return {**stats, "images": len(item["images"])}


def existing_chunk(item: dict, output: str) -> dict[str, Any]:
    """The stats of a shard written without a marker (its row count; the pairs it left out are unknown)."""
    import pyarrow.parquet as pq

    fs, path = storage.get_fs(chunks.below(output, item["files"][0]))
    with fs.open(path, "rb") as f:
        rows = pq.ParquetFile(f).metadata.num_rows
    return {"records": int(rows), "errors": [], "images": len(item["images"])}


def run_convert(cfg: LabelledConfig, data: str, out: str,
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Convert ``data`` into ``out``; returns the summary (also ``<out>/summary.json``).
    ``progress(images done, images)`` as chunks finish. Raises a one-line error when there is
    nothing to convert or not a single record could be made."""
    started = time.perf_counter()
    out = str(out).rstrip("/")
    chunks.preflight(out, cfg.executor, cfg.shared_storage)  # one line before any work: where it may write
    shard_dir = chunks.relative(out, labelled.data_dir(out)) or "."
    items, total = list_chunks(cfg, str(data), shard_dir)
    seen = [0]

    def on_chunk(marker: dict) -> None:
        seen[0] += marker.get("images", 0)
        shown = f"{marker.get('records', 0)} records" if marker["status"] == "ok" else f"failed: {marker['reason']}"
        log.info("labelled: chunk %s: %s (%.1fs)", marker["item_id"], shown, marker.get("seconds", 0.0))
        if progress:
            progress(seen[0], total)

    run = chunks.run_chunks(out, items, convert_item, executor=cfg.executor, num_cpus=cfg.num_cpus_per_task,
                            max_tasks=cfg.max_tasks, overwrite=cfg.overwrite, existing=existing_chunk, progress=on_chunk)
    shards = [chunks.below(out, f) for m in run.ok for f in m["files"]]
    sheet = common.contact_sheet_png(shards, cfg.contact_sheet)
    if sheet is not None:
        storage.atomic_write_bytes(storage.join(out, "contact_sheet.png"), sheet)
    errors = chunks.error_entries(run.markers)
    chunks.write_errors_csv(out, errors)
    summary = _write_summary(cfg, str(data), out, shard_dir, run, total, errors, started, sheet is not None)
    if summary["counts"]["records"] == 0:
        chunks.fail_if_none_done(run, "chunks", out)
        if errors:
            first = errors[0]
            raise InputError(str(data), f"none of the {total} images could be read (e.g. {first['path']}: "
                                                 f"{first['reason']}); see {storage.join(out, 'errors.csv')}")
    return summary


def _write_summary(cfg: LabelledConfig, data: str, out: str, shard_dir: str, run: chunks.ChunkRun, total: int,
                   errors: list[dict], started: float, sheet: bool) -> dict[str, Any]:
    """summary.json in :mod:`facepgn.summary`'s shape; the old top-level counts stay."""
    this_run = [r for r in run.results if r["status"] == "ok"]
    counts = {
        "images": total,
        "records": sum(m.get("records", 0) for m in run.ok),
        "records_written": sum(r.get("records", 0) for r in this_run),
        "shards_written": sum(bool(r["files"]) for r in this_run),
        "shards_skipped_existing": sum(bool(m["files"]) for m in run.earlier),
        "images_skipped": sum(len(m.get("errors", [])) for m in run.ok),
        **chunks.chunk_counts(run),
    }
    timings = chunks.chunk_timings(run, started)
    converted = sum(r.get("images", 0) for r in this_run)
    timings["images_per_s"] = round(converted / run.run_seconds, 2) if run.run_seconds > 0 and converted else None
    extra = {  # the counts also at the top level, where this summary had them before ``counts`` existed
        "images": total,
        "records_written": counts["records_written"],
        "shards_skipped_existing": counts["shards_skipped_existing"],
        "input": data,
        "output": out,
        "schema": f"face_record/{records.FACE_RECORD_VERSION}",
        "shards": sorted(storage.basename(f) for m in run.ok for f in m["files"]),
        "data": shard_dir,  # the shards' folder, relative to the output ("." for a folder of the earlier layout)
        "contact_sheet": "contact_sheet.png" if sheet else None,
    }
    return write_summary(storage.join(out, SUMMARY_FILE), job="labelled convert", counts=counts, errors=errors,
                         timings=timings, config=cfg.model_dump(mode="json"), extra=extra,
                         versions=versions("ray", "pyarrow", "scipy", "cv2"))
