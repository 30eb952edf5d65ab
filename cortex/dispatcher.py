"""Publishing committed domain events to their consumers (the reading side of the transactional outbox).

``models.events.emit`` writes an event in the transaction that makes the change; nothing is published at
commit time. A :class:`Dispatcher` polls the log instead: it reads the events after its cursor in ``seq``
order, hands them to its handler and only then advances the cursor. A process that dies between commit and
publish therefore loses nothing — the next dispatcher hands the event over (at least once).

- **Persistent consumers** (webhooks, later) keep their cursor in ``EventCursor`` (created at 0).
- **The live consumer** (the SSE streams, ``cortex/sse.py``) keeps its cursor in memory, starting at the newest event at start-up
  (``persist=False``): live streams need no per-process row, and a restarted process does not replay the log
  to browsers (they resume with ``Last-Event-ID`` from the log instead).
- :class:`LiveFanout` is the in-process pub/sub the live consumers subscribe to. It carries
  :class:`LiveEvent` items: the envelope (exactly the document's ``*Event`` shape) with its log position
  ``seq`` beside it, so an SSE stream that replayed the log up to some ``seq`` can skip what it already sent.
  With ``REDIS_URL`` every publish goes through the Redis channel ``cortex:events`` and each process's ONE
  listener feeds its local subscribers, so several server processes share one fan-out. The channel speaks
  flask-sse's message format: the dispatcher publishes with flask-sse's ``publish`` (bound to the process's
  pooled Redis client), one message ``{"data": [[seq, envelope], …], "type": "cortex.events"}`` per batch.
  Every process runs its own live dispatcher, so the same event reaches the channel once per process:
  listeners drop envelopes whose ``id`` they delivered recently.
- Latency: the live dispatcher polls every 0.25 s, and :meth:`LiveFanout.nudge` (called by the app after
  every write request) wakes it at once, so an event caused through this process is published within
  milliseconds, and through Redis reaches the other processes as fast.
- :func:`prune_events` / :class:`RetentionJob` delete old events, never one a persistent consumer has not
  processed yet.

Background loops run in a gevent greenlet when gevent has monkey-patched the process (``cortex serve``),
else in a daemon thread; every ``start()`` has a ``stop()``.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import timedelta

import orjson
import peewee as pw
from flask_sse import ServerSentEventsBlueprint

from models.base import db, transaction, utcnow
from models.events import DomainEvent, EventCursor, envelope

log = logging.getLogger("cortex.dispatcher")

CHANNEL = "cortex:events"  # the Redis pub/sub channel of the live fan-out
BATCH_TYPE = "cortex.events"  # flask-sse message type of one batch of [seq, envelope] pairs on the channel
BATCH_SIZE = 100  # events per Redis message at most
LIVE_CONSUMER = "live"  # name of the (non-persisted) live consumer, for logs
LIVE_POLL_INTERVAL = 0.25  # seconds between two polls of the live dispatcher when nothing nudges it
DEFAULT_RETENTION_DAYS = 7.0
RETENTION_INTERVAL = 3600.0  # seconds between two prunes
MAX_BACKOFF = 30.0  # seconds: the longest pause after repeated failures
#: After a wake-up, wait this long before reading, so a burst of writes is read (and published) as one batch:
#: measured with tools/bench_ingest.py, one read per write request cost more CPU than the writes themselves.
WAKE_COALESCE = 0.01


# ----------------------------------------------------------------- background loops: greenlet or thread


def gevent_patched() -> bool:
    """True when gevent has monkey-patched threading (``cortex serve``): background loops are greenlets."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return monkey.is_module_patched("threading")


def _pause(stop_event: threading.Event, seconds: float, wake: threading.Event | None = None) -> None:
    """Sleep ``seconds`` (gevent-friendly once patched), waking early when the loop is stopped or ``wake`` is set."""
    deadline = time.monotonic() + seconds
    while not stop_event.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        if wake is None:
            time.sleep(min(remaining, 0.1))
        elif wake.wait(min(remaining, 0.1)):
            return


