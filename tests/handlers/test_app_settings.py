"""App Settings tag: provider configuration, validation, PATCH semantics, e2e rules, secrets at rest, roles."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from cortex.lib import crypto, odin
from models.access import forget_resolved_projects
from models.base import db, parse_timestamp, utcnow
from models.identity import Project
from models.settings import AppSettings, SecretCache, cached_project_secret

ACCESS_KEY = odin.generate_access_key()
HEADER_SECRET = "Bearer header-secret-value-7f3a"
E2E_PASSWORD = "e2e-cipher-password-91c2"


def url(member, suffix: str = "") -> str:
    return f"/api/projects/{member.project.id}/settings{suffix}"


def access_key_settings(**extra) -> dict:
    return {
        "tokenProviderType": "access_key",
        "accessKeyConfig": {"accessKey": ACCESS_KEY, "botUserId": "transcription-bot"},
        **extra,
    }


def webservice_config(**extra) -> dict:
    return {
        "url": "https://tokens.example.com/token",
        "method": "POST",
        "headers": {"Authorization": HEADER_SECRET},
        "bodyTemplate": '{"room":"{{roomId}}","user":"{{userId}}"}',
        "responseTokenPath": "data.token",
        **extra,
    }


def webservice_settings(**extra) -> dict:
    return {"tokenProviderType": "webservice", "webserviceConfig": webservice_config(), **extra}


def put(client, member, body):
    return client.put(url(member), json=body, headers=member.headers)


def patch(client, member, body, suffix: str = ""):
    return client.patch(url(member, suffix), json=body, headers=member.headers)


def stored(member) -> AppSettings:
    return AppSettings.get(AppSettings.project == member.project.id)


def age_updated_at(member) -> None:
    """Move updated_at an hour back, so a write's bump is visible."""
    AppSettings.update(updated_at=utcnow() - timedelta(hours=1)).where(
        AppSettings.project == member.project.id
    ).execute()


def assert_bumped(member) -> None:
    assert utcnow() - stored(member).updated_at < timedelta(minutes=1)


# ------------------------------------------------------------------------------------------- 404 and CRUD


def test_every_settings_operation_without_settings_is_404(client, owner):
    for response in (
        client.get(url(owner), headers=owner.headers),
        patch(client, owner, {"botUserData": {"a": 1}}),
        client.delete(url(owner), headers=owner.headers),
        patch(client, owner, {"enabled": True}, "/debug-audio"),
        patch(client, owner, {"mode": "automatic"}, "/e2e-encryption"),
    ):
        assert response.status_code == 404
        assert response.get_json()["detail"] == f"App settings of project {owner.project.id} not found"
    assert AppSettings.select().count() == 0


def test_put_access_key_creates_settings_and_get_returns_them(client, owner):
    response = put(client, owner, access_key_settings(botUserData={"name": "Bot", "role": "bot"}))
    assert response.status_code == 200
    body = response.get_json()
    row = stored(owner)
    assert body == {
        "id": row.id,
        "appId": owner.project.app_id,
        "tokenProviderType": "access_key",
        "botUserId": "transcription-bot",
        "botUserData": {"name": "Bot", "role": "bot"},
        "isConfigured": True,
        "hasSecret": False,
        "debugAudioEnabled": False,
        "projectName": "Game One",
        "e2eEncryptionMode": "disabled",
    }
    assert crypto.decrypt(row.access_key_encrypted) == ACCESS_KEY
    assert row.access_key_encrypted != ACCESS_KEY
    assert client.get(url(owner), headers=owner.headers).get_json() == body
    by_app_id = client.get(f"/api/projects/{owner.project.app_id}/settings", headers=owner.headers)
    assert by_app_id.get_json() == body


