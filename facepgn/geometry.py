"""Rotations, the closed-form similarity fit and the weak-perspective camera: facepgn's one home
for geometry conventions.

Frames
    * Face model frame: +x to the subject's left (viewer's right), +y up, +z towards the viewer.
    * Image (crop) frame: pixels, x right, y down, z towards the camera.

Camera (weak perspective, as in 3DDFA / AFLW2000-3D)::

    p = s * F @ R @ X + t,    F = diag(1, -1, 1)  (``MODEL_TO_IMAGE_FLIP``)

``R`` is a proper rotation; ``F`` turns the model's y-up into the image's y-down (it is a
reflection, so ``F @ R`` is not a rotation: the fits below solve for ``R`` in the flipped frame).

Euler angles (AFLW2000-3D / 300W-LP ``Pose_Para[:3]`` = pitch, yaw, roll in radians)::

    R = (Rz(roll) @ Ry(yaw) @ Rx(pitch)).T = Rx(-pitch) @ Ry(-yaw) @ Rz(-roll)

with the right-handed elementary rotations ``Rx(a) = [[1,0,0],[0,c,-s],[0,s,c]]`` etc. This is
face3d's ``angle2matrix_3ddfa`` (3DDFA's MATLAB ``RotationMatrix``), i.e. the transpose of
face3d's plain ``angle2matrix``. It was pinned against the data, not assumed: fitting the ICT
mean face's 68 landmark vertices to AFLW2000-3D ``pt3d_68`` (used as is: x, y in image pixels,
y down, z towards the camera and NOT flipped) with :func:`fit_pose` recovers, over all 503
shared images, a rotation within 3.7 degrees median (95th percentile 6.9, max 10.9; the mean face
differs from each subject) of this ``R``, and yaw within 0.6 degrees median (max 6.7). The
untransposed convention is off by 60 degrees median (95th percentile 162), and flipping
``pt3d_68``'s z by 51 degrees median (``tests/test_geometry.py`` keeps a 21-image check). In image
terms: positive pitch moves the nose tip up (smaller y), positive yaw moves it
to the image's left (smaller x), positive roll turns the model's +x axis clockwise on screen
(towards +y). Some ``Pose_Para`` lie outside the principal range (AFLW2000-3D image00150 has
yaw 119 deg: the same rotation as yaw 61 deg with pitch and roll shifted by 180 deg); compare
angles after ``matrix_to_euler(euler_to_matrix(p))``, which maps to yaw in [-90, 90] deg.

All functions take torch tensors batched over leading dimensions and are differentiable; the fits
have a custom, regularised backward so gradients stay finite for degenerate point sets (collinear,
coplanar, coincident). Numpy arrays in give numpy arrays out (computed in float64 when the input is
float64). No I/O here.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import torch

Tensor = torch.Tensor

#: The model -> image axis flip F (y up -> y down); see the module docstring.
MODEL_TO_IMAGE_FLIP = np.diag([1.0, -1.0, 1.0])


def flip_y(points):
    """Apply ``F = diag(1, -1, 1)`` to points (..., 3): negate y. Works for numpy and torch."""
    if isinstance(points, np.ndarray):
        return points * np.asarray([1.0, -1.0, 1.0], dtype=points.dtype)
    return points * points.new_tensor([1.0, -1.0, 1.0])


def _numpy_io(fn: Callable) -> Callable:
    """Let a torch function take numpy arrays (returns numpy; float64 stays float64)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not any(isinstance(a, np.ndarray) for a in (*args, *kwargs.values())):
            return fn(*args, **kwargs)

        def to_t(a):
            if isinstance(a, np.ndarray):
                if a.dtype != np.float64:
                    a = a.astype(np.float32)
                # (np.ascontiguousarray would turn a 0-d array into shape (1,); read-only arrays,
                # e.g. FaceModel's, cannot be shared with torch: copy those.)
                if a.flags.c_contiguous and a.flags.writeable:
                    return torch.from_numpy(a)
                return torch.tensor(a)
            return a

        out = fn(*[to_t(a) for a in args], **{k: to_t(v) for k, v in kwargs.items()})
        if isinstance(out, tuple):
            return tuple(o.detach().cpu().numpy() for o in out)
        return out.detach().cpu().numpy()

    return wrapper


