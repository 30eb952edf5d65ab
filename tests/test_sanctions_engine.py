"""The sanctions engine: bot commands (sanction.apply / sanction.lift) for mute, listen_only, shadow_mute and
text_only in force for players present in live sessions — seen by the local driver and on the Redis channel —
and the clock that announces expiries and scheduled starts."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta

import pytest
import redis

from cortex.engines.sanctions import CONSUMER, SanctionEngine
from cortex.events import ingest
from cortex.integrations import bots as bot
from models.base import rfc3339, utcnow
from models.events import DomainEvent, EventCursor
from models.participants import Participant
from models.sanctions import Sanction
from models.sessions import BotCommandError, Session, set_session_status
from models.settings import cached_project_secret, sync_project_secret


def at(delta_seconds: float) -> str:
    return rfc3339(utcnow() + timedelta(seconds=delta_seconds))


def make_session(member, status: str = "active", room: str = "room-1") -> Session:
    project = member.project
    return Session.create(project=project.id, tenant_id=project.tenant_id, external_room_id=room, title="Match",
                          created_by_user_id=member.user.id, status=status)


class Game:
    """The owner's project as a game server sees it: signed ingest for joins/leaves, the API for sanctions."""

    def __init__(self, client, member):
        self.client, self.member = client, member
        sync_project_secret(member.project)
        self.secret = cached_project_secret(member.project)

    def _ingest(self, kind: str, session: Session, user: str) -> None:
        raw = json.dumps({"type": kind, "source": "voice:server", "resourceId": f"session:{session.id}",
                          "payload": {"action": "occurred", "data": {"sessionId": session.id, "userId": user,
                                                                     "displayName": user.title()}}}).encode()
        timestamp = rfc3339(utcnow())
        response = self.client.post("/api/events/ingest", data=raw, content_type="application/json", headers={
            "X-Project-Id": self.member.project.id, "X-Timestamp": timestamp,
            "X-Signature": ingest.sign(self.secret, timestamp, raw)})
        assert response.status_code == 201, response.get_data(as_text=True)

    def join(self, session: Session, user: str) -> None:
        self._ingest("participant.joined", session, user)

    def leave(self, session: Session, user: str) -> None:
        self._ingest("participant.left", session, user)

    def sanction(self, **body) -> dict:
        response = self.client.post(self.url(), json=body, headers=self.member.headers)
        assert response.status_code == 201, response.get_data(as_text=True)
        return response.get_json()

    def update(self, sanction_id: str, **body) -> dict:
        response = self.client.patch(self.url(f"/{sanction_id}"), json=body, headers=self.member.headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    def revoke(self, sanction_id: str) -> dict:
        response = self.client.post(self.url(f"/{sanction_id}/revoke"), json={"reason": "appeal"},
                                    headers=self.member.headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    def url(self, tail: str = "") -> str:
        return f"/api/projects/{self.member.project.id}/sanctions{tail}"


@pytest.fixture
def game(client, owner) -> Game:
    return Game(client, owner)


@pytest.fixture
def driver() -> bot.LocalBotDriver:
    return bot.LocalBotDriver()


@pytest.fixture
def engine(app, driver) -> SanctionEngine:
    return SanctionEngine(driver)


def commands(driver, engine) -> list[tuple]:
    """Run the engine over everything new; the commands it sent as (command, session, sanction id, type), then
    forget them."""
    engine.drain()
    seen = [(c["command"], c["sessionId"], c["sanction"]["id"], c["sanction"]["type"])
            for c in driver.sanction_commands]
    driver.sanction_commands.clear()
    return seen


def pass_the_clock(sanction_id: str, *, start=None, end=None) -> None:
    """Move a sanction's times back instead of waiting for them."""
    fields = {}
    if start is not None:
        fields["start_at"] = utcnow() + timedelta(seconds=start)
    if end is not None:
        fields["end_at"] = utcnow() + timedelta(seconds=end)
    Sanction.update(**fields).where(Sanction.id == sanction_id).execute()


# ---------------------------------------------------------------- apply and lift


def test_a_mute_for_a_present_player_is_applied_in_their_active_session(game, driver, engine, owner):
    session, elsewhere = make_session(owner), make_session(owner, room="room-2")
    game.join(session, "player-1")
    game.join(elsewhere, "player-2")
    assert commands(driver, engine) == []  # joins without sanctions: nothing to enforce
    mute = game.sanction(type="mute", externalUserId="player-1", endAt=at(3600), scope={"channels": ["team"]})
    engine.drain()
    [command] = driver.sanction_commands
    participant = Participant.get(Participant.external_user_id == "player-1")
    assert command == {
        "command": "sanction.apply", "sessionId": session.id, "projectId": owner.project.id,
        "tenantId": owner.project.tenant_id, "externalRoomId": "room-1",
        "sanction": {"id": mute["id"], "type": "mute", "externalUserId": "player-1", "participantId": participant.id,
                     "scope": {"channels": ["team"]}, "endAt": mute["endAt"]},
        "issuedAt": command["issuedAt"],
    }
    assert engine.sent == 1 and engine.failed == 0
    driver.sanction_commands.clear()
    assert commands(driver, engine) == []  # the cursor moved: nothing is sent twice by one engine


@pytest.mark.parametrize("kind", ["mute", "listen_only", "shadow_mute", "text_only"])
def test_each_bot_type_is_applied_and_lifted_on_revoke(game, driver, engine, owner, kind):
    session = make_session(owner)
    game.join(session, "player-1")
    sanction = game.sanction(type=kind, externalUserId="player-1")
    assert commands(driver, engine) == [("sanction.apply", session.id, sanction["id"], kind)]
    game.revoke(sanction["id"])
    assert commands(driver, engine) == [("sanction.lift", session.id, sanction["id"], kind)]


def test_expiry_lifts_through_the_clock(game, driver, engine, owner):
    session = make_session(owner)
    game.join(session, "player-1")
    mute = game.sanction(type="mute", externalUserId="player-1", endAt=at(3600))
    assert commands(driver, engine) == [("sanction.apply", session.id, mute["id"], "mute")]
    pass_the_clock(mute["id"], start=-7200, end=-1)
    assert engine.tick() == 1  # announce_transitions: sanction.updated (active → expired)
    assert [(c["command"], c["sanction"]["id"]) for c in driver.sanction_commands] == [("sanction.lift", mute["id"])]
    driver.sanction_commands.clear()
    assert engine.tick() == 0 and commands(driver, engine) == []  # announced once


def test_a_player_who_joins_later_gets_the_apply_in_that_session(game, driver, engine, owner):
    session = make_session(owner)
    mute = game.sanction(type="text_only", externalUserId="player-1")
    assert commands(driver, engine) == []  # not present anywhere
    game.join(session, "player-1")
    assert commands(driver, engine) == [("sanction.apply", session.id, mute["id"], "text_only")]
    command_participant = Participant.get(Participant.external_user_id == "player-1").id
    game.join(make_session(owner, room="room-2"), "player-1")
    engine.drain()
    [again] = driver.sanction_commands
    assert again["externalRoomId"] == "room-2" and again["sanction"]["participantId"] == command_participant


def test_a_player_who_left_again_before_the_engine_ran_gets_nothing(game, driver, engine, owner):
    session = make_session(owner)
    game.sanction(type="mute", externalUserId="player-1")
    game.join(session, "player-1")
    game.leave(session, "player-1")
    assert commands(driver, engine) == []


@pytest.mark.parametrize("kind", ["warn", "temp_ban", "perm_ban", "rate_limit", "party_restriction", "human_review"])
def test_types_the_bot_does_not_enforce_send_nothing(game, driver, engine, owner, kind):
    session = make_session(owner)
    game.join(session, "player-1")
    sanction = game.sanction(type=kind, externalUserId="player-1", endAt=at(3600))
    game.update(sanction["id"], reason="still")
    game.join(session, "player-1")
    game.revoke(sanction["id"])
    assert commands(driver, engine) == []


def test_nothing_when_the_player_is_not_present_in_a_live_session(game, driver, engine, owner):
    stopped, created = make_session(owner, status="stopped"), make_session(owner, status="created", room="room-2")
    game.join(stopped, "player-1")  # recorded closed: nobody is present in an ended session
    game.join(created, "player-2")  # present, but no bot in the room yet
    game.join(make_session(owner, room="room-3"), "player-3")
    first = game.sanction(type="mute", externalUserId="player-1")
    second = game.sanction(type="mute", externalUserId="player-2")
    game.sanction(type="mute", externalUserId="player-4")  # never joined
    assert commands(driver, engine) == []
    game.revoke(first["id"])
    game.revoke(second["id"])
    assert commands(driver, engine) == []


def test_a_session_becoming_active_gets_what_is_in_force_there(game, driver, engine, owner):
    session = make_session(owner, status="created")
    game.join(session, "player-1")
    mute = game.sanction(type="mute", externalUserId="player-1")
    named = game.sanction(type="listen_only", externalUserId="player-9", sessionId=session.id)
    assert commands(driver, engine) == []
    set_session_status(session.id, "active", source="cortex:api")
    assert sorted(commands(driver, engine)) == sorted([("sanction.apply", session.id, mute["id"], "mute"),
                                                       ("sanction.apply", session.id, named["id"], "listen_only")])


def test_a_sanction_naming_a_session_goes_to_that_session_only(game, driver, engine, owner):
    first, second = make_session(owner), make_session(owner, room="room-2")
    game.join(first, "player-1")
    game.join(second, "player-1")
    scoped = game.sanction(type="mute", externalUserId="player-1", sessionId=first.id)
    assert commands(driver, engine) == [("sanction.apply", first.id, scoped["id"], "mute")]
    game.join(second, "player-1")  # a join elsewhere does not bring it along
    assert commands(driver, engine) == []
    wide = game.sanction(type="shadow_mute", externalUserId="player-1")
    assert sorted(commands(driver, engine)) == sorted([("sanction.apply", first.id, wide["id"], "shadow_mute"),
                                                       ("sanction.apply", second.id, wide["id"], "shadow_mute")])


def test_updates_reapply_or_lift_from_the_current_state(game, driver, engine, owner):
    session = make_session(owner)
    game.join(session, "player-1")
    mute = game.sanction(type="mute", externalUserId="player-1", endAt=at(600))
    assert commands(driver, engine) == [("sanction.apply", session.id, mute["id"], "mute")]
    longer = game.update(mute["id"], endAt=at(7200))  # a new end reaches the bot
    engine.drain()
    [command] = driver.sanction_commands
    assert command["command"] == "sanction.apply" and command["sanction"]["endAt"] == longer["endAt"]
    driver.sanction_commands.clear()
    game.update(mute["id"], type="listen_only")
    assert commands(driver, engine) == [("sanction.apply", session.id, mute["id"], "listen_only")]
    game.update(mute["id"], type="warn")  # away from the bot types: lifted, naming the type that was enforced
    assert commands(driver, engine) == [("sanction.lift", session.id, mute["id"], "listen_only")]
    game.update(mute["id"], reason="just a warning now")
    assert commands(driver, engine) == []
    game.update(mute["id"], type="mute")
    assert commands(driver, engine) == [("sanction.apply", session.id, mute["id"], "mute")]


def test_an_expired_mute_extended_again_is_applied_again(game, driver, engine, owner):
    session = make_session(owner)
    game.join(session, "player-1")
    mute = game.sanction(type="mute", externalUserId="player-1", endAt=at(3600))
    pass_the_clock(mute["id"], start=-7200, end=-1)
    assert engine.tick() == 1
    assert commands(driver, engine) == [("sanction.lift", session.id, mute["id"], "mute")]
    game.update(mute["id"], endAt=at(3600))
    assert commands(driver, engine) == [("sanction.apply", session.id, mute["id"], "mute")]


def test_a_scheduled_mute_is_applied_when_it_comes_into_force(game, driver, engine, owner):
    session = make_session(owner)
    game.join(session, "player-1")
    mute = game.sanction(type="mute", externalUserId="player-1", startAt=at(600), endAt=at(3600))
    assert commands(driver, engine) == []  # scheduled: not in force yet
    game.revoke(game.sanction(type="mute", externalUserId="player-1", startAt=at(600))["id"])
    assert commands(driver, engine) == []  # revoked before it started: nothing to lift
    pass_the_clock(mute["id"], start=-1)
    assert engine.tick() == 1
    assert [(c["command"], c["sanction"]["id"]) for c in driver.sanction_commands] == [("sanction.apply", mute["id"])]


def test_replaying_the_log_derives_commands_from_the_current_state(game, driver, engine, owner):
    """At least once: events handed over again (a crash before the cursor moved, two processes on one cursor)
    never re-apply a sanction that ended since."""
    session = make_session(owner)
    game.join(session, "player-1")
    mute = game.sanction(type="mute", externalUserId="player-1")
    kept = game.sanction(type="text_only", externalUserId="player-1")
    assert len(commands(driver, engine)) == 2
    game.revoke(mute["id"])
    assert commands(driver, engine) == [("sanction.lift", session.id, mute["id"], "mute")]
    EventCursor.update(seq=0).where(EventCursor.consumer == CONSUMER).execute()
    replayed = commands(driver, engine)
    assert ("sanction.apply", session.id, mute["id"], "mute") not in replayed
    assert set(replayed) == {("sanction.lift", session.id, mute["id"], "mute"),
                             ("sanction.apply", session.id, kept["id"], "text_only")}


def test_a_driver_failure_is_logged_and_the_engine_goes_on(game, engine, owner, caplog):
    class Failing(bot.LocalBotDriver):
        def apply_sanction(self, session, sanction):
            raise BotCommandError("no bot worker is subscribed")

    engine.driver = failing = Failing()
    session = make_session(owner)
    game.join(session, "player-1")
    mute = game.sanction(type="mute", externalUserId="player-1")
    engine.drain()
    assert engine.failed == 1 and engine.sent == 0
    assert "not delivered" in caplog.text and mute["id"] in caplog.text
    assert engine.dispatcher.cursor == DomainEvent.select(DomainEvent.seq).order_by(DomainEvent.seq.desc()).scalar()
    game.revoke(mute["id"])
    engine.drain()
    assert [c["command"] for c in failing.sanction_commands] == ["sanction.lift"] and engine.sent == 1


def test_the_engine_runs_in_the_background(game, driver, owner):
    engine = SanctionEngine(driver, poll_interval=0.05, clock_interval=0.1)
    session = make_session(owner)
    game.join(session, "player-1")
    mute = game.sanction(type="mute", externalUserId="player-1", endAt=at(3600))
    engine.start()
    try:
        deadline = time.monotonic() + 10
        while not driver.sanction_commands and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [c["command"] for c in driver.sanction_commands] == ["sanction.apply"]
        pass_the_clock(mute["id"], start=-7200, end=-1)  # the clock job announces it, the dispatcher lifts
        while len(driver.sanction_commands) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [c["command"] for c in driver.sanction_commands] == ["sanction.apply", "sanction.lift"]
    finally:
        engine.stop()


# ---------------------------------------------------------------- the expiry job


def test_the_clock_announces_an_expiry_once(game, engine):
    sanction = game.sanction(type="warn", externalUserId="player-1", endAt=at(60))
    later = utcnow() + timedelta(seconds=61)
    assert engine.clock.run_once(utcnow()) == 0
    assert engine.clock.run_once(later) == 1
    assert engine.clock.run_once(later) == 0  # running again announces nothing new
    [event] = DomainEvent.select().where(DomainEvent.type == "sanction.updated")
    assert event.resource_id == f"sanction:{sanction['id']}"
    assert event.payload["changes"]["status"] == "active" and event.payload["changes"]["isActive"] is True
    assert event.payload["data"]["status"] == "expired" and event.payload["data"]["isActive"] is False


# ---------------------------------------------------------------- the Redis channel


@pytest.fixture
def redis_url():
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("REDIS_URL is not set")
    return url


def test_commands_are_published_on_the_redis_channel(game, owner, redis_url):
    listener = redis.Redis.from_url(redis_url, socket_connect_timeout=1)
    driver = bot.RedisBotDriver(redis_url)
    engine = SanctionEngine(driver)
    pubsub = listener.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(bot.COMMANDS_CHANNEL)
    try:
        pubsub.get_message(timeout=1)  # the subscription confirmation
        session = make_session(owner)
        game.join(session, "player-1")
        mute = game.sanction(type="mute", externalUserId="player-1", endAt=at(3600))
        engine.drain()
        applied = json.loads(pubsub.get_message(timeout=5)["data"])
        participant = Participant.get(Participant.external_user_id == "player-1")
        assert applied == {
            "command": "sanction.apply", "sessionId": session.id, "projectId": owner.project.id,
            "tenantId": owner.project.tenant_id, "externalRoomId": "room-1",
            "sanction": {"id": mute["id"], "type": "mute", "externalUserId": "player-1",
                         "participantId": participant.id, "scope": None, "endAt": mute["endAt"]},
            "issuedAt": applied["issuedAt"],
        }
        game.revoke(mute["id"])
        engine.drain()
        lifted = json.loads(pubsub.get_message(timeout=5)["data"])
        assert lifted["command"] == "sanction.lift" and lifted["sanction"]["id"] == mute["id"]
        assert engine.sent == 2 and engine.failed == 0
        assert Session.get_by_id(session.id).status == "active"  # sanction commands never touch the session
    finally:
        pubsub.close()
        listener.close()
        driver.client.close()


def test_an_unheard_redis_command_is_counted_as_failed(game, owner, redis_url):
    driver = bot.RedisBotDriver(redis_url, channel="cortex:bot:commands:nobody-listens")
    engine = SanctionEngine(driver)
    try:
        session = make_session(owner)
        game.join(session, "player-1")
        game.sanction(type="mute", externalUserId="player-1")
        engine.drain()
        assert engine.failed == 1 and engine.sent == 0
        assert Session.get_by_id(session.id).status == "active"
    finally:
        driver.client.close()
