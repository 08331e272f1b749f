"""The ``facepgn`` command. Each subcommand lives in ``facepgn/commands/<name>.py`` and exposes
``register(subparsers)``: for a command that is one action, ``register = Command(name, handler=...,
help=..., arguments=...)``; a command made of actions declares them with :func:`add_command_group`
and :func:`add_command`. Heavy imports (torch, ray) happen inside the handlers, so ``--help`` is fast.

User errors (:class:`facepgn.errors.FacepgnError`) print one line, ``facepgn: error: ...``, and
exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from facepgn import __version__
from facepgn.errors import FacepgnError, user_error

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


def command_names() -> set[str]:
    """The registered commands (``facepgn COMMAND``)."""
    parser = build_parser()
    return {name for action in parser._subparsers._group_actions for name in action.choices}  # noqa: SLF001 - argparse keeps them here


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


Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """A command (or an action of one), declared: ``name``, the ``handler`` that runs it, its
    ``help`` and ``description``, its own flags (``arguments(parser)``), then ``--config`` /
    ``--set`` unless ``config=False``. Called with the subparsers it goes on, it builds its parser
    the one way every command's is built, so a command module's ``register`` can be one:
    ``register = Command("tune", run, help=...)``."""

    name: str
    handler: Handler
    help: str
    description: str | None = None
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    config: bool = True

    def __call__(self, subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(self.name, help=self.help, description=self.description)
        if self.arguments is not None:
            self.arguments(parser)
        if self.config:
            add_config_args(parser)
        parser.set_defaults(handler=self.handler)
        return parser


def add_command(subparsers: argparse._SubParsersAction, name: str, **declaration: Any) -> argparse.ArgumentParser:
    """The :class:`Command` ``name`` (``declaration``: its other fields) built on ``subparsers``
    (an action of a command group)."""
    return Command(name, **declaration)(subparsers)


def add_command_group(
    subparsers: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    description: str,
    dest: str,
    metavar: str,
    required: bool = True,
) -> argparse._SubParsersAction:
    """A command made of actions (``facepgn synth faces|videos``): its parser and the subparsers
    its actions register on (with :func:`add_command`). ``required=False``: the bare command
    prints its help."""
    parser = subparsers.add_parser(name, help=help, description=description)
    actions = parser.add_subparsers(dest=dest, metavar=metavar, required=required)
    if not required:
        parser.set_defaults(handler=lambda args: (parser.print_help(), 0)[1])
    return actions


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
    """Run one command; a user error (also one raised in a Ray task or worker, which arrives
    wrapped: :func:`facepgn.errors.user_error`) is one line on stderr and exit status 2."""
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
    except Exception as exc:
        error = user_error(exc)  # one raised in a Ray task or worker arrives wrapped
        if error is None:
            raise  # a bug: its traceback
        print(f"facepgn: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("facepgn: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
