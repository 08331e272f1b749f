"""Chunked jobs (``labelled convert``, ``synth faces``, ``synth videos``) on Ray Data or in one process.

The input is cut into chunks (``shard_size`` images of a labelled folder, ``rows_per_shard``
synthetic faces, one synthetic clip), each an item of :func:`facepgn.pipelines.runner.run_items`:
Ray tasks with fractional CPUs over the cluster (``executor: ray``), or a plain loop, or a process
pool, here (``executor: local``). A chunk's worker (:class:`ChunkWorker`) runs the job's per-chunk
library function (plain values in, the chunk's files written atomically: ``data/part-<chunk>.parquet``,
a clip), then the chunk's done marker ``items/<chunk>.json`` (status, its files, the inputs it left
out with their reasons, counts, timings). A chunk is defined by its item alone (inputs, seeds,
settings), so it gives the same bytes whichever executor or machine runs it.

Resume (:func:`run_chunks`): a chunk is done when its marker says ``ok``, was written for the same
chunk (``key``: a digest of the item, so a changed ``n``, file list or setting redoes the chunks
it changes) and every file it lists exists: a deleted shard is redone, and so is a chunk that
failed. Files of an output written before markers existed count as done (the job's ``existing``
describes them from the files, and a marker is written for them). Planning reads the markers in
bulk (:mod:`facepgn.markers`: one listing, the compacted ``items/_compacted.jsonl.gz``, rewritten
at the end of a run) and lists the output once: no request per chunk.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import resource
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from facepgn import markers, storage
from facepgn.errors import FacepgnError
from facepgn.pipelines import common

log = logging.getLogger("facepgn.chunks")

MARKERS_DIR = common.MARKERS_DIR
#: the reason recorded for a chunk whose worker returned nothing (Ray gave it up after its attempts)
LOST_REASON = "the worker processing it crashed or was killed (see the Ray logs); a rerun redoes it"


def preflight(output: str, executor: str, shared_storage: bool) -> None:
    """Before any work, one line each: an output that cannot be written, a local output on a
    multi-node Ray (unless ``shared_storage``: every node mounts it; this check connects to Ray)."""
    storage.check_writable(output)
    if executor == "ray":
        from facepgn.cluster import require_shared_storage

        require_shared_storage({"output": output}, shared_storage)


def chunk_key(item: dict) -> str:
    """A digest of a chunk's definition: every field of its item but ``key`` and ``files`` (where
    its files go is not what they hold: a folder moved to the earlier layout keeps its chunks)."""
    text = json.dumps({k: v for k, v in item.items() if k not in ("key", "files")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def relative(output: str, path: str) -> str:
    """``path`` below ``output``, ``/``-separated (markers name their files this way)."""
    if storage.is_remote(output):
        return str(path)[len(output.rstrip("/")) + 1:]
    root = os.path.abspath(storage.strip_file_scheme(output))
    return os.path.relpath(os.path.abspath(storage.strip_file_scheme(str(path))), root).replace(os.sep, "/")


def below(output: str, name: str) -> str:
    """The path of ``name`` (``/``-separated, relative) below ``output``."""
    return storage.join(output, *name.split("/"))


def marker_path(output: str, item_id: str) -> str:
    return storage.join(output, MARKERS_DIR, f"{item_id}.json")


class ChunkWorker:
    """One chunk: ``work(item, output)`` writes the chunk's files and returns its stats (with
    ``written``: the files, as paths), then this writes the chunk's marker and returns it. Never
    raises for a failing chunk (status ``skipped`` and the one-line reason instead). Plain Python:
    Ray tasks, the local loop and process pools call it alike."""

    def __init__(self, output: str, work: Callable[[dict, str], dict]):
        self.output = output
        self.work = work

    def __call__(self, item: dict) -> dict:
        start, cpu_start = time.perf_counter(), time.process_time()
        marker: dict[str, Any] = {"item_id": item["item_id"], "path": item["path"], "key": item["key"],
                                  "status": "ok", "reason": "", "files": []}
        try:
            for name in item["files"]:  # a stale file of another definition of this chunk (none it writes stays)
                storage.remove(below(self.output, name))
            stats = dict(self.work(item, self.output))
            files = [relative(self.output, f) for f in stats.pop("written", [])]
            marker.update({k: v for k, v in stats.items() if k not in marker})
            marker["files"] = files
        except Exception as exc:  # noqa: BLE001 - bad input, or a bug / library error: record it, go on
            marker["status"], marker["reason"] = "skipped", common.failure_reason(exc, item["path"], log)
        marker["seconds"] = round(time.perf_counter() - start, 4)
        marker["cpu_seconds"] = round(time.process_time() - cpu_start, 4)
        marker["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
        text = common.json_text(marker)
        storage.atomic_write_text(marker_path(self.output, item["item_id"]), text)
        return json.loads(text)  # JSON types, as the Ray path returns them


@dataclass
class ChunkRun:
    """What :func:`run_chunks` did: the chunks (items), the markers of every chunk done or tried
    (in item order, this run's included), this run's markers, how many were done before."""

    items: list[dict]
    markers: list[dict]
    results: list[dict]
    already_done: int
    run_seconds: float

    @property
    def earlier(self) -> list[dict]:
        """The markers of the chunks done before this run."""
        ran = {r["item_id"] for r in self.results}
        return [m for m in self.markers if m["item_id"] not in ran]

    @property
    def ok(self) -> list[dict]:
        return [m for m in self.markers if m["status"] == "ok"]


def run_chunks(output: str, items: Sequence[dict], work: Callable[[dict, str], dict], *, executor: str = "local",
               num_cpus: float = 0.5, max_tasks: int | None = None, pool: Callable[[int], Executor] | None = None,
               overwrite: bool = False, existing: Callable[[dict, str], dict] | None = None,
               progress: Callable[[dict], None] | None = None) -> ChunkRun:
    """Run ``work`` (a picklable module-level function) on every chunk of ``items`` not done yet.

    ``items``: dicts of JSON values with ``item_id``, ``path`` (what the chunk covers, for error
    lines), ``files`` (what it writes, relative to ``output``) and the job's own fields.
    ``executor``: ``ray`` (tasks of ``num_cpus`` CPUs, at most ``max_tasks`` at once) or ``local``
    (a loop here; ``pool(tasks)``: a process pool instead). ``existing(item, output)``: the stats
    of a chunk whose files exist without a marker. ``progress(marker)`` as each chunk finishes."""
    output = output.rstrip("/")
    items = [dict(it, key=chunk_key(it)) for it in items]
    markers_dir = storage.join(output, MARKERS_DIR)
    loaded = markers.load_markers(markers_dir, "item_id")
    done = {} if overwrite else _done_chunks(output, items, loaded.by_id, existing)
    pending = [it for it in items if it["item_id"] not in done]
    log.info("%d chunks, %d already done, %d to run (%s) -> %s", len(items), len(done), len(pending), executor, output)
    if executor == "ray" and pending:
        _start_ray()  # before the clock: run_s and the rates are the chunks' time, not Ray's start
    started = time.perf_counter()
    results: list[dict] = []
    for marker in _execute(pending, functools.partial(ChunkWorker, output, work), executor, num_cpus, max_tasks, pool):
        results.append(marker)
        done[marker["item_id"]] = marker
        if progress:
            progress(marker)
    returned = {r["item_id"] for r in results}
    for item in pending:  # a worker that died on it (an OOM kill, a crash) returned nothing
        if item["item_id"] not in returned:
            marker = {"item_id": item["item_id"], "path": item["path"], "key": item["key"], "status": "skipped",
                      "reason": LOST_REASON, "files": []}
            storage.atomic_write_text(marker_path(output, item["item_id"]), common.json_text(marker))
            results.append(marker)
            done[item["item_id"]] = marker
            log.warning("%s: %s", item["path"], LOST_REASON)
    if results or set(done) - set(loaded.by_id) or not loaded.compacted_is_current:  # every marker in one file: one GET next time
        markers.compact_markers(markers_dir, {**loaded.by_id, **done})
    found = [done[it["item_id"]] for it in items if it["item_id"] in done]
    return ChunkRun(items, found, results, len(items) - len(pending), time.perf_counter() - started)


def _start_ray() -> None:
    from facepgn.cluster import connect

    connect()


def _done_chunks(output: str, items: list[dict], found: dict[str, dict],
                 existing: Callable[[dict, str], dict] | None) -> dict[str, dict]:
    """The chunks that are done (``found``: the markers, by item id; marker ``ok`` for this chunk,
    its files there), by item id; files without a marker (an output of before markers) get one
    from ``existing``. One listing of the output, no read per chunk."""
    present = {relative(output, f) for f in storage.list_files(output)}
    done = {}
    for item in items:
        marker = found.get(item["item_id"])
        there = bool(item["files"]) and all(f in present for f in item["files"])
        if marker is not None:
            if marker.get("status") != "ok" or marker.get("key") != item["key"]:
                continue
            if all(f in present for f in marker.get("files", [])):
                done[item["item_id"]] = marker
            elif there:  # its files were moved where this run writes them (the earlier layout)
                marker = {**marker, "files": list(item["files"])}
                storage.atomic_write_text(marker_path(output, item["item_id"]), common.json_text(marker))
                done[item["item_id"]] = marker
        elif existing is not None and there:
            stats = existing(item, output)
            marker = {"item_id": item["item_id"], "path": item["path"], "key": item["key"], "status": "ok", "reason": "",
                      **stats, "files": list(item["files"]), "existing": True}
            text = common.json_text(marker)
            storage.atomic_write_text(marker_path(output, item["item_id"]), text)
            done[item["item_id"]] = json.loads(text)
    return done


def _execute(pending: list[dict], make_worker: Callable[[], ChunkWorker], executor: str, num_cpus: float,
             max_tasks: int | None, pool: Callable[[int], Executor] | None) -> Iterator[dict]:
    if executor == "local" and pool is not None and len(pending) > 1:
        worker = make_worker()
        with pool(len(pending)) as processes:
            yield from processes.map(worker, pending)
        return
    yield from common.run_items(pending, make_worker, executor=executor, num_cpus=num_cpus, max_actors=max_tasks)


# ---- what every chunked job's summary has --------------------------------------------------------


def error_entries(markers: Sequence[dict]) -> list[dict[str, str]]:
    """Every chunk that failed and every input a chunk left out: item_id (the chunk), path, status, reason."""
    out = []
    for m in markers:
        if m["status"] != "ok":
            out.append({"item_id": m["item_id"], "path": m["path"], "status": m["status"], "reason": m["reason"]})
        for e in m.get("errors", []):
            out.append({"item_id": m["item_id"], "path": e["path"], "status": "skipped", "reason": e["reason"]})
    return out


def write_errors_csv(output: str, errors: Sequence[dict]) -> None:
    """``errors.csv`` beside the data: item_id, path, status, reason of every entry of :func:`error_entries`."""
    storage.atomic_write_text(storage.join(output, "errors.csv"), common.errors_csv(errors, "item_id"))


def chunk_counts(run: ChunkRun) -> dict[str, int]:
    return {
        "chunks": len(run.items),
        "chunks_already_done": run.already_done,
        "chunks_processed_this_run": len(run.results),
        "chunks_failed": sum(m["status"] != "ok" for m in run.markers),
    }


def chunk_timings(run: ChunkRun, started: float) -> dict[str, Any]:
    """``wall_s`` (the job, since ``started``: ``time.perf_counter()``), ``run_s`` (the chunks),
    ``chunk_s`` and ``cpu_s`` summed over this run's chunks, their workers' peak memory."""
    return {
        "wall_s": round(time.perf_counter() - started, 3),
        "run_s": round(run.run_seconds, 3),
        "chunk_s": round(sum(r.get("seconds", 0.0) for r in run.results), 3),
        "cpu_s": round(sum(r.get("cpu_seconds", 0.0) for r in run.results), 3),
        "max_worker_rss_mb": max((r["peak_rss_mb"] for r in run.results if "peak_rss_mb" in r), default=None),
    }


def fail_if_none_done(run: ChunkRun, what: str, output: str) -> None:
    """The one-line error when chunks were run and every one of them failed (summary.json and
    errors.csv are written first)."""
    failed = [m for m in run.markers if m["status"] != "ok"]
    if run.markers and len(failed) == len(run.markers):
        first = failed[0]
        raise FacepgnError(f"{output}: none of the {len(run.items)} {what} could be made (e.g. {first['path']}: "
                           f"{first['reason']}); see {storage.join(output, 'errors.csv')}")
