"""Participants: the people (by external ODIN user id) seen in a project's voice rooms."""

from __future__ import annotations

import peewee as pw

from models.base import BaseModel, JSONField, UTCDateTimeField, utcnow
from models.identity import Project


class Participant(BaseModel):
    """One external user of a project; created explicitly or when first seen in a session."""

    project = pw.ForeignKeyField(Project, backref="participants", on_delete="CASCADE")
    tenant_id = pw.CharField(max_length=36)
    external_user_id = pw.TextField()
    display_name = pw.TextField(default="")
    user_data = JSONField(default=dict)
    joined_at = UTCDateTimeField(default=utcnow)
    updated_at = UTCDateTimeField(default=utcnow)

    class Meta:
        indexes = ((("project", "external_user_id"), True),)


MODELS = [Participant]
