"""The linear 3D face model (3DMM): mean shape + identity modes + expression blendshapes.

One class, :class:`FaceModel`, for every source model (ICT-FaceKit, Surrey Face Model, Basel Face
Model 2009), and one canonical file format (``save`` / :func:`load_face_model`): an ``.npz`` with
``facepgn_format = 1`` and the arrays named like the attributes. :func:`load_face_model` also reads
the shared ``ict_face_area.npz`` layout (no version field; ``lm68`` instead of ``landmark_ids``).
The importers of the source models' own layouts are in :mod:`facepgn.facemodel_loaders`
(their names, e.g. ``open_face_model``, still import from here).

Conventions: model frame +y up, +z towards the viewer (see :mod:`facepgn.geometry`). Identity
coefficients have prior N(0, 1) per mode (modes are scaled by their standard deviation);
expression weights of blendshape models (``exp_kind == "blendshapes"``) lie in [0, 1], those of
PCA expression models (``"pca"``) have prior N(0, 1).
"""

from __future__ import annotations

import dataclasses
import io
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facepgn.errors import InputError
from facepgn.meshio import read_obj  # noqa: F401  (facepgn.teachers imports it from here)

FORMAT_VERSION = 1
NUM_LANDMARKS = 68

#: ICT-FaceKit's pose-dependent jawline substitutes (0-indexed vertex ids, published upstream):
#: when the head turns, the visible silhouette replaces the jawline landmarks on the far side.
ICT_JAW_RIGHT_IDS = np.array([1278, 1272, 12, 1834, 243, 781, 2199, 1447], dtype=np.int32)  # points 0-7
ICT_JAW_LEFT_IDS = np.array([3661, 4390, 3022, 2484, 4036, 2253, 3490, 3496], dtype=np.int32)  # points 9-16


#: Named 68-landmark definitions (which vertex stands for each iBUG point). ``upstream``: as the
#: face model publishes them; ``jaw-substitutes``: ICT's jawline substitutes for points 0-7 and
#: 9-16; ``calibrated``: vertex ids chosen once on the 503 AFLW2000-3D dev images
#: (``bench/calibrate_landmarks.py``, stored in ``facepgn/data/landmarks-<model name>.txt``);
#: ``auto``: calibrated where the model has such a file, else upstream.
LANDMARK_DEFINITIONS = ("auto", "upstream", "jaw-substitutes", "calibrated")


def resolve_landmark_definition(model: "FaceModel", definition: str) -> str:
    """The definition ``definition`` names for ``model`` (``auto`` -> ``calibrated`` where the model
    has calibrated ids, else ``upstream``): what records write in ``landmark_definition``."""
    if definition == "auto":
        return "calibrated" if calibrated_landmark_ids(model) is not None else "upstream"
    return definition


def calibrated_landmark_ids(model: "FaceModel") -> np.ndarray | None:
    """The calibrated 68 vertex ids shipped for ``model.name`` (None when there is none)."""
    from importlib import resources

    try:
        text = resources.files("facepgn.data").joinpath(f"landmarks-{model.name}.txt").read_text()
    except (FileNotFoundError, ModuleNotFoundError):
        return None
    ids = np.array([int(tok) for line in text.splitlines() if not line.lstrip().startswith("#") for tok in line.split()], dtype=np.int32)
    if ids.shape != (NUM_LANDMARKS,) or ids.max() >= model.num_vertices:
        raise ValueError(f"calibrated landmarks for {model.name}: expected 68 vertex ids below {model.num_vertices}")
    return ids


