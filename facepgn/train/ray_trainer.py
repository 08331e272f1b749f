"""Distributed training on Ray Train (V2): DDP over NCCL (GPUs) or gloo (CPUs).

The driver (:func:`run_training`) checks the config and inputs first (:func:`preflight`: shards
exist, enough records for the workers, storage writable; a one-line error before any worker starts),
then builds a ``ray.train.torch.TorchTrainer`` (:func:`build_trainer`):

* labelled face records, frame pairs and the validation faces are Ray Datasets streamed to the
  workers (``datasets={...}``; each worker reads its own shard with ``ray.train.get_dataset_shard``);
  every step mixes ``data.labelled_batch_size`` faces with ``data.pair_batch_size`` pairs, decoded
  to tensors in the iterators' prefetch threads (``iter_torch_batches`` + collate functions) while
  the previous step computes; small inputs are read once into the object store;
* each worker runs :func:`train_loop_per_worker`, which calls the ONE training step
  (``facepgn.train.step.train_step``: mixed precision, gradient clipping, LR schedule);
* every ``checkpoint_every`` steps, after each epoch and at the end, rank 0 reports a checkpoint
  (model, optimizer, scheduler, scaler, step, epoch, config) to ``RunConfig(storage_path, name)``,
  local or ``s3://``. A run started again with the same ``ray.name`` and ``ray.storage_path``
  continues from its latest checkpoint (step count included); ``FailureConfig(max_failures)``
  restarts a worker group that lost a worker from the last checkpoint;
* after each epoch the workers compute the landmark NME on their shards of the held-out faces
  (summed over workers with ``all_reduce``); rank 0 writes TensorBoard events (every loss term,
  learning rate, samples/s, share of step time waiting for data, validation NME, overlay images of
  the predicted mesh and landmarks) and reports the metrics to Ray (and so to Ray Tune);
* at the end rank 0 exports the standalone model file ``<output_dir>/model.pt``, and the driver
  writes ``<output_dir>/summary.json``.

Epochs are passes over the labelled shard (over the pairs when there are no labelled faces); the
other stream cycles. A restart resumes the step count and the epoch number; the position inside an
epoch is not restored (the interrupted epoch starts over with the restored weights).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from facepgn import storage
from facepgn.config import DistributedTrainConfig
from facepgn.errors import ConfigError, FacepgnError, InputError
from facepgn.summary import versions, write_summary

log = logging.getLogger("facepgn.train")

STATE_FILE = "checkpoint.pt"  # facepgn.train.loop's checkpoint format
PROGRESS_FILE = "progress.json"
MODEL_FILE = "model.pt"
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"
BATCH_IDS_DIR = "batch_ids"

LABELLED, PAIRS, VALIDATION = "labelled", "pairs", "validation"
PREFETCH_BATCHES = 4  # batches decoded ahead of the training step, per stream


# ---- the plan: resolved inputs and outputs --------------------------------------------------


@dataclass
class TrainPlan:
    """What :func:`preflight` found: the config with absolute paths, the Parquet files, row counts."""

    config: DistributedTrainConfig
    labelled_files: list[str] = field(default_factory=list)
    pair_files: list[str] = field(default_factory=list)
    validation_files: list[str] = field(default_factory=list)
    labelled_rows: int = 0
    pair_rows: int = 0
    validation_rows: int = 0
    labelled_bytes: int = 0
    pair_bytes: int = 0
    validation_bytes: int = 0
    run_exists: bool = False

    @property
    def run_path(self) -> str:
        return storage.join(self.config.ray.storage_path, self.config.ray.name)


def _absolute(path: str) -> str:
    if storage.is_remote(path):
        return path
    return os.path.abspath(os.path.expanduser(path[len("file://"):] if path.startswith("file://") else path))


def resolve_paths(cfg: DistributedTrainConfig) -> DistributedTrainConfig:
    """A copy with every local path absolute (the workers do not share the driver's working dir)."""
    data = cfg.model_dump(mode="json")
    data["data"]["labelled"] = [_absolute(p) for p in cfg.data.labelled]
    data["data"]["pairs"] = [_absolute(p) for p in cfg.data.pairs]
    data["validation"]["labelled"] = [_absolute(p) for p in cfg.validation.labelled]
    data["output_dir"] = _absolute(cfg.output_dir)
    data["ray"]["storage_path"] = _absolute(cfg.ray.storage_path)
    if cfg.fault.marker:
        data["fault"]["marker"] = _absolute(cfg.fault.marker)
    if cfg.model.face_model:
        data["model"]["face_model"] = _absolute(cfg.model.face_model)
    return DistributedTrainConfig.model_validate(data)


def _parquet_files(roots: Sequence[str], what: str) -> list[str]:
    files: list[str] = []
    for root in roots:
        try:
            found = storage.list_files(root, [".parquet"])
        except (OSError, PermissionError) as exc:
            raise InputError(root, f"cannot list {what} shards ({exc.__class__.__name__}: {exc})") from None
        if not found:
            raise InputError(root, f"no .parquet {what} shards found")
        files.extend(found)
    return files


def _total_bytes(files: Sequence[str]) -> int:
    return sum(storage.size(f) for f in files)


def _count_rows(files: Sequence[str], kind: str, landmark_definition: str | None = None) -> int:
    """Rows from the Parquet footers; also checks the schema (one-line error naming the file) and,
    for face records, the labels' landmark definition against ``landmark_definition`` (from the
    footer's column statistics: no data is read)."""
    from facepgn.train import data as train_data

    import pyarrow.parquet as pq

    from facepgn import records

    schema, _ = records.SCHEMAS[kind]
    total = 0
    for path in files:
        fs, fs_path = storage.pyarrow_filesystem(path)
        try:
            meta = pq.ParquetFile(fs.open_input_file(fs_path))
        except Exception as exc:  # noqa: BLE001 - any failure here means an unreadable shard
            raise InputError(path, f"not a readable Parquet file ({exc.__class__.__name__})") from None
        names = set(meta.schema_arrow.names)
        optional = set(records.ADDED_COLUMNS.get(kind, []))
        missing = [f.name for f in schema if f.name not in names and f.name not in optional]
        if missing:
            raise InputError(path, f"not a {kind} shard (missing columns {missing[:4]})")
        total += meta.metadata.num_rows
        if landmark_definition and "landmark_definition" in names:
            col = meta.schema_arrow.names.index("landmark_definition")
            found = set()
            for g in range(meta.metadata.num_row_groups):
                stats = meta.metadata.row_group(g).column(col).statistics
                if stats is not None and stats.has_min_max:
                    found.update({stats.min, stats.max})
            train_data.check_landmark_definitions(found, landmark_definition, path)
    return total


def check_writable(path: str, what: str) -> None:
    """Write and delete a probe object under ``path``; a one-line error if that fails."""
    probe = storage.join(path, f".facepgn-write-probe-{os.getpid()}-{time.time_ns()}")
    try:
        storage.makedirs(path)
        storage.atomic_write_bytes(probe, b"ok")
        storage.remove(probe)
    except Exception as exc:  # noqa: BLE001 - any failure means we cannot use this location
        cause = str(exc).splitlines()[0] if str(exc) else ""
        raise InputError(path, f"{what} is not writable ({exc.__class__.__name__}{': ' + cause if cause else ''})") from None


def preflight(cfg: DistributedTrainConfig, *, require_validation: bool = False) -> TrainPlan:
    """Everything that can be checked before a worker starts; raises a one-line error otherwise."""
    from facepgn.train import data as train_data

    cfg = resolve_paths(cfg)
    plan = TrainPlan(config=cfg)
    want_labelled = cfg.data.labelled_batch_size > 0 and bool(cfg.data.labelled)
    want_pairs = cfg.data.pair_batch_size > 0 and bool(cfg.data.pairs)
    if not want_labelled and not want_pairs:
        raise ConfigError(
            "config: no training data (set data.labelled with data.labelled_batch_size > 0 and/or "
            "data.pairs with data.pair_batch_size > 0)"
        )
    if want_labelled:
        plan.labelled_files = _parquet_files(cfg.data.labelled, "face-record")
        plan.labelled_rows = _count_rows(plan.labelled_files, "face_record", train_data.model_landmark_definition(cfg.model))
        plan.labelled_bytes = _total_bytes(plan.labelled_files)
    if want_pairs:
        plan.pair_files = _parquet_files(cfg.data.pairs, "frame-pair")
        plan.pair_rows = _count_rows(plan.pair_files, "frame_pair")
        plan.pair_bytes = _total_bytes(plan.pair_files)
    if cfg.validation.labelled:
        plan.validation_files = _parquet_files(cfg.validation.labelled, "validation face-record")
        plan.validation_rows = _count_rows(plan.validation_files, "face_record")
        plan.validation_bytes = _total_bytes(plan.validation_files)
    elif cfg.validation.holdout_fraction > 0:
        if not want_labelled:
            raise ConfigError("config: validation.holdout_fraction needs labelled training data (data.labelled)")
        plan.validation_files = list(plan.labelled_files)
        plan.validation_rows = plan.labelled_rows  # an upper bound; the hold-out is by subject
        plan.validation_bytes = plan.labelled_bytes
    if require_validation and not plan.validation_files:
        raise ConfigError("config: a sweep needs validation data (validation.labelled or validation.holdout_fraction)")

    workers = cfg.scaling.num_workers
    train_share = 1.0 - (cfg.validation.holdout_fraction if not cfg.validation.labelled else 0.0)
    for rows, batch, files, what in (
        (plan.labelled_rows * train_share, cfg.data.labelled_batch_size, plan.labelled_files, "labelled faces"),
        (plan.pair_rows, cfg.data.pair_batch_size, plan.pair_files, "frame pairs"),
    ):
        if files and rows < workers * batch:
            raise InputError(
                files[0] if len(files) == 1 else os.path.dirname(files[0]) or files[0],
                f"only {int(rows)} {what} for {workers} workers x batch {batch}; add data or lower the batch size",
            )

    if cfg.scaling.use_gpu and cfg.optim.amp == "fp16":
        pass  # fine: GradScaler on CUDA
    elif cfg.optim.amp == "fp16":
        raise ConfigError("config: optim.amp=fp16 needs scaling.use_gpu=true (use bf16 on CPU)")
    if cfg.fault.at_step is not None and cfg.fault.rank >= workers:
        raise ConfigError(f"config: fault.rank {cfg.fault.rank} but only {workers} workers")

    from facepgn.model import PRETRAINED_NAME

    if cfg.init_from and cfg.init_from != PRETRAINED_NAME and not storage.exists(cfg.init_from):
        raise InputError(cfg.init_from, "init_from: model file not found")
    check_writable(cfg.ray.storage_path, "ray.storage_path")
    check_writable(cfg.output_dir, "output_dir")
    plan.run_exists = bool(storage.list_files(plan.run_path))
    if plan.run_exists and not cfg.resume:
        raise InputError(plan.run_path, "a run of this name already exists; set resume: true to continue it or pick another ray.name")
    return plan


# ---- Ray objects -----------------------------------------------------------------------------


def storage_args(storage_path: str) -> dict[str, Any]:
    """``RunConfig`` storage arguments: s3:// goes through facepgn's pyarrow filesystem (custom endpoints)."""
    if storage.is_remote(storage_path):
        fs, stripped = storage.pyarrow_filesystem(storage_path)
        return {"storage_path": stripped, "storage_filesystem": fs}
    return {"storage_path": storage_path}


def _read_parquet(files: Sequence[str], read_cpus: float):
    import ray.data

    datasets = []
    for remote in (False, True):
        group = [f for f in files if storage.is_remote(f) == remote]
        if not group:
            continue
        fs, _ = storage.pyarrow_filesystem(group[0])
        paths = [storage.pyarrow_filesystem(f)[1] for f in group]
        datasets.append(ray.data.read_parquet(paths, filesystem=fs, num_cpus=read_cpus))
    ds = datasets[0]
    for other in datasets[1:]:
        ds = ds.union(other)
    return ds


def in_holdout(subject_id: str, fraction: float) -> bool:
    """Whether a subject belongs to the held-out validation share (stable across runs and machines)."""
    return (zlib.crc32(str(subject_id).encode("utf-8")) % 10_000) < fraction * 10_000


def _holdout_filter(fraction: float, keep_holdout: bool):
    def fn(batch):
        import numpy as np
        import pyarrow as pa

        mask = [in_holdout(s, fraction) == keep_holdout for s in batch.column("subject_id").to_pylist()]
        return batch.filter(pa.array(np.asarray(mask, dtype=bool)))

    return fn


def _read_tables(files: Sequence[str]) -> list:
    """Small Parquet inputs read here with pyarrow (no Ray Data read tasks to schedule)."""
    import pyarrow.parquet as pq

    tables = []
    for path in files:
        fs, fs_path = storage.pyarrow_filesystem(path)
        try:
            table = pq.read_table(fs_path, filesystem=fs)
        except Exception as exc:  # noqa: BLE001 - a shard that passed the footer check but does not read
            raise InputError(path, f"not a readable Parquet file ({exc.__class__.__name__})") from None
        tables.append(_upgraded(table))
    return tables


def _upgraded(table):
    """Face-record tables of older schema versions get the current columns (null), so they mix."""
    from facepgn import records

    if "record_id" in table.column_names:
        return records.upgrade_table(table, "face_record")
    return table


def _upgrade_batch(batch):
    return _upgraded(batch)


def _holdout_tables(tables: list, fraction: float, keep_holdout: bool) -> list:
    import numpy as np
    import pyarrow as pa

    out = []
    for table in tables:
        mask = [in_holdout(s, fraction) == keep_holdout for s in table.column("subject_id").to_pylist()]
        out.append(table.filter(pa.array(np.asarray(mask, dtype=bool))))
    return [t for t in out if t.num_rows] or out[:1]


def build_datasets(plan: TrainPlan) -> dict[str, Any]:
    """The Ray Datasets the workers stream: ``labelled``, ``pairs``, ``validation`` (those present).

    Inputs whose Parquet files total less than ``ray.materialize_below_mb`` are read once here into
    Ray's object store (``ray.data.from_arrow``): every epoch, and every pass of the cycled stream,
    then streams blocks already in memory. Larger inputs are streamed with ``read_parquet``."""
    import ray.data

    cfg = plan.config
    read_cpus = cfg.scaling.read_cpus
    ray.data.DataContext.get_current().enable_progress_bars = cfg.ray.data_progress_bars
    limit = cfg.ray.materialize_below_mb * 1e6
    holdout = cfg.validation.holdout_fraction if not cfg.validation.labelled else 0.0

    def dataset(files: list[str], size: int, holdout_side: bool | None):
        if size < limit:
            tables = _read_tables(files)
            if holdout_side is not None:
                tables = _holdout_tables(tables, holdout, holdout_side)
            return ray.data.from_arrow(tables)
        ds = _read_parquet(files, read_cpus).map_batches(_upgrade_batch, batch_format="pyarrow", num_cpus=read_cpus)
        if holdout_side is not None:
            ds = ds.map_batches(_holdout_filter(holdout, holdout_side), batch_format="pyarrow", num_cpus=read_cpus)
        return ds

    out: dict[str, Any] = {}
    if plan.labelled_files:
        out[LABELLED] = dataset(plan.labelled_files, plan.labelled_bytes, False if holdout > 0 else None)
    if plan.pair_files:
        out[PAIRS] = dataset(plan.pair_files, plan.pair_bytes, None)
    if plan.validation_files:
        ds = dataset(plan.validation_files, plan.validation_bytes, True if holdout > 0 else None)
        out[VALIDATION] = ds.limit(cfg.validation.max_records)
    return out


def scaling_config(cfg: DistributedTrainConfig):
    import ray.train

    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **s.resources_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    return ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources)


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
    loop_config = {
        "config": cfg.model_dump(mode="json"),
        "epoch_reports_only": epoch_reports_only,
        "has_validation": VALIDATION in datasets,
        "built_at": time.time(),
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=scaling_config(cfg),
        torch_config=TorchConfig(backend=backend_name(cfg)),
        run_config=run_config,
        datasets=datasets,
        # training streams are split between the workers; the (small) validation set is not:
        # each worker scores every world_size-th batch of it
        dataset_config=ray.train.DataConfig(datasets_to_split=[n for n in (LABELLED, PAIRS) if n in datasets]),
    )


