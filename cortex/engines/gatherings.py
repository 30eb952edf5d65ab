"""The gatherings' clock: expires unfinished gatherings past their ``expiresAt`` and pending invitations past
theirs (``models.gatherings.expire_due``) every ``interval`` seconds.

An appointment expires 1 h after its ``endsAt`` (or ``startsAt``); a lobby or open gathering after
``CORTEX_GATHERING_IDLE_HOURS`` (24) without a change. Each expiry is a ``gathering.updated`` event with
``changes.status``; several processes may run the job: each gathering is locked and checked again.
"""

from __future__ import annotations

import logging
from datetime import datetime

from cortex.lib.background import PeriodicJob
from models.base import own_connection
from models.gatherings import expire_due

log = logging.getLogger("cortex.gatherings")

#: Seconds between two runs: how late past its expiresAt a gathering may expire.
EXPIRY_INTERVAL = 30.0


class GatheringExpiryJob(PeriodicJob):
    """Expires gatherings and invitations (see the module docstring)."""

    label = "gathering expiry"

    def __init__(self, interval: float = EXPIRY_INTERVAL):
        super().__init__("cortex-gathering-expiry", interval)

    @classmethod
    def from_settings(cls, settings) -> GatheringExpiryJob:
        return cls()

    def run_once(self, now: datetime | None = None) -> int:
        """One run; how many gatherings and invitations expired."""
        with own_connection():
            expired = expire_due(now)
        if expired:
            log.info("gathering expiry: %d gatherings and invitations expired", expired)
        return expired