@dataclass(eq=False)
class FaceModel:
    """A linear face model. Arrays are float32 / int32 numpy, read-only once built.

    ``vertices = mean + id_coeffs @ id_basis + exp_coeffs @ exp_basis`` (over the mode axis).
    """

    mean: np.ndarray  # (V, 3)
    id_basis: np.ndarray  # (K, V, 3)
    exp_basis: np.ndarray  # (E, V, 3)
    exp_names: list[str]
    triangles: np.ndarray  # (F, 3) int32
    landmark_ids: np.ndarray  # (68,) int32, -1 where the model has no such landmark
    units: str = "cm"
    name: str = "face-model"
    exp_kind: str = "blendshapes"  # or "pca"
    jaw_right_ids: np.ndarray | None = None  # (8,) substitutes for landmarks 0-7, or None
    jaw_left_ids: np.ndarray | None = None  # (8,) substitutes for landmarks 9-16, or None
    _cache: dict = field(default_factory=dict, repr=False, init=False)  # flattened numpy/torch arrays, per device/dtype
    _lock: Any = field(default_factory=threading.Lock, repr=False, init=False)

    def __post_init__(self) -> None:
        self.mean = _ro(np.asarray(self.mean, dtype=np.float32))
        v = self.mean.shape[0]
        self.id_basis = _ro(np.asarray(self.id_basis, dtype=np.float32).reshape(-1, v, 3))
        self.exp_basis = _ro(np.asarray(self.exp_basis, dtype=np.float32).reshape(-1, v, 3))
        self.exp_names = [str(n) for n in self.exp_names]
        self.triangles = _ro(np.asarray(self.triangles, dtype=np.int32).reshape(-1, 3))
        self.landmark_ids = _ro(np.asarray(self.landmark_ids, dtype=np.int32).reshape(-1))
        for attr in ("jaw_right_ids", "jaw_left_ids"):
            val = getattr(self, attr)
            if val is not None:
                setattr(self, attr, _ro(np.asarray(val, dtype=np.int32).reshape(-1)))
        self.validate()

    # -- shape ----------------------------------------------------------------------------------

    @property
    def num_vertices(self) -> int:
        return int(self.mean.shape[0])

    @property
    def num_id(self) -> int:
        return int(self.id_basis.shape[0])

    @property
    def num_exp(self) -> int:
        return int(self.exp_basis.shape[0])

    @property
    def landmark_mask(self) -> np.ndarray:
        """(68,) bool: which of the 68 iBUG landmarks this model defines."""
        return self.landmark_ids >= 0

    def validate(self) -> None:
        """Raise ``ValueError`` if the arrays are inconsistent."""
        v = self.num_vertices
        if self.mean.ndim != 2 or self.mean.shape[1] != 3 or v == 0:
            raise ValueError(f"mean must be (V, 3), got {self.mean.shape}")
        if len(self.exp_names) != self.num_exp:
            raise ValueError(f"{len(self.exp_names)} expression names for {self.num_exp} expressions")
        if self.landmark_ids.shape != (NUM_LANDMARKS,):
            raise ValueError(f"landmark_ids must be (68,), got {self.landmark_ids.shape}")
        if self.landmark_ids.max() >= v or self.landmark_ids.min() < -1:
            raise ValueError("landmark_ids out of range")
        if self.triangles.size and (self.triangles.min() < 0 or self.triangles.max() >= v):
            raise ValueError("triangles index vertices out of range")
        for ids in (self.jaw_right_ids, self.jaw_left_ids):
            if ids is not None and (ids.shape != (8,) or ids.min() < 0 or ids.max() >= v):
                raise ValueError("jaw substitutes must be 8 valid vertex ids")
        if self.exp_kind not in ("blendshapes", "pca"):
            raise ValueError(f"exp_kind must be 'blendshapes' or 'pca', got {self.exp_kind!r}")

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "vertices": self.num_vertices,
            "identity_modes": self.num_id,
            "expressions": self.num_exp,
            "expression_kind": self.exp_kind,
            "triangles": int(self.triangles.shape[0]),
            "landmarks": int(self.landmark_mask.sum()),
            "units": self.units,
            "jaw_substitutes": self.jaw_right_ids is not None,
        }

    # -- evaluation -----------------------------------------------------------------------------

    def vertices(self, id_coeffs=None, exp_coeffs=None):
        """Mesh vertices (..., V, 3) for coefficients (..., K) and (..., E); numpy or torch.

        ``None`` means all zeros. Torch inputs may be batched and keep their autograd graph.
        """
        return self._evaluate(id_coeffs, exp_coeffs, landmarks_only=False)

    def landmarks(self, id_coeffs=None, exp_coeffs=None):
        """The 68 landmark vertices (..., 68, 3); rows of unmapped landmarks are 0 (see ``landmark_mask``).

        Only the landmark vertices are computed.
        """
        return self._evaluate(id_coeffs, exp_coeffs, landmarks_only=True)

    def _evaluate(self, id_coeffs, exp_coeffs, landmarks_only: bool):
        torch_in = _first_tensor(id_coeffs, exp_coeffs)
        if torch_in is None:
            return self._evaluate_numpy(id_coeffs, exp_coeffs, landmarks_only)
        mats = self.torch_arrays(torch_in.device, torch_in.dtype if torch_in.dtype.is_floating_point else None)
        prefix = "lm_" if landmarks_only else ""
        mean, id_b, exp_b = mats[prefix + "mean"], mats[prefix + "id"], mats[prefix + "exp"]
        batch = _batch_shape(id_coeffs, exp_coeffs, self.num_id, self.num_exp)
        out = mean.expand(*batch, mean.shape[-1])
        if id_coeffs is not None:
            out = out + _as_tensor(id_coeffs, mean) @ id_b
        if exp_coeffs is not None:
            out = out + _as_tensor(exp_coeffs, mean) @ exp_b
        return out.reshape(*batch, -1, 3)

    def _evaluate_numpy(self, id_coeffs, exp_coeffs, landmarks_only: bool) -> np.ndarray:
        arrays = self._numpy_flat(landmarks_only)
        batch = _batch_shape(id_coeffs, exp_coeffs, self.num_id, self.num_exp)
        out = np.broadcast_to(arrays["mean"], (*batch, arrays["mean"].shape[-1])).astype(np.float32)
        if id_coeffs is not None:
            out = out + np.asarray(id_coeffs, dtype=np.float32) @ arrays["id"]
        if exp_coeffs is not None:
            out = out + np.asarray(exp_coeffs, dtype=np.float32) @ arrays["exp"]
        return out.reshape(*batch, -1, 3)

    def _numpy_flat(self, landmarks_only: bool) -> dict[str, np.ndarray]:
        key = ("numpy", landmarks_only)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        if landmarks_only:
            ids = np.maximum(self.landmark_ids, 0)
            keep = self.landmark_mask[:, None].astype(np.float32)
            mean = self.mean[ids] * keep
            id_b = self.id_basis[:, ids] * keep
            exp_b = self.exp_basis[:, ids] * keep
        else:
            mean, id_b, exp_b = self.mean, self.id_basis, self.exp_basis
        flat = {
            "mean": np.ascontiguousarray(mean.reshape(-1)),
            "id": np.ascontiguousarray(id_b.reshape(self.num_id, -1)),
            "exp": np.ascontiguousarray(exp_b.reshape(self.num_exp, -1)),
        }
        with self._lock:
            self._cache[key] = flat
        return flat

    def torch_arrays(self, device=None, dtype=None) -> dict[str, Any]:
        """Flattened torch copies on ``device``/``dtype`` (cached): ``mean`` (V*3,), ``id`` (K, V*3),
        ``exp`` (E, V*3), the same with an ``lm_`` prefix for the 68 landmarks, ``triangles`` (F, 3)
        long, ``landmark_ids`` (68,) long and ``landmark_mask`` (68,) bool."""
        import torch

        device = torch.device(device if device is not None else "cpu")
        dtype = dtype or torch.float32
        key = ("torch", str(device), dtype)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        full, lm = self._numpy_flat(False), self._numpy_flat(True)
        out = {}
        for prefix, arrays in (("", full), ("lm_", lm)):
            for name, arr in arrays.items():
                out[prefix + name] = torch.from_numpy(arr.copy()).to(device=device, dtype=dtype)
        out["triangles"] = torch.from_numpy(self.triangles.astype(np.int64)).to(device)
        out["landmark_ids"] = torch.from_numpy(self.landmark_ids.astype(np.int64)).to(device)
        out["landmark_mask"] = torch.from_numpy(self.landmark_mask.copy()).to(device)
        with self._lock:
            self._cache[key] = out
        return out

    # -- derived models -------------------------------------------------------------------------

    def truncated(self, n_id: int | None = None, n_exp: int | None = None,
                  exp_names: list[str] | None = None) -> "FaceModel":
        """A smaller model: the first ``n_id`` identity modes and ``n_exp`` expressions.

        Identity modes are PCA-ordered, so the first ones are kept. Expressions: ``exp_names`` picks
        them by name; else PCA expressions keep the first ``n_exp``; blendshapes (not ordered by
        importance, e.g. ICT's alphabetical ARKit set) keep the ``n_exp`` that move the mapped
        landmarks most (RMS), in their original order.
        """
        n_id = self.num_id if n_id is None else int(n_id)
        if not 0 <= n_id <= self.num_id:
            raise ValueError(f"n_id={n_id}: model has {self.num_id} identity modes")
        if exp_names is not None:
            unknown = [n for n in exp_names if n not in self.exp_names]
            if unknown:
                raise ValueError(f"unknown expressions {unknown}")
            keep = [self.exp_names.index(n) for n in exp_names]
        else:
            n_exp = self.num_exp if n_exp is None else int(n_exp)
            if not 0 <= n_exp <= self.num_exp:
                raise ValueError(f"n_exp={n_exp}: model has {self.num_exp} expressions")
            if self.exp_kind == "pca" or n_exp == self.num_exp:
                keep = list(range(n_exp))
            else:
                keep = sorted(self.expressions_by_landmark_motion()[:n_exp])
        return dataclasses.replace(self, id_basis=self.id_basis[:n_id], exp_basis=self.exp_basis[keep],
                                   exp_names=[self.exp_names[i] for i in keep])

    def using_jaw_substitutes(self, right: bool = True, left: bool = True) -> "FaceModel":
        """The same model with landmarks 0-7 (right) and/or 9-16 (left) moved to the published jaw
        substitutes (ICT). Measured on the 503 shared AFLW2000-3D faces (ICT mean face fitted to
        ``pt3d_68`` on the non-jaw points): the substitutes sit closer to the labelled jawline on
        both sides at every yaw, e.g. mean 2D jaw error 25.6 -> 16.3 px (right) and 27.1 -> 19.1 px
        (left) for yaw > 35 degrees, 13.6 -> 11.3 and 15.5 -> 13.3 px for 0 < yaw < 20 degrees."""
        if self.jaw_right_ids is None or self.jaw_left_ids is None:
            raise ValueError(f"{self.name} has no jaw substitutes")
        ids = self.landmark_ids.copy()
        if right:
            ids[0:8] = self.jaw_right_ids
        if left:
            ids[9:17] = self.jaw_left_ids
        return self.with_landmark_ids(ids)

    def with_landmarks(self, definition: str) -> "FaceModel":
        """The same model with the 68 landmark vertices of a named definition (see
        :data:`LANDMARK_DEFINITIONS`). Apply it after :meth:`truncated`: the blendshape subset that
        ``truncated`` keeps is chosen by landmark motion and must not depend on the definition."""
        if definition not in LANDMARK_DEFINITIONS:
            raise ValueError(f"unknown landmark definition {definition!r} (known: {', '.join(LANDMARK_DEFINITIONS)})")
        definition = resolve_landmark_definition(self, definition)
        if definition == "upstream":
            return self
        if definition == "jaw-substitutes":
            return self.using_jaw_substitutes()
        ids = calibrated_landmark_ids(self)
        if ids is None:
            raise ValueError(f"no calibrated landmark definition for face model {self.name!r} (facepgn/data/landmarks-{self.name}.txt)")
        return self.with_landmark_ids(ids)

    def with_landmark_ids(self, ids: np.ndarray) -> "FaceModel":
        """The same model (arrays shared) with other landmark vertex ids."""
        return dataclasses.replace(self, landmark_ids=ids)

    def expressions_by_landmark_motion(self) -> list[int]:
        """Expression indices sorted by how much they move the mapped landmarks (RMS), largest first."""
        ids = self.landmark_ids[self.landmark_mask]
        motion = np.sqrt((self.exp_basis[:, ids] ** 2).sum(-1).mean(-1)) if ids.size else np.zeros(self.num_exp)
        return [int(i) for i in np.argsort(-motion, kind="stable")]

    # -- file -----------------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "facepgn_format": np.array(FORMAT_VERSION, dtype=np.int32),
            "name": np.array(self.name),
            "units": np.array(self.units),
            "exp_kind": np.array(self.exp_kind),
            "mean": self.mean,
            "id_basis": self.id_basis,
            "exp_basis": self.exp_basis,
            "exp_names": np.array(self.exp_names, dtype=str).reshape(-1),
            "triangles": self.triangles,
            "landmark_ids": self.landmark_ids,
        }
        if self.jaw_right_ids is not None:
            arrays["jaw_right_ids"] = self.jaw_right_ids
        if self.jaw_left_ids is not None:
            arrays["jaw_left_ids"] = self.jaw_left_ids
        return arrays

    def save(self, path: str | os.PathLike, compress: bool = True) -> None:
        """Write the canonical ``.npz`` atomically (local path or ``s3://``)."""
        from facepgn import storage

        buf = io.BytesIO()
        (np.savez_compressed if compress else np.savez)(buf, **self.to_arrays())
        storage.atomic_write_bytes(str(path), buf.getvalue())

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = {}
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

