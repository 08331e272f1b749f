"""Importers of the source face models' own layouts: ICT-FaceKit upstream (.obj + vertex_indices.json),
Surrey Face Model (cereal binary), Basel Face Model 2009 (.mat). Each builds a
:class:`facepgn.facemodel.FaceModel`; ``FaceModel.save`` writes the canonical file. :func:`open_face_model`
detects the layout from the path. (``facepgn.facemodel`` re-exports these names.)
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from facepgn.errors import InputError
from facepgn.facemodel import ICT_JAW_LEFT_IDS, ICT_JAW_RIGHT_IDS, NUM_LANDMARKS, FaceModel, read_face_model_npz
from facepgn.meshio import read_obj

ICT_FACE_AREA_VERTICES = 9409  # vertices 0..9408 of the ICT mesh are the face area
ICT_NUM_IDENTITIES = 100


def _triangulate(polygons: list[list[int]], num_vertices: int) -> np.ndarray:
    """Keep polygons whose vertices are all < num_vertices; fan-split (a, b, c, d) -> (a, b, c), (a, c, d)."""
    tris = []
    for poly in polygons:
        if max(poly) >= num_vertices:
            continue
        for k in range(1, len(poly) - 1):
            tris.append((poly[0], poly[k], poly[k + 1]))
    return np.asarray(tris, dtype=np.int32).reshape(-1, 3)


def convert_ict_upstream(folder: str | os.PathLike, allow_missing: bool = False,
                         num_vertices: int = ICT_FACE_AREA_VERTICES, progress: bool = False) -> FaceModel:
    """Build the ICT face-area model from the upstream FaceXModel layout (``.obj`` + ``vertex_indices.json``).

    Packs exactly like the shared ``ict_face_area.npz``: the first ``num_vertices`` vertices; the
    neutral mesh's polygons inside that range fan-split into triangles; identity/expression modes
    as float32 offsets from the neutral mesh (both rounded to float32 first, which reproduces the
    shared file bit for bit); expressions in the order
    of ``vertex_indices.json["expressions"]``; the 68 landmarks from ``idx_to_landmark_verts``.
    ``allow_missing`` builds a model from the modes present (for partial folders, e.g. tests);
    otherwise every one of the 100 identities and all expressions must be there.
    """
    import json

    folder = Path(folder)
    index_path = folder / "vertex_indices.json"
    try:
        index = json.loads(index_path.read_text())
        expressions = [str(e) for e in index["expressions"]]
        lm68 = np.asarray(index["idx_to_landmark_verts"], dtype=np.int64)
    except FileNotFoundError:
        raise InputError(index_path, "file not found (not an ICT-FaceKit FaceXModel folder?)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(index_path, f"not an ICT vertex_indices.json ({exc.__class__.__name__}: {exc})") from None
    if lm68.shape != (NUM_LANDMARKS,):
        raise InputError(index_path, f"idx_to_landmark_verts has {lm68.size} entries, expected 68")
    neutral_path = folder / "generic_neutral_mesh.obj"
    neutral, polygons = read_obj(neutral_path)
    if neutral.shape[0] < num_vertices:
        raise InputError(neutral_path, f"{neutral.shape[0]} vertices, expected at least {num_vertices}")
    mean32 = neutral[:num_vertices].astype(np.float32)
    triangles = _triangulate(polygons, num_vertices)

    def offsets(names: list[str]) -> tuple[list[str], np.ndarray]:
        kept, arrays = [], []
        iterator = names
        if progress:
            from tqdm import tqdm

            iterator = tqdm(names, desc="ICT meshes", unit="mesh")
        for name in iterator:
            path = folder / f"{name}.obj"
            if not path.exists():
                if allow_missing:
                    continue
                raise InputError(path, "file not found (incomplete ICT-FaceKit download?)")
            verts, _ = read_obj(path)
            if verts.shape[0] != neutral.shape[0]:
                raise InputError(path, f"{verts.shape[0]} vertices, the neutral mesh has {neutral.shape[0]}")
            kept.append(name)
            arrays.append(verts[:num_vertices].astype(np.float32) - mean32)
        stacked = np.stack(arrays) if arrays else np.zeros((0, num_vertices, 3), np.float32)
        return kept, stacked

    _, id_basis = offsets([f"identity{i:03d}" for i in range(ICT_NUM_IDENTITIES)])
    exp_names, exp_basis = offsets(expressions)
    return FaceModel(
        mean=mean32, id_basis=id_basis, exp_basis=exp_basis, exp_names=exp_names,
        triangles=triangles, landmark_ids=lm68.astype(np.int32), units="cm", name="ict-face-area",
        exp_kind="blendshapes", jaw_right_ids=ICT_JAW_RIGHT_IDS, jaw_left_ids=ICT_JAW_LEFT_IDS,
    )


class _CerealReader:
    """Little-endian reader for cereal's portable binary archive as eos writes it."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise InputError(self.path, f"truncated cereal binary (wanted {n} bytes at offset {self.pos})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str) -> int:
        dt = np.dtype(fmt)
        return int(np.frombuffer(self.take(dt.itemsize), dtype=dt)[0])

    def size(self) -> int:
        return self.scalar("<u8")

    def string(self) -> str:
        return self.take(self.size()).decode("utf-8", errors="replace")

    def matrix(self) -> np.ndarray:
        """An Eigen matrix: int32 rows, int32 cols, float32 values column-major."""
        rows, cols = self.scalar("<i4"), self.scalar("<i4")
        if rows < 0 or cols < 0 or rows * cols > 10**9:
            raise InputError(self.path, f"bad matrix size {rows}x{cols} at offset {self.pos - 8}")
        values = np.frombuffer(self.take(4 * rows * cols), dtype="<f4")
        return values.reshape(cols, rows).T.copy()

    def triangles(self) -> np.ndarray:
        n = self.size()
        if n > 10**8:
            raise InputError(self.path, f"bad triangle count {n}")
        return np.frombuffer(self.take(12 * n), dtype="<i4").reshape(n, 3).copy()


