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


class ConfigError(FacepgnError):
    """A config file or override that does not validate."""
