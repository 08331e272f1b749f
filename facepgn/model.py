"""The full reconstruction model: PGN + coefficient regressor + closed-form pose.

``FaceReconstructor.forward(images)`` runs

1. the coefficient regressor (``facepgn.nets.regressor``): identity and expression coefficients of
   a truncated face model (``ModelConfig.num_id`` / ``num_exp`` modes);
2. the Pose Guidance Network (``facepgn.nets.pgn``): the 68 landmarks in 3D, in crop pixels;
3. the pose in closed form: the face model's 68 landmark vertices (from the predicted coefficients)
   are fitted to the PGN's landmarks with the differentiable weighted similarity fit
   (``facepgn.geometry.fit_pose``; weights = landmark mask x PGN confidence). Gradients of any loss on
   the posed mesh reach both networks through the fit.

With ``ModelConfig.pose = "direct"`` the PGN is absent and the regressor also predicts the pose
(3DDFA style: log-scale, 6D rotation, x/y translation) -- the baseline the paper improves on.

The geometry (face model reconstruction, fit, projection) always runs in float32, also under
autocast. The truncated face model is stored as buffers, so a model file is standalone.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, TypedDict

import numpy as np
import torch
from torch import nn

from facepgn import geometry
from facepgn.config import ModelConfig
from facepgn.errors import FacepgnError, InputError
from facepgn.nets.pgn import PoseGuidanceNetwork
from facepgn.nets.regressor import CoefficientRegressor, rotation_from_6d

MODEL_FILE_FORMAT = "facepgn.model/1"

_POSE_KEYS = ("id_coeffs", "exp_coeffs", "scale", "rotation", "translation")

# buffers that hold the (truncated) face model inside the module
FACE_BUFFERS = ("fm_mean", "fm_id_basis", "fm_exp_basis", "fm_triangles", "fm_landmark_ids", "fm_landmark_mask")


class NetOutputs(TypedDict, total=False):
    """What the networks predict (``FaceReconstructor.networks``; the ONNX file's outputs): no geometry."""

    id_coeffs: torch.Tensor  # (B, num_id) identity coefficients
    exp_coeffs: torch.Tensor  # (B, num_exp) expression coefficients
    pose_params: torch.Tensor  # (B, 9) pose="direct" only: log-scale, 6D rotation, x/y translation
    landmarks_3d: torch.Tensor  # (B, 68, 3) PGN landmarks, crop pixels (z towards the camera)
    landmark_confidence: torch.Tensor  # (B, 68) PGN confidence in [0, 1]
    heatmaps: torch.Tensor  # (B, 68, h, w) PGN heatmap probabilities (not in ONNX outputs)


class Reconstruction(TypedDict, total=False):
    """The model's output (``FaceReconstructor.forward`` = ``solve(networks(images))``), crop pixels."""

    id_coeffs: torch.Tensor  # (B, num_id)
    exp_coeffs: torch.Tensor  # (B, num_exp)
    scale: torch.Tensor  # (B,) weak-perspective scale
    rotation: torch.Tensor  # (B, 3, 3)
    translation: torch.Tensor  # (B, 3)
    model_landmarks: torch.Tensor  # (B, 68, 3) landmark vertices in the face-model frame
    mesh_landmarks: torch.Tensor  # (B, 68, 3) the posed mesh's landmarks (the headline prediction)
    landmark_mask: torch.Tensor  # (B, 68) 1 where the face model has the landmark
    landmarks_3d: torch.Tensor  # (B, 68, 3) the PGN's landmarks (direct pose: the mesh's)
    landmark_confidence: torch.Tensor  # (B, 68)
    heatmaps: torch.Tensor  # (B, 68, h, w), PGN only


#: the networks' tensors an exported ONNX file carries, in order (regressor keys, then the PGN's)
def network_output_keys(pose: str) -> tuple[str, ...]:
    regressor = ("exp_coeffs", "id_coeffs") + (("pose_params",) if pose == "direct" else ())
    return regressor + (("landmarks_3d", "landmark_confidence") if pose == "pgn" else ())


def _no_autocast(device_type: str):
    return torch.autocast(device_type=device_type, enabled=False)


class FaceReconstructor(nn.Module):
    # the truncated face model, as buffers (saved in the model file; declared for the type checker)
    fm_mean: torch.Tensor
    fm_id_basis: torch.Tensor
    fm_exp_basis: torch.Tensor
    fm_triangles: torch.Tensor
    fm_landmark_ids: torch.Tensor
    fm_landmark_mask: torch.Tensor
    fm_normal_sign: torch.Tensor
    fm_mean_normals: torch.Tensor
    reference_scale: torch.Tensor
    pgn: PoseGuidanceNetwork | None

    def __init__(self, cfg: ModelConfig, face_arrays: Mapping[str, np.ndarray | torch.Tensor], face_model_name: str = ""):
        super().__init__()
        self.cfg = cfg
        self.face_model_name = face_model_name
        self.input_size = cfg.input_size
        mean = torch.tensor(np.asarray(face_arrays["mean"]), dtype=torch.float32)
        id_basis = torch.tensor(np.asarray(face_arrays["id_basis"]), dtype=torch.float32)[: cfg.num_id]
        exp_basis = torch.tensor(np.asarray(face_arrays["exp_basis"]), dtype=torch.float32)[: cfg.num_exp]
        if id_basis.shape[0] != cfg.num_id or exp_basis.shape[0] != cfg.num_exp:
            raise FacepgnError(
                f"face model has {id_basis.shape[0]} identity / {exp_basis.shape[0]} expression modes, "
                f"the model config asks for {cfg.num_id} / {cfg.num_exp}"
            )
        lm_ids = torch.tensor(np.asarray(face_arrays["landmark_ids"]), dtype=torch.long)
        lm_mask = face_arrays.get("landmark_mask")
        lm_mask = (lm_ids >= 0) if lm_mask is None else torch.tensor(np.asarray(lm_mask)).bool() & (lm_ids >= 0)
        self.register_buffer("fm_mean", mean)
        self.register_buffer("fm_id_basis", id_basis)
        self.register_buffer("fm_exp_basis", exp_basis)
        self.register_buffer("fm_triangles", torch.tensor(np.asarray(face_arrays["triangles"]), dtype=torch.long))
        self.register_buffer("fm_landmark_ids", lm_ids)
        self.register_buffer("fm_landmark_mask", lm_mask.float())
        self.register_buffer("fm_normal_sign", torch.tensor(1.0))
        self.fm_normal_sign.fill_(self._outward_normal_sign())
        # the mean face's unit normals, for visibility (derived, so not saved)
        mean_normals = _vertex_normals(mean[None], self.fm_triangles)[0] * self.fm_normal_sign
        self.register_buffer("fm_mean_normals", mean_normals, persistent=False)

        self.regressor = CoefficientRegressor(cfg.num_id, cfg.num_exp, cfg.regressor_width, direct_pose=cfg.pose == "direct")
        self.pgn = PoseGuidanceNetwork(cfg.input_size, cfg.pgn_width, cfg.heatmap_stride) if cfg.pose == "pgn" else None
        # direct pose: the scale that makes the mean face's landmarks span ~60% of the crop
        lm = mean[lm_ids.clamp_min(0)][lm_mask]
        extent = float((lm[:, 0].max() - lm[:, 0].min()).clamp_min(1e-6))
        self.face_size = extent  # face-model units across the landmarks (normalises shape errors)
        self.register_buffer("reference_scale", torch.tensor(0.6 * cfg.input_size / extent))

    # ---- face model ------------------------------------------------------------------------

    @property
    def num_vertices(self) -> int:
        return int(self.fm_mean.shape[0])

    def model_vertices(self, id_coeffs: torch.Tensor, exp_coeffs: torch.Tensor, vertex_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Face-model-frame vertices (B, V, 3) (or only ``vertex_ids``) for the coefficients, float32."""
        mean, idb, expb = self.fm_mean, self.fm_id_basis, self.fm_exp_basis
        if vertex_ids is not None:
            mean, idb, expb = mean[vertex_ids], idb[:, vertex_ids], expb[:, vertex_ids]
        with _no_autocast(mean.device.type):
            out = mean + torch.einsum("bk,kvc->bvc", id_coeffs.float(), idb) + torch.einsum("be,evc->bvc", exp_coeffs.float(), expb)
        return out

    def model_landmarks(self, id_coeffs: torch.Tensor, exp_coeffs: torch.Tensor) -> torch.Tensor:
        """The 68 landmark vertices in the face-model frame (B, 68, 3); unmapped ones are the mean."""
        return self.model_vertices(id_coeffs, exp_coeffs, self.fm_landmark_ids.clamp_min(0))

    def _outward_normal_sign(self) -> float:
        """+1 if the triangles wind so that cross products point out of the face (towards +z)."""
        n = _vertex_normals(self.fm_mean[None], self.fm_triangles)[0]
        return 1.0 if float(n[:, 2].mean()) >= 0 else -1.0

    # ---- forward = solve(networks(images)) ---------------------------------------------------

    def forward(self, images: torch.Tensor) -> Reconstruction:
        """Images (B, 3, S, S) in [0, 1] -> the reconstruction: ``solve(networks(images))``."""
        return self.solve(self.networks(images))

    def networks(self, images: torch.Tensor) -> NetOutputs:
        """The two networks, no geometry: coefficients from the regressor and the PGN's landmarks
        (what the ONNX file holds). With ``cfg.mirror_test`` in eval mode the PGN also sees the
        mirrored crops, and its landmarks and confidences are averaged with the mirrored back ones
        (one batch of 2B; training never mirrors here, the augmentation does)."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != self.input_size or images.shape[3] != self.input_size:
            raise ValueError(f"expected images (B, 3, {self.input_size}, {self.input_size}), got {tuple(images.shape)}")
        out: NetOutputs = dict(self.regressor(images))  # type: ignore[assignment]
        if self.pgn is None:
            return out
        if self.cfg.mirror_test and not self.training:
            b = images.shape[0]
            both = self.pgn(torch.cat([images, images.flip(-1)]))
            lm, conf = both["landmarks_3d"].float(), both["landmark_confidence"].float()
            perm = torch.as_tensor(geometry.FLIP_PERMUTATION, device=lm.device)
            out["landmarks_3d"] = 0.5 * (lm[:b] + geometry.mirror_landmarks(lm[b:], self.input_size))
            out["landmark_confidence"] = 0.5 * (conf[:b] + conf[b:][:, perm])
            out["heatmaps"] = both["heatmaps"][:b]
        else:
            pgn = self.pgn(images)
            out["landmarks_3d"], out["landmark_confidence"], out["heatmaps"] = pgn["landmarks_3d"], pgn["landmark_confidence"], pgn["heatmaps"]
        return out

    def solve(self, net: NetOutputs) -> Reconstruction:
        """The geometry, float32 even under autocast: the face model's 68 landmark vertices from the
        coefficients, the pose in closed form (fitted to the PGN's landmarks, weighted by landmark
        mask x PGN confidence; or the regressed pose with ``pose="direct"``) and their projection."""
        with _no_autocast(net["id_coeffs"].device.type):
            id_c, exp_c = net["id_coeffs"].float(), net["exp_coeffs"].float()
            model_lm = self.model_landmarks(id_c, exp_c)
            mask = self.fm_landmark_mask.expand(model_lm.shape[:2])
            out: Reconstruction = {}
            if self.pgn is not None:
                lm3d = net["landmarks_3d"].float()
                conf = net["landmark_confidence"].float()
                floor = self.cfg.fit_weight_floor
                weights = mask * (floor + (1.0 - floor) * conf.detach())
                scale, rotation, translation = geometry.fit_pose(model_lm, lm3d, weights)
                out["landmarks_3d"], out["landmark_confidence"] = lm3d, conf
                if "heatmaps" in net:
                    out["heatmaps"] = net["heatmaps"]
                mesh_lm = geometry.project(model_lm, scale, rotation, translation)
            else:
                scale, rotation, translation = self._direct_pose(net["pose_params"].float(), model_lm, mask)
                mesh_lm = geometry.project(model_lm, scale, rotation, translation)
                out["landmarks_3d"], out["landmark_confidence"] = mesh_lm, mask.clone()
        out["id_coeffs"], out["exp_coeffs"] = id_c, exp_c
        out["scale"], out["rotation"], out["translation"] = scale, rotation, translation
        out["model_landmarks"], out["mesh_landmarks"], out["landmark_mask"] = model_lm, mesh_lm, mask
        return out

    def _direct_pose(self, params: torch.Tensor, model_lm: torch.Tensor, mask: torch.Tensor):
        s = self.reference_scale * torch.exp(params[:, 0].clamp(-3.0, 3.0))
        rotation = rotation_from_6d(params[:, 1:7])
        xy = self.input_size / 2.0 + params[:, 7:9] * self.input_size / 4.0
        # z translation: centre the landmarks' depth (the convention of landmarks_3d)
        rotated_z = (model_lm @ rotation.transpose(-1, -2))[..., 2] * s[:, None]
        tz = -(rotated_z * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
        return s, rotation, torch.cat([xy, tz[:, None]], dim=-1)

    # ---- helpers on outputs ----------------------------------------------------------------

    def mesh_vertices(self, outputs: Mapping[str, Any], vertex_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The posed mesh in crop pixels (B, V, 3) (or only ``vertex_ids``)."""
        verts = self.model_vertices(outputs["id_coeffs"], outputs["exp_coeffs"], vertex_ids)
        with _no_autocast(verts.device.type):
            return geometry.project(verts, outputs["scale"].float(), outputs["rotation"].float(), outputs["translation"].float())

    def vertex_visibility(
        self,
        outputs: Mapping[str, Any],
        vertex_ids: torch.Tensor | None = None,
        min_cos: float = 0.1,
        zbuffer: bool = True,
        projected: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Float mask (B, N) of visible vertices (all, or ``vertex_ids``), no gradient.

        Two tests: the rotated normal faces the camera (z > ``min_cos``; back faces and grazing
        silhouettes; the normals are the mean face's -- identity and expression barely turn them), and,
        with ``zbuffer``, a point z-buffer on 2-pixel cells over the same vertices: a vertex is hidden
        when another one in its cell is nearer the camera by more than 6% of the face size
        (self-occlusion, e.g. the nose at a large yaw). Cheap and batched; ``facepgn.render`` has the
        exact rasteriser. ``projected`` (B, N, 3): the posed vertices, if already computed.
        """
        with torch.no_grad():
            normals = self.fm_mean_normals if vertex_ids is None else self.fm_mean_normals[vertex_ids]
            rotation = outputs["rotation"].detach().float()
            visible = (normals @ rotation.transpose(-1, -2))[..., 2] > min_cos
            if zbuffer and projected is None and "scale" in outputs and "translation" in outputs:
                projected = self.mesh_vertices({k: v.detach() for k, v in outputs.items() if k in _POSE_KEYS}, vertex_ids)
            if zbuffer and projected is not None:
                tolerance = 0.06 * self.face_size * outputs["scale"].detach().float()
                visible &= _point_zbuffer(projected.detach().float(), 2.0, tolerance, self.input_size)
            return visible.float()

    def pose_angles(self, outputs: Mapping[str, Any]) -> torch.Tensor:
        """(pitch, yaw, roll) radians (B, 3), AFLW2000-3D ``Pose_Para`` convention."""
        return geometry.matrix_to_euler(outputs["rotation"].detach().float())

    def face_model(self):
        """The truncated face model the coefficients refer to, as a ``facepgn.facemodel.FaceModel``
        (for meshes, overlays and rendering outside the network)."""
        from facepgn.facemodel import FaceModel

        arrays = self.face_arrays()
        return FaceModel(
            mean=arrays["mean"], id_basis=arrays["id_basis"], exp_basis=arrays["exp_basis"],
            exp_names=[f"exp{i}" for i in range(arrays["exp_basis"].shape[0])], triangles=arrays["triangles"],
            landmark_ids=arrays["landmark_ids"], name=str(self.face_model_name or "face-model"),
        )

    def face_arrays(self) -> dict[str, np.ndarray]:
        """The truncated face model this network predicts coefficients for (numpy)."""
        return {
            "mean": self.fm_mean.cpu().numpy(),
            "id_basis": self.fm_id_basis.cpu().numpy(),
            "exp_basis": self.fm_exp_basis.cpu().numpy(),
            "triangles": self.fm_triangles.cpu().numpy().astype(np.int32),
            "landmark_ids": self.fm_landmark_ids.cpu().numpy().astype(np.int32),
            "landmark_mask": self.fm_landmark_mask.cpu().numpy().astype(bool),
        }


def _point_zbuffer(points: torch.Tensor, cell: float, tolerance: torch.Tensor, extent: int) -> torch.Tensor:
    """(B, V) bool: the point's z is within ``tolerance`` (B,) of the largest z in its image cell.

    The grid covers [-extent/2, 1.5 extent) in x and y (a fixed size, however wild early-training
    poses are); points beyond it fall into the border cells (they are outside the crop anyway)."""
    b, v, _ = points.shape
    n = int(np.ceil(2 * extent / cell))
    xi = torch.floor((points[..., 0] + extent / 2) / cell).clamp(0, n - 1).long()
    yi = torch.floor((points[..., 1] + extent / 2) / cell).clamp(0, n - 1).long()
    index = yi * n + xi
    z = points[..., 2]
    zmax = torch.full((b, n * n), -torch.inf, device=points.device, dtype=points.dtype)
    zmax.scatter_reduce_(1, index, z, reduce="amax")
    return z >= zmax.gather(1, index) - tolerance[:, None]


def _vertex_normals(verts: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals (B, V, 3) of meshes (B, V, 3)."""
    v0, v1, v2 = verts[:, triangles[:, 0]], verts[:, triangles[:, 1]], verts[:, triangles[:, 2]]
    face_n = torch.cross(v1 - v0, v2 - v0, dim=-1)
    normals = torch.zeros_like(verts)
    for k in range(3):
        normals.index_add_(1, triangles[:, k], face_n)
    return torch.nn.functional.normalize(normals, dim=-1)


# ---- building, saving, loading -------------------------------------------------------------


def face_arrays_from_model(face_model: Any, num_id: int, num_exp: int, landmarks: str = "upstream") -> dict[str, np.ndarray]:
    """Arrays of a ``facepgn.facemodel.FaceModel`` truncated to ``num_id`` / ``num_exp`` modes, with
    the named landmark definition (applied after truncating, see ``FaceModel.with_landmarks``)."""
    if hasattr(face_model, "truncated"):
        face_model = face_model.truncated(num_id, num_exp).with_landmarks(landmarks)
    out: dict[str, np.ndarray] = {
        "mean": np.asarray(face_model.mean, dtype=np.float32),
        "id_basis": np.asarray(face_model.id_basis, dtype=np.float32)[:num_id],
        "exp_basis": np.asarray(face_model.exp_basis, dtype=np.float32)[:num_exp],
        "triangles": np.asarray(face_model.triangles, dtype=np.int64),
        "landmark_ids": np.asarray(face_model.landmark_ids, dtype=np.int64),
    }
    mask = getattr(face_model, "landmark_mask", None)
    out["landmark_mask"] = (out["landmark_ids"] >= 0) if mask is None else np.asarray(mask, dtype=bool)
    return out


def build_model(cfg: ModelConfig, face_model: Any = None) -> FaceReconstructor:
    """A freshly initialised model. ``face_model``: a ``FaceModel`` (default: load ``cfg.face_model``
    or the default asset)."""
    if face_model is None:
        from facepgn.facemodel import load_face_model

        face_model = load_face_model(cfg.face_model)
    arrays = face_arrays_from_model(face_model, cfg.num_id, cfg.num_exp, cfg.landmarks)
    return FaceReconstructor(cfg, arrays, face_model_name=str(getattr(face_model, "name", "")))


def model_file_payload(model: FaceReconstructor) -> dict[str, Any]:
    """What a model file holds: only tensors, strings and plain containers (loads with weights_only)."""
    core = unwrap(model)
    return {
        "format": MODEL_FILE_FORMAT,
        "config": core.cfg.model_dump(mode="json"),
        "face_model_name": core.face_model_name,
        "state_dict": {k: v.detach().cpu() for k, v in core.state_dict().items()},
    }


def model_from_payload(payload: dict[str, Any], source: str = "model file") -> FaceReconstructor:
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FILE_FORMAT:
        raise InputError(source, f"not a facepgn model file (expected format {MODEL_FILE_FORMAT})")
    from facepgn.config import build_config

    cfg = build_config(ModelConfig, payload["config"], source)
    state = payload["state_dict"]
    # float16 files (the shipped model) come back as float32: the face arrays and the weights
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    arrays = {name[3:]: state[name].numpy() for name in FACE_BUFFERS}
    model = FaceReconstructor(cfg, arrays, face_model_name=payload.get("face_model_name", ""))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        missing = [k for k in model.state_dict() if k not in state]
        unexpected = [k for k in state if k not in model.state_dict()]
        detail = f"missing {missing[:2]}, unexpected {unexpected[:2]}" if missing or unexpected else str(exc).splitlines()[-1].strip()
        raise InputError(source, f"weights do not fit this facepgn's network ({detail}); retrain or use the facepgn that wrote it") from None
    return model


def save_model_file(model: FaceReconstructor, path: str | os.PathLike) -> None:
    """Write a standalone model file (config + weights + truncated face model), atomically."""
    import io

    from facepgn import storage

    buf = io.BytesIO()
    torch.save(model_file_payload(model), buf)
    storage.atomic_write_bytes(str(path), buf.getvalue())


def read_torch_file(path: str | os.PathLike, map_location: str | torch.device = "cpu", what: str = "model file") -> Any:
    """``torch.load(weights_only=True)`` of a local or ``s3://`` file, with one-line errors naming it."""
    import io

    from facepgn import storage

    try:
        data = storage.read_bytes(str(path))
    except FileNotFoundError:
        raise InputError(path, f"{what} not found") from None
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise InputError(path, f"not a readable {what} ({exc.__class__.__name__})") from None


def half_precision(payload: dict[str, Any]) -> dict[str, Any]:
    """A model-file payload with its float tensors stored as float16 (half the size; loading turns
    them back into float32). Integer buffers (triangles, landmark ids) stay exact."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in payload["state_dict"].items()}
    return {**payload, "state_dict": state}


# ---- the pretrained model shipped with the package ---------------------------------------------

PRETRAINED_FILE = "facepgn-pretrained.pt"
PRETRAINED_SHA_FILE = "facepgn-pretrained.sha256"  # "sha256  size  name", written with the model file


def pretrained_model_file(folder: str | os.PathLike | None = None) -> str:
    """The path of the pretrained model shipped in ``facepgn/data`` (MODEL_CARD.md; ``folder``: a
    release folder written by :func:`write_pretrained`), verified against its recorded sha256 (a
    truncated install or a Git LFS pointer fails here, by name)."""
    import hashlib
    from importlib import resources
    from pathlib import Path

    from facepgn.errors import FacepgnError

    root = Path(folder) if folder is not None else resources.files("facepgn.data")
    path, sha = root.joinpath(PRETRAINED_FILE), root.joinpath(PRETRAINED_SHA_FILE)
    if not path.is_file() or not sha.is_file():
        raise FacepgnError(f"{path}: this facepgn has no pretrained model; give --model MODEL_FILE")
    digest, size, _ = sha.read_text().split()
    data = path.read_bytes()
    if len(data) != int(size) or hashlib.sha256(data).hexdigest() != digest:
        raise InputError(str(path), f"pretrained model does not match its recorded sha256 ({PRETRAINED_SHA_FILE}); reinstall facepgn")
    return str(path)


#: the name that stands for the shipped pretrained model wherever a model file is asked for
PRETRAINED_NAME = "pretrained"


def resolve_model_file(path: str | os.PathLike | None) -> str:
    """``path``, or the shipped pretrained model when it is None or ``"pretrained"`` (what --model
    defaults to; ``init_from: pretrained`` fine-tunes it)."""
    return str(path) if path and str(path) != PRETRAINED_NAME else pretrained_model_file()


def write_pretrained(model_file: str, folder: str | os.PathLike, mirror_test: bool | None = None) -> dict[str, Any]:
    """Write ``model_file`` as the shipped pretrained model (float16) and its sha256 into ``folder``;
    ``mirror_test``: set the model config's test-time mirroring (None: keep the file's)."""
    import hashlib
    import io
    from pathlib import Path

    from facepgn import storage

    payload = half_precision(model_file_payload(load(model_file)))
    if mirror_test is not None:
        payload["config"] = {**payload["config"], "mirror_test": bool(mirror_test)}
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    folder = Path(folder)
    digest = hashlib.sha256(data).hexdigest()
    # atomic: a failed write leaves the files that were there (the sha256 last: it names the new file)
    storage.atomic_write_bytes(str(folder / PRETRAINED_FILE), data)
    storage.atomic_write_text(str(folder / PRETRAINED_SHA_FILE), f"{digest}  {len(data)}  {PRETRAINED_FILE}\n")
    return {"path": str(folder / PRETRAINED_FILE), "sha256": digest, "bytes": len(data)}


def load(path: str | os.PathLike | None, map_location: str | torch.device = "cpu") -> FaceReconstructor:
    """The one loader: a model file (:func:`save_model_file`), a training checkpoint that holds the
    model (``facepgn.train``), or a run / checkpoint folder holding ``model.pt`` or ``checkpoint.pt``;
    local or ``s3://``; ``None``: the pretrained model shipped with facepgn. Always
    ``torch.load(weights_only=True)``; returns the model in eval mode. A model that cannot be read
    is one line naming it (``model file not found``, or a :class:`~facepgn.errors.StorageError`)."""
    from facepgn import storage

    path = resolve_model_file(path)
    fs, stripped = storage.get_fs(path)
    with storage.faults(path):  # an unreachable S3 endpoint, a refused request: one line naming the model
        if fs.isdir(stripped):
            for name in ("model.pt", "checkpoint.pt"):
                if fs.exists(stripped.rstrip("/") + "/" + name):
                    path = storage.join(path, name)
                    break
            else:
                raise InputError(path, "folder holds no model.pt or checkpoint.pt")
    payload = read_torch_file(path, map_location, what="model file")
    found = _find_model_payload(payload)
    if found is None:
        raise InputError(path, f"not a facepgn model file ({MODEL_FILE_FORMAT}) nor a checkpoint holding one")
    if found.get("format") != MODEL_FILE_FORMAT:  # a checkpoint: model config + state dict
        found = {**found, "format": MODEL_FILE_FORMAT}
    return model_from_payload(found, str(path)).to(map_location).eval()


#: the strict name the model file format was introduced with
load_model_file = load


def _find_model_payload(payload: Any, depth: int = 0) -> dict | None:
    """The model-file dict inside a model file or a checkpoint (searched a few levels deep)."""
    if not isinstance(payload, dict) or depth > 3:
        return None
    if payload.get("format") == MODEL_FILE_FORMAT:
        return payload
    state = payload.get("state_dict", payload.get("model_state", payload.get("model_state_dict")))
    config = payload.get("model_config", payload.get("config"))
    if isinstance(config, dict) and "model" in config and isinstance(config["model"], dict):
        config = config["model"]  # a TrainConfig dump
    if isinstance(state, dict) and isinstance(config, dict) and all(f in state for f in FACE_BUFFERS):
        return {"config": config, "state_dict": state, "face_model_name": payload.get("face_model_name", "")}
    for key in ("model", "model_file", "model_payload", "checkpoint"):
        found = _find_model_payload(payload.get(key), depth + 1)
        if found is not None:
            return found
    return None


def unwrap(model: nn.Module) -> FaceReconstructor:
    """The FaceReconstructor inside a DDP / compiled wrapper."""
    inner: Any = model
    while hasattr(inner, "module"):
        inner = inner.module
    return getattr(inner, "_orig_mod", inner)
