"""Transcripts: the messages of a session (transcribed speech and system join/leave lines).

Rows are written by signed ingest (``cortex/events/ingest.py``): ``message.created`` makes a ``user`` message,
``participant.joined``/``participant.left`` a ``system`` one (sender ``[System]``, "Alice joined"). Every message
is recorded together with its ``message.created`` event in the caller's transaction; the event's ``seq`` is kept
on the row (``event_seq``) and orders messages that share a timestamp, so a transcript reads in timestamp order,
then in the order Cortex recorded the lines. ``external_id`` is the sender's own message id (``data.id`` of
``message.created``): unique per session, so a re-sent message never creates a second row, and ``event_id``
lets a re-send be answered with the id of the event that recorded the original.

Debug audio (a WAV file) lives on disk (``cortex/integrations/debug_audio.py``: ``<data dir>/debug-audio/<project id>/<message
id>.wav``); ``debug_audio_file`` names it relative to that directory while it is kept, and
``debug_audio_expires_at`` is 24 hours after ingest. After expiry it is unavailable (404) even before the cleanup
job (``cortex.engines.debug_audio.DebugAudioCleanupJob``) has deleted the file and cleared both columns.
"""

from __future__ import annotations

import peewee as pw

from models.base import BaseModel, UTCDateTimeField, utcnow
from models.identity import Project
from models.participants import Participant
from models.sessions import Session

SYSTEM_SENDER = "[System]"
MESSAGE_TYPES = ("user", "system")


class Message(BaseModel):
    """One line of a session's transcript."""

    # No index of its own: both composite indexes below lead with session_id.
    session = pw.ForeignKeyField(Session, backref="messages", on_delete="CASCADE", index=False)
    project = pw.ForeignKeyField(Project, on_delete="CASCADE")
    tenant_id = pw.CharField(max_length=36)
    type = pw.CharField(max_length=16, default="user")
    # Transcript lines outlive the participant record: deleting a participant unlinks its lines.
    participant = pw.ForeignKeyField(Participant, null=True, on_delete="SET NULL")
    external_user_id = pw.TextField(null=True)
    external_id = pw.TextField(null=True)  # the sender's message id (idempotency key), None for system lines
    sender_name = pw.TextField()
    content = pw.TextField()
    timestamp = UTCDateTimeField(default=utcnow)
    # The message.created event recorded with the message: its id answers a re-send, its seq orders ties.
    event_id = pw.CharField(max_length=36)
    event_seq = pw.BigIntegerField()
    # Debug audio: the WAV file name under the debug-audio directory while it is kept, and its expiry.
    debug_audio_file = pw.TextField(null=True)
    debug_audio_expires_at = UTCDateTimeField(null=True)

    class Meta:
        indexes = (
            (("session", "timestamp", "event_seq"), False),
            (("session", "external_id"), True),
        )


# Only messages with debug audio are in the expiry index (what the cleanup job reads); the rest never touch it.
Message.add_index(
    Message.index(Message.debug_audio_expires_at, where=Message.debug_audio_expires_at.is_null(False))
)

MODELS = [Message]


# ---------------------------------------------------------------- domain operations (inside the caller's transaction)
from collections.abc import Callable  # noqa: E402
from datetime import datetime, timedelta  # noqa: E402

from models.base import (  # noqa: E402
    DomainError,
    Prepared,
    as_utc,
    insert_rows,
    is_sqlite,
    new_id,
    not_found,
    page_bounds,
    rfc3339,
    rfc3339_raw,
    transaction,
)
from models.events import DomainEvent, append, new_event  # noqa: E402
from models.sessions import get_session  # noqa: E402

#: How long debug audio is kept after the message was ingested.
DEBUG_AUDIO_RETENTION = timedelta(hours=24)


class DuplicateMessage(DomainError):
    """The session already has a message with this sender message id (``external_id``): 409 if it ever reached
    a caller (signed ingest answers a re-send with the original's event id instead)."""

    def __init__(self, external_id: str | None):
        super().__init__("conflict", f"the session already has a message with id {external_id!r}")
        self.external_id = external_id


def event_data(message: Message) -> dict:
    """MessageCreatedEventData of a message (the ``data`` of its ``message.created`` event)."""
    data = {
        "id": message.id,
        "sessionId": message.session_id,
        "participantId": message.participant_id,
        "externalUserId": message.external_user_id,
        "senderName": message.sender_name,
        "content": message.content,
        "timestamp": rfc3339(message.timestamp),
    }
    if message.type == "system":
        data["type"] = "system"  # the document sets it on system lines only
    else:
        data["hasDebugAudio"] = message.debug_audio_file is not None
    return data


