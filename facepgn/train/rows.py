"""Row operations Ray Data runs on the training inputs in the cluster (``facepgn.train.datasets``):
the schema upgrade and the subject hold-out. Kept free of torch, so that a Ray Data task imports
little more than pyarrow."""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa


def in_holdout(subject_id: str, fraction: float) -> bool:
    """Whether a subject belongs to the held-out validation share (stable across runs and machines)."""
    return (zlib.crc32(str(subject_id).encode("utf-8")) % 10_000) < fraction * 10_000


def holdout_mask(table: pa.Table, fraction: float, keep_holdout: bool) -> pa.Array:
    mask = [in_holdout(s, fraction) == keep_holdout for s in table.column("subject_id").to_pylist()]
    return pa.array(np.asarray(mask, dtype=bool))


def holdout_filter(fraction: float, keep_holdout: bool):
    """A ``map_batches`` function keeping only the held-out subjects (``keep_holdout``) or the others."""
    def keep(batch: pa.Table) -> pa.Table:
        return batch.filter(holdout_mask(batch, fraction, keep_holdout))

    return keep


def upgraded(table: pa.Table) -> pa.Table:
    """Face-record tables of older schema versions get the current columns (null), so they mix."""
    from facepgn import records

    if "record_id" in table.column_names:
        return records.upgrade_table(table, "face_record")
    return table
