"""The event dispatcher (outbox → consumers, at least once), the live fan-out (in-process and Redis), retention."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest

from cortex.events.dispatcher import Dispatcher
from cortex.events.fanout import BATCH_TYPE, CHANNEL, LiveEvent, LiveFanout, start_event_pipeline
from cortex.events.retention import RetentionJob
from models.base import new_id, transaction, utcnow
from models.events import DomainEvent, EventCursor, emit, event_body, prune_events

REDIS_TEST_URL = "redis://127.0.0.1:6379/15"
TENANT = new_id()
PROJECT = new_id()


def emit_session(title: str = "Match") -> DomainEvent:
    """Commit one session.created event (its own transaction, as a domain operation would)."""
    session_id = new_id()
    with transaction():
        return emit(
            "session.created",
            tenant_id=TENANT,
            project_id=PROJECT,
            resource_id=f"session:{session_id}",
            action="created",
            data={"id": session_id, "title": title},
        )


def wait_for(condition, timeout: float = 10.0) -> None:
    """Poll until ``condition()`` is true (background threads deliver asynchronously)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


class Recorder:
    """A handler recording every batch; ``fail`` makes the next calls raise."""

    def __init__(self, fail: int = 0):
        self.batches: list[list[DomainEvent]] = []
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, events):
        with self.lock:
            if self.fail:
                self.fail -= 1
                raise RuntimeError("consumer is down")
            self.batches.append(list(events))

    @property
    def seqs(self) -> list[int]:
        with self.lock:
            return [event.seq for batch in self.batches for event in batch]


# ----------------------------------------------------------------- persistent dispatcher


def test_event_committed_while_no_dispatcher_runs_is_delivered_later(app):
    event = emit_session("committed before any dispatcher")
    recorder = Recorder()
    dispatcher = Dispatcher("webhooks", recorder)  # started only now: nothing was published at commit time

    assert dispatcher.run_once() == 1
    [[received]] = recorder.batches
    assert received.seq == event.seq
    wire = event_body(received)
    assert wire == event_body(DomainEvent.get_by_id(event.seq))
    assert wire["type"] == "session.created" and wire["id"] == event.id and wire["projectId"] == PROJECT
    assert wire["payload"] == {"action": "created", "data": {"id": event.payload["data"]["id"],
                                                             "title": "committed before any dispatcher"}}
    assert EventCursor.get_by_id("webhooks").seq == event.seq
    assert dispatcher.run_once() == 0  # nothing twice


def test_missing_cursor_starts_at_zero_and_consumers_are_independent(app):
    first, second = emit_session(), emit_session()
    a, b = Recorder(), Recorder()
    assert Dispatcher("a", a).run_once() == 2
    assert Dispatcher("b", b, batch=1).run_once() == 1
    assert a.seqs == [first.seq, second.seq] and b.seqs == [first.seq]
    assert {c.consumer: c.seq for c in EventCursor.select()} == {"a": second.seq, "b": first.seq}


def test_handler_failure_keeps_the_cursor_and_the_events_come_again(app):
    events = [emit_session(f"m{i}") for i in range(3)]
    recorder = Recorder(fail=1)
    dispatcher = Dispatcher("webhooks", recorder)

    with pytest.raises(RuntimeError, match="consumer is down"):
        dispatcher.run_once()
    assert dispatcher.cursor == 0  # created at 0, not moved
    assert dispatcher.run_once() == 3
    assert recorder.seqs == [e.seq for e in events]
    assert dispatcher.cursor == events[-1].seq


def test_events_committed_during_a_run_come_next_in_order_without_gap_or_duplicate(app):
    emitted = [emit_session("before")]

    def handler(events):
        recorder(events)
        if len(recorder.batches) == 1:  # commit more while the first batch is being handled
            emitted.extend(emit_session(f"during {i}") for i in range(4))

    recorder = Recorder()
    dispatcher = Dispatcher("webhooks", handler, batch=3)
    assert dispatcher.run_once() == 1
    assert dispatcher.run_once() == 3  # batches are capped
    assert dispatcher.run_once() == 1
    assert dispatcher.run_once() == 0
    assert recorder.seqs == [e.seq for e in emitted] == sorted(e.seq for e in emitted)


