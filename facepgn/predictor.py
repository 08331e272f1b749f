"""One predictor for inference, evaluation and validation: uint8 crops in, numpy outputs out.

``Predictor`` runs a ``FaceReconstructor`` as ``solve(networks(crops))`` (``facepgn.model``) with
the networks either in torch or in onnxruntime (an ONNX file from ``facepgn.export``); the geometry
(``solve``: the closed-form pose, whose symmetric eigendecomposition has no ONNX operator) is
always the model's own torch code, so both runtimes give the same outputs.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any

import numpy as np

from facepgn import storage
from facepgn.errors import FacepgnError

if TYPE_CHECKING:
    from facepgn.model import Reconstruction

#: what ``Predictor.__call__`` returns (crop pixels; ``pose`` is pitch, yaw, roll radians)
OUTPUT_KEYS = ("landmarks_3d", "landmark_confidence", "mesh_landmarks", "landmark_mask", "id_coeffs", "exp_coeffs",
               "scale", "rotation", "translation", "pose")


class Predictor:
    """The model on RGB uint8 crops (B, S, S, 3) -> numpy outputs (:data:`OUTPUT_KEYS`).

    ``model_path``: anything ``facepgn.model.load`` reads (None: the shipped pretrained model), or
    ``model``: a loaded ``FaceReconstructor``. ``runtime="torch"``: eager torch; ``"onnx"``: the
    networks in onnxruntime (exported on the fly unless ``onnx_path`` names an exported file).
    ``threads`` sets torch's and onnxruntime's intra-op threads (0: leave them).
    """

    def __init__(self, model_path: str | None = None, *, model: Any = None, runtime: str = "torch", device: str = "cpu",
                 threads: int = 1, onnx_path: str | None = None):
        import torch

        from facepgn import model as model_lib

        if runtime not in ("torch", "onnx"):
            raise FacepgnError(f"inference runtime {runtime!r}: expected torch or onnx")
        if threads and threads > 0 and device == "cpu":
            torch.set_num_threads(int(threads))
        self.device = device
        self.runtime = runtime
        self.model = (model if model is not None else model_lib.load(model_path)).to(device).eval()
        self.input_size = int(self.model.input_size)
        self.face_model_name = str(getattr(self.model, "face_model_name", ""))
        self._session = self._onnx_session(onnx_path, threads) if runtime == "onnx" else None

    def _onnx_session(self, onnx_path: str | None, threads: int):
        import onnxruntime as ort

        from facepgn.export import export_onnx

        if onnx_path is None:
            onnx_path = os.path.join(tempfile.mkdtemp(prefix="facepgn-onnx-"), "networks.onnx")
            export_onnx(self.model, onnx_path)
        opts = ort.SessionOptions()
        if threads and threads > 0:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(storage.read_bytes(str(onnx_path)), sess_options=opts, providers=["CPUExecutionProvider"])

    def to_images(self, crops: np.ndarray):
        import torch

        arr = np.ascontiguousarray(crops)
        if arr.ndim != 4 or arr.shape[1] != self.input_size or arr.shape[3] != 3:
            raise ValueError(f"expected crops (B, {self.input_size}, {self.input_size}, 3), got {arr.shape}")
        return torch.from_numpy(arr).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)

    def networks(self, images):
        """``NetOutputs`` of the networks, from torch or from onnxruntime."""
        import torch

        if self._session is None:
            return self.model.networks(images)
        flat = self._session.run(None, {"images": images.cpu().numpy()})
        # output names are "<network>.<key>" (facepgn.export): the key is what solve() reads
        return {o.name.split(".", 1)[-1]: torch.from_numpy(v).to(self.device) for o, v in zip(self._session.get_outputs(), flat)}

    def torch_outputs(self, crops: np.ndarray) -> Reconstruction:
        """The model's ``Reconstruction`` (torch tensors) for uint8 crops."""
        import torch

        with torch.inference_mode():
            return self.model.solve(self.networks(self.to_images(crops)))

    def __call__(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, Any] = dict(self.torch_outputs(crops))
        result = {k: out[k].detach().float().cpu().numpy() for k in OUTPUT_KEYS if k in out}
        result["pose"] = self.model.pose_angles(out).cpu().numpy()
        return result

    def face_model(self):
        """The (truncated) face model the coefficients refer to (``FaceReconstructor.face_model``)."""
        return self.model.face_model()
