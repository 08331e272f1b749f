"""``facepgn config show JOB``: a job's full defaults as commented YAML."""

from __future__ import annotations

import argparse

from facepgn.cli import add_command, add_command_group


def register(subparsers: argparse._SubParsersAction) -> None:
    from facepgn.config import JOB_CONFIGS

    actions = add_command_group(subparsers, "config", dest="config_action", metavar="ACTION", required=False,
                                help="show a job's config defaults",
                                description="Inspect the typed job configs (facepgn/config/).")
    add_command(
        actions, "show", handler=run_show, config=False,
        arguments=lambda parser: parser.add_argument("job", nargs="?", choices=sorted(JOB_CONFIGS), metavar="JOB",
                                                     help="one of: " + ", ".join(sorted(JOB_CONFIGS))),
        help="print a job's full defaults as commented YAML",
        description=run_show.__doc__,
    )


def run_show(args: argparse.Namespace) -> int:
    """Print every key of JOB's config with its default value and the comment its field has in
    facepgn/config/. The files in configs/ list only what differs from these defaults; a copy of
    this output is a complete config file (`--config`)."""
    from facepgn.config import JOB_CONFIGS
    from facepgn.config.show import defaults_yaml

    if args.job is None:
        for name, (cls, command) in sorted(JOB_CONFIGS.items()):
            print(f"{name:<13} {cls.__name__:<24} {command}")
        return 0
    cls, command = JOB_CONFIGS[args.job]
    print(defaults_yaml(cls, f"{command}: {cls.__name__} defaults (facepgn config show {args.job})"), end="")
    return 0