def test_background_dispatcher_sees_concurrent_writers_in_seq_order(app):
    recorder = Recorder()
    dispatcher = Dispatcher("webhooks", recorder, batch=7, poll_interval=0.01)
    emitted: list[int] = []
    lock = threading.Lock()

    def writer(count: int):
        for i in range(count):
            seq = emit_session(f"w{i}").seq
            with lock:
                emitted.append(seq)

    dispatcher.start()
    try:
        writers = [threading.Thread(target=writer, args=(25,)) for _ in range(3)]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join()
        wait_for(lambda: len(recorder.seqs) >= 75)
    finally:
        dispatcher.stop()
    assert recorder.seqs == sorted(emitted)  # every event once, in seq order
    assert EventCursor.get_by_id("webhooks").seq == max(emitted)


def test_run_forever_survives_handler_failures(app, caplog):
    event = emit_session()
    recorder = Recorder(fail=2)
    dispatcher = Dispatcher("webhooks", recorder, poll_interval=0.01)
    dispatcher.start()
    try:
        wait_for(lambda: recorder.seqs == [event.seq])
    finally:
        dispatcher.stop()
    assert "batch failed" in caplog.text
    assert not dispatcher._worker.alive


# ----------------------------------------------------------------- live fan-out


def test_live_fanout_delivers_to_two_subscribers_in_process():
    fanout = LiveFanout()
    first, second = fanout.subscribe(), fanout.subscribe()
    items = [{"id": new_id(), "type": "session.created"} for _ in range(2)]
    fanout.publish(items)
    assert [first.get(1), first.get(1)] == items
    assert [second.get(1), second.get(1)] == items
    assert first.get(0.01) is None  # nothing more
    fanout.unsubscribe(first)
    fanout.publish([{"id": new_id()}])
    assert first.closed and first.get(0.01) is None
    assert second.get(1) is not None
    fanout.stop()
    assert second.closed


def test_slow_subscriber_is_dropped_without_blocking_the_others():
    fanout = LiveFanout(queue_size=2)
    slow, fast = fanout.subscribe(), fanout.subscribe(maxsize=10)
    items = [{"id": new_id()} for _ in range(3)]
    fanout.publish(items)
    assert slow.closed and slow.get(0.01) is None and slow.reason == "overflow"
    assert [fast.get(1) for _ in items] == items
    assert fanout.subscriber_count == 1
    fanout.stop()
    assert fast.closed and fast.reason == "stopped"


def test_subscription_filter_and_duplicate_envelopes():
    fanout = LiveFanout()
    mine = fanout.subscribe(accept=lambda item: item.get("projectId") == PROJECT)
    item = {"id": new_id(), "projectId": PROJECT}
    fanout.publish([{"id": new_id(), "projectId": "other"}, item, item])  # the same envelope twice
    assert mine.get(1) == item
    assert mine.get(0.01) is None
    fanout.stop()


def test_event_pipeline_publishes_events_committed_after_start(app, settings):
    before = emit_session("before start")
    dispatcher, fanout = start_event_pipeline(settings)
    try:
        assert dispatcher.cursor == before.seq  # live cursor starts at the newest event, not persisted
        subscription = fanout.subscribe()
        event = emit_session("after start")
        received = subscription.get(10)
        assert received == event_body(DomainEvent.get_by_id(event.seq))
        assert subscription.get(0.1) is None  # the earlier event is not replayed
    finally:
        dispatcher.stop()
        fanout.stop()
    assert not EventCursor.select().exists()


def test_a_dispatcher_nobody_listens_to_moves_past_events_without_handing_them_over(app):
    """The live dispatcher of a process without stream subscribers (and without Redis) does not read events
    just to drop them; once someone listens it hands over what is committed from then on, in order."""
    listening = {"now": False}
    recorder = Recorder()
    dispatcher = Dispatcher("live-test", recorder, persist=False, interested=lambda: listening["now"])
    dispatcher.prime()
    skipped = [emit_session("nobody listens") for _ in range(3)]
    assert dispatcher.run_once() == 3 and recorder.seqs == []
    assert dispatcher.cursor == skipped[-1].seq
    listening["now"] = True
    wanted = [emit_session("someone listens") for _ in range(2)]
    assert dispatcher.run_once() == 2
    assert recorder.seqs == [e.seq for e in wanted]
    assert dispatcher.run_once() == 0


def test_live_fanout_wants_events_with_a_subscriber_or_redis():
    fanout = LiveFanout()
    assert not fanout.wants_events()
    subscription = fanout.subscribe()
    assert fanout.wants_events()
    fanout.unsubscribe(subscription)
    assert not fanout.wants_events()
    assert LiveFanout(REDIS_TEST_URL).wants_events()  # the other processes listen through Redis
    fanout.stop()


