"""Participants: the people (by external ODIN user id) seen in a project's voice rooms."""

from __future__ import annotations

import peewee as pw

from models.base import BaseModel, JSONField, UTCDateTimeField, utcnow
from models.identity import Project


class Participant(BaseModel):
    """One external user of a project; created explicitly or when first seen in a session."""

    project = pw.ForeignKeyField(Project, backref="participants", on_delete="CASCADE")
    tenant_id = pw.CharField(max_length=36)
    external_user_id = pw.TextField()
    display_name = pw.TextField(default="")
    user_data = JSONField(default=dict)
    joined_at = UTCDateTimeField(default=utcnow)
    updated_at = UTCDateTimeField(default=utcnow)

    class Meta:
        indexes = ((("project", "external_user_id"), True),)


MODELS = [Participant]


# ---------------------------------------------------------------- domain operations
from dataclasses import dataclass  # noqa: E402

import orjson  # noqa: E402

from models.base import Prepared, db, found, page_bounds, rfc3339_raw, transaction  # noqa: E402
from models.events import changed_fields, emit  # noqa: E402

KEEP = ...  # update_participant: leave the field as it is
_ESCAPE = "\\"  # LIKE escape character of the search pattern


@dataclass(frozen=True)
class ParticipantPage:
    """One page of a participant listing (ParticipantResponse dicts) and the number of all matches."""

    participants: list[dict]
    total: int


def _participant_body(id_, project_id, tenant_id, external_user_id, display_name, user_data, joined_at) -> dict:
    """ParticipantResponse, from a model's values or a raw row (JSON text, stored timestamp): the one place."""
    return {
        "id": id_,
        "projectId": project_id,
        "displayName": display_name,
        "externalUserId": external_user_id,
        "tenantId": tenant_id,
        "userData": orjson.loads(user_data) if isinstance(user_data, str | bytes) else dict(user_data),
        "joinedAt": rfc3339_raw(joined_at),
    }


def participant_body(row: Participant) -> dict:
    """The ParticipantResponse of a participant (HTTP answers and event payloads alike)."""
    return _participant_body(
        row.id, row.project_id, row.tenant_id, row.external_user_id, row.display_name, row.user_data, row.joined_at
    )


def _emit(action: str, project: Project, data: dict, changes: dict | None = None) -> None:
    """Record ``participant.<action>`` in the current transaction."""
    emit(
        f"participant.{action}",
        tenant_id=project.tenant_id,
        project_id=project.id,
        resource_id=f"participant:{data['id']}",
        action=action,
        data=data,
        changes=changes,
    )


def _in_project(project: Project):
    return Participant.select().where(Participant.project == project.id)


_BY_ID = Prepared(lambda project, participant: Participant.select().where(
    (Participant.project == project) & (Participant.id == participant)))


def _of_project(project: Project, participant_id: str) -> Participant:
    """The project's participant with this id, or not_found (also for another project's); a hot path (every
    join, sanction, invitation): compiled once (models.base.Prepared)."""
    return found(_BY_ID.first(project=project.id, participant=participant_id), f"Participant {participant_id}")


def _apply(project: Project, row: Participant, display_name=KEEP, user_data=KEEP) -> Participant:
    """Set the given fields; when any value changed, save and emit ``participant.updated`` with ``changes``."""
    before = participant_body(row)
    if display_name is not KEEP:
        row.display_name = display_name
    if user_data is not KEEP:
        row.user_data = dict(user_data)
    after = participant_body(row)
    changes = changed_fields(before, after)
    if changes:
        row.updated_at = utcnow()
        row.save(only=[Participant.display_name, Participant.user_data, Participant.updated_at])
        _emit("updated", project, after, changes)
    return row


