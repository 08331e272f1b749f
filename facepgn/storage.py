"""Local and ``s3://`` paths in one place, and atomic writes.

Everything that reads or writes job inputs/outputs goes through here, so a path can be a local
folder or an S3 prefix everywhere. S3 access uses s3fs; a custom endpoint (a moto server in tests,
MinIO, ...) comes from ``AWS_ENDPOINT_URL``. Writes are atomic: local files are written under a
temporary name and renamed; an S3 object only appears once its upload completes.

Faults: each function here turns the OS, fsspec and botocore errors of a path that cannot be read
or written into one :class:`~facepgn.errors.StorageError` (``<path>: <cause>``, :func:`fault`), so
the CLI prints one line instead of a traceback; a file that is simply not there stays
``FileNotFoundError`` on reads (callers say what was missing). Jobs call :func:`check_writable` on
their output before any work (:func:`check_file_writable`: an output that is one file;
:func:`check_readable`: an input exists and can be read; a listing that finds nothing in a missing
bucket says so). S3 clients fail fast (a short connect timeout, few retries): an unreachable
endpoint is an error within seconds, not minutes. See docs/errors.md.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import posixpath
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar
from urllib.parse import urlsplit

import fsspec

from facepgn.errors import InputError, StorageError

F = TypeVar("F", bound=Callable[..., Any])

#: seconds to open a connection to S3 (s3fs's default; botocore's is 60)
S3_CONNECT_TIMEOUT_S = 5
#: attempts per S3 request in botocore's ``standard`` retry mode (the AWS SDKs' default: jittered
#: backoff, throttling and transient connection errors retried)
S3_ATTEMPTS = 3
#: s3fs's own tries of a request, each with botocore's attempts: one (its default 5, times
#: botocore's legacy 5 attempts, kept an unreachable endpoint failing for minutes)
S3_RETRIES = 1

#: the environment an S3 client is built from: a change (another profile, a test's credentials)
#: gets a new client instead of a cached one that still holds the old settings
_S3_ENVIRONMENT = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
_S3_CLIENTS: dict[tuple, Any] = {}


# ---- faults: one translation of OS / fsspec / botocore errors ------------------------------------

_OS_CAUSES = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "parent is not a folder",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EISDIR: "is a folder",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "name too long",
}
#: S3 error codes of credentials the endpoint does not accept
_REFUSED_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                        "TokenRefreshRequired", "InvalidClientTokenId", "AuthorizationHeaderMalformed"}
_ACCESS_DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "Forbidden", "403"}
_NOT_THERE = {"NoSuchKey", "NotFound", "404"}


def fault(exc: BaseException, path: str, *, writing: bool = False) -> StorageError | None:
    """The :class:`StorageError` for ``exc``, raised while reading (or ``writing``) ``path``; None
    when ``exc`` is no storage fault: a file that is not there on a read, or a bug."""
    if isinstance(exc, StorageError):
        return exc
    cause = _s3_cause(exc)
    if cause is None:
        cause = _os_cause(exc, writing)
    return None if cause is None else StorageError(path, cause)


@contextlib.contextmanager
def faults(path: str | os.PathLike, *, writing: bool = False) -> Iterator[None]:
    """Inside, a storage fault of ``path`` is raised as its :class:`StorageError` (:func:`fault`)."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - only storage faults are translated, the rest re-raised as they are
        error = fault(exc, str(path), writing=writing)
        if error is None:
            raise
        raise error from exc


