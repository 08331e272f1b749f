"""User-facing errors: one line that names the file (or setting) and the cause."""

from __future__ import annotations

import os


class FacepgnError(Exception):
    """An error the user can act on. The CLI prints ``facepgn: error: <message>`` and exits 2."""


class InputError(FacepgnError):
    """Bad input data: a file that is missing, empty, corrupt or of the wrong kind."""

    def __init__(self, path: str | os.PathLike, cause: str):
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")

    def __reduce__(self):
        # rebuilt from (path, cause), not from the message: the error crosses processes (Ray
        # tasks, process pools) and must unpickle there
        return (type(self), (self.path, self.cause))


class StorageError(InputError):
    """A local path or ``s3://`` location that cannot be read or written: permissions, a parent
    that is not a folder, a read-only file system, an unreachable S3 endpoint, a missing bucket,
    missing or refused credentials, access denied. Raised by :mod:`facepgn.storage` (its one
    translation of OS, fsspec and botocore errors); ``cause`` is short and plain."""


class ConfigError(FacepgnError):
    """A config file or override that does not validate."""


def user_error(exc: BaseException) -> FacepgnError | None:
    """The :class:`FacepgnError` behind ``exc``: itself, or one raised inside a Ray task or worker
    and re-raised wrapped (``RayTaskError``'s ``cause``, Ray Data's ``UserCodeException``: an
    exception chained ``from`` it); None when there is none (a bug: keep its traceback)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        wrapped = getattr(current, "cause", None)  # ray.exceptions.RayTaskError keeps the original here
        if isinstance(wrapped, BaseException):
            current = wrapped
        elif isinstance(current, FacepgnError):
            return current
        else:  # ``raise ... from``; not __context__: a bug raised while handling a user error keeps its traceback
            current = current.__cause__
    return None