def ensure_ray() -> None:
    """Connect to Ray (``RAY_ADDRESS`` / a ``ray job submit`` cluster) or start a local one."""
    import ray

    if not ray.is_initialized():
        ray.init(configure_logging=False, log_to_driver=True)


def run_training(cfg: DistributedTrainConfig) -> dict[str, Any]:
    """Check, train on Ray, export the model and write ``summary.json``; returns the summary."""
    started = time.time()
    plan = preflight(cfg)
    cfg = plan.config
    ensure_ray()
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


@dataclass
class _Collated:
    """A batch decoded to tensors in Ray Data's prefetch threads, with the ids it holds."""

    tensors: dict[str, Any]
    ids: list[str]


def _collate_class():
    """Collate functions for ``iter_torch_batches``: JPEG decoding and tensor conversion run in the
    iterator's prefetch threads, overlapping the training step, not in the step's critical path."""
    import threading

    import torch
    from ray.data.collate_fn import NumpyBatchCollateFn

    from facepgn.train import data as train_data

    class FaceCollate(NumpyBatchCollateFn):
        def __init__(self, cfg: DistributedTrainConfig, face_model_name: str | None, seed: int):
            self.cfg, self.face_model_name, self.seed = cfg, face_model_name, seed
            self.lock, self.count = threading.Lock(), 0

        def __call__(self, batch):
            with self.lock:  # called from several threads: one augmentation stream per batch
                self.count += 1
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.count)
            m = self.cfg.model
            tensors = train_data.face_batch_to_tensors(
                batch, m.input_size, m.num_id, m.num_exp, self.face_model_name, augment=self.cfg.data.augment, generator=generator,
                geometric=train_data.augment_settings(self.cfg.data),
            )
            return _Collated(tensors, _ids(batch, "record_id"))

    class PairCollate(NumpyBatchCollateFn):
        def __init__(self, cfg: DistributedTrainConfig):
            self.cfg = cfg

        def __call__(self, batch):
            return _Collated(train_data.pair_batch_to_tensors(batch, self.cfg.model.input_size), _ids(batch, "pair_id"))

    return FaceCollate, PairCollate


