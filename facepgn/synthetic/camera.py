"""Camera realism: what sensors, optics and the web do to face crops."""

from __future__ import annotations

import cv2
import numpy as np


def _camera_effects(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Slight blur and sensor noise, so crops look less like clean renders."""
    img = image.astype(np.float32)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 0.9))
    img += rng.normal(0, rng.uniform(0.5, 3.0), img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def camera_effects(image: np.ndarray, rng: np.random.Generator, grayscale_prob: float = 0.08,
                   jpeg_quality: tuple[int, int] = (30, 92)) -> np.ndarray:
    """What cameras and the web do to real face crops, so synthetic ones are not told apart by it:
    a colour cast and exposure/gamma change, Gaussian or motion blur, down-and-up scaling, sensor
    noise (some of it chroma), grey-scale now and then, and JPEG re-encoding at a random quality.
    Geometry is unchanged (blur kernels are centred, resampling keeps pixel centres)."""
    s = image.shape[0]
    img = image.astype(np.float32) / 255.0
    gains = rng.uniform(0.85, 1.15, 3) * rng.uniform(0.8, 1.15)
    img = np.clip(img * gains, 0, 1) ** rng.uniform(0.8, 1.25)
    kind = rng.random()
    if kind < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.4) * s / 128)
    elif kind < 0.42:
        length = max(3, int(round(rng.uniform(3, 9) * s / 128)) | 1)
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0
        rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), float(rng.uniform(0, 180)), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (length, length))
        img = cv2.filter2D(img, -1, kernel / max(float(kernel.sum()), 1e-6), borderType=cv2.BORDER_REFLECT_101)
    if rng.random() < 0.3:
        small = max(8, int(round(s * rng.uniform(0.3, 0.75))))
        img = cv2.resize(cv2.resize(img, (small, small), interpolation=cv2.INTER_AREA), (s, s),
                         interpolation=cv2.INTER_LINEAR if rng.random() < 0.5 else cv2.INTER_CUBIC)
    img = img + rng.normal(0, rng.uniform(0.002, 0.025), img.shape).astype(np.float32)
    if rng.random() < 0.3:  # chroma noise: blotchy, at a lower resolution
        k = max(4, s // 4)
        chroma = cv2.resize(rng.normal(0, rng.uniform(0.005, 0.02), (k, k, 3)).astype(np.float32), (s, s))
        img = img + chroma
    img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < grayscale_prob:
        img = np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    if rng.random() < 0.7:
        quality = int(rng.integers(jpeg_quality[0], jpeg_quality[1] + 1))
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return img