def test_put_webservice_stores_headers_encrypted_and_shows_only_url_and_method(client, owner):
    response = put(client, owner, webservice_settings())
    assert response.status_code == 200
    body = response.get_json()
    assert body["tokenProviderType"] == "webservice" and body["isConfigured"] is True
    assert body["webserviceUrl"] == "https://tokens.example.com/token" and body["webserviceMethod"] == "POST"
    assert "botUserId" not in body
    assert HEADER_SECRET not in response.get_data(as_text=True)
    row = stored(owner)
    assert json.loads(crypto.decrypt(row.webservice_headers_encrypted)) == {"Authorization": HEADER_SECRET}
    assert row.webservice_body_template == '{"room":"{{roomId}}","user":"{{userId}}"}'
    assert row.webservice_response_token_path == "data.token"


def test_put_rooms_needs_the_project_secret(client, owner):
    response = put(client, owner, {"tokenProviderType": "rooms"})
    assert response.status_code == 200
    assert response.get_json()["isConfigured"] is True
    client.delete(url(owner), headers=owner.headers)
    Project.update(secret_encrypted=None).where(Project.id == owner.project.id).execute()
    forget_resolved_projects()  # a project changed behind the models' back (no operation changes a project)
    response = put(client, owner, {"tokenProviderType": "rooms"})
    assert response.status_code == 400
    assert "project secret" in response.get_json()["detail"]
    assert AppSettings.select().count() == 0


def test_put_replaces_everything_and_keeps_the_id(client, owner):
    first = put(client, owner, access_key_settings(botUserData={"a": 1}, debugAudioEnabled=True)).get_json()
    age_updated_at(owner)
    second = put(client, owner, webservice_settings()).get_json()
    assert second["id"] == first["id"]
    assert "botUserData" not in second and second["debugAudioEnabled"] is False
    row = stored(owner)
    assert row.access_key_encrypted is None and row.bot_user_id is None and row.bot_user_data is None
    assert row.webservice_url == "https://tokens.example.com/token"
    assert AppSettings.select().count() == 1
    assert_bumped(owner)


def test_delete_answers_the_settings_id_and_removes_them(client, owner):
    settings_id = put(client, owner, access_key_settings()).get_json()["id"]
    response = client.delete(url(owner), headers=owner.headers)
    assert response.status_code == 200
    assert response.get_json() == {"id": settings_id, "deleted": True}
    assert AppSettings.select().count() == 0
    assert client.delete(url(owner), headers=owner.headers).status_code == 404
    assert client.get(url(owner), headers=owner.headers).status_code == 404


# ------------------------------------------------------------------------------------------- validation

CHECKSUM_BROKEN = ACCESS_KEY[:-1] + ("A" if ACCESS_KEY[-1] != "A" else "B")


