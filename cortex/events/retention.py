"""Event-log retention: events older than ``CORTEX_EVENT_RETENTION_DAYS`` are deleted every hour, never one a
persistent consumer has not processed yet (``models.events.prune_events``). Age is the log's clock — when Cortex
received an event — never the time an event reports (a signed-ingest sender's ``timestamp``). The same run deletes
expired signed-ingest replay records (``models.ingest.prune_replays``; ingest itself does so every minute)."""

from __future__ import annotations

import logging

from cortex.lib.background import PeriodicJob
from models.base import own_connection
from models.events import DEFAULT_RETENTION_DAYS, prune_events
from models.ingest import prune_replays

log = logging.getLogger("cortex.retention")

RETENTION_INTERVAL = 3600.0  # seconds between two prunes


class RetentionJob(PeriodicJob):
    """Runs :func:`prune_events` at start and then every ``interval`` seconds in the background."""

    label = "event retention"

    def __init__(self, retention_days: float = DEFAULT_RETENTION_DAYS, interval: float = RETENTION_INTERVAL):
        super().__init__("cortex-event-retention", interval)
        self.retention_days = retention_days

    @classmethod
    def from_settings(cls, settings) -> RetentionJob:
        """The job for ``settings.event_retention_days`` (7 days when the field is absent)."""
        return cls(getattr(settings, "event_retention_days", DEFAULT_RETENTION_DAYS))

    def run_once(self) -> int:
        """Prune once; the number of events deleted."""
        with own_connection():
            deleted = prune_events(self.retention_days)
            prune_replays()
        if deleted:
            log.info("event retention: deleted %d events older than %s days", deleted, self.retention_days)
        return deleted
