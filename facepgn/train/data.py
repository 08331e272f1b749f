"""Face-record and frame-pair batches -> tensors for ``facepgn.train.step``.

A batch may come as Ray Data gives it (``iter_batches(batch_format="numpy")``: a dict of numpy
columns, list columns as 2D arrays or object arrays of arrays, nulls as None), as a pyarrow Table,
as a pandas DataFrame, or as a list of row dicts. The output is a dict of tensors:

faces (``face_batch_to_tensors``): ``images`` (B,3,S,S) float in [0,1]; ``landmarks_2d`` (B,68,2);
``landmarks_3d`` (B,68,3) with ``has_3d`` (B,); ``landmarks_visible`` (B,68); ``id_coeffs`` (B,K),
``exp_coeffs`` (B,E) with ``has_coeffs`` (B,); ``pose`` (B,3), ``scale`` (B,), ``translation`` (B,3)
with ``has_pose`` (B,). Crops of another size than the model's ``S`` are resized and their
coordinates scaled (pixel centres at integers, as ``cv2.resize`` does). With ``augment`` the crops
get colour jitter and, given ``geometric`` settings (:func:`augment_settings` of the data config), a
random similarity each (scale, shift, in-plane rotation, mirror; :mod:`facepgn.augment`) with the
landmarks, visibility and pose moved with the image and the coefficients dropped for mirrored crops.

pairs (``pair_batch_to_tensors``): ``images_a``, ``images_b`` (B,3,S,S); ``flow`` (B,2,S,S) A->B in
crop pixels; ``landmarks_2d_a``, ``landmarks_2d_b`` (B,68,2) with ``has_landmarks_2d`` (B,).

A training step takes ``{"faces": ..., "pairs": ...}`` (either may be missing): ``mixed_batch``.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Sequence

import cv2
import numpy as np
import pyarrow as pa
import torch

from facepgn import augment as geometric_augment
from facepgn import records
from facepgn.errors import InputError

NUM_LANDMARKS = records.NUM_LANDMARKS
#: what ``face_batch_to_tensors`` returns, in this order
FACE_TENSOR_KEYS = ("images", "landmarks_2d", "landmarks_3d", "has_3d", "landmarks_visible", "id_coeffs", "exp_coeffs",
                    "has_coeffs", "pose", "scale", "translation", "has_pose")


# ---- column access -------------------------------------------------------------------------


def _num_rows(batch: Any) -> int:
    if isinstance(batch, pa.Table):
        return batch.num_rows
    if isinstance(batch, list):
        return len(batch)
    if hasattr(batch, "shape") and hasattr(batch, "columns"):  # pandas
        return int(batch.shape[0])
    first = next(iter(batch.values()))
    return len(first)


def column(batch: Any, name: str) -> list | None:
    """One column as a list of per-row values (None for nulls), or None if the batch lacks it."""
    if isinstance(batch, pa.Table):
        return batch.column(name).to_pylist() if name in batch.column_names else None
    if isinstance(batch, list):
        return [row.get(name) for row in batch] if batch and name in batch[0] else None
    if hasattr(batch, "columns") and hasattr(batch, "shape"):  # pandas
        return batch[name].tolist() if name in batch.columns else None
    if name not in batch:
        return None
    return list(batch[name])  # 2D numeric arrays give one row array per row, object arrays their items


def _array(value: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float32)
    if arr.size == 0:
        return None
    return arr.reshape(shape)


def _bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, np.ndarray):
        return value.tobytes()
    raise TypeError(f"expected bytes, got {type(value).__name__}")


# ---- images, flows, coordinates ------------------------------------------------------------


def decode_crop(data: Any, size: int, source: str = "record") -> tuple[np.ndarray, float]:
    """JPEG/PNG bytes -> (RGB uint8 (size, size, 3), factor = size / original side)."""
    try:
        rgb = records.decode_image(_bytes(data))
    except (ValueError, TypeError) as exc:
        raise InputError(source, f"image cannot be decoded ({exc})") from None
    if rgb.shape[0] != rgb.shape[1]:
        raise InputError(source, f"crop is not square ({rgb.shape[1]}x{rgb.shape[0]})")
    factor = size / rgb.shape[0]
    if rgb.shape[0] != size:
        interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (size, size), interpolation=interp)
    return rgb, factor


def rescale_points(points: np.ndarray, factor: float) -> np.ndarray:
    """Crop-pixel points (..., 2 or 3) after resizing the crop by ``factor`` (z scales like x, y)."""
    if factor == 1.0:
        return points
    out = points.copy()
    out[..., :2] = (points[..., :2] + 0.5) * factor - 0.5
    if points.shape[-1] > 2:
        out[..., 2:] = points[..., 2:] * factor
    return out


def resize_flow(flow: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 2) flow resized to (size, size, 2), vectors scaled with the image."""
    if flow.shape[0] == size:
        return flow
    factor = size / flow.shape[0]
    return cv2.resize(flow, (size, size), interpolation=cv2.INTER_LINEAR) * factor


