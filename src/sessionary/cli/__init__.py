"""The `sessionary` command: `serve`, `worker`, `reap`, `vacuum`, `migrate`, `rekey`, `check`,
`ping`, `demo`.

It needs the `server` extra; `sessionary.__main__` (the console script) turns its absence into
one line instead of this module's import error.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from sessionary import __version__
from sessionary.clock import parse_duration
from sessionary.extras import needs

_WHAT = "the sessionary command"

with needs("server", _WHAT):
    import click


if TYPE_CHECKING:  # generic for type checkers; not subscriptable at run time before click 8.2
    _DurationBase = click.ParamType[timedelta]
else:
    _DurationBase = click.ParamType


class Duration(_DurationBase):
    """An option's duration, written like '30s', '5m', '7d' (`parse_duration`): a
    `timedelta`, or click's usage error naming the option."""

    name = "duration"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()

STORE_HELP = (
    "Store URL: sqlite:///file.db (default: sessionary.db here), memory://, redis://host:6379/0"
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sessionary")
def main() -> None:
    """sessionary: server-side sessions on SQLite, Redis/Valkey or memory."""


def _register() -> None:
    with needs("server", _WHAT):
        from sessionary.cli import check, demo, ops, worker

    for command in (
        ops.serve,
        worker.worker,
        ops.reap,
        ops.vacuum,
        ops.migrate,
        ops.rekey,
        check.check,
        ops.ping,
        demo.demo,
    ):
        main.add_command(command)


_register()


def run() -> None:
    """The command as the console script runs it: a usage mistake (an unknown option, a bad
    value) is one line naming it and where help is, exit status 2, as every operator mistake
    (click would print the usage block above it)."""
    try:
        code = main.main(prog_name="sessionary", standalone_mode=False)
    except click.UsageError as exc:
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"Error: {exc.format_message()}{where}", err=True)
        raise SystemExit(exc.exit_code) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except click.Abort:
        click.echo("Aborted!", err=True)
        raise SystemExit(1) from None
    raise SystemExit(code if isinstance(code, int) else 0)
