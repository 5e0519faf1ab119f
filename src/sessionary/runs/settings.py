"""The runs feature's settings (the `[runs]` table of sessionary.toml)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, Field, SecretStr

from sessionary.codec import MAX_SAFE_INT
from sessionary.http.settings import STRICT, Duration


class RunsUser(BaseModel):
    """A caller of the runs API: its key (Bearer) and the subject it acts as."""

    model_config = STRICT

    key: SecretStr = Field(min_length=16)
    subject: str = Field(min_length=1, max_length=256)


class RunsSettings(BaseModel):
    model_config = STRICT

    enabled: bool = True
    #: how long a conversation lives, from its creation
    conversation_ttl: Duration = timedelta(days=30)
    #: the longest a run may last, from its creation
    run_max_age: Duration = timedelta(hours=24)
    #: how long a finished run and its events stay readable
    retention: Duration = timedelta(hours=1)
    #: a worker renews its lease at a third of this; silent longer, its run errors
    lease_ttl: Duration = timedelta(seconds=30)
    #: events kept per run (oldest trimmed first), and their maximum age
    log_max_length: int = Field(10_000, ge=1, le=MAX_SAFE_INT)
    log_max_age: Duration | None = None
    #: the guess of a run's duration before any run of its conversation or namespace ended
    default_duration: Duration = timedelta(seconds=30)
    #: an event stream whose reader takes nothing for this long is disconnected (it resumes
    #: with Last-Event-ID); until then it holds at most its socket buffer and one page
    stream_send_timeout: Duration = timedelta(seconds=30)
    users: list[RunsUser] = Field(default_factory=list)
    #: "package.module:function" producing each run started over HTTP in the service's own
    #: process (see sessionary.runs.worker); None: the application's workers do it
    handler: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
