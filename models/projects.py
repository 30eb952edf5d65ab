"""Projects as members see them (the App body), and membership management (invite, remove, change role)."""

from __future__ import annotations

import peewee as pw

from models.access import Principal, forget_resolved_projects, may_read_secret, visible_projects
from models.base import check_cap, conflict, invalid, locked, not_found, rfc3339, transaction
from models.identity import ROLES, Project, ProjectMember, User, normalise_email, project_secret
from models.mail import queue_mail
from models.permissions import permissions_for
from models.settings import AppSettings, is_configured
from models.voice import VoiceConfig

ACTIVE = "active"
PENDING = "pending"
REVOKED = "revoked"

_PRODUCTS = {
    "cortex": ("Cortex", "Transcription bot sessions, transcripts, moderation, events and automation"),
    "voice": ("ODIN Voice", "Real-time voice chat: access keys, room tokens, peer limits"),
}


def _product_body(project_id: str, slug: str, activated_at) -> dict:
    """ActivatedProduct for a product enabled on a self-hosted project."""
    name, description = _PRODUCTS[slug]
    return {
        "id": f"{project_id}:{slug}",
        "product": {"slug": slug, "name": name, "description": description, "features": [], "pricing": [],
                    "dependencies": []},
        "activatedAt": rfc3339(activated_at),
        "config": None,
    }


