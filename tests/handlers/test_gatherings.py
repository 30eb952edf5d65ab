"""Gatherings tag over HTTP: create (validation, codes, owner), the state machine, lookups, lists, updates,
members and capacity (including a rush of concurrent joins), sanctions that keep players out, events."""

from __future__ import annotations

import threading

import pytest

from models.events import DomainEvent
from models.gatherings import CODE_ALPHABET, Gathering, GatheringMember
from models.participants import create_or_find_participant
from models.sanctions import create_sanction


def url(member, tail=""):
    return f"/api/projects/{member.project.id}/gatherings{tail}"


def create(client, member, **body):
    return client.post(url(member), json={"name": "Friday Night", "type": "lobby", **body}, headers=member.headers)


def player(owner, name):
    row, _new = create_or_find_participant(owner.project, name, name.title())
    return row


def join(client, owner, code, participant_id):
    return client.post(url(owner, "/join"), json={"joinCode": code, "participantId": participant_id},
                       headers=owner.headers)


def types(prefix="gathering."):
    return [e.type for e in DomainEvent.select().where(DomainEvent.type.startswith(prefix)).order_by(DomainEvent.seq)]


# ---------------------------------------------------------------- create


def test_create_with_defaults_a_fresh_code_and_the_owner_seated(client, owner):
    host = player(owner, "host")
    response = create(client, owner, ownerId=host.id, properties={"map": "dust2"})
    assert response.status_code == 201
    body = response.get_json()
    assert (body["status"], body["maxMembers"], body["accessPolicy"], body["listed"]) == ("pending", 8, "public", False)
    assert len(body["joinCode"]) == 8 and set(body["joinCode"]) <= set(CODE_ALPHABET)
    assert not set(body["joinCode"]) & set("0O1IL")
    assert body["roomId"] == body["joinCode"] and body["ownerId"] == host.id and body["memberCount"] == 1
    assert body["properties"] == {"map": "dust2"} and body["expiresAt"]
    [member] = client.get(url(owner, f"/{body['id']}/members"), headers=owner.headers).get_json()
    assert (member["participantId"], member["role"], member["status"]) == (host.id, "owner", "joined")
    assert member["displayName"] == "Host"
    assert types() == ["gathering.created", "gathering.member.joined"]


@pytest.mark.parametrize(("fields", "status"), [
    ({"name": "  "}, 400),
    ({"maxMembers": 1}, 400),
    ({"maxMembers": 101}, 400),
    ({"maxMembers": 2.5}, 400),
    ({"startsAt": "2030-01-20T15:00:00Z", "endsAt": "2030-01-20T14:00:00Z"}, 400),
    ({"startsAt": "2030-01-20 15:00"}, 400),
    ({"timezone": "Mars/Olympus"}, 400),
    ({"ownerId": "nobody"}, 404),
])
def test_create_rejects_bad_input(client, owner, fields, status):
    response = create(client, owner, **fields)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert Gathering.select().count() == 0 and types() == []


def test_an_appointment_keeps_its_times_and_timezone(client, owner):
    body = create(client, owner, type="appointment", startsAt="2030-01-20T16:00:00+01:00",
                  endsAt="2030-01-20T17:00:00+01:00", timezone="Europe/Berlin", roomId="room-7").get_json()
    assert (body["startsAt"], body["endsAt"], body["timezone"]) == ("2030-01-20T15:00:00.000Z",
                                                                    "2030-01-20T16:00:00.000Z", "Europe/Berlin")
    assert body["roomId"] == "room-7" and body["expiresAt"] == "2030-01-20T17:00:00.000Z"  # endsAt + 1 h grace


# ---------------------------------------------------------------- codes and the state machine


def test_lookup_accepts_any_case_and_spaces_and_hides_finished_gatherings(client, owner):
    body = create(client, owner).get_json()
    code = body["joinCode"]
    found = client.get(url(owner, f"/lookup/ {code.lower()} "), headers=owner.headers)
    assert found.status_code == 200 and found.get_json()["id"] == body["id"]
    assert client.get(url(owner, "/lookup/ZZZZZZZZ"), headers=owner.headers).status_code == 404
    assert client.delete(url(owner, f"/{body['id']}"), headers=owner.headers).get_json()["status"] == "cancelled"
    assert client.get(url(owner, f"/lookup/{code}"), headers=owner.headers).status_code == 404


