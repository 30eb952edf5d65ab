"""Bot drivers: how Cortex tells transcription bots to join (start) or leave (stop) a session's ODIN room.

The statuses and who sets which are ``models.sessions`` (its ``BotDriver`` protocol is what a driver
implements). Drivers:

- ``LocalBotDriver`` (``CORTEX_BOT_DRIVER=local``, the default): no external bot. It acknowledges each command
  in process and completes it **synchronously, inside the same request**: start → ``starting`` → ``active``,
  stop → ``stopping`` → ``stopped``, each transition its own transaction with its ``session.updated`` event.
  So with this driver a request that starts a session answers with it ``active``.
- ``RedisBotDriver`` (``CORTEX_BOT_DRIVER=redis``, needs ``REDIS_URL``): publishes one JSON command
  ``{"command": "start"|"stop", "sessionId", "projectId", "tenantId", "externalRoomId", "gateway", "title",
  "issuedAt"}`` on the Redis channel ``cortex:bot:commands`` and leaves the session ``starting``/``stopping``.
  Bot workers report what happened later through signed ingest (``bot.status.changed``), which records it with
  ``models.sessions.set_session_status(session_id, status, source="cortex:ingest")``. A publish that fails,
  or that no worker is subscribed to receive, raises ``BotCommandError`` and the session becomes ``error``.
"""

from __future__ import annotations

import orjson
import redis

from models.base import release_connection, rfc3339, utcnow
from models.sessions import BotCommandError, BotDriver, Session, set_session_status

COMMANDS_CHANNEL = "cortex:bot:commands"
DRIVERS = ("local", "redis")


class LocalBotDriver:
    """In-process bot stand-in: completes every command at once (synchronously, in the calling request)."""

    source = "cortex:api"

    def _walk(self, session: Session, steps: tuple[str, str]) -> None:
        """Move through ``steps`` from where the session is (already at the end: acknowledged, no change)."""
        remaining = steps[steps.index(session.status) + 1:] if session.status in steps else steps
        for status in remaining:
            set_session_status(session.id, status, source=self.source, project_id=session.project_id)

    def start(self, session: Session) -> None:
        """``starting`` (if not yet), then ``active``."""
        self._walk(session, ("starting", "active"))

    def stop(self, session: Session) -> None:
        """``stopping`` (if not yet), then ``stopped``."""
        self._walk(session, ("stopping", "stopped"))


class RedisBotDriver:
    """Publishes commands for external bot workers on ``cortex:bot:commands``."""

    def __init__(self, url: str | None = None, *, client: redis.Redis | None = None, channel: str = COMMANDS_CHANNEL):
        if client is None and not url:
            raise ValueError("RedisBotDriver needs a Redis URL (REDIS_URL)")
        self.client = client or redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        self.channel = channel

    @staticmethod
    def command(name: str, session: Session) -> dict:
        """The command message for a session."""
        return {
            "command": name,
            "sessionId": session.id,
            "projectId": session.project_id,
            "tenantId": session.tenant_id,
            "externalRoomId": session.external_room_id,
            "gateway": session.gateway,
            "title": session.title,
            "issuedAt": rfc3339(utcnow()),
        }

    def _publish(self, name: str, session: Session) -> None:
        message = orjson.dumps(self.command(name, session))
        release_connection()  # no pooled database connection waits on Redis
        try:
            receivers = self.client.publish(self.channel, message)
        except redis.RedisError as exc:
            raise BotCommandError(f"{name} command for session {session.id} not published: {exc}") from exc
        if not receivers:
            raise BotCommandError(f"no bot worker is subscribed to {self.channel}; {name} command for {session.id} lost")

    def start(self, session: Session) -> None:
        """Publish a start command."""
        self._publish("start", session)

    def stop(self, session: Session) -> None:
        """Publish a stop command."""
        self._publish("stop", session)


_drivers: dict[tuple[str, str | None], BotDriver] = {}


def bot_driver(settings) -> BotDriver:
    """The driver ``settings`` configure (``bot_driver``, ``redis_url``): one instance per driver and Redis URL
    in this process."""
    name = (settings.bot_driver or "local").strip().lower()
    if name not in DRIVERS:
        raise ValueError(f"CORTEX_BOT_DRIVER must be one of {', '.join(DRIVERS)}, not {name!r}")
    url = settings.redis_url
    key = (name, url if name == "redis" else None)
    driver = _drivers.get(key)
    if driver is None:
        driver = _drivers[key] = RedisBotDriver(url) if name == "redis" else LocalBotDriver()
    return driver
