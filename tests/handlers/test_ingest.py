"""Signed ingest (POST /api/events/ingest): signature, clock skew, rate limit, validation, materialisation."""

from __future__ import annotations

import base64
import json
import os
import threading
from datetime import timedelta

import pytest

from cortex.events import ingest
from cortex.integrations.debug_audio import DebugAudioStore
from models.base import db, rfc3339, transaction, utcnow
from models.events import DomainEvent, event_body
from models.messages import Message
from models.participants import Participant
from models.sessions import PresenceSpan, Session, _change_status
from models.settings import AppSettings, cached_project_secret, revoke_project_secret, sync_project_secret

URL = "/api/events/ingest"
AUTH_FAILED = {"type": "about:blank", "title": "Unauthorized", "status": 401, "detail": "Authentication failed"}


def without_instance(problem: dict) -> dict:
    """A problem body without its ``instance`` (``urn:request:<X-Request-Id>``, different for every request)."""
    return {name: value for name, value in problem.items() if name != "instance"}


def wav(frames: bytes = b"\x00\x01" * 8) -> bytes:
    """A minimal PCM WAV file."""
    fmt = b"fmt " + (16).to_bytes(4, "little") + bytes.fromhex("0100 0100 401f0000 803e0000 0200 1000")
    chunk = b"data" + len(frames).to_bytes(4, "little") + frames
    return b"RIFF" + (4 + len(fmt) + len(chunk)).to_bytes(4, "little") + b"WAVE" + fmt + chunk


def make_session(member, status: str = "active") -> Session:
    project = member.project
    return Session.create(project=project.id, tenant_id=project.tenant_id, external_room_id="room-1",
                          title="Squad", created_by_user_id=member.user.id, status=status)


def secret_of(member) -> str:
    """Cache the project secret (POST …/settings/sync-secret) and return it."""
    sync_project_secret(member.project)
    return cached_project_secret(member.project)


def post(client, project_ref, secret, body=None, *, raw=None, timestamp=None, signature=None, headers=None):
    """A signed ingest request (override any part to break it)."""
    raw = json.dumps(body).encode() if raw is None else raw
    timestamp = rfc3339(utcnow()) if timestamp is None else timestamp
    sent = {
        "X-Project-Id": project_ref,
        "X-Timestamp": timestamp,
        "X-Signature": sign_or(signature, secret, timestamp, raw),
        **(headers or {}),
    }
    sent = {name: value for name, value in sent.items() if value is not None}
    return client.post(URL, data=raw, content_type="application/json", headers=sent)


def sign_or(signature, secret, timestamp, raw):
    return signature if signature is not None else ingest.sign(secret, timestamp, raw)


def event(event_type: str, data: dict, *, resource_id: str = "session:x", action: str = "occurred", **extra) -> dict:
    return {"type": event_type, "source": "voice:server", "resourceId": resource_id,
            "payload": {"action": action, "data": data}, **extra}


def events(event_type: str | None = None) -> list[DomainEvent]:
    query = DomainEvent.select().order_by(DomainEvent.seq)
    if event_type is not None:
        query = query.where(DomainEvent.type == event_type)
    return list(query)


@pytest.fixture
def signer(owner):
    """The owner's project with its secret cached; ``signer.secret`` signs."""
    owner.cached = secret_of(owner)
    return owner


@pytest.fixture
def frozen_clock(app, monkeypatch):
    """Freeze the ingest rate limiter's clock at a whole second; returns a setter."""
    limiter = ingest.rate_limiter(app.extensions["cortex"].settings.redis_url)
    now = {"t": 1_900_000_000.25}
    monkeypatch.setattr(limiter, "clock", lambda: now["t"])

    def set_time(value: float) -> None:
        now["t"] = value

    return set_time


# ---------------------------------------------------------------- signature and authentication


