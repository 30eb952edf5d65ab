"""The sanctions engine: bot-enforced sanctions reach the bots of the sessions their players are in, and the clock's
transitions (a scheduled sanction coming into force, an active one expiring) are announced.

- **Commands** — a persistent :class:`cortex.events.dispatcher.Dispatcher` named ``sanctions`` reads the event log
  after its cursor and turns what it finds into bot commands (``BotDriver.apply_sanction`` / ``lift_sanction``,
  ``cortex/integrations/bots.py``: ``sanction.apply`` / ``sanction.lift``) for the types the bot enforces
  (``models.sanctions.BOT_TYPES``: ``mute``, ``listen_only``, ``shadow_mute``, ``text_only``):

  - ``sanction.created`` / ``.updated`` / ``.revoked``: the sanction is read again and its **current** state
    decides: in force and a bot type → apply (again: a changed ``endAt`` or ``scope`` reaches the bot); not (any
    more) — revoked, expired, its type changed to one the bot does not enforce — while the event shows it was
    bot-enforced → lift. Its sessions: the session it names, when that one is ``starting``/``active``; otherwise
    every ``starting``/``active`` session of the project in which the player is present (an open presence span,
    ``models.presence``). A warn, a ban, a scheduled sanction: no command.
  - ``participant.joined`` (signed ingest): the player, still present in that live session, gets an apply for
    every bot-type sanction in force for them there (``models.sanctions.in_force``; one naming another session
    does not count).
  - ``session.updated`` to ``active``: the bot that just joined gets an apply for each present player's sanctions
    and for those naming the session.

  Delivery is **at least once**: the cursor moves after the batch, so a crash (or two processes running this
  consumer: ``serve`` and ``worker``, like the webhook fan-out) sends a command again; commands are idempotent for
  bots (same sanction id, same effect), and because each is derived from the state read now, a late or repeated
  event never re-applies a sanction that has ended since. A command the driver cannot deliver
  (``BotCommandError``: Redis down, no bot subscribed) is logged and dropped, never retried and never fatal; a
  bot that (re)joins gets the commands again when its session becomes ``active``.
- **Clock** — :class:`SanctionClock` runs ``models.sanctions.announce_transitions`` every
  :data:`CLOCK_INTERVAL` seconds: each expiry or scheduled start becomes one ``sanction.updated`` (``changes``
  holds the previous ``status`` / ``isActive``; concurrent runs announce once), which the dispatcher above turns
  into the lift / apply.

The dispatcher polls every :data:`POLL_INTERVAL` seconds and is woken at once by writes of its own process
(``events_committed``). Its cursor starts at the beginning of the log on the very first run, like every
persistent consumer; the high-volume types it never needs are passed over reading only their ``seq``.
``drain()`` / ``tick()`` run everything inline (tests).
"""

from __future__ import annotations

import logging
from datetime import datetime

from cortex.events.dispatcher import ConsumerEngine, Dispatcher
from cortex.integrations.bots import bot_driver
from cortex.lib.background import PeriodicJob
from models.base import as_utc, own_connection, rfc3339, utcnow
from models.events import DomainEvent
from models.participants import Participant
from models.sanctions import BOT_TYPES, Sanction, announce_transitions, in_force, is_in_force
from models.sessions import BotCommandError, BotDriver, PresenceSpan, Session

log = logging.getLogger("cortex.sanctions")

CONSUMER = "sanctions"  # the event-log cursor of the command dispatcher
POLL_INTERVAL = 0.5  # seconds between two looks at the log when nothing wakes the dispatcher
CLOCK_INTERVAL = 10.0  # seconds between two announcements of what the clock changed (≤ 60: the bound)
LIVE = ("starting", "active")  # session statuses whose bot is (or is about to be) in the room
SANCTION_EVENTS = ("sanction.created", "sanction.updated", "sanction.revoked")
JOINED = "participant.joined"
SESSION_UPDATED = "session.updated"
APPLY, LIFT = "sanction.apply", "sanction.lift"
#: Types the dispatcher passes over without reading them (the bulk of the log; none matters here).
SKIPPED = frozenset({"message.created", "webhook.delivery.updated", "participant.left", "participant.created",
                     "participant.updated", "participant.deleted", "session.created"})


def _sanction_id(event: DomainEvent) -> str | None:
    resource = event.resource_id or ""
    return resource[len("sanction:"):] if resource.startswith("sanction:") else None