# ----------------------------------------------------------------------------------------------
# Euler angles
# ----------------------------------------------------------------------------------------------


def _elementary(axis: str, angle: Tensor) -> Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    if axis == "x":
        rows = [one, zero, zero, zero, c, -s, zero, s, c]
    elif axis == "y":
        rows = [c, zero, s, zero, one, zero, -s, zero, c]
    else:
        rows = [c, -s, zero, s, c, zero, zero, zero, one]
    return torch.stack(rows, dim=-1).reshape(*angle.shape, 3, 3)


@_numpy_io
def euler_to_matrix(angles: Tensor) -> Tensor:
    """(pitch, yaw, roll) radians (..., 3) -> rotation (..., 3, 3), ``Pose_Para`` convention."""
    pitch, yaw, roll = angles.unbind(-1)
    m = _elementary("z", roll) @ _elementary("y", yaw) @ _elementary("x", pitch)
    return m.transpose(-1, -2)


@_numpy_io
def matrix_to_euler(R: Tensor, eps: float = 1e-20) -> Tensor:
    """Rotation (..., 3, 3) -> (pitch, yaw, roll) radians (..., 3); inverse of :func:`euler_to_matrix`.

    Yaw is in [-pi/2, pi/2]. At gimbal lock (|yaw| = pi/2) roll is set by convention and the
    gradient is kept finite by ``eps``.
    """
    # R.T = Rz(roll) Ry(yaw) Rx(pitch) =: M; M[i, j] = R[j, i].
    m00, m10, m20 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    m21, m22 = R[..., 1, 2], R[..., 2, 2]
    cos_yaw = torch.sqrt(m00 * m00 + m10 * m10 + eps)
    yaw = torch.atan2(-m20, cos_yaw)
    pitch = torch.atan2(m21, m22)
    roll = torch.atan2(m10, m00)
    return torch.stack([pitch, yaw, roll], dim=-1)


# ----------------------------------------------------------------------------------------------
# Similarity fit (Horn's quaternion form of weighted Umeyama, with a safe eigenvector backward)
# ----------------------------------------------------------------------------------------------


class _TopEigenvector(torch.autograd.Function):
    """Largest eigenpair of symmetric matrices (..., n, n) with a regularised backward.

    The exact gradient of an eigenvector has 1 / (l_k - l_j) terms that blow up when the top
    eigenvalue is (nearly) repeated -- exactly the degenerate point sets (collinear, coincident)
    for which the best rotation is ambiguous. We replace 1/d by d / (d^2 + eps), eps relative to
    the matrix's scale, which equals the exact gradient for well-separated eigenvalues and goes to
    zero instead of infinity as they meet.
    """

    @staticmethod
    def forward(ctx, sym: Tensor, rel_eps: float):
        # A diverged network can hand us inf/NaN landmarks; LAPACK then fails to converge and the
        # whole (distributed) step dies. Zero the bad entries instead: the loss stays non-finite,
        # which the training step reports and skips, but nothing crashes here.
        sym = torch.nan_to_num(sym, nan=0.0, posinf=0.0, neginf=0.0)
        try:
            evals, evecs = torch.linalg.eigh(sym)
        except RuntimeError:  # torch.linalg.LinAlgError: ill-conditioned float32; retry in float64
            evals, evecs = torch.linalg.eigh(sym.double())
            evals, evecs = evals.to(sym.dtype), evecs.to(sym.dtype)
        ctx.save_for_backward(evals, evecs)
        ctx.rel_eps = rel_eps
        return evals[..., -1], evecs[..., :, -1]

    @staticmethod
    def backward(ctx, grad_val: Tensor, grad_vec: Tensor):
        evals, evecs = ctx.saved_tensors
        top_val = evals[..., -1:]
        top_vec = evecs[..., :, -1]
        gap = top_val - evals  # (..., n); 0 for the top one itself
        scale = evals.abs().amax(dim=-1, keepdim=True)
        eps = (ctx.rel_eps * scale) ** 2 + torch.finfo(evals.dtype).tiny ** 0.5
        inv_gap = gap / (gap * gap + eps)
        inv_gap[..., -1] = 0.0
        grad = torch.zeros_like(evecs)
        if grad_vec is not None:
            coeff = (evecs.transpose(-1, -2) @ grad_vec.unsqueeze(-1)).squeeze(-1) * inv_gap
            # dL/dA = sum_j coeff_j v_j v_top^T
            grad = (evecs @ coeff.unsqueeze(-1)) * top_vec.unsqueeze(-2)
        if grad_val is not None:
            grad = grad + grad_val[..., None, None] * top_vec.unsqueeze(-1) * top_vec.unsqueeze(-2)
        grad = 0.5 * (grad + grad.transpose(-1, -2))
        return grad, None


