"""The domain-event log: a transactional outbox every consumer (SSE, webhooks, plugins, functions) reads.

``emit`` writes one envelope row in the caller's transaction, so an event exists exactly when the change it
describes was committed. ``seq`` orders the log. On PostgreSQL every event-writing transaction first takes a
transaction-scoped advisory lock, so sequence order is commit order and a reader that remembers the last
``seq`` it saw can never skip an event that commits later with a smaller number; SQLite has one writer anyway.
A transaction takes that lock once (its first ``emit``), however many events it writes.

:class:`GroupCommit` runs small event-writing units of work from concurrent requests in one shared transaction
(group commit): signed ingest uses it, because one COMMIT per event — a WAL write on SQLite, a WAL flush while
holding the event-log lock on PostgreSQL — was what limited it.

**The log's clock is the server's.** ``timestamp`` (the column) is when Cortex wrote the event — its receive
time — and it alone decides retention (:func:`prune_events`); ``seq`` alone orders the log. A time the event
reports about itself (a signed-ingest sender's ``timestamp``, a transcript line's time) is kept beside it in
``occurred_at`` and is what the envelope's ``timestamp`` shows (the document: "when the event occurred"), so an
event that reports an old time is neither pruned early nor reordered.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from datetime import datetime, timedelta

import peewee as pw

from cortex.lib.metrics import count_events
from models.base import (
    ConnectionCoalescer,
    JSONField,
    UTCDateTimeField,
    db,
    insert_rows,
    is_sqlite,
    new_id,
    rfc3339,
    transaction,
    utcnow,
)

EVENT_LOG_LOCK = 7415002  # advisory-lock key serialising event writers on PostgreSQL
#: PostgreSQL NOTIFY channel: every event-writing transaction notifies it (delivered at commit, one
#: notification per transaction), so consumers in other processes wake at once instead of polling.
EVENTS_CHANNEL = "cortex_events"


class DomainEvent(pw.Model):
    """One event envelope (the `*Event` schemas of the document)."""

    seq = pw.BigAutoField()  # primary key: the log order
    id = pw.CharField(max_length=36, unique=True, default=new_id)  # UUIDv4, the SSE event id
    tenant_id = pw.CharField(max_length=36, index=True)
    project_id = pw.CharField(max_length=36, null=True, index=True)
    resource_id = pw.CharField(max_length=255)
    type = pw.CharField(max_length=100)
    source = pw.CharField(max_length=100, default="cortex:api")
    payload = JSONField()
    timestamp = UTCDateTimeField(default=utcnow, index=True)  # receive time: the log's clock (retention)
    occurred_at = UTCDateTimeField(null=True)  # the time the event reports (e.g. an ingest sender's), if any

    class Meta:
        database = db
        table_name = "domain_event"


class EventCursor(pw.Model):
    """How far one consumer (e.g. ``webhooks``) has processed the log."""

    consumer = pw.CharField(max_length=100, primary_key=True)
    seq = pw.BigIntegerField(default=0)
    updated_at = UTCDateTimeField(default=utcnow)

    class Meta:
        database = db
        table_name = "event_cursor"


MODELS = [DomainEvent, EventCursor]


def emit(event_type: str, **fields) -> DomainEvent:
    """Append one event to the log (``fields`` as for :func:`new_event`); must run inside the transaction that
    makes the change."""
    event = new_event(event_type, **fields)
    append([event])
    return event


def new_event(
    event_type: str,
    *,
    tenant_id: str,
    project_id: str | None,
    resource_id: str,
    action: str,
    data: dict,
    changes: dict | None = None,
    source: str = "cortex:api",
    timestamp: datetime | None = None,
) -> DomainEvent:
    """An envelope not yet in the log (``append`` writes it); ``emit`` is both in one call. ``timestamp`` is
    when the event occurred as its reporter says (e.g. the time a signed-ingest sender gave): it is kept in
    ``occurred_at`` and shown as the envelope's ``timestamp``; the log's own clock (the ``timestamp`` column,
    retention) is always the time Cortex received it."""
    payload = {"action": action, "data": data}
    if changes:
        payload["changes"] = changes
    return DomainEvent(  # every column but seq given: no defaults to compute (__no_default__)
        __no_default__=True,
        id=new_id(),
        tenant_id=tenant_id,
        project_id=project_id,
        resource_id=resource_id,
        type=event_type,
        source=source,
        payload=payload,
        timestamp=utcnow(),
        occurred_at=timestamp,
    )


def append(events: list[DomainEvent]) -> None:
    """Write envelopes to the log in this order, inside the caller's transaction; sets each one's ``seq``.

    On PostgreSQL several events go in one multi-row INSERT (one round trip for a batch of signed ingests).
    """
    if not db.in_transaction():
        raise RuntimeError("events must be written inside models.base.transaction() (transactional outbox)")
    if is_sqlite():
        for event in events:
            event.seq = _insert(event)
    elif len(events) == 1:
        _lock_log()
        events[0].seq = _insert(events[0])
    else:
        _lock_log()
        fields = [DomainEvent._meta.fields[name] for name in _INSERT_FIELDS]
        cursor = insert_rows(DomainEvent, fields, events, 'RETURNING "id", "seq"')
        seqs = dict(cursor.fetchall())  # RETURNING's row order is not promised: match by id
        for event in events:
            event.seq = seqs[event.id]
    # cortex_events_total{type} (GET /metrics): counted when written, so an event whose transaction rolls back
    # afterwards (rare; a failed group-commit batch whose items are then written one by one) counts too.
    count_events(event.type for event in events)


_locked = weakref.WeakSet()  # outermost transactions (peewee objects) that hold the event-log lock


def _outer_transaction():
    return db._state.transactions[0]  # peewee's stack of this connection's (nested) transactions


def _lock_log(statement: str = f"SELECT pg_advisory_xact_lock(%s); NOTIFY {EVENTS_CHANNEL}") -> None:
    """Take the event-log advisory lock for the rest of the transaction (once per transaction), and notify
    ``EVENTS_CHANNEL`` (sent when the transaction commits)."""
    outer = _outer_transaction()
    if outer not in _locked:
        db.execute_sql(statement, (EVENT_LOG_LOCK,))
        _locked.add(outer)


_INSERT_FIELDS = ("id", "tenant_id", "project_id", "resource_id", "type", "source", "payload", "timestamp",
                  "occurred_at")
_insert_sql = weakref.WeakKeyDictionary()  # bound database → INSERT statement


def _insert(event: DomainEvent) -> int:
    """INSERT one event with SQL compiled once per database (compiling Peewee's insert was the largest
    single cost of a signed-ingest request); returns the new ``seq``."""
    fields = [DomainEvent._meta.fields[name] for name in _INSERT_FIELDS]
    sql = _insert_sql.get(db.obj)
    if sql is None:
        sql, _ = DomainEvent.insert({field: pw.Value(None, converter=False) for field in fields}).sql()
        _insert_sql[db.obj] = sql
    cursor = db.execute_sql(sql, [field.db_value(getattr(event, field.name)) for field in fields])
    if not is_sqlite():
        return cursor.fetchone()[0]  # INSERT … RETURNING "seq"
    return cursor.lastrowid


def event_body(event: DomainEvent) -> dict:
    """The event envelope: the wire form of an event (the `*Event` schemas; one place). Its ``timestamp`` is
    when the event occurred: the time it reports (``occurred_at``) when it gave one, else when it was logged."""
    body = {
        "id": event.id,
        "tenantId": event.tenant_id,
        "resourceId": event.resource_id,
        "timestamp": rfc3339(event.occurred_at or event.timestamp),
        "type": event.type,
        "source": event.source,
        "payload": event.payload,
    }
    if event.project_id is not None:
        body["projectId"] = event.project_id
    return body


def example_event_body() -> dict:
    """One example envelope (a ``session.created`` event) built through :func:`event_body` from an unsaved event,
    so it has exactly the wire form the streams deliver (``GET /api/events/schema``)."""
    tenant_id, project_id, session_id = new_id(), new_id(), new_id()
    now = utcnow()
    session = {
        "id": session_id,
        "tenantId": tenant_id,
        "externalRoomId": "lobby-eu-west-1",
        "projectId": project_id,
        "gateway": "gateway.odin.4players.io",
        "title": "Squad voice - match 4821",
        "createdByUserId": new_id(),
        "createdAt": rfc3339(now),
        "status": "created",
        "idleTimeout": 300,
    }
    example = DomainEvent(
        id=new_id(),
        tenant_id=tenant_id,
        project_id=project_id,
        resource_id=f"session:{session_id}",
        type="session.created",
        source="cortex:api",
        payload={"action": "created", "data": session},
        timestamp=now,
    )
    return event_body(example)


def newest_seq() -> int:
    """The highest ``seq`` in the log (0 when it is empty)."""
    return DomainEvent.select(pw.fn.MAX(DomainEvent.seq)).scalar() or 0


#: Days an event stays in the log by default (CORTEX_EVENT_RETENTION_DAYS).
DEFAULT_RETENTION_DAYS = 7.0


def prune_events(older_than_days: float = DEFAULT_RETENTION_DAYS, *, batch: int = 5000) -> int:
    """Delete events older than the retention, never one after the smallest persisted cursor; how many.

    Age is the log's clock (``timestamp``: when Cortex received the event), never a time the event reports.
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


