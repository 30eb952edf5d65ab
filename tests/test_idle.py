"""The idle auto-stop: IdleSessionSweeper stops sessions whose room stayed empty for idleTimeout seconds."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import timedelta

import pytest

from cortex.engines.idle import IdleSessionSweeper
from cortex.integrations.bots import LocalBotDriver, RedisBotDriver
from cortex.lib import crypto, odin
from models.base import db, utcnow
from models.events import DomainEvent
from models.participants import create_or_find_participant
from models.presence import present_count, record_join, record_leave
from models.sessions import BotCommandError, Session, create_session, get_session, start_session, stop_session
from models.settings import AppSettings


class RecordingDriver:
    """Records commands and leaves the session ``starting``/``stopping`` (like the Redis driver); ``fail``: the
    commands cannot be delivered."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.commands: list[tuple[str, str, str]] = []

    def start(self, session):
        self.commands.append(("start", session.id, session.status))

    def stop(self, session):
        self.commands.append(("stop", session.id, session.status))
        if self.fail:
            raise BotCommandError("transport down")


@pytest.fixture
def project(owner):
    AppSettings.create(project=owner.project.id, token_provider_type="access_key", bot_user_id="bot",
                       access_key_encrypted=crypto.encrypt(odin.generate_access_key()))
    return owner.project


@pytest.fixture
def active(project, owner):
    """Factory: an active session (local driver) with this idle timeout."""

    def make(idle_timeout=60, room="room-1") -> Session:
        return create_session(project, owner.user.id, "Standup", room, idle_timeout=idle_timeout,
                              driver=LocalBotDriver())

    return make


def participant(project, name="alice"):
    return create_or_find_participant(project, name)[0]


def session_events(session_id: str) -> list[DomainEvent]:
    return list(DomainEvent.select().where(DomainEvent.resource_id == f"session:{session_id}").order_by(DomainEvent.seq))


def test_an_idle_session_is_stopped_through_the_bot_driver(active, project):
    session = active(idle_timeout=60)
    assert session.status == "active"
    before = len(session_events(session.id))
    sweeper = IdleSessionSweeper(LocalBotDriver())

    assert sweeper.run_once(session.updated_at + timedelta(seconds=59)) == 0  # not idle long enough
    assert get_session(project, session.id).status == "active"
    assert sweeper.run_once(session.updated_at + timedelta(seconds=60)) == 1

    assert get_session(project, session.id).status == "stopped"  # the local driver completed the stop
    updates = session_events(session.id)[before:]
    assert [(e.type, e.source, e.payload["changes"], e.payload["data"]["status"]) for e in updates] == [
        ("session.updated", "cortex:api", {"status": "active"}, "stopping"),
        ("session.updated", "cortex:api", {"status": "stopping"}, "stopped"),
    ]
    assert sweeper.run_once(session.updated_at + timedelta(hours=1)) == 0  # stopped sessions are left alone


def test_the_stop_command_goes_to_the_driver(active, project):
    session = active(idle_timeout=5)
    driver = RecordingDriver()
    assert IdleSessionSweeper(driver).run_once(utcnow() + timedelta(seconds=6)) == 1
    assert driver.commands == [("stop", session.id, "stopping")]
    assert get_session(project, session.id).status == "stopping"  # the worker reports "stopped" later
    assert IdleSessionSweeper(driver).run_once(utcnow() + timedelta(seconds=60)) == 0  # stopping: not watched


def test_an_undeliverable_stop_leaves_the_session_in_error(active, project):
    session = active(idle_timeout=5)
    assert IdleSessionSweeper(RecordingDriver(fail=True)).run_once(utcnow() + timedelta(seconds=6)) == 1
    assert get_session(project, session.id).status == "error"


def test_a_session_with_someone_present_is_not_idle(active, project):
    session = active(idle_timeout=1)
    record_join(session, participant(project), "peer-1", at=utcnow() - timedelta(hours=1))
    sweeper = IdleSessionSweeper(LocalBotDriver())
    assert sweeper.run_once(utcnow() + timedelta(days=1)) == 0
    assert get_session(project, session.id).status == "active"


def test_idle_counts_from_the_last_leave(active, project):
    session = active(idle_timeout=60)
    alice = participant(project)
    record_join(session, alice, "p")
    left = utcnow() + timedelta(minutes=10)
    record_leave(session, alice, "p", at=left)
    sweeper = IdleSessionSweeper(LocalBotDriver())
    assert sweeper.run_once(left + timedelta(seconds=59)) == 0  # the session itself is 10 min old by then
    assert sweeper.run_once(left + timedelta(seconds=60)) == 1
    assert get_session(project, session.id).status == "stopped"


