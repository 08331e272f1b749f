"""Square face crops and their crop->frame affines: the one home of facepgn's crop geometry.

A crop is described by ``crop_to_frame``, the 2x3 affine (float32, row-major) from crop pixels to
source-image/frame pixels: ``[x_f, y_f] = A @ [x_c, y_c, 1]`` (``facepgn.records`` stores it as
6 floats). Extra point columns (3D landmark z) scale with the affine's scale.

* :func:`crop_transform`: the affine of an axis-aligned square (x0, y0, side) resized to ``size``;
  :func:`roi_affine`: of a box (x0, y0, x1, y1), possibly not square (3DDFA's roi crops).
* :func:`apply_affine`, :func:`invert_affine`, :func:`frame_to_crop`: points through them.
* :func:`square_crop_box` / :func:`square_crop`: the crop ``facepgn infer``, ``preprocess`` and
  ``label`` cut around a detector box (a margin of its side, integer pixels, zero padding).
* :func:`landmark_box` / :func:`crop_with_affine`: the labelled datasets' crop around the ground
  truth landmarks, resampled through any affine (blurred first when it shrinks the face).

``facepgn.records``, ``facepgn.faces`` and ``facepgn.labelled`` re-export their earlier names from
here (``records.crop_transform``, ``faces.square_crop``, ``labelled.to_crop``, ...).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

DEFAULT_LANDMARK_MARGIN = 0.2  # side = (1 + 2 * margin) * landmark extent: 1.4, close to 3DDFA's sqrt(2)


# ---- affines ---------------------------------------------------------------------------------


def crop_transform(x0: float, y0: float, side: float, out_size: int) -> np.ndarray:
    """2x3 crop->frame matrix for an axis-aligned square crop of ``side`` frame pixels at (x0, y0)
    resized to ``out_size`` pixels."""
    s = side / out_size
    return np.array([[s, 0.0, x0], [0.0, s, y0]], dtype=np.float32)


def roi_affine(box: np.ndarray, size: int) -> np.ndarray:
    """3DDFA's crop: the box (x0, y0, x1, y1), possibly not square, resized to size x size (float64)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([[(x1 - x0) / size, 0.0, x0], [0.0, (y1 - y0) / size, y0]], dtype=np.float64)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to (..., 2) points (extra columns such as z are scaled by the x scale)."""
    m = np.asarray(matrix, dtype=np.float64).reshape(2, 3)
    pts = np.asarray(points, dtype=np.float64)
    xy = pts[..., :2] @ m[:, :2].T + m[:, 2]
    if pts.shape[-1] == 2:
        return xy
    scale = np.sqrt(abs(np.linalg.det(m[:, :2])))
    return np.concatenate([xy, pts[..., 2:] * scale], axis=-1)


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64).reshape(2, 3)
    return cv2.invertAffineTransform(m).astype(np.float32)


def frame_to_crop(points: np.ndarray, crop_to_frame: np.ndarray) -> np.ndarray:
    """Frame-pixel points -> crop pixels (the inverse of ``crop_to_frame``; z scaled like x, y)."""
    return apply_affine(invert_affine(crop_to_frame), points).astype(np.float32)


# ---- crops around a detector box -------------------------------------------------------------


def square_crop_box(box: np.ndarray, margin: float) -> tuple[int, int, int]:
    """(x0, y0, side) in integer frame pixels: a square centred on ``box`` (x, y, w, h) whose side
    is the box's longer side plus ``margin`` of it on each side."""
    x, y, w, h = (float(v) for v in box[:4])
    side = max(w, h) * (1.0 + 2.0 * margin)
    side_i = max(2, int(round(side)))
    cx, cy = x + w / 2.0, y + h / 2.0
    return int(round(cx - side_i / 2.0)), int(round(cy - side_i / 2.0)), side_i


def square_crop(rgb: np.ndarray, box: np.ndarray, margin: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop a square around ``box`` (zero-padded outside the frame), resized to ``size``.

    Returns ``(crop RGB uint8 (size, size, 3), crop_to_frame 2x3 float32)``.
    """
    x0, y0, side = square_crop_box(box, margin)
    h, w = rgb.shape[:2]
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + side)
    region = np.zeros((side, side, 3), dtype=np.uint8)
    if sx1 > sx0 and sy1 > sy0:
        region[sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    crop = cv2.resize(region, (size, size), interpolation=interp)
    return crop, crop_transform(x0, y0, side, size)


# ---- crops around landmarks, through any affine ----------------------------------------------


def landmark_box(landmarks: np.ndarray, margin: float = DEFAULT_LANDMARK_MARGIN) -> tuple[float, float, float]:
    """A square box (x0, y0, side) centred on the landmarks' 2D bounding box, with ``margin`` of the
    larger extent added on each side."""
    xy = np.asarray(landmarks, dtype=np.float64)[:, :2]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    side = float((hi - lo).max()) * (1.0 + 2.0 * margin)
    if side <= 0:
        raise ValueError("landmarks have zero extent")
    cx, cy = (lo + hi) / 2.0
    return float(cx - side / 2.0), float(cy - side / 2.0), side


def crop_with_affine(image: np.ndarray, crop_to_frame: np.ndarray, size: int) -> np.ndarray:
    """Resample ``image`` into a ``size`` x ``size`` crop through the crop->frame affine.

    Pixels outside the image are black. When the crop shrinks the face, the source is blurred first
    so the crop does not alias.
    """
    m = np.asarray(crop_to_frame, dtype=np.float64).reshape(2, 3)
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    if scale > 1.5:
        sigma = 0.5 * math.sqrt(scale * scale - 1.0)
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma)
    return cv2.warpAffine(
        image, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0),
    )


def crop_batch(images, crop_to_frames, size: int) -> np.ndarray:
    """:func:`crop_with_affine` of each image through its affine, stacked (N, size, size, 3)."""
    return np.stack([crop_with_affine(img, m, size) for img, m in zip(images, crop_to_frames)])
