"""App Settings tag: the project's token provider, bot identity, debug audio, e2e encryption, project secret.

Secrets (access key, webservice headers, e2e password, project secret) are stored encrypted and never echoed,
except the e2e password in manual mode and the project secret on getSecret (admins only).
"""

from models.base import rfc3339
from models.settings import (
    SettingsState,
    load_app_settings,
    remove_app_settings,
    replace_app_settings,
    reveal_project_secret,
    revoke_project_secret,
    set_debug_audio,
    set_e2e_encryption,
    sync_project_secret,
    update_app_settings,
)


def _serialize(state: SettingsState) -> dict:
    """AppSettingsResponse (the one place settings are turned into JSON); None-valued optionals omitted."""
    row, project = state.settings, state.project
    body = {
        "id": row.id,
        "appId": project.app_id,
        "tokenProviderType": row.token_provider_type,
        "botUserId": row.bot_user_id,
        "webserviceUrl": row.webservice_url,
        "webserviceMethod": row.webservice_method,
        "botUserData": row.bot_user_data,
        "isConfigured": state.is_configured,
        "hasSecret": state.has_secret,
        "debugAudioEnabled": bool(row.debug_audio_enabled),
        "projectName": project.name,
        "e2eEncryptionMode": row.e2e_encryption_mode,
        "e2eEncryptionPassword": state.e2e_password,
    }
    return {name: value for name, value in body.items() if value is not None}


def get_app_settings(project):
    """GET /settings: the project's settings (404 when none)."""
    return _serialize(load_app_settings(project))


def upsert_app_settings(project, body):
    """PUT /settings: create or fully replace the settings."""
    return _serialize(replace_app_settings(project, body))


def patch_app_settings(project, body):
    """PATCH /settings: change only the given fields (404 when none)."""
    return _serialize(update_app_settings(project, body))


def delete_app_settings(project):
    """DELETE /settings: remove the settings (404 when none)."""
    return {"id": remove_app_settings(project), "deleted": True}


def update_debug_audio(project, body):
    """PATCH /settings/debug-audio: toggle debug audio storage."""
    return _serialize(set_debug_audio(project, body["enabled"]))


def update_e2e_encryption(project, body):
    """PATCH /settings/e2e-encryption: set the e2e mode (manual needs a password, given or stored)."""
    return _serialize(set_e2e_encryption(project, body["mode"], body.get("password")))


def get_secret(project):
    """GET /settings/secret: the decrypted project secret (admins only)."""
    return {"secret": reveal_project_secret(project)}


def sync_secret(project):
    """POST /settings/sync-secret: cache the project secret for HMAC checks."""
    return {"hasSecret": True, "syncedAt": rfc3339(sync_project_secret(project).synced_at)}


def revoke_secret(project):
    """DELETE /settings/revoke-secret: drop the cached project secret."""
    revoke_project_secret(project)
    return {"hasSecret": False}