def test_a_signed_event_is_logged_as_sent(client, signer):
    body = event("server.started", {"serverId": "srv-1", "region": "eu"}, resource_id="server:srv-1",
                 timestamp="2026-03-20T12:00:00.123Z")
    body["source"] = "fleet:server"
    response = post(client, signer.project.id, signer.cached, body)
    assert response.status_code == 201, response.get_data(as_text=True)
    [logged] = events()
    assert response.get_json() == {"id": logged.id}
    assert (logged.type, logged.source, logged.resource_id) == ("server.started", "fleet:server", "server:srv-1")
    assert (logged.project_id, logged.tenant_id) == (signer.project.id, signer.project.tenant_id)
    assert logged.payload == {"action": "occurred", "data": {"serverId": "srv-1", "region": "eu"}}
    # the sender's time is kept as the time the event reports (the envelope's timestamp), not as the log's clock
    assert rfc3339(logged.occurred_at) == "2026-03-20T12:00:00.123Z"
    assert event_body(logged)["timestamp"] == "2026-03-20T12:00:00.123Z"


def test_changes_are_kept_and_the_time_defaults_to_now(client, signer):
    before = utcnow()
    body = event("deployment.updated", {"id": "d1", "state": "ready"}, resource_id="deployment:d1",
                 action="updated")
    body["payload"]["changes"] = {"state": "pending"}
    assert post(client, signer.project.id, signer.cached, body).status_code == 201
    [logged] = events()
    assert logged.payload["changes"] == {"state": "pending"}
    assert before <= logged.timestamp <= utcnow()


def test_the_project_may_be_named_by_app_id(client, signer):
    response = post(client, signer.project.app_id, signer.cached, event("image.ready", {"id": "i1"}))
    assert response.status_code == 201
    assert events()[0].project_id == signer.project.id


def test_uppercase_hex_signatures_are_accepted(client, signer):
    raw = json.dumps(event("image.ready", {"id": "i1"})).encode()
    timestamp = rfc3339(utcnow())
    signature = ingest.sign(signer.cached, timestamp, raw).upper()
    assert post(client, signer.project.id, None, raw=raw, timestamp=timestamp, signature=signature).status_code == 201


def test_the_signature_covers_the_exact_bytes_and_timestamp_string(client, signer):
    body = event("image.ready", {"id": "i1"})
    raw = json.dumps(body, indent=2).encode()  # whitespace is part of what was signed
    assert post(client, signer.project.id, signer.cached, raw=raw).status_code == 201
    timestamp = utcnow().isoformat()  # "+00:00" instead of "Z": any ISO 8601 form, signed as sent
    assert post(client, signer.project.id, signer.cached, raw=raw, timestamp=timestamp).status_code == 201


@pytest.mark.parametrize("skew", [timedelta(minutes=-4, seconds=-50), timedelta(minutes=4, seconds=50)])
def test_timestamps_within_five_minutes_are_accepted(client, signer, skew):
    timestamp = rfc3339(utcnow() + skew)
    assert post(client, signer.project.id, signer.cached, event("image.ready", {}), timestamp=timestamp).status_code == 201


def failures(signer, stranger):
    """Every way to fail authentication: (label, post kwargs)."""
    body = event("image.ready", {"id": "i1"})
    raw = json.dumps(body).encode()
    now = rfc3339(utcnow())
    other = secret_of(stranger)
    return [
        ("bad signature", dict(raw=raw, signature="00" * 32)),
        ("signature over other bytes", dict(raw=raw, signature=ingest.sign(signer.cached, now, raw + b" "), timestamp=now)),
        ("signature without the timestamp", dict(raw=raw, signature=ingest.sign(signer.cached, "", raw), timestamp=now)),
        ("not hex", dict(raw=raw, signature="zz\u00e9")),
        ("stale timestamp", dict(raw=raw, timestamp=rfc3339(utcnow() - timedelta(minutes=5, seconds=10)))),
        ("future timestamp", dict(raw=raw, timestamp=rfc3339(utcnow() + timedelta(minutes=5, seconds=10)))),
        ("unparsable timestamp", dict(raw=raw, timestamp="yesterday")),
        ("epoch timestamp", dict(raw=raw, timestamp=str(int(utcnow().timestamp())))),
        ("unknown project", dict(raw=raw, headers={"X-Project-Id": "no-such-project"})),
        ("another project's secret", dict(raw=raw, secret=other)),
        ("missing X-Signature", dict(raw=raw, headers={"X-Signature": None})),
        ("missing X-Timestamp", dict(raw=raw, headers={"X-Timestamp": None})),
        ("missing X-Project-Id", dict(raw=raw, headers={"X-Project-Id": None})),
    ]


