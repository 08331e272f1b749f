"""Threads and worker processes for rendering: one torch thread per render, forkserver pools."""

from __future__ import annotations

import contextlib
import functools

import cv2


@contextlib.contextmanager
def single_threaded():
    """One torch intra-op thread while rendering: on these small tensors thread wake-ups cost more
    (~10 ms a call on a busy machine) than they save. Restores the previous setting."""
    import torch

    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


def _one_thread(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with single_threaded():
            return fn(*args, **kwargs)

    return wrapper


def _init_worker() -> None:
    cv2.setNumThreads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def _pool_context():
    """Worker processes forked from a clean forkserver that has imported this module once (cheap
    starts, no threads inherited); spawn where forkserver does not exist."""
    import multiprocessing as mp

    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["facepgn.synthetic"])
        return ctx
    return mp.get_context("spawn")

