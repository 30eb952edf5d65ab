"""App settings domain rules without HTTP: provider validation, PATCH semantics, e2e, the secret cache."""

from __future__ import annotations

import pytest

from cortex.lib import crypto, odin
from models.base import DomainError
from models.identity import Project
from models.settings import (
    AppSettings,
    SecretCache,
    cached_project_secret,
    has_cached_secret,
    load_app_settings,
    remove_app_settings,
    replace_app_settings,
    reveal_project_secret,
    revoke_project_secret,
    set_debug_audio,
    set_e2e_encryption,
    sync_project_secret,
    token_path_segments,
    update_app_settings,
)

ACCESS_KEY = odin.generate_access_key()


def access_key_request(**extra) -> dict:
    return {"tokenProviderType": "access_key", "accessKeyConfig": {"accessKey": ACCESS_KEY, "botUserId": "bot"}, **extra}


def problem(call, *args) -> DomainError:
    with pytest.raises(DomainError) as caught:
        call(*args)
    return caught.value


@pytest.mark.parametrize(
    "path,segments",
    [
        ("data.token", ["data", "token"]),
        ("$.data.token", ["data", "token"]),
        ("tokens[0].value", ["tokens", "0", "value"]),
        ("tokens.1", ["tokens", "1"]),
        (" token ", ["token"]),
    ],
)
def test_token_path_segments(path, segments):
    assert token_path_segments(path) == segments


@pytest.mark.parametrize("path", ["", "$", "data..token", ".token", "token.", None])
def test_token_path_segments_rejects_empty_segments(path):
    with pytest.raises(ValueError, match="dotted path"):
        token_path_segments(path)


def test_replace_creates_then_replaces_one_row(owner):
    state = replace_app_settings(owner.project, access_key_request(debugAudioEnabled=True))
    assert state.is_configured and not state.has_secret and state.e2e_password is None
    assert state.settings.debug_audio_enabled is True
    again = replace_app_settings(owner.project, {"tokenProviderType": "rooms"})
    assert again.settings.id == state.settings.id
    row = AppSettings.get_by_id(state.settings.id)
    assert row.token_provider_type == "rooms" and row.access_key_encrypted is None
    assert row.debug_audio_enabled is False and row.e2e_encryption_mode == "disabled"


def test_validation_raises_400_and_writes_nothing(owner):
    error = problem(replace_app_settings, owner.project, {"tokenProviderType": "webservice"})
    assert error.kind == "invalid" and "webserviceConfig" in error.detail
    bad = access_key_request(accessKeyConfig={"accessKey": ACCESS_KEY[:-2], "botUserId": "bot"})
    assert "accessKeyConfig.accessKey is not a valid ODIN access key" in problem(
        replace_app_settings, owner.project, bad
    ).detail
    assert "botUserData must be an object" in problem(
        replace_app_settings, owner.project, access_key_request(botUserData=[1])
    ).detail
    assert AppSettings.select().count() == 0


def test_update_and_single_field_operations_need_existing_settings(owner):
    for call, args in (
        (load_app_settings, ()),
        (update_app_settings, ({"botUserData": {}},)),
        (remove_app_settings, ()),
        (set_debug_audio, (True,)),
        (set_e2e_encryption, ("automatic",)),
    ):
        assert problem(call, owner.project, *args).kind == "not_found"


def test_update_keeps_unmentioned_fields(owner):
    replace_app_settings(owner.project, access_key_request(botUserData={"a": 1}, e2eEncryptionMode="manual",
                                                           e2eEncryptionPassword="pw"))
    state = update_app_settings(owner.project, {"debugAudioEnabled": True})
    row = state.settings
    assert row.bot_user_data == {"a": 1} and row.bot_user_id == "bot" and row.debug_audio_enabled is True
    assert state.e2e_password == "pw" and crypto.decrypt(row.access_key_encrypted) == ACCESS_KEY


def test_e2e_rules(owner):
    replace_app_settings(owner.project, access_key_request())
    assert problem(set_e2e_encryption, owner.project, "manual").kind == "invalid"
    assert problem(set_e2e_encryption, owner.project, "manual", "").kind == "invalid"
    assert problem(set_e2e_encryption, owner.project, "sometimes").kind == "invalid"
    assert set_e2e_encryption(owner.project, "manual", "secret-pw").e2e_password == "secret-pw"
    assert set_e2e_encryption(owner.project, "manual", "").e2e_password == "secret-pw"
    state = set_e2e_encryption(owner.project, "automatic", "secret-pw")
    assert state.e2e_password is None and state.settings.e2e_password_encrypted is None


def test_rooms_is_configured_only_while_the_project_has_a_secret(owner):
    replace_app_settings(owner.project, {"tokenProviderType": "rooms"})
    Project.update(secret_encrypted=None).where(Project.id == owner.project.id).execute()
    project = Project.get_by_id(owner.project.id)
    assert load_app_settings(project).is_configured is False
    assert set_debug_audio(project, True).settings.debug_audio_enabled is True
    assert problem(update_app_settings, project, {"botUserData": {}}).kind == "invalid"
    assert problem(reveal_project_secret, project).kind == "not_found"
    assert problem(sync_project_secret, project).kind == "invalid"


def test_remove_returns_the_id(owner):
    settings_id = replace_app_settings(owner.project, access_key_request()).settings.id
    assert remove_app_settings(owner.project) == settings_id
    assert AppSettings.select().count() == 0


def test_secret_cache(owner):
    assert cached_project_secret(owner.project) is None and not has_cached_secret(owner.project)
    assert reveal_project_secret(owner.project) == owner.secret
    row = sync_project_secret(owner.project)
    assert row.secret_encrypted != owner.secret
    assert cached_project_secret(owner.project) == owner.secret and has_cached_secret(owner.project)
    sync_project_secret(owner.project)
    assert SecretCache.select().count() == 1
    assert revoke_project_secret(owner.project) is True
    assert cached_project_secret(owner.project) is None
    assert revoke_project_secret(owner.project) is False
