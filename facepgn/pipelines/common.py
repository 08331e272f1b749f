"""What the per-item Ray Data jobs share (``preprocess``, ``label``, ``profile``).

* Done markers: one small JSON file per finished input item (:func:`read_markers`); a rerun skips
  the items that have one. They are read in bulk (:mod:`facepgn.markers`: one listing plus the
  folder's compacted file, which :func:`run_item_job` rewrites at the end of a run). ``errors.csv`` (:func:`errors_csv`) lists the items not fully read.
* :func:`failure_reason`: the one-line reason recorded for an item that failed.
* :class:`StageClock`: wall and CPU seconds per stage of one item; :func:`stage_throughput` turns
  summed stage CPU seconds into faces per second per core for ``summary.json``.
* :func:`yaw_histogram`: 10-degree bins of |yaw| for ``summary.json``.
* :func:`run_items`, :func:`ray_data_context`, :class:`AttemptCounter` and the rest of the item
  runner live in :mod:`facepgn.pipelines.runner` (Ray Data tasks, one item per call, bounded
  retries of items whose worker dies) and are importable from here as before.
* :func:`contact_sheet_png`: a sample of face records drawn with their 68 landmarks.
* One-shard-per-item jobs (``label``, ``profile``): :func:`process_item` (an item's worker: its
  shard, then its done marker), :func:`run_item_job` (the driver: resume, Ray tasks, items
  whose worker died, contact sheet, errors.csv), :func:`item_summary` and :func:`finish_item_job`
  (summary.json, in :mod:`facepgn.summary`'s shape; the one-line error when no item could be
  read). Their output layout::

      data/part-<item_id>.parquet   the item's face records (the only Parquet files)
      items/<item_id>.json          the item's done marker (its ItemResult)
      items/_compacted.jsonl.gz     every marker in one file (facepgn.markers; a cache, rewritten per run)
      summary.json, errors.csv, contact_sheet.png
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import resource
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from facepgn import markers, storage
from facepgn.cluster import require_shared_storage
from facepgn.errors import FacepgnError, InputError

# The item runner lives in facepgn.pipelines.runner; its names stay importable from here.
from facepgn.pipelines.runner import (  # noqa: F401 - re-exported: the item runner moved there
    MAX_ATTEMPTS,
    AttemptCounter,
    GivenUpError,
    actor_pool_size,
    attempt_allowed,
    attempt_counter,
    cached_worker,
    progress_bars_wanted,
    quiet_progress_notice,
    ray_data_context,
    run_item_batch,
    run_items,
    worker_pool_size,
)
from facepgn.summary import SUMMARY_FILE, versions, write_summary

YAW_BIN_DEG = 10


# ---- done markers, errors.csv ------------------------------------------------------------------


def read_markers(folder: str, key: str) -> dict[str, dict]:
    """The done markers (``*.json``) in ``folder`` by item id (their ``key`` field's value), read in
    bulk (:func:`facepgn.markers.load_markers`: one listing and the compacted file); unreadable ones
    are left out (their items are simply redone)."""
    return markers.load_markers(folder, key).by_id


def errors_csv(markers: Iterable[Mapping[str, Any]], key: str) -> str:
    """``<key>, path, status, reason`` for every marker whose status is not ``ok`` (in the given order)."""
    sink = io.StringIO()
    writer = csv.writer(sink)
    writer.writerow([key, "path", "status", "reason"])
    for m in markers:
        if m and m["status"] != "ok":
            writer.writerow([m[key], m["path"], m["status"], m["reason"]])
    return sink.getvalue()


def failure_reason(exc: BaseException, path: str, log: logging.Logger) -> str:
    """One line for an item that failed: the cause of an :class:`InputError` (bad input), else
    ``unexpected error: ...`` (a bug or a library failure; its traceback goes to ``log``)."""
    if isinstance(exc, InputError):
        return " ".join(str(exc.cause).split())
    last = " ".join(traceback.format_exception_only(type(exc), exc)[-1].split())
    log.error("%s: unexpected error", path, exc_info=exc)
    return f"unexpected error: {last[:300]}"


def json_text(data: Any) -> str:
    """Done markers: indented JSON (numpy scalars and arrays as numbers and lists)."""
    return json.dumps(data, indent=1, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))


def parquet_bytes(table) -> bytes:
    """A pyarrow table as zstd-compressed Parquet file bytes (written with ``storage.atomic_write_bytes``)."""
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


# ---- summary pieces ----------------------------------------------------------------------------


def yaw_histogram(yaws_deg: Iterable[float]) -> list[int]:
    """Counts of |yaw| in 10-degree bins [0, 10), [10, 20), ..., [80, 90] (90 and beyond in the last)."""
    counts = [0] * (90 // YAW_BIN_DEG)
    for yaw in yaws_deg:
        if yaw is None or not math.isfinite(yaw):
            continue
        counts[min(len(counts) - 1, int(abs(yaw) // YAW_BIN_DEG))] += 1
    return counts


def yaw_histogram_labels(counts: Sequence[int]) -> dict[str, int]:
    """``{"0-10": n, ..., "80-90": n}`` for summary.json."""
    return {f"{i * YAW_BIN_DEG}-{(i + 1) * YAW_BIN_DEG}": int(c) for i, c in enumerate(counts)}


def record_yaw_deg(record: Mapping[str, Any]) -> float | None:
    """|yaw| in degrees from a face record's ``pose`` (pitch, yaw, roll radians); None without one."""
    pose = record.get("pose")
    if pose is None:
        return None
    pose = np.asarray(pose, dtype=np.float64).reshape(-1)
    return float(abs(np.degrees(pose[1]))) if pose.size >= 2 and np.isfinite(pose[1]) else None


def add_counts(total: dict, part: Mapping[str, float]) -> dict:
    """``total[k] += part[k]`` for every key (the dict is returned for chaining)."""
    for k, v in part.items():
        total[k] = total.get(k, 0) + v
    return total


class StageClock:
    """Wall and CPU seconds per stage of one item: ``with clock("detect"): ...``.

    CPU seconds are the process's (every thread), so faces / CPU seconds is faces per second per
    core whatever else shares the machine."""

    def __init__(self):
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, stage: str):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[stage] += time.perf_counter() - t0
            self.cpu[stage] += time.process_time() - c0

    def rounded(self) -> tuple[dict[str, float], dict[str, float]]:
        return {k: round(v, 4) for k, v in self.wall.items()}, {k: round(v, 4) for k, v in self.cpu.items()}


