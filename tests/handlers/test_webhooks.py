"""Webhooks tag over HTTP: subscriptions (validation, write-only encrypted secrets, auth settings, pause,
delete), tenancy and roles, the event log API and manual retry. Delivery itself: tests/test_webhook_delivery.py."""

from dataclasses import replace

import pytest

from models.base import db, transaction, utcnow
from models.events import DomainEvent, emit
from models.webhooks import WebhookEvent, WebhookSubscription, fan_out

BASE = "/api/projects/{}/webhooks"


def subs_url(member, suffix=""):
    return BASE.format(member.project.id) + "/subscriptions" + suffix


def create(client, member, **fields):
    body = {"url": "https://hooks.example.com/cortex", "secret": "s3cret-value", "events": ["*"], **fields}
    return client.post(subs_url(member), json=body, headers=member.headers)


def log_event(project, event_type="session.created", resource="session:abc"):
    with transaction():
        return emit(event_type, tenant_id=project.tenant_id, project_id=project.id, resource_id=resource,
                    action="created", data={"id": resource.split(":")[1]})


def transaction_depth() -> int:
    return db.transaction_depth()


def run_fan_out():
    return fan_out(list(DomainEvent.select().order_by(DomainEvent.seq)))


def test_create_returns_the_subscription_without_secrets(client, owner):
    response = create(client, owner, description="prod", authType="api_key", apiKey="key-123")
    assert response.status_code == 201
    body = response.get_json()
    assert body["url"] == "https://hooks.example.com/cortex"
    assert body["events"] == ["*"]
    assert body["isActive"] is True
    assert body["authType"] == "api_key"
    assert body["apiKeyHeader"] == "X-API-Key"
    assert body["projectId"] == owner.project.id and body["tenantId"] == owner.user.tenant_id
    assert "secret" not in body and "apiKey" not in body
    row = WebhookSubscription.get_by_id(body["id"])
    stored = " ".join(str(v) for v in row.__data__.values())
    assert "s3cret-value" not in stored and "key-123" not in stored  # encrypted at rest
    assert client.get(subs_url(owner), headers=owner.headers).get_json() == [body]
    assert client.get(subs_url(owner, f"/{body['id']}"), headers=owner.headers).get_json() == body


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "https://"}, "url"),
        ({"events": []}, "events"),
        ({"events": ["nothing.like.this"]}, "matches no event type"),
        ({"events": ["webhook.delivery.updated"]}, "never delivered"),
        ({"secret": "  "}, "secret"),
        ({"secret": "whsec_not base64!"}, "whsec_"),
        ({"authType": "api_key"}, "apiKey"),
        ({"authType": "basic_auth", "basicAuthUsername": "u"}, "basic_auth"),
        ({"authType": "custom_headers"}, "customHeaders"),
        ({"authType": "custom_headers", "customHeaders": {"webhook-signature": "x"}}, "customHeaders"),
        ({"authType": "custom_headers", "customHeaders": {"Bad Header": "x"}}, "customHeaders"),
        ({"authType": "api_key", "apiKey": "k", "apiKeyHeader": "Content-Type"}, "apiKeyHeader"),
        ({"authType": "api_key", "apiKey": "中文"}, "Latin-1"),
        ({"authType": "custom_headers", "customHeaders": {"X-A": "line\nbreak"}}, "Latin-1"),
        ({"url": "https://user:pw@hooks.example.com/x"}, "credentials"),
        ({"events": [f"session.{n}" for n in range(101)]}, "at most 100"),
        ({"events": ["*a*b*c*d*e*f"]}, "wildcards"),
    ],
)
def test_create_rejects_bad_input_with_a_problem(client, owner, fields, needle):
    response = create(client, owner, **fields)
    assert response.status_code == 400
    assert response.content_type == "application/problem+json"
    assert needle in response.get_json()["detail"]
    assert WebhookSubscription.select().count() == 0


