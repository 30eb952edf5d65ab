"""Database handle, base model and the helpers every domain model shares."""

from __future__ import annotations

import json
import math
import threading
import uuid
import weakref
from contextlib import contextmanager
from datetime import UTC, datetime

import peewee as pw

from cortex.lib.coalesce import Coalescer

#: Deferred database: ``models.database.init_database`` binds it to SQLite or PostgreSQL at start-up.
db = pw.DatabaseProxy()

# SQLite allows one writer; greenlets queue on this (gevent-aware once monkey-patched) lock instead
# of spinning in SQLite's busy handler, which would block the whole event hub.
_sqlite_writer = threading.RLock()


class DomainError(Exception):
    """A domain rule was broken: the only kind of error models raise. ``kind`` says which way, ``detail`` which
    rule. One place maps kinds to HTTP answers (``cortex.http.problems.DOMAIN_STATUS``): ``invalid`` 400,
    ``unauthenticated`` 401, ``forbidden`` 403, ``not_found`` 404, ``conflict`` 409, ``rate_limited`` 429 (with
    ``retry_after`` seconds), ``upstream_failed`` 502 (a configured outside service failed), ``unavailable``
    503 (a command could not be delivered)."""

    KINDS = ("invalid", "unauthenticated", "forbidden", "not_found", "conflict", "rate_limited",
             "upstream_failed", "unavailable")

    def __init__(self, kind: str, detail: str, *, retry_after: int | None = None):
        if kind not in self.KINDS:
            raise ValueError(f"unknown DomainError kind {kind!r}")
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.retry_after = retry_after


def invalid(detail: str) -> DomainError:
    """400: the input breaks a rule (the detail names the field and the rule)."""
    return DomainError("invalid", detail)


def not_found(what: str) -> DomainError:
    """404: a resource the caller cannot see (``what`` names it: "Session 123")."""
    return DomainError("not_found", f"{what} not found")


def found(row, what: str):
    """``row`` when there is one; not_found(``what``) when it is None (a lookup that must find its row)."""
    if row is None:
        raise not_found(what)
    return row


def conflict(detail: str) -> DomainError:
    """409: the request clashes with stored state."""
    return DomainError("conflict", detail)


def forbidden(detail: str) -> DomainError:
    """403: the caller is known but may not do this (role, scope)."""
    return DomainError("forbidden", detail)


def check_cap(owner: type[pw.Model], owner_id: str, rows: pw.ModelSelect, limit: int, what: str, setting: str) -> None:
    """Inside the creating transaction: conflict (409) when ``rows`` already counts ``limit`` — one more of
    ``what`` would pass the cap the operator set with ``setting``. On PostgreSQL the ``owner`` row (the
    project or user the rows belong to: its model and id) is locked first, so concurrent creations are counted one after the
    other and cannot overshoot together; SQLite's write transaction is exclusive already."""
    if not is_sqlite():
        key = owner._meta.primary_key
        owner.select(key).where(key == owner_id).for_update().execute()
    if rows.count() >= limit:
        raise conflict(f"at most {limit} {what} are allowed ({setting}); delete one before creating another")


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
    """Format a datetime as an RFC 3339 UTC timestamp with millisecond precision and a ``Z`` suffix."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="milliseconds") + "Z"  # naive values are UTC by convention


def rfc3339_raw(value) -> str | None:
    """RFC 3339 from a raw database value: SQLite's stored text or a PostgreSQL datetime (hot paths)."""
    if value is None:
        return None
    if isinstance(value, str):  # "YYYY-MM-DD HH:MM:SS[.ffffff]", always UTC (see UTCDateTimeField)
        return f"{value[:10]}T{value[11:19]}.{value[20:23] if len(value) > 19 else '000'}Z"
    return rfc3339(value)


