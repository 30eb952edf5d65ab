"""Transcription-bot sessions of a project: creation, listing, bot start/stop, status reports, and who is
present in a session's room (presence spans; recording joins and leaves and the analytics over them are
``models.presence``).

Session statuses::

    created ──start──▶ starting ──▶ active ──stop──▶ stopping ──▶ stopped
                                    any status ──▶ error

- ``created``: stored, no command sent yet (``createSession`` with ``autoStart: false``).
- ``starting``: Cortex sent a start command; the bot is joining the room.
- ``active``: the bot is in the room and processing.
- ``stopping``: Cortex sent a stop command; the bot is leaving.
- ``stopped``: the bot left. A stopped (or failed) session may be started again.
- ``error``: a command could not be delivered, or a worker reported a failure.

Cortex records ``starting``/``stopping`` itself when it sends a command (:func:`start_session` /
:func:`stop_session`: one transaction with its ``session.updated`` event, committed before the driver is
called); starting an ``active``/``starting`` session (or stopping a ``stopping``/``stopped`` one) sends the
command again without a status change or event. A :class:`BotDriver` (``cortex/integrations/bots.py``)
delivers the command and reports what the bot did through :func:`set_session_status`. Every write is one transaction
together with its domain event (``session.created``; ``session.updated`` carrying the previous values of the
changed fields in ``changes``). A bot command is sent only after the transaction that recorded it
(``starting``/``stopping``) committed, so a worker never acts on a state that could still roll back; a command
that cannot be delivered moves the session to ``error``. A session reaching ``stopped``/``error`` closes its open
presence spans; a ``starting``/``active`` one with ``idle_timeout`` > 0 and nobody present for that long is
stopped by ``cortex.engines.idle.IdleSessionSweeper`` (:func:`idle_sessions`, :func:`stop_idle_session`).
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta
from typing import Protocol

import peewee as pw

from models.base import BaseModel, Prepared, UTCDateTimeField, utcnow
from models.identity import Project
from models.participants import Participant


class Session(BaseModel):
    """A bot session in one external (ODIN) room."""

    project = pw.ForeignKeyField(Project, backref="sessions", on_delete="CASCADE")
    tenant_id = pw.CharField(max_length=36)
    external_room_id = pw.TextField()
    gateway = pw.TextField(default="gateway.odin.4players.io")
    title = pw.TextField()
    created_by_user_id = pw.CharField(max_length=64)
    status = pw.CharField(max_length=32, default="created")
    # Idle timeout in seconds, stored as given (None/0: no auto-stop). Enforced by the idle sweeper: a
    # starting/active session whose room has had nobody present (PresenceSpan) for this long is stopped.
    idle_timeout = pw.DoubleField(null=True)
    updated_at = UTCDateTimeField(default=utcnow)
    # When the status last changed (migration 5; None only on rows older than it, read as updated_at): the
    # start of the idle clock of a session that became starting/active.
    status_changed_at = UTCDateTimeField(null=True, default=utcnow)

    class Meta:
        indexes = ((("project", "created_at"), False),)


class PresenceSpan(BaseModel):
    """One participant's stay in a session's room (one peer connection): ``[joined_at, left_at)``, open while
    ``left_at`` is None (see ``models.presence``)."""

    project = pw.ForeignKeyField(Project, on_delete="CASCADE")
    session = pw.ForeignKeyField(Session, backref="presence", on_delete="CASCADE")
    # Presence history goes with the participant (DELETE …/participants/{id}).
    participant = pw.ForeignKeyField(Participant, backref="presence", on_delete="CASCADE")
    external_user_id = pw.TextField()
    peer_id = pw.TextField(null=True)
    joined_at = UTCDateTimeField(default=utcnow)
    left_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = "presence_span"
        indexes = (
            (("project", "joined_at"), False),
            (("session", "left_at"), False),
            # Open spans of a project (peer limit) and spans overlapping an analytics range (migration 5).
            (("project", "left_at"), False),
        )


MODELS = [Session]


# ---------------------------------------------------------------- domain operations
from models.base import (  # noqa: E402
    DomainError,
    as_utc,
    invalid,
    is_sqlite,
    locked,
    not_found,
    page_bounds,
    rfc3339,
    rfc3339_raw,
    transaction,
)
from models.events import changed_fields, emit  # noqa: E402
from models.settings import AppSettings, is_configured  # noqa: E402

log = logging.getLogger("cortex.sessions")

#: Every status a session can have (see the module docstring for the transitions).
STATUSES = ("created", "starting", "active", "stopping", "stopped", "error")
#: Statuses in which the bot is out of the room: spans are closed, joins are recorded closed.
ENDED = ("stopped", "error")
#: Statuses the idle auto-stop watches.
IDLE_WATCHED = ("starting", "active")
DEFAULT_GATEWAY = "gateway.odin.4players.io"
_TICK = timedelta(milliseconds=1)  # the precision both databases keep


class BotCommandError(DomainError):
    """A bot driver could not deliver a command (raised by drivers; the session is then marked ``error``):
    503 for the caller."""

    def __init__(self, detail: str):
        super().__init__("unavailable", detail)


class BotDriver(Protocol):
    """Delivers bot commands for a session; implementations live in ``cortex/integrations/bots.py``."""

    def start(self, session: Session) -> None:
        """Ask a bot to join the session's room; raise BotCommandError when the command cannot be delivered."""

    def stop(self, session: Session) -> None:
        """Ask the session's bot to leave; raise BotCommandError when the command cannot be delivered."""

    def apply_sanction(self, session: Session, sanction: dict) -> None:
        """Tell the session's bot to enforce a sanction (``sanction.apply``); ``sanction`` is ``{id, type,
        externalUserId, participantId, scope, endAt}``. Idempotent for the bot: the same sanction may be applied
        again (at-least-once delivery; a changed ``endAt`` or ``scope`` replaces the previous one). Raise
        BotCommandError when the command cannot be delivered."""

    def lift_sanction(self, session: Session, sanction: dict) -> None:
        """Tell the session's bot to stop enforcing a sanction (``sanction.lift``; revoked, expired, or no longer a
        bot-enforced type); idempotent like :meth:`apply_sanction`."""


