"""The playground's settings (the `[playground]` table of sessionary.toml)."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal, Self

from pydantic import BaseModel, Field, IPvAnyNetwork, SecretStr, model_validator

from sessionary.clock import to_ms
from sessionary.contract import MAX_RATE_PRODUCT, CounterAlgorithm
from sessionary.counters import MAX_COUNT
from sessionary.http.settings import STRICT, Duration


class PlaygroundSettings(BaseModel):
    model_config = STRICT

    enabled: bool = True
    namespace: str = "playground"
    session_ttl: Duration = timedelta(hours=24)
    #: searches per session, over its whole life (or per `session_window`, see below)
    session_limit: int = Field(50, ge=0, le=MAX_COUNT)
    #: searches per client IP per `ip_window`
    ip_limit: int = Field(100, ge=0, le=MAX_COUNT)
    ip_window: Duration = timedelta(days=1)
    #: searches in all per `global_window`
    global_limit: int = Field(10_000, ge=0, le=MAX_COUNT)
    global_window: Duration = timedelta(hours=1)
    #: new sessions per client IP per `ip_window` (a client dropping its cookie is still held)
    sessions_per_ip: int = Field(20, ge=0, le=MAX_COUNT)
    #: how each layer counts (docs/quotas.md): "fixed" windows (the session's spans its whole
    #: life), "sliding" window counters, or "gcra" (the limit refilled evenly over the window,
    #: a burst of up to the limit); the ip layer's counts both searches and new sessions
    session_algorithm: CounterAlgorithm = "fixed"
    ip_algorithm: CounterAlgorithm = "fixed"
    global_algorithm: CounterAlgorithm = "fixed"
    #: the session layer's window when it slides or refills (a fixed one is the session's life)
    session_window: Duration = timedelta(hours=24)
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

    @model_validator(mode="after")
    def _rates_are_computable(self) -> Self:
        """A sliding or gcra layer is refused here, at startup, rather than at every search:
        it needs a limit of at least 1 (0 blocks all: a fixed limit of 0 says so, with the
        moment its window ends) and limit * window ms within 2^52 (docs/quotas.md)."""
        layers = (
            ("session", self.session_algorithm, self.session_limit, self.session_window),
            ("ip", self.ip_algorithm, self.ip_limit, self.ip_window),
            ("ip", self.ip_algorithm, self.sessions_per_ip, self.ip_window),
            ("global", self.global_algorithm, self.global_limit, self.global_window),
        )
        for layer, algorithm, limit, window in layers:
            if algorithm != "fixed" and not 1 <= limit * to_ms(window) <= MAX_RATE_PRODUCT:
                raise ValueError(
                    f"the {layer} layer counts by {algorithm}: each of its limits is at least 1,"
                    " with limit * window in ms at most 2^52"
                )
        return self
