"""Subcommands of the ``facepgn`` CLI: each module exposes ``register(subparsers)``, which declares
its command as a ``facepgn.cli.Command`` (or a group of them, ``add_command_group``): the one
place a parser gets its help, flags, ``--config`` / ``--set`` and ``handler``. Handlers parse
options, call the library, and print where outputs went."""
