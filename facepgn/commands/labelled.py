"""``facepgn labelled``: turn a labelled dataset folder (AFLW2000-3D, 300W-LP: ``.jpg`` + ``.mat``)
into face-record Parquet shards for training.

    facepgn labelled convert --data DIR --out DIR [--config FILE] [--set image_size=128 margin=0.2 ...]
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    from facepgn.cli import add_command, add_command_group

    actions = add_command_group(
        subparsers, "labelled", dest="labelled_command", metavar="ACTION",
        help="convert AFLW2000-3D / 300W-LP folders (jpg + mat) into face-record Parquet shards",
        description="Read every <name>.jpg + <name>.mat under --data (AFLW2000-3D: pt3d_68; 300W-LP: "
        "pt2d) into square face crops with landmarks in crop pixels, written as Parquet shards.",
    )
    add_command(actions, "convert", handler=run_convert, arguments=_convert_arguments,
                help="folder -> face-record shards (OUT/data/part-NNNNN.parquet, summary.json beside data/)")


def _convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder (local or s3://), searched recursively")
    parser.add_argument("--out", required=True, help="output folder (local or s3://); a rerun skips finished shards")


def run_convert(args: argparse.Namespace) -> int:
    import logging

    from facepgn.config import LabelledConfig, load_config
    from facepgn.pipelines.labelled import run_convert as convert

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    cfg = load_config(LabelledConfig, args.config, args.overrides)
    summary = convert(cfg, args.data, args.out)
    print(
        f"{summary['records_written']} records in {len(summary['shards'])} shard(s) "
        f"({summary['shards_skipped_existing']} already there), {len(summary['errors'])} skipped: {args.out}"
        + (f" (skipped images and why: {args.out.rstrip('/')}/errors.csv)" if summary["errors"] else "")
    )
    return 0
