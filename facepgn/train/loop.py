"""The plain single-process training loop (CPU or one CUDA device), no Ray.

It reads face-record and frame-pair Parquet (local or s3://) into memory
(``facepgn.train.datasets.plain_batches``: shuffled mixed batches, batch ``i`` a function of the
seed and ``i``, so a resumed run continues with the batches an uninterrupted one would have seen:
one endless epoch), runs the training loop body the
Ray Train workers run too (``facepgn.train.epoch.fit``) with :class:`LocalHooks`, and writes into
``TrainConfig.output_dir``: ``checkpoint.pt`` (resumable; continued when it exists and ``resume``
is on), ``model.pt`` (the standalone model file), ``summary.json`` and, optionally, TensorBoard
events. Everything is loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterator

import torch

from facepgn import storage
from facepgn.config import TrainConfig
from facepgn.summary import SUMMARY_FILE, versions, write_summary
from facepgn.train.checkpoint import STATE_FILE, save_checkpoint, start_state
from facepgn.train.datasets import Batch, plain_batches
from facepgn.train.epoch import Hooks, fit
from facepgn.train.optim import amp_mode, resolve_device
from facepgn.train.state import new_state

log = logging.getLogger("facepgn.train")


class LocalHooks(Hooks):
    """The plain loop's side: checkpoints to one file, the log windows kept as the history."""

    def __init__(self, checkpoint_path: str, on_metrics: Callable[[int, dict[str, float]], None] | None = None,
                 on_step: Callable[[int, Batch, dict[str, float]], None] | None = None):
        self.checkpoint_path = checkpoint_path
        self.on_metrics, self.on_step_callback = on_metrics, on_step
        self.history: list[dict[str, float]] = []
        self.data_seconds = 0.0

    def on_step(self, state, batch, metrics, data_s) -> None:
        self.data_seconds += data_s
        if self.on_step_callback is not None:
            self.on_step_callback(state.step, batch, metrics)

    def on_log(self, state, mean) -> None:
        entry = {**mean, "step": state.step}
        self.history.append(entry)
        if self.on_metrics is not None:
            self.on_metrics(state.step, entry)

    def checkpoint(self, state, metrics) -> None:
        save_checkpoint(self.checkpoint_path, state.model, state.optimizer, state.scheduler, state.scaler, state.step, state.cfg)


def train(
    cfg: TrainConfig,
    face_model: Any = None,
    batches: Iterator[dict[str, dict[str, torch.Tensor]]] | None = None,
    on_metrics: Callable[[int, dict[str, float]], None] | None = None,
    on_step: Callable[[int, Batch, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train for ``cfg.steps`` steps; returns the summary (also written to ``summary.json``).

    ``batches`` overrides the Parquet data (an iterator of ``mixed_batch`` dicts or ``Batch``
    objects, e.g. for tests and benchmarks); ``on_metrics(step, metrics)`` is called every
    ``log_every`` steps, ``on_step(step, batch, metrics)`` after every step (the batch with its ids).
    """
    previous_threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, face_model, batches, on_metrics, on_step)
    finally:
        torch.set_num_threads(previous_threads)


def _train(cfg: TrainConfig, face_model: Any, batches: Iterator | None, on_metrics: Callable | None, on_step: Callable | None) -> dict[str, Any]:
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    out_dir = cfg.output_dir
    storage.check_writable(out_dir)  # an output that cannot be written: one line before any work
    ckpt_path = storage.join(out_dir, STATE_FILE)
    state = new_state(cfg, device, amp_mode(cfg.optim.amp, device), face_model)
    start_state(state, ckpt_path if cfg.resume and storage.exists(ckpt_path) else None, log.info)
    start = state.epoch_step = state.step  # one endless epoch
    if batches is None:
        batches = plain_batches(cfg, state.core.face_model_name, seed=cfg.seed, skip=start)
    hooks = LocalHooks(ckpt_path, on_metrics, on_step)
    t_loop = time.perf_counter()
    fit(state, lambda epoch, skip: batches, hooks)
    final_step, history, data_seconds = state.step, hooks.history, hooks.data_seconds
    model_path = storage.join(out_dir, "model.pt")
    loop_seconds = time.perf_counter() - t_loop
    steps_run = final_step - start
    seconds = time.perf_counter() - t_start
    steps_per_second = steps_run / loop_seconds if loop_seconds > 0 and steps_run else None
    counts = {"steps": final_step, "steps_this_run": steps_run, "resumed_from": start}
    return write_summary(
        storage.join(out_dir, SUMMARY_FILE), job="train --local", counts=counts, errors=[],
        timings={"wall_s": seconds, "data_s": data_seconds, "steps_per_s": steps_per_second},
        extra={  # the counts and timings also at the top level, under the names they had before
            **counts,
            "seconds": seconds,
            "steps_per_second": steps_per_second,
            "data_seconds": data_seconds,
            "final_metrics": history[-1] if history else None,
            "history": history,
            "model_file": model_path,
            "checkpoint": ckpt_path,
            "device": str(device),
        },
        config=cfg.model_dump(mode="json"),
        versions=versions("torch", "pyarrow"),
    )
