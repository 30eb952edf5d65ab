"""Transcripts: the messages of a session (transcribed speech and system join/leave lines).

Rows are written by signed ingest (``cortex/ingest.py``): ``message.created`` makes a ``user`` message,
``participant.joined``/``participant.left`` a ``system`` one (sender ``[System]``). ``external_id`` is the
sender's own message id (``data.id`` of ``message.created``): unique per session, so a re-sent message never
creates a second row. Debug audio (a WAV file) lives on disk under ``<CORTEX_DATA_DIR>/debug-audio/`` and is
kept for 24 hours (``debug_audio_expires_at``); see ``models/debug_audio.py`` when present.
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

    session = pw.ForeignKeyField(Session, backref="messages", on_delete="CASCADE")
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
    # Debug audio: the WAV file name under the debug-audio directory while it is kept, and its expiry.
    debug_audio_file = pw.TextField(null=True)
    debug_audio_expires_at = UTCDateTimeField(null=True)

    class Meta:
        indexes = (
            (("session", "timestamp"), False),
            (("session", "external_id"), True),
            (("debug_audio_expires_at",), False),
        )


MODELS = [Message]