@pytest.mark.parametrize(
    "body,detail",
    [
        ({"tokenProviderType": "access_key"}, "accessKeyConfig (accessKey and botUserId) is required"),
        (access_key_settings(accessKeyConfig={"accessKey": "not base64!", "botUserId": "b"}),
         "accessKeyConfig.accessKey is not a valid ODIN access key: access key is not valid base64"),
        (access_key_settings(accessKeyConfig={"accessKey": CHECKSUM_BROKEN, "botUserId": "b"}),
         "accessKeyConfig.accessKey is not a valid ODIN access key: access key checksum mismatch"),
        (access_key_settings(accessKeyConfig={"accessKey": "AQID", "botUserId": "b"}),
         "accessKeyConfig.accessKey is not a valid ODIN access key: access key must decode to 33 bytes"),
        (access_key_settings(accessKeyConfig={"accessKey": "", "botUserId": "b"}), "accessKeyConfig.accessKey"),
        (access_key_settings(accessKeyConfig={"accessKey": ACCESS_KEY, "botUserId": "  "}),
         "accessKeyConfig.botUserId must not be empty"),
        ({"tokenProviderType": "webservice"}, "webserviceConfig (url, method and responseTokenPath) is required"),
        (webservice_settings(webserviceConfig=webservice_config(url="ftp://tokens.example.com/")),
         "webserviceConfig.url must be an http(s) URL with a host"),
        (webservice_settings(webserviceConfig=webservice_config(url="https://")),
         "webserviceConfig.url must be an http(s) URL with a host"),
        (webservice_settings(webserviceConfig=webservice_config(url="tokens.example.com/token")),
         "webserviceConfig.url must be an http(s) URL with a host"),
        (webservice_settings(webserviceConfig=webservice_config(url="https://example.com:99999/")),
         "webserviceConfig.url is not a valid URL"),
        (webservice_settings(webserviceConfig=webservice_config(method="PUT")), "method"),
        (webservice_settings(webserviceConfig=webservice_config(responseTokenPath=" ")),
         "webserviceConfig.responseTokenPath must not be empty"),
        (webservice_settings(webserviceConfig=webservice_config(responseTokenPath="data..token")),
         "webserviceConfig.responseTokenPath must be a dotted path"),
        (webservice_settings(webserviceConfig=webservice_config(headers={"Bad Header": "x"})),
         "webserviceConfig.headers: 'Bad Header' is not a valid HTTP header name"),
        (webservice_settings(webserviceConfig=webservice_config(headers={"X-Key": "a\r\nInjected: 1"})),
         "webserviceConfig.headers.X-Key must be a string without line breaks"),
        (webservice_settings(webserviceConfig=webservice_config(headers={"X-Key": 5})), "headers"),
        (webservice_settings(webserviceConfig=webservice_config(headers={"X-Key": "\u2603"})),
         "webserviceConfig.headers.X-Key must contain only ISO-8859-1 characters"),
        (webservice_settings(webserviceConfig=webservice_config(url="https://exämple.com/token")),
         "webserviceConfig.url must be at most 2048 ASCII characters"),
        (webservice_settings(webserviceConfig=webservice_config(url="https://user:pw@example.com/t")),
         "webserviceConfig.url must not contain credentials"),
        (webservice_settings(webserviceConfig=webservice_config(url="https://example.com/a b")),
         "webserviceConfig.url must be at most 2048 ASCII characters"),
        ({"tokenProviderType": "magic"}, "tokenProviderType"),
        (access_key_settings(e2eEncryptionMode="manual"),
         "e2eEncryptionPassword is required when the e2e encryption mode is manual"),
        (access_key_settings(e2eEncryptionMode="manual", e2eEncryptionPassword=""), "e2eEncryptionPassword"),
    ],
)
def test_put_rejects_invalid_settings_naming_the_field(client, owner, body, detail):
    response = put(client, owner, body)
    assert response.status_code == 400
    assert detail in response.get_json()["detail"]
    assert AppSettings.select().count() == 0


def test_config_of_the_provider_not_selected_is_ignored(client, owner):
    body = put(client, owner, access_key_settings(webserviceConfig=webservice_config())).get_json()
    assert "webserviceUrl" not in body and body["botUserId"] == "transcription-bot"
    row = stored(owner)
    assert row.webservice_url is None and row.webservice_headers_encrypted is None
    bad_key = {"accessKey": "not-a-key", "botUserId": "b"}
    body = put(client, owner, webservice_settings(accessKeyConfig=bad_key)).get_json()
    assert body["tokenProviderType"] == "webservice" and "botUserId" not in body
    assert stored(owner).access_key_encrypted is None
    response = patch(client, owner, {"accessKeyConfig": {"accessKey": ACCESS_KEY, "botUserId": "b"}})
    assert response.status_code == 200 and stored(owner).access_key_encrypted is None


def test_access_key_is_accepted_url_safe_and_stored_canonical(client, owner):
    url_safe = ACCESS_KEY.replace("+", "-").replace("/", "_") + "="
    response = put(client, owner, access_key_settings(accessKeyConfig={"accessKey": url_safe, "botUserId": " b "}))
    assert response.status_code == 200 and response.get_json()["botUserId"] == "b"
    assert crypto.decrypt(stored(owner).access_key_encrypted) == ACCESS_KEY


