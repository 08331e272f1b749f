"""The networks and the full model: shapes, soft-argmax, closed-form pose, gradients, budget, files."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from facepgn import geometry
from facepgn.config import ModelConfig
from facepgn.facemodel import load_face_model
from facepgn.model import build_model, load_model_file, save_model_file
from facepgn.nets.macs import count_macs
from facepgn.nets.pgn import soft_argmax_3d

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small nets (conftest.one_torch_thread)


@pytest.fixture(scope="module")
def face_model():
    return load_face_model()


@pytest.fixture(scope="module")
def pgn_model(face_model):
    torch.manual_seed(0)
    return build_model(ModelConfig(input_size=64), face_model)


def test_forward_contract(pgn_model):
    out = pgn_model(torch.rand(3, 3, 64, 64))
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes["landmarks_3d"] == (3, 68, 3)
    assert shapes["mesh_landmarks"] == (3, 68, 3)
    assert shapes["id_coeffs"] == (3, 40) and shapes["exp_coeffs"] == (3, 20)
    assert shapes["scale"] == (3,) and shapes["rotation"] == (3, 3, 3) and shapes["translation"] == (3, 3)
    # rotations are proper
    R = out["rotation"].detach()
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-4)
    assert torch.allclose(torch.det(R), torch.ones(3), atol=1e-4)
    assert pgn_model.mesh_vertices(out).shape == (3, pgn_model.num_vertices, 3)
    assert pgn_model.pose_angles(out).shape == (3, 3)
    assert ((out["exp_coeffs"] >= 0) & (out["exp_coeffs"] <= 1)).all()
    with pytest.raises(ValueError, match="expected images"):
        pgn_model(torch.rand(1, 3, 32, 32))


def test_soft_argmax_finds_a_sharp_peak():
    logits = torch.full((1, 68, 16, 16), -50.0)
    depth = torch.zeros(1, 68, 16, 16)
    rng = np.random.default_rng(0)
    cells = rng.integers(0, 16, size=(68, 2))
    for k, (i, j) in enumerate(cells):
        logits[0, k, i, j] = 50.0
        depth[0, k, i, j] = k / 68.0
    out = soft_argmax_3d(logits, depth, stride=4, input_size=64)
    lm = out["landmarks_3d"][0]
    expected_x = (cells[:, 1] + 0.5) * 4 - 0.5
    expected_y = (cells[:, 0] + 0.5) * 4 - 0.5
    assert np.allclose(lm[:, 0].numpy(), expected_x, atol=1e-3)
    assert np.allclose(lm[:, 1].numpy(), expected_y, atol=1e-3)
    z = np.arange(68) / 68.0 * 64
    assert np.allclose(lm[:, 2].numpy(), z - z.mean(), atol=1e-3)  # z centred
    assert (out["landmark_confidence"] > 0.9).all()
    flat = soft_argmax_3d(torch.zeros(1, 68, 16, 16), depth, 4, 64)
    assert (flat["landmark_confidence"] < 0.3).all()  # a flat map is not confident


def test_gradients_reach_both_networks_through_the_closed_form_pose(pgn_model):
    pgn_model.zero_grad()
    out = pgn_model(torch.rand(2, 3, 64, 64))
    target = torch.rand(2, 68, 3) * 64
    loss = (pgn_model.mesh_vertices(out)[:, :500, :2].mean() + (out["mesh_landmarks"] - target).abs().mean())
    loss.backward()
    for name, net in (("pgn", pgn_model.pgn), ("regressor", pgn_model.regressor)):
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads, name
        total = sum(float(g.abs().sum()) for g in grads)
        assert np.isfinite(total) and total > 0, name


class _Fixed(nn.Module):
    """Stands in for a network: returns given tensors (the closed-form pose path is under test)."""

    def __init__(self, **outputs):
        super().__init__()
        self.outputs = outputs
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, images):
        return {k: v + 0 * self.anchor for k, v in self.outputs.items()}


def test_pose_fitted_from_perfect_landmarks_is_the_true_pose(face_model):
    model = build_model(ModelConfig(input_size=64), face_model)
    rng = np.random.default_rng(1)
    b = 4
    id_c = torch.tensor(rng.standard_normal((b, 40)), dtype=torch.float32)
    exp_c = torch.tensor(rng.uniform(0, 0.5, (b, 20)), dtype=torch.float32)
    angles = torch.tensor(np.radians(rng.uniform(-60, 60, (b, 3)) * [0.5, 1, 0.4]), dtype=torch.float32)
    R = geometry.euler_to_matrix(angles)
    s = torch.tensor(rng.uniform(1.5, 3.0, b), dtype=torch.float32)
    t = torch.tensor(np.c_[rng.uniform(25, 40, (b, 2)), np.zeros(b)], dtype=torch.float32)
    lm_model = model.model_landmarks(id_c, exp_c)
    lm_img = geometry.project(lm_model, s, R, t)
    model.regressor = _Fixed(id_coeffs=id_c, exp_coeffs=exp_c)
    model.pgn = _Fixed(landmarks_3d=lm_img, landmark_confidence=torch.rand(b, 68), heatmaps=torch.zeros(b, 68, 1, 1))
    out = model(torch.zeros(b, 3, 64, 64))
    assert torch.allclose(out["scale"], s, rtol=1e-4)
    assert float(geometry.rotation_angle_between(out["rotation"].detach(), R).max()) < 1e-3
    assert torch.allclose(out["translation"], t, atol=1e-3)
    assert torch.allclose(out["mesh_landmarks"], lm_img, atol=1e-3)
    assert torch.allclose(model.pose_angles(out), angles, atol=1e-3)


def test_direct_pose_baseline(face_model):
    model = build_model(ModelConfig(input_size=64, pose="direct"), face_model)
    assert model.pgn is None
    out = model(torch.rand(2, 3, 64, 64))
    assert torch.allclose(out["landmarks_3d"], out["mesh_landmarks"])
    # at initialisation: frontal, centred, the mean face spans a sensible part of the crop
    xy = out["mesh_landmarks"][..., :2].detach()
    assert (xy.mean(1) - 32).abs().max() < 8
    assert 15 < float((xy[..., 0].max(1).values - xy[..., 0].min(1).values).mean()) < 60
    assert out["mesh_landmarks"][..., 2].mean().abs() < 1e-3  # z centred like landmarks_3d
    out["mesh_landmarks"].sum().backward()
    assert model.regressor.pose_head.weight.grad.abs().sum() > 0


def test_autocast_keeps_the_geometry_in_float32(pgn_model):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pgn_model(torch.rand(2, 3, 64, 64))
    for key in ("landmarks_3d", "rotation", "scale", "translation", "mesh_landmarks", "id_coeffs"):
        assert out[key].dtype == torch.float32, key
    assert torch.isfinite(out["mesh_landmarks"]).all()


def test_visibility_follows_the_head_turn(pgn_model):
    b = 2
    out = {
        "id_coeffs": torch.zeros(b, 40),
        "exp_coeffs": torch.zeros(b, 20),
        "rotation": geometry.euler_to_matrix(torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.2, 0.0]])),
    }
    vis = pgn_model.vertex_visibility(out)
    frontal, turned = vis[0], vis[1]
    assert frontal.mean() > 0.5
    nose_tip = int(pgn_model.fm_landmark_ids[30])
    assert frontal[nose_tip] == 1
    # a 70 degree turn hides one cheek: fewer vertices face the camera
    assert turned.mean() < frontal.mean() - 0.1


def test_mac_budget_at_128(face_model):
    model = build_model(ModelConfig(input_size=128), face_model)
    counts = count_macs(model, torch.rand(1, 3, 128, 128))
    assert counts["total"] <= 200e6
    assert counts["pgn"] > 0 and counts["regressor"] > 0


def test_model_file_round_trip(pgn_model, tmp_path):
    path = tmp_path / "model.pt"
    pgn_model.eval()
    save_model_file(pgn_model, path)
    raw = torch.load(path, weights_only=True)  # plain tensors and containers only
    assert raw["format"].startswith("facepgn.model/")
    loaded = load_model_file(path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = pgn_model(x), loaded(x)
    for key in ("landmarks_3d", "mesh_landmarks", "id_coeffs", "rotation"):
        assert torch.equal(a[key], b[key]), key
    pgn_model.train()


def test_bad_model_file_is_a_one_line_error(tmp_path):
    from facepgn.errors import InputError

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match="bad.pt: not a readable model file"):
        load_model_file(bad)
    other = tmp_path / "other.pt"
    buf = io.BytesIO()
    torch.save({"weights": torch.zeros(1)}, buf)
    other.write_bytes(buf.getvalue())
    with pytest.raises(InputError, match="not a facepgn model file"):
        load_model_file(other)
    with pytest.raises(InputError, match="model file not found"):
        load_model_file(tmp_path / "missing.pt")


def test_model_file_with_foreign_weights_is_a_one_line_error(pgn_model, tmp_path):
    from facepgn.errors import InputError
    from facepgn.model import model_file_payload

    payload = model_file_payload(pgn_model)
    payload["state_dict"]["regressor.extra.weight"] = torch.zeros(1)
    path = tmp_path / "foreign.pt"
    torch.save(payload, path)
    with pytest.raises(InputError, match=r"foreign.pt: weights do not fit .*regressor.extra.weight"):
        load_model_file(path)


def test_forward_is_solve_of_networks(pgn_model):
    """The seam: ``forward(x) == solve(networks(x))``, and ``networks`` holds no geometry."""
    pgn_model.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        net = pgn_model.networks(x)
        whole, parts = pgn_model(x), pgn_model.solve(net)
    assert set(net) == {"id_coeffs", "exp_coeffs", "landmarks_3d", "landmark_confidence", "heatmaps"}
    for key in ("mesh_landmarks", "rotation", "landmarks_3d", "id_coeffs"):
        assert torch.equal(whole[key], parts[key]), key
    pgn_model.train()


def test_mirror_test_averages_the_pgn_over_the_mirrored_crop(face_model):
    """Test-time mirroring is mirror-equivariant by construction: the landmarks predicted on a
    mirrored crop are the mirror of those on the crop (a wrong permutation or pixel convention breaks
    this), and they are the mean of the plain and the mirrored-back predictions. Training ignores it."""
    torch.manual_seed(0)
    plain = build_model(ModelConfig(input_size=64), face_model).eval()
    mirrored = build_model(ModelConfig(input_size=64, mirror_test=True), face_model).eval()
    mirrored.load_state_dict(plain.state_dict())
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        a, b = mirrored.networks(x), mirrored.networks(x.flip(-1))
        p, q = plain.networks(x), plain.networks(x.flip(-1))
    back = geometry.mirror_landmarks(b["landmarks_3d"], 64)
    assert torch.allclose(a["landmarks_3d"], back, atol=1e-4)
    expected = 0.5 * (p["landmarks_3d"] + geometry.mirror_landmarks(q["landmarks_3d"], 64))
    assert torch.allclose(a["landmarks_3d"], expected, atol=1e-5)
    assert not torch.allclose(a["landmarks_3d"], p["landmarks_3d"], atol=1e-3)
    mirrored.train()
    with torch.no_grad():
        assert torch.equal(mirrored.networks(x)["landmarks_3d"], plain.train().networks(x)["landmarks_3d"])