def test_every_authentication_failure_is_the_same_401(client, signer, stranger):
    for label, kwargs in failures(signer, stranger):
        secret = kwargs.pop("secret", signer.cached)
        response = post(client, signer.project.id, secret, **kwargs)
        assert response.status_code == 401, label
        assert response.content_type == "application/problem+json", label
        assert without_instance(response.get_json()) == AUTH_FAILED, label
        assert "WWW-Authenticate" not in response.headers, label
    assert events() == []


def test_another_projects_signature_does_not_reach_this_project(client, signer, stranger):
    theirs = secret_of(stranger)
    response = post(client, stranger.project.id, theirs, event("image.ready", {}))
    assert response.status_code == 201  # their secret works for their project only
    response = post(client, signer.project.id, theirs, event("image.ready", {}))
    assert response.status_code == 401 and without_instance(response.get_json()) == AUTH_FAILED
    assert [e.project_id for e in events()] == [stranger.project.id]


def test_a_project_without_a_cached_secret_is_refused(client, owner):
    from cortex.lib import crypto

    secret = crypto.decrypt(owner.project.secret_encrypted)  # the right secret, but never synced
    response = post(client, owner.project.id, secret, event("image.ready", {}))
    assert response.status_code == 401 and without_instance(response.get_json()) == AUTH_FAILED
    sync_project_secret(owner.project)
    assert post(client, owner.project.id, secret, event("image.ready", {})).status_code == 201
    revoke_project_secret(owner.project)  # DELETE …/settings/revoke-secret: ingest fails until the next sync
    response = post(client, owner.project.id, secret, event("image.ready", {}))
    assert response.status_code == 401 and without_instance(response.get_json()) == AUTH_FAILED
    assert len(events()) == 1


def test_a_cached_secret_that_cannot_be_decrypted_is_refused_and_logged(client, signer, caplog):
    from models.settings import SecretCache

    SecretCache.update(secret_encrypted="not-a-fernet-token").execute()  # e.g. CORTEX_SECRET_KEY was changed
    response = post(client, signer.project.id, signer.cached, event("image.ready", {}))
    assert response.status_code == 401 and without_instance(response.get_json()) == AUTH_FAILED
    assert "cannot be decrypted" in caplog.text
    assert events() == []


# ---------------------------------------------------------------- rate limit


def test_more_than_100_events_per_second_get_429_with_retry_after(client, signer, stranger, frozen_clock):
    body = event("image.ready", {"id": "i1"})
    for number in range(ingest.RATE_LIMIT):
        response = post(client, signer.project.id, signer.cached, body)
        assert response.status_code == 201, number
    response = post(client, signer.project.id, signer.cached, body)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert response.content_type == "application/problem+json"
    assert "100 events per second" in response.get_json()["detail"]
    assert len(events()) == ingest.RATE_LIMIT
    # another project has its own budget
    assert post(client, stranger.project.id, secret_of(stranger), body).status_code == 201
    # the next second is a new window
    frozen_clock(1_900_000_001.0)
    assert post(client, signer.project.id, signer.cached, body).status_code == 201


def test_unauthenticated_requests_do_not_spend_a_projects_budget(client, signer, frozen_clock):
    body = event("image.ready", {"id": "i1"})
    for _ in range(ingest.RATE_LIMIT + 20):
        assert post(client, signer.project.id, signer.cached, body, signature="ab" * 32).status_code == 401
    for number in range(ingest.RATE_LIMIT):
        assert post(client, signer.project.id, signer.cached, body).status_code == 201, number


def test_the_limiter_counts_fixed_one_second_windows():
    now = {"t": 100.9}
    limiter = ingest.RateLimiter(limit=2, clock=lambda: now["t"])
    assert [limiter.retry_after("p"), limiter.retry_after("p"), limiter.retry_after("p")] == [None, None, 1]
    assert limiter.retry_after("q") is None
    now["t"] = 101.0
    assert limiter.retry_after("p") is None


