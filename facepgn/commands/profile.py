"""``facepgn profile``: face records -> profiled views of each face at new head poses (exact 3D landmarks)."""

from __future__ import annotations

import argparse

from facepgn.cli import Command
from facepgn.commands.jobargs import add_io_args


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_io_args(parser, "face-record Parquet: file, folder (searched recursively), glob, s3:// prefix or .csv/.jsonl manifest")
    parser.add_argument("--views", "-n", type=int, default=None, help="new views per record (config: views)")


def run(args: argparse.Namespace) -> int:
    """Turn each face record with fitted coefficients (e.g. a facepgn label output) into --views new
    views at other head poses (facepgn.profiling: the fitted head re-rendered, landmarks exact),
    written as face records (FACE_RECORD_SCHEMA v2), one Parquet shard per input shard under data/,
    plus summary.json, errors.csv and contact_sheet.png. Reruns skip shards already done and write
    the same views (poses seeded by record id)."""
    from facepgn.commands.jobargs import load_job_config
    from facepgn.config import ProfileConfig
    from facepgn.pipelines.profile import run_profile

    cfg = load_job_config(ProfileConfig, args, ("input", "output", "views"))
    s = run_profile(cfg)
    skipped = ", ".join(f"{k} {v}" for k, v in s["records_skipped"].items()) or "none"
    print(
        f"facepgn profile: {s['views_written']} views of {s['records_in']} records in {s['shards']} shards "
        f"(records skipped: {skipped}; shards skipped: {s['items_skipped_count']}) -> {cfg.output}"
    )
    return 0


register = Command(
    "profile", handler=run, arguments=_arguments, config=False, description=run.__doc__,
    help="face records -> views of each face at new head poses, as face-record shards (Ray Data)",
)
