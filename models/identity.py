"""Tenants, users, Fusion sessions, projects and memberships, API keys."""

from __future__ import annotations

import peewee as pw

from models.base import BaseModel, NameListField, UTCDateTimeField

ROLES = ("developer", "maintainer", "admin")  # ascending privilege


class Tenant(BaseModel):
    """An organisation: owns users, projects and API keys."""

    name = pw.CharField(max_length=200)


class User(BaseModel):
    """A person who logs in with email and password."""

    tenant = pw.ForeignKeyField(Tenant, backref="users", on_delete="CASCADE")
    email = pw.CharField(max_length=320, unique=True)
    name = pw.CharField(max_length=200)
    password_hash = pw.CharField(max_length=200)

    class Meta:
        table_name = "users"  # "user" is reserved in PostgreSQL


class FusionSession(BaseModel):
    """A server-side login session; only the SHA-256 of its id is stored."""

    user = pw.ForeignKeyField(User, backref="sessions", on_delete="CASCADE")
    token_hash = pw.CharField(max_length=64, unique=True)
    expires_at = UTCDateTimeField()
    revoked_at = UTCDateTimeField(null=True)


class Project(BaseModel):
    """An ODIN project (App) of a tenant."""

    tenant = pw.ForeignKeyField(Tenant, backref="projects", on_delete="CASCADE")
    app_id = pw.CharField(max_length=64, unique=True)
    name = pw.CharField(max_length=200)
    type = pw.CharField(max_length=32, default="sdk")
    description = pw.TextField(null=True)
    domain = pw.CharField(max_length=253, null=True)
    secret_encrypted = pw.TextField(null=True)  # the project registry's secret; None: project has none
    updated_at = UTCDateTimeField(null=True)


class ProjectMember(BaseModel):
    """A user's role in a project (pending until an invited email logs in)."""

    project = pw.ForeignKeyField(Project, backref="members", on_delete="CASCADE")
    user = pw.ForeignKeyField(User, backref="memberships", null=True, on_delete="CASCADE")
    email = pw.CharField(max_length=320)
    role = pw.CharField(max_length=16)
    status = pw.CharField(max_length=16, default="active")

    class Meta:
        indexes = ((("project", "email"), True),)


class ApiKey(BaseModel):
    """A tenant credential for machines; only the SHA-256 of the key is stored."""

    tenant = pw.ForeignKeyField(Tenant, backref="api_keys", on_delete="CASCADE")
    created_by = pw.ForeignKeyField(User, null=True, on_delete="SET NULL")
    project = pw.ForeignKeyField(Project, null=True, on_delete="CASCADE")
    name = pw.TextField()
    key_prefix = pw.CharField(max_length=32)
    key_hash = pw.CharField(max_length=64, unique=True)
    scopes = NameListField()
    expires_at = UTCDateTimeField(null=True)
    last_used_at = UTCDateTimeField(null=True)
    revoked_at = UTCDateTimeField(null=True)


MODELS = [Tenant, User, FusionSession, Project, ProjectMember, ApiKey]


# ---------------------------------------------------------------- domain operations
import secrets  # noqa: E402
from datetime import timedelta  # noqa: E402

from cortex.lib import crypto  # noqa: E402
from models.base import (  # noqa: E402
    DomainError,
    Prepared,
    conflict,
    invalid,
    new_id,
    release_connection,
    transaction,
    utcnow,
)

API_KEY_PREFIX = "ots_live_"
KEY_PREFIX_LENGTH = len(API_KEY_PREFIX) + 8


def normalise_email(email: str) -> str:
    """Emails compare case-insensitively and without surrounding spaces."""
    return email.strip().lower()


def create_user(email: str, password: str, name: str | None = None, tenant_id: str | None = None) -> User:
    """Create a user, in the given tenant or in a new one."""
    email = normalise_email(email)
    if "@" not in email or len(email) < 3:
        raise invalid(f"email {email!r} is not an email address")
    if len(password) < 6:
        raise invalid("password must be at least 6 characters")
    password_hash = crypto.hash_password(password)  # slow on purpose: not inside the write transaction
    with transaction():
        if User.select().where(User.email == email).exists():
            raise conflict(f"a user with email {email} already exists")
        if tenant_id:
            tenant = Tenant.get_or_none(Tenant.id == tenant_id)
            if tenant is None:
                raise DomainError("not_found", f"tenant {tenant_id} does not exist")
        else:
            tenant = Tenant.create(name=name or email)
        return User.create(
            tenant=tenant, email=email, name=name or email.split("@")[0], password_hash=password_hash
        )


def user_by_email(email: str) -> User | None:
    """The user with this email (compared case-insensitively), or None."""
    return User.get_or_none(User.email == normalise_email(email))


def profile_body(user_id: str | None) -> dict | None:
    """UserProfile of a user (None when there is no such user any more)."""
    user = User.get_or_none(User.id == user_id) if user_id else None
    if user is None:
        return None
    return {"userId": user.id, "tenantId": user.tenant_id, "username": user.name, "email": user.email}


