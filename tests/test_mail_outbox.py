"""The durable mail outbox (models.mail) and the mail engine (cortex.engines.mail): a request never fails because
mail cannot be sent; the message waits and is retried (15 s, doubling, hourly) for at least a day until the mail
server takes it, exactly one engine sending it."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from datetime import timedelta

import pytest
from aiosmtpd.controller import Controller

from cortex.engines.mail import MailEngine
from cortex.integrations.mail import Mailer, MailError, read_outbox
from models.base import DomainError, utcnow
from models.mail import MailMessage, MailRetryPolicy, claim, mark_sent, prune, queue_mail
from tests.test_mail import Collector, free_port, received_message

FROM = "Cortex <cortex@example.org>"
STEADY = MailRetryPolicy(jitter=0.0)  # the documented schedule without its ±10 % spread


def row(message_id: str) -> MailMessage:
    return MailMessage.get_by_id(message_id)


@contextmanager
def smtp_server_on(port: int):
    """A local aiosmtpd server on ``port``; yields its collector."""
    collector = Collector()
    controller = Controller(collector, hostname="127.0.0.1", port=port, server_hostname="localhost", ready_timeout=5)
    controller.start()
    try:
        yield collector
    finally:
        controller.stop()


class FakeMailer:
    """A Mailer stand-in: records what it sends, refuses recipients in ``down`` (or everything when down is True),
    and can take ``delay`` seconds per message."""

    timeout = 1.0

    def __init__(self, down=(), delay: float = 0.0):
        self.down = down
        self.delay = delay
        self.sent: list[tuple[str, list[str]]] = []
        self._lock = threading.Lock()

    def message_id_for(self, key: str) -> str:
        return f"<{key}@test>"

    def send(self, to, subject, text, html=None, headers=None, attachments=(), message_id=None):
        time.sleep(self.delay)
        if self.down is True or any(r in self.down for r in to):
            raise MailError("sending mail via smtp://127.0.0.1:1 failed: ConnectionRefusedError: refused")
        with self._lock:
            self.sent.append((message_id, list(to)))
        return message_id


# ------------------------------------------------------------------------------------------ the request


def test_invite_answers_201_while_the_mail_server_is_down_and_the_mail_goes_out_once_it_is_up(
        client, owner, app, settings):
    port = free_port()  # nobody listens: connection refused
    down = Mailer.from_settings(f"smtp://127.0.0.1:{port}?timeout=2", FROM, settings.data_dir)
    runtime = app.extensions["cortex"]
    original, runtime.mailer = runtime.mailer, down  # even the app's own mailer is unreachable
    try:
        response = client.post(f"/api/projects/{owner.project.id}/users/invite",
                               json={"email": "late@example.com", "role": "developer"}, headers=owner.headers)
    finally:
        runtime.mailer = original
    assert response.status_code == 201 and response.get_json()["status"] == "pending"
    [queued] = MailMessage.select()
    assert (queued.status, queued.attempts, queued.kind, queued.project_id) == ("queued", 0, "invitation",
                                                                              owner.project.id)
    assert queued.recipients == ["late@example.com"] and "Game One" in queued.subject

    engine = MailEngine(down)
    before = utcnow()
    assert engine.drain() == 1  # one attempt: refused, due again in about 15 s (not now: drain ends)
    queued = row(queued.id)
    assert queued.status == "queued" and queued.attempts == 1
    assert "ConnectionRefusedError" in queued.last_error and len(queued.last_error) <= 500
    assert timedelta(seconds=13) <= queued.next_attempt_at - before <= timedelta(seconds=30)

    with smtp_server_on(port) as collector:
        assert engine.drain(now=queued.next_attempt_at) == 1
    [entry] = collector.received
    assert entry["rcpt_tos"] == ["late@example.com"]
    message = received_message(entry)
    assert "Game One" in message["Subject"] and message["Message-ID"] == down.message_id_for(queued.id)
    sent = row(queued.id)
    assert (sent.status, sent.attempts, sent.message_id, sent.text) == ("sent", 2, message["Message-ID"], "")
    assert sent.sent_at is not None and engine.drain(now=utcnow() + timedelta(days=2)) == 0  # never again


def test_a_failed_invitation_rolls_back_its_mail(client, owner):
    url = f"/api/projects/{owner.project.id}/users/invite"
    assert client.post(url, json={"email": owner.user.email, "role": "developer"},
                       headers=owner.headers).status_code == 409  # already an active member
    assert MailMessage.select().count() == 0


# ------------------------------------------------------------------------------------------ retries


def test_retries_back_off_from_15_s_to_hourly_and_give_up_only_after_26_hours(app):
    start = utcnow()
    message = queue_mail("ada@example.com", "Hello", "body", now=start)
    engine = MailEngine(FakeMailer(down=True), policy=STEADY)
    now, delays = start, []
    while row(message.id).status == "queued":
        assert engine.drain(now=now) == 1
        current = row(message.id)
        if current.status == "queued":
            delays.append((current.next_attempt_at - now).total_seconds())
            assert engine.drain(now=current.next_attempt_at - timedelta(milliseconds=1)) == 0  # not before it
            now = current.next_attempt_at
    assert delays[:10] == [15, 30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert set(delays[8:]) == {3600}
    failed = row(message.id)
    assert failed.status == "failed" and failed.attempts == len(delays) + 1
    assert now - start >= timedelta(hours=26) > now - start - timedelta(hours=1)  # the first attempt past 26 h
    assert "ConnectionRefusedError" in failed.last_error
    assert engine.drain(now=now + timedelta(days=3)) == 0  # failed stays failed


def test_the_default_schedule_retries_within_30_s_and_spreads_retries():
    policy = MailRetryPolicy()
    firsts = {policy.delay(1) for _ in range(50)}
    assert all(13.5 <= d <= 16.5 for d in firsts) and len(firsts) > 1
    assert all(3240 <= policy.delay(n) <= 3960 for n in (9, 20, 500))
    assert policy.give_up_after >= 24 * 3600


def test_one_failing_message_does_not_hold_up_the_others(app):
    for address in ("a@example.com", "down@example.com", "b@example.com"):
        queue_mail(address, "Hi", "body")
    mailer = FakeMailer(down={"down@example.com"})
    assert MailEngine(mailer).drain() == 3
    assert sorted(to for _id, [to] in mailer.sent) == ["a@example.com", "b@example.com"]
    statuses = {m.recipients[0]: m.status for m in MailMessage.select()}
    assert statuses == {"a@example.com": "sent", "down@example.com": "queued", "b@example.com": "sent"}


def test_a_message_that_cannot_be_composed_fails_at_once(app, tmp_path):
    message = queue_mail("ada@example.com", "Hi", "body")
    MailMessage.update(recipients=["not an address"]).where(MailMessage.id == message.id).execute()
    assert MailEngine(Mailer.from_settings(None, FROM, tmp_path)).drain() == 1
    failed = row(message.id)
    assert failed.status == "failed" and failed.attempts == 1 and failed.last_error.startswith("invalid message")


@pytest.mark.parametrize("kwargs", [
    dict(to=[]), dict(to="nobody"), dict(subject="Hi\r\nBcc: everyone@example.com"),
    dict(headers={"X-Evil": "a\nb"}), dict(attachments=[{"filename": "a", "content_type": "nonsense", "content": b""}]),
])
def test_invalid_mail_is_refused_when_queued(app, kwargs):
    args = {"to": "ada@example.com", "subject": "Hi", **kwargs}
    with pytest.raises(DomainError) as raised:
        queue_mail(args.pop("to"), args.pop("subject"), "body", **args)
    assert raised.value.kind == "invalid"
    assert MailMessage.select().count() == 0


# ------------------------------------------------------------------------------------------ several engines


def test_a_claimed_message_is_nobody_elses_until_its_lease_ends(app):
    message = queue_mail("ada@example.com", "Hi", "body")
    now = utcnow()
    [first] = claim(10, lease=60, now=now)
    assert claim(10, lease=60, now=now + timedelta(seconds=59)) == []  # another engine finds nothing
    [second] = claim(10, lease=60, now=now + timedelta(seconds=61))  # the first engine died: the lease ran out
    assert not mark_sent(first, "<late@test>")  # the first engine's late record changes nothing
    assert mark_sent(second, "<x@test>") and row(message.id).status == "sent"
    assert claim(10, lease=60, now=now + timedelta(days=1)) == []


def test_two_engines_running_together_send_each_message_exactly_once(app):
    ids = [queue_mail(f"user{n}@example.com", f"Message {n}", "body").id for n in range(40)]
    mailer = FakeMailer(delay=0.005)
    engines = [MailEngine(mailer, batch=3) for _ in range(2)]
    threads = [threading.Thread(target=engine.drain) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    sent_ids = [message_id for message_id, _to in mailer.sent]
    assert sorted(sent_ids) == sorted(f"<{i}@test>" for i in ids)  # every one, none twice
    assert all(engine.sent > 0 for engine in engines)  # both took part
    assert {m.status for m in MailMessage.select()} == {"sent"}


def test_the_background_engine_sends_at_once_when_woken(app, settings):
    engine = MailEngine(Mailer.from_settings(None, FROM, settings.data_dir), poll_interval=60)
    engine.start()
    try:
        time.sleep(0.1)  # its first look found nothing; now it waits up to a minute
        queue_mail("ada@example.com", "Woken", "body")
        engine.events_committed()  # what a write request of this process does (LiveFanout.nudge)
        deadline = time.monotonic() + 5
        while not read_outbox(settings.data_dir) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        engine.stop()
    [message] = read_outbox(settings.data_dir)
    assert message["Subject"] == "Woken" and not engine.alive


# ------------------------------------------------------------------------------------------ content, retention


def test_html_headers_and_an_icalendar_attachment_are_sent_as_queued(app, settings):
    ics = b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n"
    message = queue_mail(["Ada <ada@example.com>", "bob@example.com"], "Gathering", "plain", html="<p>html</p>",
                         headers={"Reply-To": "host@example.com"},
                         attachments=[{"filename": "invite.ics", "content_type": "text/calendar; method=REQUEST",
                                       "content": ics}])
    mailer = Mailer.from_settings(None, FROM, settings.data_dir)
    assert MailEngine(mailer).drain() == 1
    [sent] = read_outbox(settings.data_dir)
    assert sent["To"] == "Ada <ada@example.com>, bob@example.com" and sent["Reply-To"] == "host@example.com"
    assert sent["Message-ID"] == mailer.message_id_for(message.id) == row(message.id).message_id
    assert sent.get_body(("plain",)).get_content() == "plain\n"
    assert sent.get_body(("html",)).get_content() == "<p>html</p>\n"
    [attachment] = sent.iter_attachments()
    assert attachment.get_filename() == "invite.ics" and attachment.get_content_type() == "text/calendar"
    assert attachment.get_param("method") == "REQUEST" and attachment.get_payload(decode=True) == ics
    stored = row(message.id)
    assert (stored.text, stored.html, stored.attachments) == ("", None, None)  # the body is not kept once sent


def test_settled_messages_are_pruned_queued_ones_never(app):
    now = utcnow()
    old = now - timedelta(days=40)
    sent = queue_mail("a@example.com", "sent long ago", "x", now=old)
    failed = queue_mail("b@example.com", "failed long ago", "x", now=old)
    waiting = queue_mail("c@example.com", "still waiting", "x", now=old)
    recent = queue_mail("d@example.com", "sent yesterday", "x", now=now - timedelta(days=1))
    MailMessage.update(status="sent").where(MailMessage.id.in_([sent.id, recent.id])).execute()
    MailMessage.update(status="failed").where(MailMessage.id == failed.id).execute()
    assert prune(now=now) == 2
    assert {m.id for m in MailMessage.select()} == {waiting.id, recent.id}
    assert prune(now=now + timedelta(days=7)) == 1  # the one sent a day earlier, a week later


def test_a_project_name_spanning_lines_still_gets_its_invitation_queued(client, owner):
    owner.project.name = "Game\r\nBcc: everyone@example.com"
    owner.project.save()
    response = client.post(f"/api/projects/{owner.project.id}/users/invite",
                           json={"email": "new@example.com", "role": "developer"}, headers=owner.headers)
    assert response.status_code == 201
    [queued] = MailMessage.select()
    assert queued.subject == "You are invited to Game Bcc: everyone@example.com on Cortex"
