"""Messages tag: a session's transcript (order, hasDebugAudio) and debug-audio downloads; roles, scopes, tenancy."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cortex.integrations.debug_audio import DebugAudioStore
from models.base import parse_timestamp, rfc3339, transaction, utcnow
from models.messages import add_message, add_system_message
from models.sessions import Session

WAV = b"RIFF\x04\x00\x00\x00WAVE"


def make_session(member) -> Session:
    return Session.create(project=member.project.id, tenant_id=member.project.tenant_id, external_room_id="room",
                          title="Squad", created_by_user_id=member.user.id, status="active")


def url(member, session_id, tail: str = "") -> str:
    return f"/api/projects/{member.project.id}/sessions/{session_id}/messages{tail}"


def say(session, content, at=None, **kwargs):
    with transaction():
        return add_message(session, sender_name="Ada", content=content, timestamp=at, **kwargs)[0]


def with_audio(settings, session, content="spoken", audio=WAV):
    """A message whose debug audio is stored (as ingest does it)."""
    store = DebugAudioStore(settings.data_dir)
    message_id = "msg-" + content
    file = store.file_name(session.project_id, message_id)
    store.publish(store.stage(file, audio))
    return say(session, content, message_id=message_id, debug_audio_file=file)


def test_the_transcript_is_in_timestamp_order_then_recording_order(client, owner):
    session = make_session(owner)
    t = parse_timestamp("2026-03-20T12:00:00Z")
    say(session, "third", t + timedelta(seconds=2))
    say(session, "first", t)
    with transaction():
        add_system_message(session, "Ada joined", t + timedelta(seconds=1))
    say(session, "second, same time as the join", t + timedelta(seconds=1))
    say(session, "last", t + timedelta(seconds=2))
    response = client.get(url(owner, session.id), headers=owner.headers)
    assert response.status_code == 200
    body = response.get_json()
    assert [m["content"] for m in body] == ["first", "Ada joined", "second, same time as the join", "third", "last"]
    assert body[1] == {
        "id": body[1]["id"], "sessionId": session.id, "type": "system", "senderName": "[System]",
        "content": "Ada joined", "timestamp": rfc3339(t + timedelta(seconds=1)), "hasDebugAudio": False,
    }
    assert body[0]["type"] == "user" and body[0]["senderName"] == "Ada" and body[0]["timestamp"] == rfc3339(t)


def test_an_empty_transcript_is_an_empty_list(client, owner):
    session = make_session(owner)
    assert client.get(url(owner, session.id), headers=owner.headers).get_json() == []


def test_only_the_sessions_own_messages_are_listed(client, owner):
    first, second = make_session(owner), make_session(owner)
    say(first, "in the first")
    say(second, "in the second")
    assert [m["content"] for m in client.get(url(owner, first.id), headers=owner.headers).get_json()] == ["in the first"]


def test_another_projects_session_is_not_found(client, owner, stranger):
    theirs = make_session(stranger)
    say(theirs, "secret plans")
    for path in (url(owner, theirs.id), url(owner, "no-such-session")):
        response = client.get(path, headers=owner.headers)
        assert response.status_code == 404
        assert response.content_type == "application/problem+json"
    # their own project's URL with our credentials is 404 too (not a member)
    assert client.get(f"/api/projects/{stranger.project.id}/sessions/{theirs.id}/messages",
                      headers=owner.headers).status_code == 404


def test_developers_and_keys_with_transcripts_read_may_read(client, owner, add_member, api_key_headers):
    session = make_session(owner)
    say(session, "hello")
    developer = add_member("developer")
    assert client.get(url(owner, session.id), headers=developer.headers).status_code == 200
    assert client.get(url(owner, session.id), headers=api_key_headers(["transcripts:read"])).status_code == 200
    assert client.get(url(owner, session.id), headers=api_key_headers(["sessions:read"])).status_code == 403
    assert client.get(url(owner, session.id)).status_code == 401


def test_debug_audio_downloads_as_wav(client, owner, settings):
    session = make_session(owner)
    message = with_audio(settings, session)
    listing = client.get(url(owner, session.id), headers=owner.headers).get_json()
    assert listing[0]["hasDebugAudio"] is True
    response = client.get(url(owner, session.id, f"/{message.id}/debug-audio"), headers=owner.headers, buffered=True)
    assert response.status_code == 200
    assert response.mimetype == "audio/wav"
    assert response.get_data() == WAV
    assert response.headers["Content-Disposition"] == f"attachment; filename={message.id}.wav"


def test_debug_audio_is_not_found_when_absent_expired_or_elsewhere(client, owner, stranger, settings):
    session, other = make_session(owner), make_session(owner)
    plain = say(session, "no audio")
    message = with_audio(settings, session)
    for path in (
        url(owner, session.id, f"/{plain.id}/debug-audio"),  # none was kept
        url(owner, session.id, "/no-such-message/debug-audio"),
        url(owner, other.id, f"/{message.id}/debug-audio"),  # the message is in another session
        url(owner, "no-such-session", f"/{message.id}/debug-audio"),
    ):
        response = client.get(path, headers=owner.headers)
        assert response.status_code == 404, path
        assert response.content_type == "application/problem+json"
    theirs = make_session(stranger)
    their_message = with_audio(settings, theirs, "theirs")
    assert client.get(url(owner, theirs.id, f"/{their_message.id}/debug-audio"), headers=owner.headers).status_code == 404
    # 24 hours after ingest it is gone, whether or not the cleanup job has run yet
    message.debug_audio_expires_at = utcnow() - timedelta(milliseconds=1)
    message.save()
    assert client.get(url(owner, session.id, f"/{message.id}/debug-audio"), headers=owner.headers).status_code == 404
    assert client.get(url(owner, session.id), headers=owner.headers).get_json()[1]["hasDebugAudio"] is False


@pytest.mark.parametrize("scopes, status", [(["transcripts:read"], 200), (["sessions:read"], 403)])
def test_debug_audio_needs_transcripts_read(client, owner, settings, api_key_headers, scopes, status):
    session = make_session(owner)
    message = with_audio(settings, session)
    response = client.get(url(owner, session.id, f"/{message.id}/debug-audio"), headers=api_key_headers(scopes),
                          buffered=True)
    assert response.status_code == status


def test_the_transcript_is_paged_and_capped(client, owner, monkeypatch):
    from models import messages as model

    session = make_session(owner)
    t = parse_timestamp("2026-03-20T12:00:00Z")
    for n in range(5):
        say(session, f"line {n}", t + timedelta(seconds=n))
    page = client.get(url(owner, session.id), headers=owner.headers, query_string={"limit": 2, "offset": 1})
    assert [m["content"] for m in page.get_json()] == ["line 1", "line 2"]
    monkeypatch.setattr(model, "MAX_LISTED_MESSAGES", 3)
    assert [m["content"] for m in client.get(url(owner, session.id), headers=owner.headers).get_json()] == [
        "line 0", "line 1", "line 2"]