def _translated(writing: bool) -> Callable[[F], F]:
    """A storage function (its first argument the path) whose faults are :class:`StorageError`."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(path, *args, **kwargs):
            with faults(path, writing=writing):
                return func(path, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _s3_cause(exc: BaseException) -> str | None:
    """The plain cause of a botocore error in ``exc``'s chain (s3fs re-raises them as OSErrors)."""
    try:
        from botocore import exceptions as bx
    except ImportError:  # no S3 support installed: nothing to translate
        return None
    for error in _chain(exc):
        if isinstance(error, bx.ClientError):
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                return "bucket does not exist"
            if code in _REFUSED_CREDENTIALS:
                return f"the AWS credentials were refused ({code})"
            if code in _ACCESS_DENIED:
                return "access denied"
            return None if code in _NOT_THERE or not code else f"S3 refused the request ({code})"
        if isinstance(error, bx.NoCredentialsError):
            return "no AWS credentials found"
        if isinstance(error, bx.PartialCredentialsError):
            return f"incomplete AWS credentials ({error.kwargs.get('cred_var', 'a key')} is missing)"
        if isinstance(error, (bx.ConnectionError, bx.ConnectionClosedError)):
            return f"cannot reach the S3 endpoint {_endpoint_of(error)}"
        if isinstance(error, bx.ReadTimeoutError):
            return f"the S3 endpoint {_endpoint_of(error)} did not answer in time"
    return None


def _endpoint_of(error: Any) -> str:
    """``scheme://host[:port]`` of the URL a botocore connection error names, else the configured one."""
    url = str(getattr(error, "kwargs", {}).get("endpoint_url") or s3_endpoint() or "")
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else (url or "(the default AWS endpoint)")


def _os_cause(exc: BaseException, writing: bool) -> str | None:
    if not isinstance(exc, OSError) or not isinstance(exc.errno, int):
        return None
    if exc.errno == errno.ENOENT:  # on a read the caller says what is missing; on a write a folder is gone
        return "folder does not exist" if writing else None
    return _OS_CAUSES.get(exc.errno) or os.strerror(exc.errno).lower()


# ---- preflight -------------------------------------------------------------------------------------


def check_writable(path: str) -> None:
    """A job's output preflight, before any work: create the folder (local) and write and delete a
    probe file in it. A :class:`StorageError` naming ``path`` if it cannot be written."""
    path = str(path).rstrip("/") or str(path)
    probe = join(path, f".facepgn-write-probe-{uuid.uuid4().hex[:12]}")
    if is_remote(path):
        fs, stripped = get_fs(probe)
        with faults(path, writing=True):
            fs.pipe_file(stripped, b"")
            fs.rm_file(stripped)
        return
    local = strip_file_scheme(path)
    with faults(path, writing=True):
        if os.path.exists(local) and not os.path.isdir(local):
            raise StorageError(path, "is a file, not a folder")
        os.makedirs(local, exist_ok=True)
        fd = os.open(strip_file_scheme(probe), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(strip_file_scheme(probe))


def check_file_writable(path: str) -> None:
    """The preflight of an output that is one file (``export onnx --out``): :func:`check_writable`
    of the folder it goes into, the :class:`StorageError` naming ``path`` (as its write would)."""
    path = str(path)
    if is_remote(path):
        folder = posixpath.dirname(path.rstrip("/"))
    else:
        local = strip_file_scheme(path)
        if os.path.isdir(local):
            raise StorageError(path, "is a folder")
        folder = os.path.dirname(os.path.abspath(local))
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise StorageError(path, "parent is not a folder")
    try:
        check_writable(folder)
    except StorageError as exc:
        raise StorageError(path, exc.cause) from exc


def check_readable(path: str) -> None:
    """A job's input preflight: ``path`` (a file, folder, prefix or glob: its fixed part) exists
    and can be read; a one-line :class:`InputError` (``input not found``) or :class:`StorageError`."""
    path = str(path)
    fixed = _fixed_part(path)
    if path.startswith("s3://"):
        fs, stripped = get_fs(fixed)
        bucket, _, key = stripped.partition("/")
        with faults(path):
            found = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key, MaxKeys=1).get("KeyCount", 0)
        if not found:
            raise InputError(path, "input not found")
        return
    if is_remote(path):
        if not exists(fixed):
            raise InputError(path, "input not found")
        return
    local = strip_file_scheme(fixed)
    if not os.path.exists(local):
        raise InputError(path, "input not found")
    if not os.access(local, os.R_OK | (os.X_OK if os.path.isdir(local) else 0)):
        raise StorageError(path, "permission denied")


