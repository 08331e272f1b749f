"""Done markers in bulk: what a job's planning reads to know which items are finished.

Every per-item job writes one small JSON marker per finished item, ``<folder>/<item_id>.json``
(preprocess ``videos/``, label and profile ``items/``, infer ``done/``), after the item's data.
Reading them one GET at a time costs hours for 100,000 items on S3, so planning never does:

* :func:`list_markers`: the done ids (from the key names) and a version stamp per marker, from one
  paginated listing of the folder (1,000 keys per request on S3).
* :func:`load_markers`: the marker bodies (the summaries need them), from the folder's compacted
  file ``_compacted.jsonl.gz`` (one GET) plus the markers that are newer than it or missing from
  it (read concurrently, in one batch).
* :func:`compact_markers`: at the end of a run, writes that file (atomically): one JSON line per
  marker, ``{"id", "stamp", "marker"}``. A marker rewritten later (retry, overwrite) has another
  stamp, so it is read again; a removed one is not listed, so it is dropped. The file is only a
  cache: missing, stale or unreadable, planning reads the markers themselves and gets the same
  answer, so an interrupted run loses nothing and the next run resumes.

The stamp is what the listing says about the object: its size and ETag on S3 (a digest of the
content), its size and modification time on local disks.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from typing import Any, Mapping

from facepgn import storage

COMPACTED_FILE = "_compacted.jsonl.gz"
MARKER_SUFFIX = ".json"


def _stamp(entry: Mapping[str, Any]) -> str:
    tag = entry.get("ETag") or entry.get("etag") or entry.get("mtime") or entry.get("LastModified") or ""
    return f"{entry.get('size')}:{tag}"


def list_markers(folder: str) -> dict[str, str]:
    """Item id -> version stamp of every done marker (``<id>.json``) in ``folder``, from one
    (paginated) listing; empty when the folder does not exist."""
    fs, path = storage.get_fs(folder)
    fs.invalidate_cache(path)  # listings are cached per process: other processes may have written since
    try:
        with storage.faults(folder):  # a folder that cannot be listed: one line (StorageError)
            entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return {}
    found = {}
    for entry in entries:
        name = storage.basename(entry["name"])
        if entry.get("type") != "file" or not name.endswith(MARKER_SUFFIX) or name.startswith(".") or ".tmp-" in name:
            continue
        found[name[: -len(MARKER_SUFFIX)]] = _stamp(entry)
    return dict(sorted(found.items()))


@dataclass
class Markers:
    """The done markers of one folder: bodies by item id, and how they were read (``from_compacted``
    bodies came from the compacted file, ``read_one_by_one`` from the markers themselves)."""

    folder: str
    by_id: dict[str, dict]
    from_compacted: int = 0
    read_one_by_one: int = 0

    @property
    def compacted_is_current(self) -> bool:
        """The compacted file held every marker as it is now (writing it again would change nothing)."""
        return self.read_one_by_one == 0


def _read_compacted(folder: str) -> dict[str, tuple[str, dict]]:
    """Item id -> (stamp, body) from the compacted file; empty if there is none or it is unreadable."""
    try:
        text = gzip.decompress(storage.read_bytes(storage.join(folder, COMPACTED_FILE))).decode("utf-8")
    except (OSError, EOFError, ValueError):
        return {}
    found = {}
    for line in text.splitlines():
        try:
            row = json.loads(line)
            found[str(row["id"])] = (str(row["stamp"]), dict(row["marker"]))
        except (ValueError, KeyError, TypeError):
            continue
    return found


def _read_bodies(folder: str, ids: list[str], key: str) -> dict[str, dict]:
    """The markers of ``ids``, fetched concurrently (s3fs batches ``cat`` of many paths); unreadable
    ones, and ones without ``key``, are left out (their items are simply redone)."""
    if not ids:
        return {}
    fs, root = storage.get_fs(folder)
    paths = {storage.join(root, f"{item_id}{MARKER_SUFFIX}"): item_id for item_id in ids}
    fetched = fs.cat(list(paths), on_error="return")
    found = {}
    for path, data in fetched.items():
        if isinstance(data, BaseException):
            continue
        try:
            body = json.loads(data)
            if isinstance(body, dict) and key in body:
                found[paths[path]] = body
        except (ValueError, TypeError):
            continue
    return found


def load_markers(folder: str, key: str) -> Markers:
    """Every done marker in ``folder`` (bodies by item id, in id order; only those with a ``key``
    field): one listing, one GET of the compacted file, and a batched read of the markers it
    does not hold as they are now."""
    listed = list_markers(folder)
    compacted = _read_compacted(folder) if listed else {}
    by_id: dict[str, dict] = {}
    stale = []
    for item_id, stamp in listed.items():
        cached = compacted.get(item_id)
        if cached is not None and cached[0] == stamp and key in cached[1]:
            by_id[item_id] = cached[1]
        else:
            stale.append(item_id)
    by_id.update(_read_bodies(folder, stale, key))
    return Markers(folder, dict(sorted(by_id.items())), from_compacted=len(listed) - len(stale), read_one_by_one=len(stale))


def _json_default(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


def compact_markers(folder: str, bodies: Mapping[str, Mapping[str, Any]]) -> int:
    """Write ``folder``'s compacted file: every listed marker whose body is in ``bodies`` (what this
    run read and wrote), stamped as listed now. Returns the number of markers it holds. Call it
    after the run's markers are written; a marker not in ``bodies`` is left out (read on its own
    next time)."""
    listed = list_markers(folder)
    lines = [json.dumps({"id": item_id, "stamp": stamp, "marker": bodies[item_id]}, default=_json_default)
             for item_id, stamp in listed.items() if item_id in bodies]
    if not listed:
        return 0
    storage.atomic_write_bytes(storage.join(folder, COMPACTED_FILE), gzip.compress("\n".join(lines).encode("utf-8"), 6))
    return len(lines)
