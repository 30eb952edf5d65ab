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

Sanction commands (``apply_sanction`` / ``lift_sanction``, sent by the sanctions engine,
``cortex/engines/sanctions.py``) have one shape for both drivers (:func:`sanction_command`): ``{"command":
"sanction.apply"|"sanction.lift", "sessionId", "projectId", "tenantId", "externalRoomId", "sanction": {"id",
"type", "externalUserId", "participantId", "scope", "endAt"}, "issuedAt"}``. The Redis driver publishes it on
``cortex:bot:commands`` (no receiver: ``BotCommandError``; the session's status is not touched); the local
driver has no bot to tell, so it logs it and keeps the latest :data:`LOCAL_SANCTION_LOG` commands in
``LocalBotDriver.sanction_commands`` (tests read them). Delivery is at least once: bots treat a repeated apply
(or lift) of the same sanction id as one.
"""

from __future__ import annotations

import collections
import logging

import orjson
import redis

from models.base import release_connection, rfc3339, utcnow
from models.sessions import BotCommandError, BotDriver, Session, set_session_status

COMMANDS_CHANNEL = "cortex:bot:commands"
DRIVERS = ("local", "redis")
SANCTION_APPLY = "sanction.apply"
SANCTION_LIFT = "sanction.lift"
#: How many sanction commands a LocalBotDriver keeps (the oldest are dropped).
LOCAL_SANCTION_LOG = 1000

log = logging.getLogger("cortex.bots")


def session_command(name: str, session: Session, **fields) -> dict:
    """A command about a session: its name, the session's room and tenancy, ``fields``, and when it was issued."""
    return {
        "command": name, "sessionId": session.id, "projectId": session.project_id, "tenantId": session.tenant_id,
        "externalRoomId": session.external_room_id, **fields, "issuedAt": rfc3339(utcnow()),
    }


def sanction_command(name: str, session: Session, sanction: dict) -> dict:
    """The ``sanction.apply`` / ``sanction.lift`` command for a session (both drivers send this shape)."""
    return session_command(name, session, sanction=sanction)


class LocalBotDriver:
    """In-process bot stand-in: completes every command at once (synchronously, in the calling request)."""

    source = "cortex:api"

    def __init__(self):
        #: The sanction commands "sent", oldest first (at most LOCAL_SANCTION_LOG): no bot enforces them here.
        self.sanction_commands: collections.deque[dict] = collections.deque(maxlen=LOCAL_SANCTION_LOG)

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

    def _record(self, name: str, session: Session, sanction: dict) -> None:
        command = sanction_command(name, session, sanction)
        self.sanction_commands.append(command)
        log.info("local bot driver: %s %s (%s) for %s in session %s", name, sanction.get("id"), sanction.get("type"),
                 sanction.get("externalUserId"), session.id)

    def apply_sanction(self, session: Session, sanction: dict) -> None:
        """Record (and log) a ``sanction.apply`` command."""
        self._record(SANCTION_APPLY, session, sanction)

    def lift_sanction(self, session: Session, sanction: dict) -> None:
        """Record (and log) a ``sanction.lift`` command."""
        self._record(SANCTION_LIFT, session, sanction)


class RedisBotDriver:
    """Publishes commands for external bot workers on ``cortex:bot:commands``."""

    def __init__(self, url: str | None = None, *, client: redis.Redis | None = None, channel: str = COMMANDS_CHANNEL):
        if client is None and not url:
            raise ValueError("RedisBotDriver needs a Redis URL (REDIS_URL)")
        self.client = client or redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        self.channel = channel

    @staticmethod
    def command(name: str, session: Session) -> dict:
        """The start / stop command message for a session."""
        return session_command(name, session, gateway=session.gateway, title=session.title)

    def _publish(self, name: str, session: Session, command: dict | None = None) -> None:
        message = orjson.dumps(command if command is not None else self.command(name, session))
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

    def apply_sanction(self, session: Session, sanction: dict) -> None:
        """Publish a ``sanction.apply`` command (:func:`sanction_command`)."""
        self._publish(SANCTION_APPLY, session, sanction_command(SANCTION_APPLY, session, sanction))

    def lift_sanction(self, session: Session, sanction: dict) -> None:
        """Publish a ``sanction.lift`` command (:func:`sanction_command`)."""
        self._publish(SANCTION_LIFT, session, sanction_command(SANCTION_LIFT, session, sanction))


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
