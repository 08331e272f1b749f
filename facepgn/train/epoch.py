"""The training loop body, written once for the plain loop and the Ray Train workers.

:func:`fit` runs epochs of :func:`train_epoch` over a batch source until ``cfg.steps``. Each step:
the batch (pairs left out before ``data.pairs_from_step``) goes to the device, through THE
optimisation step (``facepgn.train.step.train_step``), and into the log window; every ``log_every``
steps (and at the last) the window's mean metrics, samples/s and the share of step time spent
waiting for data go to TensorBoard and a log line. Validation (landmark NME, overlay images, the
best model kept) runs every ``hooks.validate_every`` steps, after every epoch and at the end;
checkpoints every ``checkpoint_every`` steps (when ``hooks.periodic_checkpoints``), after every
epoch and at the end; then rank 0 writes ``<output_dir>/model.pt``.

What differs between the loops is the batch source and the :class:`Hooks`: where log lines,
checkpoints and reports go, and where the validation batches come from.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Iterator

import torch

from facepgn import storage
from facepgn.errors import FacepgnError
from facepgn.model import save_model_file
from facepgn.train import data as train_data
from facepgn.train.checkpoint import BestModel
from facepgn.train.datasets import Batch
from facepgn.train.state import TrainState
from facepgn.train.step import train_step
from facepgn.train.tensorboard import Tensorboard
from facepgn.train.validation import sum_over_workers, validate_epoch

log = logging.getLogger("facepgn.train")

MODEL_FILE = "model.pt"


class Hooks:
    """What a loop does with the body's results; the defaults are the plain loop's."""

    validate_every = 0  # also validate every this many steps (0: after epochs and at the end only)
    periodic_checkpoints = True  # checkpoint every cfg.checkpoint_every steps
    overlay_images = 0  # validation faces drawn to TensorBoard (rank 0)
    best: BestModel | None = None  # keeps the best model on the validation faces

    def say(self, line: str) -> None:
        log.info(line)

    def validation_batches(self, state: TrainState) -> Iterator[Any] | None:
        """This process's validation batches, or None without validation."""
        return None

    def on_step(self, state: TrainState, batch: Batch, metrics: dict[str, float], data_s: float) -> None:
        """After every step (``state.step`` counts it); ``data_s``: the wait for its batch."""

    def on_log(self, state: TrainState, mean: dict[str, float]) -> None:
        """Every ``log_every`` steps: the window's mean metrics."""

    def checkpoint(self, state: TrainState, metrics: dict[str, Any]) -> None:
        """Save (or report) a checkpoint; ``metrics``: the latest metrics, step, epoch, validation."""
        raise NotImplementedError

    def on_finish(self, state: TrainState, model_file: str) -> None:
        """After the model file is written."""


def _mean(values: list[float]) -> float:
    """The mean of the non-NaN values (NaN when there are none)."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


class StepLog:
    """The log window (metrics, samples, time waiting for data), the TensorBoard writer (rank 0) and
    the latest metrics and validation results that reports carry."""

    def __init__(self, state: TrainState, hooks: Hooks):
        self.hooks = hooks
        self.tb = Tensorboard(state.cfg.output_dir, enabled=state.rank == 0 and state.cfg.tensorboard, purge_step=state.step or None)
        self.latest: dict[str, float] = {}  # the last step's metrics; the window's at a log step
        self.validation: dict[str, float] = {}
        self._reset()

    def _reset(self) -> None:
        self.window: list[dict[str, float]] = []
        self.samples, self.data_s, self.step_s, self.started = 0, 0.0, 0.0, time.perf_counter()

    def add(self, metrics: dict[str, float], samples: int, data_s: float, step_s: float) -> None:
        self.window.append(metrics)
        self.latest = metrics
        self.samples += samples
        self.data_s += data_s
        self.step_s += step_s

    def write(self, state: TrainState) -> None:
        """The window's means and throughput to TensorBoard, a log line and ``hooks.on_log``."""
        mean = {k: _mean([m[k] for m in self.window if k in m]) for k in self.window[-1]}
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        throughput = {"perf/samples_per_s": self.samples / elapsed, "perf/data_wait_share": self.data_s / max(self.step_s, 1e-9)}
        self.tb.scalars({f"train/{k}": v for k, v in mean.items()}, state.step)
        self.tb.scalars(throughput, state.step)
        if state.rank == 0:
            self.hooks.say(
                f"facepgn train: step {state.step}/{state.cfg.steps} epoch {state.epoch} loss {mean['loss']:.4f} "
                f"lr {mean['lr']:.2e} {throughput['perf/samples_per_s']:.1f} samples/s "
                f"data wait {100 * throughput['perf/data_wait_share']:.1f}%"
            )
        self.hooks.on_log(state, mean)
        self.latest = {**mean, **{k.split("/", 1)[1]: v for k, v in throughput.items()}}
        self._reset()

    def report(self, state: TrainState) -> dict[str, Any]:
        """What a checkpoint's report carries: the latest metrics, step, epoch, the latest validation."""
        return {**self.latest, "step": state.step, "epoch": state.epoch, **self.validation}