_CACHE: dict[tuple, FaceModel] = {}
_CACHE_LOCK = threading.Lock()


def load_face_model(path: str | os.PathLike | None = None) -> FaceModel:
    """Load a face model file: the canonical ``.npz`` or the shared ICT ``.npz`` layout.

    ``path=None`` resolves the default through ``facepgn.paths.resolve_asset("face_model")``
    (config / ``FACEPGN_FACE_MODEL`` / shared folder / user cache). Results are cached per file
    (path, size, mtime); the arrays are read-only, so sharing is safe.
    """
    from facepgn.paths import resolve_asset

    if path is not None and not Path(path).expanduser().exists():
        raise InputError(Path(path).expanduser(), "face model file not found")
    resolved = Path(resolve_asset("face_model", path))
    try:
        st = resolved.stat()
    except OSError as exc:
        raise InputError(resolved, f"cannot read face model ({exc.strerror or exc})") from None
    key = (str(resolved.resolve()), st.st_size, st.st_mtime_ns)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached
    model = read_face_model_npz(resolved)
    with _CACHE_LOCK:
        _CACHE[key] = model
    return model


def read_face_model_npz(path: str | os.PathLike) -> FaceModel:
    """Read a canonical or shared-ICT-layout ``.npz`` (no caching, no path resolution)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise InputError(path, "face model file not found") from None
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(path, f"not a readable .npz face model ({exc.__class__.__name__}: {exc})") from None
    except Exception as exc:  # noqa: BLE001 - zipfile.BadZipFile and friends
        raise InputError(path, f"not a readable .npz face model ({exc.__class__.__name__})") from None
    return face_model_from_arrays(arrays, source=path)


def face_model_from_arrays(arrays: dict[str, np.ndarray], source: str | os.PathLike = "<arrays>") -> FaceModel:
    """Build a :class:`FaceModel` from canonical or shared-ICT-layout arrays; one-line errors."""
    if "facepgn_format" in arrays:
        version = int(arrays["facepgn_format"])
        if version != FORMAT_VERSION:
            raise InputError(source, f"face model format version {version} is not supported (expected {FORMAT_VERSION})")
        layout, landmarks = "face model", "landmark_ids"
        own = dict(units=str(arrays.get("units", "unknown")), name=str(arrays.get("name", Path(str(source)).stem)),
                   exp_kind=str(arrays.get("exp_kind", "blendshapes")),
                   jaw_right_ids=arrays.get("jaw_right_ids"), jaw_left_ids=arrays.get("jaw_left_ids"))
    elif "lm68" in arrays and "mean" in arrays:
        layout, landmarks = "ICT face model", "lm68"
        own = dict(units="cm", name="ict-face-area", exp_kind="blendshapes",
                   jaw_right_ids=ICT_JAW_RIGHT_IDS, jaw_left_ids=ICT_JAW_LEFT_IDS)
    else:
        raise InputError(source, "not a face model .npz (no facepgn_format or lm68/mean arrays)")
    missing = [k for k in ("mean", "id_basis", "exp_basis", "exp_names", "triangles", landmarks) if k not in arrays]
    if missing:
        raise InputError(source, f"{layout} file lacks {', '.join(missing)}")
    try:
        return FaceModel(mean=arrays["mean"], id_basis=arrays["id_basis"], exp_basis=arrays["exp_basis"],
                         exp_names=list(arrays["exp_names"].reshape(-1)), triangles=arrays["triangles"],
                         landmark_ids=arrays[landmarks], **own)
    except (ValueError, IndexError, TypeError) as exc:
        raise InputError(source, f"inconsistent face model arrays ({exc})") from None


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _ro(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    if a.flags.writeable:
        a = a.copy() if a.base is not None else a
        a.flags.writeable = False
    return a


def _first_tensor(*values):
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    return None


def _batch_shape(id_coeffs, exp_coeffs, n_id: int, n_exp: int) -> tuple[int, ...]:
    shapes = []
    for coeffs, n, what in ((id_coeffs, n_id, "identity"), (exp_coeffs, n_exp, "expression")):
        if coeffs is None:
            continue
        shape = tuple(coeffs.shape)
        if not shape or shape[-1] != n:
            raise ValueError(f"{what} coefficients have shape {shape}; the model has {n} {what} modes")
        shapes.append(shape[:-1])
    if not shapes:
        return ()
    return tuple(np.broadcast_shapes(*shapes))


def _as_tensor(coeffs, like):
    import torch

    if isinstance(coeffs, torch.Tensor):
        return coeffs.to(device=like.device, dtype=like.dtype)
    return torch.as_tensor(np.asarray(coeffs), device=like.device, dtype=like.dtype)


# ----------------------------------------------------------------------------------------------
# The importers of other layouts live in facepgn.facemodel_loaders; their names are kept here.
# ----------------------------------------------------------------------------------------------

_LOADER_NAMES = ("ICT_FACE_AREA_VERTICES", "ICT_NUM_IDENTITIES", "convert_ict_upstream", "load_bfm", "load_sfm",
                 "open_face_model", "read_mat", "read_sfm_ibug_mapping")


def __getattr__(name: str) -> Any:
    """``facepgn.facemodel.load_sfm`` and the other importers (imported on first use: they need this module)."""
    if name in _LOADER_NAMES:
        from facepgn import facemodel_loaders

        return getattr(facemodel_loaders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