def test_live_items_carry_the_log_position_beside_the_envelope(app):
    events = [emit_session("one"), emit_session("two")]
    fanout = LiveFanout()
    subscription = fanout.subscribe()
    fanout.publish_events(events)
    items = [subscription.next(1), subscription.next(1)]
    assert [item.seq for item in items] == [e.seq for e in events]
    assert [item.envelope for item in items] == [event_body(e) for e in events]  # the document's shape, no seq
    assert "seq" not in items[0].envelope and subscription.next_nowait() is None
    fanout.publish([{"id": new_id()}])  # envelopes published without a position
    assert subscription.next(1).seq is None
    fanout.stop()


def test_nudge_wakes_the_live_dispatcher_before_its_next_poll(app, settings):
    dispatcher, fanout = start_event_pipeline(settings, poll_interval=60)  # it would not poll again for a minute
    try:
        subscription = fanout.subscribe()
        time.sleep(0.2)  # the dispatcher has run once and is now in its pause
        event = emit_session("nudged")
        fanout.nudge()  # what the app does after every write request
        item = subscription.next(10)
        assert item is not None and item.seq == event.seq
    finally:
        dispatcher.stop()
        fanout.stop()


def redis_available() -> bool:
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@pytest.fixture
def redis_fanouts():
    """Two fan-outs on one Redis channel, as two server processes would have."""
    if not redis_available():
        pytest.skip(f"Redis is not reachable at {REDIS_TEST_URL}")
    channel = f"{CHANNEL}:test:{uuid.uuid4()}"  # isolated from other suites sharing this Redis
    fanouts = [LiveFanout(REDIS_TEST_URL, channel=channel) for _ in range(2)]
    try:
        for fanout in fanouts:
            fanout.start()
            assert fanout._ready.is_set()
        yield fanouts
    finally:
        for fanout in fanouts:
            fanout.stop()


def test_redis_fanout_reaches_every_process(redis_fanouts):
    one, two = redis_fanouts
    subscriptions = [one.subscribe(), one.subscribe(), two.subscribe()]
    item = {"id": new_id(), "type": "session.created", "payload": {"action": "created", "data": {"title": "ü"}}}
    one.publish([item])
    assert [s.get(5) for s in subscriptions] == [item, item, item]
    two.publish([item])  # every process's live dispatcher publishes the same event: delivered once
    other = {"id": new_id(), "type": "session.deleted"}
    one.publish([other])
    assert [s.get(5) for s in subscriptions] == [other, other, other]


def test_redis_channel_speaks_flask_sse_message_format(app, redis_fanouts):
    """One message per batch, flask-sse's {"data", "type"} (its stock reader parses it), seq beside each
    envelope; messages of any other shape on the channel are ignored."""
    import flask_sse
    import orjson
    import redis

    one, two = redis_fanouts
    subscription = two.subscribe()
    raw = redis.Redis.from_url(REDIS_TEST_URL).pubsub()
    raw.subscribe(one.channel)
    try:
        assert raw.get_message(timeout=5)["type"] == "subscribe"
        events = [emit_session("a"), emit_session("b")]
        one.publish_events(events)
        message = raw.get_message(timeout=5)
        body = orjson.loads(message["data"])
        assert body == {"data": [[e.seq, event_body(e)] for e in events], "type": BATCH_TYPE}
        assert flask_sse.Message(**body).type == BATCH_TYPE  # what flask-sse's own blueprint does with it
        assert [subscription.next(5).seq for _ in events] == [e.seq for e in events]

        client = redis.Redis.from_url(REDIS_TEST_URL)
        client.publish(one.channel, b"not json")
        client.publish(one.channel, orjson.dumps({"data": {"message": "hello"}, "type": "greeting"}))
        client.close()
        later = emit_session("c")
        one.publish_events([later])
        item = subscription.next(5)
        assert item.seq == later.seq and subscription.next(0.2) is None
    finally:
        raw.close()


def test_redis_publish_is_chunked_in_order(app, redis_fanouts):
    one, two = redis_fanouts
    subscription = two.subscribe(maxsize=500)
    items = [LiveEvent(number, {"id": new_id(), "n": number}) for number in range(1, 251)]  # three messages
    one.publish_items(items)
    assert [subscription.next(5).seq for _ in items] == list(range(1, 251))