def test_the_state_machine(client, owner, app):
    host, guest = player(owner, "host"), player(owner, "guest")
    body = create(client, owner, ownerId=host.id).get_json()
    gid = body["id"]
    assert client.post(url(owner, f"/{gid}/end"), headers=owner.headers).status_code == 409  # pending → ended: no
    assert join(client, owner, body["joinCode"], guest.id).get_json()["gathering"]["status"] == "active"
    started = client.post(url(owner, f"/{gid}/start"), json={"roomId": "arena"}, headers=owner.headers)
    assert started.status_code == 200 and started.get_json()["status"] == "started"
    assert started.get_json()["roomId"] == "arena"
    assert client.post(url(owner, f"/{gid}/start"), json={"roomId": "x"}, headers=owner.headers).status_code == 409
    ended = client.post(url(owner, f"/{gid}/end"), headers=owner.headers)
    assert ended.status_code == 200 and ended.get_json()["status"] == "ended" and "expiresAt" not in ended.get_json()
    assert client.delete(url(owner, f"/{gid}"), headers=owner.headers).status_code == 409  # ended → cancelled: no
    assert client.patch(url(owner, f"/{gid}"), json={"name": "x"}, headers=owner.headers).status_code == 409
    late = join(client, owner, body["joinCode"], player(owner, "late").id)
    assert late.status_code == 409 and "ended" in late.get_json()["detail"]  # over: nobody joins
    assert client.get(url(owner, f"/lookup/{body['joinCode']}"), headers=owner.headers).status_code == 404
    assert types() == ["gathering.created", "gathering.member.joined", "gathering.member.joined",
                       "gathering.updated", "gathering.started", "gathering.ended"]


def test_start_with_auto_session_and_without_configured_settings_says_why(client, owner):
    body = create(client, owner, autoStartSession=True).get_json()
    started = client.post(url(owner, f"/{body['id']}/start"), json={"roomId": "arena"}, headers=owner.headers)
    assert started.status_code == 200
    answer = started.get_json()
    assert answer["status"] == "started" and "sessionId" not in answer and "settings" in answer["sessionError"]


# ---------------------------------------------------------------- lists and updates


def test_list_filters_pages_and_counts(client, owner):
    ids = [create(client, owner, type="open" if n % 2 else "lobby", listed=n < 2).get_json()["id"] for n in range(5)]
    listed = client.get(url(owner), headers=owner.headers).get_json()
    assert listed["total"] == 5 and [g["id"] for g in listed["gatherings"]] == ids[::-1]
    page = client.get(url(owner), headers=owner.headers, query_string={"limit": 2, "offset": 1}).get_json()
    assert [g["id"] for g in page["gatherings"]] == [ids[3], ids[2]] and page["total"] == 5
    assert client.get(url(owner), headers=owner.headers, query_string={"type": "open"}).get_json()["total"] == 2
    assert client.get(url(owner), headers=owner.headers, query_string={"listed": "true"}).get_json()["total"] == 2
    client.delete(url(owner, f"/{ids[0]}"), headers=owner.headers)
    cancelled = client.get(url(owner), headers=owner.headers, query_string={"status": "cancelled"}).get_json()
    assert [g["id"] for g in cancelled["gatherings"]] == [ids[0]]


def test_update_merges_and_reports_changes_and_guards_capacity(client, owner):
    body = create(client, owner, properties={"a": 1}).get_json()
    gid = body["id"]
    for name in ("p1", "p2", "p3"):
        assert join(client, owner, body["joinCode"], player(owner, name).id).status_code == 200
    response = client.patch(url(owner, f"/{gid}"), json={"name": "Renamed", "properties": {"b": 2}},
                            headers=owner.headers)
    assert response.status_code == 200
    assert response.get_json()["name"] == "Renamed" and response.get_json()["properties"] == {"a": 1, "b": 2}
    update = DomainEvent.select().where(DomainEvent.type == "gathering.updated").order_by(DomainEvent.seq.desc()).first()
    assert update.payload["changes"]["name"] == "Friday Night" and update.payload["changes"]["properties"] == {"a": 1}
    low = client.patch(url(owner, f"/{gid}"), json={"maxMembers": 2}, headers=owner.headers)
    assert low.status_code == 409 and Gathering.get_by_id(gid).max_members == 8


# ---------------------------------------------------------------- members and capacity


