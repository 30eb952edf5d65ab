"""The voice lever of sanctions: while a temp_ban or perm_ban is in force for a user, POST …/{projectId}/token
(and the legacy POST /api/projects/token, for the caller's own user id) answers 403 naming the ban and its end."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cortex.lib import crypto, odin
from models.base import rfc3339, utcnow
from models.sanctions import Sanction
from models.settings import AppSettings


def at(delta_seconds: float) -> str:
    return rfc3339(utcnow() + timedelta(seconds=delta_seconds))


@pytest.fixture
def configured(owner):
    """Access-key app settings: tokens are signed locally."""
    AppSettings.create(project=owner.project.id, token_provider_type="access_key", bot_user_id="bot",
                       access_key_encrypted=crypto.encrypt(odin.generate_access_key()))
    return owner


def token(client, member, user_id, project=None):
    return client.post(f"/api/projects/{(project or member.project).id}/token", json={"roomId": "lobby", "userId": user_id},
                       headers=member.headers)


def sanction(client, member, **body) -> dict:
    response = client.post(f"/api/projects/{member.project.id}/sanctions", json=body, headers=member.headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def revoke(client, member, sanction_id):
    return client.post(f"/api/projects/{member.project.id}/sanctions/{sanction_id}/revoke", json={"reason": "appeal"},
                       headers=member.headers)


def test_a_temp_ban_refuses_the_token_naming_the_ban_and_its_end(client, configured):
    ban = sanction(client, configured, type="temp_ban", externalUserId="player-1", endAt=at(3600), reason="cheating")
    response = token(client, configured, "player-1")
    assert response.status_code == 403
    assert response.headers["Content-Type"].startswith("application/problem+json")
    detail = response.get_json()["detail"]
    assert f"temp_ban until {ban['endAt']}" in detail and ban["id"] in detail and "player-1" in detail
    assert token(client, configured, "player-2").status_code == 201  # others are not affected


def test_a_perm_ban_refuses_the_token_as_permanent(client, configured):
    sanction(client, configured, type="perm_ban", externalUserId="player-1")
    response = token(client, configured, "player-1")
    assert response.status_code == 403 and "perm_ban (permanent)" in response.get_json()["detail"]


def test_the_ban_ending_last_is_named(client, configured):
    sanction(client, configured, type="temp_ban", externalUserId="player-1", endAt=at(600))
    longer = sanction(client, configured, type="temp_ban", externalUserId="player-1", endAt=at(7200))
    assert f"until {longer['endAt']}" in token(client, configured, "player-1").get_json()["detail"]
    sanction(client, configured, type="perm_ban", externalUserId="player-1")
    assert "perm_ban (permanent)" in token(client, configured, "player-1").get_json()["detail"]


def test_the_token_is_issued_again_after_revoke(client, configured):
    ban = sanction(client, configured, type="temp_ban", externalUserId="player-1", endAt=at(3600))
    assert token(client, configured, "player-1").status_code == 403
    assert revoke(client, configured, ban["id"]).status_code == 200
    response = token(client, configured, "player-1")
    assert response.status_code == 201 and response.get_json()["token"]


def test_the_token_is_issued_again_once_the_ban_expired(client, configured):
    ban = sanction(client, configured, type="temp_ban", externalUserId="player-1", endAt=at(3600))
    assert token(client, configured, "player-1").status_code == 403
    # The clock passes endAt (moved back rather than waited for).
    Sanction.update(start_at=utcnow() - timedelta(hours=2), end_at=utcnow() - timedelta(seconds=1)).where(
        Sanction.id == ban["id"]).execute()
    assert token(client, configured, "player-1").status_code == 201


@pytest.mark.parametrize("kind", ["warn", "mute", "listen_only", "shadow_mute", "text_only", "party_restriction",
                                  "ranked_restriction", "human_review"])
def test_sanctions_that_are_not_bans_do_not_block_tokens(client, configured, kind):
    sanction(client, configured, type=kind, externalUserId="player-1", endAt=at(3600))
    assert token(client, configured, "player-1").status_code == 201


def test_a_scheduled_ban_does_not_block_until_it_starts(client, configured):
    sanction(client, configured, type="temp_ban", externalUserId="player-1", startAt=at(600), endAt=at(1200))
    assert token(client, configured, "player-1").status_code == 201


def test_a_ban_holds_in_its_own_project_only(client, configured, stranger):
    AppSettings.create(project=stranger.project.id, token_provider_type="access_key", bot_user_id="bot",
                       access_key_encrypted=crypto.encrypt(odin.generate_access_key()))
    sanction(client, stranger, type="perm_ban", externalUserId="player-1")
    assert token(client, configured, "player-1").status_code == 201
    assert token(client, stranger, "player-1").status_code == 403


def test_the_ban_is_checked_before_the_provider_and_the_peer_limit(client, owner):
    """No settings at all: a banned user hears about the ban (403), not about the configuration (400)."""
    sanction(client, owner, type="perm_ban", externalUserId="player-1")
    assert token(client, owner, "player-1").status_code == 403
    assert token(client, owner, "player-2").status_code == 400


def test_the_legacy_token_is_refused_while_the_caller_is_banned(client, configured):
    """Without a Rooms API the legacy token is issued for the caller's user id: a ban on that id refuses it."""
    def legacy():
        return client.post("/api/projects/token", json={"roomId": "r1", "projectId": configured.project.app_id,
                                                        "secret": configured.secret}, headers=configured.headers)

    assert legacy().status_code == 201
    ban = sanction(client, configured, type="temp_ban", externalUserId=configured.user.id, endAt=at(3600))
    response = legacy()
    assert response.status_code == 403 and f"temp_ban until {ban['endAt']}" in response.get_json()["detail"]
    sanction(client, configured, type="perm_ban", externalUserId="someone-else")
    assert revoke(client, configured, ban["id"]).status_code == 200
    assert legacy().status_code == 201
