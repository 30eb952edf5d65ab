"""API Keys tag: create (shown once, hashed), list, revoke, scopes, enforcement."""

import hashlib
import time
from dataclasses import replace
from datetime import timedelta

import pytest

from models.base import rfc3339, utcnow
from models.identity import ApiKey


def create(client, member, **body):
    payload = {"name": "CI", "scopes": ["sessions:read"], **body}
    return client.post("/api/api-keys", json=payload, headers=member.headers)


def test_create_returns_key_once_and_stores_only_its_hash(client, owner):
    response = create(client, owner, scopes=["sessions:read", "sessions:write"])
    assert response.status_code == 201
    body = response.get_json()
    key = body["key"]
    assert key.startswith("ots_live_") and len(key) >= len("ots_live_") + 43
    assert body["keyPrefix"] == key[: len(body["keyPrefix"])]
    assert body["scopes"] == ["sessions:read", "sessions:write"]
    row = ApiKey.get_by_id(body["id"])
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in str(row.__data__.values())
    listed = client.get("/api/api-keys", headers=owner.headers).get_json()
    assert [k["id"] for k in listed] == [body["id"]]
    assert "key" not in listed[0]


def test_scopes_catalogue_matches_the_document(client, owner, app):
    response = client.get("/api/api-keys/scopes", headers=owner.headers)
    assert response.status_code == 200
    names = {scope["name"] for scope in response.get_json()}
    documented = {
        op["x-cortex-scope"]
        for item in app.extensions["cortex"].spec["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and "x-cortex-scope" in op
    }
    assert documented <= names and "sessions:read" in names


@pytest.mark.parametrize(
    "body,detail",
    [
        # the scope names are an enum of the document and at least one is required: the gate says so
        ({"scopes": ["root"]}, "'root' is not one of ['events:read'"),
        ({"scopes": [""]}, "'' is not one of ['events:read'"),
        ({"scopes": []}, "[] should be non-empty"),
        ({"name": "   "}, "name must not be empty"),
        ({"expiresAt": "tomorrow"}, "expiresAt must be an ISO 8601"),
        ({"expiresAt": "2001-01-01T00:00:00Z"}, "must be in the future"),
    ],
)
def test_create_rejects_bad_input(client, owner, body, detail):
    response = create(client, owner, **body)
    assert response.status_code == 400
    assert detail in response.get_json()["detail"]


def test_project_must_be_one_of_the_callers(client, owner, stranger):
    assert create(client, owner, projectId="no-such-project").status_code == 404
    response = create(client, owner, projectId=stranger.project.id)
    assert response.status_code == 404
    assert response.get_json()["detail"] == f"Project {stranger.project.id} not found"
    bound = create(client, owner, projectId=owner.project.app_id).get_json()
    assert bound["projectId"] == owner.project.id


def test_api_key_operations_take_bearer_only(client, owner, api_key_headers):
    headers = api_key_headers(["sessions:read"])
    assert client.get("/api/api-keys", headers=headers).status_code == 401
    assert client.post("/api/api-keys", json={"name": "x", "scopes": ["sessions:read"]}, headers=headers).status_code == 401


def test_revoke_takes_effect_at_once(client, owner):
    body = create(client, owner, scopes=["sessions:read"]).get_json()
    headers = {"X-API-Key": body["key"]}
    project_sessions = f"/api/projects/{owner.project.id}/sessions"
    assert client.get(project_sessions, headers=headers).status_code == 200
    response = client.delete(f"/api/api-keys/{body['id']}", headers=owner.headers)
    assert response.status_code == 200 and response.get_json()["id"] == body["id"]
    assert client.get(project_sessions, headers=headers).status_code == 401
    assert client.delete(f"/api/api-keys/{body['id']}", headers=owner.headers).status_code == 404
    assert client.get("/api/api-keys", headers=owner.headers).get_json() == []


def test_keys_are_tenant_private(client, owner, stranger):
    body = create(client, owner).get_json()
    assert client.get("/api/api-keys", headers=stranger.headers).get_json() == []
    assert client.delete(f"/api/api-keys/{body['id']}", headers=stranger.headers).status_code == 404


def test_expired_key_is_rejected(client, owner, api_key_headers):
    headers = api_key_headers(["sessions:read"], expires_at=utcnow() + timedelta(hours=1))
    url = f"/api/projects/{owner.project.id}/sessions"
    assert client.get(url, headers=headers).status_code == 200
    ApiKey.update(expires_at=utcnow() - timedelta(seconds=1)).execute()
    response = client.get(url, headers=headers)
    assert response.status_code == 401 and "expired" in response.get_json()["detail"]


def test_expires_at_round_trips(client, owner):
    when = (utcnow() + timedelta(days=30)).replace(microsecond=0)
    body = create(client, owner, expiresAt=rfc3339(when)).get_json()
    assert body["expiresAt"] == rfc3339(when)


def test_scope_is_enforced_per_operation(client, owner, api_key_headers):
    url = f"/api/projects/{owner.project.id}/sessions"
    read_only = api_key_headers(["sessions:read"])
    response = client.post(url, json={"title": "t", "externalRoomId": "r"}, headers=read_only)
    assert response.status_code == 403
    assert "sessions:write" in response.get_json()["detail"]
    assert client.get(url, headers=api_key_headers(["voice:read"])).status_code == 403


def test_project_bound_key_sees_only_its_project(client, owner, make_user, api_key_headers):
    from models.identity import create_project

    other, _ = create_project(owner.user, "Game Two")
    headers = api_key_headers(["sessions:read"], project_id=owner.project.id)
    assert client.get(f"/api/projects/{owner.project.id}/sessions", headers=headers).status_code == 200
    response = client.get(f"/api/projects/{other.id}/sessions", headers=headers)
    assert response.status_code == 404


def test_last_used_at_is_recorded_without_a_write_per_request(client, owner, api_key_headers):
    headers = api_key_headers(["sessions:read"])
    url = f"/api/projects/{owner.project.id}/sessions"
    client.get(url, headers=headers)
    first = ApiKey.select().first().last_used_at
    assert first is not None
    for _ in range(3):
        client.get(url, headers=headers)
    assert ApiKey.select().first().last_used_at == first  # within the touch interval: no new write
    listed = client.get("/api/api-keys", headers=owner.headers).get_json()
    assert listed[0]["lastUsedAt"] == rfc3339(first)


def test_keys_act_for_their_creator(client, owner, add_member):
    """A key reaches only its creator's projects with the creator's role; others' keys are invisible."""
    developer = add_member("developer")
    body = create(client, developer, scopes=["settings:read", "voice:write"]).get_json()
    headers = {"X-API-Key": body["key"]}
    project = owner.project.id
    secret = client.get(f"/api/projects/{project}/settings/secret", headers=headers)
    assert secret.status_code == 403  # the developer's role, not more
    assert client.get("/api/api-keys", headers=owner.headers).get_json() == []  # not the owner's key
    assert client.delete(f"/api/api-keys/{body['id']}", headers=owner.headers).status_code == 404
    from models.identity import ProjectMember
    from models.projects import remove

    permission = ProjectMember.get(ProjectMember.user == developer.user.id).id
    remove(owner.project, permission)  # what POST …/users/remove does
    assert client.put(f"/api/projects/{project}/voice/peer-limit", json={"peerLimit": 3},
                      headers=headers).status_code == 404  # removed member: the key loses the project too


def test_a_removal_by_another_process_ends_access_within_the_access_ttl(client, owner, add_member, monkeypatch):
    """What one process resolved is kept at most ACCESS_TTL seconds: a membership revoked behind its back (another
    process, the database directly) is enforced after that."""
    from models import access
    from models.identity import ProjectMember

    monkeypatch.setattr(access, "ACCESS_TTL", 0.2)
    developer = add_member("developer")
    body = create(client, developer, scopes=["sessions:read"]).get_json()
    headers = {"X-API-Key": body["key"]}
    url = f"/api/projects/{owner.project.id}/sessions"
    assert client.get(url, headers=headers).status_code == 200
    ProjectMember.update(status="revoked").where(ProjectMember.user == developer.user.id).execute()
    time.sleep(0.25)
    assert client.get(url, headers=headers).status_code == 404
    assert client.get(url, headers=developer.headers).status_code == 404


@pytest.mark.parametrize("body", [{"projectId": ""}, {"expiresAt": ""}, {"expiresAt": "9999-12-31T23:59:59-01:00"}])
def test_empty_or_out_of_range_values_are_rejected(client, owner, body):
    assert create(client, owner, **body).status_code in (400, 404)
    assert client.get("/api/api-keys", headers=owner.headers).get_json() == []


def test_a_user_holds_at_most_the_configured_number_of_live_keys(client, owner, stranger, app):
    runtime = app.extensions["cortex"]
    runtime.settings = replace(runtime.settings, max_api_keys_per_user=2)
    first = create(client, owner).get_json()
    assert create(client, owner).status_code == 201
    response = create(client, owner)
    assert response.status_code == 409
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert "at most 2 live API keys per user" in response.get_json()["detail"]
    assert "CORTEX_MAX_API_KEYS_PER_USER" in response.get_json()["detail"]
    assert len(client.get("/api/api-keys", headers=owner.headers).get_json()) == 2  # nothing stored
    assert create(client, stranger).status_code == 201  # per user
    assert client.delete(f"/api/api-keys/{first['id']}", headers=owner.headers).status_code == 200
    assert create(client, owner).status_code == 201  # a revoked key frees its place