def test_joining_is_idempotent_and_a_full_gathering_refuses(client, owner):
    body = create(client, owner, maxMembers=2).get_json()
    a, b, c = player(owner, "a"), player(owner, "b"), player(owner, "c")
    first = join(client, owner, body["joinCode"], a.id).get_json()
    again = join(client, owner, body["joinCode"], a.id).get_json()
    assert first["success"] is True and again["member"]["id"] == first["member"]["id"]
    assert again["gathering"]["memberCount"] == 1
    assert join(client, owner, body["joinCode"].lower(), b.id).status_code == 200
    full = join(client, owner, body["joinCode"], c.id)
    assert full.status_code == 409 and "full" in full.get_json()["detail"]
    assert Gathering.get_by_id(body["id"]).member_count == 2


def test_invite_only_needs_an_invitation_and_sanctions_keep_players_out(client, owner):
    locked = create(client, owner, accessPolicy="invite-only").get_json()
    outsider = player(owner, "outsider")
    assert join(client, owner, locked["joinCode"], outsider.id).status_code == 403
    open_one = create(client, owner).get_json()
    banned, restricted = player(owner, "banned"), player(owner, "restricted")
    create_sanction(owner.project, owner.user.id, {"externalUserId": "banned", "type": "temp_ban",
                                                   "endAt": "2999-01-01T00:00:00Z"})
    create_sanction(owner.project, owner.user.id, {"participantId": restricted.id, "type": "party_restriction"})
    refused = join(client, owner, open_one["joinCode"], banned.id)
    assert refused.status_code == 403 and "temp_ban" in refused.get_json()["detail"]
    assert join(client, owner, open_one["joinCode"], restricted.id).status_code == 403
    create_sanction(owner.project, owner.user.id, {"externalUserId": "outsider", "type": "mute"})
    assert join(client, owner, open_one["joinCode"], outsider.id).status_code == 200  # a mute does not keep out
    assert Gathering.get_by_id(open_one["id"]).member_count == 1


def test_members_ready_left_and_removed(client, owner):
    body = create(client, owner).get_json()
    gid = body["id"]
    a, b = player(owner, "a"), player(owner, "b")
    added = client.post(url(owner, f"/{gid}/members"), json={"participantId": a.id, "properties": {"team": "red"}},
                        headers=owner.headers)
    assert added.status_code == 201 and added.get_json()["role"] == "member" and added.get_json()["status"] == "joined"
    member_id = added.get_json()["id"]
    ready = client.patch(url(owner, f"/{gid}/members/{member_id}"), json={"status": "ready",
                                                                        "properties": {"slot": 1}},
                         headers=owner.headers).get_json()
    assert ready["status"] == "ready" and ready["readyAt"] and ready["properties"] == {"team": "red", "slot": 1}
    left = client.patch(url(owner, f"/{gid}/members/{member_id}"), json={"status": "left"}, headers=owner.headers)
    assert left.get_json()["status"] == "left" and Gathering.get_by_id(gid).member_count == 0
    join(client, owner, body["joinCode"], b.id)
    assert client.delete(url(owner, f"/{gid}/members/{b.id}"), headers=owner.headers).status_code == 204
    assert Gathering.get_by_id(gid).member_count == 0
    assert client.delete(url(owner, f"/{gid}/members/{b.id}"), headers=owner.headers).status_code == 404
    other = create(client, owner).get_json()
    assert client.patch(url(owner, f"/{other['id']}/members/{member_id}"), json={"status": "ready"},
                        headers=owner.headers).status_code == 404
    assert types("gathering.member.") == ["gathering.member.joined", "gathering.member.ready", "gathering.member.left",
                                          "gathering.member.joined", "gathering.member.left"]


def test_a_rush_of_joins_never_passes_the_limit(app, owner):
    """50 concurrent joins of distinct participants at a gathering of 10: exactly 10 succeed (SQLite's single
    writer and PostgreSQL's row lock under the conditional UPDATE). Threads, each with its own connection."""
    from flask.testing import FlaskClient

    from models.base import db

    gathering = FlaskClient(app).post(url(owner), json={"name": "Rush", "type": "lobby", "maxMembers": 10},
                                      headers=owner.headers).get_json()
    people = [player(owner, f"rush-{n}").id for n in range(50)]
    statuses = []
    start = threading.Barrier(len(people))

    def one(participant_id):
        client = FlaskClient(app)
        start.wait()
        try:
            statuses.append(join(client, owner, gathering["joinCode"], participant_id).status_code)
        finally:
            db.close()

    threads = [threading.Thread(target=one, args=(p,)) for p in people]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(statuses).count(200) == 10 and sorted(statuses).count(409) == 40, statuses
    assert Gathering.get_by_id(gathering["id"]).member_count == 10
    assert GatheringMember.select().where(GatheringMember.gathering_id == gathering["id"]).count() == 10


