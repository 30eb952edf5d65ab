"""Observability (cortex/http/observability.py, cortex/lib/logs.py, cortex/lib/metrics.py): GET /metrics (names,
counters that move, the bearer token, multi-process mode), X-Request-Id on every response and in problem bodies,
log lines carrying the request id, and a real `cortex serve` with CORTEX_LOG_FORMAT=json whose log holds no secret."""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import socket
from dataclasses import replace
from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from cortex.engines.mail import MailEngine
from cortex.engines.webhooks import WebhookEngine
from cortex.events import ingest
from cortex.http import gate
from cortex.http.app import configure_app
from cortex.lib import logs
from models.base import db, rfc3339, transaction, utcnow
from models.events import DomainEvent, EventCursor, emit, newest_seq
from models.identity import create_project, create_user
from models.mail import queue_mail
from models.settings import cached_project_secret, sync_project_secret

NAMES = ("cortex_http_requests_total", "cortex_http_request_duration_seconds", "cortex_sse_streams",
         "cortex_events_total", "cortex_ingest_events_total", "cortex_webhook_deliveries_total",
         "cortex_webhook_queue_depth", "cortex_consumer_lag_seconds", "cortex_function_invocations_total",
         "cortex_mail_sent_total")


def scrape(client, headers=None) -> dict[tuple[str, tuple], float]:
    """GET /metrics → {(sample name, sorted labels): value}."""
    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    return samples(response.get_data(as_text=True))


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(scraped: dict, name: str, **labels) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ----------------------------------------------------------------- GET /metrics


def test_metrics_lists_every_name_and_counts_requests_by_operation(client, owner):
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain; version=")
    text = response.get_data(as_text=True)
    for name in NAMES:  # every metric is exported, with samples or (a labelled one not used yet) without
        assert f"# HELP {name} " in text and f"# TYPE {name} " in text, name

    before = scrape(client)
    for _ in range(3):
        assert client.get("/api").status_code == 200
    assert client.get("/api/projects", headers=owner.headers).status_code == 200
    assert client.get("/api/projects").status_code == 401
    assert client.get("/no/such/route/4711").status_code == 404
    assert client.delete("/api").status_code == 405
    after = scrape(client)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("cortex_http_requests_total", operation="getData", status="200") == 3
    assert moved("cortex_http_requests_total", operation="listApps", status="200") == 1
    assert moved("cortex_http_requests_total", operation="listApps", status="401") == 1
    assert moved("cortex_http_requests_total", operation="unknown", status="404") == 1
    assert moved("cortex_http_requests_total", operation="unknown", status="405") == 1
    assert moved("cortex_http_request_duration_seconds_count", operation="getData") == 3
    assert moved("cortex_http_request_duration_seconds_bucket", operation="getData", le="+Inf") == 3
    assert moved("cortex_http_requests_total", operation="getMetrics", status="200") == 1  # the first scrape
    # Bounded labels: operationIds only, never a raw path.
    operations = {dict(labels).get("operation") for (name, labels) in after if name == "cortex_http_requests_total"}
    assert not any("/" in operation for operation in operations), operations


def test_metrics_token_protects_the_endpoint(app, client, settings):
    token = secrets.token_urlsafe(24)
    configure_app(app, replace(settings, metrics_token=token))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {token}"},
                    {"Authorization": f"Bearer {token}x"}):
        response = client.get("/metrics", headers={**headers, "X-Request-Id": "scrape-1"})
        assert response.status_code == 401, headers
        assert response.mimetype == "application/problem+json"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.get_json()["instance"] == "urn:request:scrape-1"
        assert "cortex_http_requests_total" not in response.get_data(as_text=True)
    assert "cortex_http_requests_total" in client.get(
        "/metrics", headers={"Authorization": f"Bearer {token}"}).get_data(as_text=True)
    configure_app(app, settings)  # no token: open
    assert client.get("/metrics").status_code == 200


