"""Sanctions: moderation records of a project's players, their state derived from the clock, and the one
question every lever asks (:func:`in_force`).

A sanction names a player by ``external_user_id`` (always stored: given, or taken from the named participant),
optionally a participant and a session. Its state is never stored, it is read off the clock:

- ``revoked`` once ``revoked_at`` is set;
- ``expired`` once ``end_at`` ≤ now (``end_at`` None: permanent);
- ``active`` otherwise — and **in force** (``isActive``) only when ``start_at`` ≤ now as well: a sanction
  scheduled for later is ``active`` with ``isActive`` false.

Every change commits with its event (``sanction.created`` / ``.updated`` / ``.revoked``, resource
``sanction:<id>``, data = the SanctionResponse). What the clock changes by itself — a scheduled sanction coming
into force, an active one expiring — is announced by :func:`announce_transitions` (the sanctions engine runs
it every few seconds) as ``sanction.updated`` with the previous ``status`` / ``isActive`` in ``changes``: the
``announced`` column remembers the last state announced, so each transition is announced once.

Levers: the voice token refuses players with a ban in force (``models.tokens``), gatherings refuse joins of
players with a ban or party restriction in force (both through :func:`in_force`), and the sanctions engine sends
bot-enforced types to the bot driver (``cortex/engines/sanctions.py``).
"""

from __future__ import annotations

from datetime import datetime

import peewee as pw

from models.base import (
    BaseModel,
    JSONField,
    Prepared,
    UTCDateTimeField,
    conflict,
    invalid,
    locked,
    new_id,
    not_found,
    page_bounds,
    parse_instant,
    project_row,
    rfc3339,
    transaction,
    utcnow,
)
from models.events import changed_fields, emit
from models.identity import Project
from models.participants import Participant, get_participant, participant_body
from models.sessions import Session

TYPES = ("warn", "mute", "listen_only", "text_only", "rate_limit", "shadow_mute", "temp_ban", "perm_ban",
         "ranked_restriction", "queue_delay", "party_restriction", "human_review")
#: Types that keep a player out of voice rooms: the room token is refused while one is in force.
BAN_TYPES = ("temp_ban", "perm_ban")
#: Types that keep a player out of gatherings (joins are refused while one is in force).
JOIN_BLOCKING_TYPES = (*BAN_TYPES, "party_restriction")
#: Types the transcription bot enforces in a session's room (``sanction.apply`` / ``sanction.lift`` commands).
BOT_TYPES = ("mute", "listen_only", "shadow_mute", "text_only")

#: Answers of the unpaged per-player lists hold at most this many sanctions (``limit`` default and ceiling).
MAX_LISTED = 1000
LIST_DEFAULT_LIMIT = 50
LIST_MAX_LIMIT = 100

# What the ``announced`` column holds: the clock state last announced with an event.
SCHEDULED, IN_FORCE, EXPIRED, REVOKED = "scheduled", "in_force", "expired", "revoked"


class Sanction(BaseModel):
    """One moderation record of a project."""

    id = pw.CharField(max_length=36, primary_key=True, default=new_id)
    tenant_id = pw.CharField(max_length=36)
    project_id = pw.CharField(max_length=36)
    external_user_id = pw.CharField(max_length=255)
    participant_id = pw.CharField(max_length=36, null=True, index=True)
    session_id = pw.CharField(max_length=36, null=True)
    type = pw.CharField(max_length=32)
    scope = JSONField(null=True)
    reason = pw.TextField(null=True)
    metadata = JSONField(null=True)
    start_at = UTCDateTimeField()
    end_at = UTCDateTimeField(null=True)
    created_by_user_id = pw.CharField(max_length=36, null=True)
    created_at = UTCDateTimeField()
    updated_at = UTCDateTimeField()
    revoked_at = UTCDateTimeField(null=True)
    revoked_by_user_id = pw.CharField(max_length=36, null=True)
    revoke_reason = pw.TextField(null=True)
    announced = pw.CharField(max_length=16)  # the clock state last announced (SCHEDULED, IN_FORCE, …)

    class Meta:
        table_name = "sanction"
        indexes = (
            # "sanctions of a player" and "in force for a player": one index range scan (project, player,
            # not revoked), the remaining conditions checked on the few rows of that range
            (("project_id", "external_user_id", "revoked_at"), False),
            (("project_id", "created_at"), False),  # the project's listing, newest first
            (("announced", "end_at"), False),  # the transitions the clock makes (announce_transitions)
            (("announced", "start_at"), False),
        )


MODELS = [Sanction]


# ---------------------------------------------------------------- state (from the clock)


