"""Voice domain rules without HTTP: activation, peer limit, access keys, public keys; the permission table."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from cortex import ROOT
from cortex.lib import odin
from models import voice
from models.base import DomainError
from models.identity import create_project
from models.permissions import FLAG_SCOPES, FLAGS, permissions_for
from models.voice import (
    MAX_PEER_LIMIT,
    OdinAccessKey,
    VoiceConfig,
    VoiceStatus,
    access_keys,
    activate_voice,
    check_peer_limit,
    delete_access_key,
    edit_access_key,
    public_keys,
    set_peer_limit,
    voice_status,
)


def create_access_key(project, name, description=None, limit=100):
    return voice.create_access_key(project, name, description, limit=limit)


@pytest.fixture
def project(owner):
    return owner.project


@pytest.fixture
def active(project):
    activate_voice(project)
    return project


@pytest.fixture
def frozen_clock(monkeypatch):
    """Every utcnow() in models.voice returns the same instant."""
    instant = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    monkeypatch.setattr(voice, "utcnow", lambda: instant)
    return instant


def kind_of(call, *args) -> str:
    with pytest.raises(DomainError) as caught:
        call(*args)
    return caught.value.kind


# ---------------------------------------------------------------- activation and peer limit


def test_status_before_activation(project):
    assert voice_status(project) == VoiceStatus(activated=False, peer_limit=0, access_keys_count=0)


def test_activation_is_idempotent_and_keeps_settings(project):
    assert activate_voice(project) == VoiceStatus(activated=True, peer_limit=0, access_keys_count=0)
    set_peer_limit(project, 40)
    assert activate_voice(project) == VoiceStatus(activated=True, peer_limit=40, access_keys_count=0)
    assert VoiceConfig.select().where(VoiceConfig.project == project.id).count() == 1


@pytest.mark.parametrize("value,expected", [(0, 0), (1, 1), (5.0, 5), (MAX_PEER_LIMIT, MAX_PEER_LIMIT)])
def test_peer_limit_accepts_whole_numbers_from_0(value, expected):
    assert check_peer_limit(value) == expected
    assert type(check_peer_limit(value)) is int


@pytest.mark.parametrize(
    "value", [-1, -0.5, 1.5, MAX_PEER_LIMIT + 1, float("inf"), float("nan"), True, False, "3", None, [1]]
)
def test_peer_limit_rejects_everything_else(value):
    with pytest.raises(DomainError) as caught:
        check_peer_limit(value)
    assert caught.value.kind == "invalid"
    assert "peerLimit" in caught.value.detail


def test_peer_limit_needs_activation(project):
    assert kind_of(set_peer_limit, project, 3) == "conflict"
    assert not VoiceConfig.select().exists()


def test_peer_limit_is_checked_before_activation_state(project):
    assert kind_of(set_peer_limit, project, -3) == "invalid"


def test_peer_limit_is_stored(active):
    assert set_peer_limit(active, 12) == VoiceStatus(activated=True, peer_limit=12, access_keys_count=0)
    assert VoiceConfig.get(VoiceConfig.project == active.id).peer_limit == 12
    assert set_peer_limit(active, 0).peer_limit == 0


# ---------------------------------------------------------------- access keys


def test_access_key_needs_activation(project):
    assert kind_of(create_access_key, project, "server") == "conflict"
    assert not OdinAccessKey.select().exists()


def test_create_access_key_keeps_only_the_public_half(active):
    row, access_key = create_access_key(active, "  server  ", "  EU  ")
    assert odin.is_valid_access_key(access_key)
    assert row.pub_key == odin.public_key_b64(access_key)
    assert row.key_id == odin.key_id_from_pub_key(row.pub_key) == odin.key_id(odin.public_key(access_key))
    assert (row.name, row.description) == ("server", "EU")
    stored = OdinAccessKey.get_by_id(row.id).__data__
    assert access_key not in " ".join(str(value) for value in stored.values())
    assert voice_status(active).access_keys_count == 1


def test_every_access_key_is_new(active):
    keys = {create_access_key(active, f"k{n}")[1] for n in range(5)}
    assert len(keys) == 5
    assert len({row.key_id for row in access_keys(active)}) == 5


@pytest.mark.parametrize("description", [None, "", "   "])
def test_blank_description_is_none(active, description):
    row, _key = create_access_key(active, "server", description)
    assert OdinAccessKey.get_by_id(row.id).description is None


@pytest.mark.parametrize("name,detail", [("", "must not be empty"), ("  \t", "must not be empty"), ("x" * 256, "at most 255")])
def test_access_key_names(active, name, detail):
    with pytest.raises(DomainError, match=detail) as caught:
        create_access_key(active, name)
    assert caught.value.kind == "invalid"
    assert create_access_key(active, "x" * 255)[0].name == "x" * 255


def test_access_keys_keep_creation_order_even_within_one_millisecond(active, frozen_clock):
    rows = [create_access_key(active, f"key {n}")[0] for n in range(4)]
    stored = list(access_keys(active))
    assert [row.id for row in stored] == [row.id for row in rows]
    created = [row.created_at for row in stored]
    assert created[0] == frozen_clock and created == sorted(set(created))


def test_edit_access_key(active, frozen_clock):
    row, _key = create_access_key(active, "server", "first")
    edited = edit_access_key(active, row.id, " renamed ")
    assert (edited.name, edited.description) == ("renamed", "first")  # description not given: kept
    assert edited.updated_at > row.updated_at and edited.created_at == row.created_at
    replaced = edit_access_key(active, row.id, "renamed", "second")
    assert replaced.description == "second" and replaced.updated_at > edited.updated_at
    assert edit_access_key(active, row.id, "renamed", "").description is None
    stored = OdinAccessKey.get_by_id(row.id)
    assert (stored.name, stored.description, stored.pub_key) == ("renamed", None, row.pub_key)
    assert kind_of(edit_access_key, active, row.id, " ") == "invalid"


def test_keys_of_other_projects_are_not_found(owner, active):
    other, _secret = create_project(owner.user, "Game Two")
    activate_voice(other)
    theirs, _key = create_access_key(other, "theirs")
    for key_id in (theirs.id, "no-such-key"):
        assert kind_of(edit_access_key, active, key_id, "mine") == "not_found"
        assert kind_of(delete_access_key, active, key_id) == "not_found"
    assert OdinAccessKey.get_by_id(theirs.id).name == "theirs"


def test_delete_access_key(active):
    row, _key = create_access_key(active, "server")
    assert delete_access_key(active, row.id).id == row.id
    assert not OdinAccessKey.select().exists()
    assert kind_of(delete_access_key, active, row.id) == "not_found"
    assert voice_status(active).access_keys_count == 0


def test_public_keys_by_id_or_app_id(owner, active):
    rows = [create_access_key(active, f"k{n}")[0] for n in range(3)]
    other, _secret = create_project(owner.user, "Game Two")
    activate_voice(other)
    create_access_key(other, "other project")
    expected = [row.pub_key for row in rows]
    assert public_keys(active.id) == expected
    assert public_keys(active.app_id) == expected
    assert public_keys(other.id) != expected and len(public_keys(other.id)) == 1
    with pytest.raises(DomainError) as caught:
        public_keys("no-such-project")
    assert caught.value.kind == "not_found"


def test_public_keys_of_a_project_without_voice(project):
    assert public_keys(project.id) == []


# ---------------------------------------------------------------- permissions_for (no database needed)


def test_flags_are_the_documented_project_permissions():
    spec = json.loads((ROOT / "openapi" / "cortex.json").read_text())
    assert list(FLAGS) == list(spec["components"]["schemas"]["ProjectPermissions"]["properties"])
    assert set(FLAG_SCOPES) == set(FLAGS)
    assert set(FLAG_SCOPES.values()) <= set(spec["x-cortex-scopes"])


def test_role_permissions():
    assert permissions_for("admin") == dict.fromkeys(FLAGS, True)
    maintainer = permissions_for("maintainer")
    assert {flag for flag, allowed in maintainer.items() if not allowed} == {"addUser", "editUser", "deleteUser"}
    developer = permissions_for("developer")
    assert {flag for flag, allowed in developer.items() if allowed} == {"downloadLicense"}


def test_unknown_role():
    with pytest.raises(ValueError, match="unknown project role"):
        permissions_for("owner")


@pytest.mark.parametrize(
    "scopes,allowed",
    [
        (frozenset(), set()),
        (frozenset({"voice:read"}), {"downloadLicense"}),
        (frozenset({"voice:write"}), {"addAccessKey", "editAccessKey", "deleteAccessKey", "setPeerLimit"}),
        (frozenset({"projects:write"}), {"addUser", "editUser", "deleteUser", "setProjectName"}),
        (frozenset({"sessions:read", "projects:read"}), set()),
        (frozenset({"voice:read", "voice:write", "projects:write"}), set(FLAGS)),
    ],
)
def test_api_key_scopes_narrow_the_admin_role(scopes, allowed):
    assert permissions_for("admin", scopes) == {flag: flag in allowed for flag in FLAGS}


def test_scopes_never_widen_a_role():
    every = frozenset(FLAG_SCOPES.values())
    for role in ("admin", "maintainer", "developer"):
        assert permissions_for(role, every) == permissions_for(role)
    assert permissions_for("developer", frozenset({"voice:write"})) == dict.fromkeys(FLAGS, False)
    maintainer = permissions_for("maintainer", frozenset({"projects:write"}))
    assert {flag for flag, allowed in maintainer.items() if allowed} == {"setProjectName"}


def test_a_project_holds_at_most_limit_access_keys(active, project):
    create_access_key(project, "one", limit=2)
    create_access_key(project, "two", limit=2)
    with pytest.raises(DomainError) as raised:
        create_access_key(project, "three", limit=2)
    assert raised.value.kind == "conflict"
    assert "at most 2 access keys per project" in raised.value.detail
    assert "CORTEX_MAX_ACCESS_KEYS_PER_PROJECT" in raised.value.detail
    assert access_keys(project).count() == 2