def _fixed_part(path: str) -> str:
    """``path`` up to the folder that holds its first wildcard (all of it when it has none)."""
    cut = min((path.index(ch) for ch in "*?[" if ch in path), default=None)
    return path if cut is None else (posixpath.dirname(path[:cut]) or ".")


# ---- paths and filesystems -------------------------------------------------------------------------


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


def s3_endpoint() -> str | None:
    """The custom S3 endpoint (``AWS_ENDPOINT_URL``, or ``AWS_ENDPOINT_URL_S3``), if one is set."""
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")


def s3_filesystem():
    """An s3fs filesystem that honours ``AWS_ENDPOINT_URL`` (moto, MinIO) if it is set and fails
    fast (:data:`S3_CONNECT_TIMEOUT_S`, :data:`S3_ATTEMPTS`, :data:`S3_RETRIES`). One per process
    and thread (as fsspec's own cache) and per AWS environment: new credentials get a new client."""
    import s3fs

    key = (os.getpid(), threading.get_ident(), *(os.environ.get(name) for name in _S3_ENVIRONMENT))
    fs = _S3_CLIENTS.get(key)
    if fs is None:
        endpoint = s3_endpoint()
        fs = s3fs.S3FileSystem(
            client_kwargs={"endpoint_url": endpoint} if endpoint else {},
            config_kwargs={"connect_timeout": S3_CONNECT_TIMEOUT_S, "retries": {"mode": "standard", "max_attempts": S3_ATTEMPTS}},
            skip_instance_cache=True,
        )
        fs.retries = S3_RETRIES
        if len(_S3_CLIENTS) >= 32:  # threads come and go: keep the newest
            _S3_CLIENTS.pop(next(iter(_S3_CLIENTS)))
        _S3_CLIENTS[key] = fs
    return fs


def pyarrow_filesystem(path: str):
    """A pyarrow filesystem for Ray Data / pyarrow datasets, and the path it understands.

    For ``s3://`` this wraps the same s3fs configuration as :func:`get_fs`, so one endpoint setting
    serves both fsspec and Ray Data, and its faults are :class:`StorageError` too (also inside Ray
    tasks, whence they come back wrapped: :func:`facepgn.errors.user_error` finds them).
    """
    import pyarrow.fs as pafs

    if str(path).startswith("s3://"):
        fs, stripped = get_fs(path)
        return pafs.PyFileSystem(fault_handler(fs)), stripped
    return pafs.LocalFileSystem(), os.path.abspath(strip_file_scheme(str(path)))


#: the pyarrow handler's calls that read, and those that write (the open_* ones also wrap the file)
_HANDLER_READS = ("get_file_info", "get_file_info_selector", "open_input_file", "open_input_stream")
_HANDLER_WRITES = ("create_dir", "delete_dir", "delete_dir_contents", "delete_root_dir_contents", "delete_file",
                   "move", "copy_file", "open_output_stream", "open_append_stream")


def fault_handler(fs: fsspec.AbstractFileSystem):
    """A ``pyarrow.fs.FSSpecHandler`` of ``fs`` whose faults, also those of the files it opens
    (an S3 upload fails on close), are :class:`StorageError`; it pickles (Ray ships it to tasks)."""
    return _fault_handler_class()(fs)


@functools.cache
def _fault_handler_class():
    import pyarrow
    import pyarrow.fs as pafs

    class FaultHandler(pafs.FSSpecHandler):
        def __reduce__(self):
            return (fault_handler, (self.fs,))

        def _open(self, path: str, mode: str):
            with faults(self._where(path), writing=mode != "rb"):
                if mode == "rb" and not self.fs.isfile(path):
                    raise FileNotFoundError(path)
                raw = self.fs.open(path, mode=mode)
            return pyarrow.PythonFile(_FaultFile(raw, self._where(path), mode != "rb"), mode="r" if mode == "rb" else "w")

        def open_input_stream(self, path):
            return self._open(path, "rb")

        def open_input_file(self, path):
            return self._open(path, "rb")

        def open_output_stream(self, path, metadata):
            return self._open(path, "wb")

        def open_append_stream(self, path, metadata):
            return self._open(path, "ab")

        def _where(self, path: str) -> str:
            protocol = self.fs.protocol[0] if isinstance(self.fs.protocol, tuple) else self.fs.protocol
            return f"{protocol}://{path}"

    for name in _HANDLER_READS + _HANDLER_WRITES:
        if not name.startswith("open_"):
            setattr(FaultHandler, name, _handler_call(getattr(pafs.FSSpecHandler, name), name in _HANDLER_WRITES))
    return FaultHandler


