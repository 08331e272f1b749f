"""Rotations, the similarity fit and the camera: properties, degenerate inputs, and the convention
pinned against real AFLW2000-3D ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from facepgn import geometry as g

SETTINGS = settings(max_examples=40, deadline=None)

angles_away_from_lock = st.tuples(
    st.floats(-3.0, 3.0), st.floats(-1.45, 1.45), st.floats(-3.0, 3.0)
)


def _np_elementary():
    def rx(a):
        c, s = math.cos(a), math.sin(a)
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])

    def ry(a):
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])

    def rz(a):
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])

    return rx, ry, rz


@SETTINGS
@given(angles_away_from_lock)
def test_euler_round_trip_and_proper_rotation(angles):
    a = torch.tensor(angles, dtype=torch.float64)
    R = g.euler_to_matrix(a)
    assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.det(R).item() == pytest.approx(1.0, abs=1e-12)
    back = g.matrix_to_euler(R)
    assert torch.allclose(g.euler_to_matrix(back), R, atol=1e-10)
    # yaw in (-pi/2, pi/2) is unique; pitch and roll up to 2*pi
    assert back[1].item() == pytest.approx(angles[1], abs=1e-9)
    for i in (0, 2):
        d = (back[i].item() - angles[i] + math.pi) % (2 * math.pi) - math.pi
        assert abs(d) < 1e-9


def test_euler_matches_explicit_formula_and_is_batched():
    rx, ry, rz = _np_elementary()
    angles = np.array([[0.3, -0.7, 1.1], [-0.2, 0.4, -2.0]])
    R = g.euler_to_matrix(angles)  # numpy in -> numpy out
    assert isinstance(R, np.ndarray) and R.shape == (2, 3, 3)
    for k, (p, y, r) in enumerate(angles):
        np.testing.assert_allclose(R[k], (rz(r) @ ry(y) @ rx(p)).T, atol=1e-12)
        np.testing.assert_allclose(R[k], rx(-p) @ ry(-y) @ rz(-r), atol=1e-12)
    nested = g.euler_to_matrix(torch.zeros(4, 5, 3))
    assert nested.shape == (4, 5, 3, 3)


def test_euler_direction_words_in_docstring():
    nose = np.array([[0.0, 0.0, 1.0]])
    x_axis = np.array([[1.0, 0.0, 0.0]])
    zero_t = np.zeros(3)
    p_pitch = g.project(nose, 1.0, g.euler_to_matrix(np.array([0.3, 0, 0])), zero_t)
    p_yaw = g.project(nose, 1.0, g.euler_to_matrix(np.array([0, 0.3, 0])), zero_t)
    p_roll = g.project(x_axis, 1.0, g.euler_to_matrix(np.array([0, 0, 0.3])), zero_t)
    assert p_pitch[0, 1] < 0  # nose up in the image (y down)
    assert p_yaw[0, 0] < 0  # nose to the image's left
    assert p_roll[0, 1] > 0  # +x turns clockwise on screen


def test_matrix_to_euler_gradient_finite_at_gimbal_lock():
    a = torch.tensor([0.2, math.pi / 2, 0.1], dtype=torch.float64)
    R = g.euler_to_matrix(a).detach().requires_grad_(True)
    out = g.matrix_to_euler(R)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(R.grad).all()


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    angles=angles_away_from_lock,
    scale=st.floats(0.01, 100.0),
    n=st.integers(4, 68),
)
def test_similarity_fit_recovers_transform(seed, angles, scale, n):
    rng = np.random.default_rng(seed)
    src = rng.normal(size=(n, 3)) * rng.uniform(0.5, 20.0)
    R = g.euler_to_matrix(np.array(angles))
    t = rng.normal(size=3) * 100
    dst = scale * src @ R.T + t
    w = rng.uniform(0.2, 1.0, size=n)
    s_fit, R_fit, t_fit = g.similarity_fit(src, dst, w)
    assert s_fit == pytest.approx(scale, rel=1e-5)
    np.testing.assert_allclose(R_fit, R, atol=1e-5)
    np.testing.assert_allclose(t_fit, t, atol=1e-5 * (1 + np.abs(t).max()))


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(["random", "coplanar", "nearly_collinear", "collinear", "coincident", "two_points"]))
def test_similarity_fit_gradients_finite(seed, kind):
    rng = np.random.default_rng(seed)
    n = 12
    base = rng.normal(size=(n, 3))
    if kind == "coplanar":
        base[:, 2] = 0.0
    elif kind == "nearly_collinear":
        base = np.outer(rng.normal(size=n), [1.0, 2.0, -0.5]) + 1e-6 * rng.normal(size=(n, 3))
    elif kind == "collinear":
        base = np.outer(np.linspace(-1, 1, n), [0.3, -1.0, 0.2])
    elif kind == "coincident":
        base = np.ones((n, 3))
    elif kind == "two_points":
        base = np.repeat(rng.normal(size=(2, 3)), n // 2, axis=0)
    for dtype in (torch.float32, torch.float64):
        src = torch.tensor(base, dtype=dtype, requires_grad=True)
        R0 = g.euler_to_matrix(torch.tensor([0.3, -0.5, 0.2], dtype=dtype))
        dst_val = 2.5 * torch.tensor(base, dtype=dtype) @ R0.T + 3.0
        dst = (dst_val + 0.01 * torch.tensor(rng.normal(size=(n, 3)), dtype=dtype)).requires_grad_(True)
        w = torch.rand(n, dtype=dtype, requires_grad=True)
        s, R, t = g.similarity_fit(src, dst, w)
        loss = s + (R * torch.arange(9, dtype=dtype).reshape(3, 3)).sum() + t.sum()
        loss.backward()
        for tensor in (s, R, t, src.grad, dst.grad, w.grad):
            assert torch.isfinite(tensor).all(), (kind, dtype)
        assert torch.det(R).item() == pytest.approx(1.0, abs=1e-4)


def test_similarity_fit_gradient_matches_finite_differences():
    torch.manual_seed(0)
    src = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True)
    dst = (src.detach() @ g.euler_to_matrix(torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)).T * 1.7
           + 0.1 * torch.randn(2, 9, 3, dtype=torch.float64)).requires_grad_(True)
    w = torch.rand(2, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(g.similarity_fit, (src, dst, w))


def test_similarity_fit_reflection_gives_best_proper_rotation():
    rng = np.random.default_rng(3)
    src = rng.normal(size=(20, 3))
    dst = src * np.array([1.0, 1.0, -1.0])  # a mirror image: no rotation reproduces it
    s, R, t = g.similarity_fit(src, dst)
    assert np.linalg.det(R) == pytest.approx(1.0)
    # The SVD/Umeyama answer with the reflection fix, computed independently.
    a, b = src - src.mean(0), dst - dst.mean(0)
    U, S, Vt = np.linalg.svd(b.T @ a / len(src))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    np.testing.assert_allclose(R, U @ D @ Vt, atol=1e-8)
    assert s == pytest.approx((S * np.diag(D)).sum() / (a**2).sum() * len(src), rel=1e-8)


def test_similarity_fit_half_precision_inputs_run_in_float32():
    src = torch.randn(2, 10, 3).half()
    s, R, t = g.similarity_fit(src, src * 2)
    assert R.dtype == torch.float32 and torch.allclose(s, torch.full((2,), 2.0), rtol=1e-3)


def test_zero_weights_ignore_points():
    rng = np.random.default_rng(4)
    src = rng.normal(size=(10, 3))
    R = g.euler_to_matrix(np.array([0.2, 0.1, -0.3]))
    dst = 3.0 * src @ R.T + 1.0
    dst[7:] += 50.0  # garbage where the weight is 0
    w = np.array([1.0] * 7 + [0.0] * 3)
    s, R_fit, t = g.similarity_fit(src, dst, w)
    assert s == pytest.approx(3.0, rel=1e-9)
    np.testing.assert_allclose(R_fit, R, atol=1e-9)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), angles=angles_away_from_lock)
def test_fit_pose_inverts_project(seed, angles):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3, 68, 3)) * 5
    R = g.euler_to_matrix(np.array(angles))
    s = np.array([1.5, 10.0, 0.2])
    t = rng.normal(size=(3, 3)) * 100
    img = g.project(X, s, R, t)
    s_fit, R_fit, t_fit = g.fit_pose(X, img)
    np.testing.assert_allclose(s_fit, s, rtol=1e-6)
    np.testing.assert_allclose(R_fit, np.broadcast_to(R, (3, 3, 3)), atol=1e-6)
    np.testing.assert_allclose(t_fit, t, atol=1e-5)


def test_project_mean_face_landmarks_by_hand():
    from facepgn.facemodel import load_face_model

    model = load_face_model()
    X = model.mean[model.landmark_ids].astype(np.float64)
    pitch, yaw, roll = 0.1, -0.4, 0.05
    s, t = 12.5, np.array([64.0, 70.0, 3.0])
    # By hand: R = Rx(-pitch) Ry(-yaw) Rz(-roll); p = s * F R X + t with F = diag(1, -1, 1).
    cp, sp = math.cos(-pitch), math.sin(-pitch)
    cy, sy = math.cos(-yaw), math.sin(-yaw)
    cr, sr = math.cos(-roll), math.sin(-roll)
    Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    R_hand = Rx @ Ry @ Rz
    expected = np.empty_like(X)
    for i, x in enumerate(X):
        r = R_hand @ x
        expected[i] = [s * r[0] + t[0], -s * r[1] + t[1], s * r[2] + t[2]]
    R = g.euler_to_matrix(np.array([pitch, yaw, roll]))
    got = g.project(X, s, R, t)
    np.testing.assert_allclose(got, expected, atol=1e-9)
    # torch, batched, float32 agrees too
    got_t = g.project(torch.tensor(X, dtype=torch.float32)[None], torch.tensor([s]),
                      torch.tensor(R, dtype=torch.float32)[None], torch.tensor(t, dtype=torch.float32)[None])
    np.testing.assert_allclose(got_t[0].numpy(), expected, atol=1e-3)
    assert model.landmarks().shape == (68, 3)
    # 0-d numpy scale (as fit_pose returns it) and read-only model arrays keep the shapes
    s_fit, R_fit, t_fit = g.fit_pose(model.mean[model.landmark_ids], got)
    assert s_fit.shape == () and g.project(model.mean[model.landmark_ids], s_fit, R_fit, t_fit).shape == (68, 3)


def test_convention_against_aflw2000_ground_truth(shared):
    """Fit the ICT mean-face landmarks to AFLW2000-3D ``pt3d_68`` (z as published) and compare the
    recovered rotation with ``Pose_Para``: pins the Euler order/signs and the y flip."""
    from facepgn.facemodel import load_face_model
    from facepgn.labelled import read_mat

    model = load_face_model()
    X = model.mean[model.landmark_ids].astype(np.float64)
    files = sorted((shared / "media" / "aflw2000-3d").glob("*.mat"))[::25]
    assert len(files) >= 15
    rot_err, wrong_err, yaw_err, big_yaw = [], [], [], 0
    for f in files:
        mat = read_mat(f)
        pts = mat["pt3d_68"].T.astype(np.float64)
        pose = mat["Pose_Para"].reshape(-1)[:3].astype(np.float64)
        s, R, t = g.fit_pose(X, pts)
        rot_err.append(np.degrees(g.rotation_angle_between(R, g.euler_to_matrix(pose))))
        wrong_err.append(np.degrees(g.rotation_angle_between(R, g.euler_to_matrix(pose).T)))
        # A few Pose_Para are outside the principal range (image00150: yaw 119 deg, the same
        # rotation as yaw 61 deg with pitch and roll shifted by 180 deg): compare canonical angles.
        canonical = g.matrix_to_euler(g.euler_to_matrix(pose))
        yaw_err.append(np.degrees(abs(g.matrix_to_euler(R)[1] - canonical[1])))
        big_yaw += abs(canonical[1]) > math.radians(30)
        assert s > 0
    rot_err, yaw_err = np.array(rot_err), np.array(yaw_err)
    assert big_yaw >= 3  # the check covers turned heads, where a wrong sign would show
    assert np.median(rot_err) < 6.0 and rot_err.max() < 12.0, rot_err
    assert yaw_err.max() < 10.0, yaw_err
    assert np.median(wrong_err) > 30.0  # the transposed convention is clearly worse: the check discriminates