def changed_fields(before: dict, after: dict) -> dict:
    """Previous values of the fields whose value changed (the ``changes`` of an updated event)."""
    return {key: before.get(key) for key in after if before.get(key) != after.get(key)}


# ---------------------------------------------------------------- group commit


class GroupCommit(ConnectionCoalescer):
    """Group commit: writes from concurrent greenlets share transactions, one BEGIN/COMMIT for many.

    A :class:`cortex.lib.coalesce.Coalescer`: ``run(item)`` queues ``item`` and blocks the calling greenlet until a
    transaction that wrote it committed, then returns what the writer returned for it (or raises what it
    raised). One committer greenlet per process takes everything queued meanwhile (up to ``max_batch``) and writes it in ONE transaction with
    ``write_many(items)`` (a list of results in the same order). By default an item is a function and
    ``write_many`` calls each in turn, i.e. ``run(work)`` behaves like ``with transaction(): return work()``;
    a bulk writer (e.g. multi-row INSERTs, ``cortex/events/ingest.py``) passes its own ``write_many`` and ``write_one``.
    Items must only read and write the database (no request context, no outside effects): they may be run
    again after a rollback.

    - On PostgreSQL the batch takes the event-log lock first, then sets ``lock_timeout``: a batch takes row
      locks while holding the log lock, the reverse of every other writer's order (row locks, then the log lock
      at ``emit``), so instead of risking a deadlock it gives up any lock wait after ``lock_timeout_ms`` — well
      before PostgreSQL's deadlock check (``deadlock_timeout``, 1 s by default) could pick the other side.
    - When the batch fails it is rolled back and nothing of it stays. With the default writer the function
      that raised runs again alone (``write_one``, in its own transaction, in the usual lock order), so its
      caller gets exactly the answer it would have got without batching, and the rest run again as a batch;
      with a bulk writer, or when the COMMIT failed, every item runs again alone.

    Called inside a transaction, ``run`` writes there. Without gevent's monkey-patching (tests on Flask's
    client, scripts) or with ``enabled=False``, every ``run`` is simply its own transaction.
    """

    def __init__(
        self,
        write_many: Callable[[list], list] | None = None,
        write_one: Callable[[object], object] | None = None,
        *,
        max_batch: int = 200,
        lock_timeout_ms: int = 100,
        enabled: bool | None = None,
    ):
        super().__init__(max_batch=max_batch, enabled=enabled)
        self.write_many = write_many or self._call_each
        self.write_one = write_one or _call
        self.lock_timeout_ms = lock_timeout_ms
        self._failed: int | None = None  # which function of the batch raised (default writer)

    def run(self, item):
        """``item``'s result once a transaction that wrote it committed (see the class doc)."""
        return self.submit(item)

    def coalescing(self) -> bool:
        return not db.in_transaction() and super().coalescing()  # inside a transaction: part of it, as before

    def direct(self, item):
        with transaction():
            return self.write_one(item)

    def _call_each(self, works: list) -> list:
        values = []
        for index, work in enumerate(works):
            self._failed = index
            values.append(work())
        self._failed = None
        return values

    def flush(self, batch: list) -> None:
        while len(batch) > 1:
            self._failed = None
            try:
                with transaction():
                    if not is_sqlite():
                        _lock_log(f"SELECT pg_advisory_xact_lock(%s); NOTIFY {EVENTS_CHANNEL}; "
                                  f"SET LOCAL lock_timeout = {int(self.lock_timeout_ms)}")
                    values = self.write_many([item for item, _result in batch])
                    if len(values) != len(batch):
                        raise RuntimeError(f"write_many returned {len(values)} results for {len(batch)} items")
            except Exception:
                failed = self._failed
                if failed is None:  # a bulk writer or the COMMIT failed: every item alone
                    break
                self._alone(batch[failed])
                batch = batch[:failed] + batch[failed + 1 :]
                continue
            self.batches += 1
            self.items += len(batch)
            for (_item, result), value in zip(batch, values, strict=True):
                result.set(value)
            return
        for entry in batch:
            self._alone(entry)

    def _alone(self, entry) -> None:
        item, result = entry
        self.batches += 1
        self.items += 1
        try:
            value = self.direct(item)
        except Exception as exc:
            result.set_exception(exc)
        else:
            result.set(value)


def _call(work):
    return work()
