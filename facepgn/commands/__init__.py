"""Subcommands of the ``facepgn`` CLI: each module exposes ``register(subparsers)`` and sets
``handler`` on its parser. Handlers parse options, call the library, and print where outputs went."""
