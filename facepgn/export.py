"""ONNX export of the model's networks, and the check that onnxruntime reproduces torch.

Only ``FaceReconstructor.networks`` goes into the ONNX file (with test-time mirroring when the
model's config asks for it); ``facepgn.predictor.Predictor`` runs it in onnxruntime and applies the
model's own ``solve`` in torch (the closed-form pose's eigendecomposition has no ONNX operator).
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from facepgn import storage

ONNX_FORMAT = "facepgn.onnx/1"

#: What the ONNX graph computes (and the mesh landmarks posed from it): the export check compares
#: these. The rotation is the same torch code on both paths, but on degenerate inputs (random crops
#: through an untrained PGN: all landmarks in one spot) it is ill-conditioned, so it is not checked.
ONNX_CHECKED_OUTPUTS = ("landmarks_3d", "landmark_confidence", "id_coeffs", "exp_coeffs", "mesh_landmarks")


def output_names(model) -> list[str]:
    """The ONNX outputs, ``"<network>.<key>"`` in the order ``networks_module`` returns them."""
    from facepgn.model import network_output_keys

    pgn_keys = ("landmarks_3d", "landmark_confidence")
    return [f"{'pgn' if k in pgn_keys else 'regressor'}.{k}" for k in network_output_keys(model.cfg.pose)]


def networks_module(model):
    """``model.networks`` as a module with a flat tuple of outputs (what ``torch.onnx.export`` needs)."""
    import torch

    from facepgn.model import network_output_keys

    keys = network_output_keys(model.cfg.pose)

    class Networks(torch.nn.Module):
        def __init__(self, core):
            super().__init__()
            self.core = core

        def forward(self, images):
            out = self.core.networks(images)
            return tuple(out[k] for k in keys)

    return Networks(model).eval()


def export_onnx(model, path: str, opset: int = 17) -> list[str]:
    """Export the model's networks (regressor + PGN) to ONNX with a dynamic batch axis; returns the
    output names. Written atomically, local or ``s3://``."""
    import onnx
    import torch

    model = model.eval()
    names = output_names(model)
    dummy = torch.rand(2, 3, model.input_size, model.input_size)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            networks_module(model),
            (dummy,),
            buf,  # type: ignore[arg-type]  # a file-like object works (torch's stub says a path)
            input_names=["images"],
            output_names=names,
            dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}},
            opset_version=opset,
            dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    meta = {"facepgn.format": ONNX_FORMAT, "facepgn.input_size": str(model.input_size),
            "facepgn.mirror_test": str(bool(model.cfg.mirror_test)).lower()}
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    storage.atomic_write_bytes(str(path), proto.SerializeToString())
    return names


def compare_onnx(model, onnx_path: str, batch: int = 4, seed: int = 0) -> dict[str, float]:
    """Max |difference| per output between the torch model and the ONNX runtime path on random crops."""
    from facepgn.predictor import Predictor

    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 256, size=(batch, model.input_size, model.input_size, 3), dtype=np.uint8)
    torch_out = Predictor(model=model, runtime="torch", threads=0)(crops)
    onnx_out = Predictor(model=model, runtime="onnx", threads=0, onnx_path=onnx_path)(crops)
    return {k: float(np.max(np.abs(torch_out[k] - onnx_out[k]))) for k in torch_out}