def _handler_call(method: Callable[..., Any], writing: bool) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self, target, *args):
        where = getattr(target, "base_dir", target)  # a FileSelector, a path, or a list of paths
        where = where[0] if isinstance(where, list) and where else where
        with faults(self._where(where), writing=writing):
            return method(self, target, *args)

    return call


class _FaultFile:
    """A file of :func:`fault_handler` (what ``pyarrow.PythonFile`` wraps): the faults of its
    reads, writes and close are :class:`StorageError`; everything else is the file's own."""

    def __init__(self, raw: Any, where: str, writing: bool):
        self._raw, self._where, self._writing = raw, where, writing

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def _call(self, name: str, *args: Any) -> Any:
        with faults(self._where, writing=self._writing):
            return getattr(self._raw, name)(*args)

    def read(self, *args: Any) -> Any:
        return self._call("read", *args)

    def readinto(self, *args: Any) -> Any:
        return self._call("readinto", *args)

    def seek(self, *args: Any) -> Any:
        return self._call("seek", *args)

    def write(self, *args: Any) -> Any:
        return self._call("write", *args)

    def flush(self) -> Any:
        return self._call("flush")

    def close(self) -> Any:
        return self._call("close")


def join(base: str, *parts: str) -> str:
    base = str(base)
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def basename(path: str) -> str:
    return posixpath.basename(str(path).rstrip("/"))


@_translated(writing=False)
def exists(path: str) -> bool:
    fs, p = get_fs(path)
    return fs.exists(p)


@_translated(writing=True)
def makedirs(path: str) -> None:
    """Create a local folder (a no-op for S3, where prefixes need no creation)."""
    if not is_remote(path):
        local = strip_file_scheme(str(path))
        if os.path.exists(local) and not os.path.isdir(local):
            raise StorageError(path, "is a file, not a folder")
        os.makedirs(local, exist_ok=True)


@_translated(writing=False)
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


@_translated(writing=False)
def size(path: str) -> int:
    fs, p = get_fs(path)
    return int(fs.size(p))


def _restore_scheme(original: str, listed: str) -> str:
    if original.startswith("s3://"):
        return "s3://" + listed
    return listed


@_translated(writing=False)
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
        if root.startswith("s3://"):  # nothing there: a missing bucket is a fault, not an empty listing
            fs.call_s3("list_objects_v2", Bucket=p.split("/", 1)[0], MaxKeys=1)
    out = []
    for f in found:
        if exts and not f.lower().endswith(exts):
            continue
        if basename(f).startswith(".") or ".tmp-" in basename(f):
            continue
        out.append(_restore_scheme(root, f))
    return sorted(out)


@_translated(writing=True)
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
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise StorageError(path, "parent is not a folder")
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
        with faults(dest, writing=True):
            fs.put_file(str(local_src), p)
        return
    with open(local_src, "rb") as f:
        atomic_write_bytes(dest, f.read())


@_translated(writing=False)  # a file already gone is no fault of the folder
def remove(path: str) -> None:
    fs, p = get_fs(path)
    if fs.exists(p):
        fs.rm(p, recursive=True)


@_translated(writing=False)
def local_copy(path: str, tmp_dir: str | Path) -> str:
    """A local file path for ``path``: itself if local, else downloaded into ``tmp_dir``."""
    if not is_remote(path):
        return strip_file_scheme(str(path))
    fs, p = get_fs(path)
    dest = os.path.join(str(tmp_dir), f"{uuid.uuid4().hex[:8]}-{basename(path)}")
    fs.get_file(p, dest)
    return dest