def test_the_limiter_counts_per_process_while_redis_is_unreachable():
    limiter = ingest.RateLimiter(limit=1, redis_url="redis://127.0.0.1:1/0", clock=lambda: 500.5)
    assert limiter.retry_after("p") is None
    assert limiter.retry_after("p") == 1


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL")
def test_processes_share_the_count_through_redis():
    key = f"test-{os.urandom(8).hex()}"
    first = ingest.RateLimiter(limit=3, redis_url=os.environ["REDIS_URL"], clock=lambda: 1_900_000_100.5)
    second = ingest.RateLimiter(limit=3, redis_url=os.environ["REDIS_URL"], clock=lambda: 1_900_000_100.5)
    answers = [first.retry_after(key), second.retry_after(key), first.retry_after(key), second.retry_after(key)]
    assert answers == [None, None, None, 1]


# ---------------------------------------------------------------- validation


def invalid_bodies(session_id: str, other_session_id: str) -> list[tuple[dict, str]]:
    """(body, a word the 400 detail must contain)."""
    good = {"sessionId": session_id, "userId": "u1", "senderName": "Ada", "content": "hi"}
    return [
        (event("image.ready", {}, timestamp="not a time"), "timestamp"),
        ({**event("image.ready", {}), "payload": {"action": "occurred"}}, "payload.data"),
        ({**event("image.ready", {}), "payload": {"action": "occurred", "data": [1]}}, "payload.data"),
        ({**event("image.ready", {}), "payload": {"action": "happened", "data": {}}}, "payload.action"),
        ({**event("image.ready", {}), "payload": {"action": "updated", "data": {}, "changes": 3}}, "payload.changes"),
        ({**event("image.ready", {}), "payload": {"action": "occurred", "data": {}, "extra": 1}}, "extra"),
        (event("participant.joined", {"sessionId": session_id}), "userId"),
        (event("participant.joined", {"userId": "u1"}), "sessionId"),
        (event("participant.joined", {"sessionId": session_id, "userId": 7}), "userId"),
        (event("participant.joined", {"sessionId": session_id, "userId": "u1", "peerId": [1]}), "peerId"),
        (event("participant.joined", {"sessionId": session_id, "userId": "u1", "userData": "x"}), "userData"),
        (event("participant.left", {"sessionId": "no-such-session", "userId": "u1"}), "no session"),
        (event("participant.joined", {"sessionId": other_session_id, "userId": "u1"}), "no session"),
        (event("message.created", {**good, "senderName": None}), "senderName"),
        (event("message.created", {**good, "content": 5}), "content"),
        (event("message.created", {**good, "timestamp": "soon"}), "payload.data.timestamp"),
        (event("message.created", {**good, "debugAudio": "%%%not base64%%%"}), "base64"),
        (event("message.created", {**good, "debugAudio": base64.b64encode(b"ID3 an mp3").decode()}), "WAV"),
        (event("message.created", {**good, "sessionId": other_session_id}), "no session"),
        (event("bot.status.changed", {"sessionId": session_id, "status": "sleeping"}), "status"),
        (event("bot.status.changed", {"sessionId": other_session_id, "status": "stopped"}), "no session"),
    ]


def test_semantic_errors_are_400_with_a_clear_detail_and_record_nothing(client, signer, stranger):
    session = make_session(signer)
    theirs = make_session(stranger)
    for body, word in invalid_bodies(session.id, theirs.id):
        response = post(client, signer.project.id, signer.cached, body)
        assert response.status_code == 400, (body, response.get_data(as_text=True))
        assert response.content_type == "application/problem+json"
        assert word in response.get_json()["detail"], (word, response.get_json())
    assert events() == []
    assert Message.select().count() == 0 and Participant.select().count() == 0
    assert theirs.status == Session.get_by_id(theirs.id).status == "active"


def test_the_document_rejects_bodies_the_schema_forbids(client, signer):
    body = event("image.ready", {})
    body["source"] = "somewhere:else"
    response = post(client, signer.project.id, signer.cached, body)
    assert response.status_code == 400 and "source" in response.get_json()["detail"]
    body = event("not.a.type", {})
    assert post(client, signer.project.id, signer.cached, body).status_code == 400
    response = post(client, signer.project.id, signer.cached, raw=b"not json")
    assert response.status_code == 400


# ---------------------------------------------------------------- participant.joined / participant.left