def validate(state: TrainState, hooks: Hooks, steplog: StepLog) -> dict[str, float]:
    """Landmark NME on the validation batches, summed over the workers (collective: every rank at
    the same step); to TensorBoard, and the best model kept. Empty without validation."""
    batches = hooks.validation_batches(state)
    if batches is None:
        return {}
    overlay = hooks.overlay_images if state.rank == 0 else 0
    sums = sum_over_workers(validate_epoch(state.model, batches, state.cfg.model, state.device, overlay), state.device)
    val = sums.metrics()
    if val:
        if sums.overlay is not None:
            steplog.tb.image("val/overlay", sums.overlay, state.step)
        steplog.tb.scalars({"val/nme": val["val_nme"], "val/nme_pgn": val["val_nme_pgn"]}, state.step)
        if hooks.best is not None and hooks.best.offer(val, state.model, state.step):
            hooks.say(f"facepgn train: best validation NME so far {100 * val['val_nme']:.2f}% at step {state.step} -> {hooks.best.path}")
    steplog.validation = val
    return val


def checkpoint(state: TrainState, hooks: Hooks, steplog: StepLog) -> None:
    steplog.tb.sync()
    hooks.checkpoint(state, steplog.report(state))


def train_epoch(state: TrainState, batches: Iterator[Any], hooks: Hooks, steplog: StepLog) -> bool:
    """Steps over ``batches`` (``Batch`` objects or ``mixed_batch`` dicts) until they run out (True:
    an epoch finished) or ``cfg.steps`` is reached (False). ``state.epoch_step`` counts the epoch's
    steps, those before a resume included (an epoch resumed at its last step has no batch left)."""
    cfg = state.cfg
    resumed_at = state.epoch_step
    steps_this_epoch = 0
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            break
        batch = Batch.of(batch)
        samples = batch.size * state.world
        if state.step < cfg.data.pairs_from_step:
            batch = batch.without_pairs()  # labelled-only warm-up (the same step on every rank)
        tensors = train_data.to_device(batch.tensors(), state.device)
        t1 = time.perf_counter()
        metrics = train_step(state.model, state.optimizer, tensors, cfg.losses, amp_dtype=state.amp_dtype, scaler=state.scaler,
                             grad_clip=cfg.optim.grad_clip, scheduler=state.scheduler)
        if state.device.type == "cuda":
            torch.cuda.synchronize(state.device)
        state.step += 1
        state.epoch_step += 1
        steps_this_epoch += 1
        steplog.add(metrics, samples, t1 - t0, time.perf_counter() - t0)
        hooks.on_step(state, batch, metrics, t1 - t0)
        if state.step % max(cfg.log_every, 1) == 0 or state.step == cfg.steps:
            steplog.write(state)
        if state.step >= cfg.steps:
            return False
        if hooks.validate_every and state.step % hooks.validate_every == 0:
            validate(state, hooks, steplog)
        if hooks.periodic_checkpoints and cfg.checkpoint_every > 0 and state.step % cfg.checkpoint_every == 0:
            checkpoint(state, hooks, steplog)
    if steps_this_epoch == 0 and resumed_at == 0:
        raise FacepgnError("an epoch produced no batch: the data shards are smaller than one batch")
    return True


def fit(state: TrainState, epoch_batches: Callable[[int, int], Iterator[Any]], hooks: Hooks) -> StepLog:
    """Train ``state`` to ``cfg.steps`` over epochs of ``epoch_batches(epoch, skip)`` (the batches
    of epoch ``epoch`` after its first ``skip``: a resumed run continues its epoch where the
    checkpoint left it); validate and checkpoint after every epoch and at the end (unless an epoch
    just ended), then write the model file (rank 0). Returns the log (latest metrics and validation)."""
    steplog = StepLog(state, hooks)
    finished_epoch = False
    while state.step < state.cfg.steps:
        finished_epoch = train_epoch(state, epoch_batches(state.epoch, state.epoch_step), hooks, steplog)
        if finished_epoch:
            state.epoch, state.epoch_step = state.epoch + 1, 0
            validate(state, hooks, steplog)
            checkpoint(state, hooks, steplog)
    if not finished_epoch:  # the end: the final weights validated and checkpointed
        validate(state, hooks, steplog)
        checkpoint(state, hooks, steplog)
    model_file = storage.join(state.cfg.output_dir, MODEL_FILE)
    if state.rank == 0:
        save_model_file(state.core, model_file)
    hooks.on_finish(state, model_file)
    steplog.tb.close()
    return steplog
