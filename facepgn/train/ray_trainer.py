"""Distributed training on Ray Train (V2): DDP over NCCL (GPUs) or gloo (CPUs).

The driver (:func:`run_training`) checks the config and inputs first (``facepgn.train.plan.preflight``:
shards exist, enough records for the workers, storage writable; a one-line error before any
worker starts), then builds a ``ray.train.torch.TorchTrainer`` (:func:`build_trainer`) over the
Ray Datasets of ``facepgn.train.datasets.build_datasets`` (labelled faces, frame pairs, validation
faces, read by Ray tasks in the cluster; each worker streams its own share).

Each worker runs :func:`train_loop_per_worker`: the training loop body the plain loop runs too
(``facepgn.train.epoch.fit``), over its Ray batch source (``facepgn.train.datasets.RayBatches``),
with :class:`RayHooks`:

* every ``checkpoint_every`` steps, after each epoch and at the end, rank 0 reports a checkpoint
  (``facepgn.train.checkpoint.save_state``: model, optimizer, scheduler, scaler, step, epoch,
  config) to ``RunConfig(storage_path, name)``, local or ``s3://``, and the other ranks report the
  same step without one. A run started again with the same ``ray.name`` and ``ray.storage_path``
  continues from its latest checkpoint (step count included); ``FailureConfig(max_failures)``
  restarts a worker group that lost a worker from the last checkpoint;
* validation is summed over the workers; rank 0 writes the TensorBoard events, keeps the best
  model and, at the end, exports ``<output_dir>/model.pt``; the driver writes
  ``<output_dir>/summary.json``;
* ``ray.record_batch_ids``: each worker writes the ids it trained on to ``<output_dir>/batch_ids/``;
  ``fault``: a worker dies on purpose (fault-tolerance tests and drills).

A restart resumes at the checkpointed step: the step count, the epoch and the position in it
(``progress.json``). Every epoch's order, for materialised inputs (below
``ray.materialize_below_mb``) and streamed ones alike, is a function of the seed and the epoch, so
the resumed run trains on the batches the uninterrupted one would have (the ones already trained
are skipped without decoding them: ``facepgn.train.datasets.RayBatches``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any, Sequence

from facepgn import storage
from facepgn.cluster import connect, require_shared_storage
from facepgn.config import DistributedTrainConfig
from facepgn.errors import FacepgnError
from facepgn.summary import SUMMARY_FILE, versions, write_summary
from facepgn.train.checkpoint import STATE_FILE, BestModel, save_state, start_state
from facepgn.train.datasets import VALIDATION, RayBatches, build_datasets, streamed_inputs
from facepgn.train.epoch import MODEL_FILE, Hooks, fit
from facepgn.train.plan import TrainPlan, preflight

BATCH_IDS_DIR = "batch_ids"


# ---- on the driver ---------------------------------------------------------------------------


def storage_args(storage_path: str) -> dict[str, Any]:
    """``RunConfig`` storage arguments: s3:// goes through facepgn's pyarrow filesystem (custom endpoints)."""
    if storage.is_remote(storage_path):
        fs, stripped = storage.pyarrow_filesystem(storage_path)
        return {"storage_path": stripped, "storage_filesystem": fs}
    return {"storage_path": storage_path}


def scaling_config(cfg: DistributedTrainConfig):
    import ray.train

    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **s.resources_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    return ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources,
                                   placement_strategy=s.placement_strategy)


def backend_name(cfg: DistributedTrainConfig) -> str:
    if cfg.scaling.backend != "auto":
        return cfg.scaling.backend
    return "nccl" if cfg.scaling.use_gpu else "gloo"


