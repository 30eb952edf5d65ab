"""Projects as members see them, and membership management (invite, remove, change role)."""

from __future__ import annotations

import peewee as pw

from models.base import DomainError, transaction
from models.identity import ROLES, Project, ProjectMember, User, normalise_email

ACTIVE = "active"
PENDING = "pending"
REVOKED = "revoked"


class MembershipError(DomainError):
    """A membership rule was broken: kind is "invalid" (400), "not_found" (404) or "conflict" (409)."""


def member_projects(user_id: str | None, tenant_id: str | None = None, project_id: str | None = None):
    """(project, role) pairs of a user's active memberships, optionally within one tenant / one project."""
    if user_id is None:
        return []
    query = (
        Project.select(Project, ProjectMember.role)
        .join(ProjectMember)
        .where(ProjectMember.user == user_id, ProjectMember.status == ACTIVE)
        .order_by(Project.created_at, Project.id)
    )
    if tenant_id is not None:
        query = query.where(Project.tenant == tenant_id)
    if project_id is not None:
        query = query.where(Project.id == project_id)
    return [(project, project.projectmember.role) for project in query]


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
        raise MembershipError("not_found", f"Project user {permission_id} not found")
    return member


def _other_active_admins(project: Project, member: ProjectMember) -> int:
    """Active admins of the project besides ``member`` (locked on PostgreSQL while we decide)."""
    query = ProjectMember.select(ProjectMember.id).where(
        ProjectMember.project == project.id,
        ProjectMember.role == "admin",
        ProjectMember.status == ACTIVE,
        ProjectMember.id != member.id,
    )
    if isinstance(ProjectMember._meta.database.obj, pw.PostgresqlDatabase):
        query = query.for_update()
    return len(list(query))


def _is_last_admin(project: Project, member: ProjectMember) -> bool:
    return member.role == "admin" and member.status == ACTIVE and _other_active_admins(project, member) == 0


def invite(project: Project, email: str, role: str) -> tuple[ProjectMember, bool]:
    """Invite an email as ``role``: a pending membership until that user logs in. Returns (member, is_new)."""
    email = normalise_email(email)
    local, _, domain = email.partition("@")
    if not local or "." not in domain or len(email) > 320 or any(c.isspace() for c in email):
        raise MembershipError("invalid", f"email {email!r} is not an email address")
    if role not in ROLES:
        raise MembershipError("invalid", f"role must be one of {list(ROLES)}")
    with transaction():
        member = ProjectMember.get_or_none(ProjectMember.project == project.id, ProjectMember.email == email)
        if member is not None and member.status == ACTIVE:
            raise MembershipError("conflict", f"{email} is already an active member of this project")
        if member is None:
            return ProjectMember.create(project=project.id, email=email, role=role, status=PENDING), True
        member.role, member.status, member.user = role, PENDING, None
        member.save()
        return member, False


def remove(project: Project, permission_id: str) -> ProjectMember:
    """Revoke a membership (access ends with the next request); the last admin cannot be removed."""
    with transaction():
        member = _membership(project, permission_id)
        if _is_last_admin(project, member):
            raise MembershipError("conflict", "The last admin of a project cannot be removed")
        member.status = REVOKED
        member.save(only=[ProjectMember.status])
        return member


def change_role(project: Project, permission_id: str, role: str) -> ProjectMember:
    """Change a member's role; the last admin cannot be demoted."""
    if role not in ROLES:
        raise MembershipError("invalid", f"role must be one of {list(ROLES)}")
    with transaction():
        member = _membership(project, permission_id)
        if role != "admin" and _is_last_admin(project, member):
            raise MembershipError("conflict", "The last admin of a project cannot be demoted")
        member.role = role
        member.save(only=[ProjectMember.role])
        return member


def activate_invitations(user: User) -> int:
    """Turn the user's pending invitations into active memberships (called when they log in)."""
    with transaction():
        return (
            ProjectMember.update(user=user.id, status=ACTIVE)
            .where(ProjectMember.email == normalise_email(user.email), ProjectMember.status == PENDING)
            .execute()
        )