def add_message(session: Session, **fields) -> tuple[Message, DomainEvent]:
    """Append a line to the session's transcript and emit its ``message.created``; (message, event).

    Must run inside the caller's ``transaction()``; ``fields`` as for :func:`new_message`. A second message
    with the same ``external_id`` in the session raises DuplicateMessage (the transaction must then be rolled
    back: on PostgreSQL it is aborted).
    """
    message, event = new_message(session, **fields)
    insert_messages([(message, event)])
    return message, event


def new_message(
    session: Session,
    *,
    sender_name: str,
    content: str,
    timestamp: datetime | None = None,
    message_type: str = "user",
    participant: Participant | None = None,
    external_user_id: str | None = None,
    external_id: str | None = None,
    debug_audio_file: str | None = None,
    message_id: str | None = None,
    source: str = "cortex:bot",
    resource_id: str | None = None,
    extra_data: dict | None = None,
) -> tuple[Message, DomainEvent]:
    """A transcript line and its ``message.created`` event, not yet written (:func:`insert_messages`).

    ``debug_audio_file`` (relative to the debug-audio directory) is kept for DEBUG_AUDIO_RETENTION.
    ``resource_id`` defaults to ``session:<id>``; ``extra_data`` adds fields to the event's data (e.g. the
    sender's ``externalId``).
    """
    if message_type not in MESSAGE_TYPES:
        raise ValueError(f"message type must be one of {', '.join(MESSAGE_TYPES)}")
    now = utcnow()
    at = timestamp or now
    message = Message(  # every column given: no defaults to compute (__no_default__)
        __no_default__=True,
        id=message_id or new_id(),
        created_at=now,
        session=session.id,
        project=session.project_id,
        tenant_id=session.tenant_id,
        type=message_type,
        participant=participant.id if participant is not None else None,
        external_user_id=external_user_id,
        external_id=external_id,
        sender_name=sender_name,
        content=content,
        timestamp=at,
        debug_audio_file=debug_audio_file,
        debug_audio_expires_at=now + DEBUG_AUDIO_RETENTION if debug_audio_file else None,
    )
    data = event_data(message)
    if extra_data:
        data = {**extra_data, **data}
    event = new_event(
        "message.created",
        tenant_id=session.tenant_id,
        project_id=session.project_id,
        resource_id=resource_id or f"session:{session.id}",
        action="created",
        data=data,
        source=source,
        timestamp=at,
    )
    message.event_id = event.id
    return message, event


def insert_messages(pairs: list[tuple[Message, DomainEvent]]) -> None:
    """Write messages and their events (events first: a message keeps its event's ``seq``) inside the
    caller's transaction; several go in one multi-row INSERT on PostgreSQL. DuplicateMessage when the only
    message's ``external_id`` is taken in its session (with several: the IntegrityError as it is)."""
    append([event for _message, event in pairs])
    for message, event in pairs:
        message.event_seq = event.seq
    try:
        if len(pairs) == 1 or is_sqlite():  # SQLite runs in-process: a statement per row costs no round trip
            for message, _event in pairs:
                _INSERT.rows(**_values(message))
        else:
            insert_rows(Message, _COLUMNS, [message for message, _event in pairs])
    except pw.IntegrityError as exc:
        message = pairs[0][0]
        if len(pairs) == 1 and message.external_id is not None and _unique_violation(exc):
            raise DuplicateMessage(message.external_id) from None  # the only unique index a fresh id can hit
        raise


#: Every column of a message, inserted through one prepared statement (compiling a Peewee insert per message
#: cost more than the rest of an ingest's message write).
_COLUMNS = tuple(Message._meta.sorted_fields)
_INSERT = Prepared(
    lambda **marks: Message.insert({field: pw.Value(marks[field.name], converter=False) for field in _COLUMNS})
)


def _values(message: Message) -> dict:
    """The message's raw column values, converted as Peewee would."""
    return {field.name: field.db_value(message.__data__.get(field.name)) for field in _COLUMNS}


def add_system_message(session: Session, content: str, timestamp: datetime | None = None) -> Message:
    """A ``system`` line (sender ``[System]``, e.g. "Alice joined"), emitted as ``message.created`` by
    ``cortex:bot`` on ``session:<id>``. Inside the caller's transaction."""
    message, _event = add_message(
        session, sender_name=SYSTEM_SENDER, content=content, timestamp=timestamp, message_type="system"
    )
    return message


