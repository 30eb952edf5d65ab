"""Voice product of a project: activation, peer limit, ODIN access keys (public halves only).

The peer limit (``peer_limit`` > 0) caps the peers present at once across the project's sessions (open presence
spans, ``models.presence``): at the limit, ``POST …/token`` answers 429 (:func:`peer_limit_reached`).
"""

from __future__ import annotations

import peewee as pw

from models.base import BaseModel, UTCDateTimeField, utcnow
from models.identity import Project


class VoiceConfig(BaseModel):
    """Exists once voice is activated for the project."""

    project = pw.ForeignKeyField(Project, unique=True, backref="voice", on_delete="CASCADE")
    peer_limit = pw.IntegerField(default=0)  # 0 = unlimited
    updated_at = UTCDateTimeField(default=utcnow)


class OdinAccessKey(BaseModel):
    """An ODIN access key's public key and key id; the key itself is returned once and never stored."""

    project = pw.ForeignKeyField(Project, backref="odin_access_keys", on_delete="CASCADE")
    name = pw.CharField(max_length=255)
    description = pw.TextField(null=True)
    pub_key = pw.CharField(max_length=64)
    key_id = pw.CharField(max_length=16, index=True)
    updated_at = UTCDateTimeField(default=utcnow)


MODELS = [VoiceConfig, OdinAccessKey]


# ---------------------------------------------------------------- domain operations
from dataclasses import dataclass  # noqa: E402
from datetime import datetime, timedelta  # noqa: E402

from cortex.lib import odin  # noqa: E402
from models.base import check_cap, conflict, invalid, not_found, rfc3339, transaction  # noqa: E402
from models.permissions import permissions_for  # noqa: E402
from models.presence import project_present_count  # noqa: E402

#: Largest peer limit (the column is a 32-bit integer on PostgreSQL).
MAX_PEER_LIMIT = 2**31 - 1
MAX_NAME_LENGTH = 255
_TICK = timedelta(milliseconds=1)  # the precision both databases keep
KEEP = ...  # edit_access_key: leave the description as it is


@dataclass(frozen=True)
class VoiceStatus:
    """The voice state of a project: activation, peer limit (0 = unlimited), number of access keys."""

    activated: bool
    peer_limit: int
    access_keys_count: int


def _not_activated():
    return conflict("Voice is not activated for this project; POST …/voice/activate first")


def _later_than(previous: datetime | None) -> datetime:
    """Now, but strictly after ``previous`` (keeps creation order and update bumps visible at ms precision)."""
    now = utcnow()
    return now if previous is None or now > previous else previous + _TICK


def voice_status(project: Project) -> VoiceStatus:
    """The project's voice state; before activation: not activated, peer limit 0, no keys."""
    config = VoiceConfig.get_or_none(VoiceConfig.project == project.id)
    count = OdinAccessKey.select().where(OdinAccessKey.project == project.id).count()
    if config is None:
        return VoiceStatus(activated=False, peer_limit=0, access_keys_count=count)
    return VoiceStatus(activated=True, peer_limit=config.peer_limit, access_keys_count=count)


def activate_voice(project: Project) -> VoiceStatus:
    """Activate voice for the project; idempotent (an active project keeps its settings, no second row)."""
    with transaction():
        VoiceConfig.insert(project=project.id, peer_limit=0).on_conflict_ignore().execute()
        return voice_status(project)


def peer_limit_reached(project: Project) -> tuple[int, int] | None:
    """(peer limit, peers present) when the project has a peer limit and that many peers (or more) are present
    in its sessions; None when it is unlimited, not activated, or below the limit.

    A soft limit: it refuses new room tokens; peers already present (or holding a token) are not cut off.
    """
    limit = VoiceConfig.select(VoiceConfig.peer_limit).where(VoiceConfig.project == project.id).scalar()
    if not limit or limit <= 0:
        return None
    present = project_present_count(project.id)
    return (limit, present) if present >= limit else None


def check_peer_limit(value) -> int:
    """A peer limit as an int: a whole number from 0 (unlimited) to MAX_PEER_LIMIT, else invalid."""
    whole = isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()
    if not whole or not 0 <= value <= MAX_PEER_LIMIT:
        raise invalid(f"peerLimit must be a whole number from 0 (unlimited) to {MAX_PEER_LIMIT}, not {value!r}")
    return int(value)


def set_peer_limit(project: Project, value) -> VoiceStatus:
    """Set the maximum number of concurrent peers (0 = unlimited); conflict before activation."""
    peer_limit = check_peer_limit(value)
    with transaction():
        updated = (
            VoiceConfig.update(peer_limit=peer_limit, updated_at=utcnow())
            .where(VoiceConfig.project == project.id)
            .execute()
        )
        if not updated:
            raise _not_activated()
        return voice_status(project)


