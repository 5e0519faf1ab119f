"""Runs and conversations as their callers see them, and the errors of the runs feature."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sessionary.errors import SessionaryError
from sessionary.logs import Cursor
from sessionary.model import Session

Status = Literal["queued", "running", "completed", "error", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "error", "cancelled"})
ACTIVE: frozenset[str] = frozenset({"queued", "running"})
Policy = Literal["reject", "enqueue", "interrupt"]


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    owner: str
    created_at: int


@dataclass(frozen=True, slots=True)
class Run:
    """A run of a conversation. Times are integer ms since the epoch (UTC), read from the
    store: `last_activity_at` is the later of its last status change and its last event."""

    id: str
    conversation_id: str
    owner: str
    status: Status
    created_at: int
    started_at: int | None
    last_activity_at: int
    finished_at: int | None
    cursor: Cursor | None  # of its last event
    input: Any = None
    result: Any = None
    error: str | None = None
    version: int = 0
    #: executions begun (each retry begins one more) and retries allowed after the first
    attempt: int = 0
    retries: int = 0

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def duration_ms(self) -> int | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @classmethod
    def of(cls, session: Session, cursor: Cursor | None, last_event_at: int | None) -> Run:
        data = session.data
        status_at = int(data.get("status_at", session.created_at))
        return cls(
            id=session.id,
            conversation_id=str(data["conversation_id"]),
            owner=str(session.subject),
            status=data["status"],
            created_at=session.created_at,
            started_at=data.get("started_at"),
            last_activity_at=max(status_at, last_event_at or 0),
            finished_at=data.get("finished_at"),
            cursor=cursor,
            input=data.get("input"),
            result=data.get("result"),
            error=data.get("error"),
            version=session.version,
            attempt=int(data.get("attempt", 0)),
            retries=int(data.get("retries", 0)),
        )


class RunsError(SessionaryError):
    """Base of the runs feature's errors."""


class ConversationNotFound(RunsError):
    code = "conversation_not_found"
    http_status = 404


class RunNotFound(RunsError):
    code = "run_not_found"
    http_status = 404


class NotOwner(RunsError):
    """The conversation or run exists but belongs to someone else."""

    code = "forbidden"
    http_status = 403


class ActiveRunExists(RunsError):
    """Starting a run with policy "reject" while the conversation has an active run."""

    code = "run_active"
    http_status = 409

    def __init__(self, run_id: str) -> None:
        super().__init__("the conversation already has an active run")
        self.run_id = run_id

    def details(self) -> dict[str, Any]:
        return {"activeRunId": self.run_id}


class RunFinished(RunsError):
    """The run already reached a terminal status: it cannot be cancelled or started."""

    code = "run_finished"
    http_status = 409

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(f"the run is already {status}")
        self.run_id = run_id
        self.status = status

    def details(self) -> dict[str, Any]:
        return {"runId": self.run_id, "status": self.status}


class RunBusy(RunsError):
    """Another worker holds the run's lease."""

    code = "run_busy"
    http_status = 409
