"""DATABASE_URL parsing, SQLite PRAGMAs on live connections, and versioned migrations."""

from __future__ import annotations

import os

import peewee as pw
import pytest

from models.base import db
from models.database import SchemaVersion, current_version, init_database, make_database, upgrade
from models.identity import MODELS
from models.migrations import MIGRATIONS

ON_POSTGRES = (os.environ.get("DATABASE_URL") or "").startswith(("postgres://", "postgresql://"))
ALL_VERSIONS = [number for number, _name, _migrate in MIGRATIONS]


def close(database) -> None:
    database.close_all() if hasattr(database, "close_all") else database.close()


# ------------------------------------------------------------------------------------------ make_database


@pytest.mark.parametrize(
    "url,path",
    [
        ("sqlite:///cortex.db", "cortex.db"),
        ("sqlite:///data/sub/cortex.db", "data/sub/cortex.db"),
        ("sqlite:////var/lib/cortex/cortex.db", "/var/lib/cortex/cortex.db"),
        ("sqlite:////abs%20dir/cortex.db", "/abs dir/cortex.db"),
        ("sqlite:///", ":memory:"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_sqlite_urls(url, path):
    database = make_database(url, pool_size=7)
    assert isinstance(database, pw.SqliteDatabase)
    assert database.database == path
    assert database._max_connections == 7
    assert database.is_closed()


@pytest.mark.parametrize(
    "url,params",
    [
        (
            "postgresql://cortex:s%40cret%2F1@db.internal:6543/cortex_prod",
            {"database": "cortex_prod", "user": "cortex", "password": "s@cret/1", "host": "db.internal", "port": 6543},
        ),
        (
            "postgres://postgres@127.0.0.1/test",
            {"database": "test", "user": "postgres", "password": None, "host": "127.0.0.1", "port": 5432},
        ),
        (
            "postgresql://localhost",
            {"database": "postgres", "user": None, "password": None, "host": "localhost", "port": 5432},
        ),
    ],
)
def test_postgresql_urls_are_parsed_without_connecting(url, params):
    database = make_database(url, pool_size=5)  # nothing listens on db.internal: no connection is attempted
    assert isinstance(database, pw.PostgresqlDatabase)
    assert database.is_closed()
    assert database.database == params.pop("database")
    assert {name: database.connect_params.get(name) for name in params} == params
    assert database._max_connections == 5


@pytest.mark.parametrize("url", ["mysql://root@localhost/cortex", "redis://localhost:6379/0", "cortex.db", ""])
def test_unsupported_scheme_is_a_value_error(url):
    with pytest.raises(ValueError, match="is not supported"):
        make_database(url)


# ------------------------------------------------------------------------------------------ SQLite PRAGMAs


@pytest.mark.skipif(ON_POSTGRES, reason="SQLite PRAGMAs; DATABASE_URL is PostgreSQL")
def test_sqlite_pragmas_are_in_effect_on_a_live_connection(tmp_path):
    database = make_database(f"sqlite:///{tmp_path / 'pragmas.db'}")
    try:
        with database.connection_context():
            assert database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert database.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
            assert database.execute_sql("PRAGMA busy_timeout").fetchone()[0] == 10000
            assert database.execute_sql("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    finally:
        close(database)


@pytest.mark.skipif(ON_POSTGRES, reason="SQLite PRAGMAs; DATABASE_URL is PostgreSQL")
def test_sqlite_foreign_keys_are_enforced(app):
    from models.identity import User

    with pytest.raises(pw.IntegrityError):
        User.create(tenant="no-such-tenant", email="x@example.com", name="x", password_hash="x")


# ---------------------------------------------------------------------------------------------- migrations


def test_upgrade_on_a_fresh_database_applies_everything_once(settings):
    database = init_database(settings.database_url)
    try:
        applied = upgrade()
        if not ON_POSTGRES:  # a fresh file; PostgreSQL is shared and may be migrated already
            assert applied == ALL_VERSIONS
        assert upgrade() == []
        assert upgrade() == []
        with db.connection_context():
            assert current_version() == max(ALL_VERSIONS)
            rows = list(SchemaVersion.select().order_by(SchemaVersion.version))
            assert [row.version for row in rows] == ALL_VERSIONS
            assert [row.name for row in rows] == [name for _number, name, _migrate in MIGRATIONS]
            assert all(row.applied_at is not None for row in rows)
            tables = set(db.get_tables())
            assert {model._meta.table_name for model in MODELS} | {"schema_version"} <= tables
    finally:
        close(database)


def test_upgrade_is_idempotent_on_the_app_database(app):
    assert upgrade() == []
    assert current_version() == max(ALL_VERSIONS)
    assert SchemaVersion.select().count() == len(ALL_VERSIONS)


# ------------------------------------------------------------------------------------- a pool with no free slot


def test_a_request_that_finds_no_free_pooled_connection_answers_503_and_the_next_one_200(app, settings, owner):
    """CORTEX_DB_POOL_SIZE connections at most, CORTEX_DB_POOL_TIMEOUT seconds of waiting for one: then the request
    answers 503 problem+json with Retry-After (the server is busy, the request was fine), never a 500."""
    import dataclasses
    import threading

    from flask.testing import FlaskClient

    from cortex.http.app import configure_app
    from cortex.settings import Settings

    assert Settings.from_env(env={"CORTEX_DB_POOL_TIMEOUT": "0.5"}).db_pool_timeout == 0.5
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ValueError, match="CORTEX_DB_POOL_TIMEOUT"):
            Settings.from_env(env={"CORTEX_DB_POOL_TIMEOUT": bad})
    configure_app(app, dataclasses.replace(settings, db_pool_size=1, db_pool_timeout=0.3))
    assert db.obj._max_connections == 1 and db.obj._wait_timeout == 0.3
    holding, done = threading.Event(), threading.Event()

    def hold_the_only_connection():
        with db.connection_context():
            db.execute_sql("SELECT 1")
            holding.set()
            done.wait(10)

    holder = threading.Thread(target=hold_the_only_connection)
    holder.start()
    try:
        assert holding.wait(10)
        busy = FlaskClient(app).get(f"/api/projects/{owner.project.id}/sessions", headers=owner.headers)
    finally:
        done.set()
        holder.join(10)
    assert busy.status_code == 503 and busy.mimetype == "application/problem+json"
    assert busy.headers["Retry-After"] == "1"
    assert "no database connection came free" in busy.get_json()["detail"]
    fine = FlaskClient(app).get(f"/api/projects/{owner.project.id}/sessions", headers=owner.headers)
    assert fine.status_code == 200 and fine.get_json() == []