# ------------------------------------------------------------------------------------------- PATCH


def test_patch_changes_only_the_given_fields(client, owner):
    put(client, owner, access_key_settings(
        botUserData={"name": "Bot"}, debugAudioEnabled=True, e2eEncryptionMode="manual",
        e2eEncryptionPassword=E2E_PASSWORD,
    ))
    before = stored(owner)
    age_updated_at(owner)
    response = patch(client, owner, {"botUserData": {"name": "Renamed", "team": 2}})
    assert response.status_code == 200
    body = response.get_json()
    assert body["botUserData"] == {"name": "Renamed", "team": 2}
    assert body["botUserId"] == "transcription-bot" and body["debugAudioEnabled"] is True
    assert body["e2eEncryptionMode"] == "manual" and body["e2eEncryptionPassword"] == E2E_PASSWORD
    after = stored(owner)
    assert after.access_key_encrypted == before.access_key_encrypted
    assert after.e2e_password_encrypted == before.e2e_password_encrypted
    assert after.token_provider_type == "access_key" and after.bot_user_data == {"name": "Renamed", "team": 2}
    assert_bumped(owner)
    assert patch(client, owner, {"debugAudioEnabled": False}).get_json()["botUserData"] == {
        "name": "Renamed", "team": 2,
    }
    assert stored(owner).debug_audio_enabled is False


def test_patch_switching_provider_clears_the_other_providers_config(client, owner):
    put(client, owner, access_key_settings(botUserData={"keep": True}))
    response = patch(client, owner, {"tokenProviderType": "webservice", "webserviceConfig": webservice_config()})
    assert response.status_code == 200
    body = response.get_json()
    assert body["tokenProviderType"] == "webservice" and "botUserId" not in body
    assert body["botUserData"] == {"keep": True}
    row = stored(owner)
    assert row.access_key_encrypted is None and row.bot_user_id is None
    response = patch(client, owner, {"tokenProviderType": "rooms"})
    assert response.status_code == 200 and "webserviceUrl" not in response.get_json()
    row = stored(owner)
    assert row.webservice_url is None and row.webservice_headers_encrypted is None
    assert row.webservice_body_template is None and row.webservice_response_token_path is None


def test_patch_must_leave_valid_settings(client, owner):
    put(client, owner, access_key_settings())
    before = stored(owner)
    response = patch(client, owner, {"tokenProviderType": "webservice"})
    assert response.status_code == 400
    assert "webserviceConfig (url, method and responseTokenPath) is required" in response.get_json()["detail"]
    response = patch(client, owner, {"accessKeyConfig": {"accessKey": CHECKSUM_BROKEN, "botUserId": "b"}})
    assert response.status_code == 400 and "checksum mismatch" in response.get_json()["detail"]
    after = stored(owner)
    assert after.__data__ == before.__data__


def test_patch_webservice_config_keeps_stored_headers_unless_given(client, owner):
    put(client, owner, webservice_settings())
    config = webservice_config(url="https://other.example.com/t", method="GET", responseTokenPath="token")
    del config["headers"], config["bodyTemplate"]
    response = patch(client, owner, {"webserviceConfig": config})
    assert response.status_code == 200
    assert response.get_json()["webserviceUrl"] == "https://other.example.com/t"
    row = stored(owner)
    assert json.loads(crypto.decrypt(row.webservice_headers_encrypted)) == {"Authorization": HEADER_SECRET}
    assert row.webservice_body_template == '{"room":"{{roomId}}","user":"{{userId}}"}'
    patch(client, owner, {"webserviceConfig": {**config, "headers": {}, "bodyTemplate": ""}})
    row = stored(owner)
    assert row.webservice_headers_encrypted is None and row.webservice_body_template is None


# ------------------------------------------------------------------------------------------- debug audio, e2e