def stage_throughput(count: float, wall_s: Mapping[str, float], cpu_s: Mapping[str, float], stages: Iterable[str],
                     inner_s: Mapping[str, float] | None = None, prefix: str = "") -> dict[str, dict]:
    """Per stage: summed wall and CPU seconds and ``count`` per CPU second (per core). ``inner_s``:
    a per-item function's own stage seconds (wall, in one-thread workers), reported as
    ``<prefix>.<name>`` with ``count`` per second of them."""
    out = {}
    for stage in stages:
        cpu, wall = float(cpu_s.get(stage, 0.0)), float(wall_s.get(stage, 0.0))
        out[stage] = {
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "per_s_per_core": round(count / cpu, 2) if cpu > 0 and count else None,
        }
    for name, seconds in sorted((inner_s or {}).items()):
        out[f"{prefix}.{name}"] = {"wall_s": round(seconds, 3), "per_s_per_core": round(count / seconds, 2) if seconds > 0 and count else None}
    return out


@dataclass
class Totals:
    """Sums over the done markers of the items read (``reasons``: a marker's dict of counts by
    reason; ``yaw_histogram``) and over this run's results (wall, CPU and the inner seconds)."""

    read: list[dict]
    reasons: dict[str, int]
    yaw_histogram: list[int]
    wall_s: dict[str, float]
    cpu_s: dict[str, float]
    inner_s: dict[str, float]


