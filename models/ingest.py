"""The signed-ingest replay guard in the database: which signed requests were already recorded, and as which event.

A signed ingest request (``cortex/events/ingest.py``) may be sent again byte for byte while its ``X-Timestamp``
is within the clock-skew window. The first one is recorded with one :class:`IngestReplay` row — written in the
same transaction as the event it produced, after the event — keyed by :func:`replay_key` (a digest of the
project and the verified signature, which is an HMAC of the timestamp and the exact body). A later identical
request finds the row and is answered with that event's id; two identical requests at once both write, and the
primary key lets exactly one commit (:class:`ReplayConflict` for the other, which then reads the winner's id).
A row expires when its signature can no longer pass the window (:func:`prune_replays` deletes it), so the table
holds at most one window's worth of ingests. Used when Redis is not configured (or while it is unreachable).
"""

from __future__ import annotations

import hashlib
import weakref
from datetime import datetime

import peewee as pw

from models.base import Prepared, UTCDateTimeField, db, insert_rows, is_sqlite, transaction, utcnow


class IngestReplay(pw.Model):
    """One recorded signed ingest request: its replay key, the event it produced, when it stops mattering."""

    key = pw.CharField(max_length=64, primary_key=True)  # hex SHA-256 (replay_key)
    project_id = pw.CharField(max_length=36)
    event_id = pw.CharField(max_length=36)
    expires_at = UTCDateTimeField(index=True)

    class Meta:
        database = db
        table_name = "ingest_replay"


MODELS = [IngestReplay]


class ReplayConflict(Exception):
    """Another transaction recorded the same signed request first (raised where the row is written; the
    transaction must be rolled back)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def replay_key(project_id: str, signature: str) -> str:
    """The replay key of a verified request: SHA-256 of the project and the (lowercase hex) signature. The
    signature is the HMAC of ``X-Timestamp`` and the exact body under the project's secret, so equal keys mean
    the same project, timestamp string and body bytes."""
    return hashlib.sha256(f"{project_id}\n{signature}".encode()).hexdigest()


_FIND = Prepared(lambda key: IngestReplay.select(IngestReplay.event_id).where(IngestReplay.key == key))


def recorded_event(key: str) -> str | None:
    """The id of the event an identical request recorded (None when there is none)."""
    rows = _FIND.rows(key=key)
    return rows[0][0] if rows else None


def recorded_events(keys: list[str]) -> dict[str, str]:
    """key → id of the event an identical request recorded, for those of ``keys`` that were recorded: ONE
    query however many keys (the look-ups of concurrent ingests, ``cortex/events/ingest.py``)."""
    if not keys:
        return {}
    key, event_id = (IngestReplay._meta.fields[name].column_name for name in ("key", "event_id"))
    marks = ", ".join([db.param] * len(keys))
    sql = (f'SELECT "{key}", "{event_id}" FROM "{IngestReplay._meta.table_name}" '  # nosec B608 - only column names from the model and placeholders are interpolated; values are bound
           f'WHERE "{key}" IN ({marks})')
    return dict(db.execute_sql(sql, list(keys)).fetchall())


_FIELDS = ("key", "project_id", "event_id", "expires_at")
_insert_sql = weakref.WeakKeyDictionary()  # bound database → one-row INSERT


def remember(key: str, project_id: str, event_id: str, expires_at: datetime) -> None:
    """Record a request's replay key with the event it produced, inside the caller's (the event's) transaction;
    :class:`ReplayConflict` when the key is taken (an identical request committed first)."""
    if not db.in_transaction():
        raise RuntimeError("a replay record must be written in the transaction of its event")
    fields = [IngestReplay._meta.fields[name] for name in _FIELDS]
    sql = _insert_sql.get(db.obj)
    if sql is None:
        sql, _ = IngestReplay.insert({field: pw.Value(None, converter=False) for field in fields}).sql()
        _insert_sql[db.obj] = sql
    values = {"key": key, "project_id": project_id, "event_id": event_id, "expires_at": expires_at}
    try:
        db.execute_sql(sql, [field.db_value(values[field.name]) for field in fields])
    except pw.IntegrityError:  # on PostgreSQL the transaction is now aborted: the caller rolls it back
        raise ReplayConflict(key) from None


def remember_many(records: list[tuple[str, str, str, datetime]]) -> None:
    """Record several requests — ``(key, project_id, event_id, expires_at)`` each — inside the caller's
    transaction, with ONE multi-row INSERT on PostgreSQL (a group-commit batch of ingests);
    :class:`ReplayConflict` when a key is taken (an identical request committed first, or two identical
    requests are in the batch; it names the batch's first key, as which one clashed is not known): the caller
    rolls the transaction back and runs each request alone (``remember``)."""
    if len(records) <= 1 or is_sqlite():  # SQLite runs in-process: a statement per row costs no round trip
        for record in records:
            remember(*record)
        return
    if not db.in_transaction():
        raise RuntimeError("a replay record must be written in the transaction of its event")
    fields = [IngestReplay._meta.fields[name] for name in _FIELDS]
    rows = [IngestReplay(key=key, project_id=project_id, event_id=event_id, expires_at=expires_at,
                         __no_default__=True) for key, project_id, event_id, expires_at in records]
    try:
        insert_rows(IngestReplay, fields, rows)
    except pw.IntegrityError:  # the transaction is now aborted: the caller rolls it back
        raise ReplayConflict(records[0][0]) from None


def prune_replays(now: datetime | None = None, *, batch: int = 5000) -> int:
    """Delete expired replay records (in batches, one short transaction each); how many."""
    now = now or utcnow()
    total = 0
    while True:
        with transaction():
            doomed = [key for (key,) in IngestReplay.select(IngestReplay.key).where(IngestReplay.expires_at < now)
                      .limit(batch).tuples()]
            if doomed:
                total += IngestReplay.delete().where(IngestReplay.key.in_(doomed)).execute()
        if len(doomed) < batch:
            return total
