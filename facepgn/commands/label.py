"""``facepgn label``: real videos and photos (folder, glob, s3:// prefix or manifest) -> pseudo-labelled face records."""

from __future__ import annotations

import argparse

from facepgn.cli import Command
from facepgn.commands.jobargs import add_io_args


def run(args: argparse.Namespace) -> int:
    """Detect faces in videos (sampled frames) and photos, label each with the face model fitted to
    teacher networks (facepgn.pseudolabel), and write face records (FACE_RECORD_SCHEMA v2), one
    Parquet shard per input under data/, plus summary.json, errors.csv and contact_sheet.png. Reruns
    skip items already done. The output folder can be given to training as data.labelled."""
    from facepgn.commands.jobargs import load_job_config
    from facepgn.config import LabelConfig
    from facepgn.pipelines.label import run_label

    cfg = load_job_config(LabelConfig, args)
    s = run_label(cfg)
    print(
        f"facepgn label: {s['items_read']} items read, {s['items_skipped_count']} skipped, {s['faces_kept']} faces kept, "
        f"{sum(s['faces_rejected'].values())} rejected ({', '.join(f'{k} {v}' for k, v in s['faces_rejected'].items()) or 'none'}) -> {cfg.output}"
        + (f" (skipped items and why: {cfg.output}/errors.csv)" if s["items_skipped_count"] else "")
    )
    return 0


register = Command(
    "label", handler=run, config=False, description=run.__doc__,
    arguments=lambda parser: add_io_args(parser, "videos and photos: folder, glob, s3:// prefix, or .csv/.jsonl manifest (path[, subject_id])"),
    help="real videos and photos -> pseudo-labelled face-record shards (Ray Data)",
)