def create_or_find_participant(
    project: Project, external_user_id: str, display_name: str | None = None, user_data: dict | None = None
) -> tuple[Participant, bool]:
    """The project's participant with this external user id, created when new; returns (row, created).

    A new participant gets ``display_name`` (default: the external user id) and ``user_data`` (default
    ``{}``), ``joined_at`` now, and emits ``participant.created``. An existing one is returned as it is,
    except that a given ``display_name``/``user_data`` that differs from the stored value replaces it
    (``participant.updated``). Concurrent creates of one external user id yield one row: the loser of the
    unique index catches the IntegrityError (in a savepoint) and takes the winner's row.
    """
    given = {
        "display_name": KEEP if display_name is None else display_name,
        "user_data": KEEP if user_data is None else user_data,
    }
    with transaction():
        row = _in_project(project).where(Participant.external_user_id == external_user_id).first()
        if row is None:
            now = utcnow()
            try:
                with db.atomic():  # a savepoint: the transaction survives a lost race
                    row = Participant.create(
                        project=project.id,
                        tenant_id=project.tenant_id,
                        external_user_id=external_user_id,
                        display_name=external_user_id if display_name is None else display_name,
                        user_data={} if user_data is None else dict(user_data),
                        joined_at=now,
                        updated_at=now,
                        created_at=now,
                    )
            except pw.IntegrityError:
                row = _in_project(project).where(Participant.external_user_id == external_user_id).first()
                if row is None:  # not the unique index after all
                    raise
            else:
                _emit("created", project, participant_body(row))
                return row, True
        return _apply(project, row, **given), False


def get_participant(project: Project, participant_id: str) -> Participant:
    """The project's participant with this id (not_found otherwise)."""
    return _of_project(project, participant_id)


def update_participant(project: Project, participant_id: str, display_name=KEEP, user_data=KEEP) -> Participant:
    """Replace the given fields (``user_data`` as a whole); emits ``participant.updated`` only on a change."""
    with transaction():
        return _apply(project, _of_project(project, participant_id), display_name, user_data)


def delete_participant(project: Project, participant_id: str) -> dict:
    """Delete the participant (rows referencing it cascade); emits ``participant.deleted``; its last state."""
    with transaction():
        row = _of_project(project, participant_id)
        last = participant_body(row)
        row.delete_instance()
        _emit("deleted", project, last)
    return last


def search_pattern(search: str) -> str:
    """A LIKE pattern matching ``search`` as a literal substring (``%``, ``_`` and the escape escaped)."""
    escaped = search.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%").replace("_", _ESCAPE + "_")
    return f"%{escaped}%"


def _matching(project, pattern=None):
    """Participants of the project; with a pattern, those whose display name or external id match it
    case-insensitively (ILIKE on PostgreSQL; LIKE on SQLite, which folds ASCII letters only)."""
    query = Participant.select().where(Participant.project == project)
    if pattern is None:
        return query

    def like(field):
        value = pw.NodeList((pw.Value(pattern, converter=False), pw.SQL("ESCAPE"), pw.Value(_ESCAPE, converter=False)))
        return pw.Expression(field, pw.OP.ILIKE, value)

    return query.where(like(Participant.display_name) | like(Participant.external_user_id))


_COLUMNS = (
    Participant.id, Participant.project, Participant.tenant_id, Participant.external_user_id,
    Participant.display_name, Participant.user_data, Participant.joined_at,
)


def _page(project, limit, offset, pattern=None):
    return (
        _matching(project, pattern)
        .select(*_COLUMNS)
        .order_by(Participant.joined_at, Participant.id)
        .limit(limit)
        .offset(offset)
    )


def _count(project, pattern=None):
    return _matching(project, pattern).select(pw.fn.COUNT(Participant.id))


#: Raw-row queries of the listing (see models.base.Prepared), without and with a search pattern.
_PAGE = Prepared(lambda project, limit, offset: _page(project, limit, offset))
_PAGE_SEARCH = Prepared(_page)
_COUNT = Prepared(lambda project: _count(project))
_COUNT_SEARCH = Prepared(_count)


def list_participants(project: Project, limit=None, offset=None, search: str | None = None) -> ParticipantPage:
    """A page of the project's participants, oldest ``joined_at`` first (then id), and the number of all
    matches; ``search`` is a case-insensitive substring of the display name or external user id."""
    limit, offset = page_bounds(limit, offset)
    if search:
        pattern = search_pattern(search)
        rows = _PAGE_SEARCH.rows(project=project.id, limit=limit, offset=offset, pattern=pattern)
        total = _COUNT_SEARCH.rows(project=project.id, pattern=pattern)[0][0]
    else:
        rows = _PAGE.rows(project=project.id, limit=limit, offset=offset)
        total = _COUNT.rows(project=project.id)[0][0]
    return ParticipantPage(participants=[_participant_body(*row) for row in rows], total=total)
