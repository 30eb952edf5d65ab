"""Auth tag: credential login, Fusion session exchange, profile."""

import os
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


# ---------------------------------------------------------------- failed logins (cortex/http/logins.py)


def try_login(client, email, password, forwarded_for=None, **kwargs):
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return client.post("/api/auth/login-credentials", json={"email": email, "password": password}, headers=headers,
                       **kwargs)


def test_an_account_is_blocked_after_too_many_failures_whatever_the_password(client, owner, settings):
    email = owner.user.email
    for _ in range(settings.login_max_failures):
        assert try_login(client, email, "wrong password").status_code == 401
    blocked = try_login(client, email, PASSWORD)  # the right password, too late
    assert blocked.status_code == 429 and blocked.mimetype == "application/problem+json"
    assert 0 < int(blocked.headers["Retry-After"]) <= settings.login_window
    assert try_login(client, email.upper(), PASSWORD).status_code == 429  # emails compare case-insensitively


def test_a_success_resets_the_account_count(client, owner, settings):
    email = owner.user.email
    for _round in range(2):
        for _ in range(settings.login_max_failures - 1):
            assert try_login(client, email, "wrong password").status_code == 401
        assert try_login(client, email, PASSWORD).status_code == 201


def test_an_address_is_blocked_after_too_many_failures_across_accounts(app, client, owner, monkeypatch):
    from cortex.http.logins import LoginThrottle

    monkeypatch.setattr(app.extensions["cortex"], "logins", LoginThrottle(max_failures=10, max_per_address=5))
    for number in range(5):
        assert try_login(client, f"nobody{number}@example.com", "wrong-guess").status_code == 401
    assert try_login(client, owner.user.email, PASSWORD).status_code == 429  # a fresh account, the same address
    other = try_login(client, owner.user.email, PASSWORD, environ_base={"REMOTE_ADDR": "198.51.100.7"})
    assert other.status_code == 201


def test_the_client_address_comes_from_trusted_proxies_only(app, client, owner, settings, monkeypatch):
    from dataclasses import replace

    from cortex.http.app import configure_app
    from cortex.http.logins import LoginThrottle

    def flood(forwarded_for):
        for number in range(3):
            try_login(client, f"nobody{number}@example.com", "wrong-guess", forwarded_for)

    configure_app(app, replace(settings, login_max_failures_per_address=3))
    flood("203.0.113.9")  # not trusted: the peer's address counts (127.0.0.1)
    assert try_login(client, owner.user.email, PASSWORD, "203.0.113.10").status_code == 429
    configure_app(app, replace(settings, login_max_failures_per_address=3, trusted_proxies=1))
    monkeypatch.setattr(app.extensions["cortex"], "logins", LoginThrottle(max_per_address=3))
    flood("203.0.113.9")  # one trusted proxy: the address it saw counts
    assert try_login(client, owner.user.email, PASSWORD, "203.0.113.9").status_code == 429
    assert try_login(client, owner.user.email, PASSWORD, "203.0.113.10").status_code == 201


def test_attempts_count_within_their_window():
    from cortex.http.logins import LoginThrottle

    now = [1000.0]
    throttle = LoginThrottle(max_failures=2, max_per_address=3, window=60, clock=lambda: now[0])
    assert throttle.attempt("a@example.com", "10.0.0.1") is None
    now[0] += 30
    assert throttle.attempt("A@example.com ", "10.0.0.1") is None  # the same account
    assert throttle.attempt("a@example.com", "10.0.0.2") == 30  # its third attempt: 60 s from the first
    now[0] += 31
    assert throttle.attempt("a@example.com", "10.0.0.2") is None  # a new window
    throttle.succeeded("a@example.com")
    for email in ("b@example.com", "c@example.com", "d@example.com"):
        assert throttle.attempt(email, "10.0.0.9") is None
        throttle.failed(email, "10.0.0.9")
    assert throttle.attempt("e@example.com", "10.0.0.9") == 60  # three failures from 10.0.0.9
    for _ in range(5):  # successes from one address are never refused for it
        assert throttle.attempt("f@example.com", "10.0.0.10") is None
        throttle.succeeded("f@example.com")


def test_a_burst_of_concurrent_guesses_cannot_slip_under_the_limit():
    """Attempts are counted before the password is checked: of 40 simultaneous guesses, exactly the limit get
    through to the password check."""
    import threading

    from cortex.http.logins import LoginThrottle

    throttle = LoginThrottle(max_failures=10, max_per_address=1000)
    admitted = []
    start = threading.Barrier(40)

    def guess():
        start.wait()
        admitted.append(throttle.attempt("target@example.com", "192.0.2.1") is None)

    threads = [threading.Thread(target=guess) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) == 10


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL")
def test_processes_share_the_counts_through_redis():
    from cortex.http.logins import LoginThrottle

    url = os.environ["REDIS_URL"]
    one, two = LoginThrottle(max_failures=2, redis_url=url), LoginThrottle(max_failures=2, redis_url=url)
    email = f"shared-{os.getpid()}@example.com"
    try:
        assert one.attempt(email, "192.0.2.1") is None
        assert two.attempt(email, "192.0.2.2") is None
        wait = one.attempt(email, "192.0.2.3")
        assert wait is not None and 0 < wait <= 900
        two.succeeded(email)
        assert one.attempt(email, "192.0.2.3") is None
    finally:
        one.succeeded(email)