class _Worker:
    """One background loop ``target(stop_event)``: a greenlet under gevent, else a daemon thread."""

    def __init__(self, name: str, target: Callable[[threading.Event], None]):
        self.name = name
        self.target = target
        self.stop_event = threading.Event()
        self._runner = None

    @property
    def alive(self) -> bool:
        """True while the loop runs."""
        if self._runner is None:
            return False
        return not self._runner.dead if hasattr(self._runner, "dead") else self._runner.is_alive()

    def start(self) -> None:
        """Start the loop (once)."""
        if self.alive:
            return
        self.stop_event = threading.Event()
        if gevent_patched():
            import gevent

            self._runner = gevent.spawn(self.target, self.stop_event)
        else:
            self._runner = threading.Thread(target=self.target, args=(self.stop_event,), name=self.name, daemon=True)
            self._runner.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to end and wait for it (a greenlet still running after ``timeout`` is killed)."""
        self.stop_event.set()
        runner, self._runner = self._runner, None
        if runner is None:
            return
        runner.join(timeout)
        if hasattr(runner, "kill") and not runner.dead:
            runner.kill(block=True, timeout=timeout)
        elif hasattr(runner, "is_alive") and runner.is_alive():
            log.warning("%s did not stop within %s s", self.name, timeout)


@contextmanager
def _own_connection():
    """Return the database connection to the pool afterwards if this block opened it."""
    opened = db.is_closed()
    try:
        yield
    finally:
        if opened and not db.is_closed() and not db.in_transaction():
            db.close()


# ----------------------------------------------------------------- the dispatcher


def newest_seq() -> int:
    """The highest ``seq`` in the log (0 when it is empty)."""
    return DomainEvent.select(pw.fn.MAX(DomainEvent.seq)).scalar() or 0


class Dispatcher:
    """Hands committed events after a cursor to ``handler`` in ``seq`` order, at least once.

    ``persist=True`` (default): the cursor is the ``EventCursor`` row of ``consumer`` (created at 0).
    ``persist=False``: the cursor lives in memory and starts at the newest event when the dispatcher is primed
    (``prime()``, or its first run) — for the live fan-out, which must not replay the log on every start.
    """

    def __init__(
        self,
        consumer: str,
        handler: Callable[[list[DomainEvent]], None],
        *,
        batch: int = 500,
        poll_interval: float = 0.5,
        persist: bool = True,
        coalesce: float = WAKE_COALESCE,
        interested: Callable[[], bool] | None = None,
        skip_types: frozenset[str] = frozenset(),
    ):
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.consumer = consumer
        self.handler = handler
        self.batch = batch
        self.poll_interval = poll_interval
        self.persist = persist
        self.coalesce = coalesce
        self.interested = interested
        self.skip_types = frozenset(skip_types)  # never handed over (read as seq + type only, then passed)
        self._cursor: int | None = None  # in-memory cursor (persist=False)
        self._wake = threading.Event()  # set by wake(): poll now instead of at the end of the pause
        self._worker = _Worker(f"cortex-dispatcher-{consumer}", self.run_forever)

    @property
    def cursor(self) -> int | None:
        """The current cursor: the last ``seq`` handled (None before a non-persisted one is primed)."""
        if not self.persist:
            return self._cursor
        with _own_connection():
            return EventCursor.select(EventCursor.seq).where(EventCursor.consumer == self.consumer).scalar()

    def prime(self) -> int:
        """Start a non-persisted cursor at the newest event (events committed afterwards are handed over)."""
        if self.persist:
            raise RuntimeError("prime() is for non-persisted (live) dispatchers")
        with _own_connection():
            self._cursor = newest_seq()
        return self._cursor

    def _load_cursor(self) -> int:
        if not self.persist:
            if self._cursor is None:
                self._cursor = newest_seq()
            return self._cursor
        seq = EventCursor.select(EventCursor.seq).where(EventCursor.consumer == self.consumer).scalar()
        if seq is None:
            with transaction():
                EventCursor.insert(consumer=self.consumer, seq=0).on_conflict_ignore().execute()
            seq = EventCursor.select(EventCursor.seq).where(EventCursor.consumer == self.consumer).scalar() or 0
        return seq

    def _save_cursor(self, seq: int) -> None:
        if not self.persist:
            self._cursor = seq
            return
        with transaction():  # never moves backwards (another process may run the same consumer)
            moved = (
                EventCursor.update(seq=seq, updated_at=utcnow())
                .where((EventCursor.consumer == self.consumer) & (EventCursor.seq < seq))
                .execute()
            )
            if not moved:
                EventCursor.insert(consumer=self.consumer, seq=seq).on_conflict_ignore().execute()

    def run_once(self) -> int:
        """Hand the next batch after the cursor to the handler, then advance the cursor; the number handled.

        If the handler raises, the exception propagates and the cursor stays: the same events come again.
        """
        with _own_connection():
            cursor = self._load_cursor()
            after = DomainEvent.seq > cursor
            last = None
            if self.interested is not None or self.skip_types:
                # Read only (seq, type) first. Nobody to hand them to (a live dispatcher without subscribers or
                # Redis), or only skipped types: move past them without reading the rest. `interested` is asked
                # AFTER the seqs were read: a stream that subscribes later starts after them.
                rows = (DomainEvent.select(DomainEvent.seq, DomainEvent.type).where(after)
                        .order_by(DomainEvent.seq).limit(self.batch).tuples())
                rows = list(rows)
                if not rows:
                    return 0
                last = rows[-1][0]
                if ((self.interested is not None and not self.interested())
                        or all(kind in self.skip_types for _seq, kind in rows)):
                    self._save_cursor(last)
                    return len(rows)
                after = after & (DomainEvent.seq <= last)
                if self.skip_types:
                    after = after & DomainEvent.type.not_in(sorted(self.skip_types))
            events = list(DomainEvent.select().where(after).order_by(DomainEvent.seq).limit(self.batch))
            if not events:
                return 0
            self.handler(events)
            self._save_cursor(events[-1].seq if last is None else last)
            return len(events) if last is None else len(rows)

    def wake(self) -> None:
        """Poll now (e.g. right after a request committed events) instead of at the end of the current pause."""
        self._wake.set()

    def run_forever(self, stop_event: threading.Event) -> None:
        """Run batches until ``stop_event`` is set; failures are logged and retried with a growing pause."""
        failures = 0
        while not stop_event.is_set():
            self._wake.clear()  # before reading: a wake() during the run makes the pause below end at once
            try:
                handled = self.run_once()
            except Exception:
                failures += 1
                log.exception("dispatcher %s: batch failed (attempt %d); retrying", self.consumer, failures)
                _pause(stop_event, min(self.poll_interval * 2**failures, MAX_BACKOFF))
                continue
            if failures:
                log.info("dispatcher %s: recovered after %d failed attempts", self.consumer, failures)
                failures = 0
            if handled >= self.batch:
                time.sleep(0)  # a backlog: go on at once, but let other greenlets run
            else:
                _pause(stop_event, self.poll_interval, self._wake)
                if self._wake.is_set() and self.coalesce > 0:
                    _pause(stop_event, self.coalesce)  # woken by a write: let the rest of its burst commit

    def start(self) -> None:
        """Run ``run_forever`` in the background (greenlet under gevent, else a daemon thread)."""
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background loop and wait for it."""
        self._worker.stop(timeout)


