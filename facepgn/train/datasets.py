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
epoch continues with the batches an uninterrupted run would have seen. Larger inputs stream:
every pass each worker reads its own share of their files (:class:`StreamedFiles`) in a seeded
order, so they repeat too; a resumed run skips ``k`` batches as Arrow rows, undecoded.

Both yield ``{"faces": ..., "pairs": ...}`` mixed batches (``facepgn.train.data.mixed_batch``) or
:class:`Batch` objects, which also carry the ids of the rows in them.
"""

from __future__ import annotations

import collections
import itertools
import os
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
#: streamed inputs: rows are mixed twice, their files in a new random order every pass, then a
#: worker-side buffer of ``SHUFFLE_BUFFER_ROWS`` rows (records are written video by video: without
#: it a batch is 32 consecutive frames of one video). Materialised ones are permuted whole.
SHUFFLE_BUFFER_ROWS = 2048
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


def _where(files: Sequence[str]) -> str:
    return files[0] if len(files) == 1 else os.path.dirname(files[0]) or files[0]


def training_holdout(cfg: DistributedTrainConfig) -> tuple[float, bool | None]:
    """The hold-out a training stream of labelled faces applies: (fraction, side), side False (the
    subjects not held out) when validation is held out of ``data.labelled``, else None (no filter)."""
    holdout = cfg.validation.holdout_fraction if not cfg.validation.labelled else 0.0
    return holdout, (False if holdout > 0 else None)


def rows_pipeline(files: Sequence[str], cfg: DistributedTrainConfig, holdout: float = 0.0, holdout_side: bool | None = None):
    """The rows of ``files`` as a lazy Ray Dataset, in file order: ``read_parquet``, the schema
    upgrade and the hold-out filter (``holdout_side``: only the held-out subjects (True) or only
    the others (False)) as Ray Data operators."""
    read_cpus = cfg.scaling.read_cpus
    ds = _read_parquet(files, read_cpus).map_batches(row_ops.upgraded, batch_format="pyarrow", num_cpus=read_cpus)
    if holdout_side is not None:
        ds = ds.map_batches(row_ops.holdout_filter(holdout, holdout_side), batch_format="pyarrow", num_cpus=read_cpus)
    # the order kept: the same files give the same rows in the same order in every run (this
    # lineage's own context: read_parquet copies the current one)
    ds.context.execution_options.preserve_order = True
    ds.context.enable_progress_bars = cfg.ray.data_progress_bars
    return ds


def _dataset(files: list[str], size: int, holdout: float, holdout_side: bool | None, cfg: DistributedTrainConfig):
    """One input as a Ray Dataset (:func:`rows_pipeline`). Below ``ray.materialize_below_mb`` it
    is materialised into the object store (by Ray tasks: the driver holds block references, never
    rows), once for the whole run."""
    ds = rows_pipeline(files, cfg, holdout, holdout_side)
    if size >= cfg.ray.materialize_below_mb * 1e6:
        return ds
    try:
        return ds.materialize()
    except Exception as exc:  # noqa: BLE001 - a read task's error (RayTaskError and friends), reduced to one line
        raise InputError(_where(files), f"cannot read the Parquet rows ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    last = next((line for line in reversed(lines) if "Error" in line.split(":")[0]), lines[-1] if lines else "")
    return last[:200] or exc.__class__.__name__


def build_datasets(plan, validation: Any = None) -> dict[str, Any]:
    """The Ray Datasets of a ``facepgn.train.plan.TrainPlan``: the materialised training inputs
    (``labelled``, ``pairs``: below ``ray.materialize_below_mb``) and ``validation``, those present,
    read and filtered in the cluster (:func:`_dataset`). Each reaches every worker whole, which
    takes its seeded share of the rows every pass (:class:`RayBatches`). Larger training inputs are
    not Datasets here: every worker reads its own files of them (:func:`streamed_inputs`).
    ``validation``: the plan's validation dataset, already built."""
    import ray.data

    cfg = plan.config
    ray.data.DataContext.get_current().enable_progress_bars = cfg.ray.data_progress_bars
    out: dict[str, Any] = {}
    if plan.labelled_files and not plan.streamed(LABELLED):
        out[LABELLED] = _dataset(plan.labelled_files, plan.labelled_bytes, *training_holdout(cfg), cfg)
    if plan.pair_files and not plan.streamed(PAIRS):
        out[PAIRS] = _dataset(plan.pair_files, plan.pair_bytes, 0.0, None, cfg)
    if plan.validation_files:
        out[VALIDATION] = validation if validation is not None else validation_dataset(plan)
    return out


