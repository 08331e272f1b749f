"""The Parquet record schemas of facepgn, versioned, with encode/decode helpers.

* **Face records** (``FACE_RECORD_SCHEMA``): one labelled face crop (synthetic, AFLW2000-3D, 300W-LP).
* **Frame pairs** (``FRAME_PAIR_SCHEMA``): two crops of the same face track from an unlabelled video,
  with the optical flow from crop A to crop B.
* **Inference rows** (``FACE_TRACK_SCHEMA``, kind ``"inference_row"``): one face per sampled video
  frame as ``facepgn infer`` writes it, in original frame pixels.

Conventions (see ``facepgn.geometry``):
* Images are RGB ``uint8`` (H, W, 3) in memory and JPEG bytes on disk (PNG where lossless is asked).
* Crop coordinates are pixels of the square crop, x right, y down, z towards the camera; 3D landmark
  z is centred (mean over the 68 points is 0) and in the same pixel units as x and y.
* ``crop_to_frame`` is the 2x3 affine matrix (row-major, 6 floats) mapping crop pixels back to the
  source image/frame pixels: ``[x_f, y_f] = A @ [x_c, y_c, 1]``.
* ``flow`` is float16 (H, W, 2), little-endian, C order: the pixel (x, y) of crop A moves to
  (x + u, y + v) in crop B.
* Every row carries ``schema_version``; a reader refuses a version it does not know.
"""

from __future__ import annotations

from typing import Any, Mapping

import cv2
import numpy as np
import pyarrow as pa

from facepgn import crops
from facepgn.errors import FacepgnError

FACE_RECORD_VERSION = 2  # 2 added the nullable quality/provenance columns after source_path
FRAME_PAIR_VERSION = 1

NUM_LANDMARKS = 68

_f32 = pa.float32()
_list_f32 = pa.list_(pa.float32())

FACE_RECORD_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int32(), nullable=False),
        pa.field("record_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # synthetic | aflw2000-3d | 300w-lp | ...
        pa.field("subject_id", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),  # JPEG/PNG of the square crop, RGB
        pa.field("image_size", pa.int32(), nullable=False),  # crop side in pixels
        pa.field("landmarks_2d", _list_f32, nullable=False),  # 68*2, crop pixels
        pa.field("landmarks_3d", _list_f32),  # 68*3, crop pixels, z centred; null if 2D-only
        pa.field("landmarks_visible", pa.list_(pa.bool_())),  # 68; null if unknown
        pa.field("pose", _list_f32),  # pitch, yaw, roll in radians (AFLW2000-3D Pose_Para order)
        pa.field("scale", _f32),  # weak-perspective scale, crop pixels per face-model unit
        pa.field("translation", _list_f32),  # 3, crop pixels
        pa.field("id_coeffs", _list_f32),  # in the face model named by face_model; null if unknown
        pa.field("exp_coeffs", _list_f32),
        pa.field("face_model", pa.string()),
        pa.field("crop_to_frame", _list_f32, nullable=False),  # 6
        pa.field("source_path", pa.string(), nullable=False),
        # -- version 2: pseudo-labelled and profiled faces (null for other sources) --
        pa.field("landmark_definition", pa.string()),  # face-model landmark vertices the labels use (facemodel.LANDMARK_DEFINITIONS)
        pa.field("frame_index", pa.int64()),  # source video frame (0 for photos)
        pa.field("quality", _f32),  # 0..1, higher is better (teacher confidence x fit quality)
        pa.field("fit_residual", _f32),  # mean 2D distance teacher points - fitted model / face size
        pa.field("teacher_agreement", _f32),  # mean distance between the teachers' inner points / face size
        pa.field("parent_record_id", pa.string()),  # the record a profiled view was made from
    ],
    metadata={"facepgn.schema": f"face_record/{FACE_RECORD_VERSION}"},
)

