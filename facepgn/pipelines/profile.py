"""Face records -> profiled views (new head poses, exact 3D landmarks) as face records, on Ray Data.

Graph: the input shards not done yet (``from_items``, one block per shard) stream through
``map_batches`` on an actor pool (``ActorPoolStrategy``, fractional CPUs, sized from the cluster's
CPUs; :func:`facepgn.pipelines.common.run_items`). Each actor loads the face model once (and
keeps its truncations per coefficient count and landmark definition) and, per shard, runs
:func:`facepgn.profiling.profile_record` on each record: ``views`` new views of the face, their
poses drawn from a generator seeded by ``(seed, record_id)``, so a rerun writes the same views.
The views of one input shard become one output shard, written by the actor.

Input: face-record Parquet (FACE_RECORD_SCHEMA v1 or v2) with coefficients and pose, e.g. a
``facepgn label`` output: a folder (searched recursively for ``*.parquet``), a file, a glob, an
``s3://`` prefix, or a .csv/.jsonl manifest of shard paths.

Output layout: as ``facepgn label``'s (:mod:`facepgn.pipelines.common`): ``data/part-<item_id>.parquet``
(``<item_id>``: the input shard's path below the input, ``/`` as ``__``), ``items/<item_id>.json``
done markers, summary.json (records in, views written, records skipped by reason, |yaw| histogram
of the views, views per second per core), errors.csv, contact_sheet.png. The folder can be given to
training as ``data.labelled``.
"""

from __future__ import annotations

import functools
import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facepgn import paths, records, storage
from facepgn.config import ProfileConfig
from facepgn.errors import FacepgnError, InputError
from facepgn.pipelines import common

log = logging.getLogger("facepgn.profile")

STAGES = ("read", "profile", "write")
ROWS_PER_BATCH = 64  # input records decoded from Arrow at a time


def record_seed(seed: int, record_id: str) -> int:
    """The seed of a record's view poses: the same on every rerun and machine."""
    return common.stable_seed(seed, record_id)


@dataclass
class ProfileResult(common.ItemResult):
    """An input shard's done marker: records read, views written, records skipped by reason."""

    records_in: int = 0
    views: int = 0
    skipped_records: dict[str, int] = field(default_factory=dict)  # profiling.SKIP_REASONS -> records
    yaw_histogram: list[int] = field(default_factory=lambda: [0] * 9)  # views, 10-degree bins of |yaw|
    profiler_s: dict[str, float] = field(default_factory=dict)  # ProfileOutcome.timings summed


class ShardProfiler:
    """Turns one face-record shard into a shard of profiled views and a done marker. Plain Python:
    Ray actors and the local loop use it; the face model loads once per instance."""

    def __init__(self, config_json: str, output: str):
        import cv2
        import torch

        from facepgn.facemodel import load_face_model

        self.cfg = ProfileConfig.model_validate_json(config_json)
        self.output = output
        cv2.setNumThreads(max(0, int(self.cfg.cv2_threads)))
        if self.cfg.torch_threads > 0:
            torch.set_num_threads(self.cfg.torch_threads)
        self.base = load_face_model(self.cfg.face_model)
        self._models: dict[tuple, Any] = {}

    def face_model(self, record: dict):
        """The face model the record's coefficients belong to: the base model truncated to their
        counts, with the record's landmark definition (the base model when it has no coefficients,
        for profiling's skip check). Raises ValueError for a definition the model lacks."""
        ids, exps = record.get("id_coeffs"), record.get("exp_coeffs")
        if ids is None or exps is None:
            return self.base
        key = (len(ids), len(exps), record.get("landmark_definition"))
        if key not in self._models:
            model = self.base.truncated(key[0], key[1])
            self._models[key] = model.with_landmarks(key[2]) if key[2] else model
        return self._models[key]

    def __call__(self, item: dict) -> dict:
        result = ProfileResult(item["item_id"], item["path"])
        return common.process_item(self.output, result, lambda clock: self._process(item, result, clock), log)

    def _process(self, item: dict, result: ProfileResult, clock: common.StageClock) -> list[dict]:
        import pyarrow.parquet as pq

        from facepgn.profiling import profile_record

        cfg = self.cfg
        with clock("read"):
            try:
                table = pq.read_table(io.BytesIO(storage.read_bytes(item["path"])))
            except FileNotFoundError:
                raise InputError(item["path"], "file not found") from None
            except Exception as exc:  # noqa: BLE001 - pyarrow's errors for a corrupt or non-Parquet file vary
                raise InputError(item["path"], f"not a readable Parquet file ({exc.__class__.__name__})") from None
            records.check_table(table, "face_record", item["path"])
            table = records.upgrade_table(table, "face_record")
        rows: list[dict] = []
        yaws: list[float | None] = []
        for batch in table.to_batches(max_chunksize=ROWS_PER_BATCH):
            for record in batch.to_pylist():
                result.records_in += 1
                with clock("profile"):
                    try:
                        model = self.face_model(record)
                    except ValueError:  # a landmark definition or coefficient count this model lacks
                        outcome = None
                    else:
                        rng = np.random.default_rng(record_seed(cfg.seed, record["record_id"]))
                        outcome = profile_record(
                            record, model, cfg.views, rng, background=None, yaw_max_deg=cfg.yaw_max_deg,
                            pitch_max_deg=cfg.pitch_max_deg, roll_max_deg=cfg.roll_max_deg,
                            max_source_yaw_deg=cfg.max_source_yaw_deg, large_yaw_share=cfg.large_yaw_share,
                            image_format=cfg.image_format)
                reason = "face_model_mismatch" if outcome is None else outcome.reason
                if reason is not None:
                    result.skipped_records[reason] = result.skipped_records.get(reason, 0) + 1
                    continue
                common.add_counts(result.profiler_s, outcome.timings)
                rows.extend(outcome.rows)
                yaws.extend(common.record_yaw_deg(row) for row in outcome.rows)
        result.views = len(rows)
        result.yaw_histogram = common.yaw_histogram(y for y in yaws if y is not None)
        result.profiler_s = {k: round(v, 4) for k, v in result.profiler_s.items()}
        return rows