def test_debug_audio_toggle(client, owner):
    put(client, owner, access_key_settings())
    age_updated_at(owner)
    response = patch(client, owner, {"enabled": True}, "/debug-audio")
    assert response.status_code == 200 and response.get_json()["debugAudioEnabled"] is True
    assert stored(owner).debug_audio_enabled is True
    assert_bumped(owner)
    assert patch(client, owner, {"enabled": False}, "/debug-audio").get_json()["debugAudioEnabled"] is False
    assert stored(owner).debug_audio_enabled is False


def test_e2e_encryption_rules(client, owner):
    put(client, owner, access_key_settings())
    e2e = "/e2e-encryption"
    response = patch(client, owner, {"mode": "manual"}, e2e)
    assert response.status_code == 400
    assert response.get_json()["detail"] == "password is required when the e2e encryption mode is manual"
    assert patch(client, owner, {"mode": "manual", "password": ""}, e2e).status_code == 400

    age_updated_at(owner)
    body = patch(client, owner, {"mode": "manual", "password": E2E_PASSWORD}, e2e).get_json()
    assert body["e2eEncryptionMode"] == "manual" and body["e2eEncryptionPassword"] == E2E_PASSWORD
    assert crypto.decrypt(stored(owner).e2e_password_encrypted) == E2E_PASSWORD
    assert_bumped(owner)
    assert client.get(url(owner), headers=owner.headers).get_json()["e2eEncryptionPassword"] == E2E_PASSWORD

    body = patch(client, owner, {"mode": "manual", "password": ""}, e2e).get_json()  # empty keeps it
    assert body["e2eEncryptionPassword"] == E2E_PASSWORD
    assert patch(client, owner, {"mode": "manual"}, e2e).get_json()["e2eEncryptionPassword"] == E2E_PASSWORD

    for mode in ("automatic", "disabled"):
        patch(client, owner, {"mode": "manual", "password": E2E_PASSWORD}, e2e)
        body = patch(client, owner, {"mode": mode, "password": "ignored"}, e2e).get_json()
        assert body["e2eEncryptionMode"] == mode and "e2eEncryptionPassword" not in body
        assert stored(owner).e2e_password_encrypted is None
    assert patch(client, owner, {"mode": "manual"}, e2e).status_code == 400


def test_put_and_patch_follow_the_e2e_rules(client, owner):
    body = put(client, owner, access_key_settings(e2eEncryptionMode="manual", e2eEncryptionPassword="pw-1")).get_json()
    assert body["e2eEncryptionPassword"] == "pw-1"
    # PUT in manual mode without a password keeps the stored one; omitting the mode means disabled
    assert put(client, owner, access_key_settings(e2eEncryptionMode="manual")).get_json()["e2eEncryptionPassword"] == "pw-1"
    body = put(client, owner, access_key_settings()).get_json()
    assert body["e2eEncryptionMode"] == "disabled" and stored(owner).e2e_password_encrypted is None
    response = patch(client, owner, {"e2eEncryptionMode": "manual"})
    assert response.status_code == 400 and "e2eEncryptionPassword is required" in response.get_json()["detail"]
    body = patch(client, owner, {"e2eEncryptionMode": "manual", "e2eEncryptionPassword": "pw-2"}).get_json()
    assert body["e2eEncryptionPassword"] == "pw-2"
    assert patch(client, owner, {"e2eEncryptionPassword": "pw-3"}).get_json()["e2eEncryptionPassword"] == "pw-3"
    body = patch(client, owner, {"e2eEncryptionMode": "automatic"}).get_json()
    assert "e2eEncryptionPassword" not in body and stored(owner).e2e_password_encrypted is None


# ------------------------------------------------------------------------------------------- secrets