# ---------------------------------------------------------------- the SessionResponse shape (one place)


def _number(value: float | None):
    """A stored float as JSON wants it: 300.0 → 300."""
    if value is None or not value.is_integer() or abs(value) >= 2**53:
        return value
    return int(value)


def _body(id_, tenant_id, room, project_id, gateway, title, creator, created_at, status, idle_timeout) -> dict:
    body = {
        "id": id_,
        "tenantId": tenant_id,
        "externalRoomId": room,
        "projectId": project_id,
        "gateway": gateway,
        "title": title,
        "createdByUserId": creator,
        "createdAt": created_at,
        "status": status,
    }
    if idle_timeout is not None:
        body["idleTimeout"] = _number(idle_timeout)
    return body


def session_body(session: Session) -> dict:
    """SessionResponse of a model instance (also the ``data`` of every session event)."""
    return _body(session.id, session.tenant_id, session.external_room_id, session.project_id, session.gateway,
                 session.title, session.created_by_user_id, rfc3339(session.created_at), session.status,
                 session.idle_timeout)


#: The listing, newest first; raw rows in _body's argument order (see models.base.Prepared).
SESSION_ROWS = Prepared(
    lambda project, limit, offset: Session.select(
        Session.id, Session.tenant_id, Session.external_room_id, Session.project, Session.gateway, Session.title,
        Session.created_by_user_id, Session.created_at, Session.status, Session.idle_timeout,
    )
    .where(Session.project == project)
    .order_by(Session.created_at.desc(), Session.id.desc())
    .limit(limit)
    .offset(offset)
)

#: At most this many sessions per answer of ``GET …/sessions`` (its ``limit`` default and ceiling).
MAX_LISTED_SESSIONS = 1000


def list_session_bodies(project: Project, limit=None, offset=None) -> list[dict]:
    """SessionResponse of the project's sessions, newest first, a page of at most ``MAX_LISTED_SESSIONS``
    (``limit``/``offset`` read leniently, as every list: ``models.base.page_bounds``; hot path: raw rows)."""
    limit, offset = page_bounds(limit, offset, default=MAX_LISTED_SESSIONS, maximum=MAX_LISTED_SESSIONS)
    return [
        _body(i, t, room, pid, gw, title, creator, rfc3339_raw(created), status, idle)
        for i, t, room, pid, gw, title, creator, created, status, idle
        in SESSION_ROWS.rows(project=project.id, limit=limit, offset=offset)
    ]


# ---------------------------------------------------------------- reads and shared steps


def get_session(project: Project, session_id: str) -> Session:
    """The project's session with this id; 404 for an unknown id or another project's session."""
    session = Session.get_or_none(Session.id == session_id, Session.project == project.id)
    if session is None:
        raise not_found(f"Session {session_id}")
    return session


def _session_for_update(project: Project, session_id: str) -> Session:
    session = locked(Session.select().where(Session.id == session_id, Session.project == project.id)).first()
    if session is None:
        raise not_found(f"Session {session_id}")
    return session


def require_configured_settings(project: Project) -> None:
    """400 unless the project's app settings exist and their token provider is complete (the bot needs it)."""
    row = AppSettings.get_or_none(AppSettings.project == project.id)
    if row is None or not is_configured(row, project):
        raise invalid(
            f"The app settings of project {project.id} are not configured; the bot needs a token provider "
            "(PUT /api/projects/{projectId}/settings)"
        )


