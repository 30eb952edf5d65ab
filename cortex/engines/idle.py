"""The idle auto-stop: sessions whose room has been empty for ``idleTimeout`` seconds stop by themselves.

A session with ``idle_timeout`` > 0 in status ``starting`` or ``active`` is *idle* while no participant is
present (no open presence span, see ``models.presence``). Idle since = the later of its last span's ``left_at``
and its last status change (when it became ``starting``/``active``). Once idle for ``idle_timeout`` seconds it
is stopped through the same path as ``POST …/sessions/{id}/stop``: ``stopping`` and ``session.updated``
(source ``cortex:api`` — Cortex itself acted, as for the API; the event schema knows no other origin) commit,
then the bot driver gets the stop command (the local driver completes it to ``stopped``; the Redis driver
publishes it for the worker). An undeliverable command leaves the session in ``error``, as with the API.

:class:`IdleSessionSweeper` checks every ``interval`` seconds (default 5): one query selects the due sessions
(``models.sessions.idle_sessions``); each is re-checked under its row lock while it is stopped, so a participant
joining in between keeps it running. Several processes may run a sweeper: the re-check and the idempotent stop
make a double sweep harmless.
"""

from __future__ import annotations

import logging
from datetime import datetime

from cortex.integrations.bots import bot_driver
from cortex.lib.background import PeriodicJob
from models.base import as_utc, own_connection, utcnow
from models.sessions import BotDriver, Session, idle_sessions, stop_idle_session

log = logging.getLogger("cortex.idle")

#: Seconds between two sweeps: how late past its timeout an idle session may stop.
IDLE_SWEEP_INTERVAL = 5.0


class IdleSessionSweeper(PeriodicJob):
    """Stops idle sessions (see the module docstring) at start and then every ``interval`` seconds."""

    label = "idle sweep"

    def __init__(self, driver: BotDriver, interval: float = IDLE_SWEEP_INTERVAL):
        super().__init__("cortex-idle-sweeper", interval)
        self.driver = driver

    @classmethod
    def from_settings(cls, settings, interval: float = IDLE_SWEEP_INTERVAL) -> IdleSessionSweeper:
        """The sweeper with the bot driver ``settings`` configure (``bot_driver``, ``redis_url``)."""
        return cls(bot_driver(settings), interval)

    def run_once(self, now: datetime | None = None) -> int:
        """Stop every session idle past its timeout at ``now`` (default: the current time); how many were stopped
        (a stop whose command could not be delivered counts too: that session is in ``error``)."""
        now = as_utc(now) or utcnow()
        stopped = 0
        with own_connection():
            due = [row.id for row in idle_sessions(now).select(Session.id)]
            for session_id in due:
                try:
                    session = stop_idle_session(session_id, self.driver, now)
                except Exception:
                    log.exception("idle auto-stop of session %s failed", session_id)
                    continue
                if session is not None:
                    stopped += 1
                    log.info("session %s stopped after its idle timeout (status %s)", session_id, session.status)
        return stopped