def test_secrets_are_never_echoed(client, owner):
    responses = [
        put(client, owner, access_key_settings(e2eEncryptionMode="automatic")),
        client.get(url(owner), headers=owner.headers),
        patch(client, owner, {"tokenProviderType": "webservice", "webserviceConfig": webservice_config()}),
        patch(client, owner, {"enabled": True}, "/debug-audio"),
        client.post(url(owner, "/sync-secret"), headers=owner.headers),
        client.get(url(owner), headers=owner.headers),
    ]
    for response in responses:
        assert response.status_code == 200
        text = response.get_data(as_text=True)
        for secret in (ACCESS_KEY, HEADER_SECRET, owner.secret, "header-secret-value"):
            assert secret not in text


def test_get_secret_returns_the_decrypted_project_secret(client, owner):
    response = client.get(url(owner, "/secret"), headers=owner.headers)
    assert response.status_code == 200
    assert response.get_json() == {"secret": owner.secret}
    Project.update(secret_encrypted=None).where(Project.id == owner.project.id).execute()
    forget_resolved_projects()  # a project changed behind the models' back (no operation changes a project)
    assert client.get(url(owner, "/secret"), headers=owner.headers).status_code == 404


def test_sync_and_revoke_the_cached_secret(client, owner):
    put(client, owner, {"tokenProviderType": "rooms"})
    response = client.post(url(owner, "/sync-secret"), headers=owner.headers)
    assert response.status_code == 200
    body = response.get_json()
    assert body["hasSecret"] is True
    cache = SecretCache.get(SecretCache.project == owner.project.id)
    assert parse_timestamp(body["syncedAt"]) == cache.synced_at
    assert cache.secret_encrypted != owner.secret and crypto.decrypt(cache.secret_encrypted) == owner.secret
    assert cached_project_secret(owner.project) == owner.secret
    assert client.get(url(owner), headers=owner.headers).get_json()["hasSecret"] is True

    SecretCache.update(synced_at=utcnow() - timedelta(days=1)).execute()
    again = client.post(url(owner, "/sync-secret"), headers=owner.headers).get_json()
    assert utcnow() - parse_timestamp(again["syncedAt"]) < timedelta(minutes=1)
    assert SecretCache.select().count() == 1

    response = client.delete(url(owner, "/revoke-secret"), headers=owner.headers)
    assert response.status_code == 200 and response.get_json() == {"hasSecret": False}
    assert SecretCache.select().count() == 0
    assert cached_project_secret(owner.project) is None
    assert client.get(url(owner), headers=owner.headers).get_json()["hasSecret"] is False
    assert client.delete(url(owner, "/revoke-secret"), headers=owner.headers).get_json() == {"hasSecret": False}


def test_sync_without_a_project_secret_is_400(client, owner):
    Project.update(secret_encrypted=None).where(Project.id == owner.project.id).execute()
    forget_resolved_projects()  # a project changed behind the models' back (no operation changes a project)
    response = client.post(url(owner, "/sync-secret"), headers=owner.headers)
    assert response.status_code == 400
    assert response.get_json()["detail"] == "This project has no secret to sync"
    assert SecretCache.select().count() == 0


def test_no_plaintext_secret_anywhere_in_the_database(client, owner):
    put(client, owner, access_key_settings(e2eEncryptionMode="manual", e2eEncryptionPassword=E2E_PASSWORD))
    other = add_project_with_webservice(client, owner)
    assert client.post(url(owner, "/sync-secret"), headers=owner.headers).status_code == 200
    assert client.post(f"/api/projects/{other.id}/settings/sync-secret", headers=owner.headers).status_code == 200
    dump = []
    for table in db.get_tables():
        for row in db.execute_sql(f'SELECT * FROM "{table}"').fetchall():
            dump.extend(str(value) for value in row)
    text = "\n".join(dump)
    assert stored(owner).id in text  # the dump really holds the settings
    for plaintext in (owner.secret, ACCESS_KEY, E2E_PASSWORD, HEADER_SECRET, "header-secret-value-7f3a"):
        assert plaintext not in text


