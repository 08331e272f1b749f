"""Synthetic videos: mp4 clips of one identity each with smooth head motion, and per-frame ground truth."""

from __future__ import annotations

import io
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

import cv2
import numpy as np

from facepgn import storage
from facepgn.config import SyntheticFacesConfig, SyntheticVideosConfig
from facepgn.facemodel import FaceModel
from facepgn.synthetic.camera import _camera_effects
from facepgn.synthetic.faces import face_model_for
from facepgn.synthetic.scene import FaceParams, _random_light, place_face, random_background, render_face, sample_identity
from facepgn.synthetic.skin import face_skin, random_albedo
from facepgn.synthetic.threads import _init_worker, _one_thread, _pool_context, single_threaded


def smooth_signal(rng: np.random.Generator, times: np.ndarray, amplitude: float, components: int = 3,
                  max_hz: float = 0.6) -> np.ndarray:
    """A smooth random signal (sum of a few sinusoids of at most ``max_hz``) with peak near ``amplitude``."""
    out = np.zeros_like(times, dtype=np.float64)
    weights = rng.dirichlet(np.ones(components))
    for w in weights:
        f = rng.uniform(0.08, max_hz)
        out += w * np.sin(2 * np.pi * f * times + rng.uniform(0, 2 * np.pi))
    return amplitude * out