def build_trainer(
    plan: TrainPlan,
    *,
    callbacks: Sequence[Any] = (),
    epoch_reports_only: bool = False,
    datasets: dict[str, Any] | None = None,
):
    """The ``TorchTrainer`` for a checked plan. ``epoch_reports_only``: report (and checkpoint) only
    after epochs, with the validation NME in every report (what a Tune scheduler needs).
    ``datasets``: already built ones (a sweep shares its materialised datasets between trials)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = plan.config
    run_config = ray.train.RunConfig(
        name=cfg.ray.name,
        failure_config=ray.train.FailureConfig(max_failures=cfg.ray.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.ray.checkpoints_to_keep),
        callbacks=list(callbacks),
        **storage_args(cfg.ray.storage_path),
    )
    datasets = dict(datasets) if datasets is not None else build_datasets(plan)
    streamed = streamed_inputs(plan)  # not Datasets: every worker reads its own files of them
    loop_config = {
        "config": cfg.model_dump(mode="json"),
        "epoch_reports_only": epoch_reports_only,
        "has_validation": VALIDATION in datasets,
        "streamed": streamed,
        "built_at": time.time(),
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=scaling_config(cfg),
        torch_config=TorchConfig(backend=backend_name(cfg)),
        run_config=run_config,
        datasets=datasets,
        dataset_config=data_config(datasets),
    )


def data_config(datasets: dict[str, Any]):
    """Every dataset reaches every worker whole, in order: the materialised training inputs (each
    worker takes its seeded share of their rows every pass: ``RayBatches``) and the validation set
    (each worker scores every world_size-th batch of it). Ray Train splits nothing: a split's order
    does not repeat, and a resumed run must see the batches an uninterrupted one would."""
    import ray.train

    ordered = {}
    for name in datasets:
        options = ray.train.DataConfig.default_ingest_options()
        options.preserve_order = True
        ordered[name] = options
    return ray.train.DataConfig(datasets_to_split=[], execution_options=ordered)


def ensure_ray() -> None:
    """Connect to Ray (``RAY_ADDRESS`` / a ``ray job submit`` cluster) or start a local one."""

    connect()


def run_training(cfg: DistributedTrainConfig) -> dict[str, Any]:
    """Check, train on Ray, export the model and write ``summary.json``; returns the summary."""
    started = time.time()
    plan = preflight(cfg)
    cfg = plan.config
    ensure_ray()
    require_shared_storage({"ray.storage_path": cfg.ray.storage_path, "output_dir": cfg.output_dir}, cfg.shared_storage)
    holdout = cfg.validation.holdout_fraction if not cfg.validation.labelled and plan.validation_files else 0.0
    validation = f"{100 * holdout:g}% of the labelled subjects held out" if holdout else f"{plan.validation_rows} validation faces"
    print(
        f"facepgn train: {cfg.scaling.num_workers} workers ({backend_name(cfg)}), "
        f"{plan.labelled_rows} labelled faces, {plan.pair_rows} frame pairs, {validation}; "
        f"run {plan.run_path}{' (resuming)' if plan.run_exists else ''}",
        flush=True,
    )
    trainer = build_trainer(plan)
    try:
        result = trainer.fit()
    except Exception as exc:  # ray.train.TrainingFailedError and friends: name the run and the cause
        raise FacepgnError(f"{plan.run_path}: training failed ({_first_line(exc)})") from exc
    metrics = dict(result.metrics or {})
    return write_summary(
        storage.join(cfg.output_dir, SUMMARY_FILE), job="train",
        counts={
            "workers": cfg.scaling.num_workers,
            "labelled_records": plan.labelled_rows,
            "frame_pairs": plan.pair_rows,
            # faces actually scored (the hold-out share of the labelled subjects, capped by max_records)
            "validation_records": int(metrics["val_faces"]) if metrics.get("val_faces") is not None else 0,
            "steps": metrics.get("step"),
            "epochs": metrics.get("epoch"),
        },
        errors=[],
        timings={"wall_s": round(time.time() - started, 3)},
        extra={
            "run": plan.run_path,
            "resumed": plan.run_exists,
            "model_file": storage.join(cfg.output_dir, MODEL_FILE),
            "checkpoint": result.checkpoint.path if result.checkpoint else None,
            "final_metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None},
        },
        config=cfg.model_dump(mode="json"),
        versions=versions("ray", "torch", "pyarrow"),
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0]}" if text else exc.__class__.__name__


# ---- on each worker ---------------------------------------------------------------------------


class RayHooks(Hooks):
    """A Ray Train worker's side of the loop: reports to Ray Train (rank 0's with the checkpoint),
    log lines printed by rank 0, validation from the worker's share, the batch-id audit and the
    fault injection."""

    def __init__(self, cfg: DistributedTrainConfig, source: RayBatches, rank: int, epoch_reports_only: bool, built_at: float):
        self.cfg, self.source, self.rank, self.built_at = cfg, source, rank, built_at
        self.validate_every = cfg.validation.every_steps
        self.periodic_checkpoints = not epoch_reports_only  # a Tune scheduler wants epoch reports
        self.overlay_images = cfg.validation.overlay_images
        self.best = BestModel(cfg.output_dir) if rank == 0 and cfg.validation.keep_best else None
        self.audit: list[dict[str, Any]] = []

    def say(self, line: str) -> None:
        print(line, flush=True)

    def validation_batches(self, state):
        return self.source.validation()

    def on_step(self, state, batch, metrics, data_s) -> None:
        cfg = self.cfg
        if cfg.ray.record_batch_ids:
            self.audit.append({"step": state.step, "record_ids": batch.record_ids, "pair_ids": batch.pair_ids})
        if cfg.fault.at_step is not None and state.step == cfg.fault.at_step and state.rank == cfg.fault.rank:
            marker = cfg.fault.marker or ""
            if not storage.exists(marker):
                storage.atomic_write_text(marker, f"rank {state.rank} exited at step {state.step}\n")
                self.say(f"facepgn train: fault injection: rank {state.rank} exits at step {state.step}")
                time.sleep(cfg.fault.delay_s)
                os._exit(1)

    def _write_audit(self) -> None:
        if self.cfg.ray.record_batch_ids and self.audit:
            name = f"rank{self.rank}-{self.audit[0]['step']:08d}-{self.audit[-1]['step']:08d}-{time.time_ns()}.json"
            storage.atomic_write_text(storage.join(self.cfg.output_dir, BATCH_IDS_DIR, name), json.dumps(self.audit))
            self.audit.clear()

    def checkpoint(self, state, metrics) -> None:
        import ray.train

        self._write_audit()
        if state.rank != 0:
            ray.train.report(metrics)  # every rank reports the same steps
            return
        with tempfile.TemporaryDirectory(prefix="facepgn-ckpt-") as tmp:
            save_state(tmp, state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_{state.step:09d}_{time.time_ns() % 10**9:09d}")

    def on_finish(self, state, model_file: str) -> None:
        if state.rank == 0:
            self.say(f"facepgn train: wrote {model_file} ({time.time() - self.built_at:.1f} s after the trainer was built)")


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """What every Ray Train worker runs (see the module docstring)."""
    import ray.train
    import ray.train.torch
    import torch

    from facepgn.train.optim import amp_mode
    from facepgn.train.state import new_state

    cfg = DistributedTrainConfig.model_validate(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    print(f"facepgn train: worker {rank}/{world} on node {ray.get_runtime_context().get_node_id()}", flush=True)  # where each runs
    torch.set_num_threads(cfg.threads or max(1, int(round(cfg.scaling.cpus_per_worker))))
    device = ray.train.torch.get_device()
    # the same initial weights everywhere (DDP also broadcasts rank 0's)
    state = new_state(cfg, device, amp_mode(cfg.optim.amp, device), rank=rank, world=world)
    say = (lambda line: print(line, flush=True)) if rank == 0 else (lambda line: None)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            start_state(state, os.path.join(directory, STATE_FILE), say)
    else:
        start_state(state, None, say)
    state.model = ray.train.torch.prepare_model(state.model)
    built_at = float(loop_config.get("built_at", time.time()))
    say(f"facepgn train: {world} workers ready {time.time() - built_at:.1f} s after the trainer was built")
    source = RayBatches(cfg, rank, world, state.core.face_model_name or None, bool(loop_config.get("has_validation")),
                        streamed=loop_config.get("streamed"))
    fit(state, source.epoch, RayHooks(cfg, source, rank, bool(loop_config.get("epoch_reports_only")), built_at))
