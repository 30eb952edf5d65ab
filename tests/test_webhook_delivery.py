"""Webhook delivery against a real local receiver: Standard Webhooks signatures (checked with the official
``standardwebhooks`` library), auth types, retries and their log, Retry-After, 410 Gone, timeouts, refused
destinations, auto-disable, leases, and the background engine keeping healthy endpoints fast."""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook

from cortex.engines.webhooks import WebhookEngine
from models.base import transaction, utcnow
from models.events import DomainEvent, emit
from models.webhooks import RetryPolicy, WebhookDelivery, WebhookEvent, WebhookSubscription, claim


class Receiver:
    """A local HTTP endpoint. ``script[path]`` is a list of replies (status, headers, body) used in turn (the
    last one repeats); ``hang[path]`` seconds to sleep before answering. Records every request."""

    def __init__(self):
        self.requests: list[dict] = []
        self.script: dict[str, list] = {}
        self.hang: dict[str, float] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    seen = [r for r in receiver.requests if r["path"] == self.path]
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers.items()),
                                              "body": body, "at": time.time()})
                    replies = receiver.script.get(self.path, [(200, {}, b"ok")])
                    status, headers, reply = replies[min(len(seen), len(replies) - 1)]
                if receiver.hang.get(self.path):
                    time.sleep(receiver.hang[self.path])
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path="/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def at(self, path="/hook") -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def make_engine(**kw) -> WebhookEngine:
    policy = RetryPolicy(schedule=kw.pop("schedule", (0, 0)), jitter=0, disable_after=kw.pop("disable_after", 3600))
    return WebhookEngine(policy=policy, allow_private=kw.pop("allow_private", True), timeout=kw.pop("timeout", 2.0),
                         **kw)


