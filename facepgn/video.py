"""Video and photo inputs: listing a corpus (folder, glob, ``s3://`` prefix or manifest) of videos,
photos or both (:func:`list_videos`, :func:`list_media`), streaming a video's frames, reading a photo.

Decoding is chunked (``decord``, a batch of sampled frames at a time), so memory does not grow with
the length of a video. Frames come out as RGB ``uint8`` (H, W, 3); grayscale videos decode to three
equal channels. Unreadable files raise :class:`facepgn.errors.InputError` with a one-line cause.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence

import numpy as np

from facepgn import storage
from facepgn.errors import FacepgnError, InputError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MANIFEST_EXTENSIONS = (".csv", ".jsonl")


class _ItemDict:
    """An input item (a frozen dataclass) as the plain dict Ray Data and the markers carry."""

    def to_dict(self) -> dict:
        return asdict(self)  # the subclasses are dataclasses


@dataclass(frozen=True)
class VideoItem(_ItemDict):
    """One input video: where it is, the id its outputs are named by, and whose face it shows."""

    path: str
    video_id: str
    subject_id: str


@dataclass(frozen=True)
class MediaItem(_ItemDict):
    """One input item of a job over videos and photos: where it is, the id its outputs are named
    by, whose face it shows, and what it is (``video``, ``photo``, or ``other``: a manifest entry
    whose extension is neither)."""

    path: str
    item_id: str
    subject_id: str
    kind: str


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int


@dataclass
class Frame:
    """A sampled frame: its index in the video, its time in seconds, and the RGB pixels."""

    index: int
    time: float
    rgb: np.ndarray


# ---- listing ---------------------------------------------------------------------------------


def _sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "video"


def video_id_for(path: str, root: str | None = None) -> str:
    """A stable id from the path relative to the input root, without the extension (no '/')."""
    path = str(path)
    rel = path
    if root:
        root_s = str(root).rstrip("/")
        if path.startswith(root_s + "/"):
            rel = path[len(root_s) + 1:]
        else:
            rel = storage.basename(path)
    else:
        rel = storage.basename(path)
    rel = os.path.splitext(rel)[0]
    return _sanitize(rel.replace("/", "__"))


def _unique_ids(items: list[VideoItem]) -> list[VideoItem]:
    """Append a short path hash to ids that collide, so each video's shards have their own names."""
    counts: dict[str, int] = {}
    for item in items:
        counts[item.video_id] = counts.get(item.video_id, 0) + 1
    out = []
    for item in items:
        if counts[item.video_id] > 1:
            digest = hashlib.sha1(item.path.encode()).hexdigest()[:8]
            vid = f"{item.video_id}-{digest}"
            subject = item.subject_id if item.subject_id != item.video_id else vid
            item = VideoItem(item.path, vid, subject)
        out.append(item)
    return out


def _glob_root(path: str) -> str:
    """The fixed folder part of a glob pattern."""
    parts = path.split("/")
    fixed = []
    for part in parts:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    return "/".join(fixed)


def read_manifest(path: str) -> list[VideoItem]:
    """A CSV (header with ``path``) or JSONL manifest; optional ``subject_id`` and ``video_id``.

    Relative paths are resolved against the manifest's folder.
    """
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise InputError(path, "manifest not found") from None
    if path.lower().endswith(".jsonl"):
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(path, f"line {lineno} is not valid JSON") from None
            if not isinstance(row, dict):
                raise InputError(path, f"line {lineno} is not a JSON object")
            rows.append(row)
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    base = path.rsplit("/", 1)[0] if "/" in path else "."
    items = []
    for n, row in enumerate(rows, 1):
        video_path = str(row.get("path") or "").strip()
        if not video_path:
            raise InputError(path, f"row {n} has no 'path'")
        if not storage.is_remote(video_path) and not os.path.isabs(video_path):
            video_path = storage.join(base, video_path)
        vid = str(row.get("video_id") or "").strip() or video_id_for(video_path)
        vid = _sanitize(vid)
        subject = str(row.get("subject_id") or "").strip() or vid
        items.append(VideoItem(video_path, vid, subject))
    return items