def test_ingest_and_event_counters_move(client, owner):
    sync_project_secret(owner.project)
    secret = cached_project_secret(owner.project)
    body = json.dumps({"type": "server.started", "source": "voice:server", "resourceId": "server:1",
                       "payload": {"action": "occurred", "data": {}}}).encode()
    timestamp = rfc3339(utcnow())

    def send(signature):
        headers = {"X-Project-Id": owner.project.id, "X-Timestamp": timestamp, "X-Signature": signature}
        return client.post("/api/events/ingest", data=body, content_type="application/json", headers=headers)

    before = scrape(client)
    assert send(ingest.sign(secret, timestamp, body)).status_code == 201
    assert send(ingest.sign(secret, timestamp, body)).status_code == 201  # byte for byte again: a replay
    assert send("0" * 64).status_code == 401
    after = scrape(client)
    for outcome, count in (("accepted", 1), ("replayed", 1), ("rejected", 1)):
        assert (value(after, "cortex_ingest_events_total", outcome=outcome)
                - value(before, "cortex_ingest_events_total", outcome=outcome)) == count, outcome
    assert (value(after, "cortex_events_total", type="server.started")
            - value(before, "cortex_events_total", type="server.started")) == 1


def test_consumer_lag_and_webhook_queue_and_deliveries(client, owner, settings):
    port = closed_port()  # nobody listens: every attempt fails and is retried later
    created = client.post(f"/api/projects/{owner.project.id}/webhooks/subscriptions", headers=owner.headers,
                          json={"url": f"http://127.0.0.1:{port}/hook", "secret": "whsec-test", "events": ["*"]})
    assert created.status_code == 201
    with transaction():
        event = emit("session.created", tenant_id=owner.project.tenant_id, project_id=owner.project.id,
                     resource_id="session:lag", action="created", data={"id": "lag"})
    DomainEvent.update(timestamp=utcnow() - timedelta(seconds=90)).where(DomainEvent.seq == event.seq).execute()
    scraped = scrape(client)
    for consumer in ("webhooks", "plugins", "functions"):  # nobody consumed it: its age
        assert 89 <= value(scraped, "cortex_consumer_lag_seconds", consumer=consumer) < 300, consumer

    engine = WebhookEngine.from_settings(settings)
    before = value(scraped, "cortex_webhook_deliveries_total", outcome="retry")
    engine.dispatcher.drain()  # fan-out: one queued delivery, the cursor moves past the event
    scraped = scrape(client)
    assert value(scraped, "cortex_consumer_lag_seconds", consumer="webhooks") == 0
    assert value(scraped, "cortex_consumer_lag_seconds", consumer="plugins") >= 89
    assert value(scraped, "cortex_webhook_queue_depth") >= 1
    assert engine.drain() >= 1
    scraped = scrape(client)
    assert value(scraped, "cortex_webhook_deliveries_total", outcome="retry") >= before + 1
    EventCursor.delete().execute()  # every consumer caught up
    EventCursor.insert_many([{"consumer": name, "seq": newest_seq()}
                             for name in ("webhooks", "plugins", "functions", "sanctions")]).execute()
    scraped = scrape(client)
    assert all(value(scraped, "cortex_consumer_lag_seconds", consumer=name) == 0
               for name in ("webhooks", "plugins", "functions", "sanctions"))


def test_mail_function_and_stream_counters(app, client, owner, settings):
    before = scrape(client)
    with transaction():
        queue_mail("someone@example.com", "Hello", "text")
    assert MailEngine.from_settings(settings).drain() == 1  # the outbox directory takes it
    missing = client.get(f"/invoke/{owner.project.id}/no-such-function")
    assert missing.status_code == 404 and missing.headers["X-Request-Id"]
    stream = FlaskClient(app).get("/api/events/stream", headers=owner.headers, buffered=False)
    assert stream.status_code == 200
    during = scrape(client)
    stream.close()
    after = scrape(client)
    assert (value(during, "cortex_mail_sent_total", outcome="sent")
            - value(before, "cortex_mail_sent_total", outcome="sent")) == 1
    assert (value(during, "cortex_function_invocations_total", outcome="not_found")
            - value(before, "cortex_function_invocations_total", outcome="not_found")) == 1
    assert value(during, "cortex_sse_streams") == value(before, "cortex_sse_streams") + 1
    assert value(after, "cortex_sse_streams") == value(before, "cortex_sse_streams")


