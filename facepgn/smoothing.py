"""Temporal smoothing of per-face outputs along a track, and a jitter measure.

Per-frame predictions jitter: each frame is reconstructed independently, so landmarks and pose
shake by a pixel or a degree from frame to frame even when the head is still. Offline we see the
whole track, so we smooth with a *zero-phase* filter (no lag):

* :func:`local_linear_smooth` — local-linear Gaussian kernel regression over the timestamps.
  Zero-phase, handles gaps and frame strides (it works on times, not indices), and unlike a plain
  moving average it does not pull the ends of a track towards the middle or flatten a steady head
  turn (a linear trend passes through unchanged).
* :func:`one_euro_filter` — the causal One-Euro filter (Casiez et al., CHI 2012) for streaming use:
  adaptive cut-off, little lag on fast motion, strong smoothing when still.

Rotations are smoothed as matrices (:func:`smooth_rotations`: filter the 9 entries, project back to
the nearest rotation), never as Euler angles, which wrap and hit gimbal lock.

Everything here is pure numpy on (T, ...) arrays in time order.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

SmoothingMethod = Literal["local_linear", "one_euro", "none"]


def _as_2d(values: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0:
        raise ValueError("expected an array with a leading time axis")
    return arr.reshape(arr.shape[0], int(np.prod(arr.shape[1:], dtype=np.int64))), arr.shape


def local_linear_smooth(
    values: np.ndarray,
    times: np.ndarray,
    sigma: float,
    weights: np.ndarray | None = None,
    block: int = 256,
) -> np.ndarray:
    """Zero-phase smoothing of ``values`` (T, ...) sampled at ``times`` (T,), increasing.

    Each output is the value at t_i of a straight line fitted by weighted least squares to the
    samples within ±3 ``sigma`` (same unit as ``times``), with Gaussian weights
    exp(-(t_j - t_i)^2 / 2 sigma^2), optionally times per-sample ``weights`` (e.g. confidence).
    ``sigma <= 0`` or fewer than 3 samples returns the input unchanged.
    """
    flat, shape = _as_2d(values)
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    if t.shape[0] != flat.shape[0]:
        raise ValueError(f"{flat.shape[0]} values but {t.shape[0]} times")
    n = t.shape[0]
    if sigma <= 0 or n < 3:
        return flat.reshape(shape).copy()
    if np.any(np.diff(t) < 0):
        raise ValueError("times must be non-decreasing")
    w_sample = np.ones(n) if weights is None else np.clip(np.asarray(weights, np.float64).reshape(-1), 1e-6, None)
    out = np.empty_like(flat)
    reach = 3.0 * sigma
    for start in range(0, n, block):
        stop = min(start + block, n)
        lo = int(np.searchsorted(t, t[start] - reach, side="left"))
        hi = int(np.searchsorted(t, t[stop - 1] + reach, side="right"))
        dt = t[lo:hi][None, :] - t[start:stop, None]  # (b, m)
        w = np.exp(-0.5 * (dt / sigma) ** 2) * w_sample[None, lo:hi]
        w[np.abs(dt) > reach] = 0.0
        # Weighted least squares for a line through (dt, y) evaluated at dt = 0:
        # y_hat = (S2 * Sy - S1 * Sty) / (S0 * S2 - S1^2)
        s0 = w.sum(1)
        s1 = (w * dt).sum(1)
        s2 = (w * dt * dt).sum(1)
        sy = w @ flat[lo:hi]
        sty = (w * dt) @ flat[lo:hi]
        det = s0 * s2 - s1 * s1
        good = det > 1e-9 * np.maximum(s0 * s2, 1e-300)
        line = (s2[:, None] * sy - s1[:, None] * sty) / np.where(good, det, 1.0)[:, None]
        mean = sy / s0[:, None]  # isolated sample(s): fall back to the weighted mean
        out[start:stop] = np.where(good[:, None], line, mean)
    return out.reshape(shape)


def one_euro_filter(
    values: np.ndarray,
    times: np.ndarray,
    min_cutoff: float = 1.0,
    beta: float = 0.05,
    d_cutoff: float = 1.0,
) -> np.ndarray:
    """Causal One-Euro filter of ``values`` (T, ...) at ``times`` (T,) seconds.

    ``min_cutoff`` (Hz) sets the smoothing when still (lower = smoother); ``beta`` raises the
    cut-off with speed (higher = less lag on fast motion). Each component is filtered separately.
    """
    flat, shape = _as_2d(values)
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    if t.shape[0] != flat.shape[0]:
        raise ValueError(f"{flat.shape[0]} values but {t.shape[0]} times")
    out = np.empty_like(flat)
    if flat.shape[0] == 0:
        return out.reshape(shape)

    def alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2.0 * np.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    x_prev = flat[0].copy()
    dx_prev = np.zeros_like(x_prev)
    out[0] = x_prev
    for i in range(1, flat.shape[0]):
        dt = float(t[i] - t[i - 1])
        if dt <= 0:
            out[i] = x_prev
            continue
        dx = (flat[i] - x_prev) / dt
        a_d = alpha(d_cutoff, dt)
        dx_hat = a_d * dx + (1 - a_d) * dx_prev
        cutoff = min_cutoff + beta * np.abs(dx_hat)
        a = alpha(cutoff, dt)
        x_hat = a * flat[i] + (1 - a) * x_prev
        out[i] = x_hat
        x_prev, dx_prev = x_hat, dx_hat
    return out.reshape(shape)


def nearest_rotation(matrices: np.ndarray) -> np.ndarray:
    """Project (..., 3, 3) matrices onto the nearest proper rotations (SVD, det +1)."""
    m = np.asarray(matrices, dtype=np.float64)
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    d = np.where(d == 0, 1.0, d)
    fix = np.ones(m.shape[:-1])
    fix[..., -1] = d
    return (u * fix[..., None, :]) @ vt


def smooth_series(
    values: np.ndarray,
    times: np.ndarray,
    method: SmoothingMethod = "local_linear",
    sigma: float = 0.08,
    min_cutoff: float = 1.0,
    beta: float = 0.05,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Smooth (T, ...) ``values`` along time with the named method (``sigma`` in seconds)."""
    if method == "none":
        return np.asarray(values, dtype=np.float64).copy()
    if method == "local_linear":
        return local_linear_smooth(values, times, sigma, weights=weights)
    if method == "one_euro":
        return one_euro_filter(values, times, min_cutoff=min_cutoff, beta=beta)
    raise ValueError(f"unknown smoothing method {method!r}")