def _emit(session: Session, action: str, data: dict, changes: dict | None = None, source: str = "cortex:api"):
    emit(f"session.{action}", tenant_id=session.tenant_id, project_id=session.project_id,
         resource_id=f"session:{session.id}", action=action, data=data, changes=changes, source=source)


def _later_than(previous: datetime | None) -> datetime:
    """Now, but strictly after ``previous`` (keeps creation and update order visible at ms precision)."""
    now = utcnow()
    return now if previous is None or now > previous else previous + _TICK


def _change_status(session: Session, status: str, source: str) -> bool:
    """Inside a transaction: set the status, emit ``session.updated`` with the previous values; False if unchanged."""
    if session.status == status:
        return False
    before = session_body(session)
    session.status = status
    session.updated_at = session.status_changed_at = _later_than(session.updated_at)
    session.save(only=[Session.status, Session.updated_at, Session.status_changed_at])
    if status in ENDED:  # the bot left the room: nobody can be seen present any more
        close_open_spans(session.id, session.updated_at)
    after = session_body(session)
    _emit(session, "updated", after, changed_fields(before, after), source)
    return True


# ---------------------------------------------------------------- operations (one transaction per write)


def _clean_create(title, external_room_id, gateway, idle_timeout) -> tuple[str, str, str, float | None]:
    if not isinstance(title, str):
        raise invalid("title must be a string")
    if not isinstance(external_room_id, str) or not external_room_id.strip():
        raise invalid("externalRoomId must not be empty")
    if gateway is not None and not isinstance(gateway, str):
        raise invalid("gateway must be a string")
    if idle_timeout is not None:
        if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, int | float):
            raise invalid("idleTimeout must be a number of seconds")
        if not math.isfinite(idle_timeout) or idle_timeout < 0:
            raise invalid("idleTimeout must be a number of seconds ≥ 0 (0 means no auto-stop)")
        idle_timeout = float(idle_timeout)
    return title, external_room_id.strip(), (gateway or "").strip() or DEFAULT_GATEWAY, idle_timeout


def create_session(
    project: Project,
    created_by_user_id: str,
    title: str,
    external_room_id: str,
    gateway: str | None = None,
    idle_timeout: float | None = None,
    *,
    auto_start: bool = True,
    driver: BotDriver | None = None,
) -> Session:
    """Create a session (status ``created``, ``session.created``); with ``auto_start`` start its bot at once.

    400 when the project's app settings are not configured. The creation commits on its own: when the start
    command then cannot be delivered, the session stays, in status ``error``, and is returned as it is.
    """
    title, external_room_id, gateway, idle_timeout = _clean_create(title, external_room_id, gateway, idle_timeout)
    if auto_start and driver is None:
        raise ValueError("auto_start needs a bot driver")
    require_configured_settings(project)
    with transaction():
        newest = (
            Session.select(Session.created_at)
            .where(Session.project == project.id)
            .order_by(Session.created_at.desc())
            .first()
        )
        created = _later_than(newest.created_at if newest else None)
        session = Session.create(
            project=project.id,
            tenant_id=project.tenant_id,
            external_room_id=external_room_id,
            gateway=gateway,
            title=title,
            created_by_user_id=created_by_user_id,
            status="created",
            idle_timeout=idle_timeout,
            created_at=created,
            updated_at=created,
            status_changed_at=created,
        )
        _emit(session, "created", session_body(session))
    if auto_start:
        try:
            return start_session(project, session.id, driver)
        except BotCommandError:
            pass  # logged and recorded as status "error" by _send
    return get_session(project, session.id)


def _send(command, session: Session) -> None:
    """Send a bot command; an undeliverable one moves the session to ``error`` (own transaction) and raises
    BotCommandError (503) saying so."""
    try:
        command(session)
    except BotCommandError as exc:
        log.exception("bot command for session %s could not be delivered", session.id)
        set_session_status(session.id, "error", source="cortex:api", project_id=session.project_id)
        raise BotCommandError(
            f"The bot command could not be delivered ({exc.detail}); the session is now in status error"
        ) from exc


def start_session(project: Project, session_id: str, driver: BotDriver) -> Session:
    """Record ``starting`` and send the start command; returns the session's latest state.

    404 for an unknown session, 400 when the app settings are not configured. Idempotent: a session already
    ``starting`` or ``active`` keeps its status (no event) and the command is sent again.
    """
    with transaction():
        session = _session_for_update(project, session_id)
        require_configured_settings(project)
        if session.status not in ("starting", "active"):
            _change_status(session, "starting", "cortex:api")
    _send(driver.start, session)
    return get_session(project, session_id)


