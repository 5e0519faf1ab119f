"""Device ids for anonymous traffic: a keyed hash of (project, IP, User-Agent) with a random
salt per UTC day, so nobody (sessionary included, once a salt is gone) can link a visitor's
days together or get back to the IP.

The salt of a day is chosen by the event's date, created by whichever process asks first and
kept in the store (every process shares it: `SharedSecrets`, which each process re-reads every
few seconds and writes back should the store lose it), and destroyed at the end of the next
day: 48 h after its day began. An event is hashed with its day's salt and with the previous
day's while that one exists, so a session open at 23:55 continues past midnight.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from sessionary.store import SharedSecrets, Store

DAY_MS = 86_400_000
SALTS_NAMESPACE = "analytics.salts"


def day_of(ts: int) -> int:
    """The UTC day (days since the epoch) of a time in ms."""
    return ts // DAY_MS


class DeviceIds:
    def __init__(self, store: Store) -> None:
        self.namespace = store.namespace(SALTS_NAMESPACE, absolute_ttl=timedelta(days=2))
        self._clock = store.clock
        self._salts = SharedSecrets(self.namespace, "salt")

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
            return b""
        salt = await self._salts.get(
            f"analytics.salt:{day}",
            created_at=min(now, day * DAY_MS),
            expires_at=(day + 2) * DAY_MS,
        )
        return bytes.fromhex(salt)


def _hash(salt: bytes, project: str, ip: str, user_agent: str) -> str:
    digest = hashlib.blake2b(
        f"{project}\0{ip}\0{user_agent}".encode(), key=salt, digest_size=16
    ).hexdigest()
    return f"anon-{digest}"
