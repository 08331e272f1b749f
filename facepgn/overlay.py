"""Overlays: a face's posed mesh (wireframe, back faces culled) and landmarks drawn on the frames
of a video or on a photo, beside the renderer (``facepgn.render`` draws; this module poses and writes)."""

from __future__ import annotations

import os
import tempfile

import numpy as np

from facepgn import records, storage
from facepgn.config import InferConfig
from facepgn.errors import FacepgnError
from facepgn.video import stride_indices


def posed_vertices(face_model, row: dict[str, np.ndarray]) -> np.ndarray:
    """The mesh of one row in frame pixels (V, 3)."""
    from facepgn import geometry

    verts = face_model.vertices(np.asarray(row["id_coeffs"], np.float32), np.asarray(row["exp_coeffs"], np.float32))
    return np.asarray(
        geometry.project(np.asarray(verts, np.float64), np.float64(row["scale"]), np.asarray(row["rotation"], np.float64).reshape(3, 3),
                         np.asarray(row["translation"], np.float64)),
        np.float32,
    )


def front_triangles(face_model, rotation: np.ndarray) -> np.ndarray:
    """Triangles whose normal faces the camera under ``rotation`` (back-face culling)."""
    v = face_model.mean.astype(np.float64)
    tri = face_model.triangles
    n = np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]])
    outward = 1.0 if n[:, 2].sum() >= 0 else -1.0
    nz = (n @ np.asarray(rotation, np.float64).reshape(3, 3).T)[:, 2] * outward
    return tri[nz > 0]


def draw_overlay_frame(frame: np.ndarray, rows: list[dict], style: str, face_model=None) -> np.ndarray:
    """The frame (RGB) with each face's mesh (wireframe, back faces culled) or landmarks drawn."""
    import cv2

    from facepgn import render

    out = frame
    for row in rows:
        if style == "mesh" and face_model is not None:
            verts = posed_vertices(face_model, row)
            out = render.draw_mesh(out, verts[:, :2], front_triangles(face_model, row["rotation"]), mode="wireframe", alpha=0.4)
        out = render.draw_landmarks(out, np.asarray(row["landmarks_2d"]).reshape(68, 2))
        x, y, w, h = (int(round(float(c))) for c in np.asarray(row["box"]).reshape(4))
        out = np.ascontiguousarray(out)
        cv2.rectangle(out, (x, y), (x + w, y + h), (255, 200, 0), 1)
        cv2.putText(out, f"#{int(row['track_id'])}", (x, max(12, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 200, 0), 1, cv2.LINE_AA)
    return out


def write_overlay(video_path: str, rows: dict[str, np.ndarray], cfg: InferConfig, dest: str, face_model=None) -> int:
    """Re-decode the sampled frames in chunks, draw each frame's faces, write an mp4 (mp4v) to
    ``dest`` atomically. Returns the number of frames written."""
    import cv2

    from facepgn import video

    by_frame: dict[int, list[dict]] = {}
    for i in range(len(rows["frame_index"])):
        by_frame.setdefault(int(rows["frame_index"][i]), []).append({k: rows[k][i] for k in _OVERLAY_KEYS})
    written = 0
    with video.local_video(video_path) as local, tempfile.TemporaryDirectory(prefix="facepgn-overlay-") as tmp:
        reader = video.VideoReader(local, display_path=video_path)
        info = reader.info
        indices = stride_indices(info.num_frames, cfg.stride, cfg.max_frames)
        out_path = os.path.join(tmp, "overlay.mp4")
        writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*"mp4v"), max(1.0, info.fps / max(1, cfg.stride)), (info.width, info.height))
        if not writer.isOpened():
            raise FacepgnError(f"{dest}: cannot open an mp4 video writer (OpenCV without the mp4v codec?)")
        try:
            for frame in reader.frames(indices, chunk_size=cfg.chunk_frames):
                drawn = draw_overlay_frame(frame.rgb, by_frame.get(frame.index, []), cfg.overlay_style, face_model)
                writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                written += 1
        finally:
            writer.release()
        storage.atomic_write_file(out_path, dest)
    return written


_OVERLAY_KEYS = ("landmarks_2d", "box", "track_id", "id_coeffs", "exp_coeffs", "scale", "rotation", "translation")


def write_photo_overlay(photo_path: str, rows: dict[str, np.ndarray], cfg: InferConfig, dest: str, face_model=None) -> int:
    """Re-read the photo (downscaled to ``cfg.photo_max_side``, as it was for detection), draw its
    faces (the rows' photo-pixel coordinates scaled to the image drawn on), and write it to
    ``dest`` (JPEG or PNG by its extension) atomically. Returns 1 (the overlay's frame count)."""
    from facepgn import video

    photo = video.read_photo(photo_path, cfg.photo_max_side)
    k = 1.0 / photo.to_source  # photo pixels -> pixels of the image drawn on
    drawn_rows = []
    for i in range(len(rows["frame_index"])):
        row = {key: rows[key][i] for key in _OVERLAY_KEYS}
        row["landmarks_2d"] = np.asarray(row["landmarks_2d"], np.float32) * np.float32(k)
        row["box"] = np.asarray(row["box"], np.float32) * np.float32(k)
        row["scale"] = np.float32(row["scale"]) * np.float32(k)  # the posed mesh scales with s and t
        row["translation"] = np.asarray(row["translation"], np.float32) * np.float32(k)
        drawn_rows.append(row)
    small = photo.small
    del photo
    drawn = draw_overlay_frame(small, drawn_rows, cfg.overlay_style, face_model)
    fmt = ".png" if dest.lower().endswith(".png") else ".jpg"
    storage.atomic_write_bytes(dest, records.encode_image(np.ascontiguousarray(drawn), fmt, quality=90))
    return 1