def test_join_and_leave_track_presence_and_write_system_lines(client, signer):
    session = make_session(signer)
    joined_at = "2026-03-20T12:00:00.000Z"
    body = event("participant.joined", {"sessionId": session.id, "userId": "odin-7", "peerId": 42,
                                        "displayName": "Ada", "userData": {"team": "red"}},
                 resource_id=f"session:{session.id}", timestamp=joined_at)
    response = post(client, signer.project.id, signer.cached, body)
    assert response.status_code == 201, response.get_data(as_text=True)
    participant = Participant.get(Participant.external_user_id == "odin-7")
    assert (participant.display_name, participant.user_data) == ("Ada", {"team": "red"})
    [span] = PresenceSpan.select()
    assert (span.session_id, span.participant_id, span.peer_id, span.left_at) == (session.id, participant.id, "42", None)
    assert rfc3339(span.joined_at) == joined_at
    created, logged, line = events()
    assert created.type == "participant.created"
    assert logged.id == response.get_json()["id"] and logged.type == "participant.joined"
    assert logged.source == "voice:server" and logged.payload == body["payload"]
    assert line.type == "message.created" and line.source == "cortex:bot"
    assert line.resource_id == f"session:{session.id}"
    [message] = Message.select()
    assert line.payload == {"action": "created", "data": {
        "id": message.id, "sessionId": session.id, "participantId": None, "externalUserId": None,
        "type": "system", "senderName": "[System]", "content": "Ada joined", "timestamp": joined_at,
    }}

    left_at = "2026-03-20T12:05:00.000Z"
    body = event("participant.left", {"sessionId": session.id, "userId": "odin-7", "peerId": 42},
                 resource_id=f"session:{session.id}", timestamp=left_at)
    assert post(client, signer.project.id, signer.cached, body).status_code == 201
    assert rfc3339(PresenceSpan.get_by_id(span.id).left_at) == left_at
    transcript = client.get(f"/api/projects/{signer.project.id}/sessions/{session.id}/messages",
                            headers=signer.headers).get_json()
    assert [(m["type"], m["senderName"], m["content"], m["timestamp"]) for m in transcript] == [
        ("system", "[System]", "Ada joined", joined_at),
        ("system", "[System]", "Ada left", left_at),
    ]
    assert [e.type for e in events()] == [
        "participant.created", "participant.joined", "message.created", "participant.left", "message.created",
    ]


def test_repeated_joins_and_leaves_without_a_join_change_no_presence(client, signer):
    session = make_session(signer)
    join = event("participant.joined", {"sessionId": session.id, "userId": "u1"})
    assert post(client, signer.project.id, signer.cached, join).status_code == 201
    assert post(client, signer.project.id, signer.cached, join).status_code == 201  # still present: no new span
    leave = event("participant.left", {"sessionId": session.id, "userId": "u2"})
    assert post(client, signer.project.id, signer.cached, leave).status_code == 201  # never joined
    assert PresenceSpan.select().count() == 1
    assert [m.content for m in Message.select()] == ["u1 joined"]  # the display name defaults to the user id
    assert len(events("participant.joined")) == 2 and len(events("participant.left")) == 1  # all logged


def test_a_join_updates_a_known_participant(client, signer):
    session = make_session(signer)
    post(client, signer.project.id, signer.cached,
         event("participant.joined", {"sessionId": session.id, "userId": "u1", "displayName": "Ada"}))
    post(client, signer.project.id, signer.cached,
         event("participant.left", {"sessionId": session.id, "userId": "u1"}))
    post(client, signer.project.id, signer.cached,
         event("participant.joined", {"sessionId": session.id, "userId": "u1", "displayName": "Ada L."}))
    assert Participant.select().count() == 1
    assert Participant.get().display_name == "Ada L."
    assert [e.type for e in events() if e.type.startswith("participant.")] == [
        "participant.created", "participant.joined", "participant.left", "participant.updated", "participant.joined",
    ]
    assert [m.content for m in Message.select().order_by(Message.event_seq)] == ["Ada joined", "Ada left", "Ada L. joined"]


# ---------------------------------------------------------------- message.created


def message_event(session, **data) -> dict:
    return event("message.created", {"sessionId": session.id, "userId": "odin-7", "senderName": "Ada",
                                     "content": "Hello team!", **data},
                 resource_id=f"session:{session.id}", action="created")


