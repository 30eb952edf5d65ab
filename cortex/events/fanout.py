"""The live fan-out: committed events to this process's open SSE streams (and, through Redis, every process's).

:class:`LiveFanout` is the in-process pub/sub the live consumers subscribe to. It carries :class:`LiveEvent`
items: the envelope (exactly the document's ``*Event`` shape) with its log position ``seq`` beside it, so an
SSE stream that replayed the log up to some ``seq`` can skip what it already sent. With ``REDIS_URL`` every
publish goes through the Redis channel ``cortex:events`` and each process's ONE listener feeds its local
subscribers, so several server processes share one fan-out. The channel speaks flask-sse's message format:
the dispatcher publishes with flask-sse's ``publish`` (bound to the process's pooled Redis client), one message
``{"data": [[seq, envelope], …], "type": "cortex.events"}`` per batch. Every process runs its own live
dispatcher, so the same event reaches the channel once per process: listeners drop envelopes whose ``id`` they
delivered recently.

Latency: the live dispatcher (:func:`start_event_pipeline`) polls every 0.25 s, and :meth:`LiveFanout.nudge`
(called by the app after every write request) wakes it at once, so an event caused through this process is
published within milliseconds, and through Redis reaches the other processes as fast.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from collections.abc import Callable

import orjson
from flask_sse import ServerSentEventsBlueprint

from cortex.events.dispatcher import MAX_BACKOFF, Dispatcher
from cortex.lib.background import Worker, pause
from models.events import DomainEvent, event_body

log = logging.getLogger("cortex.fanout")

CHANNEL = "cortex:events"  # the Redis pub/sub channel of the live fan-out
BATCH_TYPE = "cortex.events"  # flask-sse message type of one batch of [seq, envelope] pairs on the channel
BATCH_SIZE = 100  # events per Redis message at most
LIVE_CONSUMER = "live"  # name of the (non-persisted) live consumer, for logs
LIVE_POLL_INTERVAL = 0.25  # seconds between two polls of the live dispatcher when nothing nudges it


_CLOSED = object()  # wakes a waiting Subscription.get when the subscription is closed


class LiveEvent:
    """One item of the live fan-out: an envelope and, beside it, its log position ``seq``.

    ``seq`` is None for envelopes published without one (``LiveFanout.publish``). ``frame`` is a cache for
    the rendered Server-Sent Event (``cortex.events.sse`` fills it once per event and process, not per subscriber).
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
        self._worker = Worker("cortex-live-fanout", self._listen)

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
        self.publish_items([LiveEvent(event.seq, event_body(event)) for event in events])

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
        if client is not None:
            client.close()
        self.close_subscriptions()

    def close_subscriptions(self) -> None:
        """Close every open subscription (reason "stopped"): their event streams end with ``: closed (stopped)``
        and their clients reconnect (with ``Last-Event-ID``), e.g. to another process while this one stops."""
        with self._lock:
            subscribers, self._subscribers = list(self._subscribers), set()
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
                pause(stop_event, min(0.5 * 2**failures, MAX_BACKOFF))
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # pragma: no cover - a broken connection while closing
                        log.debug("live fan-out: closing the Redis subscription failed", exc_info=True)


def start_event_pipeline(settings, *, poll_interval: float = LIVE_POLL_INTERVAL) -> tuple[Dispatcher, LiveFanout]:
    """Start this process's live fan-out (Redis when ``settings.redis_url``) and the (non-persisted) live
    dispatcher publishing into it; see :func:`start_live`."""
    return start_live(getattr(settings, "redis_url", None), poll_interval=poll_interval)


def start_live(redis_url: str | None, *, poll_interval: float = LIVE_POLL_INTERVAL) -> tuple[Dispatcher, LiveFanout]:
    """Start this process's live fan-out and the (non-persisted) live dispatcher publishing into it.

    The dispatcher's cursor starts at the newest event now; every event committed afterwards (by any process)
    reaches the fan-out's subscribers. It polls every ``poll_interval`` seconds, and at once when
    ``fanout.nudge()`` is called. Stop both with ``dispatcher.stop()`` then ``fanout.stop()``.
    """
    fanout = LiveFanout(redis_url)
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


class LivePipeline:
    """This process's live fan-out and live dispatcher as one engine (``start``/``stop``; ``fanout`` once
    started): what makes SSE streams push instead of poll. Registered in ``cortex.engines`` for ``cortex serve``."""

    def __init__(self, redis_url: str | None = None, poll_interval: float = LIVE_POLL_INTERVAL):
        self.redis_url = redis_url
        self.poll_interval = poll_interval
        self.fanout: LiveFanout | None = None
        self.dispatcher: Dispatcher | None = None

    @classmethod
    def from_settings(cls, settings) -> LivePipeline:
        """The pipeline for ``REDIS_URL`` (in process without it)."""
        return cls(settings.redis_url)

    def start(self) -> None:
        """Start the fan-out and the dispatcher publishing into it (at the newest event)."""
        self.dispatcher, self.fanout = start_live(self.redis_url, poll_interval=self.poll_interval)

    def stop(self) -> None:
        """Stop the dispatcher, then the fan-out (which closes every open subscription)."""
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self.fanout is not None:
            self.fanout.stop()