def totals(done: Sequence[dict], results: Sequence[dict], reasons_key: str, inner_key: str) -> Totals:
    read = [m for m in done if m["status"] in ("ok", "partial")]
    reasons: dict[str, int] = {}
    yaw = [0] * (90 // YAW_BIN_DEG)
    for m in read:
        add_counts(reasons, m[reasons_key])
        yaw = [a + b for a, b in zip(yaw, m["yaw_histogram"])]
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    inner: dict[str, float] = {}
    for r in results:
        add_counts(wall, r["stage_s"])
        add_counts(cpu, r["stage_cpu_s"])
        add_counts(inner, r[inner_key])
    return Totals(read, dict(sorted(reasons.items())), yaw, wall, cpu, inner)


# ---- contact sheet -------------------------------------------------------------------------------


def contact_sheet_png(shards: Sequence[str], limit: int = 48, columns: int = 8) -> bytes | None:
    """PNG bytes of up to ``limit`` face records (their crops with the 68 ``landmarks_2d`` drawn;
    hidden points red where ``landmarks_visible`` says so), sampled evenly over ``shards`` (local or
    ``s3://`` Parquet files) and over the rows of each. None when there is nothing to show."""
    import cv2
    import pyarrow.parquet as pq

    from facepgn import records, render

    if limit <= 0 or not shards:
        return None
    picked = [shards[int(i)] for i in np.unique(np.linspace(0, len(shards) - 1, min(limit, len(shards))).round())]
    per_shard = max(1, math.ceil(limit / len(picked)))
    tiles: list[np.ndarray] = []
    for path in picked:
        table = pq.read_table(io.BytesIO(storage.read_bytes(path)), columns=["image", "landmarks_2d", "landmarks_visible"])
        if table.num_rows == 0:
            continue
        rows = np.unique(np.linspace(0, table.num_rows - 1, min(per_shard, table.num_rows)).round()).astype(int)
        for row in table.take(rows).to_pylist():
            crop = records.decode_image(row["image"])
            tile = render.draw_landmarks(crop, np.asarray(row["landmarks_2d"], np.float32).reshape(-1, 2), visible=row["landmarks_visible"])
            if tiles and tile.shape != tiles[0].shape:
                tile = cv2.resize(tile, tiles[0].shape[1::-1], interpolation=cv2.INTER_AREA)
            tiles.append(tile)
    if not tiles:
        return None
    return records.encode_image(render.contact_sheet(tiles[:limit], columns=columns), ".png")


# ---- one-shard-per-item jobs ---------------------------------------------------------------------

DATA_DIR = "data"
MARKERS_DIR = "items"
LOST_REASON = "the worker processing it crashed or was killed (see the Ray logs); retry with retry_failed=true"


def stable_seed(*parts: Any) -> int:
    """A 64-bit seed from the parts' text (``"a/b/c"``): the same on every machine and rerun."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def shard_path(output: str, item_id: str) -> str:
    return storage.join(output, DATA_DIR, f"part-{item_id}.parquet")


def marker_path(output: str, item_id: str) -> str:
    return storage.join(output, MARKERS_DIR, f"{item_id}.json")


@dataclass
class ItemResult:
    """An item's done marker in a one-shard-per-item job; each job adds its own counts."""

    item_id: str
    path: str
    status: str = "ok"  # ok | partial (read only in part) | skipped (reason says why)
    reason: str = ""
    shard: str = ""  # the item's shard, relative to the output ("" if it wrote none)
    stage_s: dict[str, float] = field(default_factory=dict)  # wall seconds per stage
    stage_cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds per stage
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of the process while it worked on this item
    peak_rss_mb: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def process_item(output: str, result: ItemResult, work: Callable[[StageClock], list[dict]], log: logging.Logger) -> dict:
    """Run ``work(clock) -> face-record rows`` for one item and write its shard (if any rows), then
    its done marker; never raises for a failing item (status ``skipped`` and the reason instead).
    A stale shard of an interrupted run is removed first."""
    from facepgn import records

    clock = StageClock()
    start, cpu_start = time.perf_counter(), time.process_time()
    path = shard_path(output, result.item_id)
    try:
        storage.remove(path)
        rows = work(clock)
        if rows:
            with clock("write"):
                storage.atomic_write_bytes(path, parquet_bytes(records.to_table(rows, "face_record")))
            result.shard = f"{DATA_DIR}/part-{result.item_id}.parquet"
    except Exception as exc:  # noqa: BLE001 - bad input, or a bug / library error: record it, go on
        result.status, result.reason, result.shard = "skipped", failure_reason(exc, result.path, log), ""
    result.stage_s, result.stage_cpu_s = clock.rounded()
    result.seconds = round(time.perf_counter() - start, 4)
    result.cpu_seconds = round(time.process_time() - cpu_start, 4)
    result.peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    out = result.to_dict()
    storage.atomic_write_text(marker_path(output, result.item_id), json_text(out))
    return out


@dataclass
class ItemRun:
    """What :func:`run_item_job` did: the items listed, the done markers of those that are done
    (in item order, this run's included), this run's results."""

    items: list[dict]
    done: list[dict]
    results: list[dict]
    already_done: int
    run_seconds: float
    started: float  # time.perf_counter() when the job started
    contact_sheet: bool


def run_item_job(cfg, items: list[dict], make_worker: Callable[[], Callable[[dict], dict]], *,
                 lost: Callable[[dict], ItemResult], note: Callable[[dict], str], log: logging.Logger,
                 progress: bool = True, started: float | None = None) -> ItemRun:
    """The driver of a one-shard-per-item job over ``items`` (dicts with ``item_id`` and ``path``).

    ``cfg`` has ``output``, ``overwrite``, ``retry_failed``, ``max_items``, ``executor``,
    ``num_cpus_per_actor``, ``max_actors``, ``contact_sheet`` and ``shared_storage`` (a local
    output on a multi-node Ray is refused without it: :func:`facepgn.cluster.require_shared_storage`). Items with a done marker are
    skipped (skipped ones too unless ``retry_failed``; all redone with ``overwrite``); the rest run
    through :func:`run_items`, logging ``note(result)`` per finished item. An item whose worker died
    gets ``lost(item)`` as its marker. Writes contact_sheet.png (a sample of the records of every
    done item) and errors.csv."""
    started = time.perf_counter() if started is None else started
    output = cfg.output
    if cfg.executor == "ray":  # a local output on a multi-node cluster: refused before any work
        require_shared_storage({"output": output}, cfg.shared_storage)
    storage.check_writable(output)  # an output that cannot be written: one line before any work
    ids = [it["item_id"] for it in items]
    markers_dir = storage.join(output, MARKERS_DIR)
    loaded = markers.Markers(markers_dir, {}) if cfg.overwrite else markers.load_markers(markers_dir, "item_id")
    wanted = set(ids)
    found = {k: v for k, v in loaded.by_id.items() if k in wanted}
    pending = [it for it in items if it["item_id"] not in found or (cfg.retry_failed and found[it["item_id"]]["status"] == "skipped")]
    already_done = len(items) - len(pending)
    if cfg.max_items is not None:
        pending = pending[: max(0, cfg.max_items)]
    log.info("%d items found, %d already done, %d to process -> %s", len(items), already_done, len(pending), output)
    run_started = time.perf_counter()
    results: list[dict] = []
    for result in run_items(pending, make_worker, executor=cfg.executor, num_cpus=cfg.num_cpus_per_actor, max_actors=cfg.max_actors):
        results.append(result)
        found[result["item_id"]] = result
        if progress:
            shown = f"skipped: {result['reason']}" if result["status"] == "skipped" else note(result)
            log.info("[%d/%d] %s: %s (%.1fs)", len(results), len(pending), result["item_id"], shown, result["seconds"])
    returned = {r["item_id"] for r in results}
    for item in pending:  # a worker that died on it (a decoder crash, an OOM kill) returned nothing
        if item["item_id"] not in returned:
            marker = lost(item)
            marker.status, marker.reason = "skipped", LOST_REASON
            storage.remove(shard_path(output, item["item_id"]))
            storage.atomic_write_text(marker_path(output, item["item_id"]), json_text(marker.to_dict()))
            results.append(marker.to_dict())
            found[item["item_id"]] = marker.to_dict()
            log.warning("%s: %s", item["path"], LOST_REASON)
    run_seconds = time.perf_counter() - run_started
    done = [found[i] for i in ids if i in found]
    sheet = contact_sheet_png([storage.join(output, m["shard"]) for m in done if m["shard"]], cfg.contact_sheet)
    if sheet is not None:
        storage.atomic_write_bytes(storage.join(output, "contact_sheet.png"), sheet)
    storage.atomic_write_text(storage.join(output, "errors.csv"), errors_csv(done, "item_id"))
    if results or not loaded.compacted_is_current:
        markers.compact_markers(markers_dir, {**loaded.by_id, **found})
    return ItemRun(items, done, results, already_done, run_seconds, started, sheet is not None)


def item_summary(cfg, run: ItemRun) -> tuple[dict[str, int], list[dict[str, str]], dict[str, Any]]:
    """What the summary of every one-shard-per-item job has: counts (items of the whole output and
    of this run, shards), errors (every item not fully read: id, path, status, reason) and extras
    (input, output, the partial and the skipped items with their reasons)."""
    read = [m for m in run.done if m["status"] in ("ok", "partial")]
    skipped = [m for m in run.done if m["status"] == "skipped"]
    counts = {
        "items_found": len(run.items),
        "items_already_done": run.already_done,
        "items_processed_this_run": len(run.results),
        "items_pending": len(run.items) - len(run.done),
        "items_read": len(read),
        "items_partial_count": sum(m["status"] == "partial" for m in read),
        "items_skipped_count": len(skipped),
        "shards": int(sum(bool(m["shard"]) for m in read)),
    }
    errors = [{"item_id": m["item_id"], "path": m["path"], "status": m["status"], "reason": m["reason"]}
              for m in run.done if m["status"] != "ok"]
    extra = {
        "input": cfg.input,
        "output": cfg.output,
        "items_partial": [{"item_id": m["item_id"], "path": m["path"], "reason": m["reason"]} for m in read if m["status"] == "partial"],
        "items_skipped": [{"item_id": m["item_id"], "path": m["path"], "reason": m["reason"]} for m in skipped],
    }
    return counts, errors, extra


def finish_item_job(cfg, run: ItemRun, job: str, counts: dict[str, Any], errors: list[dict], extra: dict[str, Any],
                    what: str, *modules: str) -> dict[str, Any]:
    """Write summary.json (``counts``, ``errors`` and ``extra`` as from :func:`item_summary` plus
    the job's own, timings, the contact sheet, the versions of ray, OpenCV, pyarrow and
    ``modules``, the resolved config) and return it; raise the one-line error when not a single
    item could be read (``what`` names the items, e.g. ``"videos/photos"``). The counts are also
    kept at the top level, where these summaries had them before ``counts`` existed."""
    results = run.results
    timings = {
        "wall_s": round(time.perf_counter() - run.started, 3),
        "run_s": round(run.run_seconds, 3),
        "item_s": round(sum(r["seconds"] for r in results), 3),  # summed over items (wall, per worker)
        "cpu_s": round(sum(r["cpu_seconds"] for r in results), 3),  # CPU time spent on them
        "max_worker_rss_mb": max((r["peak_rss_mb"] for r in results), default=None),
    }
    extra = {**counts, **extra, "contact_sheet": "contact_sheet.png" if run.contact_sheet else None}
    summary = write_summary(storage.join(cfg.output, SUMMARY_FILE), job=job, counts=counts, errors=errors, timings=timings,
                            config=cfg.model_dump(mode="json"), extra=extra,
                            versions=versions("ray", "cv2", "pyarrow", *modules))
    if counts["items_read"] == 0 and counts["items_skipped_count"]:
        first = summary["items_skipped"][0]
        raise FacepgnError(
            f"{cfg.input}: none of the {len(run.items)} {what} could be read (e.g. {first['path']}: {first['reason']}); "
            f"see {storage.join(cfg.output, 'errors.csv')}"
        )
    return summary