# ----------------------------------------------------------------- the live fan-out

_CLOSED = object()  # wakes a waiting Subscription.get when the subscription is closed


class LiveEvent:
    """One item of the live fan-out: an envelope and, beside it, its log position ``seq``.

    ``seq`` is None for envelopes published without one (``LiveFanout.publish``). ``frame`` is a cache for
    the rendered Server-Sent Event (``cortex.sse`` fills it once per event and process, not per subscriber).
    """

    __slots__ = ("seq", "envelope", "frame")

    def __init__(self, seq: int | None, envelope: dict):
        self.seq = seq
        self.envelope = envelope
        self.frame: bytes | None = None

    def __repr__(self) -> str:
        return f"LiveEvent(seq={self.seq!r}, id={self.envelope.get('id')!r}, type={self.envelope.get('type')!r})"


class Subscription:
    """One live consumer's bounded queue of :class:`LiveEvent` items."""

    def __init__(self, maxsize: int, accept: Callable[[dict], bool] | None = None):
        self.accept = accept  # optional filter on the envelope (a tenant's, a project's…), applied before queueing
        self.closed = False  # True once unsubscribed, dropped for falling behind, or the fan-out stopped
        self.reason: str | None = None  # why it closed: "unsubscribed", "overflow" or "stopped"
        self._queue: queue.Queue = queue.Queue(maxsize)

    def get(self, timeout: float | None = None) -> dict | None:
        """The next envelope; None after ``timeout`` seconds without one, or when the subscription is closed."""
        item = self.next(timeout)
        return None if item is None else item.envelope

    def next(self, timeout: float | None = None) -> LiveEvent | None:
        """The next item (envelope and seq); None after ``timeout`` seconds without one, or once closed."""
        if self.closed:
            return None
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        return None if item is _CLOSED or self.closed else item

    def next_nowait(self) -> LiveEvent | None:
        """The next item if one is queued, else None (never waits)."""
        if self.closed:
            return None
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            return None
        return None if item is _CLOSED or self.closed else item

    def _offer(self, item: LiveEvent) -> bool:
        """Queue an item without blocking; False when the queue is full."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            return False
        return True

    def _close(self, reason: str) -> None:
        """Mark closed, discard what is queued and wake a waiting ``get``."""
        if not self.closed:
            self.reason = reason
        self.closed = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        try:
            self._queue.put_nowait(_CLOSED)
        except queue.Full:  # refilled by a concurrent publisher; ``closed`` already stops ``get``
            pass


class _FlaskSseChannel(ServerSentEventsBlueprint):
    """flask-sse's publisher, bound to the process's pooled Redis client.

    The stock ``ServerSentEventsBlueprint.redis`` builds a new client (and connection pool) from the app
    config on every access, i.e. on every publish (flask-sse issue #6); this one reuses ours and needs no app.
    """

    def __init__(self, client: Callable[[], object]):
        super().__init__("cortex_live_fanout", __name__)
        self._client = client

    @property
    def redis(self):
        return self._client()


class LiveFanout:
    """In-process pub/sub of event envelopes; with ``redis_url``, shared by every process through Redis.

    A subscriber whose queue is full is dropped (``closed=True``, ``reason="overflow"``) instead of blocking the
    others. With Redis, the process holds ONE subscription to the channel however many local subscribers it has.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        channel: str = CHANNEL,
        queue_size: int = 1000,
        remember: int = 65536,
    ):
        self.redis_url = redis_url
        self.channel = channel
        self.queue_size = queue_size
        self._subscribers: set[Subscription] = set()
        self._lock = threading.Lock()
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()  # recent envelope ids
        self._remember = remember
        self._redis = None
        self._publisher = _FlaskSseChannel(self._client)
        self._wakers: list[Callable[[], None]] = []
        self._ready = threading.Event()  # the Redis listener is subscribed
        self._worker = _Worker("cortex-live-fanout", self._listen)

    # --- subscribers

    def subscribe(self, accept: Callable[[dict], bool] | None = None, maxsize: int | None = None) -> Subscription:
        """A new subscription receiving every envelope published from now on (``accept`` filters)."""
        subscription = Subscription(maxsize or self.queue_size, accept)
        with self._lock:
            self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription, reason: str = "unsubscribed") -> None:
        """Stop delivering to ``subscription`` (idempotent)."""
        with self._lock:
            self._subscribers.discard(subscription)
        if not subscription.closed:
            subscription._close(reason)

    def wants_events(self) -> bool:
        """Is anyone listening: a local subscriber, or (with Redis) the other processes?"""
        return self.redis_url is not None or bool(self._subscribers)

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscribers)

    # --- waking the publisher

    def add_waker(self, wake: Callable[[], None]) -> None:
        """Register a callable that makes the publisher look for new events now (see :meth:`nudge`)."""
        self._wakers.append(wake)

    def nudge(self) -> None:
        """New events may have been committed in this process (e.g. by a write request): publish them now."""
        for wake in self._wakers:
            wake()

    # --- publishing

    def publish(self, envelopes: list[dict]) -> None:
        """Deliver envelopes (without log positions) to every subscriber; see :meth:`publish_items`."""
        self.publish_items([LiveEvent(None, item) for item in envelopes])

    def publish_events(self, events: list[DomainEvent]) -> None:
        """Deliver committed events (envelope + ``seq``) to every subscriber; see :meth:`publish_items`."""
        self.publish_items([LiveEvent(event.seq, envelope(event)) for event in events])

    def publish_items(self, items: list[LiveEvent]) -> None:
        """Deliver items to every subscriber (of every process, through Redis when configured).

        With Redis this goes through flask-sse's ``publish``: one message per ``BATCH_SIZE`` items, in order.
        Raises when Redis cannot be reached, so a dispatcher retries the batch.
        """
        if not items:
            return
        if self.redis_url is None:
            for item in items:
                self._deliver(item)
            return
        for start in range(0, len(items), BATCH_SIZE):
            pairs = [[item.seq, item.envelope] for item in items[start : start + BATCH_SIZE]]
            self._publisher.publish(pairs, type=BATCH_TYPE, channel=self.channel)

    def _deliver(self, item: LiveEvent) -> None:
        """Queue one item for the local subscribers, once per envelope id."""
        event_id = item.envelope.get("id")
        with self._lock:
            if event_id is not None:
                if event_id in self._seen:
                    return  # already delivered (each process's live dispatcher publishes every event)
                self._seen[event_id] = None
                if len(self._seen) > self._remember:
                    self._seen.popitem(last=False)
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            try:
                if subscription.accept is not None and not subscription.accept(item.envelope):
                    continue
            except Exception:
                log.exception("live subscriber filter failed; skipping envelope %s for it", event_id)
                continue
            if not subscription._offer(item):
                log.warning("live subscriber fell behind (%d queued envelopes); dropping it", self.queue_size)
                self.unsubscribe(subscription, "overflow")

    def _receive(self, raw: bytes) -> None:
        """Deliver the items of one channel message (flask-sse's ``{"data": [[seq, envelope], …], "type"}``)."""
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("live fan-out: ignoring a non-JSON message on %s", self.channel)
            return
        pairs = message.get("data") if isinstance(message, dict) and message.get("type") == BATCH_TYPE else None
        if not isinstance(pairs, list):
            log.warning("live fan-out: ignoring a message on %s that is not a %s batch", self.channel, BATCH_TYPE)
            return
        for pair in pairs:
            if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], dict):
                self._deliver(LiveEvent(pair[0], pair[1]))

    # --- the Redis listener

    def _client(self):
        """The process's Redis client (one connection pool for publishing and the listener)."""
        with self._lock:
            if self._redis is None:
                import redis

                self._redis = redis.Redis.from_url(
                    self.redis_url, socket_connect_timeout=5, socket_timeout=10, health_check_interval=30
                )
            return self._redis

    def start(self, wait: float = 5.0) -> None:
        """Start the Redis listener (nothing to start without Redis); waits up to ``wait`` s until subscribed."""
        if self.redis_url is None or self._worker.alive:
            return
        self._ready.clear()
        self._worker.start()
        if not self._ready.wait(wait):
            log.warning("live fan-out: not subscribed to Redis %s yet; retrying in the background", self.channel)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the listener, close the Redis connections and every open subscription."""
        self._worker.stop(timeout)
        with self._lock:
            client, self._redis = self._redis, None
            subscribers, self._subscribers = list(self._subscribers), set()
        if client is not None:
            client.close()
        for subscription in subscribers:
            subscription._close("stopped")

    def _listen(self, stop_event: threading.Event) -> None:
        """Feed local subscribers from the Redis channel; reconnects after failures."""
        failures = 0
        while not stop_event.is_set():
            pubsub = None
            try:
                pubsub = self._client().pubsub()
                pubsub.subscribe(self.channel)
                while not stop_event.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self._ready.set()
                        if failures:
                            log.info("live fan-out: resubscribed to Redis after %d failures", failures)
                        failures = 0
                    elif message["type"] == "message":
                        self._receive(message["data"])
            except Exception:
                failures += 1
                self._ready.clear()
                log.warning("live fan-out: Redis listener failed (attempt %d)", failures, exc_info=True)
                _pause(stop_event, min(0.5 * 2**failures, MAX_BACKOFF))
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # pragma: no cover - a broken connection while closing
                        log.debug("live fan-out: closing the Redis subscription failed", exc_info=True)


def start_event_pipeline(settings, *, poll_interval: float = LIVE_POLL_INTERVAL) -> tuple[Dispatcher, LiveFanout]:
    """Start this process's live fan-out and the (non-persisted) live dispatcher publishing into it.

    The dispatcher's cursor starts at the newest event now; every event committed afterwards (by any process)
    reaches the fan-out's subscribers. It polls every ``poll_interval`` seconds, and at once when
    ``fanout.nudge()`` is called. Stop both with ``dispatcher.stop()`` then ``fanout.stop()``.
    """
    fanout = LiveFanout(getattr(settings, "redis_url", None))
    fanout.start()
    dispatcher = Dispatcher(LIVE_CONSUMER, fanout.publish_events, persist=False, poll_interval=poll_interval,
                            interested=fanout.wants_events)
    try:
        dispatcher.prime()
    except Exception:
        fanout.stop()
        raise
    fanout.add_waker(dispatcher.wake)
    dispatcher.start()
    return dispatcher, fanout


# ----------------------------------------------------------------- retention


def prune_events(older_than_days: float = DEFAULT_RETENTION_DAYS, *, batch: int = 5000) -> int:
    """Delete events older than the retention, never one after the smallest persisted cursor; how many.

    Deletes in batches (one short transaction each) so writers are never held up for long.
    """
    if older_than_days < 0:
        raise ValueError("older_than_days must not be negative")
    cutoff = utcnow() - timedelta(days=older_than_days)
    floor = EventCursor.select(pw.fn.MIN(EventCursor.seq)).scalar()  # None: no persistent consumer yet
    total = 0
    while True:
        with transaction():
            query = DomainEvent.select(DomainEvent.seq).where(DomainEvent.timestamp < cutoff)
            if floor is not None:
                query = query.where(DomainEvent.seq <= floor)
            doomed = [seq for (seq,) in query.order_by(DomainEvent.seq).limit(batch).tuples()]
            if doomed:
                total += DomainEvent.delete().where(DomainEvent.seq.in_(doomed)).execute()
        if len(doomed) < batch:
            return total


class PeriodicJob:
    """A background job: ``run_once()`` at start and then every ``interval`` seconds until stopped (a greenlet
    under gevent, else a daemon thread); a failed run is logged and retried at the next interval. Subclasses
    implement ``run_once``; it can also be called directly (tests, a cron)."""

    label = "periodic job"

    def __init__(self, name: str, interval: float):
        self.interval = interval
        self._worker = _Worker(name, self.run_forever)

    def run_once(self) -> int:
        raise NotImplementedError

    def run_forever(self, stop_event: threading.Event) -> None:
        """Run every ``interval`` seconds until stopped; failures are logged."""
        while not stop_event.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("%s failed; retrying in %s s", self.label, self.interval)
            _pause(stop_event, self.interval)

    def start(self) -> None:
        """Run in the background."""
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop and wait."""
        self._worker.stop(timeout)

    @property
    def alive(self) -> bool:
        """True while the background loop runs."""
        return self._worker.alive