def test_a_message_is_stored_and_logged_as_the_stored_message(client, signer):
    session = make_session(signer)
    body = message_event(session, id="bot-msg-1", timestamp="2026-03-20T12:00:01.500Z", confidence=0.93)
    response = post(client, signer.project.id, signer.cached, body)
    assert response.status_code == 201, response.get_data(as_text=True)
    [message] = Message.select()
    participant = Participant.get(Participant.external_user_id == "odin-7")
    assert participant.display_name == "Ada"  # a new sender is named after the message's sender name
    assert (message.type, message.session_id, message.project_id, message.participant_id) == (
        "user", session.id, signer.project.id, participant.id)
    assert (message.external_user_id, message.external_id, message.sender_name, message.content) == (
        "odin-7", "bot-msg-1", "Ada", "Hello team!")
    created, logged = events()
    assert created.type == "participant.created"
    assert logged.id == response.get_json()["id"] == message.event_id
    assert (logged.type, logged.source, logged.resource_id) == ("message.created", "voice:server", f"session:{session.id}")
    assert logged.payload == {"action": "created", "data": {
        "id": message.id, "sessionId": session.id, "participantId": participant.id, "externalUserId": "odin-7",
        "senderName": "Ada", "content": "Hello team!", "timestamp": "2026-03-20T12:00:01.500Z",
        "hasDebugAudio": False, "externalId": "bot-msg-1", "confidence": 0.93,
    }}


def test_a_message_without_user_id_has_no_participant(client, signer):
    session = make_session(signer)
    body = event("message.created", {"sessionId": session.id, "senderName": "Narrator", "content": "…"},
                 action="created")
    assert post(client, signer.project.id, signer.cached, body).status_code == 201
    [message] = Message.select()
    assert message.participant_id is None and message.external_user_id is None
    assert Participant.select().count() == 0


def test_a_resent_message_id_creates_nothing_and_answers_the_original_event(client, signer):
    session = make_session(signer)
    first = post(client, signer.project.id, signer.cached, message_event(session, id="m-1"))
    again = post(client, signer.project.id, signer.cached, message_event(session, id="m-1", content="changed?"))
    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json()
    assert [m.content for m in Message.select()] == ["Hello team!"]
    assert len(events("message.created")) == 1
    # the same id in another session is another message; numbers are ids too
    other = make_session(signer)
    assert post(client, signer.project.id, signer.cached, message_event(other, id="m-1")).get_json() != first.get_json()
    post(client, signer.project.id, signer.cached, message_event(other, id=77))
    post(client, signer.project.id, signer.cached, message_event(other, id="77"))
    assert Message.select().count() == 3


def test_a_resent_message_rolls_back_everything_it_started(client, signer):
    session = make_session(signer)
    first = post(client, signer.project.id, signer.cached, message_event(session, id="m-1")).get_json()
    # the re-send names a sender never seen: the participant it would create goes with the rolled-back write
    response = post(client, signer.project.id, signer.cached, message_event(session, id="m-1", userId="someone-new"))
    assert response.status_code == 201 and response.get_json() == first
    assert Message.select().count() == 1 and len(events("message.created")) == 1
    assert [p.external_user_id for p in Participant.select()] == ["odin-7"]
    assert len(events("participant.created")) == 1


# ---------------------------------------------------------------- debug audio


def enable_debug_audio(project, enabled: bool = True) -> None:
    from cortex.lib import crypto, odin

    AppSettings.create(project=project.id, token_provider_type="access_key", bot_user_id="bot",
                       access_key_encrypted=crypto.encrypt(odin.generate_access_key()), debug_audio_enabled=enabled)


def audio_url(member, session_id, message_id) -> str:
    return f"/api/projects/{member.project.id}/sessions/{session_id}/messages/{message_id}/debug-audio"


