"""Dense optical flow between two face crops (OpenCV DIS), stored as float16.

Flow is computed on grayscale crops of the same size, A -> B: the pixel (x, y) of crop A moves to
(x + u, y + v) in crop B (``facepgn.records`` convention). Storage is float16 via
``records.encode_flow``; at crop sizes of 64-256 px float16 keeps ~0.01-0.1 px precision.
"""

from __future__ import annotations

import cv2
import numpy as np

PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


class FlowEstimator:
    """DIS optical flow; one instance per worker (the OpenCV object is reused across pairs)."""

    def __init__(self, preset: str = "medium"):
        if preset not in PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; choose one of {sorted(PRESETS)}")
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(PRESETS[preset])

    def __call__(self, rgb_a: np.ndarray, rgb_b: np.ndarray) -> np.ndarray:
        """Flow A -> B, float32 (H, W, 2), for two RGB (or grayscale) images of the same size."""
        gray_a = _gray(rgb_a)
        gray_b = _gray(rgb_b)
        if gray_a.shape != gray_b.shape:
            raise ValueError(f"flow needs images of one size, got {gray_a.shape} and {gray_b.shape}")
        return self._dis.calc(gray_a, gray_b, None)


def _gray(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(img, dtype=np.uint8)


def flow_magnitude(flow: np.ndarray) -> float:
    """Mean length of the flow vectors, in pixels."""
    f = np.asarray(flow, dtype=np.float32)
    return float(np.sqrt((f[..., 0] ** 2) + (f[..., 1] ** 2)).mean())


def warp_by_flow(rgb_b: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample B at (x + u, y + v) for every pixel of A: B warped back onto A (for checks)."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x = gx + flow[..., 0].astype(np.float32)
    map_y = gy + flow[..., 1].astype(np.float32)
    return cv2.remap(rgb_b, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