def stop_session(project: Project, session_id: str, driver: BotDriver) -> Session:
    """Record ``stopping`` and send the stop command; returns the session's latest state.

    404 for an unknown session. Idempotent: a session already ``stopping`` or ``stopped`` keeps its status
    (no event) and the command is sent again.
    """
    with transaction():
        session = _session_for_update(project, session_id)
        if session.status not in ("stopping", "stopped"):
            _change_status(session, "stopping", "cortex:api")
    _send(driver.stop, session)
    return get_session(project, session_id)


def stop_idle_session(session_id: str, driver: BotDriver, now: datetime | None = None) -> Session | None:
    """The idle auto-stop of one session: ``stop_session``'s path (``stopping`` + ``session.updated`` with source
    ``cortex:api``, committed, then the driver's stop command) when the session is still due at ``now``.

    Due is re-checked under the row lock (:func:`idle_sessions`), so a participant who joined since the sweep
    selected it keeps the session running. Returns the session's latest state, or None when it was not due
    (any more). An undeliverable command leaves the session in ``error`` (logged) and is not raised.
    """
    with transaction():
        session = locked(idle_sessions(now).where(Session.id == session_id)).first()
        if session is None:
            return None
        _change_status(session, "stopping", "cortex:api")
    try:
        _send(driver.stop, session)
    except BotCommandError:
        pass  # logged and recorded as status "error" by _send
    return Session.get_or_none(Session.id == session_id)


def set_session_status(
    session_id: str, status: str, source: str = "cortex:ingest", *, project_id: str | None = None
) -> Session | None:
    """Record a status reported for a session (bot workers through signed ingest, the local driver).

    One transaction; emits ``session.updated`` (``changes`` = the previous status) only when the status
    changes. ``project_id`` limits the lookup to one project (pass it from a project-scoped ingest). Returns
    the session, or None when there is no such session; ValueError for a status outside ``STATUSES``.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    with transaction():
        query = Session.select().where(Session.id == session_id)
        if project_id is not None:
            query = query.where(Session.project == project_id)
        session = locked(query).first()
        if session is not None:
            _change_status(session, status, source)
        return session


# ---------------------------------------------------------------- the room: open spans and the idle rule


def closing_time(at: datetime):
    """``left_at`` for closing a span at ``at``: never before its join (a leave reported early is zero-length)."""
    stored = PresenceSpan.left_at.db_value(at)
    return pw.Case(None, [(PresenceSpan.joined_at > at, PresenceSpan.joined_at)], stored)


def close_open_spans(session_id: str, at: datetime | None = None) -> int:
    """Close every open span of the session at ``at`` (now); how many. Called when the session ends."""
    at = as_utc(at) or utcnow()
    return (
        PresenceSpan.update(left_at=closing_time(at))
        .where(PresenceSpan.session == session_id, PresenceSpan.left_at.is_null())
        .execute()
    )


def unix_ms(value: datetime) -> int:
    """A datetime as whole Unix milliseconds."""
    return round(as_utc(value).timestamp() * 1000)


def _epoch_ms(expression):
    """SQL: a stored (naive UTC) timestamp as whole Unix milliseconds, on SQLite and PostgreSQL (rounded: exact
    at the millisecond precision both keep, so a deadline is met at its very millisecond)."""
    if is_sqlite():
        return pw.fn.ROUND((pw.fn.julianday(expression) - 2440587.5) * 86400000.0)
    return pw.fn.ROUND(pw.fn.date_part("epoch", expression) * 1000)


def idle_sessions(now: datetime | None = None):
    """Query: sessions due for the idle auto-stop at ``now``, in one statement (no per-session queries).

    Due = ``idle_timeout`` > 0, status ``starting``/``active``, no open span, and both the last status change
    and the last span's ``left_at`` at least ``idle_timeout`` seconds before ``now``.
    """
    now_ms = unix_ms(as_utc(now) or utcnow())
    span = PresenceSpan.alias("open_span")
    last = PresenceSpan.alias("last_span")
    present = span.select(pw.SQL("1")).where((span.session == Session.id) & span.left_at.is_null())
    last_left = last.select(pw.fn.MAX(last.left_at)).where(last.session == Session.id)
    changed = pw.fn.COALESCE(Session.status_changed_at, Session.updated_at)

    def idle_for(since):  # seconds from ``since`` to now; compared with the timeout as stored (no overflow)
        return (now_ms - _epoch_ms(since)) / 1000.0

    return Session.select().where(
        (Session.idle_timeout > 0)
        & Session.status.in_(IDLE_WATCHED)
        & ~pw.fn.EXISTS(present)
        & (Session.idle_timeout <= idle_for(changed))
        & (pw.fn.COALESCE(idle_for(last_left), now_ms / 1000.0) >= Session.idle_timeout)
    )
