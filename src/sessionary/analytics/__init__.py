"""Analytics sessionization: tracked events become sessions (see docs/analytics.md).

from sessionary.analytics import Sessionizer, TrackEvent
sessionizer = Sessionizer(store, sink=await sink_from_url("sqlite:///analytics.db"))
await sessionizer.ingest("shop", [TrackEvent.parse({"name": "screen_view", ...})])
"""

from sessionary.extras import needs

with needs("server", "sessionary.analytics"):
    from sessionary.analytics.events import BadEvent, TrackEvent
    from sessionary.analytics.metrics import AnalyticsMetrics
    from sessionary.analytics.service import Sessionizer
    from sessionary.sessionize import IngestOutcome, Rules, SessionRow, VacuumReport

__all__ = [
    "AnalyticsMetrics",
    "BadEvent",
    "IngestOutcome",
    "Rules",
    "SessionRow",
    "Sessionizer",
    "TrackEvent",
    "VacuumReport",
]