def validation_dataset(plan):
    """The validation faces of a plan with validation files: ``validation.labelled``, or the
    held-out subjects of the labelled faces; at most ``validation.max_records``."""
    cfg = plan.config
    holdout = cfg.validation.holdout_fraction if not cfg.validation.labelled else 0.0
    ds = _dataset(plan.validation_files, plan.validation_bytes, holdout, True if holdout > 0 else None, cfg)
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


def streamed_inputs(plan) -> dict[str, dict[str, list]]:
    """The training inputs that stream (at or above ``ray.materialize_below_mb``): their files and
    each file's rows (footers), for the workers (:class:`StreamedFiles`)."""
    out = {}
    for name, files, rows in ((LABELLED, plan.labelled_files, plan.labelled_file_rows), (PAIRS, plan.pair_files, plan.pair_file_rows)):
        if files and plan.streamed(name):
            out[name] = {"files": list(files), "rows": list(rows)}
    return out


# ---- Ray batches (on a worker) -------------------------------------------------------------


@dataclass
class Collated:
    """A batch decoded to tensors in a prefetch thread, with the ids of its rows."""

    tensors: dict[str, Any]
    ids: list[str]


def _ids(batch: Any, name: str) -> list[str]:
    values = train_data.column(batch, name) if batch is not None else None
    return [str(x) for x in values] if values is not None else []


class FaceCollate:
    """Labelled face rows -> tensors (JPEG decoding, augmentation), run in the background threads of
    :func:`prefetched`. A batch's augmentation is seeded from the stream's seed and the batch's ids
    (the threads may take batches in any order)."""

    def __init__(self, cfg: TrainConfig, face_model_name: str | None, seed: int):
        self.cfg, self.face_model_name, self.seed = cfg, face_model_name, seed

    def __call__(self, batch: Any) -> Collated:
        ids = _ids(batch, "record_id")
        generator = torch.Generator().manual_seed(stream_seed(self.seed, zlib.crc32(",".join(ids).encode("utf-8"))))
        m = self.cfg.model
        tensors = train_data.face_batch_to_tensors(
            batch, m.input_size, m.num_id, m.num_exp, self.face_model_name, augment=self.cfg.data.augment, generator=generator,
            geometric=train_data.augment_settings(self.cfg.data),
        )
        return Collated(tensors, ids)


