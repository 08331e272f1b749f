"""Batch sources: what the training loop body (``facepgn.train.epoch``) steps over.

* local (the plain loop): :func:`mixed_batches`, endless shuffled batches from Parquet read into
  memory (``facepgn.train.data.random_batches``: reshuffled every pass, no row dropped);
* Ray (every Ray Train worker): :func:`build_datasets` on the driver gives the Ray Datasets
  (``labelled``, ``pairs``, ``validation``); on a worker :class:`RayBatches` streams its shards of
  them, decoding to tensors in the iterators' prefetch threads (``iter_torch_batches`` + the
  collate functions) while the previous step computes. An epoch is a pass over the labelled shard
  (over the pairs when there are no labelled faces); the other stream cycles.

Both yield ``{"faces": ..., "pairs": ...}`` mixed batches (``facepgn.train.data.mixed_batch``) or
:class:`Batch` objects, which also carry the ids of the rows in them.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch

from facepgn import storage
from facepgn.config import DistributedTrainConfig, TrainConfig
from facepgn.errors import FacepgnError, InputError
from facepgn.train import data as train_data

LABELLED, PAIRS, VALIDATION = "labelled", "pairs", "validation"
#: Ray path: training rows are mixed twice, as the plain loop's reshuffle does: blocks of at most
#: ``SHUFFLE_BLOCK_ROWS`` rows in a new random order every epoch, then a worker-side buffer of
#: ``SHUFFLE_BUFFER_ROWS`` rows (records are written video by video: without this a batch is 32
#: consecutive frames of one video)
SHUFFLE_BLOCK_ROWS = 256
SHUFFLE_BUFFER_ROWS = 1024
PREFETCH_BATCHES = 4  # batches decoded ahead of the training step, per stream


@dataclass
class Batch:
    """One step's input: labelled faces and/or frame pairs (tensors), with the ids of their rows."""

    faces: dict[str, torch.Tensor] | None = None
    pairs: dict[str, torch.Tensor] | None = None
    record_ids: list[str] = field(default_factory=list)
    pair_ids: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, batch: Batch | Mapping[str, Any]) -> Batch:
        """A :class:`Batch` from a ``mixed_batch`` dict (or the batch itself)."""
        return batch if isinstance(batch, Batch) else cls(faces=batch.get("faces"), pairs=batch.get("pairs"))

    @property
    def size(self) -> int:
        """Faces plus pairs."""
        faces = self.faces["images"].shape[0] if self.faces is not None else 0
        return faces + (self.pairs["images_a"].shape[0] if self.pairs is not None else 0)

    def without_pairs(self) -> Batch:
        return Batch(self.faces, None, self.record_ids, [])

    def tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """The training step's input (``facepgn.train.data.mixed_batch``)."""
        return train_data.mixed_batch(self.faces, self.pairs)


# ---- local: Parquet in memory --------------------------------------------------------------


def mixed_batches(cfg: TrainConfig, face_model_name: str | None = None, seed: int = 0) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
    """Endless mixed batches (labelled faces and/or frame pairs) from ``cfg.data`` (CPU tensors)."""
    d, m = cfg.data, cfg.model
    labelled = train_data.read_records(d.labelled, "face_record") if d.labelled and d.labelled_batch_size > 0 else None
    if labelled is not None and "landmark_definition" in labelled.column_names:
        train_data.check_landmark_definitions(labelled.column("landmark_definition").unique().to_pylist(),
                                              train_data.model_landmark_definition(cfg.model), str(d.labelled[0]))
    pairs = train_data.read_records(d.pairs, "frame_pair") if d.pairs and d.pair_batch_size > 0 else None
    if labelled is None and pairs is None:
        raise FacepgnError("training data: set data.labelled and/or data.pairs")
    lab_it = train_data.random_batches(labelled, d.labelled_batch_size, seed) if labelled is not None else None
    pair_it = train_data.random_batches(pairs, d.pair_batch_size, seed + 1) if pairs is not None else None
    gen = torch.Generator().manual_seed(seed)
    while True:
        faces = (
            train_data.face_batch_to_tensors(next(lab_it), m.input_size, m.num_id, m.num_exp, face_model_name, d.augment, gen,
                                             geometric=train_data.augment_settings(d))
            if lab_it is not None
            else None
        )
        pair = train_data.pair_batch_to_tensors(next(pair_it), m.input_size) if pair_it is not None else None
        yield train_data.mixed_batch(faces, pair)


