"""Signed ingest, replay-safe and server-timed (security issue 13, part 3).

- A request replayed byte for byte within the window answers 201 with the first one's ``id`` and records
  nothing (no second event, no second state change) — with the database as the guard and, when ``REDIS_URL``
  is set, with Redis; two identical requests at once make one event (real `cortex serve` processes).
- A different body or timestamp is a new request; after the window a replay is refused (401).
- The log's clock is the receive time: an event reporting a 30-day-old time survives retention, is replayed
  in receive order, and its reported time is still its envelope's ``timestamp``.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import replace
from datetime import timedelta

import pytest

from cortex.events import ingest
from cortex.events.retention import RetentionJob
from models import ingest as replays
from models.base import is_sqlite, rfc3339, transaction, utcnow
from models.events import DomainEvent, GroupCommit, event_body
from models.ingest import IngestReplay, prune_replays
from models.messages import Message
from models.sessions import PresenceSpan, Session
from tests.handlers.test_ingest import URL, event, events, make_session, post, secret_of
from tests.handlers.test_sse import REPLAY_SECONDS, open_stream, set_max_seconds
from tests.test_group_commit import ingest_item, run_together

REDIS_URL = os.environ.get("REDIS_URL")


@pytest.fixture
def signer(owner):
    owner.cached = secret_of(owner)
    return owner


@pytest.fixture(params=["database", "redis"])
def guard(request, app):
    """Run the test with the database as the replay guard, then (only when REDIS_URL is set) with Redis."""
    runtime = app.extensions["cortex"]
    if request.param == "redis":
        if not REDIS_URL:
            pytest.skip("REDIS_URL is not set: the shared replay guard is Redis")
        runtime.settings = replace(runtime.settings, redis_url=REDIS_URL)
    else:
        runtime.settings = replace(runtime.settings, redis_url=None)
    return request.param


@pytest.fixture
def database_guard(app):
    """The database as the replay guard (REDIS_URL or not)."""
    runtime = app.extensions["cortex"]
    runtime.settings = replace(runtime.settings, redis_url=None)


class Signed:
    """One signed request, frozen: ``send()`` posts exactly the same bytes, headers and signature again."""

    def __init__(self, client, member, body: dict, *, timestamp: str | None = None):
        self.client, self.member = client, member
        self.raw = json.dumps(body).encode()
        self.timestamp = timestamp or rfc3339(utcnow())
        self.signature = ingest.sign(member.cached, self.timestamp, self.raw)

    def send(self, signature: str | None = None):
        return post(self.client, self.member.project.id, None, raw=self.raw, timestamp=self.timestamp,
                    signature=signature or self.signature)

    def headers(self) -> dict:
        return {"X-Project-Id": self.member.project.id, "X-Timestamp": self.timestamp, "X-Signature": self.signature}


def created_id(response) -> str:
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()["id"]


# ---------------------------------------------------------------- replays within the window


def test_a_replay_answers_the_first_id_and_logs_nothing(client, signer, guard):
    request = Signed(client, signer, event("server.started", {"serverId": "srv-1"}, resource_id="server:srv-1"))
    first = created_id(request.send())
    assert created_id(request.send()) == first
    assert created_id(request.send(request.signature.upper())) == first  # the same signature, spelled otherwise
    assert [e.id for e in events()] == [first]
    assert IngestReplay.select().count() == (1 if guard == "database" else 0)


def test_a_replayed_leave_does_not_move_presence_again(client, signer, guard):
    session = make_session(signer)
    data = {"sessionId": session.id, "userId": "odin-7", "peerId": 42, "displayName": "Ada"}
    join = Signed(client, signer, event("participant.joined", data, resource_id=f"session:{session.id}"))
    created_id(join.send())
    leave = Signed(client, signer, event("participant.left", data, resource_id=f"session:{session.id}"))
    left = created_id(leave.send())
    rejoin = Signed(client, signer, event("participant.joined", data, resource_id=f"session:{session.id}",
                                          timestamp=rfc3339(utcnow())))
    created_id(rejoin.send())
    assert PresenceSpan.select().where(PresenceSpan.left_at.is_null()).count() == 1  # present again

    assert created_id(leave.send()) == left  # the captured leave, replayed: not a second leave
    assert PresenceSpan.select().where(PresenceSpan.left_at.is_null()).count() == 1  # still present
    assert [m.content for m in Message.select().order_by(Message.event_seq)] == ["Ada joined", "Ada left",
                                                                                  "Ada joined"]
    assert len(events("participant.left")) == 1


def test_a_replayed_status_does_not_move_the_session_again(client, signer, guard):
    session = make_session(signer, status="starting")

    def status(value: str) -> Signed:
        return Signed(client, signer, event("bot.status.changed", {"sessionId": session.id, "status": value},
                                            resource_id=f"session:{session.id}", action="updated",
                                            timestamp=rfc3339(utcnow())))

    active = status("active")
    first = created_id(active.send())
    created_id(status("stopping").send())
    assert created_id(active.send()) == first
    assert Session.get_by_id(session.id).status == "stopping"
    assert [e.type for e in events()] == ["session.updated", "bot.status.changed",
                                          "session.updated", "bot.status.changed"]


def test_a_replayed_message_without_an_id_is_stored_once(client, signer, guard):
    session = make_session(signer)
    request = Signed(client, signer, event("message.created", {"sessionId": session.id, "senderName": "Ada",
                                                               "content": "gg", "userId": "odin-7"},
                                           resource_id=f"session:{session.id}", action="created"))
    first = created_id(request.send())
    assert created_id(request.send()) == first
    assert [m.event_id for m in Message.select()] == [first]
    assert len(events("message.created")) == 1


def test_replays_are_answered_before_the_rate_limit(client, signer, frozen_clock, guard):
    """A stranger replaying a captured request spends none of the project's budget."""
    request = Signed(client, signer, event("image.ready", {"id": "i1"}))
    first = created_id(request.send())
    for _ in range(ingest.RATE_LIMIT + 5):
        assert created_id(request.send()) == first
    assert created_id(Signed(client, signer, event("image.ready", {"id": "i2"})).send()) != first