def _batches(shard, batch_size: int, collate) -> Iterator[_Collated]:
    return iter(shard.iter_torch_batches(batch_size=batch_size, collate_fn=collate, drop_last=True, prefetch_batches=PREFETCH_BATCHES))


def _cycle(shard, batch_size: int, collate) -> Iterator[_Collated]:
    """Endless batches from a dataset shard: a new pass when one ends."""
    while True:
        empty = True
        for batch in _batches(shard, batch_size, collate):
            empty = False
            yield batch
        if empty:
            raise FacepgnError(f"a worker's data shard has fewer rows than one batch ({batch_size})")


def _ids(batch: Any, name: str) -> list[str]:
    if batch is None or name not in batch:
        return []
    return [str(x) for x in batch[name]]


class _Tensorboard:
    """Rank 0's TensorBoard writer; with a remote output_dir the events are written locally and
    copied to ``<output_dir>/tensorboard`` on :meth:`sync`."""

    def __init__(self, output_dir: str, enabled: bool, purge_step: int | None):
        self.enabled = enabled
        self.remote_dir = storage.join(output_dir, TENSORBOARD_DIR)
        if not enabled:
            self.writer = None
            return
        from tensorboardX import SummaryWriter

        if storage.is_remote(output_dir):
            self.local_dir = tempfile.mkdtemp(prefix="facepgn-tb-")
        else:
            self.local_dir = self.remote_dir
            os.makedirs(self.local_dir, exist_ok=True)
        self.writer = SummaryWriter(logdir=self.local_dir, purge_step=purge_step, flush_secs=10)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def image(self, tag: str, rgb, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, rgb, step, dataformats="HWC")

    def sync(self) -> None:
        if self.writer is None:
            return
        self.writer.flush()
        if self.local_dir != self.remote_dir:
            for name in os.listdir(self.local_dir):
                storage.atomic_write_file(os.path.join(self.local_dir, name), storage.join(self.remote_dir, name))

    def close(self) -> None:
        if self.writer is not None:
            self.sync()
            self.writer.close()


