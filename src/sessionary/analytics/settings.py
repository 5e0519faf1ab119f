"""The analytics feature's settings (the `[analytics]` table of sessionary.toml).

[analytics]
sink = "sqlite:///sessionary-analytics.db"     # or postgresql://user@host/db, clickhouse://user@host:8123/db

[analytics.projects.shop]
key = "a-long-random-project-key"
timeout = "30m"
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, Field, IPvAnyNetwork, SecretStr, field_validator

from sessionary.analytics.service import check_project
from sessionary.clock import to_ms
from sessionary.errors import ValidationError
from sessionary.http.settings import STRICT, Duration
from sessionary.sessionize import Rules

DEFAULT_SINK = "sqlite:///sessionary-analytics.db"


class ProjectSettings(BaseModel):
    model_config = STRICT

    #: the key `POST /api/v1/track` takes for this project (Bearer)
    key: SecretStr = Field(min_length=16)
    #: inactivity that ends a session: exactly this much between events still extends it
    timeout: Duration = timedelta(minutes=30)
    #: the longest a session runs before the next event rolls to a new one (None: no limit)
    max_length: Duration | None = timedelta(hours=24)
    #: how far behind a device's newest event an event may come and still count for sessions
    lateness: Duration = timedelta(minutes=15)

    def rules(self, settings: AnalyticsSettings) -> Rules:
        return Rules(
            timeout_ms=to_ms(self.timeout),
            max_length_ms=None if self.max_length is None else to_ms(self.max_length),
            lateness_ms=to_ms(self.lateness),
            reap_lag_ms=to_ms(settings.reap_lag),
        )


class AnalyticsSettings(BaseModel):
    model_config = STRICT

    enabled: bool = True
    #: where sessions and events go: sqlite:///path.db, postgresql://... or clickhouse://...
    sink: str = DEFAULT_SINK
    projects: dict[str, ProjectSettings] = Field(default_factory=dict)
    #: proxies whose X-Forwarded-For is believed for /track's client IP (CIDRs)
    trusted_proxies: list[IPvAnyNetwork] = Field(default_factory=list)
    #: /track batches in flight at once, by their bodies' bytes (one always fits); past it
    #: /track answers 503 `overloaded` with Retry-After. Handling a batch holds about ten
    #: times its size, so this caps /track's memory near 10 x max_in_flight (80 MiB)
    max_in_flight: int = Field(8 * 1024 * 1024, ge=64 * 1024)
    #: the background jobs `sessionary serve` runs (and `sessionary reap --analytics`)
    jobs: bool = True
    reap_every: Duration = timedelta(seconds=10)
    #: the wall-clock backstop: a session is closed timeout + this after its last event,
    #: even when no newer event of its project arrives
    reap_lag: Duration = timedelta(minutes=5)
    drain_every: Duration = timedelta(seconds=1)
    vacuum_every: Duration = timedelta(hours=1)
    #: state older than this is forgotten by the vacuum (open sessions are closed first)
    vacuum_age: Duration = timedelta(days=7)

    @field_validator("projects")
    @classmethod
    def _project_ids(cls, projects: dict[str, ProjectSettings]) -> dict[str, ProjectSettings]:
        for project in projects:
            try:
                check_project(project)
            except ValidationError as exc:
                raise ValueError(f"{project!r}: {exc}") from None
        return projects

    def default_rules(self) -> Rules:
        """The rules of a project ingested through the Python API but not configured."""
        return Rules(reap_lag_ms=to_ms(self.reap_lag))

    def rules(self) -> dict[str, Rules]:
        return {name: project.rules(self) for name, project in self.projects.items()}

    def keys(self) -> dict[str, str]:
        return {name: p.key.get_secret_value() for name, p in self.projects.items()}