def test_runs_of_wildcards_collapse_and_matching_stays_linear(client, owner):
    import time

    from models.webhooks import glob_match

    body = create(client, owner, events=["**********created"]).get_json()
    assert body["events"] == ["*created"]
    started = time.perf_counter()
    assert not glob_match("*a*b*c*d*e", "x" * 100)
    assert time.perf_counter() - started < 0.05
    assert glob_match("a*b*c", "axxbyyc") and not glob_match("a*b*c", "axxbyy") and glob_match("*", "")


def test_wildcards_and_exact_types_select_events(client, owner):
    star = create(client, owner, events=["*"]).get_json()["id"]
    messages = create(client, owner, events=["message.*"]).get_json()["id"]
    exact = create(client, owner, events=["session.created", "session.created"]).get_json()
    assert exact["events"] == ["session.created"]  # duplicates dropped
    log_event(owner.project, "session.created")
    log_event(owner.project, "message.created")
    log_event(owner.project, "webhook.delivery.updated", "webhook_event:x")  # never delivered by webhook
    assert run_fan_out() == 4
    assert run_fan_out() == 0  # idempotent
    pairs = {(row.subscription_id, row.event_type) for row in WebhookEvent.select()}
    assert pairs == {(star, "session.created"), (star, "message.created"), (messages, "message.created"),
                     (exact["id"], "session.created")}


def test_events_logged_before_a_subscription_are_not_delivered_to_it(client, owner):
    log_event(owner.project)
    create(client, owner)
    assert run_fan_out() == 0


def test_paused_subscription_gets_nothing_and_resumes(client, owner):
    sub = create(client, owner).get_json()
    paused = client.put(subs_url(owner, f"/{sub['id']}"), json={"isActive": False}, headers=owner.headers)
    assert paused.status_code == 200 and paused.get_json()["isActive"] is False
    log_event(owner.project)
    assert run_fan_out() == 0
    client.put(subs_url(owner, f"/{sub['id']}"), json={"isActive": True}, headers=owner.headers)
    log_event(owner.project, resource="session:def")
    assert run_fan_out() == 1


def test_update_merges_fields_and_auth_settings(client, owner):
    sub = create(client, owner, authType="basic_auth", basicAuthUsername="bob", basicAuthPassword="pw").get_json()
    url = subs_url(owner, f"/{sub['id']}")
    response = client.put(url, json={"description": "new", "basicAuthUsername": "alice"}, headers=owner.headers)
    body = response.get_json()
    assert response.status_code == 200
    assert body["description"] == "new" and body["basicAuthUsername"] == "alice" and body["authType"] == "basic_auth"
    assert body["url"] == sub["url"] and body["events"] == sub["events"]
    assert body["updatedAt"] >= sub["updatedAt"]
    # switching authType drops the old type's settings and needs the new one's
    assert client.put(url, json={"authType": "api_key"}, headers=owner.headers).status_code == 400
    switched = client.put(url, json={"authType": "api_key", "apiKey": "k", "apiKeyHeader": "X-Key"},
                          headers=owner.headers).get_json()
    assert switched["apiKeyHeader"] == "X-Key" and "basicAuthUsername" not in switched
    row = WebhookSubscription.get_by_id(sub["id"])
    assert row.basic_auth_username is None and row.basic_auth_password_encrypted is None
    assert client.put(url, json={"url": "gopher://x"}, headers=owner.headers).status_code == 400
    assert client.get(url, headers=owner.headers).get_json()["url"] == sub["url"]  # nothing stored on a 400