def test_tenancy_and_scopes(client, owner, stranger, api_key_headers):
    theirs = create(client, stranger).get_json()
    assert client.get(url(owner, f"/{theirs['id']}"), headers=owner.headers).status_code == 404
    assert client.get(url(owner, f"/lookup/{theirs['joinCode']}"), headers=owner.headers).status_code == 404
    mine = player(owner, "mine")
    assert join(client, owner, theirs["joinCode"], mine.id).status_code == 404
    reader = api_key_headers(["gatherings:read"])
    assert client.get(url(owner), headers=reader).status_code == 200
    assert client.post(url(owner), json={"name": "x", "type": "lobby"}, headers=reader).status_code == 403


# ---------------------------------------------------------------- invitations


def invite(client, owner, gathering_id, **body):
    return client.post(url(owner, f"/{gathering_id}/invite"), json=body, headers=owner.headers)


def sent_mail(app, settings):
    from cortex.engines.mail import MailEngine
    from cortex.integrations.mail import read_outbox

    MailEngine(app.extensions["cortex"].mailer).drain()
    return read_outbox(settings.data_dir)


def test_invitations_by_participant_and_email_with_mail_and_calendar(client, owner, app, settings):
    from icalendar import Calendar

    host, friend = player(owner, "host"), player(owner, "friend")
    body = create(client, owner, type="appointment", startsAt="2030-01-20T15:00:00Z", endsAt="2030-01-20T17:00:00Z",
                  timezone="Europe/Berlin", inviterName="Ada", inviterEmail="ada@example.com",
                  invitationUrl="https://game.example.com/night", description="Bring snacks").get_json()
    response = invite(client, owner, body["id"], invitedById=host.id, participantIds=[friend.id],
                      emails=["Guest@Example.com"], baseUrl="https://game.example.com")
    assert response.status_code == 201
    by_friend, by_mail = response.get_json()
    assert by_friend["participantId"] == friend.id and by_friend["status"] == "pending"
    assert by_friend["joinUrl"] == f"https://game.example.com/join/{body['joinCode']}"
    assert by_friend["expiresAt"] == "2030-01-20T17:00:00.000Z" and by_friend["invitedById"] == host.id
    assert by_mail["email"] == "guest@example.com"
    again = invite(client, owner, body["id"], invitedById=host.id, participantIds=[friend.id]).get_json()
    assert again[0]["id"] == by_friend["id"]  # a pending invitee keeps the invitation it has
    [message] = sent_mail(app, settings)  # only the email invitee gets mail; each mail once
    assert message["To"].endswith("guest@example.com>") or message["To"] == "guest@example.com"
    assert message["Reply-To"] == "ada@example.com" and body["name"] in message["Subject"]
    text = message.get_body(("plain",)).get_content()
    assert "Invited by Ada" in text and body["joinCode"] in text and "Bring snacks" in text
    [calendar_part] = [part for part in message.walk() if part.get_content_type() == "text/calendar"]
    event = Calendar.from_ical(calendar_part.get_payload(decode=True)).walk("VEVENT")[0]
    assert str(event["DTSTART"].params["TZID"]) == "Europe/Berlin" and event["DTSTART"].dt.hour == 16
    assert str(event["ORGANIZER"]) == "mailto:ada@example.com"
    members = client.get(url(owner, f"/{body['id']}/members"), headers=owner.headers).get_json()
    assert [(m["participantId"], m["status"]) for m in members] == [(friend.id, "invited")]
    pending = client.get(url(owner, "/invitations/pending"), headers=owner.headers,
                         query_string={"participantId": friend.id}).get_json()
    assert [p["id"] for p in pending] == [by_friend["id"]]
    listed = client.get(url(owner, f"/{body['id']}/invitations"), headers=owner.headers).get_json()
    assert {i["id"] for i in listed} == {by_friend["id"], by_mail["id"]}
    assert types("gathering.invitation.") == ["gathering.invitation.sent", "gathering.invitation.sent"]