def _quaternion_to_matrix(q: Tensor) -> Tensor:
    w, x, y, z = q.unbind(-1)
    rows = [
        w * w + x * x - y * y - z * z, 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), w * w - x * x + y * y - z * z, 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), w * w - x * x - y * y + z * z,
    ]
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def _horn_matrix(S: Tensor) -> Tensor:
    """Horn's symmetric 4x4 matrix for the cross-covariance ``S = sum w a b^T`` (a src, b dst)."""
    sxx, sxy, sxz = S[..., 0, 0], S[..., 0, 1], S[..., 0, 2]
    syx, syy, syz = S[..., 1, 0], S[..., 1, 1], S[..., 1, 2]
    szx, szy, szz = S[..., 2, 0], S[..., 2, 1], S[..., 2, 2]
    rows = [
        sxx + syy + szz, syz - szy, szx - sxz, sxy - syx,
        syz - szy, sxx - syy - szz, sxy + syx, szx + sxz,
        szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy,
        sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz,
    ]
    return torch.stack(rows, dim=-1).reshape(*S.shape[:-2], 4, 4)


@_numpy_io
def similarity_fit(src: Tensor, dst: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Least-squares ``dst ≈ s * R @ src + t`` over (..., N, 3) points; returns (s (...), R (..., 3, 3), t (..., 3)).

    Weighted Umeyama solved in Horn's quaternion form: R is the best *proper* rotation (the
    reflection case of Umeyama is handled by construction), s = optimum / weighted src variance.
    ``weights`` (..., N) are non-negative (e.g. 0 for unmapped landmarks). Differentiable, with
    finite gradients for degenerate inputs (then R is not unique and its gradient is damped).
    """
    dtype = torch.promote_types(src.dtype, dst.dtype)
    if not dtype.is_floating_point or torch.finfo(dtype).bits < 32:
        dtype = torch.float32  # integers, and half precision under autocast (eigh needs >= float32)
    src, dst = src.to(dtype), dst.to(dtype)
    if weights is None:
        weights = torch.ones(src.shape[:-1], dtype=dtype, device=src.device)
    else:
        weights = weights.to(dtype)
    src, dst = torch.broadcast_tensors(src, dst)
    weights = weights.expand(src.shape[:-1])
    tiny = torch.finfo(dtype).eps
    wsum = weights.sum(-1, keepdim=True).clamp_min(tiny)
    wn = (weights / wsum).unsqueeze(-1)  # (..., N, 1), sums to 1
    mu_src = (wn * src).sum(-2)
    mu_dst = (wn * dst).sum(-2)
    a = src - mu_src.unsqueeze(-2)
    b = dst - mu_dst.unsqueeze(-2)
    cov = (wn * a).transpose(-1, -2) @ b  # (..., 3, 3): sum w a b^T
    var_src = (wn * a * a).sum((-1, -2))
    rel_eps = 1e-6 if dtype == torch.float64 else 1e-3
    top_val, q = _TopEigenvector.apply(_horn_matrix(cov), rel_eps)
    R = _quaternion_to_matrix(q)
    # A floor far below any real variance: coincident src points give scale 0, not 0/0, and a
    # finite gradient.
    var_dst = (wn * b * b).sum((-1, -2))
    floor = tiny * var_src.detach() + tiny * tiny * var_dst.detach() + 1e-30
    scale = top_val / (var_src + floor)
    t = mu_dst - scale.unsqueeze(-1) * (R @ mu_src.unsqueeze(-1)).squeeze(-1)
    return scale, R, t


@_numpy_io
def fit_pose(model_pts: Tensor, image_pts: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Weak-perspective pose (s, R, t) with ``image_pts ≈ project(model_pts, s, R, t)``.

    ``model_pts`` (..., N, 3) in the face-model frame, ``image_pts`` (..., N, 3) in image pixels
    (y down, z towards the camera). Solves ``F @ image ≈ s R X + F t`` with :func:`similarity_fit`.
    """
    s, R, t_flipped = similarity_fit(model_pts, flip_y(image_pts), weights)
    return s, R, flip_y(t_flipped)