def test_debug_audio_is_kept_when_enabled_and_downloadable(client, signer, settings):
    enable_debug_audio(signer.project)
    session = make_session(signer)
    audio = wav()
    body = message_event(session, debugAudio=base64.b64encode(audio).decode())
    assert post(client, signer.project.id, signer.cached, body).status_code == 201
    [message] = Message.select()
    path = settings.data_dir / "debug-audio" / signer.project.id / f"{message.id}.wav"
    assert path.read_bytes() == audio
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert not list(path.parent.glob("*.part"))
    assert message.debug_audio_file == f"{signer.project.id}/{message.id}.wav"
    assert timedelta(hours=23, minutes=59) < message.debug_audio_expires_at - utcnow() <= timedelta(hours=24)
    logged = events("message.created")[0]
    assert logged.payload["data"]["hasDebugAudio"] is True
    assert "debugAudio" not in json.dumps(logged.payload)  # the audio never enters the event log
    listing = client.get(f"/api/projects/{signer.project.id}/sessions/{session.id}/messages", headers=signer.headers)
    assert listing.get_json()[0]["hasDebugAudio"] is True
    # buffered: the test client reads the whole file and closes it, as the server does after sending it
    response = client.get(audio_url(signer, session.id, message.id), headers=signer.headers, buffered=True)
    assert response.status_code == 200
    assert response.mimetype == "audio/wav"
    assert response.get_data() == audio
    assert f"{message.id}.wav" in response.headers["Content-Disposition"]


def test_debug_audio_is_dropped_when_disabled(client, signer, settings):
    enable_debug_audio(signer.project, enabled=False)
    session = make_session(signer)
    body = message_event(session, debugAudio=base64.b64encode(wav()).decode())
    assert post(client, signer.project.id, signer.cached, body).status_code == 201
    [message] = Message.select()
    assert message.debug_audio_file is None and message.debug_audio_expires_at is None
    assert not (settings.data_dir / "debug-audio").exists() or not any((settings.data_dir / "debug-audio").rglob("*"))
    assert events("message.created")[0].payload["data"]["hasDebugAudio"] is False
    response = client.get(audio_url(signer, session.id, message.id), headers=signer.headers)
    assert response.status_code == 404


def test_debug_audio_is_dropped_without_app_settings(client, signer, settings):
    session = make_session(signer)
    body = message_event(session, debugAudio=base64.b64encode(wav()).decode())
    assert post(client, signer.project.id, signer.cached, body).status_code == 201
    assert Message.get().debug_audio_file is None


def test_a_rejected_duplicate_leaves_no_audio_file(client, signer, settings):
    enable_debug_audio(signer.project)
    session = make_session(signer)
    audio = base64.b64encode(wav()).decode()
    post(client, signer.project.id, signer.cached, message_event(session, id="m-1", debugAudio=audio))
    post(client, signer.project.id, signer.cached, message_event(session, id="m-1", debugAudio=audio))
    files = sorted(p.name for p in (settings.data_dir / "debug-audio").rglob("*") if p.is_file())
    assert files == [f"{Message.get().id}.wav"]


def test_debug_audio_expires_after_24_hours_and_the_job_deletes_it(client, signer, settings):
    from cortex.engines.debug_audio import DebugAudioCleanupJob

    enable_debug_audio(signer.project)
    session = make_session(signer)
    body = message_event(session, debugAudio=base64.b64encode(wav()).decode())
    post(client, signer.project.id, signer.cached, body)
    message = Message.get()
    store = DebugAudioStore(settings.data_dir)
    assert store.exists(message.debug_audio_file)
    Message.update(debug_audio_expires_at=utcnow() - timedelta(seconds=1)).execute()
    response = client.get(audio_url(signer, session.id, message.id), headers=signer.headers)
    assert response.status_code == 404  # expired: gone for clients even before the job ran
    listing = client.get(f"/api/projects/{signer.project.id}/sessions/{session.id}/messages", headers=signer.headers)
    assert listing.get_json()[0]["hasDebugAudio"] is False
    assert DebugAudioCleanupJob(settings.data_dir).run_once() == 1
    assert not store.exists(message.debug_audio_file)
    row = Message.get_by_id(message.id)
    assert row.debug_audio_file is None and row.debug_audio_expires_at is None
    assert DebugAudioCleanupJob(settings.data_dir).run_once() == 0


