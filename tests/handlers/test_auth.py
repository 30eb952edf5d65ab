"""Auth tag: credential login, Fusion session exchange, profile."""

from datetime import timedelta

import jwt
import pytest

from models.base import utcnow
from models.identity import FusionSession, revoke_fusion_session

PASSWORD = "correct horse battery"  # the password conftest gives every user


def login(client, email="owner@example.com", password=PASSWORD):
    return client.post("/api/auth/login-credentials", json={"email": email, "password": password})


def test_login_with_credentials_returns_token_and_fusion_session(client, owner, settings):
    response = login(client)
    assert response.status_code == 201
    body = response.get_json()
    claims = jwt.decode(body["accessToken"], settings.secret_key, algorithms=["HS256"])
    assert claims["sub"] == owner.user.id and claims["tid"] == owner.user.tenant_id
    assert claims["exp"] - claims["iat"] == settings.access_token_ttl
    assert claims["jti"]
    assert body["sessionId"].startswith("fsid_")
    stored = FusionSession.get(FusionSession.user == owner.user.id)
    assert stored.token_hash != body["sessionId"] and len(stored.token_hash) == 64
    assert stored.expires_at - utcnow() > timedelta(days=29)


def test_email_is_case_insensitive(client, owner):
    assert login(client, email="  OWNER@Example.com ").status_code == 201


@pytest.mark.parametrize(
    "email,password", [("owner@example.com", "wrong-password"), ("nobody@example.com", PASSWORD)]
)
def test_wrong_credentials_are_401(client, owner, email, password):
    response = login(client, email, password)
    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    assert "WWW-Authenticate" in response.headers
    assert response.get_json()["detail"] == "Wrong email or password"


@pytest.mark.parametrize(
    "body,detail",
    [
        ({"email": "a@b.c"}, "'password' is a required property"),
        ({"email": "a@b.c", "password": "short"}, "is too short"),
        ({"email": 5, "password": "longenough"}, "is not of type 'string'"),
    ],
)
def test_login_validation(client, body, detail):
    response = client.post("/api/auth/login-credentials", json=body)
    assert response.status_code == 400
    assert detail in response.get_json()["detail"]


def test_fusion_session_exchanges_for_new_token(client, owner):
    session_id = login(client).get_json()["sessionId"]
    response = client.post("/api/auth/login", json={"fusionSessionId": session_id})
    assert response.status_code == 201
    token = response.get_json()["accessToken"]
    me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.get_json()["userId"] == owner.user.id


def test_unknown_expired_or_revoked_fusion_session_is_401(client, owner):
    assert client.post("/api/auth/login", json={"fusionSessionId": "fsid_nope"}).status_code == 401
    session_id = login(client).get_json()["sessionId"]
    FusionSession.update(expires_at=utcnow() - timedelta(seconds=1)).execute()
    assert client.post("/api/auth/login", json={"fusionSessionId": session_id}).status_code == 401
    session_id = login(client).get_json()["sessionId"]
    assert revoke_fusion_session(session_id)
    assert client.post("/api/auth/login", json={"fusionSessionId": session_id}).status_code == 401


def test_profile(client, owner):
    response = client.get("/api/auth/me", headers=owner.headers)
    assert response.status_code == 200
    assert response.get_json() == {
        "userId": owner.user.id,
        "tenantId": owner.user.tenant_id,
        "username": "Olivia Owner",
        "email": "owner@example.com",
    }


@pytest.mark.parametrize(
    "headers,detail",
    [
        ({}, "Authentication required"),
        ({"Authorization": "Basic abc"}, "must be 'Bearer"),
        ({"Authorization": "Bearer not-a-jwt"}, "invalid"),
    ],
)
def test_profile_needs_a_valid_bearer_token(client, headers, detail):
    response = client.get("/api/auth/me", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert detail in response.get_json()["detail"]


def test_expired_or_forged_token_is_401(client, owner, settings):
    now = int(utcnow().timestamp())
    claims = {"sub": owner.user.id, "tid": owner.user.tenant_id, "iat": now - 7200, "exp": now - 3600, "jti": "x"}
    expired = jwt.encode(claims, settings.secret_key, algorithm="HS256")
    response = client.get("/api/auth/me", headers={"Authorization": f"Bearer {expired}"})
    assert response.status_code == 401 and "expired" in response.get_json()["detail"]
    claims["exp"] = now + 3600
    forged = jwt.encode(claims, "another-key-of-sufficient-length-000", algorithm="HS256")
    assert client.get("/api/auth/me", headers={"Authorization": f"Bearer {forged}"}).status_code == 401


@pytest.mark.parametrize("empty", ["", "   "])
def test_a_present_credential_header_must_be_valid_even_beside_a_valid_one(client, owner, api_key_headers, empty):
    """An empty X-API-Key (or Authorization) header is a broken credential, not an absent one: 401, even when the
    other header carries a valid credential."""
    url = f"/api/projects/{owner.project.id}/sessions"
    key = api_key_headers(["sessions:read"])
    assert client.get(url, headers=owner.headers).status_code == 200
    assert client.get(url, headers=key).status_code == 200
    response = client.get(url, headers={**owner.headers, "X-API-Key": empty})
    assert response.status_code == 401 and "X-API-Key" in response.get_json()["detail"]
    assert "ApiKey" in response.headers["WWW-Authenticate"]
    response = client.get(url, headers={**key, "Authorization": empty})
    assert response.status_code == 401 and "Bearer" in response.get_json()["detail"]
    broken = client.get(url, headers={**owner.headers, "X-API-Key": "ots_live_not-a-key"})
    assert broken.status_code == 401  # a wrong key beside a valid token is refused too


def test_api_key_is_not_accepted_for_profile(client, api_key_headers):
    response = client.get("/api/auth/me", headers=api_key_headers(["sessions:read"]))
    assert response.status_code == 401
