"""Voice tag: activation, peer limit (and room tokens refused at it), ODIN access keys (shown once, never stored), roles, the public JWKS."""

from __future__ import annotations

import base64

import pytest

from cortex.integrations.bots import LocalBotDriver
from cortex.lib import odin
from models.base import db
from models.identity import create_project
from models.participants import create_or_find_participant
from models.permissions import FLAGS, permissions_for
from models.presence import record_join, record_leave
from models.sessions import Session, create_session, stop_session
from models.voice import OdinAccessKey, VoiceConfig

ALL_TRUE = dict.fromkeys(FLAGS, True)


def url(project, tail: str = "") -> str:
    return f"/api/projects/{project.id}/voice{tail}"


def activate(client, member, project=None):
    return client.post(url(project or member.project, "/activate"), headers=member.headers)


def create_key(client, member, project=None, **body):
    payload = {"name": "Game server", **body}
    return client.post(url(project or member.project, "/access-keys"), json=payload, headers=member.headers)


def settings(client, member, headers=None):
    return client.get(url(member.project, "/settings"), headers=headers or member.headers)


# ---------------------------------------------------------------- settings and activation


def test_settings_before_activation(client, owner):
    response = settings(client, owner)
    assert response.status_code == 200
    assert response.get_json() == {
        "peerLimit": 0,
        "accessKeysCount": 0,
        "hostingType": "hosted",
        "activated": False,
        "permissions": ALL_TRUE,
    }


def test_activate_is_idempotent(client, owner):
    first = activate(client, owner)
    assert first.status_code == 201
    assert first.get_json()["activated"] is True
    client.put(url(owner.project, "/peer-limit"), json={"peerLimit": 12}, headers=owner.headers)
    second = activate(client, owner)
    assert second.status_code == 201
    assert second.get_json() == {**first.get_json(), "peerLimit": 12}  # the settings are kept
    assert VoiceConfig.select().where(VoiceConfig.project == owner.project.id).count() == 1
    assert settings(client, owner).get_json() == second.get_json()


def test_projects_are_addressed_by_app_id(client, owner):
    response = client.post(f"/api/projects/{owner.project.app_id}/voice/activate", headers=owner.headers)
    assert response.status_code == 201
    assert settings(client, owner).get_json()["activated"] is True


@pytest.mark.parametrize("role", ["admin", "maintainer", "developer"])
def test_permissions_follow_the_callers_role(client, add_member, role):
    member = add_member(role)
    assert settings(client, member).get_json()["permissions"] == permissions_for(role)


def test_permission_table(client, add_member):
    maintainer = settings(client, add_member("maintainer")).get_json()["permissions"]
    assert [flag for flag, allowed in maintainer.items() if not allowed] == ["addUser", "editUser", "deleteUser"]
    developer = settings(client, add_member("developer")).get_json()["permissions"]
    assert [flag for flag, allowed in developer.items() if allowed] == ["downloadLicense"]


@pytest.mark.parametrize(
    "scopes,allowed",
    [
        (["voice:read"], {"downloadLicense"}),
        (
            ["voice:read", "voice:write"],
            {"addAccessKey", "editAccessKey", "deleteAccessKey", "setPeerLimit", "downloadLicense"},
        ),
        (["voice:read", "voice:write", "projects:write"], set(FLAGS)),
    ],
)
def test_api_key_permissions_are_the_creators_role_limited_by_scopes(client, owner, api_key_headers, scopes, allowed):
    response = settings(client, owner, headers=api_key_headers(scopes))
    assert response.status_code == 200
    assert response.get_json()["permissions"] == {flag: flag in allowed for flag in FLAGS}


def test_api_key_needs_the_voice_scopes(client, owner, api_key_headers):
    reader = api_key_headers(["voice:read"])
    assert settings(client, owner, headers=reader).status_code == 200
    assert client.post(url(owner.project, "/activate"), headers=reader).status_code == 403
    writer = api_key_headers(["voice:write"])
    assert settings(client, owner, headers=writer).status_code == 403
    assert client.post(url(owner.project, "/activate"), headers=writer).status_code == 201