def images_to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """RGB uint8 (H, W, 3) list -> float (B, 3, H, W) in [0, 1]."""
    arr = np.stack(images).astype(np.float32) / 255.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def augment_colour(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness, contrast and per-channel gain (labelled crops only; geometry untouched)."""
    b = images.shape[0]
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    brightness = 0.75 + 0.5 * u(b, 1, 1, 1)
    contrast = 0.75 + 0.5 * u(b, 1, 1, 1)
    gain = 0.9 + 0.2 * u(b, 3, 1, 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    out = ((images - mean) * contrast + mean) * brightness * gain
    return out.clamp(0.0, 1.0)


def augment_settings(data_cfg: Any) -> geometric_augment.AugmentSettings | None:
    """The geometric augmentation a training data config asks for (``config.TrainDataConfig``):
    None when ``augment`` or ``geometric_augment`` is off."""
    if not data_cfg.augment or not data_cfg.geometric_augment:
        return None
    return geometric_augment.AugmentSettings(
        scale=tuple(data_cfg.aug_scale), rotate_deg=data_cfg.aug_rotate_deg, shift=data_cfg.aug_shift,
        flip_prob=data_cfg.aug_flip_prob, border=data_cfg.aug_border,
    )


def _fit(vec: np.ndarray | None, n: int) -> np.ndarray:
    """Truncate or zero-pad coefficients to ``n`` modes."""
    out = np.zeros(n, np.float32)
    if vec is not None:
        k = min(n, vec.size)
        out[:k] = vec.reshape(-1)[:k]
    return out


# ---- the two batch kinds -------------------------------------------------------------------


FACE_COLUMNS = ("image", "landmarks_2d", "landmarks_3d", "landmarks_visible", "pose", "scale", "translation",
                "id_coeffs", "exp_coeffs", "face_model")


def _face_row(row: Mapping[str, Any], source: str, input_size: int, num_id: int, num_exp: int, face_model_name: str | None,
              similarity_seed: int | None, geometric: geometric_augment.AugmentSettings | None) -> dict[str, Any]:
    """One face record's values (``FACE_COLUMNS``) -> its crop and labels at ``input_size``, moved by
    a random similarity drawn from ``similarity_seed`` (when given)."""
    rgb, f = decode_crop(row["image"], input_size, source)
    p2 = _array(row["landmarks_2d"], (NUM_LANDMARKS, 2))
    if p2 is None:
        raise InputError(source, "landmarks_2d is missing")
    lm2d = rescale_points(p2, f)
    p3 = _array(row["landmarks_3d"], (NUM_LANDMARKS, 3))
    has3d = p3 is not None
    lm3d = rescale_points(p3, f) if has3d else np.zeros((NUM_LANDMARKS, 3), np.float32)
    vis = row["landmarks_visible"]
    vis = np.ones(NUM_LANDMARKS, np.float32) if vis is None else np.asarray(vis, np.float32).reshape(NUM_LANDMARKS)
    cid, cexp = _array(row["id_coeffs"], (-1,)), _array(row["exp_coeffs"], (-1,))
    name = row["face_model"]
    same_model = face_model_name is None or name is None or not face_model_name or name == face_model_name
    # identity modes are PCA-ordered (truncating is sound); expression blendshapes are a chosen
    # subset, so their count must match the model's exactly
    coeffs_ok = cid is not None and cexp is not None and same_model and cexp.size == num_exp
    pose, scale, trans = _array(row["pose"], (3,)), row["scale"], _array(row["translation"], (3,))
    has_pose = pose is not None and scale is not None and trans is not None
    scale = float(scale) * f if scale is not None else None
    trans = rescale_points(trans[None], f)[0] if trans is not None else None
    if similarity_seed is not None:
        sim = geometric_augment.random_similarity(np.random.default_rng(similarity_seed), input_size, geometric)
        rgb, labels = geometric_augment.augment_record(
            rgb, {"landmarks_2d": lm2d, "landmarks_3d": lm3d if has3d else None, "landmarks_visible": vis,
                  "pose": pose, "scale": scale, "translation": trans, "has_coeffs": coeffs_ok},
            sim, geometric.border)
        lm2d = labels["landmarks_2d"]
        if has3d:
            lm3d = labels["landmarks_3d"]
        vis, pose, scale, trans = labels["landmarks_visible"], labels["pose"], labels["scale"], labels["translation"]
        coeffs_ok = labels["has_coeffs"]
    return {
        "images": rgb, "landmarks_2d": lm2d, "landmarks_3d": lm3d, "has_3d": has3d,
        "landmarks_visible": np.asarray(vis, np.float32),
        "id_coeffs": _fit(cid, num_id), "exp_coeffs": _fit(cexp, num_exp), "has_coeffs": coeffs_ok,
        "pose": pose if pose is not None else np.zeros(3, np.float32),
        "scale": scale if scale is not None else 0.0,
        "translation": trans if trans is not None else np.zeros(3, np.float32),
        "has_pose": has_pose,
    }


def face_batch_to_tensors(
    batch: Any,
    input_size: int,
    num_id: int,
    num_exp: int,
    face_model_name: str | None = None,
    augment: bool = False,
    generator: torch.Generator | None = None,
    geometric: geometric_augment.AugmentSettings | None = None,
) -> dict[str, torch.Tensor]:
    """Face records (``FACE_RECORD_SCHEMA`` columns) -> tensors (see the module docstring).

    Coefficients count only where the record's ``face_model`` equals ``face_model_name`` (when both
    are known) and it has exactly ``num_exp`` expression weights (a truncated blendshape model keeps a
    chosen subset, ``FaceModel.truncated``); identity is truncated / zero-padded to ``num_id``.

    ``augment`` (training only): colour jitter, and with ``geometric`` a random similarity per crop
    (at ``input_size``, after resizing). Everything random comes from ``generator`` (one numpy seed
    per crop is drawn from it first), so a seeded generator gives the same batch.
    """
    n = _num_rows(batch)
    seeds = [None] * n
    if augment and geometric is not None:
        seeds = torch.randint(0, 2**62, (n,), generator=generator).tolist()
    ids = column(batch, "record_id") or [f"row {i}" for i in range(n)]
    col = {name: column(batch, name) or [None] * n for name in FACE_COLUMNS}
    rows = [_face_row({k: v[i] for k, v in col.items()}, f"face record {ids[i]}", input_size, num_id, num_exp, face_model_name,
                      seeds[i], geometric) for i in range(n)]
    stacked = {key: [r[key] for r in rows] for key in FACE_TENSOR_KEYS}
    out = {"images": images_to_tensor(stacked["images"])}
    for key in ("landmarks_2d", "landmarks_3d", "landmarks_visible", "id_coeffs", "exp_coeffs", "pose", "translation"):
        out[key] = torch.from_numpy(np.stack(stacked[key]).astype(np.float32))
    for key in ("has_3d", "has_coeffs", "scale", "has_pose"):
        out[key] = torch.tensor([float(v) for v in stacked[key]], dtype=torch.float32)
    out = {key: out[key] for key in FACE_TENSOR_KEYS}
    if augment:
        out["images"] = augment_colour(out["images"], generator)
    return out


def pair_batch_to_tensors(batch: Any, input_size: int) -> dict[str, torch.Tensor]:
    """Frame pairs (``FRAME_PAIR_SCHEMA`` columns) -> tensors (see the module docstring)."""
    n = _num_rows(batch)
    ids = column(batch, "pair_id") or [f"row {i}" for i in range(n)]
    col = {name: column(batch, name) or [None] * n for name in (
        "image_a", "image_b", "flow", "image_size", "landmarks_2d_a", "landmarks_2d_b")}
    imgs_a, imgs_b, flows, lm_a, lm_b, has_lm = [], [], [], [], [], []
    for i in range(n):
        source = f"frame pair {ids[i]}"
        a, f = decode_crop(col["image_a"][i], input_size, source)
        b, _ = decode_crop(col["image_b"][i], input_size, source)
        side = int(col["image_size"][i]) if col["image_size"][i] is not None else int(round(input_size / f))
        try:
            flow = records.decode_flow(_bytes(col["flow"][i]), side)
        except (ValueError, TypeError) as exc:
            raise InputError(source, f"flow cannot be decoded ({exc})") from None
        imgs_a.append(a)
        imgs_b.append(b)
        flows.append(resize_flow(flow, input_size))
        pa_, pb_ = _array(col["landmarks_2d_a"][i], (NUM_LANDMARKS, 2)), _array(col["landmarks_2d_b"][i], (NUM_LANDMARKS, 2))
        ok = pa_ is not None and pb_ is not None
        has_lm.append(ok)
        lm_a.append(rescale_points(pa_, f) if ok else np.zeros((NUM_LANDMARKS, 2), np.float32))
        lm_b.append(rescale_points(pb_, f) if ok else np.zeros((NUM_LANDMARKS, 2), np.float32))
    out = {
        "images_a": images_to_tensor(imgs_a),
        "images_b": images_to_tensor(imgs_b),
        "flow": torch.from_numpy(np.stack(flows).astype(np.float32)).permute(0, 3, 1, 2).contiguous(),
    }
    if any(has_lm):
        out["landmarks_2d_a"] = torch.from_numpy(np.stack(lm_a).astype(np.float32))
        out["landmarks_2d_b"] = torch.from_numpy(np.stack(lm_b).astype(np.float32))
        out["has_landmarks_2d"] = torch.tensor(has_lm, dtype=torch.float32)
    return out


def mixed_batch(faces: Mapping[str, torch.Tensor] | None, pairs: Mapping[str, torch.Tensor] | None) -> dict[str, dict[str, torch.Tensor]]:
    """The step's input: labelled faces and/or frame pairs."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    if faces is not None:
        out["faces"] = dict(faces)
    if pairs is not None:
        out["pairs"] = dict(pairs)
    if not out:
        raise ValueError("a batch needs faces, pairs or both")
    return out


