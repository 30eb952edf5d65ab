"""Who may use which project: the one "projects this principal can see" query, and the project resolver.

Access is membership. A user reaches the projects they are an active member of (their own tenant's or, once
invited, another's). An API key acts for the user who created it: it reaches that user's projects in the
key's tenant (only its bound project, if it has one), with that user's role, further limited by its scopes
(checked by the HTTP gate). A project the caller may not use is indistinguishable from a missing one (404).

Every project-scoped request resolves its project here (:func:`project_for`). What it found is kept for
:data:`ACCESS_TTL` seconds per (caller, project) in the process: a membership change made through this
process (``models.projects``: remove, change role) takes effect at once, one made through another process
within :data:`ACCESS_TTL` seconds. Gaining access is never delayed (only found access is kept).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import peewee as pw

from models.base import Prepared, forbidden, not_found
from models.identity import ROLES, Project, ProjectMember

#: Seconds a process keeps a resolved (caller, project) → role; see the module docstring.
ACCESS_TTL = 1.0
_CACHE_MAX = 10_000


@dataclass
class Principal:
    """An authenticated caller: a user (bearer) or an API key acting for the user who created it."""

    kind: str  # "user" or "api_key"
    tenant_id: str
    user_id: str | None = None
    api_key_id: str | None = None
    scopes: frozenset[str] | None = None  # None: not limited by scopes (users)
    project_id: str | None = None  # API key bound to one project
    roles: dict[str, str] = field(default_factory=dict)  # project id → role, filled by project_for

    @property
    def tenant_filter(self) -> str | None:
        """The tenant an API key is confined to (users may be members of other tenants' projects)."""
        return self.tenant_id if self.kind == "api_key" else None


def role_at_least(role: str, minimum: str | None) -> bool:
    """Compare project roles (developer < maintainer < admin)."""
    return minimum is None or ROLES.index(role) >= ROLES.index(minimum)


#: Every kind of secret an answer may carry, and who may see it: the project role and API-key scope of the
#: operation that reads it (``GET …/settings/secret``, ``GET …/settings``). The one rule: an answer fills a
#: secret-bearing field only for a principal that could call that operation; for anyone else it is blank.
SECRET_READERS = {
    "project secret": ("admin", "settings:read"),
    "settings secrets": ("developer", "settings:read"),  # the e2e password (manual mode)
}


#: Events whose content an operation with its own read scope serves: a principal limited by scopes that lacks
#: the scope receives none of them on an event stream (``message.*`` is transcript text: ``transcripts:read``).
CONTENT_SCOPES = {"message.": "transcripts:read"}


def hidden_event_prefixes(principal: Principal) -> tuple[str, ...]:
    """Type prefixes of the events ``principal``'s streams leave out: content its scopes may not read."""
    if principal.scopes is None:
        return ()
    return tuple(prefix for prefix, scope in CONTENT_SCOPES.items() if scope not in principal.scopes)


def may_read_secret(principal: Principal, role: str | None, kind: str) -> bool:
    """Whether ``principal``, holding ``role`` in the project, may see a secret of this kind in an answer: the
    role of the operation that reads it, and — for an API key — that operation's scope (``SECRET_READERS``)."""
    minimum, scope = SECRET_READERS[kind]
    if role is None or not role_at_least(role, minimum):
        return False
    return principal.scopes is None or scope in principal.scopes


_PROJECT_COLUMNS = tuple(Project._meta.sorted_fields)


def _member_projects(user, tenant, project, ref):
    """Projects (all columns) with the role of ``user``'s active membership; ``tenant``/``project``/``ref`` (id
    or appId) narrow the list when not NULL."""
    return (
        Project.select(*_PROJECT_COLUMNS, ProjectMember.role)
        .join(ProjectMember, on=(ProjectMember.project == Project.id))
        .where(
            (ProjectMember.user == user)
            & (ProjectMember.status == "active")
            & (pw.Value(tenant).is_null() | (Project.tenant == tenant))
            & (pw.Value(project).is_null() | (Project.id == project))
            & (pw.Value(ref).is_null() | (Project.id == ref) | (Project.app_id == ref))
        )
        .order_by(Project.created_at, Project.id)
    )


#: The one "projects this principal can see" query (compiled once per database; see models.base.Prepared).
_MEMBER_PROJECTS = Prepared(_member_projects)


def _project_from_row(values) -> Project:
    """A Project instance from raw column values (converted as Peewee would)."""
    return Project(**{f.name: f.python_value(v) for f, v in zip(_PROJECT_COLUMNS, values, strict=True)})


def member_projects(user_id: str | None, *, tenant_id: str | None = None, project_id: str | None = None,
                    ref: str | None = None) -> list[tuple[Project, str]]:
    """(project, role) of a user's active memberships, oldest project first; optionally within one tenant,
    one project id, or the project with this id or appId (``ref``)."""
    if user_id is None:  # an API key whose creator was deleted reaches no project
        return []
    rows = _MEMBER_PROJECTS.rows(user=user_id, tenant=tenant_id, project=project_id, ref=ref)
    return [(_project_from_row(row[:-1]), row[-1]) for row in rows]


def visible_projects(principal: Principal) -> list[tuple[Project, str]]:
    """(project, role) of every project the principal may use."""
    return member_projects(principal.user_id, tenant_id=principal.tenant_filter, project_id=principal.project_id)


def visible_project_ids(principal: Principal) -> frozenset[str]:
    """The ids of :func:`visible_projects`."""
    return frozenset(project.id for project, _role in visible_projects(principal))


# ---------------------------------------------------------------- the resolver and its short cache

_generation = 0
_found: dict[tuple, tuple[float, int, Project, str]] = {}  # key → (expires, generation, project, role)


def forget_resolved_projects() -> None:
    """Forget what this process resolved. Every membership change calls it (removal, role change); so must any
    future operation that changes a project row (today none does: projects are created, never changed)."""
    global _generation
    _generation += 1
    _found.clear()


def project_for(principal: Principal, ref: str, minimum_role: str | None = None) -> Project:
    """The project (by id or appId) this principal may use, or 404; 403 when its role is below ``minimum_role``.

    The returned instance may be shared with other requests of the process: read it, never change it.
    """
    key = (principal.user_id, principal.tenant_filter, principal.project_id, ref)
    now = time.monotonic()
    hit = _found.get(key)
    if hit is not None and hit[0] > now and hit[1] == _generation:
        project, role = hit[2], hit[3]
    else:
        generation = _generation
        found = member_projects(principal.user_id, tenant_id=principal.tenant_filter,
                                project_id=principal.project_id, ref=ref)
        if not found:
            raise not_found(f"Project {ref}")
        project, role = found[0]
        if len(_found) >= _CACHE_MAX:
            _found.clear()
        _found[key] = (now + ACCESS_TTL, generation, project, role)
    principal.roles[project.id] = role
    if not role_at_least(role, minimum_role):
        raise forbidden(f"This operation needs the {minimum_role} role in the project; you are {role}")
    return project
