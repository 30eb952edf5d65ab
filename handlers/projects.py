"""Projects tag: the caller's projects, members (invite, remove, change role), room tokens."""

from cortex.app import current_settings, mailer
from cortex.permissions import permissions_for
from models import projects as membership
from models.base import rfc3339
from models.identity import project_secret
from models.settings import AppSettings, is_configured
from models.tokens import legacy_room_token, project_room_token
from models.voice import VoiceConfig

_PRODUCTS = {
    "cortex": ("Cortex", "Transcription bot sessions, transcripts, moderation, events and automation"),
    "voice": ("ODIN Voice", "Real-time voice chat: access keys, room tokens, peer limits"),
}


def _product(project_id: str, slug: str, activated_at) -> dict:
    """ActivatedProduct for a product enabled on a self-hosted project."""
    name, description = _PRODUCTS[slug]
    return {
        "id": f"{project_id}:{slug}",
        "product": {"slug": slug, "name": name, "description": description, "features": [], "pricing": [],
                    "dependencies": []},
        "activatedAt": rfc3339(activated_at),
        "config": None,
    }


def _serialize_app(project, role, principal, user_count, configured, voice) -> dict:
    """App (the one place a project is turned into JSON)."""
    products = [_product(project.id, "cortex", project.created_at)]
    if voice is not None:
        products.append(_product(project.id, "voice", voice.created_at))
    return {
        "id": project.id,
        "name": project.name,
        "description": project.description or "",
        "type": project.type,
        "secret": project_secret(project) if role == "admin" and project.secret_encrypted else "",
        "appId": project.app_id,
        "created": rfc3339(project.created_at),
        "updated": rfc3339(project.updated_at or project.created_at),
        "role": role,
        "currentUserRole": role,
        "domain": project.domain or "",
        "isConfigured": configured,
        "userCount": user_count,
        "permissions": permissions_for(role, principal.scopes),
        "billingState": "free",
        "activatedProducts": products,
    }


def _serialize_member(member) -> dict:
    """ProjectUser (`id` is the permission id)."""
    user = member.user if member.user_id else None
    return {
        "id": member.id,
        "name": user.name if user else member.email.split("@")[0],
        "email": member.email,
        "role": member.role,
        "status": member.status,
        "created": rfc3339(member.created_at),
    }


def list_apps(principal):
    """GET /api/projects: the caller's projects (an API key: its creator's, in its tenant / its one project)."""
    tenant = principal.tenant_id if principal.kind == "api_key" else None
    pairs = membership.member_projects(principal.user_id, tenant, principal.project_id)
    ids = [project.id for project, _role in pairs]
    counts = membership.active_member_counts(ids)
    by_id = {project.id: project for project, _role in pairs}
    configured = {
        row.project_id
        for row in AppSettings.select().where(AppSettings.project.in_(ids))
        if is_configured(row, by_id[row.project_id])
    }
    voice = {row.project_id: row for row in VoiceConfig.select().where(VoiceConfig.project.in_(ids))}
    return [
        _serialize_app(p, role, principal, counts.get(p.id, 0), p.id in configured, voice.get(p.id))
        for p, role in pairs
    ]


def get_project_users(project):
    """GET …/users: every membership, pending and revoked included."""
    return [_serialize_member(member) for member in membership.members(project)]


def invite_project_user(project, body, principal):
    """POST …/users/invite: a pending membership and an invitation email."""
    member, _new = membership.invite(project, body["email"], body["role"])
    mailer().send(
        member.email,
        f"You are invited to {project.name} on Cortex",
        f"You have been invited to the project {project.name!r} as {member.role}.\n\n"
        f"Log in to Cortex with this email address (or ask an administrator to create your account) and the "
        f"invitation becomes active.\n",
    )
    return _serialize_member(member), 201


def remove_project_user(project, body):
    """POST …/users/remove: revoke a membership; access ends with the next request."""
    return _serialize_member(membership.remove(project, body["permissionId"])), 201


def change_project_user_role(project, body):
    """POST …/users/change-role: the last admin cannot be demoted."""
    member = membership.change_role(project, body["permissionId"], body["role"])
    return _serialize_member(member), 201


def generate_project_token(project, body):
    """POST …/token: a room token from the project's configured token provider; 429 at the voice peer limit."""
    from cortex.problems import ApiProblem
    from models.voice import peer_limit_reached

    full = peer_limit_reached(project)
    if full is not None:
        limit, present = full
        raise ApiProblem(429, f"The voice peer limit of this project is reached: {present} peers are present and "
                              f"the limit is {limit} (PUT …/voice/peer-limit)")
    settings = current_settings()
    token = project_room_token(project, body["roomId"], body["userId"], rooms_api_url=settings.rooms_api_url,
                               timeout=settings.token_provider_timeout)
    return token, 201


def generate_token_legacy(body):
    """POST /api/projects/token (legacy): the Rooms token API with the given project id and secret."""
    settings = current_settings()
    token = legacy_room_token(body["projectId"], body["secret"], body["roomId"],
                              rooms_api_url=settings.rooms_api_url, timeout=settings.token_provider_timeout)
    return token, 201
