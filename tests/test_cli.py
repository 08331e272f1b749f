"""``facepgn.cli``: every command module is registered; a missing one is an import error."""

from __future__ import annotations

import pytest

from facepgn import cli


def test_every_command_module_registers_its_command():
    parser = cli.build_parser()
    (commands,) = [a.choices for a in parser._subparsers._group_actions]  # noqa: SLF001
    assert set(commands) == {name.rsplit(".", 1)[1] for name in cli.COMMAND_MODULES}


def test_a_missing_command_module_is_an_import_error(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "facepgn.commands.no_such_command"])
    with pytest.raises(ModuleNotFoundError, match="no_such_command"):
        cli.build_parser()