class Prepared:
    """A query compiled to SQL once per bound database, then executed with fresh parameters.

    Compiling a Peewee query and turning 50 rows into model instances cost ~1.5 ms; list endpoints on the hot
    path use this instead and read raw rows (see ``rfc3339_raw``/``split_names`` for the column decoders).
    ``build`` receives one placeholder string per parameter name and returns the Peewee query.
    """

    def __init__(self, build):
        self.build = build
        self._compiled = weakref.WeakKeyDictionary()  # bound database → (sql, values, slots, selected fields)

    def _compile(self, params: dict):
        compiled = self._compiled.get(db.obj)
        if compiled is None:
            marks = {name: f"\x00{name}\x00" for name in params}
            query = self.build(**marks)
            sql, values = query.sql()
            slots = [(i, name) for i, v in enumerate(values) for name, mark in marks.items() if v == mark]
            fields = tuple(getattr(query, "_returning", ()) or ())
            compiled = self._compiled[db.obj] = (sql, tuple(values), tuple(slots), fields)
        return compiled

    def rows(self, **params) -> list[tuple]:
        """Execute with these parameter values; raw tuples in the query's column order."""
        sql, values, slots, _fields = self._compile(params)
        values = list(values)
        for index, name in slots:
            values[index] = params[name]
        return db.execute_sql(sql, values).fetchall()

    def models(self, **params) -> list:
        """Execute; model instances of the query's model (every selected column converted as Peewee would),
        for hot paths that need whole rows: the same objects as ``query`` would give, without compiling it."""
        rows = self.rows(**params)
        fields = self._compile(params)[3]
        made = []
        for row in rows:
            instance = fields[0].model(**{field.name: field.python_value(value) for field, value in zip(fields, row,
                                                                                                         strict=True)})
            instance._dirty.clear()
            made.append(instance)
        return made

    def first(self, **params):
        """The first model instance (``models``), or None."""
        found_rows = self.models(**params)
        return found_rows[0] if found_rows else None


def insert_rows(model, fields, rows: list, returning: str = ""):
    """Execute ONE multi-row INSERT of ``rows`` (model instances; each field's raw value converted with its
    ``db_value``: a foreign key is its id, never a fetch of the related row) — one round trip however many
    rows; ``returning`` e.g. ``RETURNING "id"``."""
    columns = ", ".join(f'"{field.column_name}"' for field in fields)
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    sql = f'INSERT INTO "{model._meta.table_name}" ({columns}) VALUES {", ".join([row] * len(rows))} {returning}'  # nosec B608 - only column names from the models and placeholders are interpolated; values are bound
    return db.execute_sql(sql, [field.db_value(item.__data__.get(field.name)) for item in rows for field in fields])


def insert_new(model, values: dict) -> bool:
    """Insert one row unless a unique index has it already; whether it was inserted (idempotent writes of
    at-least-once consumers)."""
    return bool(model.insert(**values).on_conflict_ignore().as_rowcount().execute())