def add_project_with_webservice(client, owner):
    """A second project of the owner, configured with a webservice provider (secret headers)."""
    from models.identity import create_project

    project, _secret = create_project(owner.user, "Game Two")
    response = client.put(f"/api/projects/{project.id}/settings", json=webservice_settings(), headers=owner.headers)
    assert response.status_code == 200
    return project


# ------------------------------------------------------------------------------------------- roles, tenancy


def test_roles(client, owner, add_member):
    developer, maintainer = add_member("developer"), add_member("maintainer")
    assert put(client, developer, access_key_settings()).status_code == 403
    assert put(client, maintainer, access_key_settings()).status_code == 200
    assert client.get(url(developer), headers=developer.headers).status_code == 200
    for member, allowed in ((developer, False), (maintainer, True)):
        expected = 200 if allowed else 403
        assert patch(client, member, {"botUserData": {"x": 1}}).status_code == expected
        assert patch(client, member, {"enabled": True}, "/debug-audio").status_code == expected
        assert patch(client, member, {"mode": "automatic"}, "/e2e-encryption").status_code == expected
    for member in (developer, maintainer):
        assert client.get(url(member, "/secret"), headers=member.headers).status_code == 403
        assert client.post(url(member, "/sync-secret"), headers=member.headers).status_code == 403
        assert client.delete(url(member, "/revoke-secret"), headers=member.headers).status_code == 403
        assert client.delete(url(member), headers=member.headers).status_code == 403
    assert SecretCache.select().count() == 0 and AppSettings.select().count() == 1
    assert client.get(url(owner, "/secret"), headers=owner.headers).status_code == 200
    assert client.delete(url(owner), headers=owner.headers).status_code == 200


def test_other_tenants_cannot_see_or_change_settings(client, owner, stranger):
    put(client, owner, access_key_settings())
    for response in (
        client.get(url(owner), headers=stranger.headers),
        client.put(url(owner), json=access_key_settings(), headers=stranger.headers),
        client.get(url(owner, "/secret"), headers=stranger.headers),
        client.delete(url(owner), headers=stranger.headers),
    ):
        assert response.status_code == 404
    assert AppSettings.select().count() == 1


def test_api_key_scopes(client, owner, api_key_headers):
    put(client, owner, access_key_settings())
    reader = api_key_headers(["settings:read"])
    assert client.get(url(owner), headers=reader).status_code == 200
    assert client.put(url(owner), json=access_key_settings(), headers=reader).status_code == 403
    writer = api_key_headers(["settings:read", "settings:write"], project_id=owner.project.id)
    response = client.patch(url(owner), json={"botUserData": {"via": "key"}}, headers=writer)
    assert response.status_code == 200 and response.get_json()["botUserData"] == {"via": "key"}


@pytest.mark.parametrize("url", ["http://127.0.0.1/token", "http://2130706433/token", "http://[::ffff:169.254.169.254]/x",
                                 "https://0xa000001/token"])
def test_a_webservice_url_written_as_a_refused_address_is_not_stored(client, owner, url):
    """With the outbound address policy on (production; the suite runs with it off), a literal refused address
    in any spelling is a 400 when the settings are saved; a host name is checked when the token is fetched."""
    from cortex.lib import addresses

    addresses.set_allow_private(False)
    try:
        body = {"tokenProviderType": "webservice",
                "webserviceConfig": {"url": url, "method": "POST", "responseTokenPath": "token"}}
        response = put(client, owner, body)
        assert response.status_code == 400
        assert response.get_json()["detail"].startswith("webserviceConfig.url: ")
        assert "Cortex does not call loopback" in response.get_json()["detail"]
        assert AppSettings.select().count() == 0
        body["webserviceConfig"]["url"] = "https://tokens.example.com/token"
        assert put(client, owner, body).status_code == 200
    finally:
        addresses.set_allow_private(True)
