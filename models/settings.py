"""App settings of a project (how the bot gets ODIN tokens), and the cached project secret."""

from __future__ import annotations

import peewee as pw

from models.base import BaseModel, JSONField, UTCDateTimeField, utcnow
from models.identity import Project

TOKEN_PROVIDERS = ("access_key", "webservice", "rooms")
E2E_MODES = ("disabled", "automatic", "manual")


class AppSettings(BaseModel):
    """One row per configured project; secrets are encrypted (cortex.crypto), never stored in plaintext."""

    project = pw.ForeignKeyField(Project, unique=True, backref="app_settings", on_delete="CASCADE")
    token_provider_type = pw.CharField(max_length=16)
    access_key_encrypted = pw.TextField(null=True)
    bot_user_id = pw.CharField(max_length=255, null=True)
    webservice_url = pw.TextField(null=True)
    webservice_method = pw.CharField(max_length=8, null=True)
    webservice_headers_encrypted = pw.TextField(null=True)  # encrypted JSON object
    webservice_body_template = pw.TextField(null=True)
    webservice_response_token_path = pw.CharField(max_length=255, null=True)
    bot_user_data = JSONField(null=True)
    debug_audio_enabled = pw.BooleanField(default=False)
    e2e_encryption_mode = pw.CharField(max_length=16, default="disabled")
    e2e_password_encrypted = pw.TextField(null=True)
    updated_at = UTCDateTimeField(default=utcnow)


class SecretCache(BaseModel):
    """The project secret copied from the project registry for HMAC checks (signed ingest)."""

    project = pw.ForeignKeyField(Project, unique=True, backref="secret_cache", on_delete="CASCADE")
    secret_encrypted = pw.TextField()
    synced_at = UTCDateTimeField(default=utcnow)


MODELS = [AppSettings, SecretCache]
