"""The public values: `Session`, `ConsumeResult`, `SessionEvent`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sessionary.clock import to_datetime
from sessionary.codec import decode
from sessionary.contract import Lifetime, Record

EventKind = Literal["created", "updated", "rotated", "deleted", "expired"]
#: Why a session ended, on `deleted` and `expired` events: "deleted" (`delete`), "revoked"
#: (`revoke_subject`), "cleared" (`clear`), "evicted" (to make room for a newer session of
#: its subject under `max_sessions_per_subject`), or "expired" (its time ran out)
EndReason = Literal["deleted", "revoked", "cleared", "evicted", "expired"]
EVENT_KINDS: tuple[EventKind, ...] = ("created", "updated", "rotated", "deleted", "expired")


@dataclass(frozen=True, slots=True)
class Session:
    """A snapshot of one session. Times are integer ms since the epoch, UTC.

    `data` and `metadata` are fresh copies: changing them changes nothing stored; write
    with `Namespace.update`.

    `lifetime` is the one the session lives by: its own when `own_lifetime` (set by
    `create`/`rotate`/`update` with `idle_ttl`/`absolute_ttl`, "remember me"), else its
    namespace's policy when the snapshot was taken.
    """

    id: str
    namespace: str
    subject: str | None
    created_at: int
    last_seen_at: int
    expires_at: int
    version: int
    data: dict[str, Any]
    metadata: dict[str, str]
    counters: Mapping[str, int]
    lifetime: Lifetime
    own_lifetime: bool

    @classmethod
    def from_record(cls, namespace: str, record: Record, policy: Lifetime) -> Session:
        """The snapshot of `record`, a session of the namespace `namespace` whose policy is
        `policy`."""
        return cls(
            id=record.id,
            namespace=namespace,
            subject=record.subject,
            created_at=record.created_at,
            last_seen_at=record.last_seen_at,
            expires_at=record.expires_at,
            version=record.version,
            data=decode(record.data),
            metadata=decode(record.metadata),
            counters=record.counters,
            lifetime=policy.of(record),
            own_lifetime=record.lifetime is not None,
        )

    @property
    def idle_ttl(self) -> timedelta | None:
        """How long the session lives without activity (None: no idle limit)."""
        return self.lifetime.idle_ttl

    @property
    def absolute_ttl(self) -> timedelta | None:
        """How long after `created_at` it ends whatever its activity (None: no cap)."""
        return self.lifetime.absolute_ttl

    @property
    def expires(self) -> datetime:
        """`expires_at` as an aware UTC datetime."""
        return to_datetime(self.expires_at)

    @property
    def created(self) -> datetime:
        """`created_at` as an aware UTC datetime."""
        return to_datetime(self.created_at)

    def __repr__(self) -> str:  # never print a whole id: it is a bearer credential
        return (
            f"Session(id={self.id[:8]!r}..., namespace={self.namespace!r}, "
            f"subject={self.subject!r}, version={self.version}, expires_at={self.expires_at})"
        )


@dataclass(frozen=True, slots=True)
class ConsumeResult:
    """What a counter charge did. `remaining` and `limit` are None for an unlimited counter."""

    allowed: bool
    used: int
    limit: int | None

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """A change in a session's life, delivered to `Store.on` listeners.

    `session` is its state after the change (for `deleted` and `expired`, the last state
    it had). For `rotated`, `previous_id` is the id that stopped working. For `deleted` and
    `expired`, `reason` says why it ended (None on the other kinds).
    """

    kind: EventKind
    session: Session
    previous_id: str | None = None
    reason: EndReason | None = None

    @property
    def namespace(self) -> str:
        return self.session.namespace