def test_developer_reads_but_may_not_write(client, owner, add_member):
    activate(client, owner)
    key = create_key(client, owner).get_json()
    developer = add_member("developer")
    assert settings(client, developer).status_code == 200
    assert client.get(url(owner.project, "/access-keys"), headers=developer.headers).status_code == 200
    key_url = url(owner.project, f"/access-keys/{key['id']}")
    writes = [
        client.post(url(owner.project, "/activate"), headers=developer.headers),
        client.put(url(owner.project, "/peer-limit"), json={"peerLimit": 3}, headers=developer.headers),
        create_key(client, developer),
        client.put(key_url, json={"name": "x"}, headers=developer.headers),
        client.delete(key_url, headers=developer.headers),
    ]
    assert [response.status_code for response in writes] == [403] * 5
    assert "maintainer" in writes[0].get_json()["detail"]
    assert OdinAccessKey.select().count() == 1


def test_maintainer_may_write(client, add_member):
    maintainer = add_member("maintainer")
    assert activate(client, maintainer).status_code == 201
    peer_limit = client.put(url(maintainer.project, "/peer-limit"), json={"peerLimit": 8}, headers=maintainer.headers)
    assert peer_limit.status_code == 200
    key = create_key(client, maintainer)
    assert key.status_code == 201
    key_url = url(maintainer.project, f"/access-keys/{key.get_json()['id']}")
    assert client.put(key_url, json={"name": "renamed"}, headers=maintainer.headers).status_code == 200
    assert client.delete(key_url, headers=maintainer.headers).status_code == 200


def test_other_tenants_project_is_not_found(client, owner, stranger):
    activate(client, owner)
    assert settings(client, stranger).status_code == 200  # their own project
    response = client.get(url(owner.project, "/settings"), headers=stranger.headers)
    assert response.status_code == 404
    assert client.post(url(owner.project, "/activate"), headers=stranger.headers).status_code == 404
    assert create_key(client, stranger, project=owner.project).status_code == 404


# ---------------------------------------------------------------- peer limit


def test_peer_limit_is_set_and_0_means_unlimited(client, owner):
    activate(client, owner)

    def put(value):
        return client.put(url(owner.project, "/peer-limit"), json={"peerLimit": value}, headers=owner.headers)

    response = put(25)
    assert response.status_code == 200
    assert response.get_json()["peerLimit"] == 25 and response.get_json()["activated"] is True
    assert settings(client, owner).get_json()["peerLimit"] == 25
    assert put(7.0).get_json()["peerLimit"] == 7
    assert put(0).get_json()["peerLimit"] == 0
    assert VoiceConfig.get(VoiceConfig.project == owner.project.id).peer_limit == 0


@pytest.mark.parametrize("value", [-1, 1.5, 2**31, 1e20])
def test_peer_limit_must_be_a_whole_number_at_least_0(client, owner, value):
    activate(client, owner)
    response = client.put(url(owner.project, "/peer-limit"), json={"peerLimit": value}, headers=owner.headers)
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert "peerLimit" in response.get_json()["detail"]
    assert settings(client, owner).get_json()["peerLimit"] == 0


@pytest.mark.parametrize("body", [{}, {"peerLimit": "10"}, {"peerLimit": None}])
def test_peer_limit_body_is_validated(client, owner, body):
    activate(client, owner)
    response = client.put(url(owner.project, "/peer-limit"), json=body, headers=owner.headers)
    assert response.status_code == 400
    assert "peerLimit" in response.get_json()["detail"]


def test_peer_limit_before_activation_is_a_conflict(client, owner):
    response = client.put(url(owner.project, "/peer-limit"), json={"peerLimit": 5}, headers=owner.headers)
    assert response.status_code == 409
    assert response.mimetype == "application/problem+json"
    assert "not activated" in response.get_json()["detail"]
    assert VoiceConfig.select().count() == 0


# ---------------------------------------------------------------- access keys


def test_create_access_key_returns_a_real_odin_key_once(client, owner):
    activate(client, owner)
    response = create_key(client, owner, name="  Game server  ", description="EU fleet")
    assert response.status_code == 201
    body = response.get_json()
    access_key = body["accessKey"]
    assert odin.is_valid_access_key(access_key)
    assert body["pubKey"] == odin.public_key_b64(access_key)
    assert body["keyId"] == odin.key_id_from_pub_key(body["pubKey"])
    assert body["name"] == "Game server" and body["description"] == "EU fleet"
    assert body["created"] == body["updated"]
    listed = client.get(url(owner.project, "/access-keys"), headers=owner.headers).get_json()
    assert listed == [{k: v for k, v in body.items() if k != "accessKey"}]
    assert settings(client, owner).get_json()["accessKeysCount"] == 1


