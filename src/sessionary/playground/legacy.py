"""Move the original product's playground sessions into sessionary.

The original keeps `playground:session:{token}` in Redis, either as a plain string (the
number of searches used) or as a hash with `searches_used`, `created_at` and `indexed_repo`
(JSON), with a TTL running to the session's end. Each key becomes a playground session with
the same token, the original `created_at` (derived from the TTL when the string form has
none) and the remaining TTL, its searches as the session's counter, and its repo in the slot.

Per key, the counter is written first and the session second, so a session never appears
without its used searches; a second run finds each session already there and changes
nothing (the counter write sets the same value again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from sessionary import ids
from sessionary.counters import Counters
from sessionary.errors import InvalidSessionId, SessionExists
from sessionary.store import Namespace

LEGACY_PATTERN = "playground:session:*"


@dataclass
class MigrationReport:
    migrated: int = 0
    already_there: int = 0
    expired: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, why)

    @property
    def seen(self) -> int:
        return self.migrated + self.already_there + self.expired + len(self.skipped)


async def count_legacy(client: Redis, pattern: str = LEGACY_PATTERN) -> int:
    return sum([1 async for _ in client.scan_iter(match=pattern, count=1000)])


async def migrate_legacy(
    client: Redis,
    namespace: Namespace,
    quota: Counters,
    *,
    pattern: str = LEGACY_PATTERN,
    delete_legacy: bool = False,
    progress: Callable[[], None] | None = None,
) -> MigrationReport:
    """Migrate every key matching `pattern` (see the module docstring)."""
    report = MigrationReport()
    session_ttl = namespace.lifetime.absolute_ms or namespace.lifetime.idle_ms or 0
    now = namespace.store.clock.now_ms()
    async for raw_key in client.scan_iter(match=pattern, count=1000):
        key = _text(raw_key)
        try:
            outcome = await _migrate_one(client, key, namespace, quota, session_ttl, now)
        except (ValueError, KeyError, orjson.JSONDecodeError) as exc:
            report.skipped.append((key, f"unreadable: {exc}"))
        else:
            if outcome == "migrated":
                report.migrated += 1
            elif outcome == "already there":
                report.already_there += 1
            elif outcome == "expired":
                report.expired += 1
            else:
                report.skipped.append((key, outcome))
            if delete_legacy and outcome in ("migrated", "already there", "expired"):
                await client.delete(key)
        if progress is not None:
            progress()
    return report


async def _migrate_one(
    client: Redis, key: str, namespace: Namespace, quota: Counters, session_ttl: int, now: int
) -> str:
    token = key.rsplit(":", 1)[-1]
    try:
        ids.validate(token, namespace.id_prefix)
    except InvalidSessionId as exc:
        return f"the token is not a valid session id ({exc})"
    kind = _text(await client.type(key))
    ttl = int(await client.pttl(key))
    if ttl == -2:
        return "expired"
    fields: dict[str, Any] = {}
    if kind == "string":
        used = int(await client.get(key) or 0)
    elif kind == "hash":
        raw = await client.hgetall(key)
        fields = {_text(k): _text(v) for k, v in raw.items()}
        used = int(fields.get("searches_used", 0))
    else:
        return f"a {kind}, not a string or hash"
    created_at = _millis(fields["created_at"]) if fields.get("created_at") else None
    if ttl > 0:
        expires_at = now + ttl
        if created_at is None:
            created_at = expires_at - session_ttl
    elif created_at is not None:  # no TTL on the key: the session ends a lifetime after birth
        expires_at = created_at + session_ttl
    else:
        return "neither a TTL nor a created_at: its end cannot be known"
    created_at = min(created_at, now)
    if expires_at <= now:
        return "expired"
    data: dict[str, Any] = {}
    if fields.get("indexed_repo"):
        data["indexed_repo"] = _repo(orjson.loads(fields["indexed_repo"]), created_at, expires_at)
    await quota.set(f"session:{token}", max(0, used), expires_at)
    try:
        await namespace.create(id=token, data=data, created_at=created_at, expires_at=expires_at)
    except SessionExists:
        return "already there"
    return "migrated"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _millis(value: Any) -> int:
    """ISO-8601, epoch seconds or epoch ms, as ms since the epoch."""
    if isinstance(value, int | float) or (isinstance(value, str) and _is_number(value)):
        number = float(value)
        return int(number if number > 10**11 else number * 1000)
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"created_at {value!r} has no time zone")
    return int(moment.timestamp() * 1000)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _repo(found: dict[str, Any], created_at: int, expires_at: int) -> dict[str, Any]:
    indexed_at = _millis(found["indexed_at"]) if found.get("indexed_at") else created_at
    ends = _millis(found["expires_at"]) if found.get("expires_at") else expires_at
    return {
        "repo_id": str(found.get("repo_id") or found.get("id") or f"legacy-{indexed_at}"),
        "github_url": str(found.get("github_url", "")),
        "name": str(found.get("name", "")),
        "file_count": int(found.get("file_count", 0)),
        "indexed_at": indexed_at,
        "expires_at": min(ends, expires_at),
    }
