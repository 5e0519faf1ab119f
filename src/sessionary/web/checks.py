"""What `sessionary check` and the service's `POST /v1/check` reconcile, decided once for both:

* every namespace the settings declare, and the store's shared secrets: its indexes against
  its records (`Namespace.check`);
* runs: runs `running` whose worker's lease is gone or lapsed (`Runs.check`);
* analytics: sessions open past their timeout + reap lag, an outbox backlog older than
  `backlog_age` (`Sessionizer.check`).

Here (in the web layer, under the command line) so that the command and the service check the
same places in the same order; each tells its own audience how it goes (`CheckProgress`): a
spinner on a terminal, nothing over HTTP. Session ids leave either only by their first
`SHOWN` characters (`shown`): a live session's id is a credential.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol

from sessionary.contract import Finding, IndexCheck
from sessionary.store import Store

if TYPE_CHECKING:
    from sessionary.web.app import Features

#: how much of a session id the findings show
SHOWN = 12
#: findings per namespace after which a check stops there (rerun for the rest)
DEFAULT_LIMIT = 10_000
#: an analytics outbox whose oldest entry is older than this is a finding
DEFAULT_BACKLOG_AGE = timedelta(minutes=5)
#: the places after the namespaces, as `CheckProgress` names them
RUNS_PLACE = "runs' leases"
#: the finding of a store whose backend cannot check its indexes: none of them was checked
INDEXES_UNCHECKED = "indexes_unchecked"
ANALYTICS_PLACE = "analytics"


class CheckProgress(Protocol):
    """Hears how a check goes, place by place (a namespace, `RUNS_PLACE`, `ANALYTICS_PLACE`)."""

    def started(self, place: str) -> None: ...

    def examined(self, place: str, examined: int, found: int) -> None:
        """A namespace's step: `examined` index entries and records so far, `found` findings."""
        ...

    def done(self, place: str, found: int, limited: bool) -> None:
        """`place` is checked: `found` findings; `limited`: it stopped at the limit."""
        ...


class _Quiet:
    def started(self, place: str) -> None:
        pass

    def examined(self, place: str, examined: int, found: int) -> None:
        pass

    def done(self, place: str, found: int, limited: bool) -> None:
        pass


@dataclass
class Checked:
    """What a check found, how much of each namespace it examined (index entries and
    records), and the namespaces where it stopped at its limit."""

    findings: list[Finding] = field(default_factory=list)
    examined: dict[str, int] = field(default_factory=dict)
    limited: list[str] = field(default_factory=list)


async def check_store(
    store: Store,
    features: Features,
    *,
    repair: bool = False,
    limit: int = DEFAULT_LIMIT,
    backlog_age: timedelta = DEFAULT_BACKLOG_AGE,
    progress: CheckProgress | None = None,
) -> Checked:
    """Check (and with `repair`, repair what can be repaired safely) every place `features`
    has on `store`: its namespaces and the shared secrets, then runs and analytics when
    enabled. A namespace's check stops after `limit` findings. A repair of analytics drains
    the outbox: open `features`' sink first (`Features.open_sink`)."""
    told = progress or _Quiet()
    checked = Checked()
    namespaces = [
        *features.namespaces.values(),
        store.secrets_namespace(),
    ]
    if not isinstance(store.backend, IndexCheck):  # a third party's backend may lack it
        reason = f"{store.backend!r} cannot check its indexes (it implements no IndexCheck)"
        checked.findings.append(Finding(INDEXES_UNCHECKED, "*", None, reason, False))
        namespaces = []
    for namespace in namespaces:
        name = namespace.name
        told.started(name)

        def step(examined: int, found: int, name: str = name) -> None:
            checked.examined[name] = examined
            told.examined(name, examined, found)

        found = await namespace.check(repair=repair, limit=limit, progress=step)
        limited = len(found) >= limit
        if limited:
            checked.limited.append(name)
        checked.findings += found
        told.done(name, len(found), limited)
    if features.runs is not None:
        told.started(RUNS_PLACE)
        found = await features.runs.check(repair=repair)
        checked.findings += found
        told.done(RUNS_PLACE, len(found), False)
    if features.analytics is not None:
        told.started(ANALYTICS_PLACE)
        found = await features.analytics.check(repair=repair, backlog_age=backlog_age)
        checked.findings += found
        told.done(ANALYTICS_PLACE, len(found), False)
    return checked


def shown(session_id: str | None) -> str | None:
    """`session_id` fit to show: its first `SHOWN` characters and an ellipsis."""
    if session_id is None or len(session_id) <= SHOWN:
        return session_id
    return session_id[:SHOWN] + "…"