@pytest.fixture
def frozen_clock(app, monkeypatch):
    limiter = ingest.rate_limiter(app.extensions["cortex"].settings.redis_url)
    monkeypatch.setattr(limiter, "clock", lambda: 1_900_000_000.25)


def test_another_body_or_timestamp_is_a_new_request(client, signer, guard):
    body = event("image.ready", {"id": "i1"})
    timestamp = rfc3339(utcnow())
    first = created_id(Signed(client, signer, body, timestamp=timestamp).send())
    other_body = created_id(Signed(client, signer, {**body, "resourceId": "image:i1"}, timestamp=timestamp).send())
    later = rfc3339(utcnow() + timedelta(milliseconds=1))
    other_time = created_id(Signed(client, signer, body, timestamp=later).send())
    assert len({first, other_body, other_time}) == 3
    assert len(events()) == 3


def test_a_failed_request_is_not_remembered(client, signer, guard):
    """Nothing recorded, nothing remembered: the same request is processed (and refused) again."""
    body = event("bot.status.changed", {"sessionId": "no-such-session", "status": "active"})
    request = Signed(client, signer, body)
    assert request.send().status_code == 400
    assert request.send().status_code == 400
    assert IngestReplay.select().count() == 0 and events() == []


def test_after_the_window_a_replay_is_refused_and_its_record_expires(client, signer, database_guard, monkeypatch):
    request = Signed(client, signer, event("image.ready", {"id": "i1"}))
    created_id(request.send())
    later = utcnow() + ingest.MAX_CLOCK_SKEW + timedelta(seconds=1)
    monkeypatch.setattr(ingest, "utcnow", lambda: later)
    assert request.send().status_code == 401
    assert len(events()) == 1
    [record] = IngestReplay.select()
    assert record.expires_at <= utcnow() + ingest.MAX_CLOCK_SKEW + ingest.REPLAY_MARGIN
    assert prune_replays(utcnow()) == 0  # still within its window (+ margin)
    assert prune_replays(record.expires_at + timedelta(seconds=1)) == 1
    assert IngestReplay.select().count() == 0


def test_expired_records_are_swept_by_ingest_and_by_retention(client, signer, database_guard, monkeypatch):
    with transaction():
        replays.remember("a" * 64, signer.project.id, "e1", utcnow() - timedelta(seconds=1))
        replays.remember("b" * 64, signer.project.id, "e2", utcnow() + timedelta(minutes=5))
    RetentionJob().run_once()
    assert [r.key for r in IngestReplay.select()] == ["b" * 64]

    with transaction():
        replays.remember("c" * 64, signer.project.id, "e3", utcnow() - timedelta(seconds=1))
    sweeper = ingest.DatabaseReplays(sweep_interval=3600)
    monkeypatch.setattr(ingest, "database_replays", sweeper)
    first = created_id(Signed(client, signer, event("image.ready", {"id": "i1"})).send())
    recorded = {r.key: r.event_id for r in IngestReplay.select()}
    assert "c" * 64 not in recorded and recorded["b" * 64] == "e2" and first in recorded.values()
    with transaction():
        replays.remember("d" * 64, signer.project.id, "e4", utcnow() - timedelta(seconds=1))
    created_id(Signed(client, signer, event("image.ready", {"id": "i2"})).send())
    assert IngestReplay.select().where(IngestReplay.key == "d" * 64).count() == 1  # at most once per interval


