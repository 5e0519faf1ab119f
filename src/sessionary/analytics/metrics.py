"""Prometheus metrics of analytics sessionization."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AnalyticsMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry(auto_describe=True)
        self.registry = r
        self.events = Counter(
            "sessionary_analytics_events",
            "Tracked events by outcome: joined (a session), late, duplicate, unattached, refused",
            ["project", "outcome"],
            registry=r,
        )
        self.sessions = Counter(
            "sessionary_analytics_sessions",
            "Sessions started and ended",
            ["project", "event"],
            registry=r,
        )
        self.active = Gauge(
            "sessionary_analytics_active_sessions",
            "Open sessions (as of the last reaper run)",
            ["project"],
            registry=r,
            # a count of the whole store: across processes, the latest any reaper saw
            multiprocess_mode="mostrecent",
        )
        self.ingest_latency = Histogram(
            "sessionary_analytics_ingest_duration_seconds",
            "Time to sessionize one step (a batch, or the events of concurrent /track requests)",
            ["project"],
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
        )
        self.jobs = Counter(
            "sessionary_analytics_job_runs",
            "Runs of the reaper, the vacuum and the drainer",
            ["job"],
            registry=r,
        )
        self.found = Counter(
            "sessionary_analytics_job_findings",
            "What the jobs did: sessions closed by the reaper, vacuum cleanups by kind, rows "
            "drained to the sink, sink failures",
            ["job", "kind"],
            registry=r,
        )
