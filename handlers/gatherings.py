"""Gatherings tag: lobbies, open rooms and appointments with join codes and a hard member limit
(``models.gatherings``: the state machine, codes, race-free capacity)."""

from cortex.http.app import current_bot_driver
from models import gatherings


def create_gathering(project, body):
    """POST …/gatherings: a pending gathering with a fresh join code (the owner seated when ``ownerId``)."""
    return gatherings.gathering_body(gatherings.create_gathering(project, body)), 201


def list_gatherings(project, type_=None, status=None, listed=None, limit=None, offset=None):
    """GET …/gatherings: newest first, filtered, a page (limit default 50, at most 100) and the total."""
    return gatherings.list_gatherings(project, type_, status, listed, limit, offset)


def get_gathering(project, id_, include_members=None):
    """GET …/gatherings/{id} (``includeMembers`` embeds the members)."""
    return gatherings.gathering_detail(project, id_, bool(include_members))


def update_gathering(project, id_, body):
    """PATCH …/gatherings/{id}: merge the given fields; 409 below memberCount or once finished."""
    row, _moved = gatherings.update_gathering(project, id_, body)
    return gatherings.gathering_body(row)


def cancel_gathering(project, id_):
    """DELETE …/gatherings/{id}: cancelled (from pending, active or started)."""
    return gatherings.gathering_body(gatherings.cancel_gathering(project, id_, current_bot_driver()))


def start_gathering(principal, project, id_, body):
    """POST …/gatherings/{id}/start: started in ``roomId``; with autoStartSession its session starts."""
    return gatherings.start_gathering(project, id_, body["roomId"], principal.user_id, current_bot_driver())


def end_gathering(project, id_):
    """POST …/gatherings/{id}/end: ended; its session's bot is stopped."""
    return gatherings.gathering_body(gatherings.end_gathering(project, id_, current_bot_driver()))


def join_by_code(project, body):
    """POST …/gatherings/join: join with the code (idempotent); 409 full or finished, 403 not allowed."""
    return gatherings.join_by_code(project, body["joinCode"], body["participantId"])


def lookup_by_code(project, join_code):
    """GET …/gatherings/lookup/{joinCode}: the unfinished gathering with this code (any case)."""
    return gatherings.gathering_body(gatherings.lookup_by_code(project, join_code))


def add_member(project, id_, body):
    """POST …/gatherings/{id}/members: seat a participant (same capacity rule as joins)."""
    return gatherings.member_body(gatherings.add_member(project, id_, body)), 201


def list_members(project, id_):
    """GET …/gatherings/{id}/members."""
    return gatherings.list_members(project, id_)


def update_member(project, id_, member_id, body):
    """PATCH …/gatherings/{id}/members/{memberId}: status (ready / left / joined) and properties."""
    return gatherings.member_body(gatherings.update_member(project, id_, member_id, body))


def remove_member(project, id_, participant_id):
    """DELETE …/gatherings/{id}/members/{participantId}: the seat is freed."""
    gatherings.remove_member(project, id_, participant_id)
    return None, 204


def send_invitations(project, id_, body):
    """POST …/gatherings/{id}/invite: one pending invitation per invitee, mailed to email invitees."""
    return gatherings.send_invitations(project, id_, body), 201


def list_gathering_invitations(project, id_):
    """GET …/gatherings/{id}/invitations."""
    return gatherings.list_invitations(project, id_)


def get_pending_invitations(project, participant_id):
    """GET …/gatherings/invitations/pending?participantId=: pending and unexpired."""
    return gatherings.pending_invitations(project, participant_id)


def accept_invitation(project, invitation_id, body):
    """POST …/gatherings/invitations/{invitationId}/accept: seat the invitee (capacity rule)."""
    return gatherings.accept_invitation(project, invitation_id, body["participantId"])


def decline_invitation(project, invitation_id):
    """POST …/gatherings/invitations/{invitationId}/decline."""
    gatherings.decline_invitation(project, invitation_id)
    return None, 204
