"""Fixture chain: settings → app → client → principals (users, projects, tokens, API keys).

The suite runs on SQLite by default and on PostgreSQL when DATABASE_URL is set (REDIS_URL likewise).
Every response the behaviour tests receive for a documented operation is validated against the served
document with openapi-core, so a handler cannot drift from the contract unnoticed.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import peewee as pw
import pytest
from flask.testing import FlaskClient
from openapi_core import Config, OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from cortex import ROOT
from cortex.http import security
from cortex.http.app import configure_app, create_app
from cortex.http.logins import KEY_PREFIX as LOGIN_KEYS
from cortex.lib import crypto
from cortex.lib.crypto import hash_password as real_hash_password
from cortex.settings import Settings
from models.base import db, is_sqlite
from models.database import upgrade
from models.identity import ProjectMember, create_api_key, create_project, create_user
from models.migrations import ALL_MODELS

PASSWORD = "correct horse battery"
_openapi = None


def pytest_configure(config) -> None:
    """Under pytest-xdist (``-n 2``, as CI and the README run the suite) each worker process gets a database and a
    Redis database of its own: PostgreSQL ``<DATABASE_URL's database>_<worker>`` (dropped and created afresh, so
    migrations run from zero every run) and Redis database ``(n + worker number) % 16`` — every test empties its
    database first, which must not touch another worker's. SQLite tests have their own files anyway."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    number = int(worker.removeprefix("gw"))
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        os.environ["DATABASE_URL"] = fresh_postgres_database(url, worker)
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(redis_url)
        base = int(parts.path.strip("/") or 0)
        os.environ["REDIS_URL"] = urlunsplit(parts._replace(path=f"/{(base + number) % 16}"))


def fresh_postgres_database(url: str, suffix: str) -> str:
    """``url`` with its database renamed ``<name>_<suffix>``, which is dropped and created empty."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg2
    from psycopg2 import sql

    parts = urlsplit(url)
    name = f"{parts.path.strip('/') or 'postgres'}_{suffix}"
    admin = psycopg2.connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        admin.close()
    return urlunsplit(parts._replace(path=f"/{name}"))


def pubsub_message(pubsub, wanted, timeout: float = 5.0) -> dict:
    """The first message on ``pubsub`` whose decoded JSON body satisfies ``wanted(body)`` (other processes — another
    test worker, a server — may publish on the same channel: Redis pub/sub ignores database numbers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=max(0.01, deadline - time.monotonic()))
        if message and message["type"] == "message":
            try:
                body = json.loads(message["data"])
            except ValueError:
                continue
            if wanted(body):
                return {**message, "body": body}
    raise AssertionError(f"no matching message within {timeout} s")


def openapi() -> OpenAPI:
    """The served document as an openapi-core validator (built once)."""
    global _openapi
    if _openapi is None:
        spec = json.loads((ROOT / "openapi" / "cortex.json").read_text())
        spec["servers"] = [{"url": "http://localhost/"}]
        config = Config(extra_media_type_deserializers={"application/problem+json": json.loads,
                                                        "text/markdown": bytes.decode})
        _openapi = OpenAPI.from_dict(spec, config=config)
    return _openapi


class ContractClient(FlaskClient):
    """Flask test client that validates every documented response against the document."""

    def open(self, *args, **kwargs):
        response = super().open(*args, **kwargs)
        request = response.request
        if response.status_code == 501:  # operations not implemented yet are outside the contract so far
            return response
        # The original body stream is consumed; response validation only needs method and path.
        bare = Request(EnvironBuilder(method=request.method, path=request.path, base_url="http://localhost/").get_environ())
        try:
            result = openapi().unmarshal_response(WerkzeugOpenAPIRequest(bare), WerkzeugOpenAPIResponse(response))
        except (PathNotFound, OperationNotFound):
            return response
        if any(isinstance(error, PathNotFound | OperationNotFound) for error in result.errors):
            return response  # not a documented operation (unknown route, 405, the document itself)
        errors = [str(error) for error in result.errors]
        if errors:
            raise AssertionError(
                f"{request.method} {request.path} → {response.status_code} violates the document: {errors}\n"
                f"body: {response.get_data(as_text=True)[:500]}"
            )
        return response