def list_videos(source: str, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[VideoItem]:
    """Input videos from a local folder/glob/file, an ``s3://`` prefix, or a .csv/.jsonl manifest.

    The subject id defaults to the video id. Sorted by path, so runs are deterministic.
    """
    source = str(source)
    if source.lower().endswith(MANIFEST_EXTENSIONS):
        items = read_manifest(source)
    else:
        exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        paths = storage.list_files(source, extensions=exts)
        if not paths and not storage.exists(source) and not any(ch in source for ch in "*?["):
            raise InputError(source, "input not found")
        fs, stripped = storage.get_fs(source)
        if any(ch in stripped for ch in "*?["):
            root = _glob_root(source)
        elif paths == [source] or (len(paths) == 1 and fs.isfile(stripped)):
            root = None
        else:
            root = source
        items = []
        for p in paths:
            vid = video_id_for(p, root)
            items.append(VideoItem(p, vid, vid))
    return _unique_ids(sorted(items, key=lambda it: it.path))


def _extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)


def media_kind(path: str, video_extensions: Sequence[str] = VIDEO_EXTENSIONS,
               image_extensions: Sequence[str] = IMAGE_EXTENSIONS) -> str:
    """``video``, ``photo`` or ``other``, from the file extension (case-insensitive)."""
    ext = os.path.splitext(str(path))[1].lower()
    return "video" if ext in _extensions(video_extensions) else "photo" if ext in _extensions(image_extensions) else "other"


