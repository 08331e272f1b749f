"""What a job checks about the Ray cluster it runs on, before any work: where it may write.

On a cluster of more than one node a local output path is written by each node's processes to
that node's own disk (pieces of one output on every machine, a driver that finds nothing), so
every Ray job (preprocess, label, profile, infer, train, tune) passes its output paths to
:func:`require_shared_storage` first. A local path is accepted on a single-node Ray, and on any
cluster when the job's config says ``shared_storage: true`` (the path is storage every node mounts,
e.g. NFS or EFS); ``s3://`` paths always are.
"""

from __future__ import annotations

from typing import Mapping, Optional

from facepgn import storage
from facepgn.errors import FacepgnError

SHARED_STORAGE_KEY = "shared_storage"


def alive_nodes() -> int:
    """The nodes of the Ray cluster this process is connected to (connecting first, as the jobs do:
    ``RAY_ADDRESS`` or a local Ray)."""
    import ray

    if not ray.is_initialized():
        ray.init(configure_logging=False, log_to_driver=True)
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def require_shared_storage(paths: Mapping[str, Optional[str]], shared: bool) -> None:
    """Raise a one-line :class:`FacepgnError` when one of ``paths`` (config key -> path) is local and
    the cluster has more than one node, unless ``shared`` (the config's ``shared_storage``)."""
    local = {key: path for key, path in paths.items() if path and not storage.is_remote(path)}
    if shared or not local:
        return
    nodes = alive_nodes()
    if nodes <= 1:
        return
    key, path = next(iter(local.items()))
    raise FacepgnError(
        f"{key} {path}: a local path, but this Ray cluster has {nodes} nodes and each would write to its own disk; "
        f"use an s3:// path, or set {SHARED_STORAGE_KEY}=true if every node mounts {path} (NFS, ...)"
    )
