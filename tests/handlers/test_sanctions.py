"""Sanctions tag over HTTP: create (validation, participant/session lookups), state from the clock, update,
revoke, the lists, events in the same transaction, tenancy, roles and scopes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from models.base import rfc3339, utcnow
from models.events import DomainEvent
from models.participants import create_or_find_participant
from models.sanctions import Sanction
from models.sessions import Session


def url(member, tail=""):
    return f"/api/projects/{member.project.id}/sanctions{tail}"


def create(client, member, headers=None, **body):
    return client.post(url(member), json={"type": "mute", **body}, headers=headers or member.headers)


def events(kind=None):
    query = DomainEvent.select().where(DomainEvent.type.startswith("sanction."))
    if kind:
        query = query.where(DomainEvent.type == kind)
    return list(query.order_by(DomainEvent.seq))


def at(delta_seconds: float) -> str:
    return rfc3339(utcnow() + timedelta(seconds=delta_seconds))


@pytest.fixture
def player(owner):
    row, _new = create_or_find_participant(owner.project, "player-1", "Player One", {"level": 3})
    return row


def make_session(member) -> Session:
    return Session.create(project=member.project.id, tenant_id=member.project.tenant_id, external_room_id="room",
                          title="Match", created_by_user_id=member.user.id, status="active")


# ---------------------------------------------------------------- create


def test_create_for_a_participant_fills_the_user_and_embeds_the_participant(client, owner, player):
    session = make_session(owner)
    response = create(client, owner, participantId=player.id, sessionId=session.id, reason="spam",
                      scope={"channels": ["team"]}, metadata={"confidence": 0.9}, endAt=at(3600))
    assert response.status_code == 201
    body = response.get_json()
    assert body["externalUserId"] == "player-1" and body["participantId"] == player.id
    assert body["sessionId"] == session.id and body["type"] == "mute" and body["reason"] == "spam"
    assert body["status"] == "active" and body["isActive"] is True
    assert body["createdByUserId"] == owner.user.id and body["tenantId"] == owner.project.tenant_id
    assert body["participant"]["id"] == player.id and body["participant"]["displayName"] == "Player One"
    assert body["participant"]["userData"] == {"level": 3}
    assert "revokedAt" not in body
    assert client.get(url(owner, f"/{body['id']}"), headers=owner.headers).get_json() == body
    [event] = events()
    assert event.type == "sanction.created" and event.resource_id == f"sanction:{body['id']}"
    assert event.payload["data"] == body and event.payload["action"] == "created"


def test_create_for_an_external_user_only_is_permanent_by_default(client, owner):
    body = create(client, owner, externalUserId="someone", type="perm_ban").get_json()
    assert "endAt" not in body and "participantId" not in body and "participant" not in body
    assert body["isActive"] is True


@pytest.mark.parametrize(("fields", "status", "needle"), [
    ({}, 400, "participantId or externalUserId"),
    ({"externalUserId": "u", "startAt": "2030-01-15T10:00:00"}, 400, "offset"),
    ({"externalUserId": "u", "endAt": "tomorrow"}, 400, "endAt"),
    ({"externalUserId": "u", "startAt": "2030-01-15T10:00:00Z", "endAt": "2030-01-15T10:00:00Z"}, 400, "later"),
    ({"externalUserId": "u", "startAt": "2030-01-15T10:00:00Z", "endAt": "2030-01-15T09:00:00+00:00"}, 400, "later"),
    ({"participantId": "no-such-participant"}, 404, "Participant"),
    ({"externalUserId": "u", "sessionId": "no-such-session"}, 404, "Session"),
    ({"externalUserId": "u", "type": "banish"}, 400, ""),
])
def test_create_rejects_bad_input_and_stores_nothing(client, owner, fields, status, needle):
    response = create(client, owner, **fields)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert needle in (response.get_json().get("detail") or "")
    assert Sanction.select().count() == 0 and events() == []


def test_a_participant_and_a_different_external_user_is_400(client, owner, player):
    response = create(client, owner, participantId=player.id, externalUserId="someone-else")
    assert response.status_code == 400 and Sanction.select().count() == 0


def test_another_projects_participant_or_session_is_404(client, owner, stranger):
    theirs, _new = create_or_find_participant(stranger.project, "theirs")
    assert create(client, owner, participantId=theirs.id).status_code == 404
    assert create(client, owner, externalUserId="u", sessionId=make_session(stranger).id).status_code == 404


def test_scheduled_sanction_is_active_but_not_in_force(client, owner):
    body = create(client, owner, externalUserId="u", startAt=at(600), endAt=at(1200)).get_json()
    assert body["status"] == "active" and body["isActive"] is False
    active = client.get(url(owner, "/user/u/active"), headers=owner.headers).get_json()
    assert active == []


def test_offsets_are_converted_to_utc(client, owner):
    body = create(client, owner, externalUserId="u", startAt="2030-01-15T12:00:00+02:00",
                  endAt="2030-01-15T13:30:00+02:00").get_json()
    assert body["startAt"] == "2030-01-15T10:00:00.000Z" and body["endAt"] == "2030-01-15T11:30:00.000Z"


# ---------------------------------------------------------------- update and revoke


def test_update_changes_fields_and_reports_previous_values(client, owner):
    sanction = create(client, owner, externalUserId="u", reason="first", endAt=at(600)).get_json()
    new_end = at(7200)
    response = client.patch(url(owner, f"/{sanction['id']}"), json={"type": "text_only", "reason": "second",
                                                                     "endAt": new_end, "metadata": {"k": 1}},
                            headers=owner.headers)
    assert response.status_code == 200
    body = response.get_json()
    assert (body["type"], body["reason"], body["endAt"], body["metadata"]) == ("text_only", "second", new_end, {"k": 1})
    [updated] = events("sanction.updated")
    changes = updated.payload["changes"]
    assert changes["type"] == "mute" and changes["reason"] == "first" and changes["endAt"] == sanction["endAt"]
    assert "metadata" in changes and changes["metadata"] is None
    assert updated.payload["data"] == body


def test_an_update_that_changes_nothing_emits_nothing(client, owner):
    sanction = create(client, owner, externalUserId="u", reason="same").get_json()
    response = client.patch(url(owner, f"/{sanction['id']}"), json={"reason": "same"}, headers=owner.headers)
    assert response.status_code == 200 and events("sanction.updated") == []


def test_extending_an_expired_sanction_makes_it_active_again(client, owner):
    sanction = create(client, owner, externalUserId="u", startAt=at(-7200), endAt=at(-3600)).get_json()
    assert sanction["status"] == "expired" and sanction["isActive"] is False
    body = client.patch(url(owner, f"/{sanction['id']}"), json={"endAt": at(3600)}, headers=owner.headers).get_json()
    assert body["status"] == "active" and body["isActive"] is True
    [updated] = events("sanction.updated")
    assert updated.payload["changes"]["status"] == "expired" and updated.payload["changes"]["isActive"] is False


def test_update_rejects_an_end_before_the_start(client, owner):
    sanction = create(client, owner, externalUserId="u", startAt=at(600)).get_json()
    response = client.patch(url(owner, f"/{sanction['id']}"), json={"endAt": at(60)}, headers=owner.headers)
    assert response.status_code == 400 and events("sanction.updated") == []


def test_revoke_then_update_or_revoke_again_is_409(client, owner):
    sanction = create(client, owner, externalUserId="u").get_json()
    response = client.post(url(owner, f"/{sanction['id']}/revoke"), json={"reason": "false positive"},
                           headers=owner.headers)
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "revoked" and body["isActive"] is False and body["revokeReason"] == "false positive"
    assert body["revokedByUserId"] == owner.user.id and body["revokedAt"]
    [revoked] = events("sanction.revoked")
    assert revoked.payload["action"] == "occurred" and revoked.payload["data"] == body
    again = client.post(url(owner, f"/{sanction['id']}/revoke"), json={}, headers=owner.headers)
    assert again.status_code == 409
    patched = client.patch(url(owner, f"/{sanction['id']}"), json={"reason": "x"}, headers=owner.headers)
    assert patched.status_code == 409
    assert len(events("sanction.revoked")) == 1 and events("sanction.updated") == []


# ---------------------------------------------------------------- lists


def test_list_filters_pages_and_counts(client, owner):
    ids = [create(client, owner, externalUserId=f"u{n}", type="warn" if n % 2 else "mute").get_json()["id"]
           for n in range(5)]
    client.post(url(owner, f"/{ids[0]}/revoke"), json={}, headers=owner.headers)
    listed = client.get(url(owner), headers=owner.headers).get_json()
    assert listed["total"] == 5 and [s["id"] for s in listed["sanctions"]] == ids[::-1]
    page = client.get(url(owner), headers=owner.headers, query_string={"limit": 2, "offset": 1}).get_json()
    assert page["total"] == 5 and [s["id"] for s in page["sanctions"]] == [ids[3], ids[2]]
    warns = client.get(url(owner), headers=owner.headers, query_string={"type": "warn"}).get_json()
    assert warns["total"] == 2 and {s["type"] for s in warns["sanctions"]} == {"warn"}
    active = client.get(url(owner), headers=owner.headers, query_string={"activeOnly": "true"}).get_json()
    assert active["total"] == 4 and ids[0] not in [s["id"] for s in active["sanctions"]]
    big = client.get(url(owner), headers=owner.headers, query_string={"limit": 1000}).get_json()
    assert len(big["sanctions"]) == 5  # at most 100 per page; clamped, not rejected


def test_lists_of_a_user_and_of_a_participant(client, owner, player):
    by_participant = create(client, owner, participantId=player.id).get_json()
    by_user = create(client, owner, externalUserId="player-1", type="warn").get_json()
    create(client, owner, externalUserId="player-1", type="temp_ban", startAt=at(-7200), endAt=at(-3600))
    create(client, owner, externalUserId="other")
    mine = client.get(url(owner, "/user/player-1"), headers=owner.headers).get_json()
    assert len(mine) == 3 and mine[1] == by_user and mine[2] == by_participant
    of_participant = client.get(url(owner, f"/participant/{player.id}"), headers=owner.headers).get_json()
    assert of_participant == [by_participant]
    active = client.get(url(owner, "/user/player-1/active"), headers=owner.headers).get_json()
    assert {s["id"] for s in active} == {by_user["id"], by_participant["id"]}
    warns = client.get(url(owner, "/user/player-1/active"), headers=owner.headers,
                       query_string={"type": "warn"}).get_json()
    assert [s["id"] for s in warns] == [by_user["id"]]
    assert client.get(url(owner, "/participant/nobody"), headers=owner.headers).status_code == 404
    assert client.get(url(owner, "/user/nobody"), headers=owner.headers).get_json() == []


# ---------------------------------------------------------------- tenancy, roles, scopes


def test_another_projects_sanction_is_404_everywhere(client, owner, stranger):
    theirs = create(client, stranger, externalUserId="u").get_json()
    assert client.get(url(owner, f"/{theirs['id']}"), headers=owner.headers).status_code == 404
    assert client.patch(url(owner, f"/{theirs['id']}"), json={"reason": "x"}, headers=owner.headers).status_code == 404
    assert client.post(url(owner, f"/{theirs['id']}/revoke"), json={}, headers=owner.headers).status_code == 404
    assert client.get(url(owner, "/user/u"), headers=owner.headers).get_json() == []
    assert client.get(url(owner), headers=owner.headers).get_json()["total"] == 0
    assert client.get(url(stranger), headers=owner.headers).status_code == 404  # not a member


def test_scopes_and_roles(client, owner, add_member, api_key_headers):
    developer = add_member("developer")
    assert create(client, developer, externalUserId="u").status_code == 201
    reader = api_key_headers(["sanctions:read"])
    writer = api_key_headers(["sanctions:write"])
    assert client.get(url(owner), headers=reader).status_code == 200
    assert create(client, owner, headers=reader, externalUserId="u").status_code == 403
    made = create(client, owner, headers=writer, externalUserId="u")
    assert made.status_code == 201 and made.get_json()["createdByUserId"] == owner.user.id  # acts for its creator
    assert client.get(url(owner), headers=api_key_headers(["sessions:read"])).status_code == 403
