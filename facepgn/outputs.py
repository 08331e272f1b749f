"""What ``facepgn infer`` writes, and how to read it back: the output layout, the mesh selection,
the row tables (``records.FACE_TRACK_SCHEMA``, kind ``inference_row``).

Layout (a folder or an ``s3://`` prefix); ``<video_id>`` is the item id of a video or photo::

    rows/<video_id>.parquet      one row per face per sampled frame; photos: per face
    overlays/<video_id>.mp4      --overlay: the sampled frames with the mesh or landmarks drawn
    overlays/<video_id>.jpg|png  --overlay, a photo: the photo (at most photo_max_side) drawn on
    meshes/<video_id>/f<frame>_t<track>.obj|.ply   --meshes every:N | frames:a,b
    done/<video_id>.json         per-item marker + stats (written last)
    errors/<video_id>.json       why an item failed (removed once it succeeds)
    summary.json                 counts, errors, timings, versions, resolved config

``rows/`` alone holds Parquet: ``pandas.read_parquet(OUT + "/rows")`` loads every row.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from facepgn import markers, records, storage
from facepgn.errors import FacepgnError


@dataclass(frozen=True)
class OutputLayout:
    root: str

    def rows(self, video_id: str) -> str:
        return storage.join(self.root, "rows", f"{video_id}.parquet")

    def overlay(self, video_id: str) -> str:
        return storage.join(self.root, "overlays", f"{video_id}.mp4")

    def overlay_image(self, item_id: str, source_path: str) -> str:
        """A photo's overlay: PNG for a PNG photo, else JPEG."""
        ext = ".png" if str(source_path).lower().endswith(".png") else ".jpg"
        return storage.join(self.root, "overlays", f"{item_id}{ext}")

    def mesh(self, video_id: str, frame: int, track: int, fmt: str) -> str:
        return storage.join(self.root, "meshes", video_id, f"f{frame:06d}_t{track}.{fmt}")

    def done(self, video_id: str) -> str:
        return storage.join(self.root, "done", f"{video_id}.json")

    def error(self, video_id: str) -> str:
        return storage.join(self.root, "errors", f"{video_id}.json")

    @property
    def summary(self) -> str:
        return storage.join(self.root, "summary.json")

    def done_ids(self) -> set[str]:
        """The ids of the items with a done marker: one (paginated) listing of ``done/``, no marker read."""
        return set(markers.list_markers(storage.join(self.root, "done")))


def parse_mesh_selection(spec: str | None) -> tuple[str, Any] | None:
    """``"every:30"`` -> ("every", 30); ``"frames:0,10"`` -> ("frames", {0, 10}); None -> None."""
    if not spec:
        return None
    kind, _, arg = str(spec).partition(":")
    try:
        if kind == "every" and int(arg) > 0:
            return "every", int(arg)
        if kind == "frames":
            return "frames", {int(v) for v in arg.split(",") if v.strip()}
    except ValueError:
        pass
    raise FacepgnError(f"meshes {spec!r}: expected every:N (N > 0) or frames:A,B,...")


def mesh_selected(selection: tuple[str, Any] | None, frame_index: int) -> bool:
    if selection is None:
        return False
    kind, arg = selection
    return frame_index % arg == 0 if kind == "every" else frame_index in arg


def rows_table(rows: dict[str, np.ndarray]):
    """Column arrays -> a validated ``inference_row`` table."""
    import pyarrow as pa

    n = len(rows["frame_index"])
    columns = {}
    for field in records.FACE_TRACK_SCHEMA:
        if field.name == "schema_version":
            columns[field.name] = pa.array(np.full(n, records.INFERENCE_ROW_VERSION, np.int32))
            continue
        value = rows[field.name]
        if pa.types.is_list(field.type):
            flat = np.asarray(value, np.float32).reshape(n, -1)
            width = flat.shape[1]
            offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32)) if n else pa.array([0], pa.int32())
            columns[field.name] = pa.ListArray.from_arrays(offsets, pa.array(flat.reshape(-1), pa.float32()))
        else:
            columns[field.name] = pa.array(list(value) if np.asarray(value).dtype == object else np.asarray(value), type=field.type)
    table = pa.Table.from_pydict(columns, schema=records.FACE_TRACK_SCHEMA)
    records.check_table(table, "inference_row")
    return table


def write_parquet(table, path: str) -> None:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.atomic_write_bytes(path, buf.getvalue())


def read_rows(output: str, video_id: str | None = None):
    """The inference rows of a run (one video or all) as a pyarrow table, schema-checked."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    layout = OutputLayout(output)
    if video_id is not None:
        paths = [layout.rows(video_id)]
    else:
        paths = storage.list_files(storage.join(output, "rows"), extensions=[".parquet"], recursive=False)
    tables = []
    for p in paths:
        table = pq.read_table(io.BytesIO(storage.read_bytes(p)))
        records.check_table(table, "inference_row", p)
        tables.append(table)
    return pa.concat_tables(tables) if tables else records.FACE_TRACK_SCHEMA.empty_table()
