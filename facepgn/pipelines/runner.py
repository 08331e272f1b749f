"""Running the per-item Ray Data jobs' items (``preprocess``, ``label``, ``profile``; re-exported by
:mod:`facepgn.pipelines.common`).

* :func:`run_items`: streams items through Ray Data tasks (``map_batches`` with
  ``TaskPoolStrategy``, fractional CPUs, as many at once as the cluster's CPUs hold), one item per
  call; each worker process builds the job's heavy per-process state (models) once
  (:func:`cached_worker`). Or a plain loop (``executor: local``).
* :func:`ray_data_context`: the jobs' Ray Data settings (progress bars on a terminal only,
  :func:`progress_bars_wanted`); :class:`AttemptCounter`: an item whose worker dies is tried
  :data:`MAX_ATTEMPTS` times, then given up (Ray Data alone would retry it forever).
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np

from facepgn.cluster import connect

# ---- running items -------------------------------------------------------------------------------


def progress_bars_wanted() -> bool:
    """Ray Data's progress bars where a person watches: stdout and stderr are terminals and this is
    not CI (``CI`` set). Logs and test runs get none (and no line saying so)."""
    import os
    import sys

    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
        return False
    return all(getattr(stream, "isatty", lambda: False)() for stream in (sys.stdout, sys.stderr))


class _DropProgressNotice(logging.Filter):
    """Ray Data logs a warning when progress bars are off ("Progress bars disabled. To enable,
    ..."): off is this project's choice for logs and CI, so the line goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Progress bars disabled", "Progress bars for operators disabled"))


_PROGRESS_FILTER = _DropProgressNotice()


def quiet_progress_notice() -> None:
    """Install :class:`_DropProgressNotice` on Ray Data's progress logger (once per process)."""
    logger = logging.getLogger("ray.data._internal.progress")
    if _PROGRESS_FILTER not in logger.filters:
        logger.addFilter(_PROGRESS_FILTER)


#: the ``DataContext`` config key of Ray Data's backpressure policies (``get_backpressure_policies``)
BACKPRESSURE_POLICIES_KEY = "backpressure_policies.enabled"


def _concurrency_cap_only() -> list:
    from ray.data._internal.execution.backpressure_policy import ConcurrencyCapBackpressurePolicy

    return [ConcurrencyCapBackpressurePolicy]


@contextlib.contextmanager
def _backpressure(ctx: Any, whole_item_tasks: bool) -> Iterator[None]:
    """Only the task-pool cap as backpressure while ``whole_item_tasks`` (:func:`ray_data_context`)."""
    if not whole_item_tasks:
        yield
        return
    missing = object()
    saved = ctx.get_config(BACKPRESSURE_POLICIES_KEY, missing)
    ctx.set_config(BACKPRESSURE_POLICIES_KEY, _concurrency_cap_only())
    try:
        yield
    finally:
        if saved is missing:
            ctx.remove_config(BACKPRESSURE_POLICIES_KEY)
        else:
            ctx.set_config(BACKPRESSURE_POLICIES_KEY, saved)


@contextlib.contextmanager
def ray_data_context(max_errored_blocks: int = 0, progress_bars: bool | None = None, whole_item_tasks: bool = False, **settings: Any):
    """This pipeline's Ray Data settings, restored afterwards (other pipelines in the same process
    keep theirs). Datasets bind the context when they are created: create them inside.
    ``max_errored_blocks``: items whose worker dies (after :class:`AttemptCounter`'s attempts) are
    dropped from the stream instead of failing the job; the caller records them.
    ``progress_bars``: Ray Data's bars (default :func:`progress_bars_wanted`).
    ``whole_item_tasks``: the graph's tasks each do a whole item and pass on small rows (per-item
    jobs, infer's fused stage); only the task-pool cap holds new tasks back. Ray Data's object-store
    budget policies held them back while earlier outputs sat in the store, which left slots idle
    mid-run: infer over 81 videos on 2 CPUs used 2.9-3.0 of 4 slots (70.5-70.6 s) with them, 3.5-3.6
    (45.8-55.2 s) without. ``settings``: more ``DataContext`` attributes (e.g.
    ``target_max_block_size``), set and restored the same way (attribute by attribute:
    ``DataContext.copy()`` trips Ray's own deprecation warnings)."""
    import ray

    quiet_progress_notice()
    ctx = ray.data.DataContext.get_current()
    wanted: dict[str, Any] = {
        "max_errored_blocks": max_errored_blocks,
        "enable_progress_bars": progress_bars_wanted() if progress_bars is None else progress_bars,
        **settings,
    }
    saved = {name: getattr(ctx, name) for name in wanted}
    saved_order = ctx.execution_options.preserve_order
    for name, value in wanted.items():
        setattr(ctx, name, value)
    ctx.execution_options.preserve_order = False
    try:
        with _backpressure(ctx, whole_item_tasks):
            yield ctx
    finally:
        for name, value in saved.items():
            setattr(ctx, name, value)
        ctx.execution_options.preserve_order = saved_order


# ---- bounded retries of items whose worker dies ------------------------------------------------

#: Attempts per item (the first and two retries): an item that kills its worker every time (a
#: decoder segfault, an OOM kill) is given up after this many instead of retried forever.
MAX_ATTEMPTS = 3


