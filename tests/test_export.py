"""ONNX export (``facepgn export onnx``): onnxruntime gives the torch model's outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from facepgn import model as model_lib
from facepgn import outputs
from facepgn.export import export_onnx
from facepgn.predictor import Predictor


@pytest.fixture(scope="module")
def model_file(trained_model_file) -> str:
    """The session's briefly trained model file (tests/conftest.py)."""
    return str(trained_model_file)


@pytest.fixture(scope="module")
def face_crops(shared, model_file) -> np.ndarray:
    """Real face crops: YuNet boxes on frames of a real video, cropped as inference does."""
    from facepgn import faces, video
    from facepgn.config import InferConfig

    size = model_lib.load(model_file).input_size
    detector = faces.FaceDetector(detect_width=320)
    reader = video.VideoReader(str(shared / "media/videos/short_hamilton_clip.mp4"))
    crops = []
    for frame in reader.frames([0, 40, 80, 120]):
        for det in detector.detect(frame.rgb):
            crops.append(faces.square_crop(frame.rgb, det.box, InferConfig().crop_margin, size)[0])
    assert len(crops) >= 4
    return np.stack(crops)


def test_onnx_export_matches_torch_on_real_faces(model_file, face_crops, tmp_path):
    model = model_lib.load(model_file)
    path = tmp_path / "model.onnx"
    names = export_onnx(model, str(path))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [o.name for o in proto.graph.output] == names
    assert {p.key: p.value for p in proto.metadata_props}["facepgn.format"] == "facepgn.onnx/1"

    torch_out = Predictor(model=model, runtime="torch", threads=1)(face_crops)
    onnx_out = Predictor(model=model, runtime="onnx", threads=1, onnx_path=str(path))(face_crops)
    # what the ONNX graph computes, crop pixels / coefficients
    for key, atol in (("landmarks_3d", 1e-3), ("landmark_confidence", 1e-4), ("id_coeffs", 1e-4), ("exp_coeffs", 1e-4)):
        np.testing.assert_allclose(onnx_out[key], torch_out[key], atol=atol, err_msg=key)
    # the pose fitted on those outputs (same torch code on both paths)
    for key, atol in (("mesh_landmarks", 1e-3), ("scale", 1e-4), ("translation", 1e-3)):
        np.testing.assert_allclose(onnx_out[key], torch_out[key], atol=atol, rtol=1e-4, err_msg=key)
    # batch size is dynamic: one crop alone gives the same as in the batch
    single = Predictor(model=model, runtime="onnx", threads=1, onnx_path=str(path))(face_crops[:1])
    np.testing.assert_allclose(single["landmarks_3d"], onnx_out["landmarks_3d"][:1], atol=1e-3)


def test_onnx_export_with_mirror_test_matches_torch(model_file, face_crops, tmp_path):
    """Test-time mirroring is inside ``networks``, so the ONNX file carries it and onnxruntime plus
    ``solve`` still give torch's outputs (and they differ from the plain model's)."""
    model = model_lib.load(model_file)
    plain = Predictor(model=model_lib.load(model_file), threads=1)(face_crops)
    model.cfg = model.cfg.model_copy(update={"mirror_test": True})
    path = tmp_path / "mirror.onnx"
    export_onnx(model, str(path))
    assert {p.key: p.value for p in onnx.load(str(path)).metadata_props}["facepgn.mirror_test"] == "true"
    torch_out = Predictor(model=model, runtime="torch", threads=1)(face_crops)
    onnx_out = Predictor(model=model, runtime="onnx", threads=1, onnx_path=str(path))(face_crops)
    for key, atol in (("landmarks_3d", 1e-3), ("mesh_landmarks", 1e-3), ("id_coeffs", 1e-4)):
        np.testing.assert_allclose(onnx_out[key], torch_out[key], atol=atol, rtol=1e-4, err_msg=key)
    assert np.abs(torch_out["landmarks_3d"] - plain["landmarks_3d"]).max() > 1e-2