# ---- Ray Datasets (on the driver) ----------------------------------------------------------


def in_holdout(subject_id: str, fraction: float) -> bool:
    """Whether a subject belongs to the held-out validation share (stable across runs and machines)."""
    return (zlib.crc32(str(subject_id).encode("utf-8")) % 10_000) < fraction * 10_000


def _holdout_mask(table, fraction: float, keep_holdout: bool):
    import numpy as np
    import pyarrow as pa

    mask = [in_holdout(s, fraction) == keep_holdout for s in table.column("subject_id").to_pylist()]
    return pa.array(np.asarray(mask, dtype=bool))


def _holdout_filter(fraction: float, keep_holdout: bool):
    def fn(batch):
        return batch.filter(_holdout_mask(batch, fraction, keep_holdout))

    return fn


def _upgraded(table):
    """Face-record tables of older schema versions get the current columns (null), so they mix."""
    from facepgn import records

    if "record_id" in table.column_names:
        return records.upgrade_table(table, "face_record")
    return table


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


def _dataset(files: list[str], size: int, holdout: float, holdout_side: bool | None, cfg: DistributedTrainConfig):
    """One input as a Ray Dataset: read here into the object store below ``ray.materialize_below_mb``,
    else streamed with ``read_parquet``; ``holdout_side``: only the held-out subjects (True) or only
    the others (False)."""
    import ray.data

    read_cpus = cfg.scaling.read_cpus
    if size < cfg.ray.materialize_below_mb * 1e6:
        tables = _read_tables(files)
        if holdout_side is not None:
            tables = [t.filter(_holdout_mask(t, holdout, holdout_side)) for t in tables]
            tables = [t for t in tables if t.num_rows] or tables[:1]
        blocks = [t.slice(i, SHUFFLE_BLOCK_ROWS) for t in tables for i in range(0, max(t.num_rows, 1), SHUFFLE_BLOCK_ROWS)]
        return ray.data.from_arrow(blocks)
    ds = _read_parquet(files, read_cpus).map_batches(_upgraded, batch_format="pyarrow", num_cpus=read_cpus)
    if holdout_side is not None:
        ds = ds.map_batches(_holdout_filter(holdout, holdout_side), batch_format="pyarrow", num_cpus=read_cpus)
    return ds


def build_datasets(plan) -> dict[str, Any]:
    """The Ray Datasets the workers stream: ``labelled``, ``pairs``, ``validation`` (those present)
    of a ``facepgn.train.plan.TrainPlan``.

    Inputs whose Parquet files total less than ``ray.materialize_below_mb`` are read once here into
    Ray's object store (``ray.data.from_arrow``): every epoch, and every pass of the cycled stream,
    then streams blocks already in memory. Larger inputs are streamed with ``read_parquet``."""
    import ray.data

    cfg = plan.config
    ray.data.DataContext.get_current().enable_progress_bars = cfg.ray.data_progress_bars
    holdout = cfg.validation.holdout_fraction if not cfg.validation.labelled else 0.0
    out: dict[str, Any] = {}
    if plan.labelled_files:
        out[LABELLED] = _dataset(plan.labelled_files, plan.labelled_bytes, holdout, False if holdout > 0 else None, cfg).randomize_block_order()
    if plan.pair_files:
        out[PAIRS] = _dataset(plan.pair_files, plan.pair_bytes, holdout, None, cfg).randomize_block_order()
    if plan.validation_files:
        ds = _dataset(plan.validation_files, plan.validation_bytes, holdout, True if holdout > 0 else None, cfg)
        out[VALIDATION] = ds.limit(cfg.validation.max_records)
    return out


