"""Gathering invitation mail (cortex.lib.invitations): subject, body, Reply-To, join links, and the calendar entry
parsed back with icalendar — alone and after the whole mail path (queue → engine → outbox .eml)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from icalendar import Calendar

from cortex.engines.mail import MailEngine
from cortex.integrations.mail import read_outbox
from cortex.lib.invitations import (
    DEFAULT_DURATION,
    GatheringInfo,
    Invitee,
    ics,
    invitation_mail,
    invitee_address,
    join_url,
)
from models.base import transaction
from models.mail import queue_mail

START = datetime(2026, 1, 15, 15, 0, tzinfo=UTC)  # 16:00 in Berlin (CET, UTC+1)
NOW = datetime(2026, 1, 2, 9, 30, tzinfo=UTC)
LINK = "https://play.example/join/K7MX3QPA"

APPOINTMENT = GatheringInfo(
    id="gath-1", name="Raid night", type="appointment", join_code="K7MX3QPA",
    description="Bring snacks; voice chat on.", inviter_name="Ann Organiser", inviter_email="ann@example.com",
    invitation_url="https://play.example/gatherings/gath-1", starts_at=START, ends_at=START + timedelta(hours=2),
    timezone="Europe/Berlin", sequence=0,
)
BOB = Invitee(invitation_id="inv-7", email="bob@example.com", name="Bob Player")


def event_of(data: bytes):
    """The calendar and its only VEVENT."""
    calendar = Calendar.from_ical(data)
    [event] = calendar.walk("VEVENT")
    return calendar, event


def calendar_of(mail: dict) -> bytes:
    [attachment] = mail["attachments"]
    assert attachment["filename"] == "invite.ics"
    return attachment["content"]


# ------------------------------------------------------------------------------------------ the calendar entry


def test_request_carries_method_uid_sequence_times_people_and_location():
    mail = invitation_mail(APPOINTMENT, BOB, LINK, now=NOW)
    [attachment] = mail["attachments"]
    assert attachment["content_type"].startswith("text/calendar; method=REQUEST")
    calendar, event = event_of(attachment["content"])
    assert str(calendar["METHOD"]) == "REQUEST" and str(calendar["VERSION"]) == "2.0"
    assert str(event["UID"]) == "gath-1.inv-7@cortex"
    assert int(event["SEQUENCE"]) == 0
    assert event.decoded("DTSTAMP") == NOW
    assert str(event["SUMMARY"]) == "Raid night"
    assert "Bring snacks; voice chat on." in str(event["DESCRIPTION"])
    assert LINK in str(event["DESCRIPTION"]) and "K7MX3QPA" in str(event["DESCRIPTION"])
    assert str(event["STATUS"]) == "CONFIRMED"

    start, end = event.decoded("DTSTART"), event.decoded("DTEND")
    assert event["DTSTART"].params["TZID"] == event["DTEND"].params["TZID"] == "Europe/Berlin"
    assert (start.hour, start.minute, end.hour) == (16, 0, 18)  # wall-clock time in Berlin
    assert start == START and end == START + timedelta(hours=2)
    assert b"DTSTART;TZID=Europe/Berlin:20260115T160000" in attachment["content"]
    assert [tz["TZID"] for tz in calendar.walk("VTIMEZONE")] == ["Europe/Berlin"]

    organizer = event["ORGANIZER"]
    assert str(organizer) == "mailto:ann@example.com" and organizer.params["CN"] == "Ann Organiser"
    attendee = event["ATTENDEE"]
    assert str(attendee) == "mailto:bob@example.com"
    assert attendee.params["CN"] == "Bob Player" and attendee.params["RSVP"] == "TRUE"
    assert str(event["LOCATION"]) == str(event["URL"]) == "https://play.example/gatherings/gath-1"


def test_the_uid_is_stable_across_updates_and_the_cancellation():
    moved = dataclasses.replace(APPOINTMENT, starts_at=START + timedelta(days=1), ends_at=None, sequence=1)
    _, first = event_of(ics(APPOINTMENT, BOB))
    _, update = event_of(ics(moved, BOB))
    cancel_calendar, cancel = event_of(ics(moved, BOB, "CANCEL"))
    assert str(first["UID"]) == str(update["UID"]) == str(cancel["UID"]) == "gath-1.inv-7@cortex"
    assert int(update["SEQUENCE"]) == 1
    # Without ends_at the entry lasts DEFAULT_DURATION (1 h).
    assert update.decoded("DTEND") - update.decoded("DTSTART") == DEFAULT_DURATION == timedelta(hours=1)
    assert update.decoded("DTSTART").hour == 16 and update.decoded("DTSTART").day == 16
    # Another invitee of the same gathering has an entry of their own.
    other = Invitee(invitation_id="inv-8", email="cy@example.com")
    assert str(event_of(ics(APPOINTMENT, other))[1]["UID"]) == "gath-1.inv-8@cortex"
    # The cancellation: METHOD:CANCEL, STATUS:CANCELLED and a sequence above the last request's (RFC 5546).
    assert str(cancel_calendar["METHOD"]) == "CANCEL" and str(cancel["STATUS"]) == "CANCELLED"
    assert int(cancel["SEQUENCE"]) == 2


def test_cancel_mail_says_so_and_carries_method_cancel():
    mail = invitation_mail(APPOINTMENT, BOB, LINK, "CANCEL")
    assert mail["subject"] == "Cancelled: Raid night"
    assert "has been cancelled" in mail["text"] and "has been cancelled" in mail["html"]
    assert LINK not in mail["text"]
    [attachment] = mail["attachments"]
    assert attachment["content_type"].startswith("text/calendar; method=CANCEL")
    calendar, event = event_of(attachment["content"])
    assert str(calendar["METHOD"]) == "CANCEL" and str(event["STATUS"]) == "CANCELLED"
    assert mail["headers"] == {"Reply-To": "ann@example.com"}


def test_utc_and_default_time_zone_use_utc_times_without_vtimezone():
    utc = dataclasses.replace(APPOINTMENT, timezone=None)
    data = ics(utc, BOB)
    calendar, event = event_of(data)
    assert b"DTSTART:20260115T150000Z" in data and "TZID" not in event["DTSTART"].params
    assert event.decoded("DTSTART") == START and not calendar.walk("VTIMEZONE")


def test_the_summer_offset_is_used_in_summer():
    summer = dataclasses.replace(APPOINTMENT, starts_at=datetime(2026, 7, 1, 15, tzinfo=UTC), ends_at=None)
    _, event = event_of(ics(summer, BOB))
    assert event.decoded("DTSTART").hour == 17  # CEST, UTC+2


def test_no_organizer_without_an_inviter_email_and_no_location_without_an_invitation_url():
    bare = dataclasses.replace(APPOINTMENT, inviter_email=None, invitation_url=None, description=None)
    mail = invitation_mail(bare, Invitee("inv-9", "dee@example.com"), "K7MX3QPA")
    _, event = event_of(calendar_of(mail))
    assert "ORGANIZER" not in event and "LOCATION" not in event and "URL" not in event
    assert "CN" not in event["ATTENDEE"].params
    assert mail["headers"] == {}


def test_names_with_line_breaks_are_folded_and_special_characters_survive():
    odd = dataclasses.replace(APPOINTMENT, name="Raid\r\nnight, part 2; “final”", inviter_name='Ann "the"\nhost')
    mail = invitation_mail(odd, BOB, LINK)
    assert mail["subject"] == "Invitation: Raid night, part 2; “final”"
    _, event = event_of(calendar_of(mail))
    assert str(event["SUMMARY"]) == "Raid night, part 2; “final”"
    assert event["ORGANIZER"].params["CN"] == 'Ann "the" host'


# ------------------------------------------------------------------------------------------ subject, body, headers


def test_request_subject_body_and_reply_to():
    mail = invitation_mail(APPOINTMENT, BOB, LINK)
    assert mail["subject"] == "Invitation: Raid night"
    assert mail["kind"] == "gathering-invitation"
    for body in (mail["text"], mail["html"]):
        assert "Raid night" in body
        assert "Invited by Ann Organiser" in body
        assert LINK in body and "K7MX3QPA" in body
        assert "https://play.example/gatherings/gath-1" in body
        assert "2026-01-15 16:00–18:00 (Europe/Berlin)" in body
    assert "Bring snacks; voice chat on." in mail["text"]
    assert f'<a href="{LINK}">' in mail["html"]
    assert mail["headers"] == {"Reply-To": "ann@example.com"}


def test_a_lobby_gets_no_calendar_entry():
    lobby = dataclasses.replace(APPOINTMENT, type="lobby")
    mail = invitation_mail(lobby, BOB, "K7MX3QPA")
    assert mail["attachments"] == []
    assert "Join code: K7MX3QPA" in mail["text"] and "Join: " not in mail["text"]  # the code alone: no link line
    undated = dataclasses.replace(APPOINTMENT, starts_at=None, ends_at=None)
    assert invitation_mail(undated, BOB, LINK)["attachments"] == []
    with pytest.raises(ValueError):
        ics(lobby, BOB)


def test_html_is_escaped():
    evil = dataclasses.replace(APPOINTMENT, name="<script>x</script>", description="a < b & c")
    mail = invitation_mail(evil, BOB, 'https://x.example/"onmouseover="y')
    assert "<script>" not in mail["html"] and "&lt;script&gt;" in mail["html"]
    assert "a &lt; b &amp; c" in mail["html"] and '"onmouseover="' not in mail["html"]


@pytest.mark.parametrize("address", ["ann@example.com\r\nBcc: all@example.com", "ann@example.com\n",
                                     "not-an-address", "Ann <ann@example.com>"])
def test_an_inviter_email_with_line_breaks_or_no_address_is_rejected(address):
    bad = dataclasses.replace(APPOINTMENT, inviter_email=address)
    with pytest.raises(ValueError):
        invitation_mail(bad, BOB, LINK)
    with pytest.raises(ValueError):
        invitation_mail(dataclasses.replace(bad, type="lobby"), BOB, LINK)  # no calendar: still checked


def test_invalid_input_is_rejected():
    with pytest.raises(ValueError):
        invitation_mail(APPOINTMENT, Invitee("i", "bob@example.com\r\nX: y"), LINK)
    with pytest.raises(ValueError):
        invitation_mail(APPOINTMENT, BOB, LINK, "PUBLISH")
    with pytest.raises(ValueError):
        ics(dataclasses.replace(APPOINTMENT, timezone="Mars/Olympus"), BOB)
    with pytest.raises(ValueError):
        ics(dataclasses.replace(APPOINTMENT, ends_at=START), BOB)
    with pytest.raises(ValueError):
        ics(dataclasses.replace(APPOINTMENT, starts_at=datetime(2026, 1, 15, 15)), BOB)  # naive


def test_invitee_address():
    assert invitee_address(BOB) == "Bob Player <bob@example.com>"
    assert invitee_address(Invitee("i", "cy@example.com")) == "cy@example.com"


# ------------------------------------------------------------------------------------------ join links


@pytest.mark.parametrize(("args", "expected"), [
    (("K7MX3QPA",), "K7MX3QPA"),
    (("K7MX3QPA", "https://play.example"), "https://play.example/join/K7MX3QPA"),
    (("K7MX3QPA", "https://play.example/"), "https://play.example/join/K7MX3QPA"),
    (("K7MX3QPA", "https://play.example/app/"), "https://play.example/app/join/K7MX3QPA"),
    (("K7MX3QPA", "https://play.example/app?src=mail"), "https://play.example/app/join/K7MX3QPA?src=mail"),
    (("K7MX3QPA", None, "mygame://"), "mygame://join/K7MX3QPA"),
    (("K7MX3QPA", None, "mygame:"), "mygame://join/K7MX3QPA"),
    (("K7MX3QPA", None, "mygame"), "mygame://join/K7MX3QPA"),
    (("K7MX3QPA", None, "mygame://lobby/"), "mygame://lobby/join/K7MX3QPA"),
    (("K7MX3QPA", "https://play.example", "mygame://"), "https://play.example/join/K7MX3QPA"),  # base wins
    (("K7MX3QPA", "", ""), "K7MX3QPA"),
    (("A/B?C#D", "https://play.example"), "https://play.example/join/A%2FB%3FC%23D"),  # quoted
])
def test_join_url_forms(args, expected):
    assert join_url(*args) == expected


@pytest.mark.parametrize(("args"), [("",), ("  ",), ("K7MX3QPA", None, "my game://"), ("K7MX3QPA", None, "9game://"),
                                    ("K7MX3QPA", "https://x.example/\r\n"), ("K7MX3QPA", None, "mygame:join")])
def test_join_url_rejects_bad_input(args):
    with pytest.raises(ValueError):
        join_url(*args)


# ------------------------------------------------------------------------------------------ end to end


def test_the_calendar_entry_survives_the_mail_path(app, settings):
    mail = invitation_mail(APPOINTMENT, BOB, LINK, now=NOW)
    with transaction():
        queue_mail(invitee_address(BOB), **mail, project_id=None)
    assert MailEngine(app.extensions["cortex"].mailer).drain() == 1
    [message] = read_outbox(settings.data_dir)
    assert message["Subject"] == "Invitation: Raid night"
    assert message["To"] == "Bob Player <bob@example.com>" and message["Reply-To"] == "ann@example.com"
    assert "Invited by Ann Organiser" in message.get_body(("plain",)).get_content()
    assert LINK in message.get_body(("html",)).get_content()
    [part] = [p for p in message.walk() if p.get_content_type() == "text/calendar"]
    assert part.get_param("method") == "REQUEST" and part.get_filename() == "invite.ics"
    data = part.get_payload(decode=True)
    assert data == calendar_of(mail)
    calendar, event = event_of(data)
    assert str(calendar["METHOD"]) == "REQUEST" and str(event["UID"]) == "gath-1.inv-7@cortex"
    assert event["DTSTART"].params["TZID"] == "Europe/Berlin" and event.decoded("DTSTART").hour == 16
    assert event["ORGANIZER"].params["CN"] == "Ann Organiser"