def _enforced_type(event: DomainEvent) -> str | None:
    """The bot type this event shows the sanction enforced before or at it (None: it was not bot-enforced)."""
    payload = event.payload if isinstance(event.payload, dict) else {}
    data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
    changes = payload.get("changes") if isinstance(payload.get("changes"), dict) else {}
    now_type = data.get("type")
    if data.get("isActive") is True and now_type in BOT_TYPES:
        return now_type
    before_type = changes.get("type", now_type)
    before_active = changes.get("isActive", data.get("isActive"))
    if event.type == "sanction.revoked":
        # A revoked body is never in force: it was, if it had started and not ended when it was revoked.
        start, end, revoked = data.get("startAt"), data.get("endAt"), data.get("revokedAt")
        before_active = bool(start and revoked and start <= revoked and (end is None or end > revoked))
    return before_type if before_active is True and before_type in BOT_TYPES else None


def command_sanction(row: Sanction, participant_id: str | None, type_: str | None = None) -> dict:
    """The ``sanction`` object of a bot command (``type_``: the type to name, e.g. the one a lift ends)."""
    return {"id": row.id, "type": type_ or row.type, "externalUserId": row.external_user_id,
            "participantId": row.participant_id or participant_id, "scope": row.scope, "endAt": rfc3339(row.end_at)}