def to_device(batch: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """Move a (nested) dict of tensors to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    return batch


# ---- Parquet sources for the plain loop ----------------------------------------------------


def read_records(paths: Sequence[str], kind: str) -> pa.Table:
    """Read every Parquet file under ``paths`` (files, folders, globs; local or s3://) into one
    table, checked against the ``kind`` schema (``face_record`` or ``frame_pair``)."""
    import pyarrow.parquet as pq

    from facepgn import storage

    tables = []
    for root in paths:
        files = storage.list_files(str(root), [".parquet"])
        if not files:
            raise InputError(root, f"no .parquet files found ({kind} data)")
        for path in files:
            fs, fs_path = storage.pyarrow_filesystem(path)
            try:
                table = pq.read_table(fs_path, filesystem=fs)
            except (OSError, pa.ArrowInvalid) as exc:
                raise InputError(path, f"not a readable Parquet file ({exc.__class__.__name__})") from None
            records.check_table(table, kind, path)
            tables.append(records.upgrade_table(table, kind))
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def check_landmark_definitions(definitions: Iterable[str | None], expected: str, source: str) -> None:
    """Records labelled in another landmark definition than the model's would teach it other
    vertices than the ones it fits: a one-line error before training (null: unknown, accepted)."""
    other = sorted({d for d in definitions if d} - {expected})
    if other:
        raise InputError(source, f"face records label landmarks in definition {', '.join(other)} but the model uses "
                                 f"{expected!r}; set model.landmarks to match or relabel them")


def model_landmark_definition(model_cfg: Any) -> str:
    """The resolved landmark definition a ``ModelConfig`` builds its model with."""
    from facepgn.facemodel import load_face_model, resolve_landmark_definition

    return resolve_landmark_definition(load_face_model(model_cfg.face_model), model_cfg.landmarks)


def random_indices(num_rows: int, batch_size: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Endless row indices of batches of ``batch_size``, reshuffled every epoch (drops no row: the
    last batch of an epoch is topped up from the next permutation). A function of ``seed`` alone, so
    a resumed run skips the batches it trained by drawing their indices only (no rows touched)."""
    if num_rows == 0:
        raise ValueError("cannot draw batches from an empty table")
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_rows)
    pos = 0
    while True:
        idx: list[int] = []
        while len(idx) < batch_size:
            if pos >= len(order):
                order, pos = rng.permutation(num_rows), 0
            take = order[pos : pos + batch_size - len(idx)]
            idx.extend(take.tolist())
            pos += len(take)
        yield np.asarray(idx, dtype=np.int64)


def random_batches(table: pa.Table, batch_size: int, seed: int = 0) -> Iterator[pa.Table]:
    """Endless batches of ``batch_size`` rows of ``table`` (:func:`random_indices`)."""
    for idx in random_indices(table.num_rows, batch_size, seed):
        yield table.take(pa.array(idx))
