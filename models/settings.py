"""App settings of a project (how the bot gets ODIN tokens), and the cached project secret."""

from __future__ import annotations

import peewee as pw

from models.base import BaseModel, JSONField, UTCDateTimeField, utcnow
from models.identity import Project

TOKEN_PROVIDERS = ("access_key", "webservice", "rooms")
E2E_MODES = ("disabled", "automatic", "manual")


class AppSettings(BaseModel):
    """One row per configured project; secrets are encrypted (cortex.lib.crypto), never stored in plaintext."""

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


# ---------------------------------------------------------------- domain operations
import base64  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from cortex.lib import crypto, odin  # noqa: E402
from cortex.lib.addresses import NOT_CALLED, refused_literal  # noqa: E402
from models.access import Principal, may_read_secret  # noqa: E402
from models.base import invalid, is_sqlite, not_found, rfc3339, transaction  # noqa: E402
from models.identity import project_secret  # noqa: E402

WEBSERVICE_METHODS = ("GET", "POST")
MAX_BOT_USER_ID = 255
MAX_TOKEN_PATH = 255
MAX_URL = 2048
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
_PATH_INDEX = re.compile(r"\[(\d+)\]")


@dataclass(frozen=True)
class SettingsState:
    """App settings as one operation left them, with what the response derives from other rows."""

    settings: AppSettings
    project: Project
    has_secret: bool
    is_configured: bool
    e2e_password: str | None  # decrypted; only in manual mode


def token_path_segments(path: str) -> list[str]:
    """``data.token``, ``$.data.token`` or ``tokens[0].value`` → path segments (raises ValueError).

    Numeric segments index lists (``tokens.0.value`` works as well).
    """
    text = path.strip() if isinstance(path, str) else ""
    if text.startswith("$"):
        text = text[1:].lstrip(".")
    segments = _PATH_INDEX.sub(r".\1", text).split(".")
    if not text or any(not segment.strip() for segment in segments):
        raise ValueError("must be a dotted path such as data.token (numeric segments index lists)")
    return segments


_generation = 0


def generation() -> int:
    """A number that changes with every settings or secret-cache write of this process: in-process caches of
    them (signed ingest's) compare it to drop what they hold at once; other processes' caches expire."""
    return _generation


def _lock(project: Project) -> None:
    """Serialise settings writes of one project (SQLite writers are already serialised); every write starts
    here, so this is also where :func:`generation` changes."""
    global _generation
    _generation += 1
    if not is_sqlite():
        Project.select(Project.id).where(Project.id == project.id).for_update().execute()


def _row(project: Project) -> AppSettings | None:
    return AppSettings.get_or_none(AppSettings.project == project.id)


def _existing(project: Project) -> AppSettings:
    row = _row(project)
    if row is None:
        raise not_found(f"App settings of project {project.id}")
    return row


def has_cached_secret(project: Project) -> bool:
    """Whether the project secret is cached for HMAC checks."""
    return SecretCache.select().where(SecretCache.project == project.id).exists()


def is_configured(row: AppSettings, project: Project) -> bool:
    """Whether the selected token provider has everything it needs."""
    if row.token_provider_type == "access_key":
        return bool(row.access_key_encrypted and row.bot_user_id)
    if row.token_provider_type == "webservice":
        return bool(row.webservice_url and row.webservice_method and row.webservice_response_token_path)
    if row.token_provider_type == "rooms":
        return project.secret_encrypted is not None
    return False


def _state(row: AppSettings, project: Project) -> SettingsState:
    password = None
    if row.e2e_encryption_mode == "manual" and row.e2e_password_encrypted:
        password = crypto.decrypt(row.e2e_password_encrypted)
    return SettingsState(row, project, has_cached_secret(project), is_configured(row, project), password)


# ---------------------------------------------------------------- validation of the request fields


