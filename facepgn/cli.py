"""The ``facepgn`` command. Each subcommand lives in ``facepgn/commands/<name>.py`` and exposes
``register(subparsers)``; heavy imports (torch, ray) happen inside the handlers, so ``--help`` is fast.

User errors (:class:`facepgn.errors.FacepgnError`) print one line, ``facepgn: error: ...``, and
exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from facepgn import __version__
from facepgn.errors import FacepgnError

# Order is the order shown in --help.
COMMAND_MODULES = [
    "facepgn.commands.demo",
    "facepgn.commands.model",
    "facepgn.commands.synth",
    "facepgn.commands.preprocess",
    "facepgn.commands.train",
    "facepgn.commands.tune",
    "facepgn.commands.infer",
    "facepgn.commands.export",
    "facepgn.commands.evaluate",
    "facepgn.commands.labelled",
    "facepgn.commands.label",
    "facepgn.commands.profile",
    "facepgn.commands.config",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facepgn",
        description="3D face reconstruction with a Pose Guidance Network, on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"facepgn {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """The ``--config FILE`` and ``--set key=value ...`` options every job command takes."""
    parser.add_argument("--config", "-c", default=None, help="YAML config file")
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config values, e.g. --set trainer.num_workers=4 trainer.use_gpu=true",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        result = args.handler(args)
    except FacepgnError as exc:
        print(f"facepgn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facepgn: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
