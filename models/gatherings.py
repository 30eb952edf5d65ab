"""Gatherings: lobbies, open rooms and appointments that players join with a short code.

State machine (enforced here; any other transition is a conflict, 409):

    pending ──(a member other than the owner joins)──▶ active
    pending / active ──(startGathering, roomId)──▶ started ──(endGathering)──▶ ended
    pending / active / started ──(cancelGathering)──▶ cancelled
    pending / active / started ──(the expiry job: see expires_at)──▶ expired

``ended``, ``cancelled`` and ``expired`` are *finished*: nobody joins, the join code is free again.

Capacity is a counter on the gathering row (``member_count`` = members ``joined`` or ``ready``) that a seat is
taken from with ONE conditional UPDATE (``… SET member_count = member_count + 1 WHERE member_count <
max_members AND status IN (…)``): whatever the number of processes and concurrent joins, the limit holds — no
read-then-write. A member that leaves gives its seat back the same way.

Join codes: 8 characters of :data:`CODE_ALPHABET` (A–Z, 0–9 without the look-alikes 0 O 1 I L) from
``secrets``; unique among a project's unfinished gatherings (``live_code`` holds the code until the gathering
finishes, under a unique index; NULLs never clash). Lookups accept any case and surrounding spaces.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from functools import partial
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import peewee as pw

from cortex.lib.invitations import GatheringInfo, Invitee, invitation_mail, invitee_address, join_url
from models.base import (
    BaseModel,
    DomainError,
    JSONField,
    Prepared,
    UTCDateTimeField,
    conflict,
    forbidden,
    found,
    insert_rows,
    invalid,
    is_sqlite,
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
from models.events import GroupCommit, append, changed_fields, new_event
from models.identity import Project
from models.mail import queue_mail
from models.participants import Participant, create_or_find_participant, get_participant
from models.sanctions import JOIN_BLOCKING_TYPES, Sanction, describe, in_force
from models.sessions import BotDriver, create_session, stop_session

TYPES = ("lobby", "appointment", "open")
POLICIES = ("public", "private", "invite-only")
UNFINISHED = ("pending", "active", "started")
FINISHED = ("ended", "cancelled", "expired")
JOINABLE = ("pending", "active", "started")
SEATED = ("joined", "ready")  # member statuses that hold a seat (memberCount)
MEMBER_STATUSES = ("invited", "joined", "ready", "left")
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # A–Z, 0–9 without 0 O 1 I L
CODE_LENGTH = 8
MIN_MEMBERS, MAX_MEMBERS, DEFAULT_MAX_MEMBERS = 2, 100, 8
DEFAULT_LIMIT, MAX_LIMIT = 50, 100
#: An appointment expires this long after its endsAt (or its startsAt when it has no end).
APPOINTMENT_GRACE = timedelta(hours=1)
#: Lobbies and open gatherings (and appointments without a date) expire after this long without a change
#: (``CORTEX_GATHERING_IDLE_HOURS`` sets it for a process; see :func:`configure`).
_idle = {"age": timedelta(hours=24)}


def configure(idle_hours: float) -> None:
    """The idle age after which lobbies and open gatherings expire (``CORTEX_GATHERING_IDLE_HOURS``)."""
    _idle["age"] = timedelta(hours=idle_hours)


class Gathering(BaseModel):
    """A lobby, open room or appointment of a project."""

    id = pw.CharField(max_length=36, primary_key=True, default=new_id)
    tenant_id = pw.CharField(max_length=36)
    project_id = pw.CharField(max_length=36)
    name = pw.CharField(max_length=255)
    description = pw.TextField(null=True)
    inviter_name = pw.CharField(max_length=255, null=True)
    inviter_email = pw.CharField(max_length=320, null=True)
    invitation_url = pw.TextField(null=True)
    type = pw.CharField(max_length=16)
    status = pw.CharField(max_length=16)
    max_members = pw.IntegerField()
    member_count = pw.IntegerField(default=0)
    access_policy = pw.CharField(max_length=16)
    listed = pw.BooleanField(default=False)
    starts_at = UTCDateTimeField(null=True)
    ends_at = UTCDateTimeField(null=True)
    timezone = pw.CharField(max_length=64, null=True)
    room_id = pw.CharField(max_length=255)
    auto_start_session = pw.BooleanField(default=False)
    session_id = pw.CharField(max_length=36, null=True)
    join_code = pw.CharField(max_length=CODE_LENGTH)
    live_code = pw.CharField(max_length=CODE_LENGTH, null=True)  # join_code while unfinished, else NULL
    properties = JSONField(null=True)
    search_properties = JSONField(null=True)
    owner_id = pw.CharField(max_length=36, null=True)
    sequence = pw.IntegerField(default=0)  # calendar SEQUENCE: raised when the time moves
    created_at = UTCDateTimeField()
    updated_at = UTCDateTimeField()
    active_at = UTCDateTimeField()  # the last change: the idle clock of lobbies and open gatherings

    class Meta:
        table_name = "gathering"
        indexes = (
            (("project_id", "live_code"), True),
            (("project_id", "created_at"), False),
            (("status", "type"), False),
        )


class GatheringMember(BaseModel):
    """A participant's place in a gathering (one row per gathering and participant)."""

    id = pw.CharField(max_length=36, primary_key=True, default=new_id)
    gathering_id = pw.CharField(max_length=36)
    participant_id = pw.CharField(max_length=36)
    role = pw.CharField(max_length=16)
    status = pw.CharField(max_length=16)
    properties = JSONField(null=True)
    invited_at = UTCDateTimeField(null=True)
    joined_at = UTCDateTimeField(null=True)
    ready_at = UTCDateTimeField(null=True)
    created_at = UTCDateTimeField()

    class Meta:
        table_name = "gathering_member"
        indexes = ((("gathering_id", "participant_id"), True),)


MODELS = [Gathering, GatheringMember]


# ---------------------------------------------------------------- bodies


def expires_at(row: Gathering) -> datetime | None:
    """When the expiry job will expire the gathering (None once it is finished)."""
    if row.status in FINISHED:
        return None
    if row.type == "appointment" and (row.ends_at or row.starts_at):
        return (row.ends_at or row.starts_at) + APPOINTMENT_GRACE
    return row.active_at + _idle["age"]


