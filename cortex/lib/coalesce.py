"""Coalescing: work from concurrent greenlets handed to one worker greenlet in batches.

A request that needs a round trip to a shared resource (a database transaction, a Redis call) queues its item
and waits; one worker greenlet per :class:`Coalescer` takes everything queued meanwhile (up to ``max_batch``)
and serves it with ONE round trip (:meth:`Coalescer.flush`), then wakes each waiter with its own result. Under
load the batches grow by themselves (what arrives while one batch is in flight forms the next); when idle a
batch is one item and costs one hop to the worker greenlet.

Subclasses: ``models.events.GroupCommit`` (group commit of ingest writes) and ``cortex.events.ingest``'s shared
rate counter and session reads (one round trip for every ingest of a burst). Without gevent's monkey-patching
(the test client, scripts) or with ``enabled=False`` every item is served on its own in the caller
(:meth:`direct`). Pure code: a subclass that holds a database connection gives it back in :meth:`before_wait`
and :meth:`idle`.
"""

from __future__ import annotations

import collections
import logging

from cortex.lib.background import gevent_patched

log = logging.getLogger("cortex.coalesce")


class Coalescer:
    """Queue items from many greenlets; one worker greenlet serves them in batches (see the module doc)."""

    def __init__(self, *, max_batch: int = 200, enabled: bool | None = None):
        self.max_batch = max_batch
        self.enabled = enabled
        self._pending: collections.deque = collections.deque()
        self._wake = None
        self._worker = None
        self.batches = 0  # round trips made (tests and benchmarks read these)
        self.items = 0

    # -------------------------------------------------------- to override

    def direct(self, item):
        """Serve one item in the caller (not coalescing)."""
        raise NotImplementedError

    def serve_many(self, items: list) -> list:
        """Serve ``items`` with one round trip: their results, in order (an exception fails them all)."""
        raise NotImplementedError

    def flush(self, entries: list) -> None:
        """Serve ``entries`` — ``(item, result)`` pairs — and give every ``result`` its value or error; by
        default through :meth:`serve_many`."""
        self.batches += 1
        self.items += len(entries)
        try:
            values = self.serve_many([item for item, _result in entries])
        except Exception as exc:
            for _item, result in entries:
                result.set_exception(exc)
            return
        for (_item, result), value in zip(entries, values, strict=True):
            result.set(value)

    def coalescing(self) -> bool:
        """Whether this call is queued for the worker (default: when gevent has patched threading)."""
        if self.enabled is not None:
            return self.enabled
        return gevent_patched()

    def before_wait(self) -> None:
        """Called in the caller just before it waits (a subclass gives back what the worker may need, e.g. the
        caller's pooled database connection: waiting callers must not hold them all)."""

    # -------------------------------------------------------- the caller's side

    def submit(self, item):
        """The result of ``item`` (or its error), served with whatever else is queued meanwhile."""
        if not self.coalescing():
            return self.direct(item)
        result = self._queue(item)
        self.before_wait()
        return result.get()

    def post(self, item) -> None:
        """Queue ``item`` without waiting for it (its result and any error are dropped): for writes whose
        outcome the caller need not know before it answers. Not coalescing: served at once, errors raised."""
        if not self.coalescing():
            self.direct(item)
            return
        self._queue(item)

    def _queue(self, item):
        from gevent.event import AsyncResult, Event

        result = AsyncResult()
        self._pending.append((item, result))
        if self._worker is None:
            import gevent

            self._wake = self._wake or Event()
            self._worker = gevent.spawn(self._serve_forever)
        self._wake.set()
        return result

    # -------------------------------------------------------- the worker greenlet

    def _serve_forever(self) -> None:
        import gevent

        inflight: list = []
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                gevent.sleep(0)  # let callers that are ready to queue an item do so first
                while self._pending:
                    count = min(len(self._pending), self.max_batch)
                    inflight = [self._pending.popleft() for _ in range(count)]
                    self.flush(inflight)
                    inflight = []
                self.idle()
        except BaseException:  # killed (shutdown) or a bug: nobody may wait forever
            pending, self._pending = [*inflight, *self._pending], collections.deque()
            for _item, result in pending:
                if not result.ready():
                    result.set_exception(RuntimeError(f"{type(self).__name__} stopped"))
            log.exception("%s stopped", type(self).__name__)
            raise
        finally:
            self._worker = None

    def idle(self) -> None:
        """Called in the worker when the queue is empty (a subclass gives back what it holds)."""