def _unique_violation(exc: pw.IntegrityError) -> bool:
    """Was this a unique-index violation (not, say, a foreign key to a session deleted meanwhile)?"""
    original = getattr(exc, "orig", None) or exc  # peewee keeps the driver's exception here
    code = getattr(original, "pgcode", None)
    if code is not None:
        return code == "23505"  # PostgreSQL unique_violation
    return "UNIQUE constraint failed" in str(original)


def find_by_external_id(session_id: str, external_id: str) -> Message | None:
    """The session's message with this sender message id, or None."""
    return Message.get_or_none(Message.session == session_id, Message.external_id == external_id)


# ---------------------------------------------------------------- reads (transcripts, debug audio)


def message_body(id_, session_id, type_, sender_name, content, timestamp, has_audio: bool) -> dict:
    """The Message schema (one place)."""
    return {
        "id": id_,
        "sessionId": session_id,
        "type": type_,
        "senderName": sender_name,
        "content": content,
        "timestamp": rfc3339_raw(timestamp),
        "hasDebugAudio": has_audio,
    }


def _audio_kept(file: str | None, expires_at, now: datetime, available: Callable[[str], bool]) -> bool:
    """Debug audio counts while it is named, not expired and (``available``) its file is there."""
    if file is None or expires_at is None:
        return False
    return as_utc(expires_at) > now and available(file)


#: At most this many transcript lines per answer of ``GET …/messages`` (its ``limit`` default and ceiling).
MAX_LISTED_MESSAGES = 10000


def list_messages(session: Session, audio_available: Callable[[str], bool] = lambda _file: True,
                  limit=None, offset=None) -> list[dict]:
    """The session's transcript (Message dicts): timestamp order, then the order Cortex recorded the lines; a
    page of at most ``MAX_LISTED_MESSAGES`` (``limit``/``offset`` read leniently: ``models.base.page_bounds``).

    ``audio_available(file)`` tells whether a kept debug-audio file exists (``cortex.integrations.debug_audio``);
    only then, and before its expiry, is ``hasDebugAudio`` true.
    """
    now = utcnow()
    limit, offset = page_bounds(limit, offset, default=MAX_LISTED_MESSAGES, maximum=MAX_LISTED_MESSAGES)
    rows = (
        Message.select(
            Message.id, Message.type, Message.sender_name, Message.content, Message.timestamp,
            Message.debug_audio_file, Message.debug_audio_expires_at,
        )
        .where(Message.session == session.id)
        .order_by(Message.timestamp, Message.event_seq)
        .limit(limit)
        .offset(offset)
        .tuples()
    )
    return [
        message_body(id_, session.id, type_, sender, content, timestamp, _audio_kept(file, expires, now, audio_available))
        for id_, type_, sender, content, timestamp, file, expires in rows
    ]


def session_message_bodies(project, session_id: str, audio_available: Callable[[str], bool],
                           limit=None, offset=None) -> list[dict]:
    """The transcript of the project's session (:func:`list_messages`); 404 for another project's session."""
    return list_messages(get_session(project, session_id), audio_available, limit, offset)


def kept_debug_audio(project, session_id: str, message_id: str) -> str:
    """The kept debug-audio file of a message of the project's session; 404 when there is none (any more)."""
    file = debug_audio_file(get_session(project, session_id), message_id)
    if file is None:
        raise not_found(f"Debug audio of message {message_id}")
    return file


def debug_audio_file(session: Session, message_id: str) -> str | None:
    """The kept, unexpired debug-audio file (relative name) of the session's message, or None."""
    row = Message.get_or_none(Message.id == message_id, Message.session == session.id)
    if row is None or not _audio_kept(row.debug_audio_file, row.debug_audio_expires_at, utcnow(), lambda _f: True):
        return None
    return row.debug_audio_file


def expired_debug_audio(now: datetime | None = None, limit: int = 500) -> list[tuple[str, str]]:
    """(message id, file) of up to ``limit`` messages whose debug audio has expired (oldest first)."""
    query = (
        Message.select(Message.id, Message.debug_audio_file)
        .where(Message.debug_audio_expires_at <= (now or utcnow()))
        .order_by(Message.debug_audio_expires_at)
        .limit(limit)
        .tuples()
    )
    return list(query)


def clear_debug_audio(message_ids: list[str]) -> int:
    """Forget the debug audio of these messages (after their files were deleted); how many rows changed."""
    if not message_ids:
        return 0
    with transaction():
        return (
            Message.update(debug_audio_file=None, debug_audio_expires_at=None)
            .where(Message.id.in_(message_ids))
            .execute()
        )

