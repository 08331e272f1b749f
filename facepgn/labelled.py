"""Readers for labelled face datasets laid out as ``<name>.jpg`` + ``<name>.mat``: AFLW2000-3D and
300W-LP (and any folder laid out like them), into face records (``records.FACE_RECORD_SCHEMA``).

The ``.mat`` files (MATLAB 5, from the 3DDFA authors) hold:

* ``pt3d_68`` (3, 68) -- AFLW2000-3D: x, y in pixels of the 450x450 image (landmarks may fall outside
  it for cropped faces), z in the same pixel units, **larger z = closer to the camera** (the nose tip
  has a larger z than the jaw corners on frontal faces), i.e. the project's convention (x right,
  y down, z towards the camera). The z origin is arbitrary; records centre it.
* ``pt2d`` (2, 68) -- 300W-LP: 2D landmarks in image pixels. (AFLW2000-3D files also carry a
  ``pt2d``, but it is the original 21-point AFLW annotation and is not used.)
* ``Pose_Para`` (1, 7) -- pitch, yaw, roll (radians), tx, ty, tz, scale of the fitted BFM.
* ``Shape_Para`` (199, 1), ``Exp_Para`` (29, 1) -- BFM 2009 identity and 3DDFA expression
  coefficients, stored as published (their scale is 3DDFA's, not the project's N(0, 1) prior).
* ``roi`` (1, 4) -- the source dataset's face box; not used for cropping.

Coordinates are taken as published (MATLAB-derived; a possible 1-based offset of up to one pixel is
not corrected, so that numbers match the published evaluation protocol).

``read_mat`` (from :mod:`facepgn.facemodel`, which reads the BFM's ``.mat`` files too) is the
project's one ``.mat`` reader.
"""

from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from facepgn import crops, records, storage
from facepgn.errors import InputError
from facepgn.facemodel import read_mat

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SOURCE_AFLW2000 = "aflw2000-3d"
SOURCE_300WLP = "300w-lp"
# The parametrisation of Shape_Para/Exp_Para (BFM 2009 shape + 29 expression PCs, 3DDFA scaling).
BFM_COEFFS_MODEL = "bfm2009-3ddfa"
DEFAULT_MARGIN = crops.DEFAULT_LANDMARK_MARGIN  # side = (1 + 2 * margin) * landmark extent: 1.4, close to 3DDFA's sqrt(2)
DEFAULT_IMAGE_SIZE = 128

_AUGMENTATION_SUFFIX = re.compile(r"_\d+$")


@dataclass
class LabelledFace:
    """One labelled image as read from disk, in source-image pixels."""

    image: np.ndarray  # RGB uint8 (H, W, 3)
    landmarks: np.ndarray  # (68, 3) with pt3d_68, else (68, 2); image pixels
    source: str  # aflw2000-3d | 300w-lp
    name: str  # file stem, e.g. image00050
    subject_id: str
    record_id: str
    source_path: str  # the image file
    mat_path: str
    pose: np.ndarray | None = None  # (3,) pitch, yaw, roll radians (Pose_Para[:3]), as published
    pose_para: np.ndarray | None = None  # (7,)
    shape_para: np.ndarray | None = None  # (199,)
    exp_para: np.ndarray | None = None  # (29,)
    roi: np.ndarray | None = None  # (4,)

    @property
    def has_3d(self) -> bool:
        return self.landmarks.shape[1] == 3

    @property
    def yaw_degrees(self) -> float | None:
        return None if self.pose is None else float(np.degrees(self.pose[1]))


# ---- files -------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a JPEG/PNG (local or ``s3://``) as RGB uint8, or raise a one-line InputError."""
    path = str(path)
    data = storage.read_nonempty(path, "an image")
    try:
        return records.decode_image(data)
    except ValueError:
        raise InputError(path, "not a readable image") from None