def read_tensorboard(log_dir: str) -> dict[str, Any]:
    """Scalars and images from the TensorBoard event files in ``log_dir`` (local), without TensorBoard:
    ``{"scalars": {tag: [(step, value), ...]}, "images": {tag: [(step, png bytes), ...]}}``."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    images: dict[str, list[tuple[int, bytes]]] = {}
    for name in sorted(os.listdir(log_dir)):
        if "tfevents" not in name:
            continue
        with open(os.path.join(log_dir, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            start = pos + 12  # length (8) + its crc (4)
            if start + length + 4 > len(data):
                break  # a record still being written
            event = event_pb2.Event.FromString(data[start : start + length])
            pos = start + length + 4
            for value in event.summary.value:
                if value.HasField("image"):
                    images.setdefault(value.tag, []).append((event.step, value.image.encoded_image_string))
                elif value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return {"scalars": scalars, "images": images}


def _overlay_sheet(core, images, outputs, gt_2d, count: int):
    """Validation faces with the predicted mesh (wireframe) and landmarks (green; labels red)."""
    import numpy as np

    from facepgn import render

    n = min(count, images.shape[0])
    verts = core.mesh_vertices({k: v[:n] for k, v in outputs.items()}).detach().cpu().numpy()
    triangles = core.fm_triangles.cpu().numpy()
    pred = outputs["landmarks_3d"][:n].detach().float().cpu().numpy()
    rgb = np.ascontiguousarray((images[:n].detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8))
    tiles = []
    for i in range(n):
        mesh = render.draw_mesh(rgb[i], verts[i], triangles, mode="wireframe", alpha=0.6)
        marks = render.draw_landmarks(rgb[i], gt_2d[i], color=(255, 0, 0))
        marks = render.draw_landmarks(marks, pred[i], color=(0, 255, 0))
        tiles += [mesh, marks]
    return render.contact_sheet(tiles, columns=2)


def _validate(model, shard, cfg: DistributedTrainConfig, device, want_overlay: bool, rank: int = 0, world: int = 1):
    """NME sums on this worker's validation shard: (mesh landmarks, PGN landmarks, face count, overlay).

    ``val_nme`` is the reconstruction's: the 68 landmark vertices of the posed mesh; ``val_nme_pgn``
    the PGN's own 3D landmarks (x, y). Both against the labels' 2D landmarks (``facepgn.evaluation.nme``).
    A non-finite prediction (or a pose fit that fails on one) counts as NME 1000: a diverged model
    must lose, not vanish or stop the run."""
    import numpy as np
    import torch

    from facepgn import evaluation
    from facepgn.model import unwrap
    from facepgn.train import data as train_data

    core = unwrap(model)
    was_training = core.training
    core.eval()
    sum_mesh = sum_pgn = 0.0
    count = 0
    overlay = None
    try:
        with torch.no_grad():
            for index, batch in enumerate(shard.iter_batches(batch_size=cfg.validation.batch_size, batch_format="numpy", prefetch_batches=1)):
                if index % world != rank:
                    continue
                faces = train_data.face_batch_to_tensors(batch, cfg.model.input_size, cfg.model.num_id, cfg.model.num_exp)
                images = faces["images"].to(device)
                gt = faces["landmarks_2d"].numpy()
                try:
                    outputs = core(images)
                except torch.linalg.LinAlgError:  # the pose fit of a diverged model: score, do not crash
                    sum_mesh += 1e3 * len(gt)
                    sum_pgn += 1e3 * len(gt)
                    count += len(gt)
                    continue
                mesh = outputs["mesh_landmarks"][..., :2].float().cpu().numpy()
                pgn = outputs["landmarks_3d"][..., :2].float().cpu().numpy()
                with np.errstate(all="ignore"):
                    nme_mesh = np.nan_to_num(evaluation.nme(mesh, gt), nan=1e3, posinf=1e3)
                    nme_pgn = np.nan_to_num(evaluation.nme(pgn, gt), nan=1e3, posinf=1e3)
                sum_mesh += float(np.minimum(nme_mesh, 1e3).sum())
                sum_pgn += float(np.minimum(nme_pgn, 1e3).sum())
                count += len(nme_mesh)
                if want_overlay and overlay is None and cfg.validation.overlay_images > 0:
                    overlay = _overlay_sheet(core, images, outputs, gt, cfg.validation.overlay_images)
    finally:
        core.train(was_training)
    return sum_mesh, sum_pgn, count, overlay


def _all_reduce_sum(values: list[float], device) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


def _save_state(directory: str, model, optimizer, scheduler, scaler, step: int, epoch: int, cfg: DistributedTrainConfig) -> None:
    """The plain loop's checkpoint file (``facepgn.train.loop.save_checkpoint``) plus the epoch."""
    from facepgn.train.loop import save_checkpoint

    save_checkpoint(os.path.join(directory, STATE_FILE), model, optimizer, scheduler, scaler, step, cfg)
    with open(os.path.join(directory, PROGRESS_FILE), "w") as f:
        json.dump({"step": step, "epoch": epoch}, f)


