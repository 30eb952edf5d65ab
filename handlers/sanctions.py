"""Sanctions tag: moderation records of a project's players (``models.sanctions``: state from the clock, events,
the levers that enforce them)."""

from models import sanctions


def create_sanction(principal, project, body):
    """POST …/sanctions: record a sanction (``createdByUserId``: the caller, or the creator of its API key)."""
    return sanctions.create_sanction(project, principal.user_id, body), 201


def list_sanctions(project, type_=None, active_only=None, limit=None, offset=None):
    """GET …/sanctions: newest first, filtered, a page (limit default 50, at most 100) and the total."""
    return sanctions.list_sanctions(project, type_, active_only, limit, offset)


def get_sanction(project, id_):
    """GET …/sanctions/{id}."""
    return sanctions.sanction_bodies([sanctions.get_sanction(project, id_)])[0]


def update_sanction(project, id_, body):
    """PATCH …/sanctions/{id}: 409 once revoked."""
    return sanctions.update_sanction(project, id_, body)


def revoke_sanction(principal, project, id_, body=None):
    """POST …/sanctions/{id}/revoke: 409 when revoked already."""
    return sanctions.revoke_sanction(project, id_, principal.user_id, (body or {}).get("reason"))


def get_sanctions_by_user(project, external_user_id, limit=None, offset=None):
    """GET …/sanctions/user/{externalUserId}: every sanction of the player, newest first."""
    return sanctions.sanctions_of_user(project, external_user_id, limit, offset)


def get_sanctions_by_participant(project, participant_id, limit=None, offset=None):
    """GET …/sanctions/participant/{participantId}: the sanctions naming the participant, newest first."""
    return sanctions.sanctions_of_participant(project, participant_id, limit, offset)


def get_active_sanctions(project, external_user_id, type_=None):
    """GET …/sanctions/user/{externalUserId}/active: the player's sanctions in force now."""
    return sanctions.active_sanctions_of_user(project, external_user_id, type_)
