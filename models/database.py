"""Bind the deferred Peewee database from DATABASE_URL, and apply versioned migrations."""

from __future__ import annotations

import logging
from urllib.parse import unquote, urlparse

import peewee as pw
from playhouse.pool import PooledPostgresqlDatabase, PooledSqliteDatabase

from cortex.lib import crypto
from models.base import db, is_sqlite, transaction, utcnow
from models.migrations import ALL_MODELS, MIGRATIONS

log = logging.getLogger(__name__)

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "foreign_keys": 1,
    "synchronous": "normal",
    "busy_timeout": 10000,
    "cache_size": -16000,
}


class CortexPostgresqlDatabase(PooledPostgresqlDatabase):
    """Pooled PostgreSQL without Peewee's ``SELECT 1`` round trip on every checkout.

    A checkout happens on every request; the ping doubled the database round trips of a read. A dead
    connection is still detected from libpq's local transaction status, and ``stale_timeout`` recycles idle
    ones; a connection the server dropped silently fails its next query once and is then discarded.
    """

    def _is_closed(self, conn):
        return bool(conn.closed) or self._adapter.txn_status(conn) == self._adapter.txn_unknown


def make_database(url: str, pool_size: int = 32, pool_timeout: float = 10.0) -> pw.Database:
    """Create the Peewee database for a ``sqlite:///path`` or ``postgresql://…`` URL: at most ``pool_size``
    connections, a caller waits up to ``pool_timeout`` seconds for a free one (then ``MaxConnectionsExceeded``)."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        if not url.startswith("sqlite:///"):
            raise ValueError("a SQLite DATABASE_URL is sqlite:///relative/path.db or sqlite:////absolute/path.db")
        path = unquote(url[len("sqlite:///") :].split("?", 1)[0])
        return PooledSqliteDatabase(
            path or ":memory:", pragmas=SQLITE_PRAGMAS, max_connections=pool_size, stale_timeout=300,
            timeout=pool_timeout, check_same_thread=False,
        )
    if parsed.scheme in ("postgres", "postgresql"):
        return CortexPostgresqlDatabase(
            unquote(parsed.path.lstrip("/")) or "postgres",
            user=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 5432,
            max_connections=pool_size,
            stale_timeout=300,
            timeout=pool_timeout,
        )
    raise ValueError(f"DATABASE_URL scheme {parsed.scheme!r} is not supported (use sqlite:/// or postgresql://)")


def init_database(url: str, pool_size: int = 32, pool_timeout: float = 10.0) -> pw.Database:
    """Bind the shared database proxy to ``url`` (closing any previous binding)."""
    if db.obj is not None:
        db.obj.close_all() if hasattr(db.obj, "close_all") else db.obj.close()
    database = make_database(url, pool_size, pool_timeout)
    db.initialize(database)
    return database


class SchemaVersion(pw.Model):
    """One row per applied migration."""

    version = pw.IntegerField(primary_key=True)
    name = pw.CharField(max_length=200)
    applied_at = pw.DateTimeField(default=utcnow)

    class Meta:
        database = db
        table_name = "schema_version"


def current_version() -> int:
    """Highest applied migration version (0 for an empty database)."""
    SchemaVersion.create_table(safe=True)
    return SchemaVersion.select(pw.fn.MAX(SchemaVersion.version)).scalar() or 0


def upgrade() -> list[int]:
    """Apply every pending migration in order, each in its own transaction; returns what was applied."""
    applied = []
    with db.connection_context():
        if db.obj is not None and not is_sqlite():
            # Several processes may start at once: serialise migrations with an advisory lock.
            db.execute_sql("SELECT pg_advisory_lock(7415001)")
        try:
            version = current_version()
            for number, name, migrate in MIGRATIONS:
                if number <= version:
                    continue
                with db.atomic():
                    migrate(db)
                    SchemaVersion.create(version=number, name=name)
                log.info("applied migration %s: %s", number, name)
                applied.append(number)
        finally:
            if not is_sqlite():
                db.execute_sql("SELECT pg_advisory_unlock(7415001)")
    return applied


def rotate_secrets(batch: int = 500) -> dict[str, int]:
    """Encrypt every stored secret (every ``*_encrypted`` column of every table) again with the current key:
    ``{"table.column": values re-encrypted}``. Run after CORTEX_SECRET_KEY changed, with the old key in
    CORTEX_SECRET_KEY_PREVIOUS; afterwards the previous keys can be dropped. Idempotent; one short transaction per
    batch of rows, so a running server is not held up."""
    counts: dict[str, int] = {}
    for model in ALL_MODELS:
        fields = [field for field in model._meta.sorted_fields if field.name.endswith("_encrypted")]
        if not fields:
            continue
        key = model._meta.primary_key
        after = None
        while True:
            with transaction():
                query = model.select(key, *fields).order_by(key).limit(batch)
                if after is not None:
                    query = query.where(key > after)
                rows = list(query.tuples())
                for row_key, *values in rows:
                    changes = {field: crypto.reencrypt(value) for field, value in zip(fields, values, strict=True)
                               if value}
                    if changes:
                        model.update(changes).where(key == row_key).execute()
                    for field in changes:
                        name = f"{model._meta.table_name}.{field.column_name}"
                        counts[name] = counts.get(name, 0) + 1
            if len(rows) < batch:
                break
            after = rows[-1][0]
    return counts
