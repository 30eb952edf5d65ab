"""The ``cortex`` console script, run for real as subprocesses: db upgrade, admin, serve, demo.

Every command gets its own data dir and the test database (SQLite file, or the shared PostgreSQL database when
DATABASE_URL is set: emails are unique per test and no test assumes empty tables).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager

import pytest

from cortex.cli import DEMO_EMAIL, DEMO_PASSWORD, DEMO_PROJECT
from cortex.lib import crypto
from models.identity import Project, ProjectMember, User
from models.migrations import MIGRATIONS

SECRET_KEY = "test-secret-key-0123456789abcdef"  # the key the `settings` fixture gives the in-process app
PASSWORD = "cli-password-123"


def unique_email(label: str = "user") -> str:
    """An email no other test (or concurrent run on a shared database) uses."""
    return f"{label}-{uuid.uuid4().hex[:12]}@Example.com"


def cli_env(data_dir, database_url: str, secret_key: str | None = SECRET_KEY) -> dict:
    """Environment of one command: its data dir, the test database, the secret key (or none)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    env.update(CORTEX_DATA_DIR=str(data_dir), DATABASE_URL=database_url, PYTHONUNBUFFERED="1")
    if secret_key is not None:
        env["CORTEX_SECRET_KEY"] = secret_key
    return env


def run_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    """Run ``cortex <args>`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "cortex.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def one_json_object(result: subprocess.CompletedProcess) -> dict:
    """The single JSON object a successful command prints on stdout."""
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    body = json.loads(lines[0])
    assert isinstance(body, dict)
    return body


@pytest.fixture
def env(settings, tmp_path):
    """CLI environment sharing the in-process test database and secret key."""
    return cli_env(tmp_path / "cli-data", settings.database_url)


def create_user(env, email, *extra) -> dict:
    return one_json_object(run_cli(env, "admin", "create-user", "--email", email, "--password", PASSWORD, *extra))


# ----------------------------------------------------------------------------------------------- db upgrade


def test_db_upgrade_prints_version_and_is_idempotent(settings, tmp_path):
    env = cli_env(tmp_path / "data", settings.database_url)
    first = one_json_object(run_cli(env, "db", "upgrade"))
    latest = max(number for number, _name, _migrate in MIGRATIONS)
    assert first["version"] >= 1 and first["version"] == latest
    if settings.database_url.startswith("sqlite"):  # a fresh file: every migration is applied now
        assert first["applied"] == [number for number, _name, _migrate in MIGRATIONS]
    second = one_json_object(run_cli(env, "db", "upgrade"))
    assert second == {"applied": [], "version": first["version"]}


# ---------------------------------------------------------------------------------------------- create-user


def test_create_user_prints_ids_and_persists_the_user(app, env):
    email = unique_email("ada")
    body = create_user(env, email, "--name", "Ada Lovelace")
    assert set(body) == {"userId", "tenantId", "email"}
    assert body["email"] == email.lower()
    user = User.get_by_id(body["userId"])
    assert user.email == email.lower() and user.name == "Ada Lovelace"
    assert user.tenant_id == body["tenantId"]
    assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash


def test_create_user_with_tenant_id_joins_that_tenant(app, env):
    first = create_user(env, unique_email("first"))
    second = create_user(env, unique_email("second"), "--tenant-id", first["tenantId"])
    assert second["tenantId"] == first["tenantId"] and second["userId"] != first["userId"]
    assert User.get_by_id(second["userId"]).tenant_id == first["tenantId"]
    assert User.select().where(User.tenant == first["tenantId"]).count() == 2


def test_create_user_with_unknown_tenant_fails(app, env):
    email = unique_email("orphan")
    result = run_cli(env, "admin", "create-user", "--email", email, "--password", PASSWORD, "--tenant-id", "nope")
    assert result.returncode == 1 and result.stdout == ""
    assert "tenant nope does not exist" in result.stderr
    assert not User.select().where(User.email == email.lower()).exists()


def test_duplicate_email_exits_1_with_message_on_stderr(app, env):
    email = unique_email("twice")
    created = create_user(env, email)
    result = run_cli(env, "admin", "create-user", "--email", email.upper(), "--password", PASSWORD)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "error:" in result.stderr and "already exists" in result.stderr
    assert [u.id for u in User.select().where(User.email == email.lower())] == [created["userId"]]


# ------------------------------------------------------------------------------------------- create-project


def test_create_project_prints_secret_once_and_stores_it_encrypted(app, env):
    email = unique_email("owner")
    user = create_user(env, email)
    body = one_json_object(
        run_cli(
            env, "admin", "create-project", "--owner", email.upper(), "--name", "Conference",
            "--type", "conferencing", "--description", "Weekly calls", "--domain", "example.com",
        )
    )
    assert set(body) == {"id", "appId", "name", "secret"}
    assert body["name"] == "Conference" and body["appId"].startswith("app_") and body["secret"]

    project = Project.get_by_id(body["id"])
    assert (project.app_id, project.name, project.type) == (body["appId"], "Conference", "conferencing")
    assert (project.description, project.domain) == ("Weekly calls", "example.com")
    assert project.tenant_id == user["tenantId"]
    assert project.secret_encrypted != body["secret"] and body["secret"] not in project.secret_encrypted
    crypto.init_encryption(SECRET_KEY)  # the CLI ran with the same key as the in-process app
    assert crypto.decrypt(project.secret_encrypted) == body["secret"]

    members = list(ProjectMember.select().where(ProjectMember.project == project.id))
    assert [(m.user_id, m.email, m.role, m.status) for m in members] == [
        (user["userId"], email.lower(), "admin", "active")
    ]


def test_create_project_for_unknown_owner_fails(app, env):
    email = unique_email("ghost")
    result = run_cli(env, "admin", "create-project", "--owner", email, "--name", "Nobody's")
    assert result.returncode == 1 and result.stdout == ""
    assert f"no user with email {email}" in result.stderr
    assert not Project.select().where(Project.name == "Nobody's").exists()


def test_create_project_rejects_an_unknown_type(app, env):
    email = unique_email("typed")
    create_user(env, email)
    result = run_cli(env, "admin", "create-project", "--owner", email, "--name", "X", "--type", "voice")
    assert result.returncode == 2 and "invalid choice" in result.stderr  # argparse usage error


# --------------------------------------------------------------------------------------------- secret key


def test_secret_key_is_generated_once_with_mode_0600_and_reused(app, settings, tmp_path):
    data_dir = tmp_path / "keyless"
    env = cli_env(data_dir, settings.database_url, secret_key=None)
    email = unique_email("keyless")
    create_user(env, email)
    key_file = data_dir / "secret.key"
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text()
    assert len(key.strip()) >= 32

    project = one_json_object(run_cli(env, "admin", "create-project", "--owner", email, "--name", "Keyed"))
    assert key_file.read_text() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    crypto.init_encryption(key.strip())  # the generated key is the one that encrypted the project secret
    assert crypto.decrypt(Project.get_by_id(project["id"]).secret_encrypted) == project["secret"]


# ---------------------------------------------------------------------------------------------- serve, demo


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, headers: dict | None = None):
    """(status, headers, parsed JSON body or None) without raising on 4xx/5xx."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, response_headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, response_headers, raw = error.code, error.headers, error.read()
    return status, response_headers, (json.loads(raw) if raw else None)


