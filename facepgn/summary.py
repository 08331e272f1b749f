"""The one shape of every job's ``summary.json``, and the helpers that write it.

Every job (``preprocess``, ``label``, ``profile``, ``infer``, ``train``, ``train --local``,
``tune``, ``synth faces``, ``synth videos``, ``labelled convert``, ``demo``) writes one
``summary.json`` into its output with these keys, in this order::

    job        the facepgn command that wrote it, e.g. "preprocess", "synth faces"
    counts     {name: number} what was found, done, skipped, written (this run and in total)
    errors     [{..., "reason": one line}] what could not be done (items, trials, stages)
    timings    {name: seconds or rate}; "wall_s" is the job's wall time
    ...        the job's own extras (documented in docs/schemas.md)
    versions   {package: version} of facepgn, Python, numpy and the libraries the job used
    config     the resolved config

:func:`write_summary` builds and writes it (atomically, local or ``s3://``, through
:mod:`facepgn.storage`), :func:`versions` and :func:`json_safe` are its pieces. Importable
without Ray or torch.
"""

from __future__ import annotations

import importlib
import json
import math
import platform
from typing import Any, Mapping, Sequence

import numpy as np

from facepgn import __version__, storage

SUMMARY_FILE = "summary.json"
STANDARD_KEYS = ("job", "counts", "errors", "timings", "versions", "config")

#: the key a module's version is recorded under, where it is not the module's name
_VERSION_KEYS = {"cv2": "opencv"}


def versions(*optional: str) -> dict[str, str]:
    """facepgn's, Python's and numpy's versions, plus those of the ``optional`` modules (by import
    name: ``"ray"``, ``"torch"``, ``"cv2"`` (recorded as ``opencv``), ...) that import."""
    out = {"facepgn": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for name in optional:
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - versions are informational; a missing library is left out
            continue
        out[_VERSION_KEYS.get(name, name)] = str(getattr(module, "__version__", "unknown"))
    return out


def json_safe(value: Any) -> Any:
    """``value`` with only JSON types in it: mapping keys as strings, tuples (and sets) as lists,
    numpy scalars and arrays as numbers and lists, NaN and infinities as None, anything else
    (paths, ...) as its ``str``."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (np.ndarray, np.generic)):
        return json_safe(value.tolist())
    return str(value)


_collect_versions = versions  # write_summary's ``versions`` argument shadows the function


def write_summary(path: str, *, job: str, counts: Mapping[str, Any], errors: Sequence[Mapping[str, Any]],
                  timings: Mapping[str, Any], config: Mapping[str, Any], extra: Mapping[str, Any] | None = None,
                  versions: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Write the summary (the shape above) to ``path`` (a ``summary.json``, local or ``s3://``)
    atomically, as JSON-safe indented JSON; returns it (the values as given, not made JSON-safe).

    ``versions``: :func:`versions` of the libraries the job used (default: facepgn, Python and
    numpy only). ``extra``: the job's own keys; a standard key there is a ValueError."""
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(STANDARD_KEYS))
    if clash:
        raise ValueError(f"summary extras may not reuse the standard keys {clash}")
    summary = {
        "job": job,
        "counts": dict(counts),
        "errors": list(errors),
        "timings": dict(timings),
        **extra,
        "versions": dict(versions) if versions is not None else _collect_versions(),
        "config": dict(config),
    }
    storage.atomic_write_text(str(path), json.dumps(json_safe(summary), indent=2) + "\n")
    return summary
