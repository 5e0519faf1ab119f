"""The `sessionary` command: `serve`, `reap`, `vacuum`, `migrate`, `ping`, `demo`."""

from __future__ import annotations

import click

from sessionary import __version__

STORE_HELP = (
    "Store URL: sqlite:///file.db (default: sessionary.db here), memory://, redis://host:6379/0"
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sessionary")
def main() -> None:
    """sessionary: server-side sessions on SQLite, Redis/Valkey or memory."""


def _register() -> None:
    from sessionary.cli import demo, ops

    for command in (ops.serve, ops.reap, ops.vacuum, ops.migrate, ops.ping, demo.demo):
        main.add_command(command)


_register()
