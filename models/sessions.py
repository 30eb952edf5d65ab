"""Transcription-bot sessions of a project."""

from __future__ import annotations

import peewee as pw

from models.base import BaseModel, UTCDateTimeField, utcnow
from models.identity import Project


class Session(BaseModel):
    """A bot session in one external (ODIN) room."""

    project = pw.ForeignKeyField(Project, backref="sessions", on_delete="CASCADE")
    tenant_id = pw.CharField(max_length=36)
    external_room_id = pw.TextField()
    gateway = pw.TextField(default="gateway.odin.4players.io")
    title = pw.TextField()
    created_by_user_id = pw.CharField(max_length=64)
    status = pw.CharField(max_length=32, default="created")
    idle_timeout = pw.FloatField(null=True)
    updated_at = UTCDateTimeField(default=utcnow)

    class Meta:
        indexes = ((("project", "created_at"), False),)


MODELS = [Session]