def test_export_command_checks_against_torch(model_file, tmp_path, capsys):
    from facepgn.cli import main

    out = tmp_path / "exported.onnx"
    assert main(["export", "onnx", "--model", model_file, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "max |onnxruntime - torch|" in text and out.stat().st_size > 10_000
    assert main(["export", "onnx", "--model", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2


def test_onnx_runtime_in_the_pipeline_gives_the_torch_rows(shared, model_file, tmp_path):
    from facepgn.config import InferConfig
    from facepgn.pipelines.infer import run_inference

    tables = {}
    for runtime in ("torch", "onnx"):
        cfg = InferConfig(model=model_file, input=str(shared / "media/videos/d6.mp4"), output=str(tmp_path / runtime),
                          max_frames=8, runtime=runtime, executor="local")
        run_inference(cfg, progress=None)
        tables[runtime] = outputs.read_rows(cfg.output).to_pydict()
    assert tables["torch"]["frame_index"] == tables["onnx"]["frame_index"]
    np.testing.assert_allclose(np.asarray(tables["onnx"]["landmarks_3d"]), np.asarray(tables["torch"]["landmarks_3d"]), atol=1e-2)


def test_pretrained_release_is_float16_verified_and_loads(trained_model_file, tmp_path):
    """The shipped-model format: float16 weights (integer buffers exact), a recorded sha256 that
    loading checks, and outputs within float16 rounding of the float32 model."""
    import torch

    from facepgn.errors import InputError
    from facepgn.model import load_model_file, pretrained_model_file, write_pretrained

    info = write_pretrained(trained_model_file, tmp_path)
    path = pretrained_model_file(tmp_path)
    payload = torch.load(path, weights_only=True)
    dtypes = {v.dtype for v in payload["state_dict"].values()}
    assert torch.float32 not in dtypes and torch.float16 in dtypes
    import os

    assert info["bytes"] < 0.65 * os.path.getsize(trained_model_file)  # about half of the float32 file
    full, half = load_model_file(trained_model_file), load_model_file(path)
    assert torch.equal(full.state_dict()["fm_triangles"], half.state_dict()["fm_triangles"])
    x = torch.rand(2, 3, full.input_size, full.input_size)
    with torch.no_grad():
        a, b = full(x), half(x)
    assert (a["landmarks_3d"] - b["landmarks_3d"]).abs().max() < 0.5  # crop pixels
    data = bytearray((tmp_path / "facepgn-pretrained.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "facepgn-pretrained.pt").write_bytes(bytes(data))
    with pytest.raises(InputError, match="does not match its recorded sha256"):
        pretrained_model_file(tmp_path)


def test_release_can_switch_test_time_mirroring(trained_model_file, tmp_path, capsys):
    """``facepgn export release --mirror-test on`` writes the model with mirroring on (what the shipped
    model uses); the weights are the same file's."""
    import torch

    from facepgn.cli import main
    from facepgn.model import load_model_file, pretrained_model_file

    assert main(["export", "release", "--model", str(trained_model_file), "--out", str(tmp_path), "--mirror-test", "on"]) == 0
    released = load_model_file(pretrained_model_file(tmp_path))
    source = load_model_file(trained_model_file)
    assert released.cfg.mirror_test and not source.cfg.mirror_test
    name, weight = next(iter(source.named_parameters()))
    assert torch.allclose(dict(released.named_parameters())[name], weight, atol=1e-2)


def test_shipped_model_matches_its_model_card_and_loads_weights_only():
    """The shipped file's sha256 is the one MODEL_CARD.md states (and facepgn/data records), and the
    file loads with ``torch.load(weights_only=True)`` into the model the card describes."""
    import hashlib
    import io
    import re

    import torch

    from facepgn.model import model_from_payload, pretrained_model_file
    from facepgn.paths import REPO_ROOT

    path = pretrained_model_file()
    data = open(path, "rb").read()
    digest = hashlib.sha256(data).hexdigest()
    card = (REPO_ROOT / "MODEL_CARD.md").read_text()
    stated = re.findall(r"sha256 `([0-9a-f]{64})`", card)
    assert stated == [digest], (stated, digest)
    assert len(data) <= 20 * 1024 * 1024
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    model = model_from_payload(payload, path)
    assert {v.dtype for v in payload["state_dict"].values() if v.is_floating_point()} == {torch.float16}
    macs = re.search(r"\*\*([0-9.]+) M multiply-adds\*\*", card)
    assert macs and model.cfg.model_dump()["pgn_width"] == 2.0 and float(macs.group(1)) < 200
