"""A bank of real background patches, cut from photos and video frames away from the faces in them.

Why: synthetic faces rendered over procedural blobs are easy to tell from their surroundings; the
networks trained on them never see a real scene behind a face. Real photos and videos are full of
real scenes, but also of faces, and a face in the background of a labelled face teaches the wrong
thing. So the patches are cut where YuNet (:class:`facepgn.faces.FaceDetector`) finds no face (boxes
grown to cover hair and chin), and every patch is checked again on its own at twice the bank's
size, where a small face would show.

* :func:`build_background_bank` ``(paths, size, n, seed) -> (n, size, size, 3) uint8 RGB``: the
  bank, deterministic by seed, from images and videos under ``paths`` (files, folders, globs, local
  or s3://).
* :func:`load_background_bank`: the same, built once and cached as an ``.npz`` (``patches`` and
  each patch's ``sources``) keyed by the source files, their sizes and the arguments; a path to such
  an ``.npz`` is loaded directly.
* :func:`random_background`: one background for one render from the bank (random patch, mirror,
  zoom, out-of-focus blur, exposure), drawn from the caller's generator.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from typing import Sequence

import cv2
import numpy as np

from facepgn import paths as facepgn_paths
from facepgn import storage
from facepgn.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v")
BANK_VERSION = 1  # part of the cache key: bump when the way patches are cut changes

_MAX_SIDE = 1024  # sources are downscaled to this longer side first (patches are small)
_FRAMES_PER_VIDEO = 4
_FACE_GROW = (0.5, 0.7, 0.5, 0.4)  # detector box grown by these fractions of its size: left, top (hair), right, bottom (chin)
_MIN_STD = 6.0  # flat patches (letterbox bars, blown-out sky) are dropped
_MEMO: dict[str, np.ndarray] = {}
log = logging.getLogger(__name__)


def list_sources(paths: Sequence[str]) -> list[str]:
    """Image and video files under ``paths`` (files, folders, globs; local or s3://), sorted, unique."""
    found: set[str] = set()
    for root in paths:
        files = storage.list_files(str(root), IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
        if not files:
            raise InputError(root, "no images or videos found for background patches")
        found.update(files)
    return sorted(found)


def _downscale(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    k = _MAX_SIDE / max(h, w)
    if k >= 1:
        return rgb
    return cv2.resize(rgb, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)


def _frames(path: str, rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """RGB frames of one source: the image itself, or ``count`` frames spread over a video."""
    with tempfile.TemporaryDirectory() as tmp:
        local = storage.local_copy(path, tmp)
        if path.lower().endswith(IMAGE_EXTENSIONS):
            bgr = cv2.imread(local, cv2.IMREAD_COLOR)
            if bgr is None:
                raise InputError(path, "image cannot be decoded")
            return [_downscale(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))]
        cap = cv2.VideoCapture(local)
        if not cap.isOpened():
            raise InputError(path, "video cannot be opened")
        try:
            total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            if total <= 0:
                raise InputError(path, "video has no frames")
            starts = (np.arange(count) + rng.uniform(0.1, 0.9)) * total / count
            out = []
            for index in np.unique(np.clip(starts.astype(int), 0, total - 1)):
                cap.set(cv2.CAP_PROP_POS_FRAMES, int(index))
                ok, bgr = cap.read()
                if ok and bgr is not None:
                    out.append(_downscale(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
            if not out:
                raise InputError(path, "no frame of the video could be decoded")
            return out
        finally:
            cap.release()


def _face_boxes(detector, rgb: np.ndarray) -> np.ndarray:
    """Detected face boxes (K, 4: x0, y0, x1, y1), grown to cover hair and chin."""
    boxes = []
    for det in detector.detect(rgb):
        x, y, w, h = (float(v) for v in det.box)
        gl, gt, gr, gb = _FACE_GROW
        boxes.append([x - gl * w, y - gt * h, x + w * (1 + gr), y + h * (1 + gb)])
    return np.asarray(boxes, np.float64).reshape(-1, 4)


def has_face(detector, patch: np.ndarray, check_size: int) -> bool:
    """Whether the detector finds a face in ``patch`` seen at ``check_size`` pixels."""
    view = cv2.resize(patch, (check_size, check_size), interpolation=cv2.INTER_LINEAR if check_size > patch.shape[0] else cv2.INTER_AREA)
    return len(detector.detect(view)) > 0


def _cut_patches(rgb: np.ndarray, boxes: np.ndarray, want: int, size: int, rng: np.random.Generator,
                 check, avoid_faces: bool) -> list[np.ndarray]:
    h, w = rgb.shape[:2]
    short = min(h, w)
    if short < 32:
        return []
    out: list[np.ndarray] = []
    for _ in range(want * 25):
        if len(out) >= want:
            break
        side = int(rng.uniform(0.2, 0.75) * short)
        side = max(side, min(short, 32))
        x0 = int(rng.integers(0, w - side + 1))
        y0 = int(rng.integers(0, h - side + 1))
        if avoid_faces and len(boxes):
            overlap = (boxes[:, 0] < x0 + side) & (boxes[:, 2] > x0) & (boxes[:, 1] < y0 + side) & (boxes[:, 3] > y0)
            if overlap.any():
                continue
        patch = rgb[y0 : y0 + side, x0 : x0 + side]
        patch = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)
        if float(patch.std()) < _MIN_STD:
            continue
        if avoid_faces and check(patch):
            continue
        out.append(patch)
    return out


def _build(paths: Sequence[str], size: int, n: int, seed: int, detector=None, avoid_faces: bool = True) -> tuple[np.ndarray, list[str]]:
    from facepgn.faces import FaceDetector

    if n < 1 or size < 8:
        raise ValueError(f"background bank: need n >= 1 and size >= 8 (got n={n}, size={size})")
    sources = list_sources(paths)
    detector = detector or FaceDetector(score_threshold=0.5, detect_width=640)
    checker = FaceDetector(detector.model_path, score_threshold=0.5, detect_width=0)
    check_size = 2 * size
    rng = np.random.default_rng(seed)
    patches: list[np.ndarray] = []
    origins: list[str] = []
    bad: dict[str, InputError] = {}
    for _round in range(4):  # later rounds revisit sources (other frames, other places) if short
        order = rng.permutation(len(sources))
        quota = max(1, int(np.ceil((n - len(patches)) / len(sources))))
        for k in order:
            if len(patches) >= n:
                break
            path = sources[k]
            if path in bad:
                continue
            try:
                frames = _frames(path, rng, _FRAMES_PER_VIDEO if path.lower().endswith(VIDEO_EXTENSIONS) else 1)
            except InputError as exc:  # one unreadable file in a folder of hundreds: skip it, say so
                bad[path] = exc
                log.warning("background bank: skipping %s", exc)
                continue
            per_frame = max(1, int(np.ceil(quota / len(frames))))
            for rgb in frames:
                boxes = _face_boxes(detector, rgb) if avoid_faces else np.zeros((0, 4))
                cut = _cut_patches(rgb, boxes, min(per_frame, n - len(patches)), size, rng,
                                   lambda p: has_face(checker, p, check_size), avoid_faces)
                patches += cut
                origins += [path] * len(cut)
        if len(patches) >= n:
            break
    if not patches:
        if len(bad) == len(sources):
            raise next(iter(bad.values()))
        raise InputError(str(paths[0]) if paths else "backgrounds", "no face-free background patch could be cut")
    while len(patches) < n:  # few, small sources: reuse (random_background mirrors and zooms anyway)
        i = int(rng.integers(len(patches)))
        patches.append(patches[i])
        origins.append(origins[i])
    return np.stack(patches[:n]).astype(np.uint8), origins[:n]


def build_background_bank(paths: Sequence[str], size: int, n: int, seed: int = 0, detector=None,
                          avoid_faces: bool = True) -> np.ndarray:
    """``n`` RGB patches (n, size, size, 3) uint8 cut from the photos and video frames under
    ``paths`` where no face is: away from every detected face (box grown for hair and chin), and
    with no face found in the patch itself at twice ``size``. Deterministic by ``seed``.
    ``avoid_faces=False`` cuts anywhere (for comparison)."""
    return _build(paths, size, n, seed, detector, avoid_faces)[0]


def _cache_key(sources: list[str], size: int, n: int, seed: int) -> str:
    files = [(p, storage.size(p)) for p in sources]
    text = json.dumps({"files": files, "size": size, "n": n, "seed": seed, "version": BANK_VERSION}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def load_background_bank(paths: Sequence[str], size: int, n: int = 512, seed: int = 0,
                         cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """The bank of :func:`build_background_bank`, built once and cached.

    ``paths`` naming a single ``.npz`` loads that bank (its ``patches``, resized to ``size`` if need
    be). Otherwise the cache file is ``<cache_dir>/backgrounds/bank-<key>.npz`` (``cache_dir``
    default: ``FACEPGN_CACHE``, ``~/.cache/facepgn``), the key covering the source files, their sizes,
    ``size``, ``n``, ``seed`` and :data:`BANK_VERSION`. Loaded banks are kept per process.
    """
    paths = [str(p) for p in paths]
    if len(paths) == 1 and paths[0].lower().endswith(".npz"):
        return _resize_bank(_read_npz(paths[0]), size)
    sources = list_sources(paths)
    base = str(cache_dir) if cache_dir is not None else str(facepgn_paths.cache_dir())
    cache = storage.join(base, "backgrounds", f"bank-{_cache_key(sources, size, n, seed)}.npz")
    if cache in _MEMO:
        return _MEMO[cache]
    if storage.exists(cache):
        bank = _read_npz(cache)
    else:
        bank, origins = _build(paths, size, n, seed)
        buf = io.BytesIO()
        np.savez_compressed(buf, patches=bank, sources=np.array(origins), size=np.int64(size), seed=np.int64(seed),
                            version=np.int64(BANK_VERSION))
        storage.atomic_write_bytes(cache, buf.getvalue())
    _MEMO[cache] = bank
    return bank


def _read_npz(path: str) -> np.ndarray:
    try:
        with np.load(io.BytesIO(storage.read_bytes(path))) as npz:
            bank = npz["patches"]
    except FileNotFoundError:
        raise InputError(path, "background bank not found") from None
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(path, f"not a background bank .npz ({exc.__class__.__name__})") from None
    if bank.ndim != 4 or bank.shape[-1] != 3 or bank.shape[1] != bank.shape[2] or bank.dtype != np.uint8 or not len(bank):
        raise InputError(path, f"background bank patches must be (N, S, S, 3) uint8, got {bank.dtype} {bank.shape}")
    return bank


def _resize_bank(bank: np.ndarray, size: int) -> np.ndarray:
    if bank.shape[1] == size:
        return bank
    interp = cv2.INTER_AREA if bank.shape[1] > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(p, (size, size), interpolation=interp) for p in bank])


def random_background(bank: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """One (size, size, 3) uint8 background from the bank: a random patch, mirrored half the time,
    zoomed into a random 60-100% of it, often out of focus (the scene behind a face usually is),
    with a random exposure and white balance."""
    patch = bank[int(rng.integers(len(bank)))]
    side = patch.shape[0]
    crop = max(8, int(round(side * rng.uniform(0.6, 1.0))))
    x0, y0 = (int(v) for v in rng.integers(0, side - crop + 1, 2))
    img = patch[y0 : y0 + crop, x0 : x0 + crop]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    if rng.random() < 0.6:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 2.5) * size / 128)
    img = img * rng.uniform(0.6, 1.2) * rng.uniform(0.9, 1.1, 3)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)