def _check_name(name: str) -> str:
    """An access-key name: not blank, at most MAX_NAME_LENGTH characters (stripped)."""
    name = name.strip()
    if not name:
        raise invalid("name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise invalid(f"name must be at most {MAX_NAME_LENGTH} characters, not {len(name)}")
    return name


def _clean_description(description: str | None) -> str | None:
    """An empty or blank description means none."""
    return (description or "").strip() or None


def access_keys(project: Project):
    """The project's access keys (public halves), oldest first."""
    return (
        OdinAccessKey.select()
        .where(OdinAccessKey.project == project.id)
        .order_by(OdinAccessKey.created_at, OdinAccessKey.id)
    )


def create_access_key(project: Project, name: str, description: str | None = None, *,
                      limit: int) -> tuple[OdinAccessKey, str]:
    """Generate an ODIN access key; returns the row (public key and key id only) and the key, shown once. A
    project holds at most ``limit`` access keys (``CORTEX_MAX_ACCESS_KEYS_PER_PROJECT``): one more is a conflict."""
    name, description = _check_name(name), _clean_description(description)
    with transaction():
        if not VoiceConfig.select().where(VoiceConfig.project == project.id).exists():
            raise _not_activated()
        check_cap(Project, project.id, access_keys(project), limit, "access keys per project",
                  "CORTEX_MAX_ACCESS_KEYS_PER_PROJECT")
        newest = access_keys(project).order_by(OdinAccessKey.created_at.desc()).first()
        created = _later_than(newest.created_at if newest else None)
        access_key = odin.generate_access_key()
        pub_key = odin.public_key_b64(access_key)
        row = OdinAccessKey.create(
            project=project.id,
            name=name,
            description=description,
            pub_key=pub_key,
            key_id=odin.key_id_from_pub_key(pub_key),
            created_at=created,
            updated_at=created,
        )
    return row, access_key


def _key_of(project: Project, access_key_id: str) -> OdinAccessKey:
    """The project's access key with this id, or not_found (also for another project's key)."""
    row = access_keys(project).where(OdinAccessKey.id == access_key_id).first()
    if row is None:
        raise not_found(f"Access key {access_key_id}")
    return row


def edit_access_key(project: Project, access_key_id: str, name: str, description=KEEP) -> OdinAccessKey:
    """Rename an access key and, unless ``description`` is KEEP, replace its description (blank clears it)."""
    name = _check_name(name)
    with transaction():
        row = _key_of(project, access_key_id)
        row.name = name
        if description is not KEEP:
            row.description = _clean_description(description)
        row.updated_at = _later_than(row.updated_at)
        row.save(only=[OdinAccessKey.name, OdinAccessKey.description, OdinAccessKey.updated_at])
    return row


def delete_access_key(project: Project, access_key_id: str) -> OdinAccessKey:
    """Permanently delete an access key of the project; returns the deleted row."""
    with transaction():
        row = _key_of(project, access_key_id)
        row.delete_instance()
    return row


def public_keys(project_ref: str) -> list[str]:
    """The ``pubKey`` of each access key of the project with this id or appId (oldest first); 404: no project."""
    project = Project.select(Project.id).where((Project.id == project_ref) | (Project.app_id == project_ref)).first()
    if project is None:
        raise not_found(f"Project {project_ref}")
    return [row.pub_key for row in access_keys(project).select(OdinAccessKey.pub_key)]


def jwks_body(project_ref: str) -> dict:
    """JwkSet: the project's access-key public keys as JWKs (public; by id or appId)."""
    return {"keys": [odin.jwk(pub_key) for pub_key in public_keys(project_ref)]}


# ---------------------------------------------------------------- bodies


def voice_settings_body(status: VoiceStatus, role: str, scopes: frozenset | None) -> dict:
    """VoiceSettings; ``permissions`` follow the caller's role (and an API key's scopes)."""
    return {
        "peerLimit": status.peer_limit,
        "accessKeysCount": status.access_keys_count,
        "hostingType": "hosted",
        "activated": status.activated,
        "permissions": permissions_for(role, scopes),
    }


def access_key_body(row: OdinAccessKey) -> dict:
    """OdinAccessKey: public key and key id, never the key."""
    body = {"id": row.id, "name": row.name, "pubKey": row.pub_key, "keyId": row.key_id}
    if row.description is not None:
        body["description"] = row.description
    body["created"] = rfc3339(row.created_at)
    body["updated"] = rfc3339(row.updated_at)
    return body