# ----------------------------------------------------------------- request ids


@pytest.mark.parametrize("given", ["abc", "req-1.2:3_x", "A" * 64])
def test_a_sane_request_id_is_echoed(client, given):
    response = client.get("/api", headers={"X-Request-Id": given})
    assert response.headers.get_all("X-Request-Id") == [given]


@pytest.mark.parametrize("given", ["", "has space", "A" * 65, "semi;colon", "ü", "a/b", "<script>"])
def test_an_insane_request_id_is_replaced(client, given):
    response = client.get("/api", headers={"X-Request-Id": given})
    [answered] = response.headers.get_all("X-Request-Id")
    assert answered != given and logs.sane_request_id(answered) and len(answered) == 32


def test_every_answer_has_a_new_id_without_one(client):
    first, second = (client.get("/api").headers["X-Request-Id"] for _ in range(2))
    assert first != second and logs.sane_request_id(first)


def test_problem_bodies_name_the_request(client, owner, app, monkeypatch):
    limit = app.extensions["cortex"].settings.max_body_bytes
    project_url = f"/api/projects/{owner.project.id}/sessions"
    answers = {
        404: client.get("/no/such/route", headers={"X-Request-Id": "r-404"}),
        405: client.delete("/api", headers={"X-Request-Id": "r-405"}),
        401: client.get(project_url, headers={"X-Request-Id": "r-401"}),
        400: client.get(project_url, query_string={"limit": "many"}, headers={**owner.headers, "X-Request-Id": "r-400"}),
        413: client.post("/api/api-keys", data=b"{" + b" " * limit + b"}", content_type="application/json",
                         headers={**owner.headers, "X-Request-Id": "r-413"}),
    }
    for status, response in answers.items():
        assert response.status_code == status, (status, response.get_data(as_text=True))
        assert response.mimetype == "application/problem+json"
        assert response.get_json()["instance"] == f"urn:request:r-{status}"
        assert response.headers["X-Request-Id"] == f"r-{status}"
    insane = client.get("/no/such/route", headers={"X-Request-Id": "no good"})
    assert insane.get_json()["instance"] == f"urn:request:{insane.headers['X-Request-Id']}"

    # 500: an unexpected exception is logged with the request's id, the answer names it
    def broken(*_args, **_kwargs):
        raise RuntimeError("something broke")

    monkeypatch.setattr(gate, "project_for", broken)
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(logs.formatter("json"))
    handler.addFilter(logs.RequestContextFilter())
    logging.getLogger("cortex").addHandler(handler)
    try:
        # (a plain client: no operation documents a 500)
        failed = FlaskClient(app).get(project_url, headers={**owner.headers, "X-Request-Id": "r-500"})
    finally:
        logging.getLogger("cortex").removeHandler(handler)
    assert failed.status_code == 500 and failed.get_json()["instance"] == "urn:request:r-500"
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    [error] = [record for record in records if record["level"] == "ERROR"]
    assert error["requestId"] == "r-500" and error["operation"] == "listSessions"
    assert "RuntimeError: something broke" in error["exc_info"]
    assert logs.current() is None  # the request's context ended with it


def test_log_lines_outside_requests_have_no_id():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter("text"))
    handler.addFilter(logs.RequestContextFilter())
    logger = logging.getLogger("cortex.test-observability")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("outside")
        context = logs.RequestContext("inside-1")
        logs.enter(context)
        logger.info("inside")
        logs.leave(context)
    finally:
        logger.removeHandler(handler)
    outside, inside = stream.getvalue().splitlines()
    assert outside.endswith("[-]: outside") and inside.endswith("[inside-1]: inside")


# ----------------------------------------------------------------- real processes