def restore_state(checkpoint, model, optimizer, scheduler, scaler, device) -> tuple[int, int]:
    """Load a Ray Train checkpoint into the training objects; returns (step, epoch)."""
    from facepgn.train.loop import load_checkpoint

    with checkpoint.as_directory() as directory:
        step = load_checkpoint(os.path.join(directory, STATE_FILE), model, optimizer, scheduler, scaler, map_location=device)
        progress_path = os.path.join(directory, PROGRESS_FILE)
        epoch = 0
        if os.path.exists(progress_path):
            with open(progress_path) as f:
                epoch = int(json.load(f).get("epoch", 0))
    return step, epoch


def checkpoint_model_file(checkpoint_path: str) -> str:
    """The resumable checkpoint file inside a Ray Train checkpoint folder (local or s3://)."""
    return storage.join(checkpoint_path, STATE_FILE)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """What every Ray Train worker runs (see the module docstring)."""
    import ray.train
    import ray.train.torch
    import torch

    from facepgn.model import build_model, save_model_file, unwrap
    from facepgn.train import data as train_data
    from facepgn.train import step as train_step_lib
    from facepgn.train.loop import make_optimizer, make_scheduler

    cfg = DistributedTrainConfig.model_validate(loop_config["config"])
    epoch_reports_only = bool(loop_config.get("epoch_reports_only"))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    threads = cfg.threads or max(1, int(round(cfg.scaling.cpus_per_worker)))
    torch.set_num_threads(threads)
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)  # the same initial weights everywhere (DDP also broadcasts rank 0's)

    model = build_model(cfg.model).to(device)
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim, cfg.steps)
    amp = cfg.optim.amp
    if device.type == "cuda" and amp == "off" and cfg.scaling.gpu_mixed_precision:
        amp = "bf16"  # mixed precision on GPUs unless the config picks a mode itself
    amp_dtype, scaler = train_step_lib.autocast_settings(amp, device)
    step, epoch = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        step, epoch = restore_state(checkpoint, model, optimizer, scheduler, scaler, device)
        if rank == 0:
            print(f"facepgn train: resumed from step {step} (epoch {epoch})", flush=True)
    elif cfg.init_from:
        from facepgn.train.loop import init_weights

        init_weights(model, cfg.init_from)
        if rank == 0:
            print(f"facepgn train: weights from {cfg.init_from}", flush=True)
    model = ray.train.torch.prepare_model(model)
    core = unwrap(model)
    if rank == 0:
        waited = time.time() - float(loop_config.get("built_at", time.time()))
        print(f"facepgn train: {world} workers ready {waited:.1f} s after the trainer was built", flush=True)
    face_model_name = core.face_model_name or None

    lab_shard = ray.train.get_dataset_shard(LABELLED) if cfg.data.labelled_batch_size > 0 and cfg.data.labelled else None
    pair_shard = ray.train.get_dataset_shard(PAIRS) if cfg.data.pair_batch_size > 0 and cfg.data.pairs else None
    val_shard = ray.train.get_dataset_shard(VALIDATION) if loop_config.get("has_validation") else None
    tb = _Tensorboard(cfg.output_dir, enabled=(rank == 0 and cfg.tensorboard), purge_step=step or None)
    audit: list[dict[str, Any]] = []
    last_val: dict[str, float] = {}

    FaceCollate, PairCollate = _collate_class()
    face_collate = FaceCollate(cfg, face_model_name, seed=cfg.seed * 7919 + rank * 104_729 + step)
    pair_collate = PairCollate(cfg)

    def epoch_batches() -> Iterator[tuple[_Collated | None, _Collated | None]]:
        """(labelled batch, pair batch) for one epoch of the primary stream; the other one cycles."""
        if lab_shard is not None:
            pairs_iter = _cycle(pair_shard, cfg.data.pair_batch_size, pair_collate) if pair_shard is not None else None
            for lab in _batches(lab_shard, cfg.data.labelled_batch_size, face_collate):
                yield lab, (next(pairs_iter) if pairs_iter is not None else None)
        else:
            for pair in _batches(pair_shard, cfg.data.pair_batch_size, pair_collate):
                yield None, pair

    def to_device(lab: _Collated | None, pair: _Collated | None):
        mixed = train_data.mixed_batch(lab.tensors if lab else None, pair.tensors if pair else None)
        return train_data.to_device(mixed, device)

    def write_audit() -> None:
        if cfg.ray.record_batch_ids and audit:
            name = f"rank{rank}-{audit[0]['step']:08d}-{audit[-1]['step']:08d}-{time.time_ns()}.json"
            storage.atomic_write_text(storage.join(cfg.output_dir, BATCH_IDS_DIR, name), json.dumps(audit))
            audit.clear()

    def validate() -> dict[str, float]:
        if val_shard is None:
            return {}
        s, s_pgn, n, overlay = _validate(model, val_shard, cfg, device, want_overlay=(rank == 0), rank=rank, world=world)
        s, s_pgn, n = _all_reduce_sum([s, s_pgn, float(n)], device)
        if n <= 0:
            return {}
        out = {"val_nme": s / n, "val_nme_pgn": s_pgn / n, "val_faces": n}
        if overlay is not None:
            tb.image("val/overlay", overlay, step)
        tb.scalars({"val/nme": out["val_nme"], "val/nme_pgn": out["val_nme_pgn"]}, step)
        return out

    best_path = storage.join(cfg.output_dir, "best_model.pt")
    best_meta = storage.join(cfg.output_dir, "best_model.json")
    best = {"val_nme": float("inf")}
    if storage.exists(best_meta):  # a resumed run keeps the best of its earlier part
        best = json.loads(storage.read_bytes(best_meta))

    def keep_best(val: dict[str, Any]) -> None:
        """Checkpoint selection on the validation faces: the best weights so far as a model file."""
        if rank != 0 or not cfg.validation.keep_best or "val_nme" not in val or not val["val_nme"] < best["val_nme"]:
            return
        best.update(val_nme=float(val["val_nme"]), val_nme_pgn=float(val.get("val_nme_pgn", float("nan"))), step=step)
        save_model_file(core, best_path)
        storage.atomic_write_text(best_meta, json.dumps(best) + "\n")
        print(f"facepgn train: best validation NME so far {100 * best['val_nme']:.2f}% at step {step} -> {best_path}", flush=True)

    def report(metrics: dict[str, Any], with_checkpoint: bool) -> None:
        write_audit()
        metrics = {**metrics, "step": step, "epoch": epoch, **last_val}
        if with_checkpoint and rank == 0:
            tb.sync()
            with tempfile.TemporaryDirectory(prefix="facepgn-ckpt-") as tmp:
                _save_state(tmp, model, optimizer, scheduler, scaler, step, epoch, cfg)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=f"checkpoint_{step:09d}_{time.time_ns() % 10**9:09d}")
        else:
            ray.train.report(metrics)

    window = {"samples": 0, "data_s": 0.0, "step_s": 0.0, "started": time.perf_counter()}
    last_metrics: dict[str, float] = {}
    per_step_samples = (cfg.data.labelled_batch_size if lab_shard is not None else 0) + (cfg.data.pair_batch_size if pair_shard is not None else 0)
    finished_epoch = False
    while step < cfg.steps:
        finished_epoch = True
        steps_this_epoch = 0
        batches = epoch_batches()
        while True:
            t0 = time.perf_counter()
            try:
                lab, pair = next(batches)
            except StopIteration:
                break
            if step < cfg.data.pairs_from_step:
                pair = None  # labelled-only warm-up, as in the plain loop (same step on every rank)
            batch = to_device(lab, pair)
            t1 = time.perf_counter()
            metrics = train_step_lib.train_step(
                model, optimizer, batch, cfg.losses, amp_dtype=amp_dtype, scaler=scaler,
                grad_clip=cfg.optim.grad_clip, scheduler=scheduler,
            )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t2 = time.perf_counter()
            step += 1
            steps_this_epoch += 1
            window["samples"] += per_step_samples * world
            window["data_s"] += t1 - t0
            window["step_s"] += t2 - t0
            last_metrics = metrics
            if cfg.ray.record_batch_ids:
                audit.append({"step": step, "record_ids": lab.ids if lab else [], "pair_ids": pair.ids if pair else []})
            if cfg.fault.at_step is not None and step == cfg.fault.at_step and rank == cfg.fault.rank:
                marker = cfg.fault.marker or ""
                if not storage.exists(marker):
                    storage.atomic_write_text(marker, f"rank {rank} exited at step {step}\n")
                    print(f"facepgn train: fault injection: rank {rank} exits at step {step}", flush=True)
                    time.sleep(cfg.fault.delay_s)
                    os._exit(1)
            if rank == 0 and (step % max(cfg.log_every, 1) == 0 or step == cfg.steps):
                elapsed = max(time.perf_counter() - window["started"], 1e-9)
                throughput = {
                    "perf/samples_per_s": window["samples"] / elapsed,
                    "perf/data_wait_share": window["data_s"] / max(window["step_s"], 1e-9),
                }
                tb.scalars({f"train/{k}": v for k, v in metrics.items()}, step)
                tb.scalars(throughput, step)
                print(
                    f"facepgn train: step {step}/{cfg.steps} epoch {epoch} loss {metrics['loss']:.4f} "
                    f"lr {metrics['lr']:.2e} {throughput['perf/samples_per_s']:.1f} samples/s "
                    f"data wait {100 * throughput['perf/data_wait_share']:.1f}%",
                    flush=True,
                )
                last_metrics = {**metrics, **{k.split("/", 1)[1]: v for k, v in throughput.items()}}
                window.update(samples=0, data_s=0.0, step_s=0.0, started=time.perf_counter())
            if step >= cfg.steps:
                finished_epoch = False
                break
            if cfg.validation.every_steps and step % cfg.validation.every_steps == 0:
                last_val = validate()  # every rank at the same step: validation is collective
                keep_best(last_val)
            if not epoch_reports_only and cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0:
                report(last_metrics, with_checkpoint=True)
        if steps_this_epoch == 0:
            raise FacepgnError("an epoch produced no batch: the data shards are smaller than one batch")
        if finished_epoch:
            epoch += 1
            last_val = validate()
            keep_best(last_val)
            report(last_metrics, with_checkpoint=True)
        # an epoch cut short by the step limit is finished below

    # the end: validation of the final weights (unless an epoch just ended), checkpoint, model file
    if not finished_epoch:
        last_val = validate()
        keep_best(last_val)
        report(last_metrics, with_checkpoint=True)
    if rank == 0:
        save_model_file(core, storage.join(cfg.output_dir, MODEL_FILE))
        waited = time.time() - float(loop_config.get("built_at", time.time()))
        print(f"facepgn train: wrote {storage.join(cfg.output_dir, MODEL_FILE)} ({waited:.1f} s after the trainer was built)", flush=True)
    tb.close()
