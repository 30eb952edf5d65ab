"""Participants tag: create-or-find, list/search/paging, get, update, delete, their events, roles, tenancy."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from models import participants as participants_model
from models.events import DomainEvent
from models.participants import Participant


def url(project, tail: str = "") -> str:
    return f"/api/projects/{project.id}/participants{tail}"


def create(client, member, project=None, headers=None, **body):
    payload = {"externalUserId": "user-1", **body}
    return client.post(url(project or member.project, ""), json=payload, headers=headers or member.headers)


def events(resource_id: str | None = None) -> list[DomainEvent]:
    query = DomainEvent.select().order_by(DomainEvent.seq)
    if resource_id is not None:
        query = query.where(DomainEvent.resource_id == resource_id)
    return list(query)


def listing(client, member, **params):
    response = client.get(url(member.project), query_string=params, headers=member.headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


# ---------------------------------------------------------------- create-or-find


def test_create_defaults_and_emits_created(client, owner):
    response = create(client, owner, externalUserId="odin-42")
    assert response.status_code == 201
    body = response.get_json()
    assert body == {
        "id": body["id"],
        "projectId": owner.project.id,
        "displayName": "odin-42",  # defaults to the external user id
        "externalUserId": "odin-42",
        "tenantId": owner.project.tenant_id,
        "userData": {},
        "joinedAt": body["joinedAt"],
    }
    assert body["joinedAt"].endswith("Z")
    row = Participant.get_by_id(body["id"])
    assert (row.external_user_id, row.display_name, row.user_data) == ("odin-42", "odin-42", {})
    [event] = events()
    assert event.type == "participant.created"
    assert event.resource_id == f"participant:{body['id']}"
    assert event.project_id == owner.project.id and event.tenant_id == owner.project.tenant_id
    assert event.source == "cortex:api"
    assert event.payload == {"action": "created", "data": body}


def test_create_with_name_and_user_data(client, owner):
    body = create(client, owner, displayName="Ada", userData={"level": 7, "tags": ["a"]}).get_json()
    assert body["displayName"] == "Ada" and body["userData"] == {"level": 7, "tags": ["a"]}
    assert client.get(url(owner.project, f"/{body['id']}"), headers=owner.headers).get_json() == body


def test_create_finds_an_existing_participant_unchanged(client, owner):
    first = create(client, owner, displayName="Ada", userData={"x": 1}).get_json()
    again = create(client, owner)  # same externalUserId, nothing else given
    assert again.status_code == 201
    assert again.get_json() == first
    same = create(client, owner, displayName="Ada", userData={"x": 1})  # given but equal: still no change
    assert same.status_code == 201 and same.get_json() == first
    assert [e.type for e in events()] == ["participant.created"]
    assert Participant.select().count() == 1


def test_create_of_an_existing_participant_updates_given_fields_that_differ(client, owner):
    first = create(client, owner, displayName="Ada", userData={"x": 1}).get_json()
    response = create(client, owner, displayName="Ada L.")
    assert response.status_code == 201
    body = response.get_json()
    assert body == {**first, "displayName": "Ada L."}  # userData not given: kept
    created, updated = events(f"participant:{first['id']}")
    assert updated.type == "participant.updated" and updated.seq > created.seq
    assert updated.payload == {"action": "updated", "data": body, "changes": {"displayName": "Ada"}}
    body = create(client, owner, userData={"y": 2}).get_json()
    assert body["userData"] == {"y": 2} and body["id"] == first["id"]
    assert events()[-1].payload["changes"] == {"userData": {"x": 1}}


def test_external_user_ids_are_per_project(client, owner, stranger):
    mine = create(client, owner, externalUserId="shared").get_json()
    theirs = create(client, stranger, externalUserId="shared").get_json()
    assert mine["id"] != theirs["id"]
    assert theirs["projectId"] == stranger.project.id and theirs["tenantId"] == stranger.project.tenant_id


def test_projects_are_addressed_by_app_id(client, owner):
    response = client.post(
        f"/api/projects/{owner.project.app_id}/participants", json={"externalUserId": "u"}, headers=owner.headers
    )
    assert response.status_code == 201
    assert response.get_json()["projectId"] == owner.project.id
    assert events()[0].project_id == owner.project.id


def test_create_rejects_a_body_without_external_user_id(client, owner):
    response = client.post(url(owner.project), json={"displayName": "x"}, headers=owner.headers)
    assert response.status_code == 400
    assert response.content_type == "application/problem+json"
    assert "externalUserId" in response.get_json()["detail"]
    assert Participant.select().count() == 0 and events() == []


def broken_emit(*args, **kwargs):
    raise RuntimeError("event log unavailable")


@pytest.fixture
def raw_client(app):
    """A client that does not validate responses (a 500 is outside the document)."""
    return FlaskClient(app, app.response_class)


def test_a_failed_create_leaves_neither_row_nor_event(raw_client, owner, monkeypatch):
    monkeypatch.setattr(participants_model, "emit", broken_emit)
    response = create(raw_client, owner)
    assert response.status_code == 500
    assert response.content_type == "application/problem+json"
    assert Participant.select().count() == 0 and events() == []


def test_a_failed_update_or_delete_leaves_the_row_and_the_log_unchanged(client, raw_client, owner, monkeypatch):
    body = create(client, owner, displayName="Ada").get_json()
    monkeypatch.setattr(participants_model, "emit", broken_emit)
    path = url(owner.project, f"/{body['id']}")
    response = raw_client.patch(path, json={"displayName": "B"}, headers=owner.headers)
    assert response.status_code == 500
    assert Participant.get_by_id(body["id"]).display_name == "Ada"
    assert [e.type for e in events()] == ["participant.created"]
    response = create(raw_client, owner, displayName="C")  # the create-or-find update path
    assert response.status_code == 500
    assert Participant.get_by_id(body["id"]).display_name == "Ada"
    response = raw_client.delete(url(owner.project, f"/{body['id']}"), headers=owner.headers)
    assert response.status_code == 500
    assert Participant.get_or_none(Participant.id == body["id"]) is not None
    assert [e.type for e in events()] == ["participant.created"]


# ---------------------------------------------------------------- list, search, paging


def make_many(client, member, names):
    """Create participants; returned in listing order (joinedAt, then id: creations may share a millisecond)."""
    made = [create(client, member, externalUserId=ext, displayName=name).get_json() for ext, name in names]
    return sorted(made, key=lambda p: (p["joinedAt"], p["id"]))


def test_list_orders_by_joined_at_and_counts_total(client, owner):
    made = make_many(client, owner, [(f"u{i}", f"Player {i}") for i in range(5)])
    body = listing(client, owner)
    assert body == {"participants": made, "total": 5}
    assert listing(client, owner, limit=2) == {"participants": made[:2], "total": 5}
    assert listing(client, owner, limit=2, offset=2) == {"participants": made[2:4], "total": 5}
    assert listing(client, owner, offset=10) == {"participants": [], "total": 5}


def test_list_ties_on_joined_at_are_ordered_by_id(client, owner):
    made = make_many(client, owner, [(f"u{i}", f"P{i}") for i in range(4)])
    Participant.update(joined_at=Participant.get_by_id(made[0]["id"]).joined_at).execute()
    listed = listing(client, owner)["participants"]
    assert [p["id"] for p in listed] == sorted(p["id"] for p in made)


@pytest.mark.parametrize(
    "limit,offset,expected",
    [
        ("2.9", "1.7", slice(1, 3)),  # truncated
        ("0", None, slice(0, 1)),  # limit below 1 → 1
        ("-5", "-3", slice(0, 1)),  # offset below 0 → 0
        ("0.5", None, slice(0, 1)),
        ("1e9", None, slice(0, 6)),  # clamped to 500
        ("inf", "1e300", slice(0, 0)),  # huge offset: past the end
    ],
)
def test_limit_and_offset_are_truncated_and_clamped(client, owner, limit, offset, expected):
    made = make_many(client, owner, [(f"u{i}", f"P{i}") for i in range(6)])
    params = {"limit": limit} if offset is None else {"limit": limit, "offset": offset}
    assert listing(client, owner, **params) == {"participants": made[expected], "total": 6}


def test_limit_defaults_to_50_and_is_at_most_500(client, owner):
    rows = [
        {"project": owner.project.id, "tenant_id": owner.project.tenant_id, "external_user_id": f"u{i:04}"}
        for i in range(520)
    ]
    Participant.insert_many(rows).execute()
    assert len(listing(client, owner)["participants"]) == 50
    body = listing(client, owner, limit=1000)
    assert len(body["participants"]) == 500 and body["total"] == 520


def test_limit_must_be_a_number(client, owner):
    response = client.get(url(owner.project), query_string={"limit": "ten"}, headers=owner.headers)
    assert response.status_code == 400
    assert response.content_type == "application/problem+json"


def test_search_is_a_case_insensitive_substring_of_name_or_external_id(client, owner):
    made = make_many(client, owner, [("id-ada", "Ada Lovelace"), ("id-bob", "Bob"), ("XADAX", "Carl")])
    ada, bob, carl = sorted(made, key=lambda p: p["displayName"])
    order = {p["id"]: i for i, p in enumerate(made)}

    def ordered(*items):
        return sorted(items, key=lambda p: order[p["id"]])

    assert listing(client, owner, search="ada") == {"participants": ordered(ada, carl), "total": 2}
    assert listing(client, owner, search="LOVE") == {"participants": [ada], "total": 1}
    assert listing(client, owner, search="id-") == {"participants": ordered(ada, bob), "total": 2}
    second = ordered(ada, carl)[1]
    assert listing(client, owner, search="ada", limit=1, offset=1) == {"participants": [second], "total": 2}
    assert listing(client, owner, search="nobody") == {"participants": [], "total": 0}
    assert listing(client, owner, search="")["total"] == 3


def test_search_treats_like_wildcards_literally(client, owner):
    made = make_many(client, owner, [("a%b", "x"), ("a_b", "y"), ("a\\b", "z"), ("aXb", "w")])
    pct, under, slash, _plain = sorted(made, key=lambda p: "xyzw".index(p["displayName"]))
    assert listing(client, owner, search="%")["participants"] == [pct]
    assert listing(client, owner, search="_")["participants"] == [under]
    assert listing(client, owner, search="\\")["participants"] == [slash]
    assert listing(client, owner, search="a%b")["participants"] == [pct]
    assert listing(client, owner, search="ab")["total"] == 0


def test_list_is_per_project(client, owner, stranger):
    create(client, stranger, externalUserId="theirs")
    mine = create(client, owner, externalUserId="mine").get_json()
    assert listing(client, owner) == {"participants": [mine], "total": 1}


# ---------------------------------------------------------------- get, update, delete


def test_get_unknown_is_a_problem_404(client, owner):
    response = client.get(url(owner.project, "/does-not-exist"), headers=owner.headers)
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"
    assert response.get_json()["detail"] == "Participant does-not-exist not found"


def test_update_changes_only_given_fields_and_emits_changes(client, owner):
    made = create(client, owner, displayName="Ada", userData={"a": 1}).get_json()
    path = url(owner.project, f"/{made['id']}")
    response = client.patch(path, json={"userData": {"b": 2}}, headers=owner.headers)
    assert response.status_code == 200
    body = response.get_json()
    assert body == {**made, "userData": {"b": 2}}  # replaced as a whole; displayName kept
    assert client.get(path, headers=owner.headers).get_json() == body
    event = events()[-1]
    assert event.type == "participant.updated" and event.resource_id == f"participant:{made['id']}"
    assert event.payload == {"action": "updated", "data": body, "changes": {"userData": {"a": 1}}}
    both = client.patch(path, json={"displayName": "Bea", "userData": {}}, headers=owner.headers).get_json()
    assert events()[-1].payload["changes"] == {"displayName": "Ada", "userData": {"b": 2}}
    assert both["displayName"] == "Bea" and both["userData"] == {}


def test_update_without_a_change_emits_nothing(client, owner):
    made = create(client, owner, displayName="Ada").get_json()
    path = url(owner.project, f"/{made['id']}")
    for patch in ({}, {"displayName": "Ada"}, {"userData": {}}):
        response = client.patch(path, json=patch, headers=owner.headers)
        assert response.status_code == 200 and response.get_json() == made
    assert [e.type for e in events()] == ["participant.created"]


def test_update_unknown_is_404(client, owner):
    response = client.patch(url(owner.project, "/nope"), json={"displayName": "x"}, headers=owner.headers)
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"
    assert events() == []


def test_delete_answers_204_and_emits_the_last_state(client, owner):
    made = create(client, owner, displayName="Ada").get_json()
    path = url(owner.project, f"/{made['id']}")
    last = client.patch(path, json={"userData": {"k": "v"}}, headers=owner.headers).get_json()
    response = client.delete(path, headers=owner.headers)
    assert response.status_code == 204
    assert response.get_data() == b""
    assert Participant.get_or_none(Participant.id == made["id"]) is None
    assert client.get(path, headers=owner.headers).status_code == 404
    assert client.delete(path, headers=owner.headers).status_code == 404
    log = events(f"participant:{made['id']}")
    assert [e.type for e in log] == ["participant.created", "participant.updated", "participant.deleted"]
    assert [e.seq for e in log] == sorted({e.seq for e in log})
    assert log[-1].payload == {"action": "deleted", "data": last}
    # the external user id is free again: a new participant, a new id
    again = create(client, owner, externalUserId=made["externalUserId"]).get_json()
    assert again["id"] != made["id"]


# ---------------------------------------------------------------- roles, scopes, tenancy


@pytest.mark.parametrize("role", ["developer", "maintainer", "admin"])
def test_every_project_role_may_write(client, add_member, role):
    member = add_member(role)
    made = create(client, member, externalUserId=f"by-{role}")
    assert made.status_code == 201
    path = url(member.project, f"/{made.get_json()['id']}")
    assert client.patch(path, json={"displayName": "n"}, headers=member.headers).status_code == 200
    assert listing(client, member)["total"] == 1
    assert client.delete(path, headers=member.headers).status_code == 204


def test_api_key_scopes(client, owner, api_key_headers):
    reader = api_key_headers(["participants:read"])
    writer = api_key_headers(["participants:write"])
    denied = create(client, owner, headers=reader)
    assert denied.status_code == 403 and denied.content_type == "application/problem+json"
    assert Participant.select().count() == 0 and events() == []
    made = create(client, owner, headers=writer)
    assert made.status_code == 201
    path = url(owner.project, f"/{made.get_json()['id']}")
    assert client.get(path, headers=reader).status_code == 200
    assert client.get(path, headers=writer).status_code == 403
    assert client.patch(path, json={"displayName": "n"}, headers=reader).status_code == 403
    assert client.delete(path, headers=reader).status_code == 403
    assert client.delete(path, headers=writer).status_code == 204


def test_credentials_are_required(client, owner):
    assert client.get(url(owner.project)).status_code == 401
    assert client.post(url(owner.project), json={"externalUserId": "u"}).status_code == 401
    assert Participant.select().count() == 0


def test_another_tenants_project_and_participants_are_404(client, owner, stranger):
    theirs = create(client, stranger, externalUserId="theirs").get_json()
    # their project through my credentials: 404 for every operation, nothing written
    assert create(client, owner, project=stranger.project).status_code == 404
    assert client.get(url(stranger.project), headers=owner.headers).status_code == 404
    path = url(stranger.project, f"/{theirs['id']}")
    assert client.get(path, headers=owner.headers).status_code == 404
    assert client.patch(path, json={"displayName": "x"}, headers=owner.headers).status_code == 404
    assert client.delete(path, headers=owner.headers).status_code == 404
    # their participant id under my project: 404 as well
    mine = url(owner.project, f"/{theirs['id']}")
    for response in (
        client.get(mine, headers=owner.headers),
        client.patch(mine, json={"displayName": "x"}, headers=owner.headers),
        client.delete(mine, headers=owner.headers),
    ):
        assert response.status_code == 404
        assert response.content_type == "application/problem+json"
    assert Participant.get_by_id(theirs["id"]).display_name == "theirs"
    assert [e.type for e in events()] == ["participant.created"]