class AttemptCounter:
    """Counts how often each item was started, across worker crashes (a Ray actor of its own).

    Ray Data retries a task whose worker died without limit, and bounding that needed the
    deprecated ``**ray_remote_args`` (``max_retries``/``max_task_retries``, gone in Ray 2.64). So
    the per-item functions ask this counter first (:func:`attempt_allowed`) and give the item up
    after :data:`MAX_ATTEMPTS` starts. No constructor arguments and no restarts: it never sits on
    arguments in the object store."""

    def __init__(self):
        self.started: dict[str, int] = {}

    def start(self, key: str) -> int:
        self.started[key] = self.started.get(key, 0) + 1
        return self.started[key]


def attempt_counter():
    """A new :class:`AttemptCounter` actor (0 CPUs) for one job run; its handle goes to the tasks."""
    import ray

    return ray.remote(num_cpus=0)(AttemptCounter).remote()


def attempt_allowed(counter, key: str, max_attempts: int = MAX_ATTEMPTS) -> bool:
    """Count a start of ``key``; False once it has been started more than ``max_attempts`` times
    (its worker died each time). ``counter`` None (the local loop): always True."""
    if counter is None:
        return True
    import ray

    return int(ray.get(counter.start.remote(str(key)))) <= max_attempts


class GivenUpError(RuntimeError):
    """An item started :data:`MAX_ATTEMPTS` times without finishing: its block is dropped (the
    job's ``max_errored_blocks``) and the driver records it with :data:`LOST_REASON`."""


# ---- running items -------------------------------------------------------------------------------


def worker_pool_size(num_cpus_per_worker: float, max_workers: int | None, num_items: int) -> int:
    """As many workers as the cluster's CPUs hold at ``num_cpus_per_worker`` each, at most
    ``max_workers`` (if set) and the number of items, at least 1."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    size = max(1, int(cpus / max(num_cpus_per_worker, 1e-3) + 1e-6))
    if max_workers:
        size = min(size, max_workers)
    return max(1, min(size, num_items))


actor_pool_size = worker_pool_size  # the earlier name (the jobs ran on actor pools)


T = TypeVar("T")
_PER_PROCESS: dict[bytes, Any] = {}


def per_process(factory: Callable[..., T], *args: Any) -> T:
    """``factory(*args)`` built once per worker process (models load once, not per item or per
    batch), keyed by the pickled ``(factory, args)``: a task receives fresh copies of its
    arguments, so identity cannot be the key. A process serves one job at a time: the two newest
    are kept. The one cache every Ray stage of facepgn uses."""
    import pickle

    key = pickle.dumps((factory, args))
    if key not in _PER_PROCESS:
        if len(_PER_PROCESS) >= 2:
            _PER_PROCESS.pop(next(iter(_PER_PROCESS)))
        _PER_PROCESS[key] = factory(*args)
    return _PER_PROCESS[key]


def cached_worker(make_worker: Callable[[], Callable[[dict], dict]]) -> Callable[[dict], dict]:
    """``make_worker()``, built once per worker process (:func:`per_process`)."""
    return per_process(make_worker)


def run_item_batch(batch: dict[str, np.ndarray], make_worker: Callable[[], Callable[[dict], dict]], counter=None) -> dict[str, np.ndarray]:
    """Ray Data task UDF: each item of the batch (a JSON string) through this process's
    :func:`cached_worker`; the results come back as JSON strings (small, whatever the item's data).
    Raises :class:`GivenUpError` for an item whose earlier attempts all killed their worker."""
    worker = cached_worker(make_worker)
    results = []
    for text in batch["item"]:
        item = json.loads(str(text))
        if not attempt_allowed(counter, item["item_id"]):
            raise GivenUpError(f"{item['path']}: given up after {MAX_ATTEMPTS} attempts (its worker died each time)")
        results.append(json.dumps(worker(item)))
    return {"result": np.asarray(results, dtype=object)}


def run_items(
    items: Sequence[dict],
    make_worker: Callable[[], Callable[[dict], dict]],
    *,
    executor: str = "ray",
    num_cpus: float = 0.5,
    max_actors: int | None = None,
) -> Iterator[dict]:
    """Run ``make_worker()(item)`` for every item; yields each item's result dict as it finishes.

    ``executor="ray"``: a Ray Data stream, one item per block, through tasks with ``num_cpus``
    CPUs each (fractional on small machines), at most :func:`worker_pool_size` at once; each worker
    process builds ``make_worker()`` once (:func:`cached_worker`). An item whose worker dies is
    tried :data:`MAX_ATTEMPTS` times, then left out of the results (the caller records it).
    ``executor="local"``: a plain loop in this process (debugging, baselines). ``make_worker`` must
    pickle (a class or a ``functools.partial`` of one)."""
    if not items:
        return
    if executor == "local":
        worker = make_worker()
        for item in items:
            yield worker(dict(item))
        return
    import ray

    connect()
    pool = worker_pool_size(num_cpus, max_actors, len(items))
    with ray_data_context(max_errored_blocks=len(items), whole_item_tasks=True):
        ds = ray.data.from_items([{"item": json.dumps(dict(it))} for it in items], override_num_blocks=len(items))
        ds = ds.map_batches(
            run_item_batch,
            fn_kwargs={"make_worker": make_worker, "counter": attempt_counter()},
            batch_size=1,
            compute=ray.data.TaskPoolStrategy(size=pool),
            num_cpus=num_cpus,
        )
        for row in ds.iter_rows():
            yield json.loads(row["result"])
