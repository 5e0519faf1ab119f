"""The runs feature's settings (the `[runs]` table of sessionary.toml)."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator

from sessionary.codec import MAX_SAFE_INT
from sessionary.http.settings import STRICT, Duration


class RunsUser(BaseModel):
    """A caller of the runs API: its key (Bearer) and the subject it acts as."""

    model_config = STRICT

    key: SecretStr = Field(min_length=16)
    subject: str = Field(min_length=1, max_length=256)


def exact_origin(text: str) -> str:
    """`text` as a browser sends it in `Origin` (scheme://host[:port], lower case, no path),
    else a ValueError: a CORS allow-list with credentials holds exact origins only, never
    `*` (a browser refuses `*` with credentials anyway, and any page could read the runs)."""
    if text.strip() == "*":
        raise ValueError("'*' is not allowed with credentials: list each origin")
    parts = urlsplit(text.strip())
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(f"{text!r} is not an origin: write it like 'https://app.example'")
    return f"{parts.scheme}://{parts.netloc.lower()}"


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
    #: "queue": every run started is put on the store's `runs` work queue, where
    #: `sessionary worker` processes (on any machine) claim and execute them, and so does
    #: this process when `handler` is set; "none": runs are executed by `handler` in this
    #: process, if set, else by the application (`Runs.producer`, or its Celery task)
    dispatch: Literal["none", "queue"] = "none"
    #: with `dispatch = "queue"` and a `handler`: how many runs this process executes at once
    concurrency: int = Field(16, ge=1, le=10_000)
    #: the origins of browser pages (other than the service's own) allowed to call the runs
    #: API with credentials (CORS); exact origins like "https://app.example", never "*"
    cors_origins: list[str] = Field(default_factory=list)
    #: the namespace (of `[namespaces]`) whose session cookie also authenticates a caller (the
    #: session's subject); None: Bearer keys only
    session_namespace: str | None = None
    #: the name of that session cookie as the browser sends it (`__Host-session` is read
    #: first when present)
    session_cookie: str = Field("session", min_length=1, max_length=256)

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, origins: list[str]) -> list[str]:
        return [exact_origin(origin) for origin in origins]
