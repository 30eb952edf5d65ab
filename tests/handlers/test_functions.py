"""Functions, part 2, with real Node.js workers: drafts, publish (a syntax error keeps the old version serving),
rollback, stop/deploy, delete, the invoke endpoint with its three auth modes and enforced limits (an infinite loop,
a memory hog, a throw, a large body), env isolation, logs, counters, and event handlers calling back into a
loopback receiver."""

from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cortex.engines.function_events import FunctionEventEngine
from cortex.events import ingest
from models.base import rfc3339, transaction, utcnow
from models.function_code import FunctionEventJob, FunctionLog, FunctionVersion
from models.settings import cached_project_secret, sync_project_secret
from tests.handlers.test_functions_runtime import activated, registry, supervisor, url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                                reason="needs node and npm")

HELLO = "exports.handler = async (event, ctx) => ({ statusCode: 200, body: { hello: event.query.name || 'world', " \
        "version: ctx.version, method: event.method, body: event.body } });"


@pytest.fixture
def project(client, owner, supervisor):  # noqa: F811 (the fixture imported above)
    activated(client, owner, supervisor)
    return owner


def create(client, member, **body):
    body.setdefault("name", "Hello World")
    body.setdefault("code", HELLO)
    body.setdefault("authMode", "public")
    return client.post(url(member), json=body, headers=member.headers)