class PairCollate:
    """Frame pair rows -> tensors, run in the background threads of :func:`prefetched`."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def __call__(self, batch: Any) -> Collated:
        return Collated(train_data.pair_batch_to_tensors(batch, self.cfg.model.input_size), _ids(batch, "pair_id"))


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


@dataclass
class StreamedFiles:
    """A training input too large to hold (at or above ``ray.materialize_below_mb``): its Parquet
    files and their rows. Every pass, each worker reads only its own share of the files
    (:meth:`share`), in an order seeded like the rest: the batches repeat run after run."""

    files: list[str]
    rows: list[int]

    def share(self, seed: int, rank: int, world: int) -> list[str]:
        """Worker ``rank``'s files for the pass of ``seed``: the files in a seeded order, each given
        to the worker with the fewest rows so far (the shares differ by at most a file's rows)."""
        import numpy as np

        loads, shares = [0] * world, [[] for _ in range(world)]  # type: ignore[var-annotated]
        for i in np.random.default_rng(seed).permutation(len(self.files)):
            lightest = loads.index(min(loads))
            shares[lightest].append(self.files[i])
            loads[lightest] += self.rows[i]
        return shares[rank]


class RayBatches:
    """A Ray Train worker's batch source: its share of the labelled faces and the frame pairs, and
    its share of the validation faces (every ``world``-th batch; the small set is not split).

    Every pass ``p`` of epoch ``e`` of a stream is seeded with ``stream_seed(seed, stream, e, p)``,
    so a run resumed at step ``k`` of an epoch continues with the batches an uninterrupted run
    trains on. Materialised inputs (every worker gets their block references) become
    :class:`WorkerRows` (batch ``k`` is found without reading the ones before). Streamed inputs
    (``streamed``: :func:`streamed_inputs`) are :class:`StreamedFiles`: each worker reads its files
    with Ray Data in seeded order, rows mixed by a seeded local buffer; a resumed run skips ``k``
    batches undecoded; the ranks stop an epoch together, at the step where the first share ends."""

    def __init__(self, cfg: DistributedTrainConfig, rank: int, world: int, face_model_name: str | None, has_validation: bool,
                 streamed: Mapping[str, Mapping[str, list]] | None = None):
        import ray.train

        self.cfg, self.rank, self.world, self.face_model_name = cfg, rank, world, face_model_name
        self.streamed = {name: StreamedFiles(list(v["files"]), [int(r) for r in v["rows"]]) for name, v in (streamed or {}).items()}
        d = cfg.data
        self.sources: dict[str, Any] = {}
        if d.labelled_batch_size > 0 and d.labelled:
            self.sources[LABELLED] = self._source(LABELLED)
        if d.pair_batch_size > 0 and d.pairs:
            self.sources[PAIRS] = self._source(PAIRS)
        self.validation_shard = ray.train.get_dataset_shard(VALIDATION) if has_validation else None
        self._ahead: Iterator[Batch] | None = None  # materialised inputs: the batches after the last epoch
        self._ahead_at: tuple[int, int] | None = None  # the (epoch, skip) they start at

    def _source(self, name: str):
        """A streamed input's files (:class:`StreamedFiles`), or a materialised one's rows
        (:class:`WorkerRows`)."""
        import pyarrow as pa
        import ray
        import ray.train

        if name in self.streamed:
            return self.streamed[name]
        shard = ray.train.get_dataset_shard(name)
        blocks = ray.get(shard.materialize().to_arrow_refs())  # the driver's blocks, in order: no rows re-read
        table = pa.concat_tables(blocks, promote_options="default") if blocks else pa.table({})
        rows = WorkerRows(table, self._batch_size(name), self.rank, self.world)
        if rows.steps == 0:
            raise FacepgnError(f"a worker's share of the {name} ({table.num_rows // self.world} rows) is smaller than one batch "
                               f"({self._batch_size(name)})")
        return rows

    def _collate(self, name: str, seed: int) -> Callable[[Any], Collated]:
        return FaceCollate(self.cfg, self.face_model_name, seed) if name == LABELLED else PairCollate(self.cfg)

    def _batch_size(self, name: str) -> int:
        return self.cfg.data.labelled_batch_size if name == LABELLED else self.cfg.data.pair_batch_size

    def _pass_seed(self, name: str, epoch: int, index: int) -> int:
        return stream_seed(self.cfg.seed, name, epoch, index)

    def _epoch_collate(self, name: str, epoch: int) -> Callable[[Any], Collated]:
        """The collate function of a stream's epoch (its augmentation seeded per epoch and rank)."""
        seed = self._pass_seed(name, epoch, 0)
        return self._collate(name, seed if self.world == 1 else stream_seed(seed, self.rank))

    @property
    def _primary(self) -> str:
        """The stream an epoch is a pass of: the labelled faces, else the pairs."""
        return LABELLED if LABELLED in self.sources else PAIRS

    def _streamed_pass(self, name: str, epoch: int, index: int) -> Iterator[Any]:
        """A streamed input's pass: this worker's files (:meth:`StreamedFiles.share`) read by Ray
        Data in their seeded order, rows mixed by a seeded local buffer, as Arrow batches (the same
        ones in every run)."""
        seed = self._pass_seed(name, epoch, index)
        files = self.sources[name].share(seed, self.rank, self.world)
        if not files:
            return iter(())
        holdout, side = training_holdout(self.cfg) if name == LABELLED else (0.0, None)
        return iter(rows_pipeline(files, self.cfg, holdout, side).iter_batches(
            batch_size=self._batch_size(name), batch_format="pyarrow", drop_last=True, prefetch_batches=PREFETCH_BATCHES,
            local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS, local_shuffle_seed=stream_seed(seed, self.rank)))

    def _row_jobs(self, name: str, epoch: int, skip: int, cycle: bool = False, count: int | None = None
                  ) -> Iterator[tuple[Callable, Any]]:
        """A materialised stream's ``(collate, rows)`` in an epoch from batch ``skip`` on: its pass,
        or (``cycle``) pass after pass, its first ``count`` batches (None: endless)."""
        rows: WorkerRows = self.sources[name]
        collate = self._epoch_collate(name, epoch)
        if not cycle:
            batches = rows.batches(self._pass_seed(name, epoch, 0), skip)
        else:
            first, start = divmod(skip, rows.steps)
            passes = (rows.batches(self._pass_seed(name, epoch, i), start if i == first else 0) for i in itertools.count(first))
            batches = itertools.islice(itertools.chain.from_iterable(passes), None if count is None else max(0, count - skip))
        return ((collate, b) for b in batches)

    def _mixed(self, main: Iterator[Collated], other: Iterator[Collated] | None) -> Iterator[Batch]:
        """The steps' batches: the primary stream's, each with the next batch of the other one."""
        pairs_only = self._primary == PAIRS
        for batch in main:
            if pairs_only:
                yield Batch(pairs=batch.tensors, pair_ids=batch.ids)
                continue
            pair = next(other) if other is not None else None
            yield Batch(batch.tensors, pair.tensors if pair else None, batch.ids, pair.ids if pair else [])

    def _materialised_epochs(self, epoch: int, skip: int) -> Iterator[Batch]:
        """Every batch from step ``skip`` of ``epoch`` on, epoch after epoch, decoded ahead across
        epoch ends (materialised streams only: an epoch is :attr:`WorkerRows.steps` batches)."""
        primary = self._primary
        steps = self.sources[primary].steps
        main = prefetched(itertools.chain.from_iterable(
            self._row_jobs(primary, e, skip if e == epoch else 0) for e in itertools.count(epoch)))
        other = prefetched(itertools.chain.from_iterable(
            self._row_jobs(PAIRS, e, skip if e == epoch else 0, cycle=True, count=steps) for e in itertools.count(epoch))
        ) if primary == LABELLED and PAIRS in self.sources else None
        return self._mixed(main, other)

    def _streamed_rows(self, name: str, epoch: int, skip: int, cycle: bool) -> Iterator[Any]:
        """A streamed input's row batches in an epoch: one pass, or (``cycle``) pass after pass;
        the first ``skip`` left out (read as Arrow, not decoded)."""
        for index in itertools.count() if cycle else (0,):
            seen = False
            for rows in self._streamed_pass(name, epoch, index):
                seen = True
                if skip:
                    skip -= 1
                    continue
                yield rows
            if not seen:
                raise FacepgnError(f"a worker's share of the {name} has fewer rows than one batch ({self._batch_size(name)})")

    def _streamed(self, name: str, epoch: int, skip: int, cycle: bool) -> Iterator[Collated]:
        collate = self._epoch_collate(name, epoch)
        return prefetched((collate, rows) for rows in self._streamed_rows(name, epoch, skip, cycle))

    def _together(self, batches: Iterator[Collated]) -> Iterator[Collated]:
        """``batches`` while every rank still has one: the ranks' streamed shares may differ by a
        few batches, and a DDP step needs every rank (one tiny all-reduce per step)."""
        import torch.distributed as dist

        if self.world == 1 or not dist.is_initialized():
            yield from batches
            return
        import ray.train.torch

        device = ray.train.torch.get_device()
        while True:
            batch = next(batches, None)
            flag = torch.tensor([0 if batch is None else 1], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            if batch is None or int(flag.item()) == 0:
                return
            yield batch

    def _streamed_epoch(self, epoch: int, skip: int) -> Iterator[Batch]:
        """One epoch when an input streams (materialised ones are passes of their :class:`WorkerRows`)."""
        def stream(name: str, cycle: bool) -> Iterator[Collated]:
            if name in self.streamed:
                return self._streamed(name, epoch, skip, cycle)
            return prefetched(self._row_jobs(name, epoch, skip, cycle=cycle))

        other = stream(PAIRS, True) if self._primary == LABELLED and PAIRS in self.sources else None
        return self._mixed(self._together(stream(self._primary, False)), other)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """One epoch: a pass of the primary stream (labelled faces, else pairs; the other one cycles,
        from its start every epoch), the first ``skip`` steps (trained before a resume) left out.
        With materialised inputs the next epoch's first batches are decoded while this one ends."""
        if set(self.streamed) & set(self.sources):
            yield from self._streamed_epoch(epoch, skip)
            return
        ahead, self._ahead = (self._ahead if self._ahead_at == (epoch, skip) else None), None
        ahead = ahead or self._materialised_epochs(epoch, skip)
        yield from itertools.islice(ahead, max(0, self.sources[self._primary].steps - skip))
        self._ahead, self._ahead_at = ahead, (epoch + 1, 0)

    def validation(self) -> Iterator[Any] | None:
        """This worker's validation batches (numpy), or None without validation data."""
        if self.validation_shard is None:
            return None
        batches = self.validation_shard.iter_batches(batch_size=self.cfg.validation.batch_size, batch_format="numpy", prefetch_batches=1)
        return (batch for index, batch in enumerate(batches) if index % self.world == self.rank)