def authenticate(email: str, password: str) -> User | None:
    """The user whose credentials these are, or None. The pooled database connection goes back before the
    password work: a login waiting for an Argon2 slot holds none."""
    user = User.get_or_none(User.email == normalise_email(email))
    release_connection()
    if user is None:
        crypto.burn_password_check(password)
        return None
    return user if crypto.verify_password(user.password_hash, password) else None


def open_fusion_session(user: User, ttl_seconds: int) -> str:
    """Start a server-side session; returns its id (shown once, stored hashed)."""
    session_id = "fsid_" + secrets.token_urlsafe(32)
    FusionSession.create(
        user=user, token_hash=crypto.token_hash(session_id), expires_at=utcnow() + timedelta(seconds=ttl_seconds)
    )
    return session_id


def user_for_fusion_session(session_id: str) -> User | None:
    """The user of a live (known, unexpired, unrevoked) session, or None."""
    session = (
        FusionSession.select(FusionSession, User)
        .join(User)
        .where(FusionSession.token_hash == crypto.token_hash(session_id))
        .first()
    )
    if session is None or session.revoked_at is not None or session.expires_at <= utcnow():
        return None
    return session.user


def revoke_fusion_session(session_id: str) -> bool:
    """Revoke a session (logout everywhere it is used)."""
    return bool(
        FusionSession.update(revoked_at=utcnow())
        .where(FusionSession.token_hash == crypto.token_hash(session_id), FusionSession.revoked_at.is_null())
        .execute()
    )


def _unique_app_id() -> str:
    """A short public project identifier."""
    return "app_" + secrets.token_hex(8)


def create_project(
    owner: User, name: str, type: str = "sdk", description: str | None = None, domain: str | None = None
) -> tuple[Project, str]:
    """Create a project owned by ``owner`` (its admin); returns the project and its plaintext secret."""
    if type not in ("sdk", "conferencing"):
        raise invalid(f"type must be 'sdk' or 'conferencing', not {type!r}")
    if not name.strip():
        raise invalid("name must not be empty")
    secret = secrets.token_urlsafe(32)
    with transaction():
        project = Project.create(
            id=new_id(),
            tenant=owner.tenant_id,
            app_id=_unique_app_id(),
            name=name.strip(),
            type=type,
            description=description,
            domain=domain,
            secret_encrypted=crypto.encrypt(secret),
        )
        ProjectMember.create(project=project, user=owner, email=owner.email, role="admin", status="active")
    return project, secret


def project_secret(project: Project) -> str | None:
    """The decrypted project secret, or None when the project has none (the one place it is revealed)."""
    return None if project.secret_encrypted is None else crypto.decrypt(project.secret_encrypted)


def create_api_key(
    tenant_id: str, created_by: str | None, name: str, scopes: list[str], project_id: str | None, expires_at
) -> tuple[ApiKey, str]:
    """Issue an API key; returns the row and the full key (shown once, stored hashed)."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey.create(
        tenant=tenant_id,
        created_by=created_by,
        project=project_id,
        name=name,
        key_prefix=key[:KEY_PREFIX_LENGTH],
        key_hash=crypto.token_hash(key),
        scopes=sorted(set(scopes)),
        expires_at=expires_at,
    )
    return row, key


def live_api_keys(tenant_id: str, owner_id: str):
    """The unrevoked keys a user created in a tenant, newest first (keys act for their creator)."""
    return (
        ApiKey.select()
        .where(ApiKey.tenant == tenant_id, ApiKey.created_by == owner_id, ApiKey.revoked_at.is_null())
        .order_by(ApiKey.created_at.desc(), ApiKey.id)
    )


#: Columns of the API-key listing, in this order: id, name, key_prefix, scopes, project_id, last_used_at,
#: expires_at, created_at (raw values: see models.base.Prepared).
LIVE_API_KEY_ROWS = Prepared(
    lambda tenant, owner: live_api_keys(tenant, owner).select(
        ApiKey.id, ApiKey.name, ApiKey.key_prefix, ApiKey.scopes, ApiKey.project,
        ApiKey.last_used_at, ApiKey.expires_at, ApiKey.created_at,
    )
)


def revoke_api_key(tenant_id: str, owner_id: str, key_id: str) -> ApiKey | None:
    """Revoke one of the user's live keys at once; None when there is no such live key."""
    with transaction():
        row = live_api_keys(tenant_id, owner_id).where(ApiKey.id == key_id).first()
        if row is None:
            return None
        row.revoked_at = utcnow()
        row.save(only=[ApiKey.revoked_at])
        return row


def note_api_key_use(key_id: str) -> None:
    """Set the key's ``lastUsedAt`` to now."""
    ApiKey.update(last_used_at=utcnow()).where(ApiKey.id == key_id).execute()


def api_key_by_secret(key: str) -> ApiKey | None:
    """The live, unexpired key with this secret, or None."""
    row = ApiKey.get_or_none(ApiKey.key_hash == crypto.token_hash(key))
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None and row.expires_at <= utcnow():
        return None
    return row
