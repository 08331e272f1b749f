"""``facepgn preprocess``: unlabelled videos (folder, glob, s3:// prefix or manifest) -> frame-pair shards."""

from __future__ import annotations

import argparse
import json
import logging

from facepgn.cli import Command
from facepgn.commands.jobargs import add_io_args


def run(args: argparse.Namespace) -> int:
    """Detect, track and crop faces in videos, pair frames of each face track, compute optical flow,
    and write Parquet shards in FRAME_PAIR_SCHEMA plus summary.json and errors.csv. Reruns skip
    videos already done."""
    from facepgn.config import PreprocessConfig, load_config
    from facepgn.pipelines.preprocess import run_preprocess

    overrides = list(args.overrides)
    if args.input:
        overrides.append(f"input={json.dumps(args.input)}")
    if args.output:
        overrides.append(f"output={json.dumps(args.output)}")
    cfg = load_config(PreprocessConfig, args.config, overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    summary = run_preprocess(cfg)
    skipped = summary["videos_skipped_count"]
    print(
        f"facepgn preprocess: {summary['videos_read']} videos read, {skipped} skipped, "
        f"{summary['pairs_written']} pairs in {summary['shards']} shards -> {cfg.output}"
        + (f" (reasons in {cfg.output.rstrip('/')}/errors.csv)" if skipped else "")
    )
    return 0


register = Command(
    "preprocess", handler=run, config=False, description=run.__doc__,
    arguments=lambda parser: add_io_args(parser, "folder, glob, s3:// prefix, or .csv/.jsonl manifest (path[, subject_id])"),
    help="videos -> frame-pair Parquet shards (Ray Data)",
)
