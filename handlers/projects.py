"""Projects tag: the caller's projects, members (invite, remove, change role), room tokens."""

from cortex.http.app import current_settings, token_fetcher
from models import projects, tokens


def list_apps(principal):
    """GET /api/projects: the caller's projects (an API key: its creator's, in its tenant / its one project)."""
    return projects.list_apps(principal)


def get_project_users(project):
    """GET …/users: every membership, pending and revoked included."""
    return [projects.member_body(member) for member in projects.members(project)]


def invite_project_user(project, body):
    """POST …/users/invite: a pending membership and its invitation email, queued with it (the mail engine sends
    it; an unreachable mail server delays the mail, never fails the invitation)."""
    member, _new = projects.invite(project, body["email"], body["role"], current_settings().max_members_per_project)
    return projects.member_body(member), 201


def remove_project_user(project, body):
    """POST …/users/remove: revoke a membership; access ends with the next request."""
    return projects.member_body(projects.remove(project, body["permissionId"])), 201


def change_project_user_role(project, body):
    """POST …/users/change-role: the last admin cannot be demoted."""
    return projects.member_body(projects.change_role(project, body["permissionId"], body["role"])), 201


def generate_project_token(project, body):
    """POST …/token: a room token from the project's configured token provider; 429 at the voice peer limit."""
    return tokens.project_room_token(project, body["roomId"], body["userId"], fetcher=token_fetcher(),
                                     rooms_api_url=current_settings().rooms_api_url), 201


def generate_token_legacy(principal, body):
    """POST /api/projects/token (legacy): through the Rooms token API when one is configured, else issued here
    like POST …/{projectId}/token for the named project (its secret must match)."""
    return tokens.legacy_room_token(principal, body["projectId"], body["secret"], body["roomId"],
                                    fetcher=token_fetcher(), rooms_api_url=current_settings().rooms_api_url), 201