def read_sfm_ibug_mapping(path: str | os.PathLike) -> np.ndarray:
    """(68,) vertex ids from eos' ``ibug_to_sfm.txt`` (TOML ``[landmark_mappings]``, 1-based iBUG -> vertex); -1 unmapped."""
    import tomllib

    path = Path(path)
    try:
        table = tomllib.loads(path.read_text())["landmark_mappings"]
        ids = np.full(NUM_LANDMARKS, -1, dtype=np.int32)
        for key, vertex in table.items():
            point = int(key)
            if not 1 <= point <= NUM_LANDMARKS:
                raise ValueError(f"iBUG point {point} out of 1..68")
            ids[point - 1] = int(vertex)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (ValueError, KeyError, TypeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(path, f"not an eos landmark mapping ({exc.__class__.__name__}: {exc})") from None
    return ids


def load_sfm(model_path: str | os.PathLike, blendshapes_path: str | os.PathLike | None = None,
             mapping_path: str | os.PathLike | None = None) -> FaceModel:
    """The Surrey Face Model from eos' files: ``model_path`` is the shape ``.bin`` or a folder with
    ``sfm_shape_*.bin``, ``expression_blendshapes_*.bin`` and ``ibug_to_sfm.txt``.

    Identity modes are the orthonormal PCA basis scaled by sqrt(eigenvalue) (eos stores variances),
    so the prior is N(0, 1). Units: millimetres. 50 of the 68 iBUG points are mapped.
    """
    model_path = Path(model_path)
    folder = model_path if model_path.is_dir() else model_path.parent
    if model_path.is_dir():
        found = sorted(model_path.glob("sfm_shape_*.bin"))
        if not found:
            raise InputError(model_path, "no sfm_shape_*.bin in this folder")
        model_path = found[0]
    suffix = model_path.stem.replace("sfm_shape_", "")
    if blendshapes_path is None:
        candidate = folder / f"expression_blendshapes_{suffix}.bin"
        blendshapes_path = candidate if candidate.exists() else None
    if mapping_path is None:
        candidate = folder / "ibug_to_sfm.txt"
        mapping_path = candidate if candidate.exists() else None
    try:
        data = model_path.read_bytes()
    except FileNotFoundError:
        raise InputError(model_path, "file not found") from None
    reader = _CerealReader(data, model_path)
    version = reader.scalar("<u4")
    if version > 10:
        raise InputError(model_path, f"not an eos morphable model (version field {version})")
    mean = reader.matrix()
    basis = reader.matrix()
    eigenvalues = reader.matrix().reshape(-1)
    triangles = reader.triangles()
    n = mean.shape[0]
    if mean.shape[1] != 1 or n % 3 or basis.shape[0] != n or basis.shape[1] != eigenvalues.size:
        raise InputError(model_path, f"inconsistent shape model (mean {mean.shape}, basis {basis.shape}, "
                                     f"eigenvalues {eigenvalues.shape})")
    v = n // 3
    id_basis = (basis * np.sqrt(np.maximum(eigenvalues, 0.0))[None, :]).T.reshape(-1, v, 3)
    exp_names: list[str] = []
    exp_basis = np.zeros((0, v, 3), np.float32)
    if blendshapes_path is not None:
        exp_names, exp_basis = _read_sfm_blendshapes(Path(blendshapes_path), v)
    landmark_ids = read_sfm_ibug_mapping(mapping_path) if mapping_path else np.full(NUM_LANDMARKS, -1, np.int32)
    try:
        return FaceModel(mean=mean.reshape(v, 3), id_basis=id_basis, exp_basis=exp_basis, exp_names=exp_names,
                         triangles=triangles, landmark_ids=landmark_ids, units="mm", name=f"sfm-{suffix}",
                         exp_kind="blendshapes")
    except ValueError as exc:
        raise InputError(model_path, f"inconsistent Surrey Face Model ({exc})") from None


def _read_sfm_blendshapes(path: Path, num_vertices: int) -> tuple[list[str], np.ndarray]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    reader = _CerealReader(data, path)
    count = reader.size()
    if count > 10000:
        raise InputError(path, f"not an eos blendshapes file (count field {count})")
    names, offsets = [], []
    for _ in range(count):
        names.append(reader.string())
        offset = reader.matrix().reshape(-1)
        if offset.size != 3 * num_vertices:
            raise InputError(path, f"blendshape {names[-1]!r} has {offset.size // 3} vertices, the model {num_vertices}")
        offsets.append(offset.reshape(num_vertices, 3))
    return names, np.stack(offsets) if offsets else np.zeros((0, num_vertices, 3), np.float32)


def read_mat(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a MATLAB 5 ``.mat`` file (local or ``s3://``) into a dict of arrays (no ``__`` keys):
    BFM model files here, the labelled datasets' annotations in :mod:`facepgn.labelled`."""
    import scipy.io

    from facepgn import storage

    path = str(path)
    data = storage.read_nonempty(path, "a MATLAB .mat file")
    try:
        mat = scipy.io.loadmat(io.BytesIO(data))
    except NotImplementedError:
        raise InputError(path, "MATLAB v7.3 (HDF5) .mat files are not supported; save as -v7") from None
    except Exception as exc:  # noqa: BLE001 - scipy raises ValueError/TypeError/struct.error on corrupt files
        raise InputError(path, f"not a readable MATLAB .mat file ({type(exc).__name__})") from None
    return {k: v for k, v in mat.items() if not k.startswith("__")}


def load_bfm(model_path: str | os.PathLike, expression_path: str | os.PathLike | None = None,
             landmark_ids: np.ndarray | None = None) -> FaceModel:
    """The Basel Face Model 2009 layout (``01_MorphableModel.mat``) plus an optional expression basis.

    Shape file (MATLAB 5 .mat): ``shapeMU`` (3V, 1), ``shapePC`` (3V, K) unit-norm components,
    ``shapeEV`` (K, 1) their standard deviations, ``tl`` (F, 3) 1-based triangles; optional
    ``kpt_ind`` (68,) 1-based landmark vertex ids (face3d's ``BFM.mat`` keeps them this way).
    Identity modes = shapePC * shapeEV, so the prior is N(0, 1) (AFLW/300W-LP ``Shape_Para`` are
    unscaled: divide them by shapeEV).

    Expression file (3DDFA ``Model_Expression.mat``): ``mu_exp`` (3V, 1) added to the mean,
    ``w_exp`` (3V, E), optional ``sigma_exp`` (E, 1) multiplied in when present. Without
    ``sigma_exp`` the coefficients are 3DDFA's ``Exp_Para``. ``exp_kind`` is "pca".

    Units: micrometres ("um"); AFLW2000-3D's ``Pose_Para`` scale of ~1.6e-3 px/unit on 450 px
    images agrees (a ~150 mm face spans ~240 px).
    """
    model_path = Path(model_path)
    mat = read_mat(model_path)
    missing = [k for k in ("shapeMU", "shapePC", "shapeEV", "tl") if k not in mat]
    if missing:
        raise InputError(model_path, f"not a BFM 2009 model file (no {', '.join(missing)})")
    mu = np.asarray(mat["shapeMU"], dtype=np.float64).reshape(-1)
    pc = np.asarray(mat["shapePC"], dtype=np.float64)
    ev = np.asarray(mat["shapeEV"], dtype=np.float64).reshape(-1)
    if mu.size % 3 or pc.shape != (mu.size, ev.size):
        raise InputError(model_path, f"inconsistent BFM arrays (shapeMU {mu.size}, shapePC {pc.shape}, shapeEV {ev.size})")
    v = mu.size // 3
    id_basis = (pc * ev[None, :]).T.reshape(-1, v, 3)
    triangles = np.asarray(mat["tl"], dtype=np.int64).reshape(-1, 3) - 1
    if landmark_ids is None:
        if "kpt_ind" in mat:
            landmark_ids = np.asarray(mat["kpt_ind"], dtype=np.int64).reshape(-1) - 1
        else:
            landmark_ids = np.full(NUM_LANDMARKS, -1, dtype=np.int64)
    exp_basis = np.zeros((0, v, 3))
    exp_names: list[str] = []
    if expression_path is not None:
        expression_path = Path(expression_path)
        emat = read_mat(expression_path)
        if "w_exp" not in emat:
            raise InputError(expression_path, "not a 3DDFA expression model (no w_exp)")
        w_exp = np.asarray(emat["w_exp"], dtype=np.float64)
        if w_exp.shape[0] != mu.size:
            raise InputError(expression_path, f"w_exp has {w_exp.shape[0] // 3} vertices, the shape model {v}")
        if "sigma_exp" in emat:
            w_exp = w_exp * np.asarray(emat["sigma_exp"], dtype=np.float64).reshape(1, -1)
        if "mu_exp" in emat:
            mu = mu + np.asarray(emat["mu_exp"], dtype=np.float64).reshape(-1)
        exp_basis = w_exp.T.reshape(-1, v, 3)
        exp_names = [f"exp{i:02d}" for i in range(exp_basis.shape[0])]
    try:
        return FaceModel(mean=mu.reshape(v, 3), id_basis=id_basis, exp_basis=exp_basis, exp_names=exp_names,
                         triangles=triangles, landmark_ids=landmark_ids, units="um", name="bfm2009",
                         exp_kind="pca")
    except ValueError as exc:
        raise InputError(model_path, f"inconsistent BFM model ({exc})") from None


def open_face_model(path: str | os.PathLike, **kwargs: Any) -> FaceModel:
    """Load a face model in any supported layout, detected from the path:

    canonical or shared-ICT ``.npz``; an ICT-FaceKit FaceXModel folder (``vertex_indices.json``);
    a Surrey Face Model folder or ``.bin``; a BFM 2009 ``.mat`` (``expression_path=`` optional).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(path, "face model file or folder not found")
    if path.is_dir():
        if (path / "vertex_indices.json").exists():
            return convert_ict_upstream(path, **kwargs)
        if any(path.glob("sfm_shape_*.bin")):
            return load_sfm(path, **kwargs)
        raise InputError(path, "folder is neither an ICT-FaceKit FaceXModel folder nor a Surrey Face Model folder")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return read_face_model_npz(path)
    if suffix == ".bin":
        return load_sfm(path, **kwargs)
    if suffix == ".mat":
        return load_bfm(path, **kwargs)
    raise InputError(path, f"unknown face model format {suffix or '(no extension)'}: expected .npz, .bin, .mat or a folder")
