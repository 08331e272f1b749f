"""What the data-engine job commands share (``facepgn label``, ``facepgn profile``): ``--input`` /
``--output`` and the job's own flags become config overrides (``--set`` wins over them, and they
win over ``--config``), and logging goes to stderr, one line per finished item."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Sequence

from facepgn.cli import add_config_args


def add_io_args(parser: argparse.ArgumentParser, input_help: str) -> None:
    """``--input``, ``--output``, ``--config`` and ``--set``."""
    parser.add_argument("--input", "-i", default=None, help=input_help)
    parser.add_argument("--output", "-o", default=None, help="output folder or s3:// prefix")
    add_config_args(parser)


def load_job_config(cls, args: argparse.Namespace, flags: Sequence[str] = ("input", "output")):
    """``cls`` from ``--config``, the ``flags`` given on the command line, then ``--set``."""
    from facepgn.config import load_config

    given = [f"{name}={json.dumps(getattr(args, name))}" for name in flags if getattr(args, name, None) is not None]
    cfg = load_config(cls, args.config, given + list(args.overrides))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return cfg