def subscribe(client, owner, url, **fields) -> dict:
    body = {"url": url, "secret": "plain-secret", "events": ["*"], **fields}
    response = client.post(f"/api/projects/{owner.project.id}/webhooks/subscriptions", json=body,
                           headers=owner.headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def log_event(project, n=0):
    with transaction():
        return emit("session.created", tenant_id=project.tenant_id, project_id=project.id,
                    resource_id=f"session:s{n}", action="created", data={"id": f"s{n}", "n": n})


def updates():
    rows = DomainEvent.select().where(DomainEvent.type == "webhook.delivery.updated").order_by(DomainEvent.seq)
    return [e.payload["data"] for e in rows]


def test_delivery_is_signed_per_standard_webhooks(client, owner, receiver):
    subscribe(client, owner, receiver.url("/plain"))
    subscribe(client, owner, receiver.url("/whsec"), secret="whsec_" + base64.b64encode(b"k" * 32).decode())
    event = log_event(owner.project)
    assert make_engine().drain() == 2
    for path, verifier in (("/plain", Webhook(b"plain-secret")),
                           ("/whsec", Webhook("whsec_" + base64.b64encode(b"k" * 32).decode()))):
        [request] = receiver.at(path)
        headers = {k.lower(): v for k, v in request["headers"].items()}
        payload = verifier.verify(request["body"], headers)  # raises unless signature and timestamp hold
        assert payload["id"] == event.id and payload["type"] == "session.created"
        assert payload["payload"]["data"] == {"id": "s0", "n": 0}
        assert headers["content-type"] == "application/json"
        row = WebhookEvent.get(WebhookEvent.id == headers["webhook-id"])
        assert (row.status, row.attempts_count) == ("delivered", 1)
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 10
    with pytest.raises(Exception):  # noqa: B017 - any verification error
        Webhook(b"other-secret").verify(request["body"], headers)


def test_failed_attempts_are_retried_with_a_stable_id_and_logged(client, owner, receiver):
    receiver.script["/hook"] = [(500, {"X-Reason": "boom"}, b"down"), (503, {}, b"still down"), (200, {}, b"fine")]
    subscribe(client, owner, receiver.url())
    log_event(owner.project)
    assert make_engine(schedule=(0, 0, 0)).drain() == 3
    requests = receiver.at()
    assert len({r["headers"]["webhook-id"] for r in requests}) == 1
    assert len({r["body"] for r in requests}) == 1  # the same bytes every time
    row = WebhookEvent.get()
    assert (row.status, row.attempts_count, row.last_error) == ("delivered", 3, None)
    deliveries = list(WebhookDelivery.select().order_by(WebhookDelivery.created_at))
    assert [d.status_code for d in deliveries] == [500, 503, 200]
    assert deliveries[0].response_body == "down" and deliveries[0].response_headers["x-reason"] == "boom"
    assert deliveries[0].request_body == row.body and deliveries[0].error == "HTTP 500"
    assert [(u["status"], u["attemptsCount"]) for u in updates()] == [("pending", 1), ("pending", 2),
                                                                       ("delivered", 3)]
    detail = client.get(f"/api/projects/{owner.project.id}/webhooks/events/{row.id}", headers=owner.headers)
    assert [d["statusCode"] for d in detail.get_json()["deliveries"]] == [500, 503, 200]


def test_last_attempt_fails_the_event_and_retry_redelivers_it(client, owner, receiver):
    receiver.script["/hook"] = [(500, {}, b"no")] * 3 + [(204, {}, b"")]
    subscribe(client, owner, receiver.url())
    log_event(owner.project)
    engine = make_engine(schedule=(0, 0))
    assert engine.drain() == 3
    row = WebhookEvent.get()
    assert (row.status, row.attempts_count, row.last_error) == ("failed", 3, "HTTP 500")
    response = client.post(f"/api/projects/{owner.project.id}/webhooks/events/{row.id}/retry", headers=owner.headers)
    assert response.status_code == 200
    assert engine.drain() == 1
    row = WebhookEvent.get()
    assert (row.status, row.attempts_count) == ("delivered", 1)
    assert len(receiver.at()) == 4 and len({r["headers"]["webhook-id"] for r in receiver.at()}) == 1
    assert [u["status"] for u in updates()] == ["pending", "pending", "failed", "pending", "delivered"]


def test_retry_after_is_honoured(client, owner, receiver):
    receiver.script["/hook"] = [(429, {"Retry-After": "30"}, b"slow down")]
    subscribe(client, owner, receiver.url())
    log_event(owner.project)
    assert make_engine(schedule=(1,)).drain() == 1  # the retry is not due yet
    row = WebhookEvent.get()
    attempt = WebhookDelivery.get()
    assert row.status == "pending" and row.attempts_count == 1
    wait = (row.next_attempt_at - attempt.created_at).total_seconds()
    assert 29.9 <= wait <= 30.1  # Retry-After wins over the 1 s schedule


def test_gone_disables_the_subscription(client, owner, receiver):
    receiver.script["/hook"] = [(410, {}, b"gone")]
    sub = subscribe(client, owner, receiver.url())
    log_event(owner.project, 1)
    assert make_engine(schedule=(0, 0)).drain() == 1
    assert WebhookEvent.get().status == "failed"
    body = client.get(f"/api/projects/{owner.project.id}/webhooks/subscriptions/{sub['id']}",
                      headers=owner.headers).get_json()
    assert body["isActive"] is False and "410" in body["disabledReason"]
    log_event(owner.project, 2)
    assert make_engine().drain() == 0 and len(receiver.at()) == 1


def test_auth_types_send_their_headers(client, owner, receiver):
    subscribe(client, owner, receiver.url("/key"), authType="api_key", apiKey="k-1")
    subscribe(client, owner, receiver.url("/key2"), authType="api_key", apiKey="k-2", apiKeyHeader="X-Hook-Token")
    subscribe(client, owner, receiver.url("/basic"), authType="basic_auth", basicAuthUsername="bob",
              basicAuthPassword="pw:1")
    subscribe(client, owner, receiver.url("/custom"), authType="custom_headers",
              customHeaders={"X-One": "1", "X-Two": "two"})
    subscribe(client, owner, receiver.url("/none"))
    log_event(owner.project)
    assert make_engine().drain() == 5
    assert receiver.at("/key")[0]["headers"]["X-API-Key"] == "k-1"
    assert receiver.at("/key2")[0]["headers"]["X-Hook-Token"] == "k-2"
    assert receiver.at("/basic")[0]["headers"]["Authorization"] == "Basic " + base64.b64encode(b"bob:pw:1").decode()
    custom = receiver.at("/custom")[0]["headers"]
    assert (custom["X-One"], custom["X-Two"]) == ("1", "two")
    plain = receiver.at("/none")[0]["headers"]
    assert "Authorization" not in plain and "X-API-Key" not in plain


def test_private_destinations_are_refused_by_default(client, owner, receiver):
    subscribe(client, owner, receiver.url())
    log_event(owner.project)
    assert make_engine(allow_private=False, schedule=()).drain() == 1
    assert receiver.requests == []
    row = WebhookEvent.get()
    assert row.status == "failed" and row.last_error.startswith("refused: address not allowed (a loopback address")
    assert "127.0.0.1" not in row.last_error  # the kind of address, never the address
    assert WebhookDelivery.get().status_code is None


def test_timeouts_redirects_and_refused_connections_are_failed_attempts(client, owner, receiver):
    receiver.hang["/slow"] = 3
    receiver.script["/moved"] = [(302, {"Location": "http://127.0.0.1:1/elsewhere"}, b"")]
    subscribe(client, owner, receiver.url("/slow"))
    subscribe(client, owner, receiver.url("/moved"))
    subscribe(client, owner, "http://127.0.0.1:1/closed")
    log_event(owner.project)
    started = time.monotonic()
    assert make_engine(schedule=(), timeout=0.5).drain() == 3
    assert time.monotonic() - started < 3
    errors = {WebhookSubscription.get_by_id(r.subscription_id).url.rsplit("/", 1)[1]: r.last_error
              for r in WebhookEvent.select()}
    assert "timed out" in errors["slow"]
    assert "302" in errors["moved"] and len(receiver.at("/elsewhere")) == 0
    assert "refused" in errors["closed"] or "connect" in errors["closed"]
    assert {r.status for r in WebhookEvent.select()} == {"failed"}


def test_large_responses_are_capped_in_the_log(client, owner, receiver):
    receiver.script["/hook"] = [(200, {}, b"x" * 200_000)]
    subscribe(client, owner, receiver.url())
    log_event(owner.project)
    make_engine().drain()
    assert len(WebhookDelivery.get().response_body) == 64 * 1024


def test_continuous_failure_disables_the_subscription(client, owner, receiver):
    receiver.script["/hook"] = [(500, {}, b"")]
    sub = subscribe(client, owner, receiver.url())
    log_event(owner.project)
    assert make_engine(schedule=(0, 0, 0), disable_after=0.05).drain() >= 1
    time.sleep(0.1)
    log_event(owner.project, 2)
    make_engine(schedule=(0, 0, 0), disable_after=0.05).drain()
    row = WebhookSubscription.get_by_id(sub["id"])
    assert row.is_active is False and "failed" in row.disabled_reason
    # re-enabling clears the streak and the pending event goes out
    receiver.script["/hook"] = [(200, {}, b"")]
    client.put(f"/api/projects/{owner.project.id}/webhooks/subscriptions/{sub['id']}", json={"isActive": True},
               headers=owner.headers)
    make_engine().drain()
    assert WebhookSubscription.get_by_id(sub["id"]).failing_since is None


def test_a_claimed_row_is_leased_until_recorded_or_expired(client, owner, receiver):
    subscribe(client, owner, receiver.url())
    log_event(owner.project)
    make_engine().dispatcher.run_once()
    first = claim(10, lease=30, per_subscription=10)
    assert len(first) == 1
    assert claim(10, lease=30, per_subscription=10) == []  # leased: nobody else gets it
    later = utcnow() + timedelta(seconds=31)
    assert [c.id for c in claim(10, lease=30, per_subscription=10, now=later)] == [first[0].id]  # worker died


def test_deleted_and_paused_subscriptions_get_nothing(client, owner, receiver):
    paused = subscribe(client, owner, receiver.url("/paused"))
    deleted = subscribe(client, owner, receiver.url("/deleted"))
    log_event(owner.project)
    engine = make_engine()
    engine.dispatcher.run_once()
    base = f"/api/projects/{owner.project.id}/webhooks/subscriptions"
    client.put(f"{base}/{paused['id']}", json={"isActive": False}, headers=owner.headers)
    client.delete(f"{base}/{deleted['id']}", headers=owner.headers)
    assert engine.drain() == 0
    assert receiver.requests == []
    client.put(f"{base}/{paused['id']}", json={"isActive": True}, headers=owner.headers)
    assert engine.drain() == 1 and len(receiver.at("/paused")) == 1


def test_background_engine_keeps_healthy_endpoints_fast_beside_a_hanging_one(client, owner, receiver):
    receiver.hang["/hang"] = 2
    subscribe(client, owner, receiver.url("/hang"))
    subscribe(client, owner, receiver.url("/fast"))
    engine = make_engine(concurrency=6, per_subscription=2, poll_interval=0.02, timeout=5.0)
    engine.start()
    try:
        for n in range(20):
            log_event(owner.project, n)
        deadline = time.monotonic() + 5
        while len(receiver.at("/fast")) < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(receiver.at("/fast")) == 20  # while /hang holds its 2 slots for 2 s per request
        assert len(receiver.at("/hang")) <= 2
        fast = {json.loads(r["body"])["payload"]["data"]["n"] for r in receiver.at("/fast")}
        assert fast == set(range(20))
    finally:
        engine.stop(timeout=5)


def _readme_snippet(name: str) -> str:
    from cortex import ROOT

    text = (ROOT / "docs" / "realtime-and-webhooks.md").read_text()
    after = text.split(f"<!-- snippet: {name} -->", 1)[1]
    return after.split("```", 2)[1].split("\n", 1)[1]  # the fenced block right after the marker


@pytest.mark.parametrize("secret", ["plain-secret", "whsec_" + base64.b64encode(b"z" * 24).decode().rstrip("=")])
def test_readme_verification_snippets_accept_real_deliveries(client, owner, receiver, tmp_path, secret):
    """The Python and Node functions the README shows accept a real delivery and reject a tampered one."""
    import shutil
    import subprocess

    subscribe(client, owner, receiver.url(), secret=secret)
    log_event(owner.project)
    make_engine().drain()
    [request] = receiver.at()
    headers = {k.lower(): v for k, v in request["headers"].items()}
    namespace: dict = {}
    exec(compile(_readme_snippet("verify-python"), "docs/realtime-and-webhooks.md", "exec"), namespace)  # noqa: S102
    namespace["verify_webhook"](secret, request["headers"], request["body"])
    with pytest.raises(ValueError):
        namespace["verify_webhook"](secret, request["headers"], request["body"] + b" ")
    node = shutil.which("node")
    assert node, "Node.js is part of the documented toolchain"
    case = tmp_path / "case.json"
    case.write_text(json.dumps({"secret": secret, "headers": headers,
                                "body": base64.b64encode(request["body"]).decode()}))
    script = tmp_path / "verify.js"
    script.write_text(_readme_snippet("verify-node") + """
const c = JSON.parse(require("node:fs").readFileSync(process.argv[2], "utf8"));
const body = Buffer.from(c.body, "base64");
verifyWebhook(c.secret, c.headers, body);
let tampered = false;
try { verifyWebhook(c.secret, c.headers, Buffer.concat([body, Buffer.from(" ")])); } catch (e) { tampered = true; }
if (!tampered) throw new Error("tampered body accepted");
console.log("verified");
""")
    result = subprocess.run([node, str(script), str(case)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "verified"


def test_delivery_updates_are_on_sse_as_documented_envelopes(app, client, owner, receiver):
    from tests.handlers.test_sse import assert_envelope, open_stream, set_max_seconds

    subscribe(client, owner, receiver.url())
    mark = log_event(owner.project)
    make_engine().drain()
    set_max_seconds(app, 0.5)
    reader = open_stream(app, url=f"/api/projects/{owner.project.id}/events/stream",
                         headers={**owner.headers, "Last-Event-ID": mark.id},
                         query_string={"types": "webhook.delivery.updated"})
    frames = [f for f in reader.rest() if f.is_event]
    assert len(frames) == 1
    envelope = frames[0].envelope
    assert_envelope(envelope)
    row = WebhookEvent.get()
    assert envelope["resourceId"] == f"webhook_event:{row.id}"
    assert envelope["payload"]["data"] == {"id": row.id, "eventType": "session.created", "status": "delivered",
                                           "attemptsCount": 1, "projectId": owner.project.id}


def test_two_engines_at_once_send_each_event_once(client, owner, receiver):
    """Several workers may run together: leases (FOR UPDATE SKIP LOCKED on PostgreSQL) hand each row to one."""
    for path in ("/a", "/b", "/c"):
        subscribe(client, owner, receiver.url(path))
    for n in range(60):
        log_event(owner.project, n)
    engines = [make_engine(concurrency=8, per_subscription=3) for _ in range(3)]
    for engine in engines:
        engine.dispatcher.run_once()  # all three fan out the same events: the unique pair keeps one row each
    assert WebhookEvent.select().count() == 180
    for engine in engines:
        engine.start()
    try:
        deadline = time.monotonic() + 20
        while WebhookEvent.select().where(WebhookEvent.status == "delivered").count() < 180:
            assert time.monotonic() < deadline, "not delivered in time"
            time.sleep(0.05)
    finally:
        for engine in engines:
            engine.stop(timeout=5)
    ids = [r["headers"]["webhook-id"] for r in receiver.requests]
    assert len(ids) == 180 and len(set(ids)) == 180
    assert WebhookDelivery.select().count() == 180
    assert sum(engine.delivered for engine in engines) == 180


def test_log_retention_deletes_only_old_settled_events(client, owner, receiver):
    from cortex.engines.webhooks import WebhookLogRetentionJob

    receiver.script["/hook"] = [(200, {}, b"")]
    subscribe(client, owner, receiver.url())
    for n in range(3):
        log_event(owner.project, n)
    make_engine(schedule=()).drain()
    old, pending, recent = list(WebhookEvent.select().order_by(WebhookEvent.event_seq))
    long_ago = utcnow() - timedelta(days=31)
    WebhookEvent.update(updated_at=long_ago).where(WebhookEvent.id == old.id).execute()
    WebhookEvent.update(updated_at=long_ago, status="pending").where(WebhookEvent.id == pending.id).execute()
    assert WebhookLogRetentionJob(30).run_once() == 1
    assert {r.id for r in WebhookEvent.select()} == {pending.id, recent.id}
    assert {d.webhook_event_id for d in WebhookDelivery.select()} == {pending.id, recent.id}


def test_fan_out_passes_over_events_while_no_subscription_is_active(client, owner, receiver):
    engine = make_engine()
    first = log_event(owner.project, 1)
    assert engine.dispatcher.run_once() == 1 and engine.dispatcher.cursor == first.seq  # nobody to deliver to
    subscribe(client, owner, receiver.url())
    log_event(owner.project, 2)
    assert engine.drain() == 1
    [request] = receiver.at()
    assert json.loads(request["body"])["payload"]["data"]["n"] == 2


def test_record_many_writes_a_batch_of_mixed_outcomes(client, owner, receiver):
    """The bulk writer (one UPDATE … FROM VALUES on PostgreSQL) does what one record per attempt does."""
    from models.webhooks import Attempt, record_many

    subs = [subscribe(client, owner, receiver.url(f"/{n}"))["id"] for n in range(4)]
    log_event(owner.project)
    make_engine().dispatcher.run_once()
    claimed = {c.subscription_id: c for c in claim(10, lease=30, per_subscription=10)}
    ok, retry, gone, stale = (claimed[s] for s in subs)
    stale.attempts_count = 5  # as if a manual retry had re-queued the row meanwhile: log only
    at = utcnow()

    def attempt(c, code, error=None):
        return Attempt(claimed=c, status_code=code, response_body="b", response_headers={"x": "1"}, error=error,
                       duration_ms=1.5, retry_after=None, at=at)

    policy = RetryPolicy(schedule=(60,), jitter=0)
    with transaction():
        result = record_many([attempt(ok, 200), attempt(retry, 500, "HTTP 500"), attempt(gone, 410, "HTTP 410"),
                              attempt(stale, 200)], policy)
    assert result == ["delivered", "pending", "failed", None]
    rows = {r.subscription_id: r for r in WebhookEvent.select()}
    assert (rows[subs[0]].status, rows[subs[0]].attempts_count, rows[subs[0]].lease_until) == ("delivered", 1, None)
    assert (rows[subs[1]].status, rows[subs[1]].last_error) == ("pending", "HTTP 500")
    assert (rows[subs[1]].next_attempt_at - at).total_seconds() == 60
    assert rows[subs[2]].status == "failed" and not WebhookSubscription.get_by_id(subs[2]).is_active
    assert (rows[subs[3]].status, rows[subs[3]].attempts_count) == ("pending", 0)  # untouched
    assert WebhookSubscription.get_by_id(subs[1]).failing_since == at
    assert WebhookDelivery.select().count() == 4
    assert sorted(u["status"] for u in updates()) == ["delivered", "failed", "pending"]


def test_claim_respects_slots_already_in_flight(client, owner, receiver):
    a = subscribe(client, owner, receiver.url("/a"))["id"]
    b = subscribe(client, owner, receiver.url("/b"))["id"]
    c = subscribe(client, owner, receiver.url("/c"))["id"]
    for n in range(5):
        log_event(owner.project, n)
    make_engine().dispatcher.run_once()
    got = claim(100, lease=30, per_subscription=3, busy={a: 3, b: 1})
    per_sub = {s: sum(1 for x in got if x.subscription_id == s) for s in (a, b, c)}
    assert per_sub == {a: 0, b: 2, c: 3}


def test_retry_policy_schedule_jitter_and_retry_after():
    policy = RetryPolicy()  # the documented default: immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h
    assert policy.max_attempts == 8
    assert policy.schedule == (5, 300, 1800, 7200, 18000, 36000, 36000)
    delays = [policy.delay(2, None) for _ in range(200)]  # before the third attempt: 5 min ± 10 %
    assert all(270 <= d <= 330 for d in delays) and len(set(delays)) > 1  # jittered
    assert policy.delay(1, 120) == 120  # a Retry-After later than the scheduled 5 s wins
    assert 4.5 <= policy.delay(1, 1) <= 5.5  # an earlier Retry-After does not make it sooner than the schedule
    assert RetryPolicy(schedule=(0,)).delay(1, None) == 0


def test_a_late_record_of_an_expired_lease_does_not_undo_a_manual_retry(client, owner, receiver):
    """Worker A's lease ran out, the event went on without it and was re-queued by hand: A's late result is
    logged as an attempt but changes nothing (the lease it held is gone)."""
    from models.webhooks import Attempt, record_many

    subscribe(client, owner, receiver.url("/a"))
    subscribe(client, owner, receiver.url("/b"))
    log_event(owner.project)
    make_engine().dispatcher.run_once()
    late = claim(10, lease=30, per_subscription=10)
    assert len(late) == 2
    WebhookEvent.update(status="failed", attempts_count=0, lease_until=None).execute()  # settled without A
    for row in WebhookEvent.select():
        response = client.post(f"/api/projects/{owner.project.id}/webhooks/events/{row.id}/retry",
                               headers=owner.headers)
        assert response.status_code == 200
    attempts = [Attempt(claimed=c, status_code=200, response_body="", response_headers={}, error=None,
                        duration_ms=1.0, retry_after=None, at=utcnow()) for c in late]
    with transaction():
        assert record_many(attempts, RetryPolicy()) == [None, None]  # one bulk statement on PostgreSQL
        assert record_many(attempts[:1], RetryPolicy()) == [None]  # and the one-row path
    assert {(r.status, r.attempts_count) for r in WebhookEvent.select()} == {("pending", 0)}
    assert make_engine().drain() == 2 and {r.status for r in WebhookEvent.select()} == {"delivered"}


def test_deleting_a_subscription_fails_its_backlog_in_chunks(client, owner, receiver):
    from models.webhooks import _fail_pending

    sub = subscribe(client, owner, receiver.url())
    for n in range(7):
        log_event(owner.project, n)
    make_engine().dispatcher.run_once()
    delivered = WebhookEvent.select().order_by(WebhookEvent.event_seq).first()
    WebhookEvent.update(status="delivered").where(WebhookEvent.id == delivered.id).execute()
    assert _fail_pending(sub["id"], "subscription deleted", utcnow(), batch=2) == 6
    assert WebhookEvent.get_by_id(delivered.id).status == "delivered"  # settled rows are left alone
    assert WebhookEvent.select().where(WebhookEvent.status == "failed").count() == 6
    assert [u["status"] for u in updates()] == ["failed"] * 6