def database_url(tmp_path) -> str:
    """DATABASE_URL when set (PostgreSQL in CI), else a fresh SQLite file."""
    return os.environ.get("DATABASE_URL") or f"sqlite:///{tmp_path / 'cortex.db'}"


SECRET_KEY = "test-secret-key-0123456789abcdef"
#: Children before parents: one DELETE per table empties a shared PostgreSQL database between tests in ~1 ms
#: (TRUNCATE of the 19 tables took ~55 ms per test).
EMPTY_ORDER = [model._meta.table_name for model in reversed(pw.sort_models(ALL_MODELS))]


def reset_database() -> None:
    """Empty every table (PostgreSQL shares one database across tests; a SQLite test gets a fresh copy)."""
    if is_sqlite():
        return
    db.execute_sql("; ".join(f'DELETE FROM "{table}"' for table in EMPTY_ORDER))


def forget_login_failures(redis_url: str | None) -> None:
    """Failed-login counters live in Redis when it is configured: every test starts without any (in process they
    go with the app's per-test LoginThrottle)."""
    if not redis_url:
        return
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{LOGIN_KEYS}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@dataclass
class Suite:
    """What every test of the session shares: one app built from the document, and (SQLite) a migrated
    database file that each test starts from as a copy."""

    app: object
    template: Path | None


@pytest.fixture(scope="session")
def suite(tmp_path_factory) -> Suite:
    """Build the app and migrate once per session (both cost tens of milliseconds per test otherwise)."""
    base = tmp_path_factory.mktemp("suite")
    template = None if os.environ.get("DATABASE_URL") else base / "template.db"
    settings = Settings.from_env(data_dir=base, secret_key=SECRET_KEY,
                                 database_url=os.environ.get("DATABASE_URL") or f"sqlite:///{template}")
    application = create_app(settings)
    upgrade()
    with db.connection_context():
        tables = set(db.get_tables()) - {"schema_version"}
    unknown = tables - set(EMPTY_ORDER)
    assert not unknown, f"tables that models.migrations.ALL_MODELS does not list: {sorted(unknown)}"
    db.close_all() if hasattr(db.obj, "close_all") else db.close()  # SQLite: checkpoints the WAL into the file
    return Suite(app=application, template=template)


@pytest.fixture
def settings(tmp_path):
    """Settings for one test: its own data dir and database."""
    # The tests' receivers and token services listen on loopback: the outbound address policy is off here, as
    # CORTEX_OUTBOUND_ALLOW_PRIVATE=true turns it off for development; the policy's own tests turn it on.
    return Settings.from_env(data_dir=tmp_path, database_url=database_url(tmp_path), secret_key=SECRET_KEY,
                             outbound_allow_private=True)


@pytest.fixture
def app(suite, settings, tmp_path):
    """The application, bound to this test's settings, with a migrated, empty database."""
    if suite.template is not None:
        shutil.copyfile(suite.template, tmp_path / "cortex.db")
    configure_app(suite.app, settings)
    with db.connection_context():
        reset_database()
    forget_login_failures(settings.redis_url)
    with suite.app.app_context():
        yield suite.app
    db.close_all() if hasattr(db.obj, "close_all") else db.close()


@pytest.fixture
def client(app):
    """A test client validating responses against the document."""
    app.test_client_class = ContractClient
    return app.test_client()


@dataclass
class Member:
    """A user with a project role, and how to authenticate as them."""

    user: object
    project: object
    role: str
    secret: str | None = None

    @property
    def headers(self) -> dict:
        """Bearer headers for this user."""
        return {"Authorization": f"Bearer {security.issue_access_token(self.user.id, self.user.tenant_id)}"}


_password_hashes: dict[str, str] = {}


def reused_password_hash(password: str) -> str:
    """A real Argon2id hash of ``password``, computed once per session: every fixture user gets the same one
    (~100 ms of Argon2 per user otherwise; logins still verify it at full cost)."""
    if password not in _password_hashes:
        _password_hashes[password] = real_hash_password(password)
    return _password_hashes[password]