def test_moving_the_time_sends_an_updated_invitation_and_cancelling_a_cancellation(client, owner, app, settings):
    from icalendar import Calendar

    host = player(owner, "host")
    body = create(client, owner, type="appointment", startsAt="2030-01-20T15:00:00Z").get_json()
    invite(client, owner, body["id"], invitedById=host.id, emails=["guest@example.com"])
    client.patch(url(owner, f"/{body['id']}"), json={"startsAt": "2030-01-21T15:00:00Z"}, headers=owner.headers)
    client.delete(url(owner, f"/{body['id']}"), headers=owner.headers)
    first, moved, cancelled = sent_mail(app, settings)

    def event(message):
        [part] = [p for p in message.walk() if p.get_content_type() == "text/calendar"]
        calendar = Calendar.from_ical(part.get_payload(decode=True))
        return calendar, calendar.walk("VEVENT")[0]

    (c1, e1), (c2, e2), (c3, e3) = event(first), event(moved), event(cancelled)
    assert str(c1["METHOD"]) == "REQUEST" and str(c2["METHOD"]) == "REQUEST" and str(c3["METHOD"]) == "CANCEL"
    assert str(e1["UID"]) == str(e2["UID"]) == str(e3["UID"])
    assert int(e2["SEQUENCE"]) > int(e1["SEQUENCE"]) and e2["DTSTART"].dt.day == 21


def test_accept_and_decline(client, owner):
    host, friend, other = player(owner, "host"), player(owner, "friend"), player(owner, "other")
    body = create(client, owner, accessPolicy="invite-only", maxMembers=2).get_json()
    [invitation] = invite(client, owner, body["id"], invitedById=host.id, participantIds=[friend.id]).get_json()
    accept_url = url(owner, f"/invitations/{invitation['id']}/accept")
    wrong = client.post(accept_url, json={"participantId": other.id}, headers=owner.headers)
    assert wrong.status_code == 403
    accepted = client.post(accept_url, json={"participantId": friend.id}, headers=owner.headers)
    assert accepted.status_code == 200 and accepted.get_json()["member"]["status"] == "joined"
    assert accepted.get_json()["gathering"]["memberCount"] == 1
    assert client.post(accept_url, json={"participantId": friend.id}, headers=owner.headers).status_code == 409
    [mailed] = invite(client, owner, body["id"], invitedById=host.id, emails=["x@example.com"]).get_json()
    decline_url = url(owner, f"/invitations/{mailed['id']}/decline")
    assert client.post(decline_url, headers=owner.headers).status_code == 204
    assert client.post(decline_url, headers=owner.headers).status_code == 409
    statuses = {i["id"]: i["status"] for i in client.get(url(owner, f"/{body['id']}/invitations"),
                                                          headers=owner.headers).get_json()}
    assert statuses == {invitation["id"]: "accepted", mailed["id"]: "declined"}
    assert types("gathering.invitation.") == ["gathering.invitation.sent", "gathering.invitation.accepted",
                                              "gathering.invitation.sent", "gathering.invitation.declined"]


@pytest.mark.parametrize(("body", "status"), [
    ({}, 400),
    ({"emails": ["not-an-address"]}, 400),
    ({"emails": [f"p{n}@example.com" for n in range(101)]}, 400),
    ({"participantIds": ["nobody"]}, 404),
])
def test_invitation_errors(client, owner, body, status):
    host = player(owner, "host")
    gathering = create(client, owner).get_json()
    response = invite(client, owner, gathering["id"], invitedById=host.id, **body)
    assert response.status_code == status
    assert invite(client, owner, gathering["id"], invitedById="nobody", emails=["a@example.com"]).status_code == 404


def test_create_with_participants_invites_them_at_once(client, owner, app, settings):
    from models.participants import Participant

    body = create(client, owner, participants=[{"name": "Jane", "email": "jane@example.com", "userId": "usr_jane"},
                                               {"name": "Joe", "email": "joe@example.com"}]).get_json()
    invitations = client.get(url(owner, f"/{body['id']}/invitations"), headers=owner.headers).get_json()
    jane = Participant.get(Participant.external_user_id == "usr_jane")
    assert {(i.get("participantId"), i["email"]) for i in invitations} == {(jane.id, "jane@example.com"),
                                                                         (None, "joe@example.com")}
    members = client.get(url(owner, f"/{body['id']}/members"), headers=owner.headers).get_json()
    assert [(m["participantId"], m["status"]) for m in members] == [(jane.id, "invited")]
    assert sorted(m["To"] for m in sent_mail(app, settings)) == ["Jane <jane@example.com>", "Joe <joe@example.com>"]