def test_redis_event_pipeline(app, settings, redis_fanouts):
    from dataclasses import replace

    dispatcher, local = start_event_pipeline(replace(settings, redis_url=REDIS_TEST_URL))
    remote = LiveFanout(REDIS_TEST_URL)  # another process listening on the default channel
    remote.start()
    try:
        assert local.channel == CHANNEL
        subscription = remote.subscribe()
        event = emit_session("across processes")
        expected = event_body(DomainEvent.get_by_id(event.seq))
        deadline = time.monotonic() + 10
        received = None
        while received is None and time.monotonic() < deadline:  # other Cortex processes on this Redis (any DB
            envelope = subscription.get(1)                        # number: pub/sub is server-wide) may publish too
            received = envelope if envelope and envelope["id"] == expected["id"] else None
        assert received == expected
    finally:
        dispatcher.stop()
        local.stop()
        remote.stop()


# ----------------------------------------------------------------- retention


def age(event: DomainEvent, days: float) -> None:
    DomainEvent.update(timestamp=utcnow() - timedelta(days=days)).where(DomainEvent.seq == event.seq).execute()


def test_prune_never_deletes_events_after_the_smallest_cursor(app):
    events = [emit_session(f"e{i}") for i in range(6)]
    for event in events[:5]:
        age(event, 10)
    with transaction():
        EventCursor.create(consumer="webhooks", seq=events[3].seq)
        EventCursor.create(consumer="plugins", seq=events[1].seq)  # the slowest consumer

    assert prune_events(7) == 2  # old and processed by every consumer
    assert [e.seq for e in DomainEvent.select().order_by(DomainEvent.seq)] == [e.seq for e in events[2:]]

    EventCursor.update(seq=events[5].seq).execute()
    assert prune_events(7) == 3  # events[5] is processed but recent
    assert [e.seq for e in DomainEvent.select()] == [events[5].seq]
    assert prune_events(0) == 1


def test_prune_without_persistent_consumers_goes_by_age(app):
    old, recent = emit_session(), emit_session()
    age(old, 8)
    age(recent, 6)
    assert prune_events() == 1
    assert [e.seq for e in DomainEvent.select()] == [recent.seq]
    with pytest.raises(ValueError):
        prune_events(-1)


def test_prune_in_batches(app):
    events = [emit_session() for _ in range(5)]
    DomainEvent.update(timestamp=utcnow() - timedelta(days=30)).execute()
    assert prune_events(7, batch=2) == 5
    assert not DomainEvent.select().where(DomainEvent.seq.in_([e.seq for e in events])).exists()


def test_retention_job_prunes_in_the_background(app):
    age(emit_session(), 3)
    keep = emit_session()
    job = RetentionJob(retention_days=2, interval=3600)
    job.start()
    try:
        wait_for(lambda: DomainEvent.select().count() == 1)
    finally:
        job.stop(timeout=5)
    assert not job._worker.alive
    assert [e.seq for e in DomainEvent.select()] == [keep.seq]
    assert RetentionJob.from_settings(object()).retention_days == 7


def test_skipped_types_are_passed_over_without_being_handed_over(app):
    recorder = Recorder()
    dispatcher = Dispatcher("skipper", recorder, batch=10, skip_types=frozenset({"noise.made"}))
    with transaction():
        for n in range(12):
            emit("noise.made", tenant_id="t", project_id=None, resource_id=f"n:{n}", action="occurred", data={})
    assert dispatcher.run_once() == 10 and recorder.seqs == []  # only skipped types: the cursor moves on
    with transaction():
        wanted = emit("session.created", tenant_id="t", project_id=None, resource_id="s:1", action="created", data={})
        emit("noise.made", tenant_id="t", project_id=None, resource_id="n:x", action="occurred", data={})
    assert dispatcher.run_once() == 4
    assert recorder.seqs == [wanted.seq]
    assert EventCursor.get_by_id("skipper").seq == wanted.seq + 1  # past the trailing skipped one too


def test_commit_listener_wakes_on_commits_of_other_connections(app):
    """PostgreSQL: every event-writing transaction notifies; a listener in another process wakes at once."""
    from cortex.events.listener import CommitListener

    if not CommitListener.available():
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; on SQLite one process writes and wakes its consumers")
    woken = threading.Event()
    listener = CommitListener(woken.set)
    listener.start()
    try:
        assert woken.wait(5)  # woken once on connect (anything committed before LISTEN)
        woken.clear()
        time.sleep(0.2)
        emit_session()
        assert woken.wait(5) and listener.notifications >= 1
    finally:
        listener.stop()