def test_delete_hides_the_subscription_and_fails_its_pending_events(client, owner):
    sub = create(client, owner).get_json()
    log_event(owner.project)
    run_fan_out()
    response = client.delete(subs_url(owner, f"/{sub['id']}"), headers=owner.headers)
    assert response.status_code == 200 and response.get_json() == {"message": "Subscription deleted"}
    assert client.get(subs_url(owner, f"/{sub['id']}"), headers=owner.headers).status_code == 404
    assert client.delete(subs_url(owner, f"/{sub['id']}"), headers=owner.headers).status_code == 404
    assert client.get(subs_url(owner), headers=owner.headers).get_json() == []
    row = WebhookEvent.get()
    assert (row.status, row.last_error) == ("failed", "subscription deleted")
    updates = DomainEvent.select().where(DomainEvent.type == "webhook.delivery.updated")
    assert [e.payload["data"]["status"] for e in updates] == ["failed"]
    # the delivery log stays readable
    detail = client.get(BASE.format(owner.project.id) + f"/events/{row.id}", headers=owner.headers)
    assert detail.status_code == 200 and detail.get_json()["status"] == "failed"
    log_event(owner.project, resource="session:new")
    assert run_fan_out() == 0


def test_subscriptions_belong_to_the_path_project(client, owner, stranger):
    sub = create(client, owner).get_json()
    other = subs_url(stranger, f"/{sub['id']}")
    assert client.get(other, headers=stranger.headers).status_code == 404
    assert client.put(other, json={"isActive": False}, headers=stranger.headers).status_code == 404
    assert client.delete(other, headers=stranger.headers).status_code == 404
    assert client.get(subs_url(stranger), headers=stranger.headers).get_json() == []
    assert client.get(subs_url(owner), headers=stranger.headers).status_code == 404  # not a member


def test_roles_and_scopes(client, owner, add_member, api_key_headers):
    developer = add_member("developer")
    assert client.get(subs_url(owner), headers=developer.headers).status_code == 200
    assert create(client, developer).status_code == 403
    maintainer = add_member("maintainer")
    assert create(client, maintainer).status_code == 201
    read_only = api_key_headers(["webhooks:read"])
    assert client.get(subs_url(owner), headers=read_only).status_code == 200
    body = {"url": "https://x.example/h", "secret": "s", "events": ["*"]}
    assert client.post(subs_url(owner), json=body, headers=read_only).status_code == 403
    writer = api_key_headers(["webhooks:write"])
    assert client.post(subs_url(owner), json=body, headers=writer).status_code == 201


def test_event_log_lists_newest_first_with_status_filter_and_paging(client, owner):
    create(client, owner)
    for n in range(5):
        log_event(owner.project, resource=f"session:s{n}")
    run_fan_out()
    url = BASE.format(owner.project.id) + "/events"
    listed = client.get(url, headers=owner.headers).get_json()
    assert [e["payload"]["resourceId"] for e in listed] == [f"session:s{n}" for n in range(4, -1, -1)]
    assert {e["status"] for e in listed} == {"pending"} and all(e["attemptsCount"] == 0 for e in listed)
    first = listed[0]
    assert first["eventType"] == "session.created" and first["payload"]["type"] == "session.created"
    page = client.get(url, query_string={"limit": 2, "offset": 1}, headers=owner.headers).get_json()
    assert [e["id"] for e in page] == [e["id"] for e in listed[1:3]]
    assert client.get(url, query_string={"status": "delivered"}, headers=owner.headers).get_json() == []
    assert client.get(url, query_string={"status": "bogus"}, headers=owner.headers).status_code == 400
    detail = client.get(f"{url}/{first['id']}", headers=owner.headers).get_json()
    assert detail["deliveries"] == [] and detail["id"] == first["id"]
    assert client.get(f"{url}/nope", headers=owner.headers).status_code == 404


def test_retry_is_refused_while_pending_and_requeues_a_finished_event(client, owner):
    create(client, owner)
    log_event(owner.project)
    run_fan_out()
    row = WebhookEvent.get()
    url = BASE.format(owner.project.id) + f"/events/{row.id}/retry"
    assert client.post(url, headers=owner.headers).status_code == 409
    WebhookEvent.update(status="failed", attempts_count=8, last_error="HTTP 500").execute()
    response = client.post(url, headers=owner.headers)
    assert response.status_code == 200
    body = response.get_json()
    assert (body["status"], body["attemptsCount"], body["id"]) == ("pending", 0, row.id)
    assert "lastError" not in body
    assert client.post(BASE.format(owner.project.id) + "/events/nope/retry", headers=owner.headers).status_code == 404