@pytest.fixture
def address_policy_on():
    """The outbound address policy as it is in production (the suite runs with it off: its receivers are local)."""
    from cortex.lib import addresses

    addresses.set_allow_private(False)
    yield
    addresses.set_allow_private(True)


@pytest.fixture
def make_user(app, monkeypatch):
    """Factory: make_user(email, tenant_id=None) → User (password PASSWORD)."""

    def make(email: str, tenant_id: str | None = None, name: str | None = None):
        with monkeypatch.context() as patch:
            patch.setattr(crypto, "hash_password", reused_password_hash)
            return create_user(email, PASSWORD, name, tenant_id)

    return make


@pytest.fixture
def owner(make_user) -> Member:
    """A user who owns (admin) one project in a fresh tenant."""
    user = make_user("owner@example.com", name="Olivia Owner")
    project, secret = create_project(user, "Game One")
    return Member(user=user, project=project, role="admin", secret=secret)


@pytest.fixture
def add_member(make_user, owner):
    """Factory: add_member(role) → Member of the owner's project (same tenant)."""
    counter = iter(range(1000))

    def add(role: str) -> Member:
        user = make_user(f"{role}{next(counter)}@example.com", tenant_id=owner.user.tenant_id)
        ProjectMember.create(project=owner.project, user=user, email=user.email, role=role)
        return Member(user=user, project=owner.project, role=role)

    return add


@pytest.fixture
def stranger(make_user) -> Member:
    """A user of another tenant with a project of their own."""
    user = make_user("stranger@example.org")
    project, secret = create_project(user, "Other Game")
    return Member(user=user, project=project, role="admin", secret=secret)


@pytest.fixture
def api_key_headers(owner):
    """Factory: api_key_headers(scopes, project_id=None, expires_at=None) → X-API-Key headers."""

    def make(scopes, project_id=None, expires_at=None) -> dict:
        _row, key = create_api_key(owner.user.tenant_id, owner.user.id, "test", list(scopes), project_id, expires_at)
        return {"X-API-Key": key}

    return make


# ---------------------------------------------------------------- real `cortex serve` processes

READ_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """One `cortex serve` subprocess on a free loopback port."""

    def __init__(self, tmp_path, name: str, settings, redis_url: str | None, extra_env: dict | None = None,
                 args: tuple = ()):
        self.port = free_port()
        data_dir = tmp_path / name
        data_dir.mkdir()
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("CORTEX_") and key not in ("DATABASE_URL", "REDIS_URL")
        }
        env.update(
            CORTEX_DATA_DIR=str(data_dir),
            DATABASE_URL=settings.database_url,
            CORTEX_SECRET_KEY=settings.secret_key,
            CORTEX_LOG_LEVEL="WARNING",
            CORTEX_SSE_MAX_SECONDS="30",
        )
        if redis_url:
            env["REDIS_URL"] = redis_url
        env.update(extra_env or {})
        self.log = open(tmp_path / f"{name}.log", "w+")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cortex.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port), *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"server exited with {self.process.returncode}: {self.log_text()}")
            try:
                status, _ = self.request("GET", "/api")
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready within {timeout} s: {self.log_text()}")
            time.sleep(0.1)

    def request(self, method: str, path: str, body=None, headers=None) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            payload = None if body is None else json.dumps(body)
            all_headers = {**(headers or {}), **({"Content-Type": "application/json"} if body is not None else {})}
            connection.request(method, path, body=payload, headers=all_headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def request_raw(self, method: str, path: str, raw: bytes, headers: dict) -> tuple[int, bytes]:
        """A request with these exact body bytes (JSON)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, body=raw, headers={**headers, "Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def log_text(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()


@pytest.fixture
def servers(request, tmp_path, settings, app):
    """Factory: servers(count, redis_url, args=(), **env) → started, ready servers (``args``: more `cortex serve`
    arguments, ``env``: more environment variables); all stopped afterwards."""
    started: list[Server] = []

    def start(count: int, redis_url: str | None, args: tuple = (), **env: str) -> list[Server]:
        new = [Server(tmp_path, f"server{len(started) + i}", settings, redis_url, env, args) for i in range(count)]
        started.extend(new)
        for server in new:
            server.wait_ready()
        return new

    yield start
    for server in started:
        server.stop()