def gathering_body(row: Gathering, members: list[dict] | None = None) -> dict:
    """GatheringResponse (``members`` embedded when given)."""
    body = {
        "id": row.id, "projectId": row.project_id, "tenantId": row.tenant_id, "name": row.name, "type": row.type,
        "status": row.status, "maxMembers": row.max_members, "memberCount": row.member_count,
        "accessPolicy": row.access_policy, "listed": bool(row.listed), "autoStartSession": bool(row.auto_start_session),
        "joinCode": row.join_code, "roomId": row.room_id, "properties": row.properties or {},
        "createdAt": rfc3339(row.created_at),
    }
    optional = {
        "description": row.description, "inviterName": row.inviter_name, "inviterEmail": row.inviter_email,
        "startsAt": rfc3339(row.starts_at), "endsAt": rfc3339(row.ends_at), "timezone": row.timezone,
        "sessionId": row.session_id, "ownerId": row.owner_id, "expiresAt": rfc3339(expires_at(row)),
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    if members is not None:
        body["members"] = members
    return body


def member_bodies(rows: list[GatheringMember]) -> list[dict]:
    """GatheringMember of each row (display names read with one query)."""
    names = {}
    ids = sorted({row.participant_id for row in rows})
    if ids:
        names = dict(Participant.select(Participant.id, Participant.display_name)
                     .where(Participant.id.in_(ids)).tuples())
    return [_member_body(row, names.get(row.participant_id, "")) for row in rows]


def _member_body(row: GatheringMember, display_name: str) -> dict:
    body = {"id": row.id, "gatheringId": row.gathering_id, "participantId": row.participant_id,
            "displayName": display_name, "status": row.status, "role": row.role, "properties": row.properties or {}}
    for key, value in (("invitedAt", row.invited_at), ("joinedAt", row.joined_at), ("readyAt", row.ready_at)):
        if value is not None:
            body[key] = rfc3339(value)
    return body


def member_body(row: GatheringMember) -> dict:
    return member_bodies([row])[0]


# ---------------------------------------------------------------- input


def _timezone(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid("timezone must be an IANA time zone name, e.g. Europe/Berlin")
    try:
        ZoneInfo(value.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise invalid(f"timezone {value!r} is not an IANA time zone name (e.g. Europe/Berlin)") from None
    return value.strip()


def _max_members(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) \
            or not MIN_MEMBERS <= value <= MAX_MEMBERS:
        raise invalid(f"maxMembers must be a whole number from {MIN_MEMBERS} to {MAX_MEMBERS}")
    return int(value)


def _choice(value, options, field: str) -> str:
    if value not in options:
        raise invalid(f"{field} must be one of {list(options)}")
    return value


def _check_times(starts: datetime | None, ends: datetime | None) -> None:
    if starts is not None and ends is not None and ends <= starts:
        raise invalid("endsAt must be later than startsAt")


def normalise_code(code: str) -> str:
    """A code as typed (any case, surrounding spaces) → its stored form."""
    return (code or "").strip().upper()


def _new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


# ---------------------------------------------------------------- reads


def _of_project(project: Project):
    return Gathering.select().where(Gathering.project_id == project.id)


def get_gathering(project: Project, gathering_id: str) -> Gathering:
    """The project's gathering with this id; 404 otherwise."""
    return project_row(Gathering, project.id, gathering_id, "Gathering")


def _locked(project: Project, gathering_id: str) -> Gathering:
    return project_row(Gathering, project.id, gathering_id, "Gathering", lock=True)


def members_of(gathering: Gathering) -> list[GatheringMember]:
    return list(GatheringMember.select().where(GatheringMember.gathering_id == gathering.id)
                .order_by(GatheringMember.created_at, GatheringMember.id))


def gathering_detail(project: Project, gathering_id: str, include_members: bool = False) -> dict:
    """``getGathering`` (members embedded with ``includeMembers``)."""
    row = get_gathering(project, gathering_id)
    return gathering_body(row, member_bodies(members_of(row)) if include_members else None)


_BY_CODE = Prepared(lambda project, code: Gathering.select().where(
    (Gathering.project_id == project) & (Gathering.live_code == code)))
_MEMBER = Prepared(lambda gathering, participant: GatheringMember.select().where(
    (GatheringMember.gathering_id == gathering) & (GatheringMember.participant_id == participant)))


def lookup_by_code(project: Project, code: str) -> Gathering:
    """The unfinished gathering with this join code; 404 for an unknown code or a finished gathering."""
    row = _BY_CODE.first(project=project.id, code=normalise_code(code))
    return found(row, f"Gathering with join code {normalise_code(code)!r}")


def list_gatherings(project: Project, type_=None, status=None, listed=None, limit=None, offset=None) -> dict:
    """``listGatherings``: newest first, filtered by type, status, listed; a page and the total."""
    limit, offset = page_bounds(limit, offset, default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
    query = _of_project(project)
    if type_ is not None:
        query = query.where(Gathering.type == type_)
    if status is not None:
        query = query.where(Gathering.status == status)
    if listed is not None:
        query = query.where(Gathering.listed == bool(listed))
    total = query.count()
    rows = query.order_by(Gathering.created_at.desc(), Gathering.id.desc()).limit(limit).offset(offset)
    return {"gatherings": [gathering_body(row) for row in rows], "total": total}


# ---------------------------------------------------------------- events


def _emit(kind: str, action: str, row: Gathering, data: dict, changes: dict | None = None,
          deferred: _Deferred | None = None) -> None:
    event = new_event(f"gathering.{kind}", tenant_id=row.tenant_id, project_id=row.project_id,
                      resource_id=f"gathering:{row.id}", action=action, data=data, changes=changes)
    if deferred is not None:
        deferred.events.append(event)
    else:
        append([event])


class _Deferred:
    """Writes of a batch of joins held back to be made with multi-row statements at its end: the new member rows
    and the events (in the order the joins made them)."""

    def __init__(self):
        self.members: list[GatheringMember] = []
        self.events: list = []

    def flush(self) -> None:
        if self.members:
            if is_sqlite():  # in process: a statement costs no round trip
                for member in self.members:
                    member.save(force_insert=True)
            else:
                insert_rows(GatheringMember, GatheringMember._meta.sorted_fields, self.members)
        if self.events:
            append(self.events)


def _emit_member(kind: str, row: Gathering, member: GatheringMember, display_name: str | None = None,
                 deferred: _Deferred | None = None) -> None:
    """``gathering.member.<kind>`` (``display_name``: the participant's, when the caller has it at hand)."""
    if kind == "left":
        data = {"gatheringId": row.id, "participantId": member.participant_id}
    else:
        body = member_body(member) if display_name is None else _member_body(member, display_name)
        data = {"gatheringId": row.id, "member": body}
    _emit(f"member.{kind}", "occurred", row, data, deferred=deferred)


def _touch(row: Gathering, now: datetime) -> None:
    row.updated_at = now
    row.active_at = now


# ---------------------------------------------------------------- create / update / transitions


def create_gathering(project: Project, body: dict) -> Gathering:
    """``createGathering``: a pending gathering with a fresh code; ``ownerId`` seated as ``owner``; each of
    ``participants`` invited by mail in the same transaction (:func:`invite_new_gathering`)."""
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise invalid("name must not be empty")
    kind = _choice(body.get("type"), TYPES, "type")
    max_members = _max_members(body["maxMembers"]) if "maxMembers" in body else DEFAULT_MAX_MEMBERS
    policy = _choice(body.get("accessPolicy", "public"), POLICIES, "accessPolicy")
    starts = parse_instant(body["startsAt"], "startsAt") if body.get("startsAt") is not None else None
    ends = parse_instant(body["endsAt"], "endsAt") if body.get("endsAt") is not None else None
    _check_times(starts, ends)
    zone = _timezone(body["timezone"]) if body.get("timezone") is not None else None
    now = utcnow()
    with transaction():
        owner = get_participant(project, body["ownerId"]) if body.get("ownerId") else None
        row = Gathering(
            id=new_id(), tenant_id=project.tenant_id, project_id=project.id, name=name.strip(),
            description=body.get("description"), inviter_name=body.get("inviterName"),
            inviter_email=body.get("inviterEmail"), invitation_url=body.get("invitationUrl"), type=kind,
            status="pending", max_members=max_members, member_count=0, access_policy=policy,
            listed=bool(body.get("listed", False)), starts_at=starts, ends_at=ends, timezone=zone,
            auto_start_session=bool(body.get("autoStartSession", False)), properties=body.get("properties") or {},
            search_properties=body.get("searchProperties") or {}, owner_id=owner.id if owner else None,
            created_at=now, updated_at=now, active_at=now,
        )
        _save_with_new_code(row, body.get("roomId"))
        if owner is not None:
            _take_seat(row, now)
            member = GatheringMember.create(id=new_id(), gathering_id=row.id, participant_id=owner.id, role="owner",
                                            status="joined", joined_at=now, created_at=now, properties={})
        _emit("created", "created", row, gathering_body(row))
        if owner is not None:
            _emit_member("joined", row, member)
        invite_new_gathering(project, row, body.get("participants") or [])
    return row


def _save_with_new_code(row: Gathering, room_id: str | None) -> None:
    """Insert with a fresh join code unique among the project's unfinished gatherings (a clash: another code)."""
    for _attempt in range(20):
        code = _new_code()
        if Gathering.select().where((Gathering.project_id == row.project_id) & (Gathering.live_code == code)).exists():
            continue
        row.join_code = row.live_code = code
        row.room_id = room_id.strip() if isinstance(room_id, str) and room_id.strip() else code
        row.save(force_insert=True)
        return
    raise DomainError("unavailable", "no free join code was found; try again")


UPDATABLE = ("name", "maxMembers", "accessPolicy", "listed", "startsAt", "endsAt", "properties", "searchProperties",
             "description", "inviterName", "inviterEmail")


def update_gathering(project: Project, gathering_id: str, body: dict) -> tuple[Gathering, bool]:
    """``updateGathering``: merge the given fields, ``gathering.updated`` with ``changes``; 409 when finished or
    when ``maxMembers`` would drop below ``memberCount``. Returns (gathering, whether its time moved)."""
    now = utcnow()
    with transaction():
        row = _locked(project, gathering_id)
        if row.status in FINISHED:
            raise conflict(f"Gathering {gathering_id} is {row.status}; a finished gathering cannot be changed")
        before = gathering_body(row)
        if "name" in body:
            if not isinstance(body["name"], str) or not body["name"].strip():
                raise invalid("name must not be empty")
            row.name = body["name"].strip()
        if "maxMembers" in body:
            value = _max_members(body["maxMembers"])
            if value < row.member_count:
                raise conflict(f"maxMembers {value} is below the {row.member_count} members present")
            row.max_members = value
        if "accessPolicy" in body:
            row.access_policy = _choice(body["accessPolicy"], POLICIES, "accessPolicy")
        if "listed" in body:
            row.listed = bool(body["listed"])
        if "startsAt" in body:
            row.starts_at = parse_instant(body["startsAt"], "startsAt")
        if "endsAt" in body:
            row.ends_at = parse_instant(body["endsAt"], "endsAt")
        _check_times(row.starts_at, row.ends_at)
        for field, column in (("description", "description"), ("inviterName", "inviter_name"),
                              ("inviterEmail", "inviter_email")):
            if field in body:
                setattr(row, column, body[field])
        if "properties" in body:
            row.properties = {**(row.properties or {}), **(body["properties"] or {})}
        if "searchProperties" in body:
            row.search_properties = {**(row.search_properties or {}), **(body["searchProperties"] or {})}
        after = gathering_body(row)
        changes = changed_fields(before, after)
        changes.pop("expiresAt", None)
        if not changes:
            return row, False
        moved = "startsAt" in changes or "endsAt" in changes
        if moved:
            row.sequence += 1
        _touch(row, now)
        row.save()
        _emit("updated", "updated", row, gathering_body(row), changes)
        if moved:  # the updated calendar entry (SEQUENCE raised) to every email invitee still coming
            _mail_invitees(row, "REQUEST")
    return row, moved


def _transition(project: Project, gathering_id: str, target: str, allowed: tuple[str, ...], kind: str,
                apply=None) -> Gathering:
    now = utcnow()
    with transaction():
        row = _locked(project, gathering_id)
        if row.status not in allowed:
            raise conflict(f"Gathering {gathering_id} is {row.status}; it cannot become {target} "
                           f"(only from {', '.join(allowed)})")
        row.status = target
        if target in FINISHED:
            row.live_code = None
        if apply is not None:
            apply(row)
        _touch(row, now)
        row.save()
        _emit(kind, "occurred", row, gathering_body(row))
    return row


def start_gathering(project: Project, gathering_id: str, room_id: str, user_id: str | None,
                    driver: BotDriver) -> dict:
    """``startGathering``: pending/active → started in ``room_id``. With ``autoStartSession`` a session
    (``externalRoomId`` = the room, title = the name) is created and its bot started; when that cannot be done
    (app settings not configured, the bot command undeliverable) the gathering is started all the same and
    the answer's ``sessionError`` says why no session runs."""
    if not isinstance(room_id, str) or not room_id.strip():
        raise invalid("roomId must not be empty")

    def set_room(row):
        row.room_id = room_id.strip()

    row = _transition(project, gathering_id, "started", ("pending", "active"), "started", set_room)
    error = None
    if row.auto_start_session:
        try:
            session = create_session(project, user_id or "", row.name, row.room_id, auto_start=True, driver=driver)
        except DomainError as exc:
            error = f"no session was started: {exc.detail}"
        else:
            row = attach_session(row, session.id)
            if session.status == "error":
                error = "the session's bot could not be started (session status error)"
    body = gathering_body(row)
    if error:
        body["sessionError"] = error
    return body


def attach_session(gathering: Gathering, session_id: str) -> Gathering:
    """Record the session started for the gathering (``gathering.updated`` with ``changes.sessionId``)."""
    with transaction():
        row = Gathering.get_by_id(gathering.id)
        previous = gathering_body(row)
        row.session_id = session_id
        row.updated_at = utcnow()
        row.save(only=[Gathering.session_id, Gathering.updated_at])
        _emit("updated", "updated", row, gathering_body(row), changed_fields(previous, gathering_body(row)))
    return row


def _stop_session(project: Project, row: Gathering, driver: BotDriver) -> None:
    if row.session_id:
        try:
            stop_session(project, row.session_id, driver)
        except DomainError:  # the session is gone, or its bot cannot be reached: the gathering still ends
            pass


def end_gathering(project: Project, gathering_id: str, driver: BotDriver) -> Gathering:
    """``endGathering``: started → ended; its session's bot is stopped."""
    row = _transition(project, gathering_id, "ended", ("started",), "ended")
    _stop_session(project, row, driver)
    return row


def cancel_gathering(project: Project, gathering_id: str, driver: BotDriver) -> Gathering:
    """``cancelGathering``: pending/active/started → cancelled; every email invitee still pending or accepted
    gets the cancellation (``METHOD:CANCEL``, same UID), queued with the change; a session it started is stopped."""
    row = _transition(project, gathering_id, "cancelled", UNFINISHED, "cancelled",
                      lambda row: _mail_invitees(row, "CANCEL"))
    _stop_session(project, row, driver)
    return row


# ---------------------------------------------------------------- members and capacity


_SEAT = Prepared(lambda gathering, now: Gathering.update(  # `now` arrives as its database value
    member_count=Gathering.member_count + 1, updated_at=pw.Value(now, converter=False),
    active_at=pw.Value(now, converter=False))
    .where((Gathering.id == gathering) & (Gathering.member_count < Gathering.max_members)
           & Gathering.status.in_(JOINABLE))
    .returning(Gathering.member_count, Gathering.status, Gathering.max_members))


def _take_seat(row: Gathering, now: datetime) -> None:
    """One seat, with ONE conditional UPDATE (the limit holds under any concurrency) that also returns the
    gathering's count and status (``row`` is kept current without reading it again); 409 when full or
    finished."""
    taken = _SEAT.rows(gathering=row.id, now=Gathering.updated_at.db_value(now))
    if not taken:
        current = Gathering.get_by_id(row.id)
        if current.status not in JOINABLE:
            raise conflict(f"Gathering {row.id} is {current.status}; nobody can join it")
        raise conflict(f"Gathering {row.id} is full ({current.max_members} members)")
    row.member_count, row.status, row.max_members = taken[0]
    row.updated_at = row.active_at = now


def _free_seat(row: Gathering, now: datetime) -> None:
    (Gathering.update(member_count=Gathering.member_count - 1, updated_at=now, active_at=now)
     .where((Gathering.id == row.id) & (Gathering.member_count > 0)).execute())
    row.member_count = max(0, row.member_count - 1)


def _refuse_sanctioned(project: Project, participant: Participant) -> None:
    blocking = in_force(project.id, participant.external_user_id, JOIN_BLOCKING_TYPES)
    if blocking:
        raise forbidden(f"Participant {participant.id} may not join gatherings: {describe(blocking[0])} "
                        f"(sanction {blocking[0].id})")


_UNREAD = object()


def seat_member(project: Project, gathering: Gathering, participant: Participant, role: str = "member",
                properties: dict | None = None, now: datetime | None = None, *, member=_UNREAD,
                sanctions_checked: bool = False, deferred: _Deferred | None = None) -> tuple[GatheringMember, bool]:
    """Inside the caller's transaction: the participant holds a seat (joined) — idempotent for a seated member
    (no second seat); (member, whether it was seated now). Emits ``gathering.member.joined`` and moves a pending
    gathering to ``active`` when someone other than its owner joins. ``member`` (the participant's row or None)
    and ``sanctions_checked`` let a caller that read them already (``join_by_code``) skip those reads;
    ``deferred`` holds a new member row and the events back for the batch's multi-row statements."""
    now = now or utcnow()
    if not sanctions_checked:
        _refuse_sanctioned(project, participant)
    if member is _UNREAD:
        member = _MEMBER.first(gathering=gathering.id, participant=participant.id)
    if member is not None and member.status in SEATED:
        return member, False
    _take_seat(gathering, now)
    if member is None:
        member = GatheringMember(id=new_id(), gathering_id=gathering.id, participant_id=participant.id, role=role,
                                 created_at=now, properties=properties or {})
        member.status, member.joined_at = "joined", now
        if deferred is not None:
            deferred.members.append(member)
        else:
            member.save(force_insert=True)
    else:
        member.status, member.joined_at, member.ready_at = "joined", now, None
        if properties:
            member.properties = {**(member.properties or {}), **properties}
        member.save()
    _emit_member("joined", gathering, member, participant.display_name, deferred)
    if gathering.status == "pending" and participant.id != gathering.owner_id:
        before = gathering_body(gathering)
        gathering.status = "active"
        Gathering.update(status="active").where(Gathering.id == gathering.id).execute()
        _emit("updated", "updated", gathering, gathering_body(gathering),
              changed_fields(before, gathering_body(gathering)), deferred)
    return member, True


#: Joins of concurrent requests share transactions (one BEGIN, event-log lock and COMMIT per batch): a join is a
#: handful of short statements, and on PostgreSQL committing each alone under the event-log lock held joins to
#: a few hundred per second. A join refused by a domain rule is refused before it writes anything, so it comes
#: back as a value and the batch keeps the others (see :func:`_join_work`).
def _write_joins(works: list) -> list:
    """The joins of one batch, then their new member rows and events with multi-row statements (one round trip
    each on PostgreSQL, however many joins)."""
    deferred = _Deferred()
    values = [work(deferred) for work in works]
    deferred.flush()
    return values


join_commit = GroupCommit(_write_joins, lambda work: _write_joins([work])[0])


def join_by_code(project: Project, code: str, participant_id: str) -> dict:
    """``joinByCode``: JoinGatheringResponse. 404 unknown code (or finished) / participant; 409 full or not
    joinable; 403 invite-only without a pending invitation (or an ``invited`` member row), or a ban /
    party_restriction in force."""
    for attempt in range(2):
        try:
            outcome = join_commit.run(partial(_join_work, project, code, participant_id))
        except pw.IntegrityError:  # the same participant joined at the same moment: the retry finds the member
            if attempt:
                raise conflict("the participant is joining this gathering already; retry") from None
            continue
        if isinstance(outcome, DomainError):
            raise outcome
        return outcome
    raise AssertionError("unreachable")


def _join_work(project: Project, code: str, participant_id: str, deferred: _Deferred) -> dict | DomainError:
    """One join inside the (shared) transaction. Every refusal (404, 403, 409) happens before the join writes
    anything, so it is returned, not raised: raising would roll back the joins it shares the batch with."""
    try:
        return _join_by_code(project, code, participant_id, deferred)
    except DomainError as refused:
        return refused


_PARTICIPANT_FIELDS = tuple(Participant._meta.sorted_fields)
_GATHERING_FIELDS = tuple(Gathering._meta.sorted_fields)
_MEMBER_FIELDS = tuple(GatheringMember._meta.sorted_fields)


def _blocking_sanction_exists(now):
    """EXISTS: a sanction that keeps the selected participant's external user out is in force at ``now``."""
    return pw.fn.EXISTS(Sanction.select(Sanction.id).where(
        (Sanction.project_id == Participant.project) & (Sanction.external_user_id == Participant.external_user_id)
        & Sanction.revoked_at.is_null() & Sanction.type.in_(list(JOIN_BLOCKING_TYPES))
        & (Sanction.end_at.is_null() | (Sanction.end_at > pw.Value(now, converter=False)))
        & (Sanction.start_at <= pw.Value(now, converter=False))))


#: Everything a join reads, in ONE query (a round trip per read was most of a join on PostgreSQL): the
#: participant, the unfinished gathering with the code, the participant's member row there, and whether a ban
#: or party restriction is in force for the participant.
_JOIN_CONTEXT = Prepared(lambda project, participant, code, now: Participant.select(
    *_PARTICIPANT_FIELDS, *_GATHERING_FIELDS, *_MEMBER_FIELDS, _blocking_sanction_exists(now))
    .join(Gathering, pw.JOIN.LEFT_OUTER, on=(Gathering.project_id == Participant.project)
          & (Gathering.live_code == code))
    .join(GatheringMember, pw.JOIN.LEFT_OUTER, on=(GatheringMember.gathering_id == Gathering.id)
          & (GatheringMember.participant_id == Participant.id))
    .where((Participant.project == project) & (Participant.id == participant)))


def _instance(model, fields, values):
    """A model instance from raw column values (None when the row's key is NULL: an outer join found none)."""
    if values[0] is None:
        return None
    instance = model(**{field.name: field.python_value(value) for field, value in zip(fields, values, strict=True)})
    instance._dirty.clear()
    return instance


def _join_context(project: Project, participant_id: str, code: str, now: datetime):
    rows = _JOIN_CONTEXT.rows(project=project.id, participant=participant_id, code=normalise_code(code),
                              now=Gathering.updated_at.db_value(now))
    if not rows:
        raise not_found(f"Participant {participant_id}")
    row = rows[0]
    a, b = len(_PARTICIPANT_FIELDS), len(_PARTICIPANT_FIELDS) + len(_GATHERING_FIELDS)
    c = b + len(_MEMBER_FIELDS)
    participant = _instance(Participant, _PARTICIPANT_FIELDS, row[:a])
    gathering = _instance(Gathering, _GATHERING_FIELDS, row[a:b])
    if gathering is None:
        finished = (Gathering.select(Gathering.id, Gathering.status)
                    .where((Gathering.project_id == project.id) & (Gathering.join_code == normalise_code(code)))
                    .order_by(Gathering.updated_at.desc()).first())
        if finished is not None:  # the code named a gathering that is over: nobody joins it
            raise conflict(f"Gathering {finished.id} is {finished.status}; nobody can join it")
        raise not_found(f"Gathering with join code {normalise_code(code)!r}")
    return participant, gathering, _instance(GatheringMember, _MEMBER_FIELDS, row[b:c]), bool(row[c])


def _join_by_code(project: Project, code: str, participant_id: str, deferred: _Deferred) -> dict:
    now = utcnow()
    participant, gathering, member, blocked = _join_context(project, participant_id, code, now)
    if blocked:
        _refuse_sanctioned(project, participant)  # names the sanction
    if gathering.access_policy == "invite-only":
        invited = (member is not None and member.status in (*SEATED, "invited")) or \
            has_pending_invitation(gathering, participant)
        if not invited:
            raise forbidden(f"Gathering {gathering.id} is invite-only and participant {participant.id} holds "
                            "no pending invitation")
    member, _seated = seat_member(project, gathering, participant, now=now, member=member,
                                  sanctions_checked=True, deferred=deferred)  # keeps `gathering` current
    return {"success": True, "gathering": gathering_body(gathering), "member": _member_body(member,
                                                                                           participant.display_name)}


def add_member(project: Project, gathering_id: str, body: dict) -> GatheringMember:
    """``addMember``: seat a participant (role default ``member``), the same capacity rule as joins."""
    role = _choice(body.get("role", "member"), ("owner", "member"), "role")
    for attempt in range(2):
        try:
            with transaction():
                participant = get_participant(project, body["participantId"])
                gathering = _locked(project, gathering_id)
                member, _seated = seat_member(project, gathering, participant, role, body.get("properties"))
            return member
        except pw.IntegrityError:  # the same participant was added at the same moment: the retry finds it
            if attempt:
                raise conflict("the participant is being added to this gathering already; retry") from None
    raise AssertionError("unreachable")


def list_members(project: Project, gathering_id: str) -> list[dict]:
    return member_bodies(members_of(get_gathering(project, gathering_id)))


def _member(gathering: Gathering, member_id: str) -> GatheringMember:
    row = GatheringMember.get_or_none((GatheringMember.gathering_id == gathering.id) & (GatheringMember.id == member_id))
    return found(row, f"Member {member_id} of gathering {gathering.id}")


def update_member(project: Project, gathering_id: str, member_id: str, body: dict) -> GatheringMember:
    """``updateMember``: ``ready`` (readyAt, ``gathering.member.ready``), ``left`` (seat freed,
    ``gathering.member.left``), ``joined`` (takes a seat), ``invited``; ``properties`` merge."""
    now = utcnow()
    with transaction():
        gathering = _locked(project, gathering_id)
        member = _member(gathering, member_id)
        if "status" in body:
            target = _choice(body["status"], MEMBER_STATUSES, "status")
            seated = member.status in SEATED
            if target in SEATED and not seated:
                participant = get_participant(project, member.participant_id)
                _refuse_sanctioned(project, participant)
                _take_seat(gathering, now)
                member.joined_at = now
            elif target not in SEATED and seated:
                _free_seat(gathering, now)
            if target == "ready" and member.status != "ready":
                member.ready_at = now
            previous, member.status = member.status, target
        else:
            previous = member.status
        if "properties" in body:
            member.properties = {**(member.properties or {}), **(body["properties"] or {})}
        member.save()
        if member.status != previous:
            kind = {"ready": "ready", "left": "left", "joined": "joined"}.get(member.status)
            if kind:
                _emit_member(kind, gathering, member)
    return member


def remove_member(project: Project, gathering_id: str, participant_id: str) -> None:
    """``removeMember`` by participant id: the seat is freed, ``gathering.member.left``; 404 for no member."""
    now = utcnow()
    with transaction():
        gathering = _locked(project, gathering_id)
        member = found(GatheringMember.get_or_none((GatheringMember.gathering_id == gathering.id)
                                                   & (GatheringMember.participant_id == participant_id)),
                       f"Participant {participant_id} in gathering {gathering_id}")
        if member.status in SEATED:
            _free_seat(gathering, now)
        member.delete_instance()
        _emit_member("left", gathering, member)


# ---------------------------------------------------------------- invitations


INVITATION_STATUSES = ("pending", "accepted", "declined", "expired")
MAX_INVITEES = 100
#: Invitations one gathering holds at most (any status): the bound of its unpaged invitation list.
MAX_INVITATIONS_PER_GATHERING = 1000
DEFAULT_INVITATION_LIFETIME = timedelta(days=7)


class GatheringInvitation(BaseModel):
    """An invitation of a participant and/or an email address to a gathering."""

    id = pw.CharField(max_length=36, primary_key=True, default=new_id)
    gathering_id = pw.CharField(max_length=36, index=True)
    project_id = pw.CharField(max_length=36)
    participant_id = pw.CharField(max_length=36, null=True)
    email = pw.CharField(max_length=320, null=True)
    display_name = pw.CharField(max_length=255, null=True)
    invited_by_id = pw.CharField(max_length=36, null=True)
    status = pw.CharField(max_length=16)
    join_url = pw.TextField()
    invited_at = UTCDateTimeField()
    expires_at = UTCDateTimeField()
    responded_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = "gathering_invitation"
        indexes = (
            (("project_id", "participant_id", "status"), False),  # a participant's pending invitations
            (("status", "expires_at"), False),  # the expiry job
        )


MODELS.append(GatheringInvitation)


def invitation_body(row: GatheringInvitation, join_code: str) -> dict:
    """InvitationResponse (never a ``name`` key: the event's oneOf tells it from the email-only shape)."""
    body = {"id": row.id, "gatheringId": row.gathering_id, "status": row.status, "joinUrl": row.join_url,
            "joinCode": join_code, "invitedAt": rfc3339(row.invited_at)}
    optional = {"participantId": row.participant_id, "email": row.email, "displayName": row.display_name,
                "invitedById": row.invited_by_id, "expiresAt": rfc3339(row.expires_at),
                "respondedAt": rfc3339(row.responded_at)}
    body.update({key: value for key, value in optional.items() if value is not None})
    return body


def _invitation_bodies(rows: list[GatheringInvitation]) -> list[dict]:
    codes = {}
    ids = sorted({row.gathering_id for row in rows})
    if ids:
        codes = dict(Gathering.select(Gathering.id, Gathering.join_code).where(Gathering.id.in_(ids)).tuples())
    return [invitation_body(row, codes.get(row.gathering_id, "")) for row in rows]


def _gathering_info(row: Gathering) -> GatheringInfo:
    return GatheringInfo(id=row.id, name=row.name, type=row.type, join_code=row.join_code,
                         description=row.description, inviter_name=row.inviter_name, inviter_email=row.inviter_email,
                         invitation_url=row.invitation_url, starts_at=row.starts_at, ends_at=row.ends_at,
                         timezone=row.timezone, sequence=row.sequence)


def _queue_invitation_mail(gathering: Gathering, invitation: GatheringInvitation, method: str = "REQUEST") -> None:
    """Queue the invitation (or its cancellation) for an invitee with an email address, in the caller's
    transaction: the mail engine sends it once, retrying while the mail server is down."""
    if not invitation.email:
        return
    invitee = Invitee(invitation_id=invitation.id, email=invitation.email, name=invitation.display_name)
    try:
        message = invitation_mail(_gathering_info(gathering), invitee, invitation.join_url, method)
    except ValueError as exc:  # an inviter e-mail or a name that cannot go into a mail header
        raise invalid(f"the invitation mail cannot be composed: {exc}") from None
    queue_mail(invitee_address(invitee), project_id=gathering.project_id, **message)


def _expiry_of_invitation(gathering: Gathering, now: datetime) -> datetime:
    """An invitation lasts until the gathering's end (else its start), or 7 days."""
    return gathering.ends_at or gathering.starts_at or now + DEFAULT_INVITATION_LIFETIME


def _check_email(value) -> str:
    email = value.strip() if isinstance(value, str) else ""
    local, _, domain = email.partition("@")
    if not local or "." not in domain or len(email) > 320 or any(c.isspace() or c in "<>,;\"" for c in email):
        raise invalid(f"{value!r} is not an email address")
    return email


def _invite(gathering: Gathering, now: datetime, *, participant: Participant | None = None, email: str | None = None,
            name: str | None = None, invited_by: str | None = None, join_link: str) -> GatheringInvitation:
    """Inside the caller's transaction: the pending invitation of this invitee (an existing pending one is
    returned as it is), its mail queued and ``gathering.invitation.sent`` emitted for a new one; a participant
    invitee without a member row gets one with status ``invited``."""
    query = GatheringInvitation.select().where((GatheringInvitation.gathering_id == gathering.id)
                                               & (GatheringInvitation.status == "pending"))
    held = GatheringInvitation.select().where(GatheringInvitation.gathering_id == gathering.id)
    query = query.where(GatheringInvitation.participant_id == participant.id) if participant is not None else \
        query.where(GatheringInvitation.email == email)
    existing = query.where(GatheringInvitation.expires_at > now).first()
    if existing is not None:
        return existing
    if held.count() >= MAX_INVITATIONS_PER_GATHERING:  # the gathering row is locked by the caller
        raise conflict(f"a gathering holds at most {MAX_INVITATIONS_PER_GATHERING} invitations")
    row = GatheringInvitation.create(
        id=new_id(), gathering_id=gathering.id, project_id=gathering.project_id,
        participant_id=participant.id if participant else None, email=email,
        display_name=name or (participant.display_name if participant else None), invited_by_id=invited_by,
        status="pending", join_url=join_link, invited_at=now, expires_at=_expiry_of_invitation(gathering, now))
    if participant is not None and not GatheringMember.select().where(
            (GatheringMember.gathering_id == gathering.id)
            & (GatheringMember.participant_id == participant.id)).exists():
        GatheringMember.create(id=new_id(), gathering_id=gathering.id, participant_id=participant.id, role="member",
                               status="invited", invited_at=now, created_at=now, properties={})
    _queue_invitation_mail(gathering, row)
    _emit("invitation.sent", "occurred", gathering, invitation_body(row, gathering.join_code))
    return row


def send_invitations(project: Project, gathering_id: str, body: dict) -> list[dict]:
    """``sendInvitations``: one pending invitation per invitee (a pending invitee's existing one is returned);
    400 without invitees or with more than 100, or a bad address; 404 for an inviter or participant of no
    … this project; 409 once the gathering is finished."""
    participant_ids = list(dict.fromkeys(body.get("participantIds") or []))
    emails = list(dict.fromkeys(_check_email(e).lower() for e in body.get("emails") or []))
    if not participant_ids and not emails:
        raise invalid("participantIds or emails must name at least one invitee")
    if len(participant_ids) + len(emails) > MAX_INVITEES:
        raise invalid(f"at most {MAX_INVITEES} invitees per call")
    now = utcnow()
    with transaction():
        inviter = get_participant(project, body["invitedById"])
        people = [get_participant(project, pid) for pid in participant_ids]
        gathering = _locked(project, gathering_id)
        if gathering.status in FINISHED:
            raise conflict(f"Gathering {gathering_id} is {gathering.status}; nobody can be invited")
        link = join_url(gathering.join_code, body.get("baseUrl"), body.get("customProtocol"))
        rows = [_invite(gathering, now, participant=p, invited_by=inviter.id, join_link=link) for p in people]
        rows += [_invite(gathering, now, email=e, invited_by=inviter.id, join_link=link) for e in emails]
    return [invitation_body(row, gathering.join_code) for row in rows]


def invite_new_gathering(project: Project, gathering: Gathering, invitees: list[dict]) -> None:
    """``createGathering``'s ``participants``: each invited by mail at once; one with a ``userId`` is linked to
    that external user's participant (created when the project has none) and listed as an ``invited`` member."""
    if not invitees:
        return
    if len(invitees) > MAX_INVITEES:
        raise invalid(f"at most {MAX_INVITEES} participants per gathering")
    now = utcnow()
    link = join_url(gathering.join_code)
    for invitee in invitees:
        email = _check_email(invitee.get("email"))
        participant = None
        if invitee.get("userId"):
            participant, _new = create_or_find_participant(project, invitee["userId"], invitee.get("name"))
        _invite(gathering, now, participant=participant, email=email, name=invitee.get("name"), join_link=link)


def list_invitations(project: Project, gathering_id: str) -> list[dict]:
    """``listGatheringInvitations``: every invitation of the gathering, oldest first."""
    gathering = get_gathering(project, gathering_id)
    rows = (GatheringInvitation.select().where(GatheringInvitation.gathering_id == gathering.id)
            .order_by(GatheringInvitation.invited_at, GatheringInvitation.id).limit(MAX_INVITATIONS_PER_GATHERING))
    return [invitation_body(row, gathering.join_code) for row in rows]


def pending_invitations(project: Project, participant_id: str) -> list[dict]:
    """``getPendingInvitations``: the participant's pending, unexpired invitations, newest first."""
    participant = get_participant(project, participant_id)
    rows = list(GatheringInvitation.select().where(
        (GatheringInvitation.project_id == project.id) & (GatheringInvitation.participant_id == participant.id)
        & (GatheringInvitation.status == "pending") & (GatheringInvitation.expires_at > utcnow()))
        .order_by(GatheringInvitation.invited_at.desc()).limit(1000))
    return _invitation_bodies(rows)


def has_pending_invitation(gathering: Gathering, participant: Participant) -> bool:
    """Whether the participant holds a pending, unexpired invitation to the gathering (invite-only joins)."""
    return GatheringInvitation.select().where(
        (GatheringInvitation.gathering_id == gathering.id) & (GatheringInvitation.participant_id == participant.id)
        & (GatheringInvitation.status == "pending") & (GatheringInvitation.expires_at > utcnow())).exists()


def _open_invitation(project: Project, invitation_id: str, now: datetime) -> GatheringInvitation:
    row = found(locked(GatheringInvitation.select().where((GatheringInvitation.id == invitation_id)
                                                          & (GatheringInvitation.project_id == project.id))).first(),
                f"Invitation {invitation_id}")
    if row.status != "pending":
        raise conflict(f"Invitation {invitation_id} is {row.status} already")
    if row.expires_at <= now:
        raise conflict(f"Invitation {invitation_id} expired at {rfc3339(row.expires_at)}")
    return row


def accept_invitation(project: Project, invitation_id: str, participant_id: str) -> dict:
    """``acceptInvitation``: the participant takes a seat (capacity rule, sanctions; invite-only satisfied),
    the invitation becomes ``accepted``; JoinGatheringResponse. 403 when the invitation names another
    participant; 409 answered, expired, full or finished."""
    now = utcnow()
    with transaction():
        participant = get_participant(project, participant_id)
        row = _open_invitation(project, invitation_id, now)
        if row.participant_id is not None and row.participant_id != participant.id:
            raise forbidden(f"Invitation {invitation_id} is for another participant")
        gathering = _locked(project, row.gathering_id)
        member, _seated = seat_member(project, gathering, participant, now=now)
        row.status, row.responded_at = "accepted", now
        if row.participant_id is None:
            row.participant_id = participant.id
        row.save()
        _emit("invitation.accepted", "occurred", gathering,
              {"invitationId": row.id, "gatheringId": gathering.id, "participantId": participant.id})
        gathering = Gathering.get_by_id(gathering.id)
    return {"success": True, "gathering": gathering_body(gathering), "member": member_body(member)}


def decline_invitation(project: Project, invitation_id: str) -> None:
    """``declineInvitation``: ``declined``; 409 when answered or expired."""
    now = utcnow()
    with transaction():
        row = _open_invitation(project, invitation_id, now)
        row.status, row.responded_at = "declined", now
        row.save()
        gathering = Gathering.get_by_id(row.gathering_id)
        _emit("invitation.declined", "occurred", gathering, {"invitationId": row.id, "gatheringId": gathering.id})


def _mail_invitees(gathering: Gathering, method: str) -> None:
    """Inside the caller's transaction: the updated invitation (or its cancellation) to every email invitee
    still pending or accepted."""
    for row in GatheringInvitation.select().where((GatheringInvitation.gathering_id == gathering.id)
                                                  & GatheringInvitation.status.in_(["pending", "accepted"])
                                                  & GatheringInvitation.email.is_null(False)):
        _queue_invitation_mail(gathering, row, method)


# ---------------------------------------------------------------- what the clock changes


def expire_due(now: datetime | None = None, limit: int = 500) -> int:
    """Expire unfinished gatherings past their ``expiresAt`` (``gathering.updated`` with ``changes.status``;
    their pending invitations with them) and pending invitations past theirs; how many of both. Each gathering in its own transaction, its row
    locked and checked again (concurrent runs expire it once)."""
    now = now or utcnow()
    idle_before = now - _idle["age"]
    dated = pw.fn.COALESCE(Gathering.ends_at, Gathering.starts_at)
    due = (Gathering.select(Gathering.id).where(
        Gathering.status.in_(UNFINISHED)
        & (((Gathering.type == "appointment") & dated.is_null(False) & (dated < now - APPOINTMENT_GRACE))
           | (((Gathering.type != "appointment") | dated.is_null()) & (Gathering.active_at < idle_before))))
        .limit(limit).tuples())
    expired = 0
    for (gathering_id,) in list(due):
        with transaction():
            row = locked(Gathering.select().where(Gathering.id == gathering_id)).first()
            if row is None or row.status not in UNFINISHED or expires_at(row) > now:
                continue
            before = gathering_body(row)
            row.status, row.live_code, row.updated_at = "expired", None, now
            row.save()
            _emit("updated", "updated", row, gathering_body(row), {"status": before["status"]})
            expired += 1 + (GatheringInvitation.update(status="expired")  # its pending invitations go with it
                            .where((GatheringInvitation.gathering_id == row.id)
                                   & (GatheringInvitation.status == "pending")).execute())
    with transaction():
        expired += (GatheringInvitation.update(status="expired")
                    .where((GatheringInvitation.status == "pending") & (GatheringInvitation.expires_at <= now))
                    .execute())
    return expired