def publish(client, member, function_id, changelog=None):
    body = {"changelog": changelog} if changelog else {}
    response = client.post(url(member, f"/{function_id}/publish"), json=body, headers=member.headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def invoke(client, member, slug, method="GET", headers=None, **kwargs):
    return client.open(f"/invoke/{member.project.id}/{slug}", method=method, headers=headers or {}, **kwargs)


def live(client, member, **body):
    """A created and published function (its body)."""
    created = create(client, member, **body)
    assert created.status_code == 201, created.get_json()
    function = created.get_json()
    published = publish(client, member, function["id"])
    assert published["version"]["status"] == "ready", published
    return function


# ---------------------------------------------------------------- drafts


def test_create_validates_generates_the_slug_and_masks_secrets(client, project):
    response = create(client, project, envVars=[{"key": "TOKEN", "value": "s3cret", "isSecret": True}])
    assert response.status_code == 201
    body = response.get_json()
    assert body["slug"] == "hello-world" and body["draftEntrypoint"] == "handler" and body["runtime"] == "nodejs20"
    assert body["timeout"] == 30000 and body["memory"] == 256 and body["status"] == "draft"
    assert body["envVars"] == [{"key": "TOKEN", "value": "***", "isSecret": True}]
    assert create(client, project).status_code == 409  # the same slug
    assert create(client, project, name="Other", slug="Bad Slug").status_code == 400
    for bad in ({"timeout": 999}, {"timeout": 300001}, {"memory": 100}, {"memory": 1024}, {"entrypoint": "not-an-id"},
                {"name": "   "}):
        answer = create(client, project, **{"name": "x", "slug": "x", **bad})
        assert answer.status_code == 400, bad
    if (functions_node := __import__("shutil").which("node")) and int(
            __import__("subprocess").run([functions_node, "-p", "process.versions.node.split('.')[0]"],
                                         capture_output=True, text=True).stdout) < 22:
        assert create(client, project, name="y", slug="y", runtime="nodejs22").status_code == 400
    client.put(url(project, "/settings"), json={"maxFunctions": 2}, headers=project.headers)
    assert create(client, project, name="Second").status_code == 201
    capped = create(client, project, name="Third")
    assert capped.status_code == 400 and "maxFunctions" in capped.get_json()["detail"]
    listed = client.get(url(project), headers=project.headers).get_json()
    assert [f["slug"] for f in listed] == ["hello-world", "second"]


# ---------------------------------------------------------------- publish, rollback, stop, delete


def test_publish_serves_a_failed_build_keeps_the_old_version_and_rollback_works(client, project):
    function = live(client, project)
    started = time.monotonic()
    first = invoke(client, project, "hello-world", query_string={"name": "ada"})
    assert first.status_code == 200 and time.monotonic() - started < 1.0
    assert first.get_json() == {"hello": "ada", "version": 1, "method": "GET", "body": None}
    assert client.get(url(project, f"/{function['id']}"), headers=project.headers).get_json()["status"] == "published"

    client.put(url(project, f"/{function['id']}"), json={"draftCode": HELLO.replace("hello:", "hi:")},
               headers=project.headers)
    assert invoke(client, project, "hello-world").get_json()["hello"] == "world"  # the draft is not live
    second = publish(client, project, function["id"], "say hi")
    assert second["version"]["version"] == 2 and second["version"]["changelog"] == "say hi"
    assert invoke(client, project, "hello-world").get_json()["hi"] == "world"

    client.put(url(project, f"/{function['id']}"), json={"draftCode": "exports.handler = async ( => {"},
               headers=project.headers)
    broken = publish(client, project, function["id"])
    assert broken["version"]["status"] == "failed" and "SyntaxError" in broken["version"]["buildError"]
    assert invoke(client, project, "hello-world").get_json()["hi"] == "world"  # version 2 still serves
    client.put(url(project, f"/{function['id']}"), json={"draftCode": "exports.other = () => 1;"},
               headers=project.headers)
    no_entry = publish(client, project, function["id"])
    assert no_entry["version"]["status"] == "failed" and "handler" in no_entry["version"]["buildError"]

    versions = client.get(url(project, f"/{function['id']}/versions"), headers=project.headers).get_json()
    assert [(v["version"], v["status"]) for v in versions] == [(4, "failed"), (3, "failed"), (2, "ready"),
                                                                (1, "ready")]
    rollback = client.post(url(project, f"/{function['id']}/deploy"), query_string={"versionId": versions[-1]["id"]},
                           headers=project.headers)
    assert rollback.status_code == 201
    body = rollback.get_json()
    assert body["deployment"]["versionId"] == versions[-1]["id"] and body["deployment"]["status"] == "running"
    assert body["invokeUrl"].endswith(f"/invoke/{project.project.id}/hello-world")
    assert invoke(client, project, "hello-world").get_json()["version"] == 1
    bad = client.post(url(project, f"/{function['id']}/deploy"), query_string={"versionId": versions[0]["id"]},
                      headers=project.headers)
    assert bad.status_code == 400  # a failed version cannot be deployed


def test_stop_deploy_and_delete(client, project):
    function = live(client, project)
    assert client.post(url(project, f"/{function['id']}/stop"), headers=project.headers).status_code == 200
    stopped = invoke(client, project, "hello-world")
    assert stopped.status_code == 503 and stopped.mimetype == "application/problem+json"
    assert client.get(url(project, f"/{function['id']}"), headers=project.headers).get_json()["status"] == "draft"
    assert client.post(url(project, f"/{function['id']}/deploy"), headers=project.headers).status_code == 201
    assert invoke(client, project, "hello-world").status_code == 200
    deleted = client.delete(url(project, f"/{function['id']}"), headers=project.headers)
    assert deleted.status_code == 200 and deleted.get_json() == {"message": "Function deleted successfully"}
    assert invoke(client, project, "hello-world").status_code == 404
    assert client.get(url(project, f"/{function['id']}"), headers=project.headers).status_code == 404
    assert FunctionVersion.select().count() == 0 and FunctionLog.select().count() == 0


# ---------------------------------------------------------------- auth modes


def test_the_three_auth_modes(client, project, api_key_headers, stranger):
    live(client, project, name="Open", authMode="public")
    live(client, project, name="Keyed", authMode="api_key")
    live(client, project, name="Signed", authMode="signed")
    assert invoke(client, project, "open").status_code == 200

    assert invoke(client, project, "keyed").status_code == 401
    assert invoke(client, project, "keyed", headers={"X-API-Key": "ots_live_nope"}).status_code == 401
    assert invoke(client, project, "keyed", headers=api_key_headers(["functions:read"])).status_code == 403
    elsewhere = api_key_headers(["functions:invoke"], project_id=stranger.project.id)
    assert invoke(client, project, "keyed", headers=elsewhere).status_code in (401, 403)
    assert invoke(client, project, "keyed", headers=api_key_headers(["functions:invoke"])).status_code == 200

    sync_project_secret(project.project)
    secret = cached_project_secret(project.project)
    raw = json.dumps({"score": 42}).encode()
    stamp = rfc3339(utcnow())
    signed = {"X-Timestamp": stamp, "X-Signature": ingest.sign(secret, stamp, raw), "Content-Type": "application/json"}
    ok = invoke(client, project, "signed", method="POST", headers=signed, data=raw)
    assert ok.status_code == 200 and ok.get_json()["body"] == {"score": 42}
    forged = {**signed, "X-Signature": ingest.sign(secret, stamp, raw + b" ")}
    assert invoke(client, project, "signed", method="POST", headers=forged, data=raw).status_code == 401
    old = rfc3339(utcnow().replace(year=2020))
    stale = {**signed, "X-Timestamp": old, "X-Signature": ingest.sign(secret, old, raw)}
    assert invoke(client, project, "signed", method="POST", headers=stale, data=raw).status_code == 401
    assert invoke(client, project, "signed").status_code == 401
    assert invoke(client, project, "nothing-here").status_code == 404


# ---------------------------------------------------------------- limits


LOOP = "exports.handler = async () => { while (true) {} };"
HOG = "exports.handler = async () => { const keep = []; while (true) keep.push(new Array(1e6).fill(Math.random())); };"
THROW = "exports.handler = async () => { throw new Error('the dragon ate the request'); };"


def test_limits_are_enforced_and_everything_answers_again_at_once(client, project, app):
    live(client, project, name="Healthy")
    live(client, project, name="Loop", code=LOOP, timeout=1000)
    live(client, project, name="Hog", code=HOG, memory=128, timeout=20000)
    live(client, project, name="Thrower", code=THROW)
    before = invocation_counts()

    started = time.monotonic()
    looped = invoke(client, project, "loop")
    assert looped.status_code == 504 and looped.mimetype == "application/problem+json"
    assert time.monotonic() - started < 5
    assert invoke(client, project, "healthy").status_code == 200
    assert invoke(client, project, "loop").status_code == 504  # the same function: a fresh worker, same rule

    hogged = invoke(client, project, "hog")
    assert hogged.status_code == 502 and "exceeded its memory limit" in hogged.get_json()["detail"]
    assert invoke(client, project, "healthy").status_code == 200

    thrown = invoke(client, project, "thrower")
    detail = thrown.get_json()["detail"]
    assert thrown.status_code == 502 and "the dragon ate the request" in detail and " at " not in detail
    assert invoke(client, project, "healthy").status_code == 200

    limit = app.extensions["cortex"].settings.max_body_bytes
    big = invoke(client, project, "healthy", method="POST", data=b"x" * (limit + 1),
                 headers={"Content-Type": "text/plain"})
    assert big.status_code == 413
    assert invoke(client, project, "healthy").headers["X-Request-Id"]
    # cortex_function_invocations_total{outcome}: each invocation once, by what became of it
    counted = {outcome: n - before[outcome] for outcome, n in invocation_counts().items() if n != before[outcome]}
    assert counted == {"ok": 4, "timeout": 2, "memory": 1, "error": 1, "rejected": 1}


def invocation_counts() -> dict:
    from cortex.lib import metrics

    return {outcome: metrics.FUNCTION_INVOCATIONS.labels(outcome)._value.get()
            for outcome in metrics.INVOCATION_OUTCOMES}


# ---------------------------------------------------------------- environment, logs, counters


ENV = "exports.handler = async () => ({ body: process.env });"
LOGS = ("exports.handler = async (event, ctx) => { console.log('hello', {n: 1}); console.warn('careful');"
        " if (event.query.fail) { console.error('about to fail'); throw new Error('failed on purpose'); }"
        " return { body: 'ok' }; };")


def test_env_isolation_logs_and_counters(client, project):
    client.put(url(project, "/settings/env-vars"), json={"envVars": [
        {"key": "SHARED", "value": "project"}, {"key": "MODE", "value": "project"}]}, headers=project.headers)
    env_function = live(client, project, name="Env", code=ENV,
                        envVars=[{"key": "MODE", "value": "function", "isSecret": True}])
    seen = invoke(client, project, "env").get_json()
    assert seen == {"SHARED": "project", "MODE": "function", "CORTEX_API_URL": "http://127.0.0.1:8080",
                    "CORTEX_PROJECT_ID": project.project.id}
    logger = live(client, project, name="Logger", code=LOGS)
    ok = invoke(client, project, "logger", headers={"X-Request-Id": "req-ok-1"})
    assert ok.status_code == 200 and ok.headers["X-Request-Id"] == "req-ok-1"
    failed = invoke(client, project, "logger", query_string={"fail": "1"}, headers={"X-Request-Id": "req-bad-2"})
    assert failed.status_code == 502
    lines = client.get(url(project, f"/{logger['id']}/logs"), headers=project.headers).get_json()
    assert [(line["level"], line["message"], line["requestId"]) for line in lines][:3] == [
        ("error", "about to fail", "req-bad-2"), ("warn", "careful", "req-bad-2"), ("log", "hello { n: 1 }", "req-bad-2")]
    assert ("log", "hello { n: 1 }", "req-ok-1") in [(x["level"], x["message"], x["requestId"]) for x in lines]
    assert len(client.get(url(project, f"/{logger['id']}/logs"), query_string={"limit": 2},
                          headers=project.headers).get_json()) == 2
    future = rfc3339(utcnow().replace(year=utcnow().year + 1))
    assert client.get(url(project, f"/{logger['id']}/logs"), query_string={"since": future},
                      headers=project.headers).get_json() == []
    deployment = client.get(url(project, f"/{logger['id']}"), headers=project.headers).get_json()["activeDeployment"]
    assert deployment["requestCount"] == 2 and deployment["lastInvokedAt"]
    assert env_function["id"]


# ---------------------------------------------------------------- event handlers


class Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        Receiver.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    Receiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()
    server.server_close()


def test_event_handlers_receive_their_projects_events_in_order_and_failures_are_retried(client, project, receiver,
                                                                                       supervisor):  # noqa: F811
    handler = ("exports.handler = async () => ({ body: 'http' });\n"
               f"exports.onSessionCreated = async (event) => {{ await fetch('{receiver}', {{ method: 'POST', "
               "headers: {'content-type': 'application/json'}, body: JSON.stringify({type: event.type, "
               "title: event.payload.data.title}) }); };\n"
               "exports.onSessionDeleted = async () => { throw new Error('not today'); };")
    function = live(client, project, name="Reactor", code=handler)
    version = FunctionVersion.get(FunctionVersion.function == function["id"])
    assert set(version.handlers) == {"onSessionCreated", "onSessionDeleted"}
    engine = FunctionEventEngine(supervisor.provider)
    from models.sessions import Session, _emit
    for title in ("first", "second", "third"):
        with transaction():
            session = Session.create(project=project.project.id, tenant_id=project.project.tenant_id,
                                     external_room_id="room", title=title, created_by_user_id=project.user.id)
            _emit(session, "created", {"id": session.id, "title": title})
    engine.drain()
    for _round in range(3):
        engine.run_due(wait=True)
    assert [item["title"] for item in Receiver.received] == ["first", "second", "third"]
    assert {item["type"] for item in Receiver.received} == {"session.created"}

    with transaction():
        _emit(session, "deleted", {"id": session.id})
    engine.drain()
    deadline = time.monotonic() + 15
    while FunctionEventJob.select().count() and time.monotonic() < deadline:
        engine.run_due(wait=True)
        time.sleep(0.2)
    assert FunctionEventJob.select().count() == 0  # four calls (1 + 3 retries after 1, 2, 4 s), then given up
    lines = client.get(url(project, f"/{function['id']}/logs"), headers=project.headers).get_json()
    assert any("given up" in line["message"] and "onSessionDeleted" in line["message"] for line in lines)


def test_publishing_needs_a_runtime_that_hosts_functions(client, project, supervisor):  # noqa: F811
    function = create(client, project).get_json()
    client.post(url(project, "/settings/runtime/upgrade"), json={"version": "v1"}, headers=project.headers)
    supervisor.run_once()
    failed = publish(client, project, function["id"])
    assert failed["version"]["status"] == "failed" and "does not host functions" in failed["version"]["buildError"]
    client.post(url(project, "/settings/runtime/stop"), headers=project.headers)
    supervisor.run_once()
    stopped = publish(client, project, function["id"])
    assert "not running" in stopped["version"]["buildError"]
    assert invoke(client, project, "hello-world").status_code == 503  # never went live


def test_each_project_has_its_own_runtime_process_and_the_app_id_works(client, project, stranger,
                                                                       supervisor):  # noqa: F811
    pid_code = "exports.handler = async () => ({ body: { pid: process.pid } });"
    live(client, project, name="Pid", code=pid_code)
    activated(client, stranger, supervisor)
    live(client, stranger, name="Pid", code=pid_code)
    mine = invoke(client, project, "pid").get_json()["pid"]
    theirs = invoke(client, stranger, "pid").get_json()["pid"]
    assert mine != theirs
    by_app_id = client.get(f"/invoke/{project.project.app_id}/pid")
    assert by_app_id.status_code == 200 and by_app_id.get_json()["pid"] == mine


def test_a_slow_handler_never_holds_up_another_functions_events(client, project, receiver,
                                                                supervisor):  # noqa: F811
    slow = ("exports.handler = async () => ({});\n"
            f"exports.onSessionCreated = async () => {{ await new Promise(r => setTimeout(r, 3000)); "
            f"await fetch('{receiver}', {{ method: 'POST', body: JSON.stringify({{who: 'slow'}}) }}); }};")
    fast = ("exports.handler = async () => ({});\n"
            f"exports.onSessionCreated = async () => {{ await fetch('{receiver}', "
            "{ method: 'POST', body: JSON.stringify({who: 'fast'}) }); };")
    live(client, project, name="Slow", code=slow)
    live(client, project, name="Fast", code=fast)
    engine = FunctionEventEngine(supervisor.provider)
    from models.sessions import Session, _emit
    with transaction():
        session = Session.create(project=project.project.id, tenant_id=project.project.tenant_id,
                                 external_room_id="room", title="race", created_by_user_id=project.user.id)
        _emit(session, "created", {"id": session.id, "title": "race"})
    engine.drain()
    started = time.monotonic()
    assert engine.run_due() == 2  # both calls start at once, each in its own thread
    deadline = time.monotonic() + 10
    while not Receiver.received and time.monotonic() < deadline:
        time.sleep(0.02)
    assert Receiver.received[0]["who"] == "fast" and time.monotonic() - started < 2.5
    while len(Receiver.received) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [item["who"] for item in Receiver.received] == ["fast", "slow"]