@_numpy_io
def project(X: Tensor, s: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """Weak perspective: ``p = s * F @ R @ X + t`` for points X (..., V, 3) -> (..., V, 3) image pixels."""
    s = torch.as_tensor(s, dtype=X.dtype, device=X.device)
    rotated = X @ R.transpose(-1, -2).to(X.dtype)
    return flip_y(rotated) * s[..., None, None] + t.to(X.dtype).unsqueeze(-2)


def rotation_angle_between(R1, R2):
    """Geodesic angle (radians) between rotations (..., 3, 3); numpy or torch."""
    if isinstance(R1, np.ndarray) or isinstance(R2, np.ndarray):
        R1, R2 = np.asarray(R1), np.asarray(R2)
        tr = np.einsum("...ij,...ij->...", R1, R2)
        return np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0))
    tr = (R1 * R2).sum((-1, -2))
    return torch.acos(((tr - 1.0) / 2.0).clamp(-1.0 + 1e-7, 1.0 - 1e-7))


# ---- left-right mirror of the 68 landmarks -----------------------------------------------------

#: iBUG 68-point index of each point's mirror partner (0-indexed): the jaw 0..16 reversed, brows
#: 17..21 <-> 26..22, the nose bridge 27..30 on the midline, nostrils 31..35 reversed, eyes
#: 36 37 38 39 40 41 <-> 45 44 43 42 47 46, outer lips 48..54 reversed and 55..59 reversed (51 and 57
#: on the midline), inner lips 60..64 reversed and 65 <-> 67 (62 and 66 on the midline).
#: ``new[i] = mirrored_old[FLIP_PERMUTATION[i]]``; it is an involution.
FLIP_PERMUTATION = np.array(
    list(range(16, -1, -1))  # jaw
    + list(range(26, 16, -1))  # brows
    + [27, 28, 29, 30]  # nose bridge
    + [35, 34, 33, 32, 31]  # nostrils
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]  # eyes
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lips
    + [64, 63, 62, 61, 60, 67, 66, 65],  # inner lips
    dtype=np.int64,
)


def mirror_landmarks(points: torch.Tensor, crop_size: int) -> torch.Tensor:
    """Landmarks (..., 68, 2|3) predicted on a left-right mirrored crop, moved back to the crop:
    ``x -> (S - 1) - x`` (pixel centres at integer coordinates; y and z unchanged) and relabelled
    with :data:`FLIP_PERMUTATION` (the mirrored face's left eye corner is the subject's right one)."""
    out = points.clone()
    out[..., 0] = (crop_size - 1) - out[..., 0]
    return out[..., torch.as_tensor(FLIP_PERMUTATION, device=points.device), :]
