"""Presence: who is (and was) in a session's voice room, as spans of time.

A span opens on ``participant.joined`` (signed ingest) and closes on ``participant.left``; an open span has
``left_at`` None. Spans are the source of the idle-timeout auto-stop (a session whose room has had no open span
for ``idleTimeout`` seconds stops) and of the voice analytics (concurrent peers and active rooms per bucket).
"""

from __future__ import annotations

import peewee as pw

from models.base import BaseModel, UTCDateTimeField, utcnow
from models.identity import Project
from models.participants import Participant
from models.sessions import Session


class PresenceSpan(BaseModel):
    """One participant's stay in a session's room (one peer connection)."""

    project = pw.ForeignKeyField(Project, on_delete="CASCADE")
    session = pw.ForeignKeyField(Session, backref="presence", on_delete="CASCADE")
    # Presence history goes with the participant (DELETE …/participants/{id}).
    participant = pw.ForeignKeyField(Participant, backref="presence", on_delete="CASCADE")
    external_user_id = pw.TextField()
    peer_id = pw.TextField(null=True)
    joined_at = UTCDateTimeField(default=utcnow)
    left_at = UTCDateTimeField(null=True)

    class Meta:
        indexes = (
            (("project", "joined_at"), False),
            (("session", "left_at"), False),
        )


MODELS = [PresenceSpan]


# ---------------------------------------------------------------- domain operations (inside the caller's transaction)
from datetime import datetime  # noqa: E402


def _open(session: Session, participant: Participant, peer_id: str | None):
    query = PresenceSpan.select().where(
        PresenceSpan.session == session.id,
        PresenceSpan.participant == participant.id,
        PresenceSpan.left_at.is_null(),
    )
    return query.where(PresenceSpan.peer_id == peer_id) if peer_id is not None else query


def record_join(session: Session, participant: Participant, peer_id: str | None, at: datetime | None = None):
    """Open a span for this participant (and peer) in the session; (span, opened).

    Idempotent: a join repeated while the same participant/peer is still present opens nothing new.
    """
    existing = _open(session, participant, peer_id).first()
    if existing is not None:
        return existing, False
    span = PresenceSpan.create(
        project=session.project_id,
        session=session.id,
        participant=participant.id,
        external_user_id=participant.external_user_id,
        peer_id=peer_id,
        joined_at=at or utcnow(),
    )
    return span, True


def record_leave(session: Session, participant: Participant, peer_id: str | None, at: datetime | None = None) -> int:
    """Close the participant's open spans in the session (only that peer's when ``peer_id`` is given).

    Returns how many spans were closed (0 for a leave without a join: nothing to close).
    """
    at = at or utcnow()
    ids = [span.id for span in _open(session, participant, peer_id)]
    if not ids:
        return 0
    return PresenceSpan.update(left_at=at).where(PresenceSpan.id.in_(ids)).execute()


def present_count(session_id: str) -> int:
    """How many spans of the session are open right now."""
    return PresenceSpan.select().where(PresenceSpan.session == session_id, PresenceSpan.left_at.is_null()).count()