# ---- the job -------------------------------------------------------------------------------------


def resolve_config(cfg: ProfileConfig) -> ProfileConfig:
    """The face model's concrete path; one-line errors for missing settings before any work."""
    if not cfg.input:
        raise FacepgnError("profile: no input given (--input or input: in the config)")
    if not cfg.output:
        raise FacepgnError("profile: no output given (--output or output: in the config)")
    if cfg.views < 1:
        raise FacepgnError(f"profile: views must be >= 1, got {cfg.views}")
    cfg = cfg.model_copy(deep=True)
    cfg.output = cfg.output.rstrip("/")
    cfg.face_model = str(paths.resolve_asset("face_model", cfg.face_model))
    return cfg


def list_shards(cfg: ProfileConfig) -> list[dict]:
    """The input face-record shards as items (item_id from the path below the input, path), sorted."""
    from facepgn.video import list_videos

    return [{"item_id": it.video_id, "path": it.path} for it in list_videos(cfg.input, (".parquet",))]


def run_profile(cfg: ProfileConfig, progress: bool = True) -> dict[str, Any]:
    """Run the whole job; returns the summary (also written to ``<output>/summary.json``).

    Raises a one-line :class:`FacepgnError` when there is no input shard, or when not a single one
    could be read (summary.json and errors.csv are written first)."""
    started = time.perf_counter()
    cfg = resolve_config(cfg)
    items = list_shards(cfg)
    if not items:
        raise InputError(cfg.input, "no face-record shards (*.parquet) found")
    run = common.run_item_job(
        cfg, items, functools.partial(ShardProfiler, cfg.model_dump_json(), cfg.output),
        lost=lambda it: ProfileResult(it["item_id"], it["path"]),
        note=lambda r: f"{r['views']} views of {r['records_in']} records" + (
            f" ({', '.join(f'{k} {v}' for k, v in r['skipped_records'].items())} skipped)" if r["skipped_records"] else ""),
        log=log, progress=progress, started=started,
    )
    counts, errors, extra = _summary(cfg, run)
    return common.finish_item_job(cfg, run, "profile", counts, errors, extra, "face-record shards", "torch")


def _summary(cfg: ProfileConfig, run: common.ItemRun) -> tuple[dict[str, int], list[dict], dict[str, Any]]:
    counts, errors, extra = common.item_summary(cfg, run)
    t = common.totals(run.done, run.results, "skipped_records", "profiler_s")
    views_run = sum(r["views"] for r in run.results)
    counts.update({
        "records_in": int(sum(m["records_in"] for m in t.read)),
        "views_written": int(sum(m["views"] for m in t.read)),
        "views_written_this_run": int(views_run),
    })
    extra.update({
        "records_skipped": t.reasons,  # by profiling.SKIP_REASONS
        "yaw_histogram_deg": common.yaw_histogram_labels(t.yaw_histogram),  # views written, |yaw| of their pose
        "throughput": {
            "unit": "views (written, this run) per CPU second of each stage (per core); profile.*: per second of profiling's own stage timings",
            "views": views_run,
            "stages": common.stage_throughput(views_run, t.wall_s, t.cpu_s, STAGES, t.inner_s, "profile"),
            "views_per_s": round(views_run / run.run_seconds, 2) if run.run_seconds > 0 and views_run else None,  # wall, all actors
        },
    })
    return counts, errors, extra