def test_the_access_key_is_never_stored(client, owner):
    activate(client, owner)
    body = create_key(client, owner, description="secret-free").get_json()
    raw = odin.parse_access_key(body["accessKey"])
    forms = {body["accessKey"], base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("="),
             raw.hex(), raw[1:].hex(), base64.b64encode(raw[1:]).decode().rstrip("=")}
    cursor = db.execute_sql('SELECT * FROM "odin_access_key"')
    columns = [column[0] for column in cursor.description]
    rows = cursor.fetchall()
    assert len(rows) == 1
    assert set(columns) == {"id", "created_at", "project_id", "name", "description", "pub_key", "key_id", "updated_at"}
    stored = " ".join(str(value) for value in rows[0])
    assert body["pubKey"] in stored
    assert not [form for form in forms if form in stored]


def test_access_keys_before_activation(client, owner):
    response = create_key(client, owner)
    assert response.status_code == 409
    assert "not activated" in response.get_json()["detail"]
    assert client.get(url(owner.project, "/access-keys"), headers=owner.headers).get_json() == []
    assert OdinAccessKey.select().count() == 0


@pytest.mark.parametrize("body,detail", [({"name": "   "}, "name must not be empty"), ({"name": "n" * 256}, "at most 255")])
def test_create_access_key_rejects_bad_names(client, owner, body, detail):
    activate(client, owner)
    response = client.post(url(owner.project, "/access-keys"), json=body, headers=owner.headers)
    assert response.status_code == 400
    assert detail in response.get_json()["detail"]


def test_create_access_key_body_is_validated(client, owner):
    activate(client, owner)
    response = client.post(url(owner.project, "/access-keys"), json={"description": "x"}, headers=owner.headers)
    assert response.status_code == 400
    assert "name" in response.get_json()["detail"]


def test_access_keys_are_listed_oldest_first(client, owner):
    activate(client, owner)
    ids = [create_key(client, owner, name=f"key {n}").get_json()["id"] for n in range(4)]
    listed = client.get(url(owner.project, "/access-keys"), headers=owner.headers).get_json()
    assert [key["id"] for key in listed] == ids
    assert [key["name"] for key in listed] == [f"key {n}" for n in range(4)]
    assert "accessKey" not in listed[0]
    assert settings(client, owner).get_json()["accessKeysCount"] == 4


def test_edit_access_key(client, owner):
    activate(client, owner)
    created = create_key(client, owner, description="first").get_json()
    key_url = url(owner.project, f"/access-keys/{created['id']}")
    response = client.put(key_url, json={"name": "Renamed"}, headers=owner.headers)
    assert response.status_code == 200
    edited = response.get_json()
    assert edited["name"] == "Renamed" and edited["description"] == "first"  # description omitted: kept
    assert edited["created"] == created["created"] and edited["updated"] > created["updated"]
    assert (edited["pubKey"], edited["keyId"]) == (created["pubKey"], created["keyId"])
    again = client.put(key_url, json={"name": "Renamed", "description": "second"}, headers=owner.headers).get_json()
    assert again["description"] == "second" and again["updated"] > edited["updated"]
    cleared = client.put(key_url, json={"name": "Renamed", "description": ""}, headers=owner.headers).get_json()
    assert "description" not in cleared
    listed = client.get(url(owner.project, "/access-keys"), headers=owner.headers).get_json()
    assert listed == [cleared]
    blank = client.put(key_url, json={"name": " "}, headers=owner.headers)
    assert blank.status_code == 400 and "name" in blank.get_json()["detail"]


