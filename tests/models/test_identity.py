"""Identity domain rules without HTTP: users, Fusion sessions, projects, API keys; base-model helpers."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from cortex.lib import crypto
from models.base import DomainError, Prepared, parse_timestamp, rfc3339, rfc3339_raw, split_names, utcnow
from models.identity import (
    API_KEY_PREFIX,
    LIVE_API_KEY_ROWS,
    ApiKey,
    FusionSession,
    Project,
    ProjectMember,
    Tenant,
    User,
    api_key_by_secret,
    authenticate,
    create_api_key,
    create_project,
    create_user,
    live_api_keys,
    open_fusion_session,
    project_secret,
    revoke_api_key,
    revoke_fusion_session,
    user_for_fusion_session,
)

PASSWORD = "correct horse battery"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def user(app):
    return create_user("person@example.com", PASSWORD, "Pat Person")


# ------------------------------------------------------------------------------------------------- users


def test_create_user_normalises_email_and_makes_a_tenant(app):
    created = create_user("  Alice@Example.COM ", PASSWORD)
    assert created.email == "alice@example.com"
    stored = User.get_by_id(created.id)
    assert stored.email == "alice@example.com" and stored.name == "alice"
    assert Tenant.get_by_id(stored.tenant_id).name == "alice@example.com"


def test_create_user_in_an_existing_tenant(app, user):
    colleague = create_user("colleague@example.com", PASSWORD, "Col League", tenant_id=user.tenant_id)
    assert colleague.tenant_id == user.tenant_id
    assert Tenant.select().count() == 1


@pytest.mark.parametrize(
    "email,password,detail",
    [
        ("someone@example.com", "12345", "password must be at least 6 characters"),
        ("not-an-email", PASSWORD, "is not an email address"),
        ("  @ ", PASSWORD, "is not an email address"),
    ],
)
def test_create_user_rejects_invalid_input(app, email, password, detail):
    with pytest.raises(DomainError) as raised:
        create_user(email, password)
    assert raised.value.kind == "invalid" and detail in raised.value.detail
    assert User.select().count() == 0 and Tenant.select().count() == 0


def test_duplicate_email_is_a_conflict_whatever_the_case(app, user):
    with pytest.raises(DomainError) as raised:
        create_user(" PERSON@example.com", PASSWORD)
    assert raised.value.kind == "conflict"
    assert User.select().count() == 1 and Tenant.select().count() == 1


def test_unknown_tenant_is_not_found(app):
    with pytest.raises(DomainError) as raised:
        create_user("lost@example.com", PASSWORD, tenant_id="no-such-tenant")
    assert raised.value.kind == "not_found" and "no-such-tenant" in raised.value.detail
    assert User.select().count() == 0 and Tenant.select().count() == 0


def test_password_is_stored_as_argon2id_and_authenticates(app, user):
    stored = User.get_by_id(user.id)
    assert stored.password_hash.startswith("$argon2id$")
    assert PASSWORD not in stored.password_hash
    assert authenticate("PERSON@example.com ", PASSWORD).id == user.id
    assert authenticate("person@example.com", PASSWORD + "!") is None
    assert authenticate("nobody@example.com", PASSWORD) is None


# ---------------------------------------------------------------------------------------- Fusion sessions


def test_fusion_session_is_stored_only_as_its_sha256(app, user):
    session_id = open_fusion_session(user, 3600)
    assert session_id.startswith("fsid_")
    row = FusionSession.get(FusionSession.user == user.id)
    assert row.token_hash == sha256(session_id)
    assert session_id not in [str(value) for value in row.__data__.values()]
    assert timedelta(seconds=3590) < row.expires_at - utcnow() <= timedelta(seconds=3600)
    assert user_for_fusion_session(session_id).id == user.id
    assert user_for_fusion_session("fsid_unknown") is None


def test_expired_fusion_session_finds_no_user(app, user):
    session_id = open_fusion_session(user, 3600)
    FusionSession.update(expires_at=utcnow() - timedelta(seconds=1)).execute()
    assert user_for_fusion_session(session_id) is None


def test_revoked_fusion_session_finds_no_user(app, user):
    session_id = open_fusion_session(user, 3600)
    other = open_fusion_session(user, 3600)
    assert revoke_fusion_session(session_id) is True
    assert revoke_fusion_session(session_id) is False  # already revoked
    assert user_for_fusion_session(session_id) is None
    assert FusionSession.get(FusionSession.token_hash == sha256(session_id)).revoked_at is not None
    assert user_for_fusion_session(other).id == user.id  # only that session ends


# ------------------------------------------------------------------------------------------------ projects


def test_create_project_makes_the_owner_admin_and_encrypts_the_secret(app, user):
    project, secret = create_project(user, "  Game  ", "conferencing", "A game", "example.com")
    stored = Project.get_by_id(project.id)
    assert (stored.name, stored.type, stored.description, stored.domain) == ("Game", "conferencing", "A game", "example.com")
    assert stored.tenant_id == user.tenant_id and stored.app_id.startswith("app_")
    assert len(secret) >= 32
    assert stored.secret_encrypted != secret and secret not in stored.secret_encrypted
    assert crypto.decrypt(stored.secret_encrypted) == secret == project_secret(stored)
    members = [(m.user_id, m.email, m.role, m.status) for m in ProjectMember.select()]
    assert members == [(user.id, user.email, "admin", "active")]


def test_project_app_ids_and_secrets_are_unique(app, user):
    first, first_secret = create_project(user, "One")
    second, second_secret = create_project(user, "Two")
    assert first.app_id != second.app_id and first_secret != second_secret


@pytest.mark.parametrize("kind,name", [("voice", "Game"), ("sdk", "   ")])
def test_create_project_rejects_bad_type_or_name(app, user, kind, name):
    with pytest.raises(DomainError) as raised:
        create_project(user, name, kind)
    assert raised.value.kind == "invalid"
    assert Project.select().count() == 0 and ProjectMember.select().count() == 0


# ------------------------------------------------------------------------------------------------ API keys


def test_create_api_key_stores_only_the_hash(app, user):
    project, _secret = create_project(user, "Game")
    row, key = create_api_key(user.tenant_id, user.id, "CI", ["b:write", "a:read", "b:write"], project.id, None)
    assert key.startswith(API_KEY_PREFIX) and API_KEY_PREFIX == "ots_live_"
    assert len(key) - len(API_KEY_PREFIX) >= 43
    stored = ApiKey.get_by_id(row.id)
    assert stored.key_hash == sha256(key)
    assert stored.key_prefix == key[: len(stored.key_prefix)] and len(stored.key_prefix) < len(key)
    assert key not in [str(value) for value in stored.__data__.values()]
    assert stored.scopes == ["a:read", "b:write"]
    assert (stored.tenant_id, stored.created_by_id, stored.project_id) == (user.tenant_id, user.id, project.id)
    assert api_key_by_secret(key).id == row.id
    assert api_key_by_secret(key + "x") is None


def test_revoked_or_expired_api_key_is_not_found_by_secret(app, user):
    revoked, revoked_key = create_api_key(user.tenant_id, user.id, "old", ["a:read"], None, None)
    expired, expired_key = create_api_key(
        user.tenant_id, user.id, "expired", ["a:read"], None, utcnow() - timedelta(seconds=1)
    )
    live, live_key = create_api_key(user.tenant_id, user.id, "live", ["a:read"], None, utcnow() + timedelta(days=1))
    assert revoke_api_key(user.tenant_id, user.id, revoked.id).revoked_at is not None
    assert api_key_by_secret(revoked_key) is None
    assert api_key_by_secret(expired_key) is None
    assert api_key_by_secret(live_key).id == live.id


def test_revoke_api_key_of_another_tenant_is_none(app, user):
    row, key = create_api_key(user.tenant_id, user.id, "mine", ["a:read"], None, None)
    outsider = create_user("outsider@example.org", PASSWORD)
    assert revoke_api_key(outsider.tenant_id, outsider.id, row.id) is None
    assert ApiKey.get_by_id(row.id).revoked_at is None and api_key_by_secret(key).id == row.id
    assert revoke_api_key(user.tenant_id, user.id, row.id).id == row.id
    assert revoke_api_key(user.tenant_id, user.id, row.id) is None  # no longer live
    assert revoke_api_key(user.tenant_id, user.id, "no-such-key") is None


# ------------------------------------------------------------------------------------ Prepared, timestamps


def test_prepared_listing_matches_the_peewee_query(app, user):
    outsider = create_user("outsider@example.org", PASSWORD)
    project, _secret = create_project(user, "Game")
    create_api_key(user.tenant_id, user.id, "one", ["a:read"], None, None)
    create_api_key(user.tenant_id, user.id, "two", ["a:read", "b:write"], project.id, parse_timestamp("2030-01-02T03:04:05.678Z"))
    gone, _ = create_api_key(user.tenant_id, user.id, "gone", ["a:read"], None, None)
    revoke_api_key(user.tenant_id, user.id, gone.id)
    create_api_key(outsider.tenant_id, outsider.id, "theirs", ["a:read"], None, None)

    columns = (ApiKey.id, ApiKey.name, ApiKey.key_prefix, ApiKey.scopes, ApiKey.project,
               ApiKey.last_used_at, ApiKey.expires_at, ApiKey.created_at)
    for tenant, owner in ((user.tenant_id, user.id), (outsider.tenant_id, outsider.id), ("nobody", user.id)):
        raw = LIVE_API_KEY_ROWS.rows(tenant=tenant, owner=owner)  # later calls reuse the compiled SQL
        expected = list(live_api_keys(tenant, owner).select(*columns).tuples())
        assert len(raw) == len(expected)
        decoded = [
            (i, n, p, split_names(s), pid, rfc3339_raw(used), rfc3339_raw(exp), rfc3339_raw(created))
            for i, n, p, s, pid, used, exp, created in raw
        ]
        assert decoded == [
            (i, n, p, s, pid, rfc3339(used), rfc3339(exp), rfc3339(created))
            for i, n, p, s, pid, used, exp, created in expected
        ]
    rows = {row[1]: row for row in LIVE_API_KEY_ROWS.rows(tenant=user.tenant_id, owner=user.id)}
    assert sorted(rows) == ["one", "two"]
    assert rows["two"][4] == project.id and rfc3339_raw(rows["two"][6]) == "2030-01-02T03:04:05.678Z"


def test_prepared_substitutes_every_parameter_on_every_call(app, user):
    create_api_key(user.tenant_id, user.id, "alpha", ["a:read"], None, None)
    create_api_key(user.tenant_id, user.id, "beta", ["a:read"], None, None)
    by_name = Prepared(
        lambda tenant, name: ApiKey.select(ApiKey.name, ApiKey.tenant)
        .where(ApiKey.tenant == tenant, ApiKey.name == name)
        .order_by(ApiKey.id)
    )
    for name in ("alpha", "beta", "gamma"):
        expected = list(
            ApiKey.select(ApiKey.name, ApiKey.tenant)
            .where(ApiKey.tenant == user.tenant_id, ApiKey.name == name)
            .order_by(ApiKey.id)
            .tuples()
        )
        assert by_name.rows(tenant=user.tenant_id, name=name) == expected
    assert by_name.rows(tenant="other", name="alpha") == []


def test_timestamps_round_trip():
    text = "2030-01-02T03:04:05.678Z"
    value = parse_timestamp(text)
    assert value == datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert rfc3339(value) == text
    assert rfc3339_raw(value) == text
    assert rfc3339_raw(value.replace(tzinfo=None)) == text  # naive is UTC (PostgreSQL returns naive values)
    assert rfc3339_raw("2030-01-02 03:04:05.678000") == text  # SQLite's stored text
    assert rfc3339_raw("2030-01-02 03:04:05") == "2030-01-02T03:04:05.000Z"
    assert parse_timestamp(rfc3339(value)) == value
    assert parse_timestamp("2030-01-02T05:04:05.678+02:00") == value
    assert parse_timestamp(" 2030-01-02T03:04:05.678 ") == value  # naive is UTC
    assert rfc3339(None) is None and rfc3339_raw(None) is None
    with pytest.raises(ValueError):
        parse_timestamp("tomorrow")


def test_timestamps_round_trip_through_the_database(app, user):
    text = "2030-01-02T03:04:05.678Z"
    row, _key = create_api_key(user.tenant_id, user.id, "dated", ["a:read"], None, parse_timestamp(text))
    assert rfc3339(ApiKey.get_by_id(row.id).expires_at) == text
    raw = next(r for r in LIVE_API_KEY_ROWS.rows(tenant=user.tenant_id, owner=user.id) if r[0] == row.id)
    assert rfc3339_raw(raw[6]) == text
