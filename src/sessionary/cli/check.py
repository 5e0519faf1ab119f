"""`sessionary check`: reconcile what the store keeps, for every feature the settings enable
(what is checked: `sessionary.web.checks`, which the service's `POST /v1/check` shares):

* every namespace the settings declare (and the store's shared secrets): its indexes against
  its records (`Namespace.check`);
* runs: runs `running` whose worker's lease is gone or lapsed (`Runs.check`);
* analytics: sessions open past their timeout + reap lag, an outbox backlog older than
  `--backlog-age` (`Sessionizer.check`).

A table on stdout (or `--json`), progress on stderr; exit status 1 when something is wrong
(after `--repair`: when something is left unrepaired), 0 when all is clean, 2 for the
operator's mistakes as every command. Session ids are shown by their first 12 characters
only: a live session's id is a credential, and a terminal or a CI log is no place for one.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from datetime import timedelta
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn
from rich.table import Table

from sessionary.cli import DURATION
from sessionary.cli.ops import _connect, _one_line, _settings, config_option, store_option
from sessionary.contract import Finding
from sessionary.web.checks import check_store, shown

if TYPE_CHECKING:
    from sessionary.web.settings import Settings

_EXAMPLES = 3


@click.command()
@click.option("--repair", is_flag=True, help="Repair what can be repaired safely.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON (a list).")
@click.option(
    "--limit",
    type=click.IntRange(1),
    default=10_000,
    show_default=True,
    help="Stop checking a namespace after this many findings (rerun for the rest).",
)
@click.option(
    "--backlog-age",
    type=DURATION,
    default="5m",
    show_default=True,
    help="An analytics outbox whose oldest entry is older than this is a finding.",
)
@store_option
@config_option
def check(
    repair: bool,
    as_json: bool,
    limit: int,
    backlog_age: timedelta,
    store: str | None,
    config: str | None,
) -> None:
    """Reconcile the store's indexes with its records in every namespace, and find runs
    whose lease lapsed and analytics work the jobs owe. Exit 1 if anything is wrong (after
    --repair: if anything is left), 0 if all is clean."""
    settings = _settings(config, store=store)
    with _one_line():
        findings = asyncio.run(_check(settings, repair, limit, backlog_age, Console(stderr=True)))
    if as_json:
        click.echo(json.dumps([_as_json(finding) for finding in findings], indent=2))
    else:
        _print_table(findings, repair, Console())
    if any(not finding.repaired for finding in findings):
        raise SystemExit(1)


async def _check(
    settings: Settings, repair: bool, limit: int, backlog_age: timedelta, console: Console
) -> list[Finding]:
    from sessionary.web.app import declare

    store = await _connect(settings)
    declared = declare(settings, store)
    try:
        if repair and declared.analytics is not None:
            await declared.open_sink(settings)  # a repair drains the outbox to it
        columns = (SpinnerColumn(), TextColumn("{task.description}"))
        with Progress(*columns, console=console, transient=True) as progress:
            checked = await check_store(
                store,
                declared,
                repair=repair,
                limit=limit,
                backlog_age=backlog_age,
                progress=_Spinners(progress, console),
            )
        return checked.findings
    finally:
        await declared.close_sink()
        await store.close()


class _Spinners:
    """A check's progress as a spinner per place, on stderr; a namespace stopped at the
    limit says so."""

    def __init__(self, progress: Progress, console: Console) -> None:
        self.progress = progress
        self.console = console
        self.tasks: dict[str, TaskID] = {}

    def started(self, place: str) -> None:
        self.tasks[place] = self.progress.add_task(f"checking {place}", total=None)

    def examined(self, place: str, examined: int, found: int) -> None:
        self.progress.update(
            self.tasks[place],
            description=f"checking {place}: {examined:,} examined, {found:,} found",
        )

    def done(self, place: str, found: int, limited: bool) -> None:
        if limited:
            self.console.print(
                f"{place}: stopped after {found:,} findings; rerun (with --repair) for the rest"
            )
        self.progress.remove_task(self.tasks.pop(place))


def _as_json(finding: Finding) -> dict[str, object]:
    return {
        "kind": finding.kind,
        "namespace": finding.namespace,
        "id": shown(finding.id),
        "detail": finding.detail,
        "repaired": finding.repaired,
    }


def _print_table(findings: list[Finding], repair: bool, console: Console) -> None:
    if not findings:
        console.print("clean: nothing found")
        return
    groups: dict[tuple[str, str], list[Finding]] = defaultdict(list)
    for finding in findings:
        groups[(finding.kind, finding.namespace)].append(finding)
    table = Table("kind", "namespace", "count", "examples", "repaired")
    for (kind, namespace), found in sorted(groups.items()):
        examples = [shown(f.id) or f.detail for f in found[:_EXAMPLES]]
        repaired = sum(f.repaired for f in found)
        table.add_row(
            kind,
            namespace,
            f"{len(found):,}",
            "\n".join(str(e) for e in examples),
            f"{repaired:,}" if repair else "-",
        )
    console.print(table)
    left = sum(not f.repaired for f in findings)
    console.print(f"{len(findings):,} found, {len(findings) - left:,} repaired, {left:,} left")
