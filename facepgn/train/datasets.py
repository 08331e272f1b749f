"""Batch sources: what the training loop body (``facepgn.train.epoch``) steps over.

* local (the plain loop): :func:`plain_batches`, endless shuffled batches from Parquet read into
  memory (``facepgn.train.data.random_indices``: reshuffled every pass, no row dropped);
* Ray (every Ray Train worker): :func:`build_datasets` on the driver gives the Ray Datasets
  (``labelled``, ``pairs``, ``validation``), every row read, upgraded and filtered by Ray tasks
  (the driver lists files and reads footers only: ``facepgn.train.plan``); on a worker
  :class:`RayBatches` takes its share of them, decoding to tensors in background threads while
  the previous step computes. An epoch is a pass over the labelled share (over the pairs when
  there are no labelled faces); the other stream cycles.

Inputs below ``ray.materialize_below_mb`` are read once into the object store; every worker holds
their rows (:class:`WorkerRows`, zero-copy) and every pass is a permutation seeded from the run's
seed and the stream's coordinates (:func:`stream_seed`), so a run resumed at step ``k`` of an
epoch continues with the batches an uninterrupted run would have seen. Larger inputs stream,
split between the workers by Ray Train; a resumed run skips ``k`` batches by count, undecoded
(:class:`Skip`).

Both yield ``{"faces": ..., "pairs": ...}`` mixed batches (``facepgn.train.data.mixed_batch``) or
:class:`Batch` objects, which also carry the ids of the rows in them.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from facepgn import storage
from facepgn.config import DistributedTrainConfig, TrainConfig
from facepgn.errors import ConfigError, FacepgnError, InputError
from facepgn.train import data as train_data
from facepgn.train import rows as row_ops

LABELLED, PAIRS, VALIDATION = "labelled", "pairs", "validation"
#: Ray path: training rows are mixed twice, as the plain loop's reshuffle does: blocks of at most
#: ``SHUFFLE_BLOCK_ROWS`` rows in a new random order every epoch, then a worker-side buffer of
#: ``SHUFFLE_BUFFER_ROWS`` rows (records are written video by video: without this a batch is 32
#: consecutive frames of one video)
SHUFFLE_BLOCK_ROWS = 256
SHUFFLE_BUFFER_ROWS = 1024
PREFETCH_BATCHES = 4  # batches decoded ahead of the training step, per stream
DECODE_THREADS = 2  # threads decoding a materialised stream's batches on a worker


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


# ---- seeds and skips: what makes a resumed run see the batches an uninterrupted one would ----


def stream_seed(*parts: int | str) -> int:
    """A 32-bit seed from a run's seed and a stream's coordinates (name, epoch, pass, ...): every
    shuffle and augmentation stream is a function of these alone, so a resumed run redraws them."""
    import numpy as np

    words = [zlib.crc32(p.encode("utf-8")) if isinstance(p, str) else int(p) % 2**32 for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


class Skip:
    """The first ``count`` batches of a streamed input a resumed run already trained on (its order
    does not repeat: they are skipped by count). A skipped batch is not decoded: the collate
    function returns it empty."""

    def __init__(self, count: int = 0):
        self.count, self.lock = count, threading.Lock()

    def take(self, ids: Sequence[str]) -> bool:
        """Whether this batch is skipped (counted once)."""
        with self.lock:
            if self.count > 0:
                self.count -= 1
                return True
        return False


# ---- local: Parquet in memory --------------------------------------------------------------


def plain_batches(cfg: TrainConfig, face_model_name: str | None = None, seed: int = 0, skip: int = 0) -> Iterator[Batch]:
    """Endless mixed batches (labelled faces and/or frame pairs) from ``cfg.data`` (CPU tensors),
    with the ids of their rows. Batch ``i`` is a function of ``seed`` and ``i``: ``skip`` leaves
    out the first ``skip`` batches by drawing their row indices only (no row read, nothing decoded)."""
    d, m = cfg.data, cfg.model
    labelled = train_data.read_records(d.labelled, "face_record") if d.labelled and d.labelled_batch_size > 0 else None
    if labelled is not None and "landmark_definition" in labelled.column_names:
        train_data.check_landmark_definitions(labelled.column("landmark_definition").unique().to_pylist(),
                                              train_data.model_landmark_definition(cfg.model), str(d.labelled[0]))
    pairs = train_data.read_records(d.pairs, "frame_pair") if d.pairs and d.pair_batch_size > 0 else None
    if labelled is None and pairs is None:
        raise FacepgnError("training data: set data.labelled and/or data.pairs")
    lab_idx = train_data.random_indices(labelled.num_rows, d.labelled_batch_size, seed) if labelled is not None else None
    pair_idx = train_data.random_indices(pairs.num_rows, d.pair_batch_size, seed + 1) if pairs is not None else None
    for _ in range(skip):
        _ = next(lab_idx) if lab_idx is not None else None
        _ = next(pair_idx) if pair_idx is not None else None
    index = skip
    while True:
        batch = Batch()
        if lab_idx is not None and labelled is not None:
            rows = labelled.take(next(lab_idx))
            generator = torch.Generator().manual_seed(stream_seed(seed, LABELLED, index))  # per batch: resumable
            batch.faces = train_data.face_batch_to_tensors(rows, m.input_size, m.num_id, m.num_exp, face_model_name, d.augment, generator,
                                                           geometric=train_data.augment_settings(d))
            batch.record_ids = [str(x) for x in rows.column("record_id").to_pylist()] if "record_id" in rows.column_names else []
        if pair_idx is not None and pairs is not None:
            rows = pairs.take(next(pair_idx))
            batch.pairs = train_data.pair_batch_to_tensors(rows, m.input_size)
            batch.pair_ids = [str(x) for x in rows.column("pair_id").to_pylist()] if "pair_id" in rows.column_names else []
        index += 1
        yield batch


def mixed_batches(cfg: TrainConfig, face_model_name: str | None = None, seed: int = 0) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
    """:func:`plain_batches` as ``mixed_batch`` dicts."""
    return (batch.tensors() for batch in plain_batches(cfg, face_model_name, seed))


# ---- Ray Datasets (on the driver; every row read and filtered by Ray tasks) -----------------


def _read_parquet(files: Sequence[str], read_cpus: float):
    """``read_parquet`` over the files (local and s3:// ones in two reads, unioned)."""
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


def block_rows(rows: int, world: int) -> int:
    """Rows per block of a training stream: at most ``SHUFFLE_BLOCK_ROWS``, and small enough that
    every worker's share of a small input is several blocks (workers get whole blocks)."""
    return max(1, min(SHUFFLE_BLOCK_ROWS, rows // max(8 * world, 1)))


def _where(files: Sequence[str]) -> str:
    return files[0] if len(files) == 1 else os.path.dirname(files[0]) or files[0]


def _dataset(files: list[str], rows: int, size: int, holdout: float, holdout_side: bool | None, cfg: DistributedTrainConfig,
             training: bool):
    """One input as a Ray Dataset: ``read_parquet``, the schema upgrade and the hold-out filter
    (``holdout_side``: only the held-out subjects (True) or only the others (False)) as Ray Data
    operators. Below ``ray.materialize_below_mb`` it is materialised into the object store (by Ray
    tasks: the driver holds block references, never rows), once for the whole run; larger training
    streams are cut into blocks of :func:`block_rows` rows in a new random order every epoch, for Ray
    Train to split between the workers."""
    read_cpus = cfg.scaling.read_cpus
    ds = _read_parquet(files, read_cpus).map_batches(row_ops.upgraded, batch_format="pyarrow", num_cpus=read_cpus)
    if holdout_side is not None:
        ds = ds.map_batches(row_ops.holdout_filter(holdout, holdout_side), batch_format="pyarrow", num_cpus=read_cpus)
    if size >= cfg.ray.materialize_below_mb * 1e6:
        if not training:
            return ds
        ds = ds.repartition(target_num_rows_per_block=block_rows(rows, cfg.scaling.num_workers), strict=True)
        return ds.randomize_block_order()  # streamed: Ray Train splits it
    # the order kept: the same files give the same blocks in every run (this lineage's own context:
    # read_parquet copies the current one)
    ds.context.execution_options.preserve_order = True
    try:
        return ds.materialize()
    except Exception as exc:  # noqa: BLE001 - a read task's error (RayTaskError and friends), reduced to one line
        raise InputError(_where(files), f"cannot read the Parquet rows ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    last = next((line for line in reversed(lines) if "Error" in line.split(":")[0]), lines[-1] if lines else "")
    return last[:200] or exc.__class__.__name__


def is_materialized(ds: Any) -> bool:
    from ray.data.dataset import MaterializedDataset

    return isinstance(ds, MaterializedDataset)


def build_datasets(plan, validation: Any = None) -> dict[str, Any]:
    """The Ray Datasets of a ``facepgn.train.plan.TrainPlan``: ``labelled``, ``pairs``,
    ``validation`` (those present), read and filtered in the cluster (:func:`_dataset`).

    Materialised training streams are handed to every worker whole; each worker orders and shares
    out their blocks per epoch from the run's seed (:class:`RayBatches`). Streamed ones (above
    ``ray.materialize_below_mb``) get a new random block order every epoch and are split between
    the workers by Ray Train. ``validation``: the plan's validation dataset, already built."""
    import ray.data

    cfg = plan.config
    ray.data.DataContext.get_current().enable_progress_bars = cfg.ray.data_progress_bars
    holdout = cfg.validation.holdout_fraction if not cfg.validation.labelled else 0.0
    out: dict[str, Any] = {}
    if plan.labelled_files:
        out[LABELLED] = _dataset(plan.labelled_files, plan.labelled_rows, plan.labelled_bytes, holdout, False if holdout > 0 else None, cfg,
                                 training=True)
    if plan.pair_files:
        out[PAIRS] = _dataset(plan.pair_files, plan.pair_rows, plan.pair_bytes, holdout, None, cfg, training=True)
    if plan.validation_files:
        out[VALIDATION] = validation if validation is not None else validation_dataset(plan)
    return out


def validation_dataset(plan):
    """The validation faces of a plan with validation files: ``validation.labelled``, or the
    held-out subjects of the labelled faces; at most ``validation.max_records``."""
    cfg = plan.config
    holdout = cfg.validation.holdout_fraction if not cfg.validation.labelled else 0.0
    ds = _dataset(plan.validation_files, plan.validation_rows, plan.validation_bytes, holdout, True if holdout > 0 else None, cfg,
                  training=False)
    return ds.limit(cfg.validation.max_records)


def check_validation_faces(plan, validation) -> None:
    """A one-line error when the validation dataset holds no face (counted in the cluster)."""
    if validation.limit(1).count() > 0:
        return
    v = plan.config.validation
    if v.labelled:
        raise InputError(_where(plan.validation_files), "validation.labelled holds no faces")
    raise ConfigError(f"config: validation.holdout_fraction={v.holdout_fraction:g} holds out no face: no subject of data.labelled "
                      "falls in that share (raise it, or set validation.labelled)")


def streamed_names(datasets: Mapping[str, Any]) -> list[str]:
    """The training streams Ray Train splits between the workers (the ones not materialised)."""
    return [n for n in (LABELLED, PAIRS) if n in datasets and not is_materialized(datasets[n])]


# ---- Ray batches (on a worker) -------------------------------------------------------------


@dataclass
class Collated:
    """A batch decoded to tensors in Ray Data's prefetch threads, with the ids it holds (tensors
    None: a batch a resumed run skips, not decoded)."""

    tensors: dict[str, Any] | None
    ids: list[str]


def _ids(batch: Any, name: str) -> list[str]:
    values = train_data.column(batch, name) if batch is not None else None
    return [str(x) for x in values] if values is not None else []


def collate_classes():
    """Collate functions (for :func:`prefetched` and ``iter_torch_batches``): JPEG decoding and
    tensor conversion run in background threads, overlapping the training step, not in the step's
    critical path.
    A batch's augmentation is seeded from the stream's seed and the batch's ids (the threads may
    take batches in any order); batches ``skip`` takes come back undecoded."""
    from ray.data.collate_fn import NumpyBatchCollateFn

    class FaceCollate(NumpyBatchCollateFn):
        def __init__(self, cfg: TrainConfig, face_model_name: str | None, seed: int, skip: Skip | None = None):
            self.cfg, self.face_model_name, self.seed, self.skip = cfg, face_model_name, seed, skip

        def __call__(self, batch):
            ids = _ids(batch, "record_id")
            if self.skip is not None and self.skip.take(ids):
                return Collated(None, ids)
            generator = torch.Generator().manual_seed(stream_seed(self.seed, zlib.crc32(",".join(ids).encode("utf-8"))))
            m = self.cfg.model
            tensors = train_data.face_batch_to_tensors(
                batch, m.input_size, m.num_id, m.num_exp, self.face_model_name, augment=self.cfg.data.augment, generator=generator,
                geometric=train_data.augment_settings(self.cfg.data),
            )
            return Collated(tensors, ids)

    class PairCollate(NumpyBatchCollateFn):
        def __init__(self, cfg: TrainConfig, skip: Skip | None = None):
            self.cfg, self.skip = cfg, skip

        def __call__(self, batch):
            ids = _ids(batch, "pair_id")
            if self.skip is not None and self.skip.take(ids):
                return Collated(None, ids)
            return Collated(train_data.pair_batch_to_tensors(batch, self.cfg.model.input_size), ids)

    return FaceCollate, PairCollate


class WorkerRows:
    """A materialised training stream on one worker: all its rows in one Arrow table (read once
    from the object store), and the seeded order its passes take them in.

    Pass ``seed`` permutes every row (the plain loop's reshuffle: every row once, any two rows may
    share a batch); worker ``rank`` takes the ``rank``-th of ``world`` equal slices, so the shares
    are disjoint and every worker has :attr:`steps` batches (the ranks step together). Batch ``i``
    is a function of the seed and ``i`` alone: a resumed run starts at batch ``k``, nothing read
    for the ``k`` before, and there is no Ray Data execution to start per pass."""

    def __init__(self, table: Any, batch_size: int, rank: int, world: int):
        self.table, self.batch_size, self.rank, self.world = table, batch_size, rank, world

    @property
    def steps(self) -> int:
        return (self.table.num_rows // self.world) // self.batch_size

    def batches(self, seed: int, start: int = 0) -> Iterator[Any]:
        """The pass's row batches (Arrow tables) from batch ``start`` on."""
        import numpy as np

        per_worker = self.table.num_rows // self.world
        order = np.random.default_rng(seed).permutation(self.table.num_rows)[self.rank * per_worker:(self.rank + 1) * per_worker]
        for i in range(start, self.steps):
            yield self.table.take(order[i * self.batch_size:(i + 1) * self.batch_size])


def prefetched(jobs: Iterator[tuple[Callable[[Any], Collated], Any]], depth: int = PREFETCH_BATCHES) -> Iterator[Collated]:
    """``collate(rows)`` for each ``(collate, rows)`` of ``jobs`` in background threads, up to
    ``depth`` batches ahead of the consumer, in order: JPEG decoding overlaps the training step
    (OpenCV releases the GIL)."""
    with ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="facepgn-collate") as pool:
        pending: collections.deque = collections.deque()
        for collate, rows in jobs:
            pending.append(pool.submit(collate, rows))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class RayBatches:
    """A Ray Train worker's batch source: its share of the labelled faces and the frame pairs, and
    its share of the validation faces (every ``world``-th batch; the small set is not split).

    Materialised streams (every worker gets their block references) become :class:`WorkerRows`:
    pass ``p`` of epoch ``e`` is seeded with ``stream_seed(seed, stream, e, p)``, so a run resumed
    at step ``k`` of an epoch continues with the batches an uninterrupted run trains on. Streamed
    inputs (``streamed``: split by Ray Train, their order does not repeat) skip the first ``k``
    batches by count, undecoded."""

    def __init__(self, cfg: DistributedTrainConfig, rank: int, world: int, face_model_name: str | None, has_validation: bool,
                 streamed: Sequence[str] = ()):
        import ray.train

        self.cfg, self.rank, self.world, self.face_model_name, self.streamed = cfg, rank, world, face_model_name, set(streamed)
        d = cfg.data
        self.sources: dict[str, Any] = {}
        if d.labelled_batch_size > 0 and d.labelled:
            self.sources[LABELLED] = self._source(LABELLED)
        if d.pair_batch_size > 0 and d.pairs:
            self.sources[PAIRS] = self._source(PAIRS)
        self.validation_shard = ray.train.get_dataset_shard(VALIDATION) if has_validation else None
        self.FaceCollate, self.PairCollate = collate_classes()
        self._ahead: Iterator[Batch] | None = None  # materialised inputs: the batches after the last epoch
        self._ahead_at: tuple[int, int] | None = None  # the (epoch, skip) they start at

    def _source(self, name: str):
        """A streamed input's Ray Train shard, or a materialised one's rows (:class:`WorkerRows`)."""
        import pyarrow as pa
        import ray
        import ray.train

        shard = ray.train.get_dataset_shard(name)
        if name in self.streamed:
            return shard
        blocks = ray.get(shard.materialize().to_arrow_refs())  # the driver's blocks, in order: no rows re-read
        table = pa.concat_tables(blocks, promote_options="default") if blocks else pa.table({})
        rows = WorkerRows(table, self._batch_size(name), self.rank, self.world)
        if rows.steps == 0:
            raise FacepgnError(f"a worker's share of the {name} ({table.num_rows // self.world} rows) is smaller than one batch "
                               f"({self._batch_size(name)})")
        return rows

    def _collate(self, name: str, seed: int, skip: Skip | None):
        if name == LABELLED:
            return self.FaceCollate(self.cfg, self.face_model_name, seed, skip)
        return self.PairCollate(self.cfg, skip)

    def _batch_size(self, name: str) -> int:
        return self.cfg.data.labelled_batch_size if name == LABELLED else self.cfg.data.pair_batch_size

    def _pass_seed(self, name: str, epoch: int, index: int) -> int:
        return stream_seed(self.cfg.seed, name, epoch, index)

    def _streamed_pass(self, name: str, epoch: int, index: int, skip: Skip | None) -> Iterator[Collated]:
        shuffle_seed = stream_seed(self.cfg.seed, name, epoch, index, self.rank)
        return iter(self.sources[name].iter_torch_batches(
            batch_size=self._batch_size(name), collate_fn=self._collate(name, shuffle_seed, skip), drop_last=True,
            prefetch_batches=PREFETCH_BATCHES, local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS, local_shuffle_seed=shuffle_seed))

    def _row_jobs(self, name: str, epoch: int, skip: int, count: int | None = None) -> Iterator[tuple[Callable, Any]]:
        """A materialised stream's ``(collate, rows)`` in an epoch from batch ``skip`` on: its pass
        (``count`` None), or its first ``count`` batches, pass after pass (the cycled stream)."""
        rows: WorkerRows = self.sources[name]
        seed = self._pass_seed(name, epoch, 0)
        collate = self._collate(name, seed if self.world == 1 else stream_seed(seed, self.rank), None)
        if count is None:
            batches = rows.batches(seed, skip)
        else:
            first, start = divmod(skip, rows.steps)
            passes = (rows.batches(self._pass_seed(name, epoch, i), start if i == first else 0) for i in itertools.count(first))
            batches = itertools.islice(itertools.chain.from_iterable(passes), max(0, count - skip))
        return ((collate, b) for b in batches)

    def _materialised_epochs(self, epoch: int, skip: int) -> Iterator[Batch]:
        """Every batch from step ``skip`` of ``epoch`` on, epoch after epoch, decoded ahead across
        epoch ends (materialised streams only: an epoch is :attr:`WorkerRows.steps` batches)."""
        primary = LABELLED if LABELLED in self.sources else PAIRS
        steps = self.sources[primary].steps
        main = prefetched(itertools.chain.from_iterable(
            self._row_jobs(primary, e, skip if e == epoch else 0) for e in itertools.count(epoch)))
        if primary == PAIRS:
            yield from (Batch(pairs=b.tensors, pair_ids=b.ids) for b in main)
            return
        other = prefetched(itertools.chain.from_iterable(
            self._row_jobs(PAIRS, e, skip if e == epoch else 0, steps) for e in itertools.count(epoch))) if PAIRS in self.sources else None
        for batch in main:
            pair = next(other) if other is not None else None
            yield Batch(batch.tensors, pair.tensors if pair else None, batch.ids, pair.ids if pair else [])

    def _streamed(self, name: str, epoch: int, skip: int, cycle: bool) -> Iterator[Collated]:
        """A streamed input's decoded batches in an epoch: one pass, or (``cycle``) pass after
        pass; the first ``skip`` left out undecoded."""
        skipper = Skip(count=skip) if skip else None
        for index in itertools.count() if cycle else (0,):
            seen = False
            for batch in self._streamed_pass(name, epoch, index, skipper):
                seen = True
                if batch.tensors is not None:
                    yield batch
            if not seen:
                raise FacepgnError(f"a worker's data shard has fewer rows than one batch ({self._batch_size(name)})")

    def _streamed_epoch(self, epoch: int, skip: int) -> Iterator[Batch]:
        """One epoch when an input streams (materialised ones are passes of their :class:`WorkerRows`)."""
        primary = LABELLED if LABELLED in self.sources else PAIRS

        def stream(name: str, cycle: bool) -> Iterator[Collated]:
            if name in self.streamed:
                return self._streamed(name, epoch, skip, cycle)
            return prefetched(self._row_jobs(name, epoch, skip, None if not cycle else 2**62))

        other = stream(PAIRS, True) if primary == LABELLED and PAIRS in self.sources else None
        for batch in stream(primary, False):
            pair = next(other) if other is not None else None
            if primary == PAIRS:
                yield Batch(pairs=batch.tensors, pair_ids=batch.ids)
            else:
                yield Batch(batch.tensors, pair.tensors if pair else None, batch.ids, pair.ids if pair else [])

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """One epoch: a pass of the primary stream (labelled faces, else pairs; the other one cycles,
        from its start every epoch), the first ``skip`` steps (trained before a resume) left out.
        With materialised inputs the next epoch's first batches are decoded while this one ends."""
        if self.streamed & set(self.sources):
            yield from self._streamed_epoch(epoch, skip)
            return
        ahead, self._ahead = (self._ahead if self._ahead_at == (epoch, skip) else None), None
        ahead = ahead or self._materialised_epochs(epoch, skip)
        primary = LABELLED if LABELLED in self.sources else PAIRS
        yield from itertools.islice(ahead, max(0, self.sources[primary].steps - skip))
        self._ahead, self._ahead_at = ahead, (epoch + 1, 0)

    def validation(self) -> Iterator[Any] | None:
        """This worker's validation batches (numpy), or None without validation data."""
        if self.validation_shard is None:
            return None
        batches = self.validation_shard.iter_batches(batch_size=self.cfg.validation.batch_size, batch_format="numpy", prefetch_batches=1)
        return (batch for index, batch in enumerate(batches) if index % self.world == self.rank)