def test_json_logs_of_a_real_server_carry_request_ids_and_no_secret(servers, settings, app):
    """A `cortex serve` with CORTEX_LOG_FORMAT=json and CORTEX_LOG_LEVEL=DEBUG: secrets are created and used
    over HTTP; afterwards its log holds none of them, and every line is a JSON object, with the request id on the
    lines of requests."""
    email, password = "logs@example.com", "pw-" + secrets.token_hex(12)
    user = create_user(email, password, "Log Tester")
    project, project_secret = create_project(user, "Logged")  # (projects are made by the CLI, not the API)
    db.close()
    [server] = servers(1, None, CORTEX_LOG_FORMAT="json", CORTEX_LOG_LEVEL="DEBUG", CORTEX_FUNCTIONS_RUNTIME="false",
                       CORTEX_OUTBOUND_ALLOW_PRIVATE="true")  # the webhook endpoint is on loopback
    sent_ids: list[str] = []
    made: list[str] = [password, project_secret]

    def call(method, path, body=None, headers=None, expect=None):
        request_id = f"t-{len(sent_ids)}-{secrets.token_hex(4)}"
        sent_ids.append(request_id)
        status, raw = server.request(method, path, body, {**(headers or {}), "X-Request-Id": request_id})
        if expect is not None:
            assert status == expect, (method, path, status, raw[:300])
        return json.loads(raw) if raw.startswith(b"{") else raw

    wrong = "wrong-" + secrets.token_hex(8)
    made.append(wrong)
    call("POST", "/api/auth/login-credentials", {"email": email, "password": wrong}, expect=401)
    login = call("POST", "/api/auth/login-credentials", {"email": email, "password": password}, expect=201)
    made += [login["accessToken"], login["sessionId"]]
    bearer = {"Authorization": f"Bearer {login['accessToken']}"}
    base = f"/api/projects/{project.id}"
    key = call("POST", "/api/api-keys", {"name": "log key", "scopes": ["sessions:read"]}, bearer, expect=201)["key"]
    made.append(key)
    call("GET", f"{base}/sessions", headers={"X-API-Key": key}, expect=200)
    listed_id = sent_ids[-1]
    call("GET", f"{base}/sessions", headers={"X-API-Key": key + "x"}, expect=401)
    assert call("GET", f"{base}/settings/secret", headers=bearer, expect=200)["secret"] == project_secret
    call("POST", f"{base}/settings/sync-secret", headers=bearer, expect=200)
    hook_secret, hook_password = "whsec-" + secrets.token_hex(12), "basic-" + secrets.token_hex(12)
    made += [hook_secret, hook_password]
    call("POST", f"{base}/webhooks/subscriptions", {
        "url": f"http://127.0.0.1:{closed_port()}/h", "secret": hook_secret, "events": ["*"],
        "authType": "basic_auth", "basicAuthUsername": "hook", "basicAuthPassword": hook_password}, bearer, expect=201)
    env_secret = "env-" + secrets.token_hex(12)
    made.append(env_secret)
    call("PUT", f"{base}/functions/settings/env-vars",
         {"envVars": [{"key": "TOKEN", "value": env_secret, "isSecret": True}]}, bearer, expect=200)
    body = json.dumps({"type": "server.started", "source": "voice:server", "resourceId": "server:1",
                       "payload": {"action": "occurred", "data": {}}}).encode()
    timestamp = rfc3339(utcnow())
    for signature in (ingest.sign(project_secret, timestamp, body), "0" * 64):
        request_id = f"t-ingest-{signature[:4]}"
        sent_ids.append(request_id)
        status, _raw = server.request_raw("POST", "/api/events/ingest", body, {
            "X-Project-Id": project.id, "X-Timestamp": timestamp, "X-Signature": signature,
            "X-Request-Id": request_id})
        assert status in (201, 401)
    call("GET", "/no/such/route", expect=404)
    call("GET", "/metrics", expect=200)
    server.stop()

    with open(server.log.name) as handle:
        text = handle.read()
    for secret in made:
        assert secret not in text, f"a secret ({secret[:6]}…) is in the log"
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"line {number} of the log is not JSON: {line[:200]}")
        assert {"time", "level", "logger", "message", "requestId"} <= set(record), record
        records.append(record)
    access = [record for record in records if record["logger"] == "cortex.access"]
    assert {record["requestId"] for record in access} >= set(sent_ids)
    for record in access:
        assert {"method", "path", "operation", "status", "durationMs"} <= set(record), record
    [listed] = [r for r in access if r["requestId"] == listed_id]  # GET …/sessions with the API key
    assert listed["operation"] == "listSessions" and listed["project"] == project.id and listed["status"] == 200
    assert [r["operation"] for r in access if r["path"] == "/no/such/route"] == ["unknown"]
    in_requests = [record for record in records if record["requestId"] in set(sent_ids)]
    assert len(in_requests) > len(access)  # more than the access lines: e.g. SQL at DEBUG carries the id too