def test_the_expiry_job(client, owner):
    from datetime import timedelta

    from cortex.engines.gatherings import GatheringExpiryJob
    from models.base import utcnow

    lobby = create(client, owner).get_json()
    appointment = create(client, owner, type="appointment", startsAt="2030-01-20T15:00:00Z",
                         endsAt="2030-01-20T16:00:00Z").get_json()
    host = player(owner, "host")
    [invitation] = invite(client, owner, lobby["id"], invitedById=host.id, emails=["a@example.com"]).get_json()
    job = GatheringExpiryJob()
    assert job.run_once() == 0
    assert job.run_once(utcnow() + timedelta(hours=25)) == 2  # the idle lobby and its pending invitation
    assert Gathering.get_by_id(lobby["id"]).status == "expired"
    assert Gathering.get_by_id(appointment["id"]).status == "pending"
    from models.base import parse_timestamp

    late = parse_timestamp("2030-01-20T17:00:01Z")
    assert job.run_once(late) == 1 and Gathering.get_by_id(appointment["id"]).status == "expired"
    assert job.run_once(late) == 0
    invitations = client.get(url(owner, f"/{lobby['id']}/invitations"), headers=owner.headers).get_json()
    assert invitations[0]["id"] == invitation["id"] and invitations[0]["status"] == "expired"
    update = DomainEvent.select().where(DomainEvent.type == "gathering.updated").order_by(DomainEvent.seq.desc()).first()
    assert update.payload["changes"] == {"status": "pending"} and update.payload["data"]["status"] == "expired"


def test_an_smtp_server_receives_the_invitation_with_its_calendar_entry_once(client, owner):
    """Through a real (aiosmtpd) mail server: the invitation, its .ics parsed back with icalendar; sent once."""
    from icalendar import Calendar

    from cortex.engines.mail import MailEngine
    from cortex.integrations.mail import Mailer
    from tests.test_mail import received_message, smtp_server

    host = player(owner, "host")
    body = create(client, owner, type="appointment", name="Raid", startsAt="2030-07-01T18:00:00Z",
                  timezone="America/New_York", inviterName="Ada", inviterEmail="ada@example.com").get_json()
    invite(client, owner, body["id"], invitedById=host.id, emails=["guest@example.com"])
    with smtp_server() as (port, collector):
        data_dir = client.application.extensions["cortex"].settings.data_dir
        engine = MailEngine(Mailer.from_settings(f"smtp://127.0.0.1:{port}?timeout=3", "cortex@example.org", data_dir))
        assert engine.drain() == 1
        assert engine.drain() == 0  # each mail once
    [entry] = collector.received
    assert entry["rcpt_tos"] == ["guest@example.com"]
    message = received_message(entry)
    assert message["Subject"] == "Invitation: Raid" and message["Reply-To"] == "ada@example.com"
    [part] = [p for p in message.walk() if p.get_content_type() == "text/calendar"]
    calendar = Calendar.from_ical(part.get_payload(decode=True))
    event = calendar.walk("VEVENT")[0]
    assert str(calendar["METHOD"]) == "REQUEST" and str(event["SUMMARY"]) == "Raid"
    assert str(event["DTSTART"].params["TZID"]) == "America/New_York" and event["DTSTART"].dt.hour == 14  # EDT
    assert event["ORGANIZER"].params["CN"] == "Ada"


def test_joining_with_an_unknown_participant_or_code_is_404_and_takes_no_seat(client, owner):
    body = create(client, owner).get_json()
    assert join(client, owner, body["joinCode"], "nobody").status_code == 404
    assert join(client, owner, "ZZZZ2222", player(owner, "someone").id).status_code == 404
    assert Gathering.get_by_id(body["id"]).member_count == 0


def test_a_gathering_holds_a_bounded_number_of_invitations(client, owner, monkeypatch):
    from models import gatherings as model

    monkeypatch.setattr(model, "MAX_INVITATIONS_PER_GATHERING", 3)
    host = player(owner, "host")
    body = create(client, owner).get_json()
    assert invite(client, owner, body["id"], invitedById=host.id,
                  emails=["a@example.com", "b@example.com", "c@example.com"]).status_code == 201
    refused = invite(client, owner, body["id"], invitedById=host.id, emails=["d@example.com"])
    assert refused.status_code == 409 and "at most 3 invitations" in refused.get_json()["detail"]
    assert invite(client, owner, body["id"], invitedById=host.id, emails=["a@example.com"]).status_code == 201
    assert len(client.get(url(owner, f"/{body['id']}/invitations"), headers=owner.headers).get_json()) == 3