def status(row: Sanction, now: datetime) -> str:
    """``revoked``, ``expired`` or ``active`` at ``now``."""
    if row.revoked_at is not None:
        return "revoked"
    if row.end_at is not None and row.end_at <= now:
        return "expired"
    return "active"


def is_in_force(row: Sanction, now: datetime) -> bool:
    """Active and started: what ``isActive`` says and every lever enforces."""
    return status(row, now) == "active" and row.start_at <= now


def clock_state(row: Sanction, now: datetime) -> str:
    """SCHEDULED, IN_FORCE, EXPIRED or REVOKED: the state a change of which is announced."""
    current = status(row, now)
    if current == "active":
        return IN_FORCE if row.start_at <= now else SCHEDULED
    return EXPIRED if current == "expired" else REVOKED


def _participant_info(row: Participant) -> dict:
    """ParticipantInfo (ParticipantResponse without its tenant)."""
    body = participant_body(row)
    body.pop("tenantId", None)
    return body


def sanction_body(row: Sanction, participant: Participant | None = None, now: datetime | None = None) -> dict:
    """SanctionResponse of a sanction at ``now``, with ``participant`` embedded when it names one."""
    now = now or utcnow()
    body = {
        "id": row.id, "tenantId": row.tenant_id, "externalUserId": row.external_user_id, "type": row.type,
        "startAt": rfc3339(row.start_at), "createdAt": rfc3339(row.created_at), "updatedAt": rfc3339(row.updated_at),
        "isActive": is_in_force(row, now), "status": status(row, now),
    }
    optional = {
        "participantId": row.participant_id, "sessionId": row.session_id, "scope": row.scope, "reason": row.reason,
        "metadata": row.metadata, "endAt": rfc3339(row.end_at), "createdByUserId": row.created_by_user_id,
        "revokedAt": rfc3339(row.revoked_at), "revokedByUserId": row.revoked_by_user_id,
        "revokeReason": row.revoke_reason,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    if participant is not None:
        body["participant"] = _participant_info(participant)
    return body


def _participants_of(rows: list[Sanction]) -> dict[str, Participant]:
    """The participants the sanctions name, by id (one query)."""
    ids = sorted({row.participant_id for row in rows if row.participant_id})
    if not ids:
        return {}
    return {p.id: p for p in Participant.select().where(Participant.id.in_(ids))}


def sanction_bodies(rows: list[Sanction], now: datetime | None = None) -> list[dict]:
    """SanctionResponse of each sanction, participants embedded (read with one query)."""
    now = now or utcnow()
    people = _participants_of(rows)
    return [sanction_body(row, people.get(row.participant_id), now) for row in rows]


def _full_body(row: Sanction, now: datetime) -> dict:
    return sanction_bodies([row], now)[0]


# ---------------------------------------------------------------- input


def _check_type(value) -> str:
    if value not in TYPES:
        raise invalid(f"type must be one of {list(TYPES)}")
    return value


def _sanctions_of(project: Project):
    return Sanction.select().where(Sanction.project_id == project.id)


def get_sanction(project: Project, sanction_id: str) -> Sanction:
    """The project's sanction with this id; not_found otherwise (also another project's)."""
    return project_row(Sanction, project.id, sanction_id, "Sanction")


def _locked(project: Project, sanction_id: str) -> Sanction:
    return project_row(Sanction, project.id, sanction_id, "Sanction", lock=True)


def _emit(kind: str, action: str, row: Sanction, data: dict, changes: dict | None = None) -> None:
    emit(f"sanction.{kind}", tenant_id=row.tenant_id, project_id=row.project_id, resource_id=f"sanction:{row.id}",
         action=action, data=data, changes=changes)


# ---------------------------------------------------------------- operations


def create_sanction(project: Project, created_by: str | None, body: dict) -> dict:
    """Record a sanction (``createSanction``) with its ``sanction.created`` event; its SanctionResponse.

    400: neither ``participantId`` nor ``externalUserId``, an ``externalUserId`` that is not the named
    participant's, a date that is not ISO 8601 with an offset, ``endAt`` ≤ ``startAt``; 404: a
    ``participantId`` or ``sessionId`` of no participant / session of this project."""
    kind = _check_type(body.get("type"))
    participant_id, external = body.get("participantId"), body.get("externalUserId")
    if not participant_id and not external:
        raise invalid("participantId or externalUserId is required")
    if external is not None and (not isinstance(external, str) or not external.strip()):
        raise invalid("externalUserId must not be empty")
    now = utcnow()
    start = parse_instant(body["startAt"], "startAt") if body.get("startAt") is not None else now
    end = parse_instant(body["endAt"], "endAt") if body.get("endAt") is not None else None
    if end is not None and end <= start:
        raise invalid("endAt must be later than startAt")
    with transaction():
        participant = None
        if participant_id:
            participant = get_participant(project, participant_id)
            if external is not None and external != participant.external_user_id:
                raise invalid(f"externalUserId {external!r} is not participant {participant_id}'s "
                              f"({participant.external_user_id!r})")
            external = participant.external_user_id
        session_id = body.get("sessionId")
        if session_id and not Session.select().where((Session.id == session_id)
                                                     & (Session.project == project.id)).exists():
            raise not_found(f"Session {session_id}")
        row = Sanction(
            id=new_id(), tenant_id=project.tenant_id, project_id=project.id, external_user_id=external,
            participant_id=participant.id if participant else None, session_id=session_id or None, type=kind,
            scope=body.get("scope"), reason=body.get("reason"), metadata=body.get("metadata"), start_at=start,
            end_at=end, created_by_user_id=created_by, created_at=now, updated_at=now,
        )
        row.announced = clock_state(row, now)
        row.save(force_insert=True)
        data = sanction_body(row, participant, now)
        _emit("created", "created", row, data)
    return data


UPDATABLE = ("type", "scope", "reason", "metadata", "endAt")


def update_sanction(project: Project, sanction_id: str, body: dict) -> dict:
    """Change ``type``, ``scope``, ``reason``, ``metadata`` or ``endAt`` (``updateSanction``); 409 for a
    revoked sanction, 400 for an ``endAt`` not after ``startAt``. ``sanction.updated`` carries the previous
    values in ``changes`` (``status``/``isActive`` too when they change: a later ``endAt`` makes an expired
    sanction active again); nothing changed, no event."""
    now = utcnow()
    with transaction():
        row = _locked(project, sanction_id)
        if row.revoked_at is not None:
            raise conflict(f"Sanction {sanction_id} is revoked; a revoked sanction cannot be changed")
        before = _full_body(row, now)
        if "type" in body:
            row.type = _check_type(body["type"])
        for field, column in (("scope", "scope"), ("reason", "reason"), ("metadata", "metadata")):
            if field in body:
                setattr(row, column, body[field])
        if "endAt" in body:
            end = parse_instant(body["endAt"], "endAt")
            if end <= row.start_at:
                raise invalid("endAt must be later than startAt")
            row.end_at = end
        after = _full_body(row, now)
        changes = changed_fields(before, after)
        changes.pop("updatedAt", None)
        if not changes:
            return before
        row.updated_at = now
        row.announced = clock_state(row, now)
        row.save()
        after = _full_body(row, now)
        _emit("updated", "updated", row, after, changes)
    return after


def revoke_sanction(project: Project, sanction_id: str, revoked_by: str | None, reason: str | None = None) -> dict:
    """Revoke (``revokeSanction``): ``revokedAt``, ``revokedByUserId``, ``revokeReason``; 409 when it is revoked
    already. ``sanction.revoked`` (action ``occurred``) carries the revoked sanction."""
    now = utcnow()
    with transaction():
        row = _locked(project, sanction_id)
        if row.revoked_at is not None:
            raise conflict(f"Sanction {sanction_id} was revoked already")
        row.revoked_at, row.revoked_by_user_id, row.revoke_reason = now, revoked_by, reason
        row.updated_at = now
        row.announced = REVOKED
        row.save()
        data = _full_body(row, now)
        _emit("revoked", "occurred", row, data)
    return data


def _active_condition(now: datetime):
    """Not revoked and not expired (status ``active``, scheduled ones included)."""
    return Sanction.revoked_at.is_null() & (Sanction.end_at.is_null() | (Sanction.end_at > now))


def list_sanctions(project: Project, type_: str | None = None, active_only=None, limit=None,
                   offset=None) -> dict:
    """``listSanctions``: newest first; ``type`` and ``activeOnly`` (status ``active``, scheduled ones included)
    filter; ``limit`` (default 50, at most 100) and ``offset`` read leniently; ``total`` counts every match."""
    now = utcnow()
    limit, offset = page_bounds(limit, offset, default=LIST_DEFAULT_LIMIT, maximum=LIST_MAX_LIMIT)
    query = _sanctions_of(project)
    if type_ is not None:
        query = query.where(Sanction.type == type_)
    if active_only:
        query = query.where(_active_condition(now))
    total = query.count()
    rows = list(query.order_by(Sanction.created_at.desc(), Sanction.id.desc()).limit(limit).offset(offset))
    return {"sanctions": sanction_bodies(rows, now), "total": total}


def _of_player(project: Project, external_user_id: str):
    return _sanctions_of(project).where(Sanction.external_user_id == external_user_id)


def _newest(query, limit=None, offset=None) -> list[Sanction]:
    limit, offset = page_bounds(limit, offset, default=MAX_LISTED, maximum=MAX_LISTED)
    return list(query.order_by(Sanction.created_at.desc(), Sanction.id.desc()).limit(limit).offset(offset))


def sanctions_of_user(project: Project, external_user_id: str, limit=None, offset=None) -> list[dict]:
    """``getSanctionsByUser``: every sanction of the player, newest first (pages of at most MAX_LISTED)."""
    return sanction_bodies(_newest(_of_player(project, external_user_id), limit, offset))


def sanctions_of_participant(project: Project, participant_id: str, limit=None, offset=None) -> list[dict]:
    """``getSanctionsByParticipant``: the sanctions that name the participant, newest first; 404 when it is no
    participant of this project."""
    get_participant(project, participant_id)  # 404 unless it is one of the project's
    query = _sanctions_of(project).where(Sanction.participant_id == participant_id)
    return sanction_bodies(_newest(query, limit, offset))


def in_force(project_id: str, external_user_id: str, types=None, now: datetime | None = None) -> list[Sanction]:
    """The player's sanctions in force at ``now`` (of ``types`` when given), the latest-ending first (a
    permanent one first): the one question every lever asks."""
    now = now or utcnow()
    rows = _IN_FORCE.models(project=project_id, user=external_user_id, now=Sanction.start_at.db_value(now))
    if types is not None:
        rows = [row for row in rows if row.type in types]
    return sorted(rows, key=lambda row: (row.end_at is not None, -(row.end_at.timestamp() if row.end_at else 0)))


#: A player's sanctions in force (every join, token and bot decision asks): compiled once (Prepared); the
#: (project, player, revoked) index range, then the clock conditions. ``now`` arrives as its database value.
_IN_FORCE = Prepared(lambda project, user, now: Sanction.select().where(
    (Sanction.project_id == project) & (Sanction.external_user_id == user) & Sanction.revoked_at.is_null()
    & (Sanction.end_at.is_null() | (Sanction.end_at > pw.Value(now, converter=False)))
    & (Sanction.start_at <= pw.Value(now, converter=False)))
    .order_by(Sanction.created_at.desc(), Sanction.id.desc()).limit(MAX_LISTED))


def active_sanctions_of_user(project: Project, external_user_id: str, type_: str | None = None) -> list[dict]:
    """``getActiveSanctions``: the player's sanctions in force now (``isActive``), optionally of one type."""
    return sanction_bodies(in_force(project.id, external_user_id, None if type_ is None else [type_]))


def describe(row: Sanction) -> str:
    """"temp_ban until 2030-01-15T11:00:00.000Z" / "perm_ban (permanent)": for refusals that name a sanction."""
    return f"{row.type} until {rfc3339(row.end_at)}" if row.end_at else f"{row.type} (permanent)"


# ---------------------------------------------------------------- what the clock changes


def announce_transitions(now: datetime | None = None, limit: int = 500) -> list[tuple[Sanction, dict]]:
    """Announce what the clock changed since the last announcement — scheduled sanctions that came into force,
    active ones that expired — each as ``sanction.updated`` with the previous ``status``/``isActive`` in
    ``changes``, in its own transaction (the row locked and checked again, so concurrent runs announce once);
    the announced (sanction, changes)."""
    now = now or utcnow()
    due = (Sanction.select(Sanction.id)
           .where(((Sanction.announced.in_([SCHEDULED, IN_FORCE])) & Sanction.end_at.is_null(False)
                   & (Sanction.end_at <= now))
                  | ((Sanction.announced == SCHEDULED) & (Sanction.start_at <= now)))
           .limit(limit).tuples())
    announced = []
    for (sanction_id,) in list(due):
        with transaction():
            row = locked(Sanction.select().where(Sanction.id == sanction_id)).first()
            if row is None or row.announced == clock_state(row, now):
                continue
            was_in_force = row.announced == IN_FORCE
            previous = {"status": "active", "isActive": was_in_force}
            row.announced = clock_state(row, now)
            row.save(only=[Sanction.announced])
            data = _full_body(row, now)
            changes = {key: value for key, value in previous.items() if data.get(key) != value}
            _emit("updated", "updated", row, data, changes)
            announced.append((row, changes))
    return announced