def app_body(project: Project, role: str, principal: Principal, user_count: int, configured: bool,
             voice: VoiceConfig | None) -> dict:
    """App: a project as the caller sees it (the secret only for those who may read it: admins, and an admin's
    API key only with ``settings:read``; see ``models.access.SECRET_READERS``)."""
    products = [_product_body(project.id, "cortex", project.created_at)]
    if voice is not None:
        products.append(_product_body(project.id, "voice", voice.created_at))
    return {
        "id": project.id,
        "name": project.name,
        "description": project.description or "",
        "type": project.type,
        "secret": (project_secret(project) or "") if may_read_secret(principal, role, "project secret") else "",
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


def list_apps(principal: Principal) -> list[dict]:
    """App bodies of every project the principal may use (an API key: its creator's, in its tenant / its one
    project), oldest first: four queries however many projects."""
    pairs = visible_projects(principal)
    ids = [project.id for project, _role in pairs]
    counts = active_member_counts(ids)
    by_id = {project.id: project for project, _role in pairs}
    configured = {
        row.project_id
        for row in AppSettings.select().where(AppSettings.project.in_(ids))
        if is_configured(row, by_id[row.project_id])
    }
    voice = {row.project_id: row for row in VoiceConfig.select().where(VoiceConfig.project.in_(ids))}
    return [
        app_body(p, role, principal, counts.get(p.id, 0), p.id in configured, voice.get(p.id))
        for p, role in pairs
    ]


def member_body(member: ProjectMember) -> dict:
    """ProjectUser (``id`` is the permission id)."""
    user = member.user if member.user_id else None
    return {
        "id": member.id,
        "name": user.name if user else member.email.split("@")[0],
        "email": member.email,
        "role": member.role,
        "status": member.status,
        "created": rfc3339(member.created_at),
    }


def invitation_mail(project: Project, member: ProjectMember) -> tuple[str, str]:
    """(subject, text) of the mail that invites ``member`` to ``project`` (the subject one line, whatever the
    project's name holds)."""
    return (
        f"You are invited to {' '.join(project.name.split())} on Cortex",
        f"You have been invited to the project {project.name!r} as {member.role}.\n\n"
        f"Log in to Cortex with this email address (or ask an administrator to create your account) and the "
        f"invitation becomes active.\n",
    )


def active_member_counts(project_ids: list[str]) -> dict[str, int]:
    """Number of active members per project."""
    if not project_ids:
        return {}
    rows = (
        ProjectMember.select(ProjectMember.project, pw.fn.COUNT(ProjectMember.id))
        .where(ProjectMember.project.in_(project_ids), ProjectMember.status == ACTIVE)
        .group_by(ProjectMember.project)
        .tuples()
    )
    return dict(rows)


def members(project: Project):
    """Every membership of a project (active, pending, revoked) with its user, oldest first."""
    return (
        ProjectMember.select(ProjectMember, User)
        .join(User, pw.JOIN.LEFT_OUTER)
        .where(ProjectMember.project == project.id)
        .order_by(ProjectMember.created_at, ProjectMember.id)
    )


def _membership(project: Project, permission_id: str) -> ProjectMember:
    """A live (not revoked) membership of this project, or not_found."""
    member = (
        ProjectMember.select(ProjectMember, User)
        .join(User, pw.JOIN.LEFT_OUTER)
        .where(ProjectMember.project == project.id, ProjectMember.id == permission_id, ProjectMember.status != REVOKED)
        .first()
    )
    if member is None:
        raise not_found(f"Project user {permission_id}")
    return member


def _other_active_admins(project: Project, member: ProjectMember) -> int:
    """Active admins of the project besides ``member`` (locked on PostgreSQL while we decide)."""
    query = ProjectMember.select(ProjectMember.id).where(
        ProjectMember.project == project.id,
        ProjectMember.role == "admin",
        ProjectMember.status == ACTIVE,
        ProjectMember.id != member.id,
    )
    return len(list(locked(query)))


def _is_last_admin(project: Project, member: ProjectMember) -> bool:
    return member.role == "admin" and member.status == ACTIVE and _other_active_admins(project, member) == 0


def invite(project: Project, email: str, role: str, limit: int) -> tuple[ProjectMember, bool]:
    """Invite an email as ``role``: a pending membership until that user logs in, and the invitation mail queued
    in the same transaction (the mail engine sends it; a mail server that is down delays it, never fails the
    invitation). Returns (member, is_new). A project holds at most ``limit`` memberships of any status — the
    rows ``GET …/users`` lists (``CORTEX_MAX_MEMBERS_PER_PROJECT``); inviting an email it holds already reuses
    that row."""
    email = normalise_email(email)
    local, _, domain = email.partition("@")
    if not local or "." not in domain or len(email) > 320 or any(c.isspace() for c in email):
        raise invalid(f"email {email!r} is not an email address")
    if role not in ROLES:
        raise invalid(f"role must be one of {list(ROLES)}")
    with transaction():
        member = ProjectMember.get_or_none(ProjectMember.project == project.id, ProjectMember.email == email)
        if member is not None and member.status == ACTIVE:
            raise conflict(f"{email} is already an active member of this project")
        is_new = member is None
        if is_new:
            check_cap(Project, project.id, ProjectMember.select().where(ProjectMember.project == project.id), limit,
                      "memberships per project", "CORTEX_MAX_MEMBERS_PER_PROJECT")
            member = ProjectMember.create(project=project.id, email=email, role=role, status=PENDING)
        else:
            member.role, member.status, member.user = role, PENDING, None
            member.save()
        subject, text = invitation_mail(project, member)
        queue_mail(member.email, subject, text, project_id=project.id, kind="invitation")
    return member, is_new


def remove(project: Project, permission_id: str) -> ProjectMember:
    """Revoke a membership (access ends with the next request); the last admin cannot be removed."""
    with transaction():
        member = _membership(project, permission_id)
        if _is_last_admin(project, member):
            raise conflict("The last admin of a project cannot be removed")
        member.status = REVOKED
        member.save(only=[ProjectMember.status])
    forget_resolved_projects()  # after the commit: nothing this process resolved before it is kept
    return member


def change_role(project: Project, permission_id: str, role: str) -> ProjectMember:
    """Change a member's role; the last admin cannot be demoted."""
    if role not in ROLES:
        raise invalid(f"role must be one of {list(ROLES)}")
    with transaction():
        member = _membership(project, permission_id)
        if role != "admin" and _is_last_admin(project, member):
            raise conflict("The last admin of a project cannot be demoted")
        member.role = role
        member.save(only=[ProjectMember.role])
    forget_resolved_projects()
    return member


def activate_invitations(user: User) -> int:
    """Turn the user's pending invitations into active memberships (called when they log in)."""
    with transaction():
        return (
            ProjectMember.update(user=user.id, status=ACTIVE)
            .where(ProjectMember.email == normalise_email(user.email), ProjectMember.status == PENDING)
            .execute()
        )
