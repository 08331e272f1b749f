"""Local and ``s3://`` paths in one place, and atomic writes.

Everything that reads or writes job inputs/outputs goes through here, so a path can be a local
folder or an S3 prefix everywhere. S3 access uses s3fs; a custom endpoint (a moto server in tests,
MinIO, ...) comes from ``AWS_ENDPOINT_URL``. Writes are atomic: local files are written under a
temporary name and renamed; an S3 object only appears once its upload completes.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from pathlib import Path
from typing import Iterable

import fsspec

from facepgn.errors import InputError


def is_remote(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def strip_file_scheme(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def get_fs(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``path`` and the path as that filesystem names it."""
    path = str(path)
    if path.startswith("s3://"):
        return s3_filesystem(), path[len("s3://"):]
    if is_remote(path):
        fs, _, paths = fsspec.get_fs_token_paths(path)
        return fs, paths[0]
    return fsspec.filesystem("file"), os.path.abspath(strip_file_scheme(path))


def s3_filesystem():
    """An s3fs filesystem that honours ``AWS_ENDPOINT_URL`` (moto, MinIO) if it is set."""
    import s3fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    client_kwargs = {"endpoint_url": endpoint} if endpoint else {}
    return s3fs.S3FileSystem(client_kwargs=client_kwargs)


def pyarrow_filesystem(path: str):
    """A pyarrow filesystem for Ray Data / pyarrow datasets, and the path it understands.

    For ``s3://`` this wraps the same s3fs configuration as :func:`get_fs`, so one endpoint setting
    serves both fsspec and Ray Data.
    """
    import pyarrow.fs as pafs

    if str(path).startswith("s3://"):
        fs, stripped = get_fs(path)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), stripped
    return pafs.LocalFileSystem(), os.path.abspath(strip_file_scheme(str(path)))


def join(base: str, *parts: str) -> str:
    base = str(base)
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def basename(path: str) -> str:
    return posixpath.basename(str(path).rstrip("/"))


def exists(path: str) -> bool:
    fs, p = get_fs(path)
    return fs.exists(p)


def makedirs(path: str) -> None:
    """Create a local folder (a no-op for S3, where prefixes need no creation)."""
    if not is_remote(path):
        os.makedirs(strip_file_scheme(str(path)), exist_ok=True)


def read_bytes(path: str) -> bytes:
    fs, p = get_fs(path)
    with fs.open(p, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def read_nonempty(path: str, expected: str) -> bytes:
    """The bytes of a local or ``s3://`` file, or a one-line InputError if it is missing or empty
    (``expected`` names what it should hold, e.g. ``"an image"``)."""
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    if not data:
        raise InputError(path, f"empty file, expected {expected}")
    return data


def size(path: str) -> int:
    fs, p = get_fs(path)
    return int(fs.size(p))


def _restore_scheme(original: str, listed: str) -> str:
    if original.startswith("s3://"):
        return "s3://" + listed
    return listed


def list_files(root: str, extensions: Iterable[str] | None = None, recursive: bool = True) -> list[str]:
    """Files under ``root`` (a folder, prefix, glob or single file), sorted, with their scheme.

    ``extensions`` are lower-case suffixes such as ``".mp4"``.
    """
    root = str(root)
    fs, p = get_fs(root)
    exts = tuple(e.lower() for e in extensions) if extensions else None
    fs.invalidate_cache()  # s3fs caches listings per process: other processes may have written since
    if any(ch in p for ch in "*?["):
        found = fs.glob(p)
    elif fs.isfile(p):
        found = [p]
    elif fs.isdir(p):
        found = fs.find(p) if recursive else [f for f in fs.ls(p, detail=False) if fs.isfile(f)]
    else:
        found = []
    out = []
    for f in found:
        if exts and not f.lower().endswith(exts):
            continue
        if basename(f).startswith(".") or ".tmp-" in basename(f):
            continue
        out.append(_restore_scheme(root, f))
    return sorted(out)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` so that readers see either nothing or the whole file."""
    path = str(path)
    if is_remote(path):
        fs, p = get_fs(path)
        with fs.open(p, "wb") as f:
            f.write(data)
        return
    path = strip_file_scheme(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_file(local_src: str | Path, dest: str) -> None:
    """Copy a finished local file to ``dest`` (local or S3) atomically."""
    dest = str(dest)
    if is_remote(dest):
        fs, p = get_fs(dest)
        fs.put_file(str(local_src), p)
        return
    with open(local_src, "rb") as f:
        atomic_write_bytes(dest, f.read())


def remove(path: str) -> None:
    fs, p = get_fs(path)
    if fs.exists(p):
        fs.rm(p, recursive=True)


def local_copy(path: str, tmp_dir: str | Path) -> str:
    """A local file path for ``path``: itself if local, else downloaded into ``tmp_dir``."""
    if not is_remote(path):
        return strip_file_scheme(str(path))
    fs, p = get_fs(path)
    dest = os.path.join(str(tmp_dir), f"{uuid.uuid4().hex[:8]}-{basename(path)}")
    fs.get_file(p, dest)
    return dest