class RetentionJob(PeriodicJob):
    """Runs :func:`prune_events` at start and then every ``interval`` seconds in the background."""

    label = "event retention"

    def __init__(self, retention_days: float = DEFAULT_RETENTION_DAYS, interval: float = RETENTION_INTERVAL):
        super().__init__("cortex-event-retention", interval)
        self.retention_days = retention_days

    @classmethod
    def from_settings(cls, settings) -> RetentionJob:
        """The job for ``settings.event_retention_days`` (7 days when the field is absent)."""
        return cls(getattr(settings, "event_retention_days", DEFAULT_RETENTION_DAYS))

    def run_once(self) -> int:
        """Prune once; the number of events deleted."""
        with _own_connection():
            deleted = prune_events(self.retention_days)
        if deleted:
            log.info("event retention: deleted %d events older than %s days", deleted, self.retention_days)
        return deleted


# ----------------------------------------------------------------- cross-process wake-ups (PostgreSQL)


class CommitListener:
    """Calls ``wake`` whenever any process commits events (PostgreSQL ``LISTEN`` on
    ``models.events.EVENTS_CHANNEL``, which every event-writing transaction notifies).

    A dispatcher in another process than the writers (``cortex worker``) would otherwise find new events only
    at its next poll. One dedicated connection (outside the pool) in autocommit mode; under gevent the wait is
    cooperative. A lost connection is re-opened after a pause (``wake`` is called then too: notifications
    may have been missed). A no-op on SQLite (one process writes; it wakes its consumers itself)."""

    def __init__(self, wake: Callable[[], None], reconnect_pause: float = 1.0):
        self.wake = wake
        self.reconnect_pause = reconnect_pause
        self.notifications = 0  # received so far (tests read it)
        self._worker = _Worker("cortex-commit-listener", self.run_forever)

    @staticmethod
    def available() -> bool:
        """True when the bound database is PostgreSQL."""
        return isinstance(db.obj, pw.PostgresqlDatabase)

    def _connect(self):
        import psycopg2
        from psycopg2.extensions import ISOLATION_LEVEL_AUTOCOMMIT

        from models.events import EVENTS_CHANNEL

        connection = psycopg2.connect(dbname=db.obj.database, **db.obj.connect_params)
        connection.set_isolation_level(ISOLATION_LEVEL_AUTOCOMMIT)
        with connection.cursor() as cursor:
            cursor.execute(f"LISTEN {EVENTS_CHANNEL}")
        return connection

    def run_forever(self, stop_event: threading.Event) -> None:
        """Listen until stopped, re-connecting after failures."""
        import select

        while not stop_event.is_set():
            connection = None
            try:
                connection = self._connect()
                self.wake()  # anything committed before LISTEN took effect
                while not stop_event.is_set():
                    if select.select([connection], [], [], 0.5)[0]:
                        connection.poll()
                        if connection.notifies:
                            self.notifications += len(connection.notifies)
                            connection.notifies.clear()
                            self.wake()
            except Exception:
                log.warning("commit listener: connection lost; re-connecting in %s s", self.reconnect_pause,
                            exc_info=True)
                _pause(stop_event, self.reconnect_pause)
            finally:
                if connection is not None:
                    connection.close()

    def start(self) -> None:
        """Listen in the background (a no-op on SQLite)."""
        if self.available():
            self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening."""
        self._worker.stop(timeout)
