"""The playground's settings (the `[playground]` table of sessionary.toml)."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, Field, IPvAnyNetwork, SecretStr

from sessionary.counters import MAX_COUNT
from sessionary.http.settings import STRICT, Duration


class PlaygroundSettings(BaseModel):
    model_config = STRICT

    enabled: bool = True
    namespace: str = "playground"
    session_ttl: Duration = timedelta(hours=24)
    #: searches per session, over its whole life
    session_limit: int = Field(50, ge=0, le=MAX_COUNT)
    #: searches per client IP per `ip_window`
    ip_limit: int = Field(100, ge=0, le=MAX_COUNT)
    ip_window: Duration = timedelta(days=1)
    #: searches in all per `global_window`
    global_limit: int = Field(10_000, ge=0, le=MAX_COUNT)
    global_window: Duration = timedelta(hours=1)
    #: new sessions per client IP per `ip_window` (a client dropping its cookie is still held)
    sessions_per_ip: int = Field(20, ge=0, le=MAX_COUNT)
    #: how long an indexed repository stays in the slot (never past its session)
    repo_ttl: Duration = timedelta(hours=24)
    #: proxies whose X-Forwarded-For is believed (CIDRs)
    trusted_proxies: list[IPvAnyNetwork] = Field(default_factory=list)
    #: key of the IP hash; by default a secret the store keeps for every process
    ip_hash_secret: SecretStr | None = None
    #: Secure cookies (turn off only for local development over plain http)
    secure_cookies: bool = True
    #: what a guarded search does when the store is down
    search_when_store_down: Literal["fail_open", "fail_closed"] = "fail_open"
    retry_after: int = Field(30, ge=1)
