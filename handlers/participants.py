"""Participants tag: the external (ODIN) users of a project — create-or-find, list/search, read, update, delete.

Every write is one transaction that also records its domain event (``participant.created`` / ``.updated`` /
``.deleted``, resource ``participant:<id>``, payload data = the ParticipantResponse).
"""


from models import participants


def list_participants(project, limit=None, offset=None, search=None):
    """GET …/participants: a page of the project's participants, oldest ``joinedAt`` first (then id).

    ``limit`` and ``offset`` are plain numbers in the document (narrowing them is not allowed), so they are
    read leniently instead of rejected: a fraction is truncated toward zero, then ``limit`` is clamped into
    [1, 500] (default 50) and ``offset`` to ≥ 0 (default 0). ``search`` matches a case-insensitive substring
    of ``displayName`` or ``externalUserId`` (``%`` and ``_`` are literal). ``total`` counts every match,
    regardless of ``limit`` and ``offset``.
    """
    page = participants.list_participants(project, limit, offset, search)
    return {"participants": page.participants, "total": page.total}


def create_participant(project, body):
    """POST …/participants: create or find the participant by ``externalUserId``; 201 either way, same id.

    New: ``displayName`` defaults to the ``externalUserId``, ``userData`` to ``{}``, ``joinedAt`` is now;
    ``participant.created`` is emitted. Existing: returned unchanged and no event — unless ``displayName`` or
    ``userData`` is given and differs from the stored value; then the given fields replace the stored ones
    (``userData`` as a whole) and ``participant.updated`` is emitted with the previous values in ``changes``,
    the same as a PATCH would. Concurrent creates of one ``externalUserId`` yield one participant.
    """
    row, _created = participants.create_or_find_participant(
        project, body["externalUserId"], body.get("displayName"), body.get("userData")
    )
    return participants.participant_body(row), 201


def get_participant(project, id_):
    """GET …/participants/{id}: one participant of the project (404 for unknown or another project's)."""
    return participants.participant_body(participants.get_participant(project, id_))


def update_participant(project, id_, body):
    """PATCH …/participants/{id}: replace only the given fields (``userData`` as a whole).

    ``participant.updated`` carries the previous values of the changed fields; nothing changed, no event.
    """
    row = participants.update_participant(
        project, id_, body.get("displayName", participants.KEEP), body.get("userData", participants.KEEP)
    )
    return participants.participant_body(row)


def delete_participant(project, id_):
    """DELETE …/participants/{id}: 204, empty body; ``participant.deleted`` carries the last state.

    Rows referencing the participant (memberships, presence history) go with it (ON DELETE CASCADE).
    """
    participants.delete_participant(project, id_)
    return None, 204