def list_media(source: str, video_extensions: Sequence[str] = VIDEO_EXTENSIONS,
               image_extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[MediaItem]:
    """Videos and photos together, from the same inputs as :func:`list_videos` (a folder, glob,
    single file, ``s3://`` prefix, or .csv/.jsonl manifest with ``path`` and optional
    ``subject_id``/``video_id``), sorted by path, each classified by :func:`media_kind`. Ids are
    unique across both kinds (``a.mp4`` and ``a.jpg`` get a path hash each)."""
    videos, photos = _extensions(video_extensions), _extensions(image_extensions)
    return [MediaItem(it.path, it.video_id, it.subject_id, media_kind(it.path, videos, photos))
            for it in list_videos(source, videos + photos)]


# ---- photos ----------------------------------------------------------------------------------


@dataclass
class Photo:
    """A decoded photo: ``rgb`` at full resolution, ``small`` downscaled so its longer side is at
    most ``max_side`` (``rgb`` itself when already small enough), and ``to_source`` the factor
    from ``small``'s pixels to ``rgb``'s (1.0 unless downscaled)."""

    rgb: np.ndarray
    small: np.ndarray
    to_source: float

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the full-resolution photo."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])


def downscale(rgb: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    """``rgb`` resized (area filter) so its longer side is at most ``max_side``, and the factor from
    the result's pixels back to ``rgb``'s; the image itself and 1.0 when it is small enough."""
    import cv2

    h, w = rgb.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return rgb, 1.0
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return small, w / small.shape[1]


def read_photo(path: str, max_side: int | None = None) -> Photo:
    """A JPEG/PNG (local or ``s3://``, EXIF orientation applied) at full resolution plus a copy
    downscaled to ``max_side`` (detection, overlays); a one-line :class:`InputError` for a missing,
    empty or unreadable file (``facepgn.labelled.read_image``, as the label job reads photos)."""
    from facepgn.labelled import read_image

    rgb = read_image(path)
    small, to_source = downscale(rgb, max_side)
    return Photo(rgb=rgb, small=small, to_source=to_source)


# ---- decoding --------------------------------------------------------------------------------


def _decord_cause(exc: Exception) -> str:
    """decord's errors carry a log prefix and a C++ source location; keep the useful tail."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    if text.startswith("Error reading "):  # decord's only message when FFmpeg cannot open a file
        return "not a video file, or truncated/corrupt: FFmpeg could not open it"
    if "av_read_frame failed" in text:  # decord indexes every packet on open
        return "truncated or corrupt: FFmpeg could not read all its packets"
    if "ERROR opening" in text and "," in text:
        text = text.rsplit(",", 1)[-1].strip()
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", text)
    return text[:200]


@contextmanager
def local_video(path: str) -> Iterator[str]:
    """A local file for ``path`` (downloaded to a temp folder for s3://, removed afterwards)."""
    if not storage.is_remote(path):
        yield storage.strip_file_scheme(path)
        return
    with tempfile.TemporaryDirectory(prefix="facepgn-video-") as tmp:
        try:
            local = storage.local_copy(path, tmp)
        except FileNotFoundError:
            raise InputError(path, "not found") from None
        yield local


class VideoReader:
    """Streams sampled frames of one local video file, a chunk at a time.

    ``max_side`` decodes frames downscaled so their longer side is at most that many pixels
    (decord scales while decoding, which is cheaper than decoding full size).

    Memory: once a decord ``VideoReader`` has returned a frame, its decoder thread keeps decoding
    the rest of the video into memory in the background (dmlc/decord issues #157, #208; measured
    here: ~770 MB for a 9 s 1280x720 clip 3 s after reading one frame). So each chunk is read with
    a fresh decord reader that is dropped right after ``get_batch``: at most about one chunk's
    worth of frames is ever decoded, whatever the video's length.
    """

    def __init__(self, path: str, *, max_side: int | None = None, num_threads: int = 1, display_path: str | None = None):
        self.path = path
        self.num_threads = num_threads
        shown = display_path or path
        self.display_path = shown
        if not os.path.exists(path):
            raise InputError(shown, "file not found")
        if os.path.getsize(path) == 0:
            raise InputError(shown, "empty file (0 bytes)")
        self._size_kwargs: dict[str, int] = {}
        try:
            probe = self._open()
            num_frames = len(probe)
            if num_frames == 0:
                raise InputError(shown, "video has no frames")
            fps = float(probe.get_avg_fps() or 0.0)
            height, width = probe[0].shape[:2]
            del probe  # stop its read-ahead
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - decord raises RuntimeError / DECORDError with a log prefix
            raise InputError(shown, f"cannot decode video ({_decord_cause(exc)})") from None
        if not np.isfinite(fps) or fps <= 0:
            fps = 25.0
        self.source_size = (int(width), int(height))
        if max_side and max(width, height) > max_side:
            scale = max_side / max(width, height)
            width, height = int(round(width * scale / 2) * 2), int(round(height * scale / 2) * 2)
            self._size_kwargs = {"width": width, "height": height}
        # decoded-frame pixels -> source-video pixels (1.0 unless decoded downscaled)
        self.scale_to_source = self.source_size[0] / float(width)
        self.info = VideoInfo(num_frames=num_frames, fps=fps, width=int(width), height=int(height))

    def _open(self):
        import decord

        return decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=self.num_threads, **self._size_kwargs)

    def sample_indices(self, target_fps: float | None, max_frames: int | None = None) -> list[int]:
        """Frame indices at ``target_fps`` (every frame if None or above the video's rate)."""
        return sample_indices(self.info.num_frames, self.info.fps, target_fps, max_frames)

    def frames(self, indices: Sequence[int], chunk_size: int = 32) -> Iterator[Frame]:
        """Decode ``indices`` ``chunk_size`` frames at a time. A chunk that fails to decode ends the
        stream with an :class:`InputError` (frames before it have been yielded)."""
        for start in range(0, len(indices), max(1, chunk_size)):
            chunk = [int(i) for i in indices[start:start + max(1, chunk_size)]]
            try:
                reader = self._open()
                batch = reader.get_batch(chunk).asnumpy()
                del reader  # before any processing: bounds decord's read-ahead to this chunk
            except Exception as exc:  # noqa: BLE001 - decord's errors, as above
                raise InputError(self.display_path, f"decoding stopped at frame {chunk[0]} ({_decord_cause(exc)})") from None
            for idx, rgb in zip(chunk, batch):
                if rgb.ndim == 2:
                    rgb = np.repeat(rgb[:, :, None], 3, axis=2)
                yield Frame(index=idx, time=idx / self.info.fps, rgb=np.ascontiguousarray(rgb))
            del batch


def stride_indices(num_frames: int, stride: int, max_frames: int | None) -> list[int]:
    """The frames inference looks at: every ``stride``-th of the first ``max_frames``."""
    stop = num_frames if max_frames is None else min(num_frames, int(max_frames))
    return list(range(0, max(0, stop), max(1, int(stride))))


def sample_indices(num_frames: int, fps: float, target_fps: float | None, max_frames: int | None = None) -> list[int]:
    """Evenly spaced frame indices at ``target_fps`` (deterministic), at most ``max_frames``."""
    if num_frames <= 0:
        return []
    if not target_fps or target_fps >= fps:
        indices = list(range(num_frames))
    else:
        step = fps / target_fps
        count = int(np.floor((num_frames - 1) / step)) + 1
        indices = sorted({min(num_frames - 1, int(round(i * step))) for i in range(count)})
    if max_frames is not None:
        indices = indices[: max(0, int(max_frames))]
    return indices


__all__ = [
    "VIDEO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "VideoItem",
    "MediaItem",
    "Photo",
    "VideoInfo",
    "Frame",
    "VideoReader",
    "list_videos",
    "list_media",
    "media_kind",
    "read_photo",
    "downscale",
    "read_manifest",
    "video_id_for",
    "sample_indices",
    "local_video",
    "FacepgnError",
]
