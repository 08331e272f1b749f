"""Temporal smoothing (facepgn.smoothing): pure numpy, no Ray, fast."""

from __future__ import annotations

import numpy as np
import pytest

from facepgn.smoothing import (
    jitter,
    local_linear_smooth,
    nearest_rotation,
    one_euro_filter,
    smooth_rotations,
    smooth_series,
    split_segments,
)


def _noisy_track(n: int = 150, fps: float = 30.0, noise: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fps
    clean = np.stack([40 * np.sin(1.5 * t) + 100, 25 * t + 50], axis=1)  # a head moving, px
    return t, clean, clean + rng.normal(0, noise, clean.shape)


@pytest.mark.parametrize("method", ["local_linear", "one_euro"])
def test_smoothing_reduces_jitter_and_error(method):
    t, clean, noisy = _noisy_track()
    out = smooth_series(noisy, t, method=method, sigma=0.06, min_cutoff=1.5, beta=0.05)
    assert out.shape == noisy.shape
    assert jitter(out) < 0.5 * jitter(noisy)
    # Zero-phase smoothing also gets closer to the truth; the causal filter at least does not drift far.
    err_in = np.abs(noisy - clean).mean()
    err_out = np.abs(out - clean).mean()
    assert err_out < (0.7 if method == "local_linear" else 1.5) * err_in


def test_local_linear_keeps_linear_motion_and_constants_exactly():
    t = np.sort(np.random.default_rng(1).uniform(0, 3, 80))  # irregular sampling, gaps
    line = np.stack([3 * t + 1, -2 * t], axis=1)
    np.testing.assert_allclose(local_linear_smooth(line, t, sigma=0.2), line, atol=1e-9)
    const = np.full((80, 4), 7.0)
    np.testing.assert_allclose(local_linear_smooth(const, t, sigma=0.5), const, atol=1e-9)


def test_local_linear_is_zero_phase_no_lag():
    t = np.arange(300) / 30.0
    signal = np.sin(2 * np.pi * 0.5 * t)[:, None]
    out = local_linear_smooth(signal, t, sigma=0.05)
    # Peaks stay where they are (a causal filter would shift them later in time).
    assert abs(int(np.argmax(out[:60])) - int(np.argmax(signal[:60]))) <= 1


def test_short_and_degenerate_inputs():
    assert local_linear_smooth(np.ones((2, 3)), np.array([0.0, 0.1]), 0.1).shape == (2, 3)
    assert local_linear_smooth(np.ones((0, 3)), np.zeros(0), 0.1).shape == (0, 3)
    out = local_linear_smooth(np.array([[1.0], [5.0], [9.0]]), np.array([0.0, 0.0, 10.0]), 0.1)
    assert np.isfinite(out).all()
    assert one_euro_filter(np.ones((0, 2)), np.zeros(0)).shape == (0, 2)
    with pytest.raises(ValueError):
        local_linear_smooth(np.ones((4, 1)), np.array([0.0, 2.0, 1.0, 3.0]), 0.1)
    assert np.isnan(jitter(np.ones((2, 2))))


def test_rotations_stay_proper_and_get_smoother():
    rng = np.random.default_rng(2)
    t = np.arange(60) / 30.0
    yaw = 0.5 * t
    c, s = np.cos(yaw), np.sin(yaw)
    clean = np.zeros((60, 3, 3))
    clean[:, 0, 0], clean[:, 0, 2], clean[:, 1, 1], clean[:, 2, 0], clean[:, 2, 2] = c, s, 1, -s, c
    noisy = nearest_rotation(clean + rng.normal(0, 0.03, clean.shape))
    out = smooth_rotations(noisy, t, method="local_linear", sigma=0.08)
    np.testing.assert_allclose(out @ np.swapaxes(out, 1, 2), np.broadcast_to(np.eye(3), out.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(out), 1.0, atol=1e-9)
    assert jitter(out.reshape(60, 9)) < 0.5 * jitter(noisy.reshape(60, 9))


def test_segments_split_at_gaps_and_jitter_ignores_them():
    assert [list(s) for s in split_segments(np.array([0, 1, 2, 30, 31, 32, 33]), max_gap=5)] == [[0, 1, 2], [3, 4, 5, 6]]
    assert split_segments(np.zeros(0), 3) == []
    values = np.array([[0.0], [1.0], [2.0], [100.0], [101.0], [102.0]])
    assert jitter(values, frames=np.array([0, 1, 2, 50, 51, 52])) == 0.0
