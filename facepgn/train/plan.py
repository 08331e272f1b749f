"""The plan of a Ray training run, and its preflight: everything that can be checked before a
worker starts (config combinations, shards that exist and have the right schema, the labels'
landmark definition from the Parquet footers, enough records for the workers, writable storage,
the run name), each failure a one-line error."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

from facepgn import storage
from facepgn.config import DistributedTrainConfig
from facepgn.errors import ConfigError, InputError, StorageError


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
    labelled_file_rows: list[int] = field(default_factory=list)  # per file, from its footer
    pair_file_rows: list[int] = field(default_factory=list)
    run_exists: bool = False

    def streamed(self, what: str) -> bool:
        """Whether the ``labelled`` / ``pairs`` input streams (at or above ``ray.materialize_below_mb``)
        instead of being read once into the object store."""
        size = self.labelled_bytes if what == "labelled" else self.pair_bytes
        return size >= self.config.ray.materialize_below_mb * 1e6

    @property
    def run_path(self) -> str:
        return storage.join(self.config.ray.storage_path, self.config.ray.name)


def absolute_path(path: str) -> str:
    """``path`` absolute (``~`` expanded, ``file://`` dropped); remote paths as they are."""
    if storage.is_remote(path):
        return path
    return os.path.abspath(os.path.expanduser(path[len("file://"):] if path.startswith("file://") else path))


def resolve_paths(cfg: DistributedTrainConfig) -> DistributedTrainConfig:
    """A copy with every local path absolute (the workers do not share the driver's working dir)."""
    data = cfg.model_dump(mode="json")
    data["data"]["labelled"] = [absolute_path(p) for p in cfg.data.labelled]
    data["data"]["pairs"] = [absolute_path(p) for p in cfg.data.pairs]
    data["validation"]["labelled"] = [absolute_path(p) for p in cfg.validation.labelled]
    data["output_dir"] = absolute_path(cfg.output_dir)
    data["ray"]["storage_path"] = absolute_path(cfg.ray.storage_path)
    if cfg.fault.marker:
        data["fault"]["marker"] = absolute_path(cfg.fault.marker)
    if cfg.model.face_model:
        data["model"]["face_model"] = absolute_path(cfg.model.face_model)
    return DistributedTrainConfig.model_validate(data)


def parquet_files(roots: Sequence[str], what: str) -> list[str]:
    """The ``.parquet`` files under ``roots``; a one-line error for a root without any."""
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


def count_rows(files: Sequence[str], kind: str, landmark_definition: str | None = None) -> int:
    """The rows of ``files``: :func:`footer_rows` summed."""
    return sum(footer_rows(files, kind, landmark_definition))


def footer_rows(files: Sequence[str], kind: str, landmark_definition: str | None = None) -> list[int]:
    """Each file's rows, from its Parquet footer; also checks the schema (one-line error naming the file) and,
    for face records, the labels' landmark definition against ``landmark_definition`` (from the
    footer's column statistics: no data is read)."""
    import pyarrow.parquet as pq

    from facepgn import records
    from facepgn.train import data as train_data

    schema, _ = records.SCHEMAS[kind]
    rows = []
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
        rows.append(meta.metadata.num_rows)
        if landmark_definition and "landmark_definition" in names:
            col = meta.schema_arrow.names.index("landmark_definition")
            found = set()
            for g in range(meta.metadata.num_row_groups):
                stats = meta.metadata.row_group(g).column(col).statistics
                if stats is not None and stats.has_min_max:
                    found.update({stats.min, stats.max})
            train_data.check_landmark_definitions(found, landmark_definition, path)
    return rows


def check_writable(path: str, what: str) -> None:
    """:func:`facepgn.storage.check_writable`, its one-line error naming the setting (``what``)."""
    try:
        storage.check_writable(path)
    except StorageError as exc:
        raise StorageError(exc.path, f"{what} is not writable ({exc.cause})") from None


def _find_inputs(plan: TrainPlan) -> None:
    """The training and validation shards, their rows (footers) and bytes."""
    from facepgn.train import data as train_data

    cfg = plan.config
    want_labelled = cfg.data.labelled_batch_size > 0 and bool(cfg.data.labelled)
    want_pairs = cfg.data.pair_batch_size > 0 and bool(cfg.data.pairs)
    if not want_labelled and not want_pairs:
        raise ConfigError(
            "config: no training data (set data.labelled with data.labelled_batch_size > 0 and/or "
            "data.pairs with data.pair_batch_size > 0)"
        )
    if want_labelled:
        plan.labelled_files = parquet_files(cfg.data.labelled, "face-record")
        plan.labelled_file_rows = footer_rows(plan.labelled_files, "face_record", train_data.model_landmark_definition(cfg.model))
        plan.labelled_rows = sum(plan.labelled_file_rows)
        plan.labelled_bytes = sum(storage.size(f) for f in plan.labelled_files)
    if want_pairs:
        plan.pair_files = parquet_files(cfg.data.pairs, "frame-pair")
        plan.pair_file_rows = footer_rows(plan.pair_files, "frame_pair")
        plan.pair_rows = sum(plan.pair_file_rows)
        plan.pair_bytes = sum(storage.size(f) for f in plan.pair_files)
    if cfg.validation.labelled:
        plan.validation_files = parquet_files(cfg.validation.labelled, "validation face-record")
        plan.validation_rows = count_rows(plan.validation_files, "face_record")
        plan.validation_bytes = sum(storage.size(f) for f in plan.validation_files)
    elif cfg.validation.holdout_fraction > 0:
        if not want_labelled:
            raise ConfigError("config: validation.holdout_fraction needs labelled training data (data.labelled)")
        plan.validation_files = list(plan.labelled_files)
        plan.validation_rows = plan.labelled_rows  # an upper bound; the hold-out is by subject
        plan.validation_bytes = plan.labelled_bytes


def _check_sizes_and_settings(plan: TrainPlan) -> None:
    """Enough rows for every worker's batch; settings that cannot work together."""
    cfg = plan.config
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
    for files, what in ((plan.labelled_files, "labelled"), (plan.pair_files, "pairs")):
        if files and plan.streamed(what) and len(files) < workers:
            raise ConfigError(f"config: data.{what} streams (above ray.materialize_below_mb={cfg.ray.materialize_below_mb:g}) and is "
                              f"shared out file by file, but has {len(files)} Parquet files for {workers} workers; write it in more "
                              "files or raise ray.materialize_below_mb")
    if cfg.optim.amp == "fp16" and not cfg.scaling.use_gpu:
        raise ConfigError("config: optim.amp=fp16 needs scaling.use_gpu=true (use bf16 on CPU)")
    if cfg.fault.at_step is not None and cfg.fault.rank >= workers:
        raise ConfigError(f"config: fault.rank {cfg.fault.rank} but only {workers} workers")


def preflight(cfg: DistributedTrainConfig, *, require_validation: bool = False) -> TrainPlan:
    """Everything that can be checked before a worker starts; raises a one-line error otherwise."""
    from facepgn.model import PRETRAINED_NAME

    plan = TrainPlan(config=resolve_paths(cfg))
    cfg = plan.config
    _find_inputs(plan)
    if require_validation and not plan.validation_files:
        raise ConfigError("config: a sweep needs validation data (validation.labelled or validation.holdout_fraction)")
    if require_validation and plan.validation_rows == 0:
        raise InputError(cfg.validation.labelled[0], "validation.labelled holds no faces (its shards have no rows)")
    _check_sizes_and_settings(plan)
    if cfg.init_from and cfg.init_from != PRETRAINED_NAME and not storage.exists(cfg.init_from):
        raise InputError(cfg.init_from, "init_from: model file not found")
    check_writable(cfg.ray.storage_path, "ray.storage_path")
    check_writable(cfg.output_dir, "output_dir")
    plan.run_exists = bool(storage.list_files(plan.run_path))
    if plan.run_exists and not cfg.resume:
        raise InputError(plan.run_path, "a run of this name already exists; set resume: true to continue it or pick another ray.name")
    return plan
