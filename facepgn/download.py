"""Checksum-pinned downloads of facepgn's upstream data files (the ICT face model, the ONNX detector
and landmark models) over HTTPS, with resume, progress and atomic writes.

Every file has a pinned sha256 and size. A file already present and matching is skipped (so a rerun
resumes where an interrupted one stopped); a partial ``.part`` file is continued with an HTTP
``Range`` request where the server allows it; a finished file is verified before it is renamed into
place, and a mismatch is a one-line :class:`~facepgn.errors.InputError` naming the file.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

from facepgn.errors import FacepgnError, InputError

ICT_COMMIT = "da5f95a607f5e6b37755b38d3385d7f2853732e5"
ICT_BASE_URL = f"https://raw.githubusercontent.com/ICT-VGL/ICT-FaceKit/{ICT_COMMIT}/FaceXModel/"
ICT_BASE_URL_ENV = "FACEPGN_ICT_BASE_URL"  # a mirror of the FaceXModel folder
ICT_TABLE_RESOURCE = "ict_upstream_sha256.txt"  # package data in facepgn/data/
ICT_RAW_SUBDIR = "ict-facekit-FaceXModel"
ICT_OUTPUT_NAME = "ict_face_area.npz"
CHUNK = 1 << 20


@dataclass(frozen=True)
class PinnedFile:
    """One file to fetch: its name under the destination folder, URL, sha256 and size in bytes."""

    name: str
    url: str
    sha256: str
    size: int


def read_sha_table(path: str | os.PathLike | None = None) -> list[tuple[str, int, str]]:
    """(sha256, size, file name) rows of a ``sha256  size  path`` table; default: the pinned ICT table.

    The path column's folder part (``FaceXModel/``) is dropped: names are relative to the base URL.
    """
    if path is None:
        text = resources.files("facepgn.data").joinpath(ICT_TABLE_RESOURCE).read_text()
        source = f"facepgn/data/{ICT_TABLE_RESOURCE}"
    else:
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise InputError(path, "checksum table not found") from None
        source = str(path)
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3 or len(parts[0]) != 64 or not parts[1].isdigit():
            raise InputError(source, f"line {number}: expected 'sha256 size path'")
        rows.append((parts[0].lower(), int(parts[1]), parts[2].rsplit("/", 1)[-1]))
    if not rows:
        raise InputError(source, "checksum table lists no files")
    return rows


def ict_files(base_url: str | None = None, table: str | os.PathLike | None = None) -> list[PinnedFile]:
    """The pinned ICT-FaceKit FaceXModel files (159 at the pinned commit) with their URLs."""
    base = base_url or os.environ.get(ICT_BASE_URL_ENV) or ICT_BASE_URL
    if not base.endswith("/"):
        base += "/"
    return [PinnedFile(name, base + name, sha, size) for sha, size, name in read_sha_table(table)]


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def is_verified(path: Path, pinned: PinnedFile) -> bool:
    return path.is_file() and path.stat().st_size == pinned.size and file_sha256(path) == pinned.sha256


def _open(url: str, offset: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "facepgn-downloader"})  # noqa: S310 - https or a test mirror
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - https or a test mirror


def fetch(pinned: PinnedFile, dest_dir: str | os.PathLike, progress=None, retries: int = 3,
          timeout: float = 60.0) -> tuple[Path, bool]:
    """Fetch one pinned file into ``dest_dir``; returns (path, downloaded?). Skips a verified file."""
    dest_dir = Path(dest_dir)
    target = dest_dir / pinned.name
    if is_verified(target, pinned):
        if progress is not None:
            progress.update(pinned.size)
        return target, False
    dest_dir.mkdir(parents=True, exist_ok=True)
    part = dest_dir / f".{pinned.name}.part"
    attempt = 0
    while True:
        attempt += 1
        offset = part.stat().st_size if part.exists() else 0
        if offset > pinned.size:
            part.unlink()
            offset = 0
        try:
            with _open(pinned.url, offset, timeout) as response:
                status = getattr(response, "status", 200)
                if offset and status != 206:  # server ignored Range: start over
                    offset = 0
                mode = "ab" if offset else "wb"
                if progress is not None and offset:
                    progress.update(offset)
                with open(part, mode) as out:
                    while True:
                        block = response.read(CHUNK)
                        if not block:
                            break
                        out.write(block)
                        if progress is not None:
                            progress.update(len(block))
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and part.exists():  # range past the end: already complete
                break
            if exc.code < 500 or attempt > retries:
                raise FacepgnError(f"{pinned.url}: download failed (HTTP {exc.code} {exc.reason})") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            if attempt > retries:
                reason = getattr(exc, "reason", exc)
                raise FacepgnError(f"{pinned.url}: download failed ({reason})") from None
        time.sleep(min(2.0 ** attempt, 10.0) * 0.25)
    size = part.stat().st_size
    digest = file_sha256(part)
    if size != pinned.size or digest != pinned.sha256:
        part.unlink()
        raise InputError(
            target,
            f"checksum mismatch (got {size} bytes sha256 {digest[:12]}..., "
            f"expected {pinned.size} bytes sha256 {pinned.sha256[:12]}...); "
            f"from {pinned.url}; nothing was kept, rerun to retry",
        )
    os.replace(part, target)
    return target, True


def fetch_all(files: Iterable[PinnedFile], dest_dir: str | os.PathLike, show_progress: bool = True) -> dict[str, int]:
    """Fetch every file (sequentially, with one byte-level progress bar); returns counts."""
    files = list(files)
    total = sum(f.size for f in files)
    counts = {"files": len(files), "downloaded": 0, "already_verified": 0, "bytes": total}
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="download")
    try:
        for pinned in files:
            _, downloaded = fetch(pinned, dest_dir, progress=bar)
            counts["downloaded" if downloaded else "already_verified"] += 1
    finally:
        if bar is not None:
            bar.close()
    return counts


def download_ict(dest: str | os.PathLike, base_url: str | None = None, table: str | os.PathLike | None = None,
                 allow_missing: bool = False, show_progress: bool = True) -> dict:
    """Fetch the pinned ICT-FaceKit FaceXModel files into ``dest/ict-facekit-FaceXModel/`` and convert
    them to the canonical ``dest/ict_face_area.npz``. Returns a summary dict."""
    from facepgn.facemodel import convert_ict_upstream

    dest = Path(dest).expanduser()
    raw = dest / ICT_RAW_SUBDIR
    files = ict_files(base_url, table)
    counts = fetch_all(files, raw, show_progress=show_progress)
    model = convert_ict_upstream(raw, allow_missing=allow_missing, progress=show_progress)
    output = dest / ICT_OUTPUT_NAME
    model.save(output)
    return {**counts, "raw_dir": str(raw), "output": str(output), "model": model.summary()}


def download_asset(name: str, dest: str | os.PathLike | None = None, url: str | None = None,
                   show_progress: bool = True) -> dict:
    """Fetch a single-file asset from ``facepgn.paths.ASSETS`` (``detector``, ``landmarks``) into the
    cache (or ``dest``, a folder), verified against its pinned sha256 and size."""
    from facepgn.paths import ASSETS, cache_dir

    asset = ASSETS.get(name)
    if asset is None or asset.url is None or asset.sha256 is None or asset.size is None:
        downloadable = sorted(k for k, a in ASSETS.items() if a.url)
        raise FacepgnError(f"{name}: not a downloadable asset (choose from {', '.join(downloadable)})")
    target = (Path(dest).expanduser() / Path(asset.cache_relpath).name) if dest else cache_dir() / asset.cache_relpath
    pinned = PinnedFile(target.name, url or asset.url, asset.sha256, asset.size)
    counts = fetch_all([pinned], target.parent, show_progress=show_progress)
    return {**counts, "output": str(target)}


# ---- MediaPipe face mesh ----------------------------------------------------------------------

#: MediaPipe publishes face_landmark.tflite only inside its wheels; this one (CPython 3.11, manylinux)
#: is pinned, and the file is extracted from it and checked against its own pinned checksum.
MEDIAPIPE_WHEEL = PinnedFile(
    "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl",
    "https://files.pythonhosted.org/packages/cp311/m/mediapipe/mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl",
    "05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3",
    35622638,
)
MEDIAPIPE_MEMBER = "mediapipe/modules/face_landmark/face_landmark.tflite"


def download_mediapipe(dest: str | os.PathLike | None = None, wheel: PinnedFile = MEDIAPIPE_WHEEL,
                       canonical_url: str | None = None, show_progress: bool = True, keep_wheel: bool = False) -> dict:
    """Fetch MediaPipe's face mesh: the pinned wheel, from which ``face_landmark.tflite`` is extracted
    and verified, and ``canonical_face_model.obj`` from GitHub at a pinned commit. Into the cache's
    ``landmarks/mediapipe/`` (or ``dest``). The wheel is deleted afterwards unless ``keep_wheel``."""
    import zipfile

    from facepgn.paths import ASSETS, cache_dir

    mesh, canon = ASSETS["mediapipe_mesh"], ASSETS["mediapipe_canonical"]
    folder = Path(dest).expanduser() if dest else cache_dir() / Path(mesh.cache_relpath).parent
    target = folder / Path(mesh.cache_relpath).name
    pinned_mesh = PinnedFile(target.name, "", mesh.sha256 or "", mesh.size or 0)
    counts = {"files": 2, "downloaded": 0, "already_verified": 0}
    if is_verified(target, pinned_mesh):
        counts["already_verified"] += 1
    else:
        wheel_path, _ = fetch(wheel, folder, progress=None)
        try:
            with zipfile.ZipFile(wheel_path) as zf:
                data = zf.read(MEDIAPIPE_MEMBER)
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise InputError(wheel_path, f"cannot extract {MEDIAPIPE_MEMBER} ({exc.__class__.__name__})") from None
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != pinned_mesh.size or digest != pinned_mesh.sha256:
            raise InputError(wheel_path, f"{MEDIAPIPE_MEMBER}: checksum mismatch (got sha256 {digest[:12]}..., expected {pinned_mesh.sha256[:12]}...)")
        part = folder / f".{target.name}.part"
        part.write_bytes(data)
        os.replace(part, target)
        counts["downloaded"] += 1
        if not keep_wheel:
            wheel_path.unlink(missing_ok=True)
    canon_file = PinnedFile(Path(canon.cache_relpath).name, canonical_url or canon.url or "", canon.sha256 or "", canon.size or 0)
    _, fetched = fetch(canon_file, folder, progress=None)
    counts["downloaded" if fetched else "already_verified"] += 1
    return {**counts, "output": str(target), "canonical": str(folder / canon_file.name)}