def test_delete_access_key(client, owner):
    activate(client, owner)
    keep = create_key(client, owner, name="keep").get_json()
    gone = create_key(client, owner, name="gone").get_json()
    key_url = url(owner.project, f"/access-keys/{gone['id']}")
    response = client.delete(key_url, headers=owner.headers)
    assert response.status_code == 200
    assert response.get_json() == {"id": gone["id"], "deleted": True}
    listed = client.get(url(owner.project, "/access-keys"), headers=owner.headers).get_json()
    assert [key["id"] for key in listed] == [keep["id"]]
    assert settings(client, owner).get_json()["accessKeysCount"] == 1
    again = client.delete(key_url, headers=owner.headers)
    assert again.status_code == 404 and again.mimetype == "application/problem+json"


def test_unknown_keys_and_keys_of_other_projects_are_not_found(client, owner, stranger):
    second, _secret = create_project(owner.user, "Game Two")  # same owner, other project
    activate(client, owner)
    activate(client, owner, project=second)
    activate(client, stranger)
    theirs = [
        create_key(client, owner, project=second).get_json()["id"],
        create_key(client, stranger).get_json()["id"],
        "no-such-key",
    ]
    for key_id in theirs:
        key_url = url(owner.project, f"/access-keys/{key_id}")
        edit = client.put(key_url, json={"name": "mine now"}, headers=owner.headers)
        assert edit.status_code == 404, key_id
        assert edit.get_json()["detail"] == f"Access key {key_id} not found"
        assert client.delete(key_url, headers=owner.headers).status_code == 404
    assert OdinAccessKey.select().count() == 2
    assert {key.name for key in OdinAccessKey.select()} == {"Game server"}


# ---------------------------------------------------------------- JWKS: public keys for ODIN servers


def test_room_tokens_signed_with_a_new_key_verify_against_the_public_jwks(client, owner):
    activate(client, owner)
    created = create_key(client, owner).get_json()
    create_key(client, owner, name="another")
    token = odin.room_token(created["accessKey"], "lobby", "player-1")

    response = client.get(url(owner.project, "/jwks.json"))  # no credentials
    assert response.status_code == 200
    keys = response.get_json()["keys"]
    assert len(keys) == 2
    assert keys[0] == odin.jwk(created["pubKey"])
    trusted = {jwk["kid"]: odin.public_key_from_jwk(jwk) for jwk in keys}
    claims = odin.verify_room_token(token, trusted)
    assert (claims["rid"], claims["uid"]) == ("lobby", "player-1")
    assert client.get(f"/api/projects/{owner.project.app_id}/voice/jwks.json").get_json() == {"keys": keys}

    client.delete(url(owner.project, f"/access-keys/{created['id']}"), headers=owner.headers)
    remaining = client.get(url(owner.project, "/jwks.json")).get_json()["keys"]
    trusted = {jwk["kid"]: odin.public_key_from_jwk(jwk) for jwk in remaining}
    with pytest.raises(odin.InvalidRoomToken):
        odin.verify_room_token(token, trusted)


def test_jwks_of_a_project_without_keys_is_empty(client, owner):
    assert client.get(url(owner.project, "/jwks.json")).get_json() == {"keys": []}


def test_jwks_of_an_unknown_project_is_not_found(client, app):
    response = client.get("/api/projects/no-such-project/voice/jwks.json")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["detail"] == "Project no-such-project not found"


# ---------------------------------------------------------------- peer limit: room tokens refused at the limit


@pytest.fixture
def token_ready(client, owner):
    """The owner's project with voice activated and access-key app settings (room tokens are signed locally)."""
    activate(client, owner)
    key = create_key(client, owner).get_json()["accessKey"]
    settings_body = {"tokenProviderType": "access_key", "accessKeyConfig": {"accessKey": key, "botUserId": "bot"}}
    assert client.put(f"/api/projects/{owner.project.id}/settings", json=settings_body,
                      headers=owner.headers).status_code == 200
    return owner


def room_token(client, member, headers=None, project=None):
    return client.post(f"/api/projects/{(project or member.project).id}/token",
                       json={"roomId": "lobby", "userId": "player-9"}, headers=headers or member.headers)


def peer_limit(client, member, value):
    response = client.put(url(member.project, "/peer-limit"), json={"peerLimit": value}, headers=member.headers)
    assert response.status_code == 200


def present(member, room: str, *users: str):
    """An active session (local bot driver) in ``room`` with these participants present; the session."""
    session = create_session(member.project, member.user.id, "Chat", room, driver=LocalBotDriver())
    for user in users:
        record_join(session, create_or_find_participant(member.project, user)[0], f"{user}-peer")
    return session