def test_idle_counts_from_when_the_session_became_active(active, project):
    """A restarted session does not stop at once because its room was empty before the restart."""
    session = active(idle_timeout=60)
    alice = participant(project)
    record_join(session, alice, "p", at=utcnow() - timedelta(hours=2))
    record_leave(session, alice, "p", at=utcnow() - timedelta(hours=1))
    stop_session(project, session.id, LocalBotDriver())
    restarted = start_session(project, session.id, LocalBotDriver())
    assert restarted.status == "active"
    sweeper = IdleSessionSweeper(LocalBotDriver())
    assert sweeper.run_once(restarted.updated_at + timedelta(seconds=59)) == 0
    assert sweeper.run_once(restarted.updated_at + timedelta(seconds=60)) == 1


@pytest.mark.parametrize("idle_timeout", [None, 0])
def test_sessions_without_an_idle_timeout_never_stop(active, project, idle_timeout):
    session = active(idle_timeout=idle_timeout)
    assert IdleSessionSweeper(LocalBotDriver()).run_once(utcnow() + timedelta(days=30)) == 0
    assert get_session(project, session.id).status == "active"


def test_sessions_not_running_are_left_alone(project, owner):
    created = create_session(project, owner.user.id, "Later", "room-2", idle_timeout=1, auto_start=False)
    stopped = create_session(project, owner.user.id, "Done", "room-3", idle_timeout=1, driver=LocalBotDriver())
    stop_session(project, stopped.id, LocalBotDriver())
    count = DomainEvent.select().count()
    assert IdleSessionSweeper(LocalBotDriver()).run_once(utcnow() + timedelta(days=1)) == 0
    assert [get_session(project, s.id).status for s in (created, stopped)] == ["created", "stopped"]
    assert DomainEvent.select().count() == count


def test_a_starting_session_is_watched_too(project, owner):
    session = create_session(project, owner.user.id, "Standup", "room-1", idle_timeout=30, driver=RecordingDriver())
    assert session.status == "starting"  # the worker never answered
    driver = RecordingDriver()
    assert IdleSessionSweeper(driver).run_once(utcnow() + timedelta(seconds=31)) == 1
    assert driver.commands == [("stop", session.id, "stopping")]


def test_only_the_due_sessions_stop(active, project):
    due = active(idle_timeout=10, room="a")
    later = active(idle_timeout=3600, room="b")
    busy = active(idle_timeout=10, room="c")
    record_join(busy, participant(project), "p")
    assert IdleSessionSweeper(LocalBotDriver()).run_once(utcnow() + timedelta(seconds=11)) == 1
    statuses = {s.id: get_session(project, s.id).status for s in (due, later, busy)}
    assert statuses == {due.id: "stopped", later.id: "active", busy.id: "active"}
    assert present_count(busy.id) == 1


def test_a_sweep_with_nothing_due_is_one_query(active, project, monkeypatch):
    for index in range(8):
        session = active(idle_timeout=10, room=f"room-{index}")
        record_join(session, participant(project, f"p{index}"), "p")
    active(idle_timeout=3600, room="quiet")
    statements = []
    original = db.obj.execute_sql

    def counting(sql, params=None, *args, **kwargs):
        statements.append(sql)
        return original(sql, params, *args, **kwargs)

    monkeypatch.setattr(db.obj, "execute_sql", counting)
    assert IdleSessionSweeper(LocalBotDriver()).run_once(utcnow() + timedelta(seconds=60)) == 0
    assert len(statements) == 1


def test_from_settings_picks_the_configured_driver(app):
    settings = app.extensions["cortex"].settings
    assert isinstance(IdleSessionSweeper.from_settings(replace(settings, bot_driver="local")).driver, LocalBotDriver)
    redis_sweeper = IdleSessionSweeper.from_settings(replace(settings, bot_driver="redis",
                                                             redis_url="redis://127.0.0.1:6379/15"))
    assert isinstance(redis_sweeper.driver, RedisBotDriver)
    with pytest.raises(ValueError):
        IdleSessionSweeper.from_settings(replace(settings, bot_driver="carrier-pigeon"))


def test_the_background_loop_stops_an_idle_session(active, project):
    session = active(idle_timeout=0.2)
    sweeper = IdleSessionSweeper(LocalBotDriver(), interval=0.05)
    sweeper.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Session.get_by_id(session.id).status != "stopped":
            time.sleep(0.05)
    finally:
        sweeper.stop()
    assert not sweeper.alive
    assert get_session(project, session.id).status == "stopped"


def test_a_huge_idle_timeout_never_stops_and_never_breaks_the_sweep(active, project):
    huge = active(idle_timeout=1e308, room="forever")
    due = active(idle_timeout=1, room="short")
    assert IdleSessionSweeper(LocalBotDriver()).run_once(utcnow() + timedelta(days=365)) == 1
    assert get_session(project, huge.id).status == "active"
    assert get_session(project, due.id).status == "stopped"


def test_a_fractional_idle_timeout_is_met_at_its_millisecond(active, project):
    session = active(idle_timeout=0.2)
    sweeper = IdleSessionSweeper(LocalBotDriver())
    assert sweeper.run_once(session.updated_at + timedelta(milliseconds=199)) == 0
    assert sweeper.run_once(session.updated_at + timedelta(milliseconds=200)) == 1