def landmarks_from_mat(mat: dict[str, np.ndarray], path: str) -> np.ndarray:
    """68 landmarks in image pixels: (68, 3) from ``pt3d_68``, else (68, 2) from a 68-point ``pt2d``."""
    if "pt3d_68" in mat:
        pts = _numbers(mat, "pt3d_68", path)
        if pts.shape != (3, records.NUM_LANDMARKS):
            raise InputError(path, f"pt3d_68 has shape {pts.shape}, expected (3, 68)")
    elif "pt2d" in mat and np.shape(mat["pt2d"]) == (2, records.NUM_LANDMARKS):
        pts = _numbers(mat, "pt2d", path)
    else:
        found = f"pt2d has shape {np.shape(mat['pt2d'])}" if "pt2d" in mat else "no pt2d"
        raise InputError(path, f"no 68-point landmarks (needs pt3d_68 (3x68) or pt2d (2x68); {found})")
    if not np.all(np.isfinite(pts)):
        raise InputError(path, "landmarks contain NaN or infinite values")
    return pts.T.astype(np.float32)


def _numbers(mat: dict[str, np.ndarray], key: str, path: str) -> np.ndarray:
    """``mat[key]`` as float64, or a one-line error naming the file when it is not numbers (text, cells)."""
    try:
        return np.asarray(mat[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(path, f"{key} is not numeric") from None


def mat_vector(mat: dict[str, np.ndarray], key: str, size: int | None, path: str) -> np.ndarray | None:
    """``mat[key]`` flattened to float32 (None if absent); a one-line error if it has the wrong size."""
    if key not in mat:
        return None
    value = _numbers(mat, key, path).reshape(-1)
    if size is not None and value.size != size:
        raise InputError(path, f"{key} has {value.size} values, expected {size}")
    return value.astype(np.float32)


def infer_source(mat: dict[str, np.ndarray]) -> str:
    """``aflw2000-3d`` for files with 3D landmarks, ``300w-lp`` for 2D-only ones."""
    return SOURCE_AFLW2000 if "pt3d_68" in mat else SOURCE_300WLP


def subject_of(name: str, source: str) -> str:
    """Subject id: AFLW2000-3D -- the image; 300W-LP -- the base name without the ``_N`` augmentation
    suffix, so the rotated/flipped versions of one face share a subject (e.g. IBUG_image_008_1)."""
    if source == SOURCE_300WLP:
        name = _AUGMENTATION_SUFFIX.sub("", name)
    return f"{source}/{name}"


def read_face(image_path: str, mat_path: str | None = None, source: str | None = None) -> LabelledFace:
    """Read one image + ``.mat`` pair (the ``.mat`` beside the image by default)."""
    image_path = str(image_path)
    stem, _ = os.path.splitext(image_path)
    mat_path = str(mat_path) if mat_path else stem + ".mat"
    mat = read_mat(mat_path)
    landmarks = landmarks_from_mat(mat, mat_path)
    pose_para = mat_vector(mat, "Pose_Para", 7, mat_path)
    image = read_image(image_path)
    source = source or infer_source(mat)
    name = storage.basename(stem)
    parent = storage.basename(os.path.dirname(image_path)) or "."
    return LabelledFace(
        image=image,
        landmarks=landmarks,
        source=source,
        name=name,
        subject_id=subject_of(name, source),
        # 300W-LP repeats names across its AFW/AFW_Flip/... folders; AFLW2000-3D names are unique.
        record_id=f"{source}/{parent}/{name}" if source == SOURCE_300WLP else f"{source}/{name}",
        source_path=image_path,
        mat_path=mat_path,
        pose=None if pose_para is None else pose_para[:3].copy(),
        pose_para=pose_para,
        shape_para=mat_vector(mat, "Shape_Para", None, mat_path),
        exp_para=mat_vector(mat, "Exp_Para", None, mat_path),
        roi=mat_vector(mat, "roi", 4, mat_path),
    )


def list_labelled_images(folder: str) -> list[str]:
    """Images under ``folder`` (recursive, sorted) that have a ``.mat`` beside them.

    Raises a one-line InputError if the folder does not exist or holds no such pair.
    """
    folder = str(folder)
    if not storage.exists(folder):
        raise InputError(folder, "folder not found")
    files = storage.list_files(folder, extensions=IMAGE_EXTENSIONS + (".mat",))
    mats = {os.path.splitext(f)[0] for f in files if f.lower().endswith(".mat")}
    images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.splitext(f)[0] in mats]
    if not images:
        raise InputError(folder, "no labelled faces found (expected <name>.jpg + <name>.mat pairs)")
    return images


# ---- crops and records -------------------------------------------------------------------------


# landmark_box, crop_with_affine, to_crop: their home is facepgn.crops (these names stay for callers)
landmark_box = crops.landmark_box
crop_with_affine = crops.crop_with_affine
to_crop = crops.frame_to_crop


def canonical_pose(angles: np.ndarray) -> np.ndarray:
    """The same rotation as (pitch, yaw, roll) radians with yaw in [-pi/2, pi/2] and pitch, roll in
    (-pi, pi] (``geometry.matrix_to_euler`` of ``geometry.euler_to_matrix``). Some published poses
    are not canonical: AFLW2000-3D has yaws of -351 and 119 degrees."""
    from facepgn.geometry import euler_to_matrix, matrix_to_euler

    angles = np.asarray(angles, dtype=np.float64)
    return np.asarray(matrix_to_euler(euler_to_matrix(angles)), dtype=np.float32)


def face_record(
    face: LabelledFace,
    image_size: int = DEFAULT_IMAGE_SIZE,
    margin: float = DEFAULT_MARGIN,
    box: tuple[float, float, float] | None = None,
    crop_to_frame: np.ndarray | None = None,
) -> dict[str, Any]:
    """A ``face_record`` row: the square crop around the landmarks (or the given ``crop_to_frame``
    affine, e.g. a 3DDFA roi box), landmarks in crop pixels (3D z centred), the pose in canonical
    angles (:func:`canonical_pose`), coefficients as published."""
    if crop_to_frame is None:
        x0, y0, side = box if box is not None else landmark_box(face.landmarks, margin)
        crop_to_frame = crops.crop_transform(x0, y0, side, image_size)
    crop_to_frame = np.asarray(crop_to_frame, np.float32).reshape(2, 3)
    crop = crop_with_affine(face.image, crop_to_frame, image_size)
    lm = to_crop(face.landmarks, crop_to_frame)
    lm3d = None
    if face.has_3d:
        lm3d = lm.copy()
        lm3d[:, 2] -= lm3d[:, 2].mean()
    has_coeffs = face.shape_para is not None and face.exp_para is not None
    return {
        "record_id": face.record_id,
        "source": face.source,
        "subject_id": face.subject_id,
        "image": records.encode_image(crop),
        "image_size": int(image_size),
        "landmarks_2d": lm[:, :2],
        "landmarks_3d": lm3d,
        "landmarks_visible": None,
        "pose": None if face.pose is None else canonical_pose(face.pose),
        "scale": None,
        "translation": None,
        "id_coeffs": face.shape_para if has_coeffs else None,
        "exp_coeffs": face.exp_para if has_coeffs else None,
        "face_model": BFM_COEFFS_MODEL if has_coeffs else None,
        "crop_to_frame": crop_to_frame,
        "source_path": face.source_path,
    }


# ---- folders -> Parquet shards -----------------------------------------------------------------


DATA_DIR = "data"


def data_dir(out_dir: str) -> str:
    """Where ``convert_folder`` puts the shards of ``out_dir``: ``<out_dir>/data`` (only Parquet
    there: ``pandas.read_parquet`` and ``pyarrow.dataset.dataset`` load it whole; summary.json
    beside it), or ``out_dir`` itself when it already holds shards at its top level (a folder
    written before ``data/``: a rerun resumes it in place rather than converting it again)."""
    if storage.list_files(out_dir, [".parquet"], recursive=False):
        return out_dir
    return storage.join(out_dir, DATA_DIR)


def roi_crops(folder: str, image_size: int, limit: int | None) -> dict[str, np.ndarray]:
    """AFLW2000-3D's standard roi crops (crop -> frame affines) by image path, as the evaluation plans them."""
    from facepgn.evaluation import plan_aflw2000

    plan = plan_aflw2000(folder, image_size=image_size, box="roi", limit=limit)
    return dict(zip(plan.image_paths, plan.crop_to_frame))


def convert_chunk(images: Sequence[str], shard_path: str, *, source: str | None = None,
                  image_size: int = DEFAULT_IMAGE_SIZE, margin: float = DEFAULT_MARGIN,
                  crops: Sequence[Sequence[float]] | None = None) -> dict[str, Any]:
    """One chunk of a labelled folder: the face records of ``images`` (``crops``: their crop ->
    frame affines, 6 numbers each, e.g. the roi boxes; None: around the landmarks) written as one
    Parquet shard at ``shard_path`` (atomically; none when no image could be read). A bad pair is
    left out and listed with its one-line reason. Plain values in and out: the same chunk gives the
    same bytes in whichever process runs it.

    Returns ``{"records", "errors": [{"path", "reason"}], "written": [shard_path] or []}``."""
    rows, errors = [], []
    for i, image_path in enumerate(images):
        try:
            affine = None if crops is None else np.asarray(crops[i], np.float32).reshape(2, 3)
            rows.append(face_record(read_face(image_path, source=source), image_size, margin, crop_to_frame=affine))
        except InputError as exc:
            errors.append({"path": exc.path, "reason": exc.cause})
            log.warning("skipping %s", exc)
    if rows:
        storage.atomic_write_bytes(shard_path, _table_bytes(records.to_table(rows, "face_record")))
    return {"records": len(rows), "errors": errors, "written": [shard_path] if rows else []}


def _table_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def convert_folder(
    folder: str,
    out_dir: str,
    *,
    source: str | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    margin: float = DEFAULT_MARGIN,
    shard_size: int = 500,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    box: str = "landmarks",
    executor: str = "local",
) -> dict[str, Any]:
    """Read every image + ``.mat`` pair under ``folder`` into face-record Parquet shards in
    ``out_dir``: ``facepgn labelled convert`` (:func:`facepgn.pipelines.labelled.run_convert`),
    in this process by default (``executor="ray"``: as Ray tasks); returns its summary.

    ``box``: ``landmarks`` (square crops around the ground truth, ``margin``) or ``roi`` (AFLW2000-3D's
    standard 3DDFA roi boxes, as ``facepgn evaluate aflw2000`` crops; faces not in the standard
    arrays are a one-line error).

    Shards (``<out_dir>/data/part-NNNNN.parquet``, :func:`data_dir`; ``summary.json`` beside
    ``data/``) hold fixed slices of ``shard_size`` images of the sorted file list (one chunk each,
    :func:`convert_chunk`) and are written atomically, then the chunk's done marker; a rerun skips
    chunks that are done. A bad pair is recorded in ``summary.json`` and ``errors.csv`` with its
    reason and skipped. ``progress(images done, images)`` as chunks finish.
    """
    from facepgn.config import LabelledConfig
    from facepgn.pipelines.labelled import run_convert

    cfg = LabelledConfig(source=source, image_size=image_size, margin=margin, box=box, shard_size=shard_size,
                         limit=limit, executor=executor)
    return run_convert(cfg, folder, out_dir, progress=progress)


def read_faces(paths: Sequence[str], source: str | None = None) -> list[LabelledFace]:
    """Read several image paths (each with its ``.mat`` beside it); errors propagate."""
    return [read_face(p, source=source) for p in paths]
