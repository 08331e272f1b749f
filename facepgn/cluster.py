"""Connecting to Ray (:func:`connect`, the one place every job does it), and what a job checks about
the cluster it runs on, before any work: where it may write.

On a cluster of more than one node a local output path is written by each node's processes to
that node's own disk (pieces of one output on every machine, a driver that finds nothing), so
every Ray job (preprocess, label, profile, infer, train, tune) passes its output paths to
:func:`require_shared_storage` first. A local path is accepted on a single-node Ray, and on any
cluster when the job's config says ``shared_storage: true`` (the path is storage every node mounts,
e.g. NFS or EFS); ``s3://`` paths always are.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional

from facepgn import storage
from facepgn.errors import FacepgnError

SHARED_STORAGE_KEY = "shared_storage"


#: Ray Train's preemption watcher, off on a Ray this process starts itself: one local node has
#: nothing to preempt, and the watcher actor logs an error line at every training start (it is
#: created with restarts on and arguments in the object store, ray-project/ray#57733).
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


#: Ray keeps as many idle worker processes as a node has CPUs (``num_workers_soft_limit``) and
#: kills the others after a second idle. facepgn's tasks take fractional CPUs (0.25-0.5: up to
#: :data:`WORKERS_PER_CPU` per CPU), so with the default, a worker that finished a video was often
#: killed and the next task waited for a new process that imported torch and loaded the models
#: again: 8-21 workers started during one 81-video infer run on 2 CPUs (55.8-77.8 s; 49.4-50.5 s
#: with the limit raised, no worker started). A node started with ``ray start`` needs the same
#: variable (:func:`worker_env`; ``cluster/``).
WORKER_SOFT_LIMIT_ENV = "RAY_num_workers_soft_limit"
WORKERS_PER_CPU = 4


def worker_env(num_cpus: float) -> dict[str, str]:
    """The environment a Ray node of ``num_cpus`` CPUs is started with, so that it keeps a worker
    process for every fractional task slot (:data:`WORKER_SOFT_LIMIT_ENV`)."""
    return {WORKER_SOFT_LIMIT_ENV: str(max(1, math.ceil(num_cpus * WORKERS_PER_CPU)))}


def connect(**local_options: Any) -> bool:
    """Connect to Ray as every job does: the Ray this process already uses, the cluster in
    ``RAY_ADDRESS`` (``ray job submit`` sets it), or a local Ray started here with
    ``local_options`` (``ray.init`` arguments, e.g. ``num_cpus``), which keeps a worker process
    per fractional task slot (:func:`worker_env`). True if this call started or joined it."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(configure_logging=False, log_to_driver=True)
        return True
    # only the processes of a Ray started here inherit these
    os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")
    for name, value in worker_env(local_options.get("num_cpus") or os.cpu_count() or 1).items():
        os.environ.setdefault(name, value)
    ray.init(**{"configure_logging": False, "log_to_driver": True, **local_options})
    return True


def alive_nodes() -> int:
    """The nodes of the Ray cluster this process is connected to (connecting first: :func:`connect`)."""
    import ray

    connect()
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
