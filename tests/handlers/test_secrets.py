"""Secrets follow scopes: every answer that can carry a secret fills it only for a principal that may read it
(models.access.SECRET_READERS: the role and API-key scope of the operation that reads it). The audit, field by
field: App.secret (GET /api/projects), AppSettingsResponse.e2eEncryptionPassword (every settings answer),
ProjectSecret.secret (GET …/settings/secret: the operation itself needs admin and settings:read); webhook secrets
and auth values and token-webservice headers are never in any answer (tests/handlers/test_webhooks.py,
tests/handlers/test_app_settings.py)."""

from __future__ import annotations

import pytest

SETTINGS_SCOPES = {"read": "settings:read", "write": "settings:write"}


def apps(client, headers) -> dict:
    response = client.get("/api/projects", headers=headers)
    assert response.status_code == 200
    return {app["id"]: app for app in response.get_json()}


def test_the_project_secret_in_app_answers_needs_the_settings_read_scope(client, owner, api_key_headers, add_member):
    """GET /api/projects: an admin's API key with only projects:read gets "", as a maintainer does."""
    project = owner.project.id
    assert apps(client, owner.headers)[project]["secret"] == owner.secret  # an admin's session
    assert apps(client, api_key_headers(["projects:read"]))[project]["secret"] == ""
    both = api_key_headers(["projects:read", "settings:read"])
    assert apps(client, both)[project]["secret"] == owner.secret
    maintainer = add_member("maintainer")
    assert apps(client, maintainer.headers)[project]["secret"] == ""
    key = client.post("/api/api-keys", headers=maintainer.headers,
                      json={"name": "m", "scopes": ["projects:read", "settings:read"]}).get_json()["key"]
    assert apps(client, {"X-API-Key": key})[project]["secret"] == ""  # the creator's role decides too


@pytest.fixture
def manual_e2e(client, owner):
    body = {"tokenProviderType": "rooms", "e2eEncryptionMode": "manual", "e2eEncryptionPassword": "e2e-pass-42"}
    response = client.put(f"/api/projects/{owner.project.id}/settings", json=body, headers=owner.headers)
    assert response.status_code == 200 and response.get_json()["e2eEncryptionPassword"] == "e2e-pass-42"
    return body


@pytest.mark.parametrize("scopes,shown", [
    (["settings:write"], False),
    (["settings:write", "settings:read"], True),
])
def test_the_e2e_password_in_settings_answers_needs_the_settings_read_scope(client, owner, api_key_headers,
                                                                            manual_e2e, scopes, shown):
    """A key that may change settings but not read them gets no secret back from its own change."""
    url = f"/api/projects/{owner.project.id}/settings"
    headers = api_key_headers(scopes)
    answers = [
        client.put(url, json=manual_e2e, headers=headers),
        client.patch(url, json={"debugAudioEnabled": True}, headers=headers),
        client.patch(f"{url}/debug-audio", json={"enabled": False}, headers=headers),
        client.patch(f"{url}/e2e-encryption", json={"mode": "manual"}, headers=headers),
    ]
    for response in answers:
        assert response.status_code == 200, response.get_json()
        assert ("e2eEncryptionPassword" in response.get_json()) is shown
        assert response.get_json()["e2eEncryptionMode"] == "manual"


def test_settings_readers_see_the_e2e_password(client, owner, api_key_headers, add_member, manual_e2e):
    url = f"/api/projects/{owner.project.id}/settings"
    developer = add_member("developer")
    assert client.get(url, headers=developer.headers).get_json()["e2eEncryptionPassword"] == "e2e-pass-42"
    reader = api_key_headers(["settings:read"])
    assert client.get(url, headers=reader).get_json()["e2eEncryptionPassword"] == "e2e-pass-42"


def test_the_project_secret_operation_needs_admin_and_settings_read(client, owner, api_key_headers, add_member):
    url = f"/api/projects/{owner.project.id}/settings/secret"
    assert client.get(url, headers=api_key_headers(["settings:read"])).get_json() == {"secret": owner.secret}
    assert client.get(url, headers=api_key_headers(["settings:write", "projects:read"])).status_code == 403
    assert client.get(url, headers=add_member("maintainer").headers).status_code == 403