# ---- Ray batches (on a worker) -------------------------------------------------------------


@dataclass
class Collated:
    """A batch decoded to tensors in Ray Data's prefetch threads, with the ids it holds."""

    tensors: dict[str, Any]
    ids: list[str]


def _ids(batch: Any, name: str) -> list[str]:
    if batch is None or name not in batch:
        return []
    return [str(x) for x in batch[name]]


def collate_classes():
    """Collate functions for ``iter_torch_batches``: JPEG decoding and tensor conversion run in the
    iterator's prefetch threads, overlapping the training step, not in the step's critical path."""
    from ray.data.collate_fn import NumpyBatchCollateFn

    class FaceCollate(NumpyBatchCollateFn):
        def __init__(self, cfg: TrainConfig, face_model_name: str | None, seed: int):
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
            return Collated(tensors, _ids(batch, "record_id"))

    class PairCollate(NumpyBatchCollateFn):
        def __init__(self, cfg: TrainConfig):
            self.cfg = cfg

        def __call__(self, batch):
            return Collated(train_data.pair_batch_to_tensors(batch, self.cfg.model.input_size), _ids(batch, "pair_id"))

    return FaceCollate, PairCollate


class RayBatches:
    """A Ray Train worker's batch source: its shards of the labelled faces and the frame pairs, and
    its share of the validation faces (every ``world``-th batch; the small set is not split)."""

    def __init__(self, cfg: DistributedTrainConfig, rank: int, world: int, face_model_name: str | None, step: int, has_validation: bool):
        import ray.train

        self.cfg, self.rank, self.world = cfg, rank, world
        d = cfg.data
        self.labelled = ray.train.get_dataset_shard(LABELLED) if d.labelled_batch_size > 0 and d.labelled else None
        self.pairs = ray.train.get_dataset_shard(PAIRS) if d.pair_batch_size > 0 and d.pairs else None
        self.validation_shard = ray.train.get_dataset_shard(VALIDATION) if has_validation else None
        FaceCollate, PairCollate = collate_classes()
        self.face_collate = FaceCollate(cfg, face_model_name, seed=cfg.seed * 7919 + rank * 104_729 + step)
        self.pair_collate = PairCollate(cfg)

    def _batches(self, shard, batch_size: int, collate) -> Iterator[Collated]:
        return iter(shard.iter_torch_batches(batch_size=batch_size, collate_fn=collate, drop_last=True, prefetch_batches=PREFETCH_BATCHES,
                                             local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS))

    def _cycle(self, shard, batch_size: int, collate) -> Iterator[Collated]:
        """Endless batches from a dataset shard: a new pass when one ends."""
        while True:
            empty = True
            for batch in self._batches(shard, batch_size, collate):
                empty = False
                yield batch
            if empty:
                raise FacepgnError(f"a worker's data shard has fewer rows than one batch ({batch_size})")

    def epoch(self) -> Iterator[Batch]:
        """One epoch of the primary stream (labelled faces, else pairs); the other one cycles."""
        d = self.cfg.data
        if self.labelled is None:
            for pair in self._batches(self.pairs, d.pair_batch_size, self.pair_collate):
                yield Batch(pairs=pair.tensors, pair_ids=pair.ids)
            return
        pairs = self._cycle(self.pairs, d.pair_batch_size, self.pair_collate) if self.pairs is not None else None
        for lab in self._batches(self.labelled, d.labelled_batch_size, self.face_collate):
            pair = next(pairs) if pairs is not None else None
            yield Batch(lab.tensors, pair.tensors if pair else None, lab.ids, pair.ids if pair else [])

    def validation(self) -> Iterator[Any] | None:
        """This worker's validation batches (numpy), or None without validation data."""
        if self.validation_shard is None:
            return None
        batches = self.validation_shard.iter_batches(batch_size=self.cfg.validation.batch_size, batch_format="numpy", prefetch_batches=1)
        return (batch for index, batch in enumerate(batches) if index % self.world == self.rank)