class SanctionEngine(ConsumerEngine):
    """The command dispatcher and the clock (see the module doc)."""

    def __init__(self, driver: BotDriver, *, poll_interval: float = POLL_INTERVAL,
                 clock_interval: float = CLOCK_INTERVAL):
        self.driver = driver
        self.dispatcher = Dispatcher(CONSUMER, self.handle, poll_interval=poll_interval, skip_types=SKIPPED)
        self.clock = self.companion = SanctionClock(self.dispatcher.wake, clock_interval)
        self.sent = 0  # commands the driver accepted (tests read it)
        self.failed = 0  # commands the driver could not deliver
        self._batch: set[tuple[str, str, str]] | None = None

    @classmethod
    def from_settings(cls, settings) -> SanctionEngine:
        """The engine with the bot driver ``settings`` configure (``bot_driver``, ``redis_url``)."""
        return cls(bot_driver(settings))

    # ------------------------------------------------------------------ the batch

    def handle(self, events: list[DomainEvent]) -> None:
        """Turn a batch of events into commands (each sanction, join and session start once per batch)."""
        sanctions: dict[str, tuple[str, str | None]] = {}  # id → (project id, bot type it enforced, if any)
        joins: dict[tuple[str, str, str], None] = {}  # (project id, session id, external user id)
        started: dict[tuple[str, str], None] = {}  # (project id, session id)
        for event in events:
            if event.project_id is None:
                continue
            payload = event.payload if isinstance(event.payload, dict) else {}
            data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
            if event.type in SANCTION_EVENTS:
                sanction_id = _sanction_id(event)
                if sanction_id:
                    _project, enforced = sanctions.get(sanction_id, (event.project_id, None))
                    sanctions[sanction_id] = (event.project_id, _enforced_type(event) or enforced)
            elif event.type == JOINED:
                session_id, user = data.get("sessionId"), data.get("userId")
                if isinstance(session_id, str | int) and isinstance(user, str | int):
                    joins[(event.project_id, str(session_id), str(user))] = None
            elif event.type == SESSION_UPDATED:
                changes = payload.get("changes") if isinstance(payload.get("changes"), dict) else {}
                if data.get("status") == "active" and "status" in changes and changes["status"] != "active":
                    started[(event.project_id, str(data.get("id")))] = None
        now = utcnow()
        self._batch = set()  # (command, session, sanction): each sent once per batch
        try:
            for sanction_id, (project_id, enforced) in sanctions.items():
                self.reconcile(project_id, sanction_id, enforced, now)
            for project_id, session_id, user in joins:
                self.joined(project_id, session_id, user, now)
            for project_id, session_id in started:
                self.session_started(project_id, session_id, now)
        finally:
            self._batch = None

    def reconcile(self, project_id: str, sanction_id: str, enforced: str | None, now: datetime | None = None) -> int:
        """Apply the sanction where it belongs if it is a bot type in force now; else lift it there when it was
        bot-enforced (``enforced``: the bot type it had). How many commands went out."""
        now = now or utcnow()
        row = Sanction.get_or_none((Sanction.id == sanction_id) & (Sanction.project_id == project_id))
        if row is None:
            return 0
        if row.type in BOT_TYPES and is_in_force(row, now):
            name, type_ = APPLY, row.type
        elif enforced is not None:
            name, type_ = LIFT, (row.type if row.type in BOT_TYPES else enforced)
        else:
            return 0
        participant_id = self._participant_id(row.project_id, row.external_user_id)
        sent = 0
        for session in self._sessions_of(row):
            sent += self._send(name, session, command_sanction(row, participant_id, type_))
        return sent

    def joined(self, project_id: str, session_id: str, user: str, now: datetime | None = None) -> int:
        """A player joined a session: apply their bot-type sanctions in force there, while they are present."""
        now = now or utcnow()
        session = Session.get_or_none((Session.id == session_id) & (Session.project == project_id))
        if session is None or session.status not in LIVE or not self._present(session.id, user):
            return 0
        rows = [row for row in in_force(project_id, user, BOT_TYPES, now) if row.session_id in (None, session.id)]
        participant_id = self._participant_id(project_id, user) if rows else None
        return sum(self._send(APPLY, session, command_sanction(row, participant_id)) for row in rows)

    def session_started(self, project_id: str, session_id: str, now: datetime | None = None) -> int:
        """A session's bot is in the room: apply what is in force there (present players', and the session's own)."""
        now = now or utcnow()
        session = Session.get_or_none((Session.id == session_id) & (Session.project == project_id))
        if session is None or session.status not in LIVE:
            return 0
        present = sorted({user for (user,) in PresenceSpan.select(PresenceSpan.external_user_id).where(
            (PresenceSpan.session == session.id) & PresenceSpan.left_at.is_null()).tuples()})
        rows: dict[str, Sanction] = {}
        for user in present:
            rows.update((row.id, row) for row in in_force(project_id, user, BOT_TYPES, now)
                        if row.session_id in (None, session.id))
        named = Sanction.select().where((Sanction.project_id == project_id) & (Sanction.session_id == session.id)
                                        & Sanction.type.in_(list(BOT_TYPES)) & Sanction.revoked_at.is_null())
        rows.update((row.id, row) for row in named if is_in_force(row, now))
        return sum(self._send(APPLY, session,
                              command_sanction(row, self._participant_id(project_id, row.external_user_id)))
                   for row in rows.values())

    # ------------------------------------------------------------------ reads

    @staticmethod
    def _participant_id(project_id: str, user: str) -> str | None:
        return (Participant.select(Participant.id)
                .where((Participant.project == project_id) & (Participant.external_user_id == user)).scalar())

    @staticmethod
    def _present(session_id: str, user: str) -> bool:
        return PresenceSpan.select().where((PresenceSpan.session == session_id)
                                           & (PresenceSpan.external_user_id == user)
                                           & PresenceSpan.left_at.is_null()).exists()

    @staticmethod
    def _sessions_of(row: Sanction) -> list[Session]:
        """The live sessions a sanction concerns: the one it names, else those its player is present in."""
        if row.session_id:
            session = Session.get_or_none((Session.id == row.session_id) & (Session.project == row.project_id))
            return [session] if session is not None and session.status in LIVE else []
        return list(Session.select().join(PresenceSpan, on=(PresenceSpan.session == Session.id))
                    .where((PresenceSpan.project == row.project_id)
                           & (PresenceSpan.external_user_id == row.external_user_id)
                           & PresenceSpan.left_at.is_null() & Session.status.in_(list(LIVE)))
                    .distinct().order_by(Session.id))

    # ------------------------------------------------------------------ the driver

    def _send(self, name: str, session: Session, sanction: dict) -> int:
        """One command; 1 when the driver took it, 0 when it failed (logged, never raised) or this batch sent it
        already (a join and a new sanction of the same player in one batch)."""
        if self._batch is not None:
            key = (name, session.id, sanction["id"])
            if key in self._batch:
                return 0
            self._batch.add(key)
        method = self.driver.apply_sanction if name == APPLY else self.driver.lift_sanction
        try:
            method(session, sanction)
        except BotCommandError as exc:
            self.failed += 1
            log.warning("%s of sanction %s for session %s not delivered: %s", name, sanction["id"], session.id,
                        exc.detail)
            return 0
        except Exception:
            self.failed += 1
            log.exception("%s of sanction %s for session %s failed", name, sanction["id"], session.id)
            return 0
        self.sent += 1
        return 1

    # ------------------------------------------------------------------ running

    def tick(self, now: datetime | None = None) -> int:
        """One clock run (announce what ``now`` changed), then :meth:`drain`; how many transitions."""
        announced = self.clock.run_once(now)
        self.drain()
        return announced


class SanctionClock(PeriodicJob):
    """Announces what the clock changed (``models.sanctions.announce_transitions``) every ``interval`` seconds;
    several processes may run it (each transition is announced once)."""

    label = "sanction clock"
    BATCH = 500

    def __init__(self, announced, interval: float = CLOCK_INTERVAL):
        super().__init__("cortex-sanction-clock", interval)
        self.announced = announced  # called after a run that announced something (wakes the dispatcher)

    def run_once(self, now: datetime | None = None) -> int:
        """Announce every transition due at ``now`` (default: the current time); how many."""
        now = as_utc(now) or utcnow()
        total = 0
        with own_connection():
            while True:
                batch = announce_transitions(now, limit=self.BATCH)
                total += len(batch)
                if len(batch) < self.BATCH:
                    break
        if total:
            log.info("sanction clock: announced %d transitions", total)
            self.announced()
        return total
