"""models.messages (transcript lines and their events) and the debug-audio files (cortex.integrations.debug_audio) and cleanup job (cortex.engines.debug_audio)."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest

from cortex.engines.debug_audio import DebugAudioCleanupJob
from cortex.integrations.debug_audio import DebugAudioStore
from models.base import parse_timestamp, rfc3339, transaction, utcnow
from models.events import DomainEvent
from models.messages import (
    DEBUG_AUDIO_RETENTION,
    DuplicateMessage,
    Message,
    add_message,
    add_system_message,
    clear_debug_audio,
    debug_audio_file,
    expired_debug_audio,
    list_messages,
)
from models.participants import create_or_find_participant
from models.sessions import Session


@pytest.fixture
def session(owner):
    return Session.create(project=owner.project.id, tenant_id=owner.project.tenant_id, external_room_id="room",
                          title="Squad", created_by_user_id=owner.user.id, status="active")


def test_a_message_is_recorded_with_its_event(session, owner):
    participant, _ = create_or_find_participant(owner.project, "odin-1", "Ada")
    at = parse_timestamp("2026-03-20T12:00:00.250Z")
    with transaction():
        message, event = add_message(session, sender_name="Ada", content="hi", timestamp=at, participant=participant,
                                     external_user_id="odin-1", external_id="m1", source="voice:server")
    row = Message.get_by_id(message.id)
    assert (row.event_id, row.event_seq) == (event.id, event.seq)
    assert (row.project_id, row.tenant_id, row.type) == (owner.project.id, owner.project.tenant_id, "user")
    stored = DomainEvent.get(DomainEvent.id == event.id)
    assert (stored.type, stored.source, stored.resource_id) == ("message.created", "voice:server", f"session:{session.id}")
    assert stored.occurred_at == at  # the line's time is the time the event reports; the log's clock is now
    assert stored.payload == {"action": "created", "data": {
        "id": message.id, "sessionId": session.id, "participantId": participant.id, "externalUserId": "odin-1",
        "senderName": "Ada", "content": "hi", "timestamp": "2026-03-20T12:00:00.250Z", "hasDebugAudio": False,
    }}


def test_add_message_needs_a_transaction(session):
    with pytest.raises(RuntimeError):
        add_message(session, sender_name="Ada", content="hi")
    assert Message.select().count() == 0


def test_system_lines_come_from_the_bot(session):
    with transaction():
        line = add_system_message(session, "Ada joined")
    event = DomainEvent.get(DomainEvent.id == line.event_id)
    assert (line.type, line.sender_name, line.participant_id, line.external_user_id) == ("system", "[System]", None, None)
    assert event.source == "cortex:bot"
    assert event.payload["data"]["type"] == "system" and "hasDebugAudio" not in event.payload["data"]


def test_a_second_message_with_the_same_sender_id_is_a_duplicate(session):
    with transaction():
        add_message(session, sender_name="Ada", content="hi", external_id="m1")
    with pytest.raises(DuplicateMessage), transaction():
        add_message(session, sender_name="Ada", content="hi again", external_id="m1")
    assert [m.content for m in Message.select()] == ["hi"]
    assert DomainEvent.select().count() == 1  # the duplicate's event rolled back with it
    with transaction():  # messages without a sender id never collide
        add_message(session, sender_name="Ada", content="a")
        add_message(session, sender_name="Ada", content="b")
    assert Message.select().count() == 3


def test_messages_are_listed_by_timestamp_then_recording_order(session):
    t = utcnow()
    with transaction():
        for content, offset in (("c", 2), ("a", 0), ("b1", 1), ("b2", 1), ("b3", 1)):
            add_message(session, sender_name="Ada", content=content, timestamp=t + timedelta(seconds=offset))
    assert [m["content"] for m in list_messages(session)] == ["a", "b1", "b2", "b3", "c"]
    assert list_messages(session)[0]["timestamp"] == rfc3339(t)


def test_debug_audio_is_listed_while_kept_unexpired_and_present(session):
    with transaction():
        kept, _ = add_message(session, sender_name="Ada", content="kept", debug_audio_file="p/kept.wav")
        gone, _ = add_message(session, sender_name="Ada", content="gone", debug_audio_file="p/gone.wav")
        add_message(session, sender_name="Ada", content="none")
    assert DEBUG_AUDIO_RETENTION == timedelta(hours=24)
    assert kept.debug_audio_expires_at - utcnow() > timedelta(hours=23)
    present = {"p/kept.wav"}
    listing = list_messages(session, present.__contains__)
    assert [m["hasDebugAudio"] for m in listing] == [True, False, False]
    assert debug_audio_file(session, kept.id) == "p/kept.wav"
    assert debug_audio_file(session, "no-such-message") is None
    Message.update(debug_audio_expires_at=utcnow() - timedelta(seconds=1)).where(Message.id == kept.id).execute()
    assert debug_audio_file(session, kept.id) is None
    assert list_messages(session, present.__contains__)[0]["hasDebugAudio"] is False


def test_expired_debug_audio_is_found_and_cleared(session):
    with transaction():
        old, _ = add_message(session, sender_name="Ada", content="old", debug_audio_file="p/old.wav")
        new, _ = add_message(session, sender_name="Ada", content="new", debug_audio_file="p/new.wav")
    Message.update(debug_audio_expires_at=utcnow() - timedelta(hours=1)).where(Message.id == old.id).execute()
    assert expired_debug_audio() == [(old.id, "p/old.wav")]
    assert clear_debug_audio([old.id]) == 1
    assert expired_debug_audio() == []
    row = Message.get_by_id(old.id)
    assert (row.debug_audio_file, row.debug_audio_expires_at) == (None, None)
    assert Message.get_by_id(new.id).debug_audio_file == "p/new.wav"


# ---------------------------------------------------------------- the files


def test_files_are_staged_then_published_privately(tmp_path):
    store = DebugAudioStore(tmp_path)
    file = store.file_name("project-1", "message-1")
    assert file == "project-1/message-1.wav"
    staged = store.stage(file, b"RIFF....WAVE")
    assert staged.name == "message-1.wav.part" and not store.exists(file)
    store.publish(staged)
    path = tmp_path / "debug-audio" / "project-1" / "message-1.wav"
    assert path.read_bytes() == b"RIFF....WAVE"
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    with store.open(file) as handle:
        assert handle.read() == b"RIFF....WAVE"
    assert store.delete(file) and not store.exists(file) and store.open(file) is None
    assert not store.delete(file)
    store.discard(store.stage(file, b"x"))
    assert list(path.parent.iterdir()) == []


def test_file_names_cannot_leave_the_directory(tmp_path):
    store = DebugAudioStore(tmp_path)
    (tmp_path / "secret.key").write_text("k")
    with pytest.raises(ValueError):
        store.path("../secret.key")
    assert store.open("../secret.key") is None and not store.exists("../secret.key")
    assert not store.delete("../secret.key") and (tmp_path / "secret.key").exists()


def test_the_orphan_sweep_removes_old_files_and_stale_staged_ones(tmp_path):
    store = DebugAudioStore(tmp_path)
    fresh = store.path(store.file_name("p", "fresh"))
    store.publish(store.stage("p/fresh.wav", b"a"))
    store.publish(store.stage("p/old.wav", b"b"))
    store.stage("p/crashed.wav", b"c")
    now = time.time()
    os.utime(store.path("p/old.wav"), (now - 26 * 3600, now - 26 * 3600))
    os.utime(store.path("p/crashed.wav").with_name("crashed.wav.part"), (now - 2 * 3600, now - 2 * 3600))
    assert store.sweep_orphans() == 2
    assert [p.name for p in fresh.parent.iterdir()] == ["fresh.wav"]


def test_the_cleanup_job_deletes_expired_files_and_clears_rows(session, settings):
    store = DebugAudioStore(settings.data_dir)
    with transaction():
        expired, _ = add_message(session, sender_name="Ada", content="x", debug_audio_file="p/expired.wav")
        kept, _ = add_message(session, sender_name="Ada", content="y", debug_audio_file="p/kept.wav")
    store.publish(store.stage("p/expired.wav", b"1"))
    store.publish(store.stage("p/kept.wav", b"2"))
    Message.update(debug_audio_expires_at=utcnow() - timedelta(minutes=1)).where(Message.id == expired.id).execute()
    job = DebugAudioCleanupJob(settings.data_dir, batch=1)  # batches: it loops until nothing has expired
    assert job.run_once() == 1
    assert not store.exists("p/expired.wav") and store.exists("p/kept.wav")
    assert Message.get_by_id(expired.id).debug_audio_file is None
    assert Message.get_by_id(kept.id).debug_audio_file == "p/kept.wav"


def test_the_cleanup_job_runs_in_the_background(settings, session):
    store = DebugAudioStore(settings.data_dir)
    with transaction():
        message, _ = add_message(session, sender_name="Ada", content="x", debug_audio_file="p/a.wav")
    store.publish(store.stage("p/a.wav", b"1"))
    Message.update(debug_audio_expires_at=utcnow() - timedelta(minutes=1)).execute()
    job = DebugAudioCleanupJob.from_settings(settings)
    job.interval = 0.05
    job.start()
    try:
        deadline = time.monotonic() + 5
        while store.exists("p/a.wav") and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        job.stop()
    assert not store.exists("p/a.wav")
