"""Device ids for anonymous traffic: a keyed hash of (project, IP, User-Agent) with a random
salt per UTC day, so nobody (sessionary included, once a salt is gone) can link a visitor's
days together or get back to the IP.

The salt of a day is chosen by the event's date, created by whichever process asks first and
kept in the store (every process shares it), and destroyed at the end of the next day: 48 h
after its day began. An event is hashed with its day's salt and with the previous day's while
that one exists, so a session open at 23:55 continues past midnight.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sessionary import ids
from sessionary.errors import SessionExists
from sessionary.store import Store

DAY_MS = 86_400_000
SALTS_NAMESPACE = "analytics.salts"


def day_of(ts: int) -> int:
    """The UTC day (days since the epoch) of a time in ms."""
    return ts // DAY_MS


class DeviceIds:
    def __init__(self, store: Store) -> None:
        self.namespace = store.namespace(SALTS_NAMESPACE, absolute_ttl=timedelta(days=2))
        self._clock = store.clock
        self._cache: dict[int, bytes] = {}

    async def candidates(self, project: str, ip: str, user_agent: str, ts: int) -> tuple[str, ...]:
        """The device ids of this visitor for an event at `ts`: its day's, then the previous
        day's (while that salt lives). Days outside [yesterday, today] use the nearest."""
        today = day_of(self._clock.now_ms())
        day = min(max(day_of(ts), today - 1), today)
        found = [await self.salt(day)]
        if day == today:
            found.append(await self.salt(day - 1))
        return tuple(_hash(salt, project, ip, user_agent) for salt in found if salt)

    async def salt(self, day: int) -> bytes:
        """The salt of a UTC day, b"" once it is destroyed (or for a day not yet begun)."""
        now = self._clock.now_ms()
        if not day * DAY_MS <= now < (day + 2) * DAY_MS:
            self._cache.pop(day, None)
            return b""
        cached = self._cache.get(day)
        if cached is not None:
            return cached
        session_id = ids.derived(f"analytics.salt:{day}")
        for _ in range(3):
            found = await self.namespace.get(session_id)
            if found is not None:
                salt = bytes.fromhex(found.data["salt"])
                break
            try:
                await self.namespace.create(
                    id=session_id,
                    data={"salt": secrets.token_hex(32)},
                    created_at=min(now, day * DAY_MS),
                    expires_at=(day + 2) * DAY_MS,
                )
            except SessionExists:
                continue  # another process made it first: read theirs
        else:
            raise RuntimeError("the day's salt could neither be read nor created")
        self._cache = {d: s for d, s in self._cache.items() if d >= day - 1}
        self._cache[day] = salt
        return salt


def _hash(salt: bytes, project: str, ip: str, user_agent: str) -> str:
    digest = hashlib.blake2b(
        f"{project}\0{ip}\0{user_agent}".encode(), key=salt, digest_size=16
    ).hexdigest()
    return f"anon-{digest}"