@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "http://127.1/hook", "http://2130706433/hook", "http://0x7f000001/hook",
    "http://0177.0.0.1/hook", "http://[::1]/hook", "http://[::ffff:10.0.0.1]/hook", "http://[64:ff9b::a9fe:a9fe]/x",
    "http://169.254.169.254/latest/meta-data", "http://100.64.0.1/x", "http://0.0.0.0/x", "http://10.1/x",
])
def test_a_url_written_as_a_refused_address_is_not_stored(client, owner, address_policy_on, url):
    response = create(client, owner, url=url)
    assert response.status_code == 400
    assert "Cortex does not call loopback, private" in response.get_json()["detail"]
    assert WebhookSubscription.select().count() == 0
    good = create(client, owner).get_json()  # a host name is checked when it is called, not when it is stored
    response = client.put(subs_url(owner, f"/{good['id']}"), json={"url": url}, headers=owner.headers)
    assert response.status_code == 400
    assert WebhookSubscription.get_by_id(good["id"]).url == "https://hooks.example.com/cortex"


def test_a_project_holds_at_most_the_configured_number_of_subscriptions(client, owner, stranger, app):
    runtime = app.extensions["cortex"]
    runtime.settings = replace(runtime.settings, max_webhooks_per_project=2)
    first = create(client, owner).get_json()
    assert create(client, owner).status_code == 201
    response = create(client, owner)
    assert response.status_code == 409
    assert response.headers["Content-Type"].startswith("application/problem+json")
    problem = response.get_json()
    assert "at most 2 webhook subscriptions" in problem["detail"]
    assert "CORTEX_MAX_WEBHOOKS_PER_PROJECT" in problem["detail"]
    assert len(client.get(subs_url(owner), headers=owner.headers).get_json()) == 2  # nothing stored on the 409
    assert create(client, stranger).status_code == 201  # the cap is per project
    assert client.delete(subs_url(owner, f"/{first['id']}"), headers=owner.headers).status_code == 200
    assert create(client, owner).status_code == 201  # a deleted subscription frees its place


def test_a_large_backlog_is_failed_in_batches_each_its_own_transaction(client, owner, monkeypatch):
    import models.webhooks as webhooks

    sub = create(client, owner).get_json()
    for n in range(7):
        log_event(owner.project, resource=f"session:s{n}")
    run_fan_out()
    monkeypatch.setattr(webhooks, "DELETE_BATCH", 3)
    batches = []
    real = webhooks.append

    def counting_append(events):
        assert transaction_depth() == 1  # each batch commits on its own, not inside the delete's transaction
        batches.append(len(events))
        return real(events)

    monkeypatch.setattr(webhooks, "append", counting_append)
    assert client.delete(subs_url(owner, f"/{sub['id']}"), headers=owner.headers).status_code == 200
    assert batches == [3, 3, 1]
    assert {row.status for row in WebhookEvent.select()} == {"failed"}


def test_pending_events_a_deleted_subscription_left_behind_are_failed_by_the_retention_job(client, owner):
    from cortex.engines.webhooks import WebhookLogRetentionJob

    sub = create(client, owner).get_json()
    log_event(owner.project)
    run_fan_out()
    # a delete interrupted after marking the subscription deleted (the process died before its batches)
    WebhookSubscription.update(deleted_at=utcnow(), is_active=False).where(
        WebhookSubscription.id == sub["id"]).execute()
    assert WebhookEvent.get().status == "pending"
    WebhookLogRetentionJob().run_once()
    row = WebhookEvent.get()
    assert (row.status, row.last_error) == ("failed", "subscription deleted")
    updates = DomainEvent.select().where(DomainEvent.type == "webhook.delivery.updated")
    assert [e.payload["data"]["status"] for e in updates] == ["failed"]