def parse_instant(value, field: str) -> datetime:
    """A client's date-time that must say its offset: ISO 8601 with ``Z`` or ``±hh:mm`` → aware UTC at millisecond
    precision (what both databases keep); invalid (400) naming ``field`` otherwise."""
    text = value.strip() if isinstance(value, str) else ""
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text) if "T" in text.upper() else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise invalid(f"{field} must be an ISO 8601 date-time with an offset, e.g. 2030-01-15T10:00:00Z, not {value!r}")
    parsed = as_utc(parsed)
    return parsed.replace(microsecond=parsed.microsecond // 1000 * 1000)


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO 8601 / RFC 3339 timestamp; naive values are taken as UTC. Raises ValueError."""
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        return as_utc(datetime.fromisoformat(text))
    except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00 is past datetime.max in UTC
        raise ValueError(f"{text!r} is out of range") from None


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


class NameListField(pw.TextField):
    """A list of names without commas (e.g. API-key scopes), stored as comma-separated text.

    Cheaper than JSON to decode on hot list endpoints (``split`` instead of a JSON parse per row).
    """

    def db_value(self, value):
        if value is None:
            return None
        if any("," in item for item in value):
            raise ValueError("names in a NameListField must not contain commas")
        return ",".join(value)

    def python_value(self, value):
        return split_names(value)


def split_names(value: str | None) -> list[str] | None:
    """Decode a raw NameListField value."""
    if value is None:
        return None
    return value.split(",") if value else []


class BaseModel(pw.Model):
    """Base of every model: UUID string primary key, creation time, the deferred database."""

    id = pw.CharField(primary_key=True, max_length=36, default=new_id)
    created_at = UTCDateTimeField(default=utcnow)

    class Meta:
        database = db
        legacy_table_names = False


def is_sqlite() -> bool:
    """True when the bound database is SQLite (the one check: every other database is PostgreSQL)."""
    return isinstance(db.obj, pw.SqliteDatabase)


def locked(query):
    """Lock the rows ``query`` selects for the rest of the transaction on PostgreSQL (``FOR UPDATE``); SQLite's
    write transaction is exclusive already."""
    return query if is_sqlite() else query.for_update()


def project_row(model, project_id: str, row_id: str, what: str, *, lock: bool = False):
    """The row of ``model`` (a table with ``project_id`` and ``id``) with this id in this project — locked with
    ``lock`` — or not_found("``what`` ``row_id``"), also for another project's row."""
    query = model.select().where((model.project_id == project_id) & (model.id == row_id))
    return found((locked(query) if lock else query).first(), f"{what} {row_id}")


def release_connection() -> None:
    """Return this request's connection to the pool before slow outside I/O (reconnects lazily after).

    A no-op inside a transaction, whose connection must stay put.
    """
    if not db.is_closed() and not db.in_transaction():
        db.close()


@contextmanager
def own_connection():
    """Return the database connection to the pool afterwards if this block opened it (background jobs)."""
    opened = db.is_closed()
    try:
        yield
    finally:
        if opened and not db.is_closed() and not db.in_transaction():
            db.close()


class ConnectionCoalescer(Coalescer):
    """A :class:`cortex.lib.coalesce.Coalescer` whose callers and worker hold pooled database connections: a
    caller gives its connection back before it waits, the worker when its queue is empty (waiting callers must
    never hold every connection of the pool)."""

    def before_wait(self) -> None:
        release_connection()

    def idle(self) -> None:
        release_connection()


def deleted_body(resource_id: str) -> dict:
    """DeletedResponse: what a DELETE of a resource with an id answers."""
    return {"id": resource_id, "deleted": True}


# ---------------------------------------------------------------- paging

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
#: Offsets beyond this are clamped to it (no list is that long; keeps the SQL in range).
MAX_OFFSET = 2**53


def _whole(value, default: int, low: int, high: int) -> int:
    """A query number as a whole number: truncated toward zero, clamped into [low, high]; NaN → default."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    if value <= low:
        return low
    if value >= high:
        return high
    return int(value)


def page_bounds(limit=None, offset=None, *, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> tuple[int, int]:
    """(limit, offset) from the document's plain numbers, read leniently like every list of the API: limit
    truncated and clamped into [1, maximum] (default ``default``), offset truncated and clamped to ≥ 0."""
    return _whole(limit, default, 1, maximum), _whole(offset, 0, 0, MAX_OFFSET)


@contextmanager
def transaction():
    """One domain operation = one transaction (serialised writers on SQLite).

    SQLite: ``BEGIN IMMEDIATE`` takes the write lock up front. A deferred transaction that reads first and
    writes later cannot wait for another process's writer: in WAL mode its upgrade fails at once with
    SQLITE_BUSY (its snapshot is stale) — measured as webhook claims (read, then lease) failing and backing off
    while a second process wrote events. Within one process the writer lock above serialises anyway."""
    if is_sqlite():
        with _sqlite_writer, db.atomic("IMMEDIATE"):
            yield
    else:
        with db.atomic():
            yield
