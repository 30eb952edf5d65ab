"""Session domain rules without HTTP: creation, listing, start/stop with a driver, status reports, events."""

from __future__ import annotations

import pytest

from cortex.integrations.bots import LocalBotDriver
from cortex.lib import crypto, odin
from models.base import DomainError
from models.events import DomainEvent
from models.identity import create_project
from models.sessions import (
    DEFAULT_GATEWAY,
    BotCommandError,
    Session,
    create_session,
    get_session,
    list_session_bodies,
    session_body,
    set_session_status,
    start_session,
    stop_session,
)
from models.settings import AppSettings


class RecordingDriver:
    """Records commands; optionally fails them as an unreachable bot transport would."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.commands: list[tuple[str, str, str]] = []

    def start(self, session):
        self._record("start", session)

    def stop(self, session):
        self._record("stop", session)

    def _record(self, name, session):
        self.commands.append((name, session.id, session.status))
        if self.fail:
            raise BotCommandError("transport down")


def configure(project) -> None:
    AppSettings.create(project=project.id, token_provider_type="access_key", bot_user_id="bot",
                       access_key_encrypted=crypto.encrypt(odin.generate_access_key()))


def events(session_id: str) -> list[DomainEvent]:
    return list(DomainEvent.select().where(DomainEvent.resource_id == f"session:{session_id}").order_by(DomainEvent.seq))


@pytest.fixture
def project(owner):
    configure(owner.project)
    return owner.project


def new(project, owner, **kw) -> Session:
    kw.setdefault("auto_start", False)
    return create_session(project, owner.user.id, kw.pop("title", "Standup"), kw.pop("room", "room-1"), **kw)


def test_create_records_the_session_and_its_event(project, owner):
    session = new(project, owner, gateway="  ", idle_timeout=0)
    assert (session.status, session.gateway, session.idle_timeout) == ("created", DEFAULT_GATEWAY, 0)
    assert session.tenant_id == owner.user.tenant_id and session.created_by_user_id == owner.user.id
    [event] = events(session.id)
    assert (event.type, event.tenant_id, event.project_id, event.source) == (
        "session.created", project.tenant_id, project.id, "cortex:api")
    assert event.payload == {"action": "created", "data": session_body(session)}
    assert session_body(session)["idleTimeout"] == 0


def test_create_needs_configured_settings(owner):
    with pytest.raises(DomainError) as caught:
        new(owner.project, owner)
    assert caught.value.kind == "invalid"
    AppSettings.create(project=owner.project.id, token_provider_type="webservice")  # incomplete
    with pytest.raises(DomainError):
        new(owner.project, owner)
    assert Session.select().count() == 0


@pytest.mark.parametrize("fields", [{"room": ""}, {"room": " "}, {"idle_timeout": -5}, {"idle_timeout": True},
                                    {"idle_timeout": float("inf")}, {"gateway": 3}, {"title": None}])
def test_create_validates(project, owner, fields):
    with pytest.raises(DomainError) as caught:
        new(project, owner, **fields)
    assert caught.value.kind == "invalid"


def test_auto_start_needs_a_driver(project, owner):
    with pytest.raises(ValueError):
        new(project, owner, auto_start=True)


def test_auto_start_sends_the_start_command(project, owner):
    driver = RecordingDriver()
    session = new(project, owner, auto_start=True, driver=driver)
    assert session.status == "starting"
    assert driver.commands == [("start", session.id, "starting")]


def test_undeliverable_start_marks_the_session_error(project, owner):
    session = new(project, owner, auto_start=True, driver=RecordingDriver(fail=True))
    assert session.status == "error"  # the session was created all the same
    assert [e.payload.get("changes") for e in events(session.id)] == [None, {"status": "created"}, {"status": "starting"}]
    with pytest.raises(BotCommandError):
        stop_session(project, session.id, RecordingDriver(fail=True))
    assert get_session(project, session.id).status == "error"


def test_start_is_idempotent_but_resends(project, owner):
    session = new(project, owner)
    driver = RecordingDriver()
    start_session(project, session.id, driver)
    start_session(project, session.id, driver)
    assert [c[0] for c in driver.commands] == ["start", "start"]
    assert len(events(session.id)) == 2  # created, → starting; the repeat changed nothing


def test_stop_then_restart(project, owner):
    session = new(project, owner)
    driver = RecordingDriver()
    assert stop_session(project, session.id, driver).status == "stopping"
    assert stop_session(project, session.id, driver).status == "stopping"
    assert start_session(project, session.id, driver).status == "starting"
    assert [e.payload["changes"] for e in events(session.id)[1:]] == [{"status": "created"}, {"status": "stopping"}]


def test_unknown_and_foreign_sessions_are_404(project, owner, stranger):
    configure(stranger.project)
    theirs = new(stranger.project, stranger)
    for call in (lambda: get_session(project, theirs.id), lambda: get_session(project, "nope"),
                 lambda: start_session(project, theirs.id, RecordingDriver()),
                 lambda: stop_session(project, theirs.id, RecordingDriver())):
        with pytest.raises(DomainError) as caught:
            call()
        assert caught.value.kind == "not_found"


def test_listing_is_newest_first_and_matches_the_instances(project, owner):
    made = [new(project, owner, title=f"t{i}", idle_timeout=i * 1.5 or None) for i in range(5)]
    other, _ = create_project(owner.user, "Other")
    configure(other)
    new(other, owner)
    assert list_session_bodies(project) == [session_body(get_session(project, s.id)) for s in reversed(made)]
    assert list_session_bodies(other)[0]["projectId"] == other.id


def test_set_session_status(project, owner):
    session = new(project, owner)
    with pytest.raises(ValueError):
        set_session_status(session.id, "dancing")
    assert set_session_status("missing", "active") is None
    assert set_session_status(session.id, "active", project_id="another-project") is None
    updated = set_session_status(session.id, "active")
    assert updated.status == "active"
    assert set_session_status(session.id, "active", project_id=project.id).status == "active"
    [created, changed] = events(session.id)
    assert changed.source == "cortex:ingest"
    assert changed.payload == {"action": "updated", "data": session_body(updated), "changes": {"status": "created"}}
    assert get_session(project, session.id).updated_at > session.updated_at


def test_local_driver_completes_commands(project, owner):
    session = new(project, owner)
    driver = LocalBotDriver()
    driver.start(session)  # also usable on its own: created → starting → active
    assert get_session(project, session.id).status == "active"
    driver.start(get_session(project, session.id))  # already active: nothing
    assert [e.payload["data"]["status"] for e in events(session.id)] == ["created", "starting", "active"]
    assert stop_session(project, session.id, driver).status == "stopped"
    assert [e.payload["data"]["status"] for e in events(session.id)][3:] == ["stopping", "stopped"]