@contextmanager
def running(env: dict, tmp_path, *args: str):
    """Start ``cortex <args> --port <free port>``, wait until GET /api answers; yields (base URL, stdout path)."""
    port = free_port()
    name = f"{args[0]}-{uuid.uuid4().hex[:6]}"
    out_path, err_path = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "cortex.cli", *args, "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=err,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                pytest.fail(f"cortex {' '.join(args)} exited with {process.returncode}: {err_path.read_text()}")
            try:
                with urllib.request.urlopen(base + "/api", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"cortex {' '.join(args)} did not answer within 20 s: {err_path.read_text()}")
            time.sleep(0.1)
        yield base, out_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_serve_end_to_end(app, env, tmp_path):
    email = unique_email("served")
    create_user(env, email, "--name", "Served User")
    project = one_json_object(run_cli(env, "admin", "create-project", "--owner", email, "--name", "Served"))

    with running(env, tmp_path, "serve") as (base, _out):
        status, _, body = http("GET", base + "/api")
        assert status == 200 and body["status"] == "ok"

        status, _, login = http("POST", base + "/api/auth/login-credentials", {"email": email, "password": PASSWORD})
        assert status == 201 and login["accessToken"] and login["sessionId"].startswith("fsid_")
        bearer = {"Authorization": f"Bearer {login['accessToken']}"}

        status, _, me = http("GET", base + "/api/auth/me", headers=bearer)
        assert status == 200
        assert (me["email"], me["username"]) == (email.lower(), "Served User")

        status, _, key = http("POST", base + "/api/api-keys", {"name": "ci", "scopes": ["sessions:read"]}, bearer)
        assert status == 201 and key["key"].startswith("ots_live_")

        sessions = f"{base}/api/projects/{project['id']}/sessions"
        status, _, problem = http("GET", sessions, headers={"X-API-Key": key["key"]})
        assert status == 200 and problem == [], problem  # authenticated, authorised, no sessions yet
        assert http("GET", sessions, headers={"X-API-Key": "ots_live_wrong"})[0] == 401

        status, headers, problem = http("PUT", base + "/api/api-keys", {"name": "x"}, bearer)
        assert status == 405 and headers.get_content_type() == "application/problem+json"
        assert set(headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


def test_demo_prints_credentials_serves_and_seeds_once(app, tmp_path, settings):
    env = cli_env(tmp_path / "demo-data", settings.database_url)
    project_ids = []
    for _run in range(2):
        with running(env, tmp_path, "demo") as (base, out_path):
            printed = out_path.read_text()
            assert DEMO_EMAIL in printed and DEMO_PASSWORD in printed
            status, _, login = http(
                "POST", base + "/api/auth/login-credentials", {"email": DEMO_EMAIL, "password": DEMO_PASSWORD}
            )
            assert status == 201
            status, _, me = http("GET", base + "/api/auth/me", headers={"Authorization": f"Bearer {login['accessToken']}"})
            assert status == 200 and me["email"] == DEMO_EMAIL
            project_ids.append(printed.split("project ", 1)[1].split()[0].rstrip(","))

    users = list(User.select().where(User.email == DEMO_EMAIL))
    assert len(users) == 1
    projects = list(Project.select().where(Project.tenant == users[0].tenant_id, Project.name == DEMO_PROJECT))
    assert len(projects) == 1
    assert project_ids == [projects[0].id, projects[0].id]
    assert ProjectMember.get(ProjectMember.project == projects[0].id).role == "admin"


# ----------------------------------------------------------------------------------------------- secret keys


@pytest.mark.parametrize("command", [["serve"], ["worker"], ["db", "upgrade"]])
def test_a_short_secret_key_stops_the_command_naming_the_variable(settings, tmp_path, command):
    result = run_cli(cli_env(tmp_path / "data", settings.database_url, secret_key="too-short"), *command)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("cortex: configuration error: CORTEX_SECRET_KEY must be at least 32")
    assert "Traceback" not in result.stderr


def test_rotate_secrets_reencrypts_every_stored_secret_under_the_new_key(app, settings, tmp_path, owner):
    """Rotation: start with the new key and the old one in CORTEX_SECRET_KEY_PREVIOUS, run `cortex rotate-secrets`,
    then the old key can go — every stored secret reads with the new key alone."""
    from models.settings import AppSettings, replace_app_settings, set_e2e_encryption
    from models.webhooks import WebhookSubscription, create_subscription

    replace_app_settings(owner.project, {"tokenProviderType": "webservice", "webserviceConfig": {
        "url": "https://tokens.example.com/t", "method": "POST", "responseTokenPath": "token",
        "headers": {"Authorization": "Bearer header-secret"}}})
    set_e2e_encryption(owner.project, "manual", "e2e-secret")
    create_subscription(owner.project, {"url": "https://hooks.example.com/x", "secret": "whook-secret", "events": ["*"],
                                        "authType": "basic_auth", "basicAuthUsername": "u",
                                        "basicAuthPassword": "basic-secret"}, ["session.created"], limit=100)
    new_key = "the-new-secret-key-0123456789abcdef-xyz"
    env = cli_env(tmp_path / "data", settings.database_url, secret_key=new_key)
    env["CORTEX_SECRET_KEY_PREVIOUS"] = SECRET_KEY
    result = one_json_object(run_cli(env, "rotate-secrets"))
    assert result["reencrypted"] == {  # every stored secret this project has, one each
        "project.secret_encrypted": 1, "app_settings.webservice_headers_encrypted": 1,
        "app_settings.e2e_password_encrypted": 1, "webhook_subscription.secret_encrypted": 1,
        "webhook_subscription.basic_auth_password_encrypted": 1}
    assert result["total"] == 5

    crypto.init_encryption(new_key)  # the old key is gone
    try:
        project = Project.get_by_id(owner.project.id)
        assert crypto.decrypt(project.secret_encrypted) == owner.secret
        row = AppSettings.get(AppSettings.project == owner.project.id)
        assert crypto.decrypt(row.e2e_password_encrypted) == "e2e-secret"
        assert "header-secret" in crypto.decrypt(row.webservice_headers_encrypted)
        sub = WebhookSubscription.get()
        assert crypto.decrypt(sub.secret_encrypted) == "whook-secret"
        assert crypto.decrypt(sub.basic_auth_password_encrypted) == "basic-secret"
        again = one_json_object(run_cli(env, "rotate-secrets"))  # idempotent
        assert again["total"] == result["total"]
        crypto.init_encryption(SECRET_KEY)
        with pytest.raises(RuntimeError, match="cannot be decrypted"):
            crypto.decrypt(Project.get_by_id(owner.project.id).secret_encrypted)
    finally:
        crypto.init_encryption(SECRET_KEY)
