"""`sessionary check` on Redis: the indexes of a namespace against its session keys.

A namespace's indexes are real sorted sets beside the session hashes (see backend.py's
layout): per shard the expiry index `x`, and the subject index `u` (one per shard, or one for
the namespace kept in one slot for a session limit). A check walks, resumably (the cursor
names the phase, the shard and the server's own cursor):

1. `x` each shard's expiry index by ZSCAN: an entry whose session key is gone is an orphan
   (Redis dropped the key by its TTL before a reaper came, or it was lost);
2. `u` each subject index by ZSCAN: a member naming no session key of its subject is one;
3. `s` the session keys by SCAN with a MATCH of the namespace's key pattern (per primary on a
   cluster): a session not in its shard's expiry index at its `expires_at`, or not in its
   subject's index, is missing there.

Every batch of candidates is decided again in a Lua script (`check_*.lua`), which repairs in
the same atomic step: what changed between the scan and the script (a session deleted, say)
is no finding, and a repair never races a write. Never KEYS, never one unbounded command.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from redis.asyncio.cluster import RedisCluster

from sessionary import ids
from sessionary.backends.redis.scripts import Script
from sessionary.contract import (
    EXPIRY_INDEX_MISSING,
    EXPIRY_INDEX_ORPHAN,
    SUBJECT_INDEX_MISSING,
    SUBJECT_INDEX_ORPHAN,
    CheckPage,
    Finding,
)

if TYPE_CHECKING:
    from sessionary.backends.redis.backend import RedisBackend

_EXPIRY = Script.load("check_expiry")
_SUBJECTS = Script.load("check_subjects")
_SESSIONS = Script.load("check_sessions")
_PHASES = ("x", "u", "s")
_GLOB = re.compile(r"([*?\[\]\\])")


def glob_escape(text: str) -> str:
    """`text` as a literal in a SCAN MATCH pattern (a prefix may hold glob characters)."""
    return _GLOB.sub(r"\\\1", text)


async def check_indexes(
    backend: RedisBackend, ns: str, now: int, cursor: str | None, batch: int, *, repair: bool
) -> CheckPage:
    """One step of the walk (see the module docstring); the cursor is
    "<phase>:<shard or node>:<server cursor>"."""
    phase, place, position = ("x", 0, 0) if cursor is None else _parse(cursor)
    if phase == "x":
        found, examined, position = await _expiry(backend, ns, now, place, position, batch, repair)
    elif phase == "u":
        found, examined, position = await _subjects(backend, ns, place, position, batch, repair)
    else:
        found, examined, position, place = await _sessions(
            backend, ns, place, position, batch, repair
        )
        return CheckPage(found, None if place < 0 else f"s:{place}:{position}", examined)
    if position == 0:  # this index is done: the next shard's, or the next phase
        place += 1
        if place >= ids.SHARDS or (phase == "u" and backend._one_slot[ns]):  # one `u` index
            phase, place = _PHASES[_PHASES.index(phase) + 1], 0
    return CheckPage(found, f"{phase}:{place}:{position}", examined)


def _parse(cursor: str) -> tuple[str, int, int]:
    phase, place, position = cursor.split(":")
    if phase not in _PHASES:
        raise ValueError(f"not a check cursor: {cursor!r}")
    return phase, int(place), int(position)


async def _expiry(
    backend: RedisBackend, ns: str, now: int, shard: int, position: int, batch: int, repair: bool
) -> tuple[list[Finding], int, int]:
    keys = backend.shard_keys(ns, shard)
    position, pairs = await backend.client.zscan(keys.expiry, position, count=batch)
    named = [cast(bytes, member).decode() for member, _ in pairs]
    if not named:
        return [], 0, position
    session_keys = [k for sid in named for k in (keys.session + sid, keys.log + sid)]
    reply = await backend._scripts.run(
        backend.calls, _EXPIRY, [keys.expiry, *session_keys], ["1" if repair else "0", *named]
    )
    found = []
    for i in range(0, len(reply), 2):
        expires_at = int(float(reply[i + 1]))
        when = "expired: a reaper drops it" if expires_at <= now else "live: its record is lost"
        found.append(
            Finding(
                EXPIRY_INDEX_ORPHAN,
                ns,
                reply[i].decode(),
                f"the expiry index names no stored session (expires_at {expires_at}, {when})",
                repair,
            )
        )
    return found, len(named), position


async def _subjects(
    backend: RedisBackend, ns: str, shard: int, position: int, batch: int, repair: bool
) -> tuple[list[Finding], int, int]:
    index = backend.shard_keys(ns, shard).subjects
    position, pairs = await backend.client.zscan(index, position, count=batch)
    members = [cast(bytes, member) for member, _ in pairs]
    if not members:
        return [], 0, position
    one_slot = backend._one_slot[ns]
    session_keys = []
    for member in members:
        session_id = member.partition(b"\x00")[2].decode(errors="replace")
        # the index of a shard names that shard's sessions; the namespace's one index, any
        owner = _shard_of(session_id) if one_slot else shard
        session_keys.append(backend.shard_keys(ns, owner).session + session_id)
    reply = await backend._scripts.run(
        backend.calls, _SUBJECTS, [index, *session_keys], ["1" if repair else "0", *members]
    )
    found = [
        Finding(
            SUBJECT_INDEX_ORPHAN,
            ns,
            member.partition(b"\x00")[2].decode(errors="replace"),
            "the subject index names no stored session of its subject",
            repair,
        )
        for member in reply
    ]
    return found, len(members), position


async def _sessions(
    backend: RedisBackend, ns: str, node: int, position: int, batch: int, repair: bool
) -> tuple[list[Finding], int, int, int]:
    """One SCAN step over the namespace's session keys (on a cluster, of the `node`-th
    primary by name); `node` comes back -1 once every server is done."""
    one_slot = backend._one_slot[ns]
    prefix = glob_escape(backend.prefix)
    pattern = f"{prefix}{{{ns}}}:??:s:*" if one_slot else f"{prefix}{{{ns}:??}}:s:*"
    client = backend.client
    if isinstance(client, RedisCluster):
        primaries = sorted(client.get_primaries(), key=lambda n: n.name)
        target = primaries[node]
        cursors, keys = await client.scan(position, match=pattern, count=batch, target_nodes=target)
        position = cast(dict[str, int], cursors)[target.name]
        last = node == len(primaries) - 1
    else:
        position, keys = await client.scan(position, match=pattern, count=batch)
        last = True
    by_shard: dict[int, list[str]] = {}
    start = len(backend.prefix) + len(ns) + 8  # past "{<ns>:07}:s:" or "{<ns>}:07:s:"
    digits = len(backend.prefix) + len(ns) + (3 if one_slot else 2)
    for key in cast(Sequence[bytes], keys):
        text = key.decode(errors="replace")
        digits_of_shard = text[digits : digits + 2]
        if digits_of_shard.isdigit():
            by_shard.setdefault(int(digits_of_shard), []).append(text[start:])
    calls: list[tuple[Script, Sequence[str], Sequence[Any]]] = []
    for shard, named in by_shard.items():
        keys_of = backend.shard_keys(ns, shard)
        calls.append(
            (
                _SESSIONS,
                [keys_of.expiry, keys_of.subjects, *(keys_of.session + sid for sid in named)],
                ["1" if repair else "0", *named],
            )
        )
    replies = await backend._scripts.run_many(backend.calls, calls)
    found = []
    for reply in replies:
        for i in range(0, len(reply), 4):
            kind, session_id, value = reply[i], reply[i + 1].decode(), reply[i + 2].decode()
            if kind == b"x":
                scored = reply[i + 3].decode()
                was = f"scored {scored}" if scored else "absent"
                finding = Finding(
                    EXPIRY_INDEX_MISSING,
                    ns,
                    session_id,
                    f"not in the expiry index at its expires_at {value} ({was})",
                    repair,
                )
            else:
                finding = Finding(
                    SUBJECT_INDEX_MISSING,
                    ns,
                    session_id,
                    "a session its subject's index does not name",
                    repair,
                )
            found.append(finding)
    examined = sum(len(named) for named in by_shard.values())
    if position == 0:
        node = -1 if last else node + 1
    return found, examined, position, node


def _shard_of(session_id: str) -> int:
    """The shard an id names, or 0 for one that is no id (its key is then absent anyway)."""
    try:
        return ids.shard_of(session_id)
    except (KeyError, IndexError):
        return 0
