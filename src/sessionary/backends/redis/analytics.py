"""Analytics (`sessionary.sessionize`) on Redis: the rules of `Sessionizing` in Lua.

Every read-modify-write is one script call on the keys of one project, which share the hash
tag `{an:<project>}` (analytics.lua lists them): `sessionize` is one script per batch,
`close_idle` and `vacuum` one each. The set of projects is a key of its own,
`<prefix>an:projects` (outside the project's slot, so not the script's to write): every batch
sends a SADD beside its script, in the same round trip (on a cluster just before it), so the
set never rests on what a process remembers. After Redis lost its data, a project's first
batch names it again.

A batch goes to the script as what the rules read, compactly: 7 numbers per hit in one array
of doubles, naming the batch's distinct strings (each sent once) by index; plus the hits
encoded whole (flat JSON), which the script stores verbatim in the outbox entry and `outbox`
decodes back into `Hit`s; the script adds the placements, rows and emissions as JSON, but
the rows' numbers, which leave as one array of doubles too (cjson formats each number with
sprintf: a sixth of the script's time went there). (Lua numbers are doubles: times and
revenue are exact up to 2**53.)

Footprint: each write refreshes a TTL of max(dedup, 7 days) on every key of the project, so
the keys of a project that stopped ingesting (and whose reaper stopped) go away then, its
undrained outbox entries with them. `vacuum` keeps a live project's keys to what it needs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import orjson

from sessionary.backends.redis.scripts import Arg, Batcher, Script, Scripts
from sessionary.sessionize import (
    DUPLICATE,
    JOINED,
    LATE,
    SCREEN_VIEW,
    SESSION_ROW_SHAPE,
    UNATTACHED,
    Field,
    Hit,
    IngestOutcome,
    OutboxEntry,
    Placement,
    Rules,
    SessionRow,
    Status,
    VacuumReport,
    compact_hit_values,
    compiled,
    hits_of,
)

DAY_MS = 24 * 3_600_000
MIN_TTL_MS = 7 * DAY_MS
_HELPERS = ("analytics",)
_STATUSES: dict[str, Status] = {"1": JOINED, "2": LATE, "3": DUPLICATE, "4": UNATTACHED}
_KEY_NAMES = ("d", "i", "c", "s", "p", "q", "w", "o")
#: a row of an outbox entry as analytics.lua's `row` writes it (the project aside: every row of
#: an entry is its project's): its strings and `closed` in the JSON, its numbers packed as
#: doubles beside it, each in the order of `SessionRow` (a test holds the script to these)
ROW_STRINGS = tuple(
    f.name for f in SESSION_ROW_SHAPE if f.kind is not int and f.name != "project_id"
)
ROW_NUMBERS = tuple(f.name for f in SESSION_ROW_SHAPE if f.kind is int)


def _row_value(f: Field) -> str:
    """Where `_rows_of` finds a field: the project, or its place in the strings or numbers."""
    if f.name == "project_id":
        return "project"
    if f.kind is int:
        return f"n[{ROW_NUMBERS.index(f.name)}]"
    return f"s[{ROW_STRINGS.index(f.name)}]"


#: (project, (strings, numbers) of each row) -> the SessionRows (one comprehension: a call
#: per row took a sixth more time)
_rows_of: Callable[[str, Iterable[tuple[Sequence[Any], Sequence[Any]]]], list[SessionRow]] = (
    compiled(
        "project, rows",
        f"[SessionRow({', '.join(map(_row_value, SESSION_ROW_SHAPE))}) for s, n in rows]",
        {"SessionRow": SessionRow},
    )
)
_OLD_ROW_FIELDS = 18  # values per row in an entry written before the numbers were packed
#: the strings and numbers per row of an entry written before entries said them (`w`)
_UNSAID_WIDTHS = (12, 6)
_ROW_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SessionRow)}


def _fitted(rows: Iterable[tuple[Any, ...]], names: Sequence[str]) -> Iterator[tuple[Any, ...]]:
    """Rows of values of another version's `names`: those this one does not know (a newer
    version's, at the end) left out, those it lacks (an older version's) at their defaults."""
    width = len(names)
    for values in rows:
        if len(values) < width:
            lacking = names[len(values) :]
            defaults = [_ROW_DEFAULTS[name] for name in lacking]
            if dataclasses.MISSING in defaults:
                raise ValueError(
                    f"an outbox entry's rows lack SessionRow fields without a default: {lacking}"
                )
            yield (*values, *defaults)
        else:
            yield values[:width]


def ttl_ms(rules: Rules) -> int:
    return max(rules.dedup_ms, MIN_TTL_MS)


def _batch(rules: Rules, hits: Sequence[Hit], now: int, nonce: str) -> list[Arg]:
    """The script's ARGV (see sessionize.lua): what the rules read, as numbers and the
    batch's distinct strings (a RESP argument costs more to pack than a number in an array);
    and the hits whole, for the outbox."""
    strings: dict[str, int] = {}  # string -> its index (from 1)
    index = strings.setdefault  # index(s, len(strings) + 1): the index of s, new or not
    numbers: list[int] = []
    groups: dict[tuple[str | None, ...], int] = {}
    lists: list[tuple[str, ...]] = []
    encoded: list[Any] = []  # `compact_hit_values` of each hit, one after the other
    for h in hits:
        devices = h.devices
        if len(devices) == 1:
            d = index(devices[0], len(strings) + 1)
        elif devices:
            lists.append(devices)
            d = -len(lists)
        else:
            d = 0
        profile, path, event_id = h.profile_id, h.path, h.event_id
        p = 0 if profile is None else index(profile, len(strings) + 1)
        w = 0 if path is None else index(path, len(strings) + 1)
        e = index(event_id, len(strings) + 1) if h.dedup else 0
        referrer, source, medium = h.referrer, h.utm_source, h.utm_medium
        campaign, term, content = h.utm_campaign, h.utm_term, h.utm_content
        if (
            referrer is None
            and source is None
            and medium is None
            and campaign is None
            and term is None
            and content is None
        ):
            g = 0
        else:
            g = groups.setdefault(
                (referrer, source, medium, campaign, term, content), len(groups) + 1
            )
        numbers += (h.ts, 2 * h.revenue + (h.name == SCREEN_VIEW), d, p, w, e, g)
        encoded += compact_hit_values(h)
    for values in groups:
        numbers += (0 if value is None else index(value, len(strings) + 1) for value in values)
    for candidates in lists:
        numbers.append(len(candidates))
        numbers += (index(device, len(strings) + 1) for device in candidates)
    packed = array("d", numbers)
    if sys.byteorder == "big":
        packed.byteswap()
    args: list[Arg] = [
        now,
        nonce,
        rules.timeout_ms,
        "" if rules.max_length_ms is None else rules.max_length_ms,
        rules.lateness_ms,
        rules.dedup_ms,
        ttl_ms(rules),
        orjson.dumps(encoded),
        len(hits),
        len(groups),
        len(lists),
        packed.tobytes(),
    ]
    args += strings
    return args


def _hits(flat: list[Any], count: int) -> list[Hit]:
    """The `count` hits of an outbox entry, from the flat list `_batch` encoded. Each has as
    many values as the version that wrote it knew fields (`hits_of` defaults the rest)."""
    if not flat:
        return []
    width = len(flat) // count if count else 0
    if not width or width * count != len(flat):
        raise ValueError(f"{len(flat)} values are not {count} hits")
    it = iter(flat)
    return hits_of(zip(*[it] * width, strict=True))


def _doubles(raw: bytes) -> list[int]:
    """Little-endian doubles (whole numbers), as the scripts pack them."""
    numbers = array("d")
    numbers.frombytes(raw)
    if sys.byteorder == "big":
        numbers.byteswap()
    return [int(n) for n in numbers]


def _rows(project: str, flat: Any, raw_numbers: bytes, widths: bytes | None) -> list[SessionRow]:
    """The rows of an outbox entry: the flat list of their strings (and `closed`) the script
    wrote as JSON (an empty Lua table comes as {}), and their numbers, packed; `widths`, how
    many of each a row has ("12 6"), as the version that wrote the entry knew them."""
    said = _UNSAID_WIDTHS if widths is None else tuple(map(int, widths.split()))
    it, numbers = iter(flat), iter(_doubles(raw_numbers))
    strings: Iterable[tuple[Any, ...]] = zip(*[it] * said[0], strict=True)
    values: Iterable[tuple[Any, ...]] = zip(*[numbers] * said[1], strict=True)
    if said != (len(ROW_STRINGS), len(ROW_NUMBERS)):
        strings, values = _fitted(strings, ROW_STRINGS), _fitted(values, ROW_NUMBERS)
    return _rows_of(project, zip(strings, values, strict=True))


def _old_rows(project: str, base: int, flat: Any) -> list[SessionRow]:
    """The rows of an outbox entry written before the numbers were packed: 18 values a row
    in the JSON, times as offsets from `base`."""
    it = iter(flat)
    return [
        SessionRow(
            sid, project, device, profile, base + int(start), base + int(last), events, views,
            entry, exit, referrer, source, medium, campaign, term, content, int(revenue),
            version, closed,
        )
        for (
            sid, device, profile, start, last, events, views, entry, exit, referrer, source,
            medium, campaign, term, content, revenue, version, closed,
        ) in zip(*[it] * _OLD_ROW_FIELDS, strict=True)
    ]  # fmt: skip


def _times(base: int, flat: Any) -> list[tuple[str, int]]:
    """A flat [id, offset, id, offset, ...] (an empty Lua table comes as {})."""
    it = iter(flat)
    return [(sid, base + int(at)) for sid, at in zip(it, it, strict=True)]


def _entry(project: str, raw: Sequence[Any]) -> OutboxEntry:
    """A stream entry as XRANGE returns it: [id, [field, value, ...]] from the plain client,
    (id, {field: value}) from the cluster client."""
    entry_id, fields = raw[0], raw[1]
    if not isinstance(fields, dict):
        it = iter(fields)
        fields = dict(zip(it, it, strict=True))
    raw_base, statuses, placed, rows, started, ended = orjson.loads(fields[b"e"])
    base = int(raw_base)  # times come as offsets from it
    it = iter(placed)
    hits, numbers = fields.get(b"h"), fields.get(b"n")
    return OutboxEntry(
        entry_id.decode(),
        project,
        [] if hits is None else _hits(orjson.loads(hits), len(statuses)),
        [Placement(_STATUSES[c], s, d) for c, s, d in zip(statuses, it, it, strict=True)],
        _old_rows(project, base, rows)
        if numbers is None
        else _rows(project, rows, numbers, fields.get(b"w")),
        _times(base, started),
        _times(base, ended),
    )


class RedisAnalytics:
    """The `SessionizeBackend` methods, for `RedisBackend` to delegate to (it holds the
    connection slots and turns connection errors into `StoreUnavailable`)."""

    def __init__(self, calls: Batcher, scripts: Scripts, prefix: str) -> None:
        self.calls = calls
        self.scripts = scripts  # the backend's: one load in flight per script
        self.prefix = prefix
        self.projects_key = f"{prefix}an:projects"
        self._keys: dict[str, list[str]] = {}
        self._sessionize = Script.load("sessionize", _HELPERS)
        self._close_idle = Script.load("close_idle", _HELPERS)
        self._vacuum = Script.load("vacuum", _HELPERS)

    def keys(self, project: str) -> list[str]:
        found = self._keys.get(project)
        if found is None:
            tag = f"{self.prefix}{{an:{project}}}:"
            found = self._keys[project] = [tag + name for name in _KEY_NAMES]
        return found

    async def sessionize(
        self, project: str, rules: Rules, hits: Sequence[Hit], now: int, nonce: str
    ) -> IngestOutcome:
        keys, args = self.keys(project), _batch(rules, hits, now, nonce)
        register = self.calls.call("SADD", self.projects_key, project)
        if self.calls.depth:  # one round trip through the auto-pipeline
            _, reply = await asyncio.gather(
                register, self.scripts.run(self.calls, self._sessionize, keys, args)
            )
        else:  # a cluster: one connection at a time, as `Scripts.run_many` (the SADD first)
            await register
            reply = await self.scripts.run(self.calls, self._sessionize, keys, args)
        joined, late, duplicate, unattached, started, ended, *at = (int(n) for n in reply)
        return IngestOutcome(
            joined, late, duplicate, unattached, started, ended,
            tuple(at[:late]), tuple(at[late:]),
        )  # fmt: skip

    async def close_idle(self, project: str, rules: Rules, now: int, limit: int) -> int:
        if limit < 1:
            return 0
        args = (now, rules.timeout_ms, rules.reap_lag_ms, limit, ttl_ms(rules))
        return int(await self.scripts.run(self.calls, self._close_idle, self.keys(project), args))

    async def vacuum(
        self, project: str, rules: Rules, now: int, older_than_ms: int, limit: int
    ) -> VacuumReport:
        if limit < 1:
            return VacuumReport()
        args = (now, older_than_ms, limit, rules.dedup_ms, ttl_ms(rules))
        reply = await self.scripts.run(self.calls, self._vacuum, self.keys(project), args)
        return VacuumReport(*(int(n) for n in reply))

    async def outbox(self, project: str, limit: int) -> list[OutboxEntry]:
        if limit < 1:
            return []
        found = await self.calls.call("XRANGE", self.keys(project)[7], "-", "+", "COUNT", limit)
        return [_entry(project, raw) for raw in found]

    async def ack(self, project: str, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            await self.calls.call("XDEL", self.keys(project)[7], *entry_ids)

    async def projects(self) -> list[str]:
        found = await self.calls.call("SMEMBERS", self.projects_key)
        return sorted(name.decode() for name in found)

    async def open_sessions(self, project: str) -> int:
        return int(await self.calls.call("ZCARD", self.keys(project)[1]))

    async def idle_sessions(self, project: str, cutoff: int) -> int:
        """From the idle index (device -> last event of its open session)."""
        return int(await self.calls.call("ZCOUNT", self.keys(project)[1], "-inf", f"({cutoff}"))

    async def watermark(self, project: str) -> int | None:
        found = await self.calls.call("GET", self.keys(project)[6])
        return None if found is None else int(found)