def answered(server, operation: str = "getData") -> float:
    """``cortex_http_requests_total{operation, status="200"}`` as ``server``'s /metrics reports it."""
    status, raw = server.request("GET", "/metrics")
    assert status == 200
    return value(samples(raw.decode()), "cortex_http_requests_total", operation=operation, status="200")


def settled(server, moved_by, expected: float, timeout: float = 5.0) -> float:
    """What ``moved_by(server)`` reports once it reaches ``expected`` (each process writes its request metrics
    to the shared directory every FLUSH_INTERVAL seconds), or the last figure after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while (figure := moved_by(server)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return figure


def test_multi_process_metrics_add_up_across_servers(servers, tmp_path):
    """PROMETHEUS_MULTIPROC_DIR shared by two serving processes: either one's /metrics counts both's requests —
    its own at once, the other's within FLUSH_INTERVAL (1 s) — and a stopped process's counts stay."""
    import time

    from cortex.lib.metrics import FLUSH_INTERVAL

    directory = tmp_path / "prometheus"
    first, second = servers(2, None, PROMETHEUS_MULTIPROC_DIR=str(directory))
    time.sleep(FLUSH_INTERVAL + 0.5)  # the start-up probes' requests are written
    before = answered(first)
    for server, count in ((first, 3), (second, 4)):
        for _ in range(count):
            assert server.request("GET", "/api")[0] == 200
    assert answered(first) - before >= 3  # its own requests, written before it answers the scrape
    began = time.monotonic()
    assert settled(second, lambda server: answered(server) - before, 7) == 7
    assert time.monotonic() - began < FLUSH_INTERVAL + 1.0
    time.sleep(FLUSH_INTERVAL + 0.5)
    assert answered(first) - before == 7  # and never more
    status, raw = second.request("GET", "/metrics")
    after = samples(raw.decode())
    assert value(after, "cortex_http_request_duration_seconds_count", operation="getData") >= 7
    assert value(after, "cortex_sse_streams") == 0
    assert "cortex_webhook_queue_depth" in {name for name, _labels in after}
    assert any(path.name.startswith("counter_") for path in directory.iterdir())


def test_multi_process_request_metrics_match_the_single_process_ones(tmp_path):
    """The request counts and durations a process writes to PROMETHEUS_MULTIPROC_DIR (flush_requests) read back
    through prometheus-client's MultiProcessCollector exactly as one process exports them; a flush that runs
    again or late writes totals, so nothing is counted twice."""
    import subprocess
    import sys

    code = """
import json, sys
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from cortex.lib import metrics
for operation, status, seconds in [("getData", "200", 0.0004), ("getData", "200", 0.003), ("listSessions", "200",
                                   0.02), ("listSessions", "404", 7.5), ("getData", "200", 42.0)]:
    metrics.observe_request(operation, status, seconds)
metrics.flush_requests()
metrics.observe_request("getData", "200", 0.004)
metrics.flush_requests()
metrics.flush_requests()
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry, path=metrics.MULTIPROC_DIR)
shared = generate_latest(registry).decode()
single = CollectorRegistry()
single.register(metrics.RequestCollector())
print(json.dumps([shared, generate_latest(single).decode()]))
"""
    directory = tmp_path / "prometheus"
    directory.mkdir()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}, check=True)
    shared, single = (samples(text) for text in json.loads(result.stdout))
    wanted = {key: figure for key, figure in single.items() if key[0].startswith("cortex_http_request")}
    assert wanted and {key: shared[key] for key in wanted} == wanted
    assert value(shared, "cortex_http_requests_total", operation="getData", status="200") == 4
    assert value(shared, "cortex_http_request_duration_seconds_bucket", operation="getData", le="0.005") == 3
    assert value(shared, "cortex_http_request_duration_seconds_bucket", operation="getData", le="+Inf") == 4
