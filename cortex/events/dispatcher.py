"""Handing committed domain events to their consumers (the reading side of the transactional outbox).

``models.events.emit`` writes an event in the transaction that makes the change; nothing is published at
commit time. A :class:`Dispatcher` polls the log instead: it reads the events after its cursor in ``seq``
order, hands them to its handler and only then advances the cursor. A process that dies between commit and
publish therefore loses nothing — the next dispatcher hands the event over (at least once).

- **Persistent consumers** (the webhook engine; later plugins and functions) keep their cursor in
  ``EventCursor`` (created at 0).
- **The live consumer** (``cortex.events.fanout``: the SSE streams) keeps its cursor in memory, starting at the
  newest event at start-up (``persist=False``): live streams need no per-process row, and a restarted process
  does not replay the log to browsers (they resume with ``Last-Event-ID`` from the log instead).

A dispatcher polls every ``poll_interval`` seconds and at once when :meth:`Dispatcher.wake` is called (a write
of this process, ``cortex.events.listener.CommitListener`` for other processes' commits on PostgreSQL).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cortex.lib.background import Worker, pause
from models.base import own_connection, transaction, utcnow
from models.events import DomainEvent, EventCursor, newest_seq

log = logging.getLogger("cortex.dispatcher")

MAX_BACKOFF = 30.0  # seconds: the longest pause after repeated failures
#: After a wake-up, wait this long before reading, so a burst of writes is read (and published) as one batch:
#: measured with tools/bench_ingest.py, one read per write request cost more CPU than the writes themselves.
WAKE_COALESCE = 0.01


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
        self._worker = Worker(f"cortex-dispatcher-{consumer}", self.run_forever)

    @property
    def cursor(self) -> int | None:
        """The current cursor: the last ``seq`` handled (None before a non-persisted one is primed)."""
        if not self.persist:
            return self._cursor
        with own_connection():
            return EventCursor.select(EventCursor.seq).where(EventCursor.consumer == self.consumer).scalar()

    def prime(self) -> int:
        """Start a non-persisted cursor at the newest event (events committed afterwards are handed over)."""
        if self.persist:
            raise RuntimeError("prime() is for non-persisted (live) dispatchers")
        with own_connection():
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
        with own_connection():
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

    def drain(self) -> int:
        """Hand every event after the cursor over, inline (tests, tools); how many events were read."""
        read = 0
        with own_connection():
            while handled := self.run_once():
                read += handled
        return read

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
                pause(stop_event, min(self.poll_interval * 2**failures, MAX_BACKOFF))
                continue
            if failures:
                log.info("dispatcher %s: recovered after %d failed attempts", self.consumer, failures)
                failures = 0
            if handled >= self.batch:
                time.sleep(0)  # a backlog: go on at once, but let other greenlets run
            else:
                pause(stop_event, self.poll_interval, self._wake)
                if self._wake.is_set() and self.coalesce > 0:
                    pause(stop_event, self.coalesce)  # woken by a write: let the rest of its burst commit

    def start(self) -> None:
        """Run ``run_forever`` in the background (greenlet under gevent, else a daemon thread)."""
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background loop and wait for it."""
        self._worker.stop(timeout)


class ConsumerEngine:
    """An engine made of a persistent :class:`Dispatcher` (``self.dispatcher``) and a companion background job
    (``self.companion``: a job runner, a clock) — the sanctions, plugins and function-events engines. Started together,
    stopped companion first; a write of this process wakes the dispatcher."""

    dispatcher: Dispatcher
    companion: object  # start() / stop(timeout)

    def drain(self) -> int:
        """Hand every event after the cursor over, inline; how many events were read."""
        return self.dispatcher.drain()

    def events_committed(self) -> None:
        """This process committed events: read them now, not at the next poll."""
        self.dispatcher.wake()

    def start(self) -> None:
        self.dispatcher.start()
        self.companion.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.companion.stop(timeout)
        self.dispatcher.stop(timeout)
