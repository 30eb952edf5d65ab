"""The domain-event log: a transactional outbox every consumer (SSE, webhooks, plugins, functions) reads.

``emit`` writes one envelope row in the caller's transaction, so an event exists exactly when the change it
describes was committed. ``seq`` orders the log. On PostgreSQL every event-writing transaction first takes a
transaction-scoped advisory lock, so sequence order is commit order and a reader that remembers the last
``seq`` it saw can never skip an event that commits later with a smaller number; SQLite has one writer anyway.
"""

from __future__ import annotations

import weakref
from datetime import datetime

import peewee as pw

from models.base import JSONField, UTCDateTimeField, db, new_id, rfc3339, utcnow

EVENT_LOG_LOCK = 7415002  # advisory-lock key serialising event writers on PostgreSQL


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
    timestamp = UTCDateTimeField(default=utcnow, index=True)

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


def emit(
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
    """Append one event to the log; must run inside the transaction that makes the change.

    ``timestamp`` is when the event occurred (default: now), e.g. the time a signed-ingest sender gave.
    """
    if not db.in_transaction():
        raise RuntimeError("emit() must run inside models.base.transaction() (transactional outbox)")
    if isinstance(db.obj, pw.PostgresqlDatabase):
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (EVENT_LOG_LOCK,))
    payload = {"action": action, "data": data}
    if changes:
        payload["changes"] = changes
    event = DomainEvent(
        id=new_id(),
        tenant_id=tenant_id,
        project_id=project_id,
        resource_id=resource_id,
        type=event_type,
        source=source,
        payload=payload,
        timestamp=utcnow() if timestamp is None else timestamp,
    )
    event.seq = _insert(event)
    return event


_INSERT_FIELDS = ("id", "tenant_id", "project_id", "resource_id", "type", "source", "payload", "timestamp")
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
    if isinstance(db.obj, pw.PostgresqlDatabase):
        return cursor.fetchone()[0]  # INSERT … RETURNING "seq"
    return cursor.lastrowid


def envelope(event: DomainEvent) -> dict:
    """The wire form of an event (one place)."""
    body = {
        "id": event.id,
        "tenantId": event.tenant_id,
        "resourceId": event.resource_id,
        "timestamp": rfc3339(event.timestamp),
        "type": event.type,
        "source": event.source,
        "payload": event.payload,
    }
    if event.project_id is not None:
        body["projectId"] = event.project_id
    return body


def changed_fields(before: dict, after: dict) -> dict:
    """Previous values of the fields whose value changed (the ``changes`` of an updated event)."""
    return {key: before.get(key) for key in after if before.get(key) != after.get(key)}