def test_a_request_that_lost_the_race_answers_the_winners_id(client, signer, database_guard, monkeypatch):
    """Both copies passed the look-up before either committed: the primary key lets one commit; the other
    writes nothing (its leave is rolled back) and answers the winner's id."""
    session = make_session(signer)
    data = {"sessionId": session.id, "userId": "odin-7"}
    created_id(Signed(client, signer, event("participant.joined", data)).send())
    leave = Signed(client, signer, event("participant.left", data))
    winner = created_id(leave.send())
    looked_up = []
    real = ingest.recorded_event

    def racing(key):  # the loser's first look-up ran before the winner committed
        looked_up.append(key)
        return None if len(looked_up) == 1 else real(key)

    monkeypatch.setattr(ingest, "recorded_event", racing)
    assert created_id(leave.send()) == winner
    assert len(looked_up) == 2
    assert len(events("participant.left")) == 1
    assert [m.content for m in Message.select().order_by(Message.event_seq)] == ["odin-7 joined", "odin-7 left"]


def replay_target(member, key: str) -> ingest.Target:
    return ingest.Target(member.project, False, ingest.Replay(key, utcnow() + timedelta(minutes=6)))


def test_batched_look_ups_answer_what_single_look_ups_answer(client, signer):
    """ReplayReads: the look-ups of concurrent requests in one query (PostgreSQL; each alone on SQLite), each
    answered exactly as its own single look-up."""
    with transaction():
        replays.remember("a" * 64, signer.project.id, "e1", utcnow() + timedelta(minutes=5))
        replays.remember("b" * 64, signer.project.id, "e2", utcnow() + timedelta(minutes=5))
    keys = ["a" * 64, "c" * 64, "b" * 64, "a" * 64]  # one unknown, one asked twice
    reads = ingest.ReplayReads(enabled=True)
    greenlets = run_together(reads, keys)
    assert [g.get() for g in greenlets] == ["e1", None, "e2", "e1"] == [replays.recorded_event(k) for k in keys]
    assert reads.serve_many(keys) == ["e1", None, "e2", "e1"]
    assert replays.recorded_events([]) == {}
    if not is_sqlite():
        assert reads.batches < len(keys)


def test_a_batch_records_its_requests_in_one_insert_and_a_clash_falls_back_to_each_alone(client, signer):
    """The replay records of a group-commit batch of message.created: one multi-row INSERT; two copies of one
    request in the batch (or one already recorded) roll it back, each runs alone, and exactly the copy whose
    record committed answers its event (the others ReplayConflict, then the guard answers the winner's id)."""
    session = make_session(signer)
    with transaction():
        replays.remember("0" * 64, signer.project.id, "e0", utcnow() + timedelta(minutes=5))

    def item(key: str, external_id: str):
        return (*ingest_item(signer.project, session, external_id), replay_target(signer, key))

    group = GroupCommit(ingest._write_messages, ingest._write_message, enabled=True)
    fine = run_together(group, [item("1" * 64, "m1"), item("2" * 64, "m2")])
    assert group.batches == 1 and all(g.successful() for g in fine)
    assert {r.key: r.event_id for r in IngestReplay.select()} == {
        "0" * 64: "e0", "1" * 64: fine[0].get(), "2" * 64: fine[1].get()}

    keys = ["3" * 64, "4" * 64, "3" * 64, "0" * 64, "5" * 64]
    greenlets = run_together(group, [item(key, f"n{i}") for i, key in enumerate(keys)])
    lost = [isinstance(g.exception, replays.ReplayConflict) for g in greenlets]
    assert lost == [False, False, True, True, False]
    recorded = {r.key: r.event_id for r in IngestReplay.select()}
    for key, greenlet, clashed in zip(keys, greenlets, lost, strict=True):
        if not clashed:
            assert recorded[key] == greenlet.get()
    assert recorded["0" * 64] == "e0"
    assert sorted(m.external_id for m in Message.select()) == ["m1", "m2", "n0", "n1", "n4"]  # losers left none


