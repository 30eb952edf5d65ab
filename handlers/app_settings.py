"""App Settings tag: the project's token provider, bot identity, debug audio, e2e encryption, project secret.

Secrets (access key, webservice headers, e2e password, project secret) are stored encrypted and never echoed,
except the e2e password in manual mode and the project secret on getSecret (admins only).
"""

from models import settings
from models.base import deleted_body


def get_app_settings(principal, project):
    """GET /settings: the project's settings (404 when none)."""
    return settings.app_settings_body(settings.load_app_settings(project), principal)


def upsert_app_settings(principal, project, body):
    """PUT /settings: create or fully replace the settings."""
    return settings.app_settings_body(settings.replace_app_settings(project, body), principal)


def patch_app_settings(principal, project, body):
    """PATCH /settings: change only the given fields (404 when none)."""
    return settings.app_settings_body(settings.update_app_settings(project, body), principal)


def delete_app_settings(project):
    """DELETE /settings: remove the settings (404 when none)."""
    return deleted_body(settings.remove_app_settings(project))


def update_debug_audio(principal, project, body):
    """PATCH /settings/debug-audio: toggle debug audio storage."""
    return settings.app_settings_body(settings.set_debug_audio(project, body["enabled"]), principal)


def update_e2e_encryption(principal, project, body):
    """PATCH /settings/e2e-encryption: set the e2e mode (manual needs a password, given or stored)."""
    return settings.app_settings_body(settings.set_e2e_encryption(project, body["mode"], body.get("password")), principal)


def get_secret(project):
    """GET /settings/secret: the decrypted project secret (admins only)."""
    return {"secret": settings.reveal_project_secret(project)}


def sync_secret(project):
    """POST /settings/sync-secret: cache the project secret for HMAC checks."""
    return settings.secret_cache_body(settings.sync_project_secret(project))


def revoke_secret(project):
    """DELETE /settings/revoke-secret: drop the cached project secret."""
    settings.revoke_project_secret(project)
    return {"hasSecret": False}
