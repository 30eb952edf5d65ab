"""Voice product of a project: activation, peer limit, ODIN access keys (public halves only)."""

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