def test_a_missing_file_means_no_debug_audio(client, signer, settings):
    enable_debug_audio(signer.project)
    session = make_session(signer)
    post(client, signer.project.id, signer.cached, message_event(session, debugAudio=base64.b64encode(wav()).decode()))
    message = Message.get()
    DebugAudioStore(settings.data_dir).delete(message.debug_audio_file)
    listing = client.get(f"/api/projects/{signer.project.id}/sessions/{session.id}/messages", headers=signer.headers)
    assert listing.get_json()[0]["hasDebugAudio"] is False
    assert client.get(audio_url(signer, session.id, message.id), headers=signer.headers).status_code == 404


# ---------------------------------------------------------------- bot.status.changed


def test_bot_status_changes_move_the_session(client, signer):
    session = make_session(signer, status="starting")
    body = event("bot.status.changed", {"sessionId": session.id, "status": "active"},
                 resource_id=f"session:{session.id}", action="updated")
    response = post(client, signer.project.id, signer.cached, body)
    assert response.status_code == 201
    assert Session.get_by_id(session.id).status == "active"
    updated, logged = events()
    assert updated.type == "session.updated" and updated.source == "cortex:ingest"
    assert updated.payload["changes"] == {"status": "starting"}
    assert logged.id == response.get_json()["id"] and logged.type == "bot.status.changed"
    assert logged.payload == body["payload"]
    # the same status again: logged, no session.updated
    assert post(client, signer.project.id, signer.cached, body).status_code == 201
    assert [e.type for e in events()] == ["session.updated", "bot.status.changed", "bot.status.changed"]


# ---------------------------------------------------------------- lock order (PostgreSQL)


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"), reason="row locks: PostgreSQL")
@pytest.mark.parametrize("kind, data, logged", [
    ("participant.joined", {"userId": "new-user"},
     ["session.updated", "participant.created", "participant.joined", "message.created"]),
    # a message's new sender is created first, in a transaction of its own that does not touch the session
    ("message.created", {"userId": "new-user", "senderName": "Ada", "content": "hi"},
     ["participant.created", "session.updated", "message.created"]),
])
def test_ingest_waits_for_a_session_write_instead_of_deadlocking(client, signer, kind, data, logged):
    """A session write holds the row lock and then takes the event-log lock (emit). Ingest locks the row before
    it emits anything about the session, so it waits for that write instead of holding the log lock against it
    (a deadlock)."""
    session = make_session(signer)
    locked, release, done = threading.Event(), threading.Event(), threading.Event()
    outcome = {}

    def session_write():  # like stop_session: row lock first, then (later) emit
        try:
            with db.connection_context(), transaction():
                row = Session.select().where(Session.id == session.id).for_update().first()
                locked.set()
                release.wait(10)
                _change_status(row, "stopping", "cortex:api")
            outcome["write"] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["write"] = repr(exc)

    def ingest_join():
        body = event(kind, {"sessionId": session.id, **data}, action="created")
        response = post(client, signer.project.id, signer.cached, body)
        outcome["ingest"] = response.status_code
        done.set()

    writer = threading.Thread(target=session_write)
    writer.start()
    assert locked.wait(10)
    joiner = threading.Thread(target=ingest_join)
    joiner.start()
    assert not done.wait(0.5)  # blocked on the row lock, holding nothing the writer needs
    release.set()
    writer.join(15)
    joiner.join(15)
    assert outcome == {"write": "ok", "ingest": 201}
    assert [e.type for e in events()] == logged


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL")
def test_concurrent_hits_are_counted_exactly_in_one_redis_call():
    """Under gevent the hits of concurrent ingests share one script call: each still gets its own count."""
    import gevent
    import redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    counts = ingest.SharedCounts(client.register_script(ingest._COUNT_SCRIPT))
    counts.enabled = True
    key, other = f"test-{os.urandom(8).hex()}", f"test-{os.urandom(8).hex()}"
    greenlets = [gevent.spawn(counts.submit, key if i % 4 else other) for i in range(120)]
    gevent.joinall(greenlets, timeout=10)
    assert sorted(g.get() for i, g in enumerate(greenlets) if i % 4) == list(range(1, 91))
    assert sorted(g.get() for i, g in enumerate(greenlets) if not i % 4) == list(range(1, 31))
    assert counts.batches < 120 and counts.items == 120
    assert 0 < client.ttl(key) <= 2