@_one_thread
def synthesize_video(index: int, seed: int, settings: SyntheticVideosConfig | None = None,
                     model: FaceModel | None = None) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Frames (RGB uint8) of clip ``index`` (one identity, smooth pose/expression/translation) and
    per-frame ground truth in frame pixels (3D landmark z centred per frame)."""
    settings = settings or SyntheticVideosConfig()
    if model is None:
        model = face_model_for(SyntheticFacesConfig(num_id=settings.num_id, num_exp=settings.num_exp, face_model=settings.face_model))
    rng = np.random.default_rng([seed, index, 1])
    n, size = settings.frames, settings.size
    times = np.arange(n) / settings.fps
    id_coeffs = sample_identity(rng, model.num_id, settings.id_std)
    albedo = random_albedo(face_skin(model), rng)
    light, ambient, diffuse = _random_light(rng)
    background = random_background(rng, size, size)
    yaw_centre = rng.uniform(-0.3, 0.3) * settings.yaw_amplitude_deg
    pose = np.stack(
        [
            smooth_signal(rng, times, settings.pitch_amplitude_deg),
            yaw_centre + smooth_signal(rng, times, settings.yaw_amplitude_deg),
            smooth_signal(rng, times, settings.roll_amplitude_deg),
        ],
        1,
    )
    pose = np.radians(pose).astype(np.float32)
    active = rng.random(model.num_exp) < settings.expression_prob
    exp = np.zeros((n, model.num_exp), np.float32)
    for k in np.flatnonzero(active):
        exp[:, k] = np.clip(0.5 + smooth_signal(rng, times, 0.9, 2, 0.8), 0.0, 1.0) * rng.uniform(0.4, 1.0)
    box = rng.uniform(*settings.face_px)
    box_t = box * (1 + smooth_signal(rng, times, 0.08, 2, 0.3))
    cx = size / 2 + smooth_signal(rng, times, settings.drift_px, 2, 0.3)
    cy = size / 2 + smooth_signal(rng, times, settings.drift_px, 2, 0.3)

    frames: list[np.ndarray] = []
    gt: dict[str, list] = {k: [] for k in ("scale", "translation", "landmarks_3d", "landmarks_visible", "face_box")}
    for i in range(n):
        params = FaceParams(id_coeffs, exp[i], pose[i], 0.0, np.zeros(3))
        params.scale, params.translation = place_face(model, id_coeffs, exp[i], pose[i], float(box_t[i]), (float(cx[i]), float(cy[i])))
        face = render_face(model, params, albedo, size, size, background, light, ambient, diffuse)
        frame_rng = np.random.default_rng([seed, index, 2, i])
        frames.append(_camera_effects(face.image, frame_rng))
        ys, xs = np.nonzero(face.rendering.mask)
        gt["face_box"].append([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] if len(xs) else [0, 0, 0, 0])
        gt["scale"].append(params.scale)
        gt["translation"].append(params.translation)
        gt["landmarks_3d"].append(np.nan_to_num(face.landmarks_3d))
        gt["landmarks_visible"].append(face.landmarks_visible)
    lm3d = np.asarray(gt["landmarks_3d"], np.float32)
    truth = {
        "frame_index": np.arange(n, dtype=np.int64),
        "time": times.astype(np.float64),
        "fps": np.float64(settings.fps),
        "size": np.int64(size),
        "pose": pose,
        "scale": np.asarray(gt["scale"], np.float32),
        "translation": np.asarray(gt["translation"], np.float32),
        "id_coeffs": id_coeffs,
        "exp_coeffs": exp,
        "landmarks_2d": lm3d[..., :2].copy(),
        "landmarks_3d": lm3d,
        "landmarks_visible": np.asarray(gt["landmarks_visible"], bool),
        "face_box": np.asarray(gt["face_box"], np.float32),
        "face_model": np.array(model.name),
        "exp_names": np.array(model.exp_names),
        "seed": np.int64(seed),
        "index": np.int64(index),
    }
    return frames, truth


def write_mp4(frames: list[np.ndarray], path: str, fps: float) -> None:
    """Encode RGB frames as an mp4 (OpenCV 'mp4v'), written atomically to a local or s3:// path."""
    if not frames:
        raise ValueError("no frames to write")
    h, w = frames[0].shape[:2]
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "clip.mp4")
        writer = cv2.VideoWriter(local, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
        if not writer.isOpened():
            raise RuntimeError(f"{path}: OpenCV could not open an mp4v video writer")
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        storage.atomic_write_file(local, path)


def clip_name(index: int) -> str:
    """The file stem of clip ``index``: ``synthetic-NNNN`` (``.mp4`` and ``.gt.npz``)."""
    return f"synthetic-{index:04d}"


def write_video(index: int, seed: int, settings: SyntheticVideosConfig, out_dir: str) -> dict[str, Any]:
    """Clip ``index`` of ``seed`` rendered and written into ``out_dir``: its ground truth
    (``.gt.npz``), then the mp4 (written last: its presence marks the clip done), each atomically.
    The clip depends only on its index and the seed. Returns its stats and the files ``written``."""
    t0 = time.perf_counter()
    name = clip_name(index)
    frames, truth = synthesize_video(index, seed, settings)
    buf = io.BytesIO()
    np.savez_compressed(buf, **truth)
    truth_path = storage.join(out_dir, f"{name}.gt.npz")
    storage.atomic_write_bytes(truth_path, buf.getvalue())
    video_path = storage.join(out_dir, f"{name}.mp4")
    write_mp4(frames, video_path, settings.fps)
    return {"video": video_path, "frames": len(frames), "seconds": time.perf_counter() - t0,
            "visible_landmarks": float(truth["landmarks_visible"].mean() * 68), "written": [truth_path, video_path]}


def _write_video_task(task: tuple[int, int, SyntheticVideosConfig, str]) -> dict[str, Any]:
    return write_video(*task)


def generate_videos(out_dir: str, n: int, seed: int = 0, settings: SyntheticVideosConfig | None = None,
                    workers: int = 1, resume: bool = True,
                    progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write ``n`` clips as ``synthetic-NNNN.mp4`` + ``synthetic-NNNN.gt.npz`` under ``out_dir``
    (:func:`write_video` each, on ``workers`` processes): the library's plain path; ``facepgn synth
    videos`` (:func:`facepgn.pipelines.synth.run_synth_videos`) renders the same clips on Ray or here."""
    settings = settings or SyntheticVideosConfig()
    storage.check_writable(out_dir)  # an output that cannot be written: one line before any work
    tasks, skipped = [], []
    for i in range(n):
        path = storage.join(out_dir, f"{clip_name(i)}.mp4")
        if resume and storage.exists(path) and storage.exists(storage.join(out_dir, f"{clip_name(i)}.gt.npz")):
            skipped.append(path)
            if progress:
                progress(1)
            continue
        tasks.append((i, seed, settings, out_dir))
    t0 = time.perf_counter()
    done = []
    if workers <= 1 or len(tasks) <= 1:
        with single_threaded():
            for task in tasks:
                done.append(_write_video_task(task))
                if progress:
                    progress(1)
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=_pool_context(), initializer=_init_worker) as pool:
            for result in pool.map(_write_video_task, tasks):
                done.append(result)
                if progress:
                    progress(1)
    return {
        "videos": n,
        "written": len(done),
        "skipped_existing": len(skipped),
        "files": sorted([d["video"] for d in done] + skipped),
        "frames_per_video": settings.frames,
        "seconds": time.perf_counter() - t0,
    }