FRAME_PAIR_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int32(), nullable=False),
        pa.field("pair_id", pa.string(), nullable=False),  # "<video_id>/<track>/<frame_a>-<frame_b>"
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("subject_id", pa.string(), nullable=False),
        pa.field("track_id", pa.int32(), nullable=False),
        pa.field("frame_a", pa.int64(), nullable=False),
        pa.field("frame_b", pa.int64(), nullable=False),
        pa.field("time_a", pa.float64(), nullable=False),  # seconds
        pa.field("time_b", pa.float64(), nullable=False),
        pa.field("image_size", pa.int32(), nullable=False),
        pa.field("image_a", pa.binary(), nullable=False),  # JPEG, RGB crop
        pa.field("image_b", pa.binary(), nullable=False),
        pa.field("flow", pa.binary(), nullable=False),  # float16 (S, S, 2), A -> B, crop pixels
        pa.field("box_a", _list_f32, nullable=False),  # x, y, w, h in frame pixels (detector box)
        pa.field("box_b", _list_f32, nullable=False),
        pa.field("crop_to_frame_a", _list_f32, nullable=False),  # 6
        pa.field("crop_to_frame_b", _list_f32, nullable=False),
        pa.field("det_landmarks_a", _list_f32, nullable=False),  # 5*2 detector points, crop pixels
        pa.field("det_landmarks_b", _list_f32, nullable=False),
        pa.field("det_score_a", _f32, nullable=False),
        pa.field("det_score_b", _f32, nullable=False),
        pa.field("landmarks_2d_a", _list_f32),  # 68*2 pseudo-labels, crop pixels; null if not run
        pa.field("landmarks_2d_b", _list_f32),
        pa.field("blur_a", _f32, nullable=False),  # variance of the Laplacian of the crop
        pa.field("blur_b", _f32, nullable=False),
        pa.field("flow_magnitude", _f32, nullable=False),  # mean |flow| in crop pixels
        pa.field("source_path", pa.string(), nullable=False),
    ],
    metadata={"facepgn.schema": f"frame_pair/{FRAME_PAIR_VERSION}"},
)

# Inference output (facepgn.pipelines.infer): one row per face per sampled frame. All coordinates
# are ORIGINAL frame pixels (x right, y down, z towards the camera, z centred over the 68 points and
# scaled like x); angles in degrees (pitch, yaw, roll of the AFLW2000-3D Pose_Para convention).
INFERENCE_ROW_VERSION = 1

FACE_TRACK_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int32(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("frame_index", pa.int64(), nullable=False),  # in the source video (0-based)
        pa.field("time", pa.float64(), nullable=False),  # seconds
        pa.field("track_id", pa.int32(), nullable=False),  # stable within a video
        pa.field("box", _list_f32, nullable=False),  # x, y, w, h detector box, frame pixels
        pa.field("det_score", _f32, nullable=False),
        pa.field("yaw", _f32, nullable=False),  # degrees
        pa.field("pitch", _f32, nullable=False),
        pa.field("roll", _f32, nullable=False),
        pa.field("rotation", _list_f32, nullable=False),  # 3x3 row-major, model -> camera
        pa.field("scale", _f32, nullable=False),  # frame pixels per face-model unit
        pa.field("translation", _list_f32, nullable=False),  # 3, frame pixels
        pa.field("landmarks_2d", _list_f32, nullable=False),  # 68*2, frame pixels
        pa.field("landmarks_3d", _list_f32, nullable=False),  # 68*3, frame pixels (PGN)
        pa.field("id_coeffs", _list_f32, nullable=False),
        pa.field("exp_coeffs", _list_f32, nullable=False),
        pa.field("quality", _f32, nullable=False),  # 0..1, detector score x landmark/mesh agreement
        pa.field("fit_error", _f32, nullable=False),  # mean |PGN - mesh landmark| / face size
        pa.field("crop_to_frame", _list_f32, nullable=False),  # 6, the crop the model saw
        pa.field("smoothed", pa.bool_(), nullable=False),  # temporal smoothing applied
        pa.field("face_model", pa.string()),
        pa.field("source_path", pa.string(), nullable=False),
    ],
    metadata={"facepgn.schema": f"inference_row/{INFERENCE_ROW_VERSION}"},
)

