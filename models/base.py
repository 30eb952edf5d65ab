"""Database handle, base model and the helpers every domain model shares."""

from __future__ import annotations

import json
import threading
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime

import peewee as pw

#: Deferred database: ``cortex.db.init_database`` binds it to SQLite or PostgreSQL at start-up.
db = pw.DatabaseProxy()

# SQLite allows one writer; greenlets queue on this (gevent-aware once monkey-patched) lock instead
# of spinning in SQLite's busy handler, which would block the whole event hub.
_sqlite_writer = threading.RLock()


def new_id() -> str:
    """A new random UUID string (the id format of every resource)."""
    return str(uuid.uuid4())


def utcnow() -> datetime:
    """Current UTC time, timezone-aware, at millisecond precision (what both databases keep)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def as_utc(value: datetime | None) -> datetime | None:
    """Normalise a stored datetime (naive means UTC) to an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def rfc3339(value: datetime | None) -> str | None:
    """Format a datetime as an RFC 3339 UTC timestamp with a ``Z`` suffix."""
    value = as_utc(value)
    if value is None:
        return None
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO 8601 / RFC 3339 timestamp; naive values are taken as UTC. Raises ValueError."""
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    value = datetime.fromisoformat(text)
    return as_utc(value)


class UTCDateTimeField(pw.DateTimeField):
    """Stores naive UTC datetimes, returns aware UTC datetimes on both SQLite and PostgreSQL."""

    def db_value(self, value):
        value = as_utc(value)
        return None if value is None else value.replace(tzinfo=None)

    def python_value(self, value):
        return as_utc(super().python_value(value))


class JSONField(pw.TextField):
    """A JSON document kept as text (portable between SQLite and PostgreSQL)."""

    def db_value(self, value):
        return None if value is None else json.dumps(value, separators=(",", ":"))

    def python_value(self, value):
        return None if value is None else json.loads(value)


class BaseModel(pw.Model):
    """Base of every model: UUID string primary key, creation time, the deferred database."""

    id = pw.CharField(primary_key=True, max_length=36, default=new_id)
    created_at = UTCDateTimeField(default=utcnow)

    class Meta:
        database = db
        legacy_table_names = False


def is_sqlite() -> bool:
    """True when the bound database is SQLite."""
    return isinstance(db.obj, pw.SqliteDatabase)


@contextmanager
def transaction():
    """One domain operation = one transaction (serialised writers on SQLite)."""
    if is_sqlite():
        with _sqlite_writer, db.atomic():
            yield
    else:
        with db.atomic():
            yield