def smooth_rotations(rotations: np.ndarray, times: np.ndarray, **kwargs) -> np.ndarray:
    """Smooth (T, 3, 3) rotations: filter the entries (chordal mean), then re-orthonormalise."""
    r = np.asarray(rotations, dtype=np.float64)
    return nearest_rotation(smooth_series(r.reshape(r.shape[0], 9), times, **kwargs).reshape(r.shape))


def split_segments(frames: np.ndarray, max_gap: int) -> list[np.ndarray]:
    """Index arrays of runs of ``frames`` (sorted) whose consecutive gap is at most ``max_gap``.

    A track that loses its face for longer than ``max_gap`` frames is smoothed in separate pieces,
    so a filter never bridges a cut.
    """
    f = np.asarray(frames).reshape(-1)
    if f.size == 0:
        return []
    breaks = np.nonzero(np.diff(f) > max_gap)[0] + 1
    return np.split(np.arange(f.size), breaks)


def jitter(values: np.ndarray, frames: np.ndarray | None = None) -> float:
    """Frame-to-frame jitter: the RMS over components of the second difference, averaged over time.

    The second difference is ~0 for steady motion (constant velocity) and large for shake, so this
    measures noise rather than real movement. Only triples of consecutive ``frames`` count when
    ``frames`` is given. Returns NaN for fewer than 3 samples.
    """
    flat, _ = _as_2d(values)
    if flat.shape[0] < 3:
        return float("nan")
    acc = flat[2:] - 2 * flat[1:-1] + flat[:-2]
    if frames is not None:
        f = np.asarray(frames).reshape(-1)
        step = np.diff(f)
        ok = (step[1:] == step[:-1]) & (step[1:] > 0)
        if not ok.any():
            return float("nan")
        acc = acc[ok]
    # Units of the input per frame^2 (pixels for landmarks, degrees for angles).
    return float(np.mean(np.sqrt(np.mean(acc * acc, axis=1))))