def concurrent_copies(servers_, request: Signed, copies: int) -> list[tuple[int, bytes]]:
    """Send ``copies`` identical requests at once, spread over the servers; their (status, body)."""
    results: list = [None] * copies
    start = threading.Barrier(copies)

    def send(index: int) -> None:
        start.wait(10)
        results[index] = servers_[index % len(servers_)].request_raw("POST", URL, request.raw, request.headers())

    threads = [threading.Thread(target=send, args=(i,)) for i in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


@pytest.mark.parametrize("shared", ["database", "redis"])
def test_identical_requests_at_once_on_two_processes_make_one_event(servers, client, signer, shared):
    """Real `cortex serve` processes (gevent, group commit) sharing the database, and Redis when set."""
    if shared == "redis" and not REDIS_URL:
        pytest.skip("REDIS_URL is not set: the shared replay guard is Redis")
    session = make_session(signer, status="starting")
    body = event("bot.status.changed", {"sessionId": session.id, "status": "active"},
                 resource_id=f"session:{session.id}", action="updated")
    request = Signed(client, signer, body)
    a, b = servers(2, REDIS_URL if shared == "redis" else None)
    results = concurrent_copies([a, b], request, 8)
    assert {status for status, _ in results} == {201}, results
    ids = {json.loads(raw)["id"] for _, raw in results}
    assert len(ids) == 1
    assert [e.id for e in events("bot.status.changed")] == list(ids)
    assert len(events("session.updated")) == 1
    assert IngestReplay.select().count() == (1 if shared == "database" else 0)

    for server in (a, b):  # and replayed later, to either process
        status, raw = server.request_raw("POST", URL, request.raw, request.headers())
        assert (status, {json.loads(raw)["id"]}) == (201, ids)
    assert len(events("bot.status.changed")) == 1


@pytest.mark.skipif(not REDIS_URL, reason="needs REDIS_URL")
def test_the_redis_guard_is_shared_by_two_guards_and_released_on_failure(client, signer, app):
    """Two processes' guards (each its own client) see each other's requests; a failed request frees its key."""
    first_process, second_process = (ingest.RedisReplays(REDIS_URL, ingest.DatabaseReplays()) for _ in range(2))
    target = ingest.Target(signer.project, False, ingest.Replay(os.urandom(32).hex(), utcnow() + timedelta(minutes=6)))
    calls = []

    def accept(guarded):
        assert guarded.replay is None  # Redis is the guard: no database record
        calls.append(guarded)
        return f"event-{len(calls)}"

    assert first_process.run(target, accept) == "event-1"
    assert second_process.run(target, accept) == "event-1"
    assert len(calls) == 1

    other = replace(target, replay=ingest.Replay(os.urandom(32).hex(), target.replay.expires_at))

    def fail(_guarded):
        raise ValueError("boom")

    with pytest.raises(ValueError):
        first_process.run(other, fail)
    assert second_process.run(other, accept) == "event-2"  # the failed claim was released


# ---------------------------------------------------------------- the log's clock is the receive time


def test_an_event_reporting_an_old_time_survives_retention_and_replays_in_receive_order(app, client, signer, guard):
    session = make_session(signer)
    old = rfc3339(utcnow() - timedelta(days=30))
    ids = [
        created_id(Signed(client, signer, event("image.ready", {"id": "before"})).send()),
        created_id(Signed(client, signer, event("image.ready", {"id": "old"}, timestamp=old)).send()),
        created_id(Signed(client, signer, event("message.created", {
            "sessionId": session.id, "senderName": "Ada", "content": "late", "timestamp": old,
        }, resource_id=f"session:{session.id}", action="created")).send()),
        created_id(Signed(client, signer, event("image.ready", {"id": "after"})).send()),
    ]
    assert RetentionJob(retention_days=7).run_once() == 0
    logged = {e.id: e for e in events()}
    assert set(ids) <= set(logged)
    assert rfc3339(logged[ids[1]].occurred_at) == old  # the reported time, still readable
    assert event_body(logged[ids[1]])["timestamp"] == old
    assert event_body(logged[ids[2]])["timestamp"] == old
    assert all(utcnow() - logged[i].timestamp < timedelta(minutes=1) for i in ids)  # the log's clock: receive time

    set_max_seconds(app, REPLAY_SECONDS)
    reader = open_stream(app, headers={**signer.headers, "Last-Event-ID": ids[0]})
    replayed = [f.envelope for f in reader.rest() if f.is_event]
    assert [e["id"] for e in replayed if e["type"] == "image.ready"] == [ids[1], ids[3]]  # receive order
    assert [e["timestamp"] for e in replayed if e["id"] in ids[1:3]] == [old, old]

    # an event received longer ago than the retention is still pruned
    DomainEvent.update(timestamp=utcnow() - timedelta(days=8)).where(DomainEvent.id == ids[0]).execute()
    assert RetentionJob(retention_days=7).run_once() == 1
    assert DomainEvent.select().where(DomainEvent.id == ids[0]).count() == 0