#: Older versions each kind still reads; their tables lack the columns added since (read as null).
READABLE_VERSIONS = {"face_record": {1, 2}, "frame_pair": {1}, "inference_row": {1}}
#: Columns added by later versions (nullable), per kind.
ADDED_COLUMNS = {"face_record": ["landmark_definition", "frame_index", "quality", "fit_residual",
                                 "teacher_agreement", "parent_record_id"]}

SCHEMAS = {
    "face_record": (FACE_RECORD_SCHEMA, FACE_RECORD_VERSION),
    "frame_pair": (FRAME_PAIR_SCHEMA, FRAME_PAIR_VERSION),
    "inference_row": (FACE_TRACK_SCHEMA, INFERENCE_ROW_VERSION),
}


# ---- images --------------------------------------------------------------------------------


def encode_image(rgb: np.ndarray, fmt: str = ".jpg", quality: int = 95) -> bytes:
    """RGB uint8 (H, W, 3) -> JPEG (default) or PNG bytes."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected RGB uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == ".jpg" else []
    ok, buf = cv2.imencode(fmt, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"could not encode image as {fmt}")
    return buf.tobytes()


def decode_image(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes -> RGB uint8 (H, W, 3)."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("could not decode image bytes")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ---- flow ----------------------------------------------------------------------------------


def encode_flow(flow: np.ndarray) -> bytes:
    """(H, W, 2) float flow -> float16 little-endian bytes."""
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"expected flow (H, W, 2), got {flow.shape}")
    return np.ascontiguousarray(flow, dtype="<f2").tobytes()


def decode_flow(data: bytes, size: int) -> np.ndarray:
    """float16 bytes -> (size, size, 2) float32 flow."""
    arr = np.frombuffer(data, dtype="<f2")
    if arr.size != size * size * 2:
        raise ValueError(f"flow has {arr.size} values, expected {size}x{size}x2")
    return arr.reshape(size, size, 2).astype(np.float32)


# ---- affine crop transforms: their home is facepgn.crops (these names stay for callers) ------

crop_transform = crops.crop_transform
apply_affine = crops.apply_affine
invert_affine = crops.invert_affine


# ---- tables --------------------------------------------------------------------------------


def to_table(rows: list[Mapping[str, Any]], kind: str) -> pa.Table:
    """Rows (dicts of numpy/python values) -> a table of the named schema, validated."""
    schema, version = SCHEMAS[kind]
    columns: dict[str, list] = {f.name: [] for f in schema}
    for row in rows:
        extra = set(row) - set(columns) - {"schema_version"}
        if extra:
            raise ValueError(f"{kind} row has unknown fields {sorted(extra)}")
        for name in columns:
            value = version if name == "schema_version" else row.get(name)
            if isinstance(value, np.ndarray):
                value = value.reshape(-1).tolist()
            elif isinstance(value, np.generic):
                value = value.item()
            columns[name].append(value)
    return pa.Table.from_pydict(columns, schema=schema)


def check_table(table: pa.Table, kind: str, source: str = "table") -> None:
    """Raise a one-line error if ``table`` lacks a column of the schema or has an unknown version."""
    schema, version = SCHEMAS[kind]
    optional = set(ADDED_COLUMNS.get(kind, []))
    missing = [f.name for f in schema if f.name not in table.column_names and f.name not in optional]
    if missing:
        raise FacepgnError(f"{source}: not a {kind} table (missing columns {missing[:4]})")
    versions = set(table.column("schema_version").to_pylist()) if table.num_rows else set()
    readable = READABLE_VERSIONS.get(kind, {version})
    if versions - readable:
        raise FacepgnError(f"{source}: {kind} schema version {sorted(versions)} not supported (this facepgn reads {sorted(readable)})")


def upgrade_table(table: pa.Table, kind: str) -> pa.Table:
    """``table`` (any readable version) with the current schema's columns, in order; columns that
    its version lacks are null. Tables of several versions concatenate after this."""
    schema, _ = SCHEMAS[kind]
    columns = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            columns.append(col.cast(f.type) if col.type != f.type else col)
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=schema)