def _access_key_config(config) -> tuple[str, str]:
    """(canonical access key, bot user id) from an accessKeyConfig, or 400 naming the field."""
    if not isinstance(config, dict):
        raise invalid("accessKeyConfig must be an object with accessKey and botUserId")
    key = config.get("accessKey")
    if not isinstance(key, str) or not key.strip():
        raise invalid("accessKeyConfig.accessKey is required")
    try:
        raw = odin.parse_access_key(key)
    except odin.InvalidAccessKey as exc:
        raise invalid(f"accessKeyConfig.accessKey is not a valid ODIN access key: {exc}") from None
    bot_user_id = config.get("botUserId")
    if not isinstance(bot_user_id, str) or not bot_user_id.strip():
        raise invalid("accessKeyConfig.botUserId must not be empty")
    if len(bot_user_id.strip()) > MAX_BOT_USER_ID:
        raise invalid(f"accessKeyConfig.botUserId must be at most {MAX_BOT_USER_ID} characters")
    return base64.b64encode(raw).decode("ascii").rstrip("="), bot_user_id.strip()


def _webservice_url(url) -> str:
    if not isinstance(url, str) or not url.strip():
        raise invalid("webserviceConfig.url is required")
    url = url.strip()
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise invalid("webserviceConfig.url is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise invalid("webserviceConfig.url must be an http(s) URL with a host, e.g. https://example.com/token")
    if parts.username is not None or parts.password is not None:
        raise invalid("webserviceConfig.url must not contain credentials; send them in webserviceConfig.headers")
    refused = refused_literal(url)
    if refused is not None:
        raise invalid(f"webserviceConfig.url: {refused}; {NOT_CALLED}")
    if len(url) > MAX_URL or not url.isascii() or any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise invalid(
            f"webserviceConfig.url must be at most {MAX_URL} ASCII characters without spaces (percent-encode others)"
        )
    return url


def _webservice_headers(headers) -> dict[str, str]:
    if not isinstance(headers, dict):
        raise invalid("webserviceConfig.headers must be an object of header names to string values")
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise invalid(f"webserviceConfig.headers: {name!r} is not a valid HTTP header name")
        if not isinstance(value, str) or any(ch in value for ch in "\r\n\x00"):
            raise invalid(f"webserviceConfig.headers.{name} must be a string without line breaks")
        try:
            value.encode("latin-1")  # what HTTP/1.1 header values can carry
        except UnicodeEncodeError:
            raise invalid(f"webserviceConfig.headers.{name} must contain only ISO-8859-1 characters") from None
    return dict(headers)


def _apply_webservice_config(row: AppSettings, config, *, merge: bool) -> None:
    """Set the webservice fields from a webserviceConfig (PATCH keeps stored headers/bodyTemplate if omitted)."""
    if not isinstance(config, dict):
        raise invalid("webserviceConfig must be an object with url, method and responseTokenPath")
    url = _webservice_url(config.get("url"))
    method = config.get("method")
    if method not in WEBSERVICE_METHODS:
        raise invalid("webserviceConfig.method must be GET or POST")
    path = config.get("responseTokenPath")
    if not isinstance(path, str) or not path.strip():
        raise invalid("webserviceConfig.responseTokenPath must not be empty")
    try:
        token_path_segments(path)
    except ValueError as exc:
        raise invalid(f"webserviceConfig.responseTokenPath {exc}") from None
    if len(path.strip()) > MAX_TOKEN_PATH:
        raise invalid(f"webserviceConfig.responseTokenPath must be at most {MAX_TOKEN_PATH} characters")
    template = config.get("bodyTemplate")
    if template is not None and not isinstance(template, str):
        raise invalid("webserviceConfig.bodyTemplate must be a string")
    row.webservice_url, row.webservice_method, row.webservice_response_token_path = url, method, path.strip()
    if "headers" in config or not merge:
        headers = _webservice_headers(config.get("headers") or {})
        row.webservice_headers_encrypted = crypto.encrypt(json.dumps(headers)) if headers else None
    if "bodyTemplate" in config or not merge:
        row.webservice_body_template = template or None


def _clear_access_key(row: AppSettings) -> None:
    row.access_key_encrypted = row.bot_user_id = None


def _clear_webservice(row: AppSettings) -> None:
    row.webservice_url = row.webservice_method = row.webservice_response_token_path = None
    row.webservice_headers_encrypted = row.webservice_body_template = None


def _apply_provider(row: AppSettings, project: Project, request: dict, *, merge: bool) -> None:
    """Provider type and its config; the other provider's config is cleared (and ignored when sent).

    With ``merge`` (PATCH) the stored config of an unchanged provider is the starting point; either way the
    resulting config must be complete for the selected provider.
    """
    provider = request.get("tokenProviderType", row.token_provider_type)
    if provider not in TOKEN_PROVIDERS:
        raise invalid(f"tokenProviderType must be one of {', '.join(TOKEN_PROVIDERS)}")
    if not merge or provider != row.token_provider_type:
        if provider != "access_key":
            _clear_access_key(row)
        if provider != "webservice":
            _clear_webservice(row)
    row.token_provider_type = provider
    # A config for a provider that is not selected is ignored (never stored), like a cleared one.
    if provider == "access_key" and request.get("accessKeyConfig") is not None:
        key, row.bot_user_id = _access_key_config(request["accessKeyConfig"])
        row.access_key_encrypted = crypto.encrypt(key)
    if provider == "webservice" and request.get("webserviceConfig") is not None:
        _apply_webservice_config(row, request["webserviceConfig"], merge=merge)
    if provider == "access_key" and not is_configured(row, project):
        raise invalid("accessKeyConfig (accessKey and botUserId) is required for tokenProviderType access_key")
    if provider == "webservice" and not is_configured(row, project):
        raise invalid(
            "webserviceConfig (url, method and responseTokenPath) is required for tokenProviderType webservice"
        )
    if provider == "rooms" and not is_configured(row, project):
        raise invalid("tokenProviderType rooms needs the project secret, and this project has none")


def _apply_e2e(row: AppSettings, mode, password, *, password_field: str, mode_field: str) -> None:
    """``manual`` needs a password (given, or already stored; empty keeps it); other modes clear it."""
    if mode not in E2E_MODES:
        raise invalid(f"{mode_field} must be one of {', '.join(E2E_MODES)}")
    if password is not None and not isinstance(password, str):
        raise invalid(f"{password_field} must be a string")
    if mode == "manual":
        if password:
            row.e2e_password_encrypted = crypto.encrypt(password)
        elif not row.e2e_password_encrypted:
            raise invalid(f"{password_field} is required when the e2e encryption mode is manual")
    else:
        row.e2e_password_encrypted = None
    row.e2e_encryption_mode = mode


def _apply_plain_fields(row: AppSettings, request: dict, *, merge: bool) -> None:
    if "botUserData" in request or not merge:
        data = request.get("botUserData")
        if data is not None and not isinstance(data, dict):
            raise invalid("botUserData must be an object")
        row.bot_user_data = data
    if "debugAudioEnabled" in request or not merge:
        enabled = request.get("debugAudioEnabled", False)
        if not isinstance(enabled, bool):
            raise invalid("debugAudioEnabled must be a boolean")
        row.debug_audio_enabled = enabled


def _save(row: AppSettings, project: Project, *, created: bool = False) -> SettingsState:
    """Persist (insert when ``created``), bumping updated_at, and return the resulting state."""
    row.updated_at = utcnow()
    row.save(force_insert=created)
    return _state(row, project)


# ---------------------------------------------------------------- operations (one transaction each)


def load_app_settings(project: Project) -> SettingsState:
    """The project's settings (404 when it has none)."""
    return _state(_existing(project), project)


def replace_app_settings(project: Project, request: dict) -> SettingsState:
    """PUT: create the settings or replace them entirely (omitted fields take their defaults)."""
    with transaction():
        _lock(project)
        row = _row(project)
        created = row is None
        if created:
            row = AppSettings(project=project.id, token_provider_type=request.get("tokenProviderType"))
        _apply_provider(row, project, request, merge=False)
        _apply_plain_fields(row, request, merge=False)
        _apply_e2e(row, request.get("e2eEncryptionMode", "disabled"), request.get("e2eEncryptionPassword"),
                   password_field="e2eEncryptionPassword", mode_field="e2eEncryptionMode")
        return _save(row, project, created=created)


def update_app_settings(project: Project, changes: dict) -> SettingsState:
    """PATCH: change only the given fields (404 without settings); the resulting settings must be valid."""
    with transaction():
        _lock(project)
        row = _existing(project)
        _apply_provider(row, project, changes, merge=True)
        _apply_plain_fields(row, changes, merge=True)
        if "e2eEncryptionMode" in changes or changes.get("e2eEncryptionPassword"):
            _apply_e2e(row, changes.get("e2eEncryptionMode", row.e2e_encryption_mode),
                       changes.get("e2eEncryptionPassword"),
                       password_field="e2eEncryptionPassword", mode_field="e2eEncryptionMode")
        return _save(row, project)


def remove_app_settings(project: Project) -> str:
    """Delete the settings; returns their id (404 when there are none)."""
    with transaction():
        _lock(project)
        row = _existing(project)
        row.delete_instance()
        return row.id


def set_debug_audio(project: Project, enabled: bool) -> SettingsState:
    """Turn debug audio storage on or off (404 without settings)."""
    if not isinstance(enabled, bool):
        raise invalid("enabled must be a boolean")
    with transaction():
        _lock(project)
        row = _existing(project)
        row.debug_audio_enabled = enabled
        return _save(row, project)


def set_e2e_encryption(project: Project, mode: str, password: str | None = None) -> SettingsState:
    """Set the e2e encryption mode (404 without settings); see :func:`_apply_e2e` for the password rules."""
    with transaction():
        _lock(project)
        row = _existing(project)
        _apply_e2e(row, mode, password, password_field="password", mode_field="mode")
        return _save(row, project)


# ---------------------------------------------------------------- the project secret and its cache


def reveal_project_secret(project: Project) -> str:
    """The decrypted project secret (404 when the project has none)."""
    secret = project_secret(project)
    if secret is None:
        raise not_found(f"Secret of project {project.id}")
    return secret


def _touch_settings(project: Project) -> None:
    AppSettings.update(updated_at=utcnow()).where(AppSettings.project == project.id).execute()


def sync_project_secret(project: Project) -> SecretCache:
    """Copy the project secret into the cache (create or refresh); 400 when the project has none."""
    secret = project_secret(project)
    if secret is None:
        raise invalid("This project has no secret to sync")
    with transaction():
        _lock(project)
        row = SecretCache.get_or_none(SecretCache.project == project.id)
        if row is None:
            row = SecretCache.create(project=project.id, secret_encrypted=crypto.encrypt(secret), synced_at=utcnow())
        else:
            row.secret_encrypted, row.synced_at = crypto.encrypt(secret), utcnow()
            row.save(only=[SecretCache.secret_encrypted, SecretCache.synced_at])
        _touch_settings(project)
        return row


def revoke_project_secret(project: Project) -> bool:
    """Drop the cached secret; returns whether one was cached."""
    with transaction():
        _lock(project)
        removed = SecretCache.delete().where(SecretCache.project == project.id).execute()
        if removed:
            _touch_settings(project)
        return bool(removed)


def cached_project_secret(project: Project) -> str | None:
    """The cached project secret for HMAC checks (signed ingest), or None when not synced or revoked."""
    row = SecretCache.get_or_none(SecretCache.project == project.id)
    return None if row is None else crypto.decrypt(row.secret_encrypted)



# ---------------------------------------------------------------- bodies


def app_settings_body(state: SettingsState, principal: Principal) -> dict:
    """AppSettingsResponse for ``principal``; None-valued optionals omitted. Secrets never, but the e2e password
    in manual mode — and that only for a principal that may read settings (``models.access.SECRET_READERS``:
    an API key needs ``settings:read``, also when it changed the settings)."""
    row, project = state.settings, state.project
    password = state.e2e_password
    if password is not None and not may_read_secret(principal, principal.roles.get(project.id), "settings secrets"):
        password = None
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
        "e2eEncryptionPassword": password,
    }
    return {name: value for name, value in body.items() if value is not None}


def secret_cache_body(row: SecretCache) -> dict:
    """SecretCacheStatus after a sync."""
    return {"hasSecret": True, "syncedAt": rfc3339(row.synced_at)}