def test_tokens_are_refused_when_the_peer_limit_is_reached(client, token_ready, add_member):
    owner = token_ready
    peer_limit(client, owner, 3)
    lobby = present(owner, "lobby", "ann")
    present(owner, "arena", "ben")  # the limit counts every session of the project
    assert room_token(client, owner).status_code == 201  # 2 present, limit 3

    present(owner, "cellar", "cid")
    refused = room_token(client, owner)
    assert refused.status_code == 429
    assert refused.mimetype == "application/problem+json"
    assert refused.get_json()["detail"].startswith("The voice peer limit of this project is reached: 3 peers")
    assert room_token(client, add_member("developer")).status_code == 429

    record_leave(lobby, create_or_find_participant(owner.project, "ann")[0], "ann-peer")
    assert room_token(client, owner).status_code == 201  # below the limit again


def test_no_peer_limit_means_no_refusal(client, token_ready):
    present(token_ready, "lobby", "ann", "ben", "cid")
    assert room_token(client, token_ready).status_code == 201  # peerLimit 0: unlimited
    peer_limit(client, token_ready, 3)
    assert room_token(client, token_ready).status_code == 429
    peer_limit(client, token_ready, 4)
    assert room_token(client, token_ready).status_code == 201


def test_a_stopped_session_frees_its_peers(client, token_ready):
    peer_limit(client, token_ready, 2)
    lobby = present(token_ready, "lobby", "ann", "ben")
    assert room_token(client, token_ready).status_code == 429
    stop_session(token_ready.project, lobby.id, LocalBotDriver())  # its open spans close
    assert room_token(client, token_ready).status_code == 201


def test_other_projects_peers_do_not_count(client, token_ready, stranger):
    peer_limit(client, token_ready, 1)
    configure_stranger = {"tokenProviderType": "access_key",
                          "accessKeyConfig": {"accessKey": odin.generate_access_key(), "botUserId": "bot"}}
    assert client.put(f"/api/projects/{stranger.project.id}/settings", json=configure_stranger,
                      headers=stranger.headers).status_code == 200
    present(stranger, "lobby", "ann", "ben")
    assert Session.select().where(Session.project == stranger.project.id).count() == 1
    assert room_token(client, token_ready).status_code == 201


def test_the_peer_limit_answers_after_the_gates(client, token_ready, stranger, api_key_headers):
    peer_limit(client, token_ready, 1)
    present(token_ready, "lobby", "ann")
    assert room_token(client, stranger, project=token_ready.project).status_code == 404
    assert room_token(client, token_ready, headers=api_key_headers(["voice:write"])).status_code == 403
    assert room_token(client, token_ready, headers=api_key_headers(["projects:write"])).status_code == 429


def test_the_legacy_token_endpoint_keeps_the_peer_limit_when_it_issues_tokens_itself(client, token_ready):
    """Without a Rooms API, POST /api/projects/token issues the project's token as POST …/token does: the
    project's peer limit applies too. (With a Rooms API configured it forwards the caller's id and secret and
    the Rooms API decides.)"""
    body = {"roomId": "lobby", "projectId": token_ready.project.app_id, "secret": token_ready.secret}
    assert client.post("/api/projects/token", headers=token_ready.headers, json=body).status_code == 201
    peer_limit(client, token_ready, 1)
    present(token_ready, "lobby", "ann")
    response = client.post("/api/projects/token", headers=token_ready.headers, json=body)
    assert response.status_code == 429 and "peer limit" in response.get_json()["detail"]


def test_a_project_holds_at_most_the_configured_number_of_access_keys(client, owner, app):
    from dataclasses import replace

    runtime = app.extensions["cortex"]
    runtime.settings = replace(runtime.settings, max_access_keys_per_project=1)
    activate(client, owner)
    first = create_key(client, owner).get_json()
    response = create_key(client, owner)
    assert response.status_code == 409
    assert "CORTEX_MAX_ACCESS_KEYS_PER_PROJECT" in response.get_json()["detail"]
    assert OdinAccessKey.select().count() == 1
    assert client.delete(url(owner.project, f"/access-keys/{first['id']}"), headers=owner.headers).status_code == 200
    assert create_key(client, owner).status_code == 201
