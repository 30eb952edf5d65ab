"""Webhooks: subscriptions, the durable delivery queue (one ``WebhookEvent`` per event and subscription) and
the log of every delivery attempt (``WebhookDelivery``).

The flow (see ARCHITECTURE.md "Webhooks"):

1. ``fan_out(events)`` — run by the persistent ``webhooks`` dispatcher over the event log — writes one
   ``pending`` WebhookEvent per event and active matching subscription of the event's project. The row holds
   the exact JSON body that will be POSTed (the event envelope), so every retry sends the same bytes and
   signature input. A unique (subscription, event) pair makes fan-out idempotent: two processes, or a batch
   handed over again after a crash, never queue an event twice.
2. ``claim(...)`` leases due rows to one worker (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite has one
   writer): a leased row is not handed to anyone else until its lease expires, which only happens when the
   worker died mid-delivery — the row is then delivered again (at least once).
3. ``record(attempt)`` writes the attempt's ``WebhookDelivery`` row, moves the WebhookEvent on (delivered,
   scheduled retry, or failed) and emits ``webhook.delivery.updated``, in one transaction.

Secrets (the signing secret, an API key, a basic-auth password, custom header values) are encrypted at rest
with the server key (``cortex.lib.crypto``) and never returned by the API.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
import peewee as pw

from cortex.lib.addresses import NOT_CALLED, refused_literal
from cortex.lib.crypto import decrypt, encrypt
from cortex.lib.webhook_signing import signing_key
from models.base import (
    BaseModel,
    DomainError,
    JSONField,
    UTCDateTimeField,
    check_cap,
    db,
    is_sqlite,
    new_id,
    page_bounds,
    rfc3339,
    transaction,
    utcnow,
)
from models.events import DomainEvent, append, event_body, new_event, newest_seq

NEVER_DELIVERED = "webhook.delivery.updated"  # about webhooks themselves: on SSE, never sent by webhook
DEFAULT_API_KEY_HEADER = "X-API-Key"
AUTH_TYPES = ("none", "api_key", "basic_auth", "custom_headers")
MAX_URL = 2048
MAX_CAPTURE = 64 * 1024  # bytes of a request or response body kept in a delivery row
#: Headers a subscription's custom headers may not set: the signature headers, and what HTTP itself decides.
RESERVED_HEADERS = {"webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "content-length",
                    "host", "transfer-encoding", "connection"}
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)


class WebhookSubscription(BaseModel):
    """One endpoint of a project and the event patterns it wants."""

    tenant_id = pw.CharField(max_length=36)
    project_id = pw.CharField(max_length=36, index=True)
    url = pw.TextField()
    events = JSONField()  # patterns: exact types, or with "*" wildcards ("message.*", "*")
    description = pw.TextField(null=True)
    is_active = pw.BooleanField(default=True)
    auth_type = pw.CharField(max_length=20, default="none")
    secret_encrypted = pw.TextField()
    api_key_encrypted = pw.TextField(null=True)
    api_key_header = pw.CharField(max_length=200, null=True)
    basic_auth_username = pw.TextField(null=True)
    basic_auth_password_encrypted = pw.TextField(null=True)
    custom_headers_encrypted = pw.TextField(null=True)  # the JSON object, encrypted as a whole
    start_seq = pw.BigIntegerField(default=0)  # events after this log position are delivered (not older ones)
    failing_since = UTCDateTimeField(null=True)  # first failed attempt since the last success
    disabled_reason = pw.TextField(null=True)  # why Cortex set isActive false (410 Gone, failing too long)
    deleted_at = UTCDateTimeField(null=True)  # deleted subscriptions stay, so their delivery log stays readable
    updated_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "webhook_subscription"


class WebhookEvent(BaseModel):
    """One event to deliver to one subscription: the delivery queue and its state."""

    subscription_id = pw.CharField(max_length=36)
    event_seq = pw.BigIntegerField()
    event_id = pw.CharField(max_length=36)
    tenant_id = pw.CharField(max_length=36)
    project_id = pw.CharField(max_length=36)
    event_type = pw.CharField(max_length=100)
    body = pw.TextField()  # the exact JSON POSTed (the event envelope): the same bytes on every attempt
    status = pw.CharField(max_length=10, default="pending")  # pending | delivered | failed
    attempts_count = pw.IntegerField(default=0)
    last_error = pw.TextField(null=True)
    next_attempt_at = UTCDateTimeField(default=utcnow)  # when due (pending); the last attempt's time otherwise
    lease_until = UTCDateTimeField(null=True)  # claimed by a worker until then
    updated_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "webhook_event"
        indexes = (
            (("subscription_id", "event_seq"), True),
            (("status", "subscription_id", "next_attempt_at"), False),  # the claim: per-subscription queues
            (("project_id", "created_at"), False),
        )


class WebhookDelivery(BaseModel):
    """One attempt to deliver a WebhookEvent: what was sent and what came back."""

    webhook_event_id = pw.CharField(max_length=36, index=True)
    subscription_id = pw.CharField(max_length=36)
    status_code = pw.IntegerField(null=True)
    response_body = pw.TextField(null=True)
    response_headers = JSONField(null=True)
    request_body = pw.TextField()
    error = pw.TextField(null=True)
    duration_ms = pw.FloatField(null=True)

    class Meta:
        table_name = "webhook_delivery"


MODELS = [WebhookSubscription, WebhookEvent, WebhookDelivery]


# ------------------------------------------------------------------------------------------ patterns


MAX_PATTERNS = 100  # patterns per subscription
MAX_WILDCARDS = 5  # "*" per pattern (runs of "*" count once)


def glob_match(pattern: str, text: str) -> bool:
    """``*`` matches any run of characters (also none); everything else matches itself. Iterative, at most
    len(pattern) × len(text) steps — never the exponential backtracking a regex of several ``.*`` can take."""
    p = t = 0
    star = resume = -1
    while t < len(text):
        if p < len(pattern) and pattern[p] != "*" and pattern[p] == text[t]:
            p += 1
            t += 1
        elif p < len(pattern) and pattern[p] == "*":
            star, resume = p, t
            p += 1
        elif star >= 0:
            p = star + 1
            resume += 1
            t = resume
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def matches(patterns: list[str], event_type: str) -> bool:
    """True when ``event_type`` matches one of the patterns (``*`` stands for any run of characters);
    ``webhook.delivery.updated`` never matches."""
    if event_type == NEVER_DELIVERED:
        return False
    return any(glob_match(p, event_type) for p in patterns)


def check_patterns(patterns: list[str], known_types: list[str]) -> list[str]:
    """The patterns, deduplicated in order (runs of ``*`` collapsed); invalid unless there are 1 to
    ``MAX_PATTERNS`` and each one matches some deliverable type."""
    if not patterns:
        raise DomainError("invalid", "events must name at least one event type or pattern, e.g. \"*\"")
    if len(patterns) > MAX_PATTERNS:
        raise DomainError("invalid", f"events may list at most {MAX_PATTERNS} types or patterns")
    deliverable = [t for t in known_types if t != NEVER_DELIVERED]
    seen: dict[str, None] = {}
    for pattern in patterns:
        if not pattern or pattern != pattern.strip() or len(pattern) > 100:
            raise DomainError("invalid", f"events: {pattern!r} is not an event type or pattern")
        pattern = re.sub(r"\*+", "*", pattern)
        if pattern.count("*") > MAX_WILDCARDS:
            raise DomainError("invalid", f"events: {pattern!r} has more than {MAX_WILDCARDS} wildcards")
        if not any(glob_match(pattern, t) for t in deliverable):
            hint = " (it is never delivered by webhook; read it on SSE)" if pattern == NEVER_DELIVERED else ""
            raise DomainError("invalid", f"events: {pattern!r} matches no event type{hint}; "
                                          "see the *Event schemas of the document")
        seen[pattern] = None
    return list(seen)


# ------------------------------------------------------------------------------------------ subscriptions


def check_url(url: str) -> str:
    """The URL if it is an absolute http(s) URL with a host; invalid otherwise."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        parts = None
    if (parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname
            or len(url) > MAX_URL or any(c.isspace() for c in url)):
        raise DomainError("invalid", "url must be an absolute http:// or https:// URL with a host "
                                      f"(at most {MAX_URL} characters), e.g. https://example.com/webhook")
    if parts.username is not None or parts.password is not None:
        raise DomainError("invalid", "url must not contain credentials (they would be stored and shown in the "
                                      "clear): use authType basic_auth")
    refused = refused_literal(url)
    if refused is not None:
        raise DomainError("invalid", f"url: {refused}; {NOT_CALLED}")
    return url


def check_secret(secret: str) -> str:
    """The secret if usable for signing; a ``whsec_`` secret must be base64 (Standard Webhooks)."""
    if not secret.strip():
        raise DomainError("invalid", "secret must not be empty")
    try:
        signing_key(secret)
    except ValueError:
        raise DomainError("invalid", "a secret starting with whsec_ must continue with base64 "
                                      "(Standard Webhooks); use another prefix for a plain secret") from None
    return secret


#: Fields of the request bodies (camelCase) that configure how Cortex authenticates at the endpoint.
_AUTH_FIELDS = ("authType", "apiKey", "apiKeyHeader", "basicAuthUsername", "basicAuthPassword", "customHeaders")


def _header_value_ok(value: str) -> bool:
    """Sendable as an HTTP header value: Latin-1, no control characters (tab allowed)."""
    return all(c == "\t" or (" " <= c <= "\xff" and c != "\x7f") for c in value)


def _auth_state(sub: WebhookSubscription) -> dict:
    state = {"authType": sub.auth_type, "apiKeyHeader": sub.api_key_header,
             "basicAuthUsername": sub.basic_auth_username}
    state["apiKey"] = decrypt(sub.api_key_encrypted) if sub.api_key_encrypted else None
    state["basicAuthPassword"] = (decrypt(sub.basic_auth_password_encrypted)
                                  if sub.basic_auth_password_encrypted else None)
    state["customHeaders"] = (orjson.loads(decrypt(sub.custom_headers_encrypted))
                              if sub.custom_headers_encrypted else None)
    return state


def _apply_auth(sub: WebhookSubscription, state: dict) -> None:
    """Check the authentication settings for their ``authType`` and store them (secrets encrypted)."""
    auth_type = state.get("authType") or "none"
    api_key, header = state.get("apiKey"), state.get("apiKeyHeader")
    user, password = state.get("basicAuthUsername"), state.get("basicAuthPassword")
    custom = state.get("customHeaders")
    if auth_type == "api_key" and not api_key:
        raise DomainError("invalid", "authType api_key needs apiKey")
    if auth_type == "basic_auth" and (not user or password is None or ":" in user):
        raise DomainError("invalid", "authType basic_auth needs basicAuthUsername (without ':') and "
                                      "basicAuthPassword")
    if auth_type == "custom_headers" and not custom:
        raise DomainError("invalid", "authType custom_headers needs customHeaders with at least one header")
    if header is not None and (not _TOKEN.match(header) or header.lower() in RESERVED_HEADERS):
        raise DomainError("invalid", f"apiKeyHeader {header!r} is not a header name Cortex may set")
    for name, value in (custom or {}).items():
        if not _TOKEN.match(name) or name.lower() in RESERVED_HEADERS:
            raise DomainError("invalid", f"customHeaders: {name!r} is not a header name Cortex may set")
        if not _header_value_ok(value):
            raise DomainError("invalid", f"customHeaders: the value of {name!r} must be one line of printable "
                                          "Latin-1 characters (HTTP header values)")
    if api_key is not None and not _header_value_ok(api_key):
        raise DomainError("invalid", "apiKey must be one line of printable Latin-1 characters (it is sent as a "
                                      "header value)")
    sub.auth_type = auth_type
    sub.api_key_encrypted = encrypt(api_key) if api_key else None
    sub.api_key_header = header
    sub.basic_auth_username = user
    sub.basic_auth_password_encrypted = encrypt(password) if password is not None else None
    sub.custom_headers_encrypted = encrypt(orjson.dumps(custom).decode()) if custom else None


def create_subscription(project, body: dict, known_types: list[str], limit: int) -> WebhookSubscription:
    """A new active subscription of ``project``; it receives the events logged from now on. A project holds
    at most ``limit`` live subscriptions (``CORTEX_MAX_WEBHOOKS_PER_PROJECT``): one more is a conflict."""
    now = utcnow()
    sub = WebhookSubscription(
        id=new_id(), tenant_id=project.tenant_id, project_id=project.id, url=check_url(body["url"]),
        events=check_patterns(body["events"], known_types), description=body.get("description"),
        secret_encrypted=encrypt(check_secret(body["secret"])), created_at=now, updated_at=now,
    )
    _apply_auth(sub, {name: body.get(name) for name in _AUTH_FIELDS})
    with transaction():
        check_cap(type(project), project.id, live_subscriptions(project.id), limit, "webhook subscriptions per project",
                  "CORTEX_MAX_WEBHOOKS_PER_PROJECT")
        sub.start_seq = newest_seq()
        sub.save(force_insert=True)
    return sub


def live_subscriptions(project_id: str):
    """A project's subscriptions that were not deleted, oldest first."""
    return (WebhookSubscription.select()
            .where((WebhookSubscription.project_id == project_id) & WebhookSubscription.deleted_at.is_null())
            .order_by(WebhookSubscription.created_at, WebhookSubscription.id))


def get_subscription(project_id: str, subscription_id: str) -> WebhookSubscription:
    """One live subscription of the project; not_found otherwise."""
    sub = live_subscriptions(project_id).where(WebhookSubscription.id == subscription_id).first()
    if sub is None:
        raise DomainError("not_found", f"webhook subscription {subscription_id} not found")
    return sub


def update_subscription(project_id: str, subscription_id: str, body: dict,
                        known_types: list[str]) -> WebhookSubscription:
    """Change the given fields. Auth fields merge with the stored ones; a new authType drops the settings of
    the old one. ``isActive: false`` pauses: pending events wait, new events are not queued for it;
    ``isActive: true`` resumes (also a subscription Cortex disabled): its pending events go out."""
    with transaction():
        sub = get_subscription(project_id, subscription_id)
        if "url" in body:
            sub.url = check_url(body["url"])
        if "events" in body:
            sub.events = check_patterns(body["events"], known_types)
        if "description" in body:
            sub.description = body["description"]
        if "secret" in body:
            sub.secret_encrypted = encrypt(check_secret(body["secret"]))
        if any(name in body for name in _AUTH_FIELDS):
            state = _auth_state(sub)
            if body.get("authType", sub.auth_type) != sub.auth_type:
                state = {"authType": body["authType"]}
            state.update({name: body[name] for name in _AUTH_FIELDS if name in body})
            _apply_auth(sub, state)
        if "isActive" in body:
            if body["isActive"] and not sub.is_active:  # events logged while paused are not delivered
                sub.failing_since = None
                sub.disabled_reason = None
                sub.start_seq = max(sub.start_seq, newest_seq())
            sub.is_active = body["isActive"]
        sub.updated_at = utcnow()
        sub.save()
    return sub


def delete_subscription(project_id: str, subscription_id: str) -> WebhookSubscription:
    """Delete: nothing more is sent to it; its pending events become ``failed`` ("subscription deleted"), each
    with a ``webhook.delivery.updated`` event. The delivery log stays readable.

    The subscription is marked deleted in one short transaction (no claim or fan-out takes its rows after
    that); its backlog is then failed in batches of ``DELETE_BATCH``, each its own transaction, so a backlog of
    50,000 never holds the event-log lock for long. Should the process die midway, the webhook log-retention
    job finishes the rest (:func:`finish_deleted`)."""
    with transaction():
        sub = get_subscription(project_id, subscription_id)
        now = utcnow()
        sub.deleted_at = now
        sub.is_active = False
        sub.updated_at = now
        sub.save()  # the row lock waits for a fan-out or retry holding it (FOR SHARE)
    _fail_pending(sub.id, "subscription deleted", now)
    return sub


#: Pending events failed per transaction when a subscription is deleted, and the longest pause between two.
DELETE_BATCH = 500
DELETE_PAUSE_MAX = 0.5


def finish_deleted() -> int:
    """Fail the pending events left behind by deleted subscriptions (a delete interrupted midway); how many."""
    subs = (WebhookSubscription.select(WebhookSubscription.id)
            .where(WebhookSubscription.deleted_at.is_null(False)
                   & pw.fn.EXISTS(WebhookEvent.select(WebhookEvent.id).where(
                       (WebhookEvent.subscription_id == WebhookSubscription.id)
                       & (WebhookEvent.status == "pending")))))
    return sum(_fail_pending(sub_id, "subscription deleted", utcnow()) for (sub_id,) in subs.tuples())


def _fail_pending(subscription_id: str, reason: str, now: datetime, batch: int | None = None) -> int:
    """Set every pending event of a subscription ``failed`` with ``reason`` and append their status events,
    ``batch`` rows per transaction (conditional UPDATEs: a record that committed first is not overwritten)."""
    batch = batch or DELETE_BATCH
    mark = "%s" if not is_sqlite() else "?"
    field = WebhookEvent.updated_at
    done = 0
    while True:
        started = time.monotonic()
        with transaction():
            part = [i for (i,) in WebhookEvent.select(WebhookEvent.id).where(
                (WebhookEvent.subscription_id == subscription_id) & (WebhookEvent.status == "pending"))
                .limit(batch).tuples()]
            if not part:
                return done
            rows = db.execute_sql(
                f'UPDATE "webhook_event" SET "status" = \'failed\', "last_error" = {mark}, "lease_until" = NULL, '  # nosec B608 - only column names from the models and placeholders are interpolated; values are bound
                f'"updated_at" = {mark} WHERE "status" = \'pending\' AND "id" IN ({", ".join([mark] * len(part))}) '
                'RETURNING "id", "tenant_id", "project_id", "event_type", "attempts_count"',
                [reason, field.db_value(now), *part]).fetchall()
            append([_status_event(event_id, tenant, project, kind, "failed", attempts, reason)
                    for event_id, tenant, project, kind, attempts in rows])
            done += len(rows)
        # Give way before the next batch, as long as this one took: the requests waiting for the writer take it
        # (under gevent a SQLite call never yields, and releasing the lock alone does not switch greenlets), and
        # a long backlog uses at most about half the process's time, however long it is.
        time.sleep(min(time.monotonic() - started, DELETE_PAUSE_MAX))


def subscription_body(sub: WebhookSubscription) -> dict:
    """The WebhookSubscription schema (never a secret)."""
    body = {
        "id": sub.id, "tenantId": sub.tenant_id, "projectId": sub.project_id, "url": sub.url,
        "events": list(sub.events), "isActive": bool(sub.is_active), "authType": sub.auth_type,
        "createdAt": rfc3339(sub.created_at), "updatedAt": rfc3339(sub.updated_at),
    }
    if sub.description is not None:
        body["description"] = sub.description
    if sub.auth_type == "api_key":
        body["apiKeyHeader"] = sub.api_key_header or DEFAULT_API_KEY_HEADER
    if sub.auth_type == "basic_auth":
        body["basicAuthUsername"] = sub.basic_auth_username
    if sub.disabled_reason and not sub.is_active:
        body["disabledReason"] = sub.disabled_reason
    return body


# ------------------------------------------------------------------------------------------ fan-out


def any_active() -> bool:
    """Whether any subscription could receive events. When none does, the fan-out moves past new events
    without reading them: a subscription created later starts after them anyway (``start_seq``)."""
    return (WebhookSubscription.select(WebhookSubscription.id)
            .where(WebhookSubscription.is_active & WebhookSubscription.deleted_at.is_null()).exists())


def fan_out(events: list[DomainEvent]) -> int:
    """Queue every event for each active subscription of its project that wants it; how many rows were new.

    Idempotent (unique subscription + event): safe to run twice for the same events."""
    candidates = [e for e in events if e.project_id is not None and e.type != NEVER_DELIVERED]
    if not candidates:
        return 0
    projects = {e.project_id for e in candidates}
    with transaction():
        # Read inside the writing transaction, holding the subscriptions (FOR SHARE on PostgreSQL; SQLite's
        # transaction is exclusive): a delete or pause cannot commit between this read and the insert and
        # leave rows queued for a subscription that no longer takes them.
        query = (WebhookSubscription.select(WebhookSubscription.id, WebhookSubscription.project_id,
                                            WebhookSubscription.events, WebhookSubscription.start_seq)
                 .where(WebhookSubscription.project_id.in_(list(projects)) & WebhookSubscription.is_active
                        & WebhookSubscription.deleted_at.is_null()))
        if not is_sqlite():
            query = query.for_update("FOR SHARE")
        subs: dict[str, list[tuple]] = {}
        for sub_id, project_id, patterns, start_seq in query.tuples():
            subs.setdefault(project_id, []).append((sub_id, patterns, start_seq))  # tuples() decodes JSON
        return _queue(candidates, subs) if subs else 0


def _queue(candidates: list[DomainEvent], subs: dict[str, list[tuple]]) -> int:
    """Insert the WebhookEvent rows of ``candidates`` for the matching ``subs``; how many were new."""
    rows = []
    now = utcnow()
    for event in candidates:
        body = None
        for sub_id, patterns, start_seq in subs.get(event.project_id, ()):
            if event.seq > start_seq and matches(patterns, event.type):
                if body is None:
                    body = orjson.dumps(event_body(event)).decode()
                rows.append({"id": new_id(), "subscription_id": sub_id, "event_seq": event.seq,
                             "event_id": event.id, "tenant_id": event.tenant_id, "project_id": event.project_id,
                             "event_type": event.type, "body": body, "status": "pending", "attempts_count": 0,
                             "next_attempt_at": now, "created_at": now, "updated_at": now})
    created = 0
    for start in range(0, len(rows), 200):
        created += WebhookEvent.insert_many(rows[start:start + 200]).on_conflict_ignore().as_rowcount().execute()
    return created


# ------------------------------------------------------------------------------------------ delivery queue


@dataclass(slots=True)
class Claimed:
    """A leased WebhookEvent, with what its delivery needs."""

    id: str
    subscription_id: str
    tenant_id: str
    project_id: str
    event_type: str
    body: str
    attempts_count: int
    url: str
    secret: str
    headers: dict  # the authentication headers of the subscription's authType
    lease_until: datetime  # this claim's lease: its token — a record must still find it there


def _auth_headers(auth_type, api_key_enc, api_key_header, user, password_enc, custom_enc) -> dict:
    import base64

    if auth_type == "api_key" and api_key_enc:
        return {api_key_header or DEFAULT_API_KEY_HEADER: decrypt(api_key_enc)}
    if auth_type == "basic_auth" and user is not None and password_enc:
        token = base64.b64encode(f"{user}:{decrypt(password_enc)}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    if auth_type == "custom_headers" and custom_enc:
        return dict(orjson.loads(decrypt(custom_enc)))
    return {}


_CLAIM_COLUMNS = ('e."id", e."subscription_id", e."tenant_id", e."project_id", e."event_type", e."body", '
                  'e."attempts_count", s."url", s."secret_encrypted", s."auth_type", s."api_key_encrypted", '
                  's."api_key_header", s."basic_auth_username", s."basic_auth_password_encrypted", '
                  's."custom_headers_encrypted"')


#: Subscriptions with pending rows, found by a loose index scan over (status, subscription_id, …): one index
#: seek per subscription, however many rows each has queued.
_READY = (
    'WITH RECURSIVE ready(sid) AS ('
    'SELECT (SELECT MIN(e."subscription_id") FROM "webhook_event" e WHERE e."status" = \'pending\') '
    'UNION ALL SELECT (SELECT MIN(e."subscription_id") FROM "webhook_event" e '
    'WHERE e."status" = \'pending\' AND e."subscription_id" > r.sid) FROM ready r WHERE r.sid IS NOT NULL) '
)
_DUE = ('e."status" = \'pending\' AND e."next_attempt_at" <= %s '
        'AND (e."lease_until" IS NULL OR e."lease_until" < %s)')


def claim(limit: int, *, lease: float, per_subscription: int, busy: dict[str, int] | None = None,
          now: datetime | None = None) -> list[Claimed]:
    """Lease up to ``limit`` due pending events of active subscriptions for ``lease`` seconds, oldest due
    first, at most ``per_subscription`` minus ``busy[subscription]`` (its attempts already in flight) of one
    subscription — none of a subscription whose slots are full.

    The rows are found per subscription, never by walking one global queue: the subscriptions with pending
    rows come from a loose index scan (``_READY``), then each one's oldest due rows from the
    ``(status, subscription_id, next_attempt_at)`` index. A slow endpoint's backlog of due rows therefore
    costs the other subscriptions' claims nothing (walking it cost 106 ms per claim at 50,000 rows).

    PostgreSQL: one statement (a LATERAL per subscription, ``FOR UPDATE SKIP LOCKED``) — concurrent workers
    take disjoint rows without waiting. SQLite: the one-writer lock serialises claims. A lease ends when the
    attempt is recorded; one that runs out (the worker died) makes the row due again."""
    if limit <= 0:
        return []
    now = now or utcnow()
    field = WebhookEvent.next_attempt_at
    until = now + timedelta(milliseconds=round(lease * 1000))  # millisecond-exact: compared as a token later
    now_db, until_db = field.db_value(now), field.db_value(until)
    busy = busy or {}
    free = {sub: per_subscription - running for sub, running in busy.items() if running > 0}
    with transaction():
        if not is_sqlite():
            ids = _claim_postgres(limit, now_db, until_db, per_subscription, free)
            mark = "%s"
        else:
            ids = _claim_sqlite(limit, now_db, until_db, per_subscription, free)
            mark = "?"
        if not ids:
            return []
        rows = db.execute_sql(
            f'SELECT {_CLAIM_COLUMNS} FROM "webhook_event" e JOIN "webhook_subscription" s '  # nosec B608 - only column names from the models and placeholders are interpolated; values are bound
            f'ON s."id" = e."subscription_id" WHERE e."id" IN ({", ".join([mark] * len(ids))})', ids).fetchall()
    claimed = []
    for (event_id, sub_id, tenant_id, project_id, event_type, body, attempts, url, secret_enc, auth_type,
         api_key_enc, api_key_header, user, password_enc, custom_enc) in rows:
        claimed.append(Claimed(event_id, sub_id, tenant_id, project_id, event_type, body, attempts, url,
                               decrypt(secret_enc),
                               _auth_headers(auth_type, api_key_enc, api_key_header, user, password_enc,
                                             custom_enc), until))
    return claimed


def _claim_postgres(limit, now_db, until_db, per_subscription, free) -> list[str]:
    full = [sub for sub, slots in free.items() if slots <= 0]
    partial = [(sub, slots) for sub, slots in free.items() if slots > 0]
    not_full = f' AND r.sid NOT IN ({", ".join(["%s"] * len(full))})' if full else ""
    slots = ("CASE r.sid " + "WHEN %s THEN %s::int " * len(partial) + "ELSE %s::int END") if partial else "%s::int"
    sql = (
        _READY + ', picked AS (SELECT x."id", x."next_attempt_at" FROM ready r '  # nosec B608 - only column names from the models and placeholders are interpolated; values are bound
        'JOIN "webhook_subscription" s ON s."id" = r.sid AND s."is_active" AND s."deleted_at" IS NULL '
        f'CROSS JOIN LATERAL (SELECT e."id", e."next_attempt_at" FROM "webhook_event" e '
        f'WHERE e."subscription_id" = r.sid AND {_DUE} ORDER BY e."next_attempt_at" LIMIT {slots} '
        f'FOR UPDATE SKIP LOCKED) x WHERE r.sid IS NOT NULL{not_full} ORDER BY x."next_attempt_at" LIMIT %s) '
        'UPDATE "webhook_event" SET "lease_until" = %s WHERE "id" IN (SELECT "id" FROM picked) RETURNING "id"'
    )
    params = [now_db, now_db, *[v for pair in partial for v in pair], per_subscription, *full, limit, until_db]
    return [row[0] for row in db.execute_sql(sql, params).fetchall()]


def _claim_sqlite(limit, now_db, until_db, per_subscription, free) -> list[str]:
    ready = [sid for (sid,) in db.execute_sql(
        _READY + 'SELECT r.sid FROM ready r JOIN "webhook_subscription" s ON s."id" = r.sid '  # nosec B608 - only column names from the models and placeholders are interpolated; values are bound
        'WHERE r.sid IS NOT NULL AND s."is_active" AND s."deleted_at" IS NULL').fetchall()]
    due = _DUE.replace("%s", "?")
    picked = []
    for sid in ready:
        slots = free.get(sid, per_subscription)
        if slots > 0:
            picked += db.execute_sql(
                f'SELECT e."next_attempt_at", e."id" FROM "webhook_event" e WHERE e."subscription_id" = ? '  # nosec B608 - only column names from the models and placeholders are interpolated; values are bound
                f'AND {due} ORDER BY e."next_attempt_at" LIMIT ?', (sid, now_db, now_db, slots)).fetchall()
    ids = [event_id for _at, event_id in sorted(picked)[:limit]]
    if ids:
        db.execute_sql(f'UPDATE "webhook_event" SET "lease_until" = ? WHERE "id" IN ({", ".join("?" * len(ids))})',  # nosec B608 - only column names from the models and placeholders are interpolated; values are bound
                       [until_db, *ids])
    return ids


def release(ids: list[str]) -> None:
    """Give leased rows back unattempted (e.g. the worker is stopping)."""
    if ids:
        with transaction():
            # by id only: a settled row's lease means nothing, and a status condition lets SQLite pick the
            # status index and walk every pending row
            WebhookEvent.update(lease_until=None).where(WebhookEvent.id.in_(ids)).execute()


@dataclass(slots=True)
class Attempt:
    """The outcome of one delivery attempt, to record."""

    claimed: Claimed
    status_code: int | None
    response_body: str
    response_headers: dict
    error: str | None
    duration_ms: float
    retry_after: float | None
    at: datetime


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Seconds before each retry (the first attempt is immediate), jitter, and when to give up on an endpoint."""

    schedule: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    jitter: float = 0.1  # each delay is stretched or shrunk by up to this fraction
    disable_after: float = 5 * 24 * 3600.0  # a subscription failing this long without a success is disabled

    @property
    def max_attempts(self) -> int:
        return 1 + len(self.schedule)

    def delay(self, attempts_done: int, retry_after: float | None) -> float:
        """Seconds before the next attempt after ``attempts_done`` attempts: the schedule's delay with jitter,
        never sooner than the endpoint's ``Retry-After``."""
        base = self.schedule[attempts_done - 1]
        delay = base * (1 + random.uniform(-self.jitter, self.jitter)) if base > 0 else 0.0
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay


def _cap(text: str | None) -> str | None:
    if text is None:
        return None
    data = text.encode("utf-8", "replace")
    return text if len(data) <= MAX_CAPTURE else data[:MAX_CAPTURE].decode("utf-8", "ignore")


def _plan(attempt: Attempt, policy: RetryPolicy) -> tuple[str, datetime, str | None, bool, bool]:
    """What one attempt makes of its event: (status, next attempt time, lastError, ok, gone)."""
    at, attempts = attempt.at, attempt.claimed.attempts_count + 1
    ok = attempt.error is None and attempt.status_code is not None and 200 <= attempt.status_code < 300
    gone = attempt.status_code == 410
    if ok:
        return "delivered", at, None, True, False
    if gone or attempts >= policy.max_attempts:
        return "failed", at, attempt.error, False, gone
    return "pending", at + timedelta(seconds=policy.delay(attempts, attempt.retry_after)), attempt.error, False, False


def record(attempt: Attempt, policy: RetryPolicy) -> str | None:
    """Write one attempt (delivery row, event state, ``webhook.delivery.updated``) inside the caller's
    transaction; the event's new status, or None when the row was settled meanwhile (deleted subscription,
    a manual retry re-queued it) and only the attempt was logged."""
    return record_many([attempt], policy)[0]


def record_many(attempts: list[Attempt], policy: RetryPolicy) -> list[str | None]:
    """:func:`record` for several attempts (of distinct events) with a few statements in all: one multi-row
    INSERT of the delivery rows, the event updates (one ``UPDATE … FROM (VALUES …)`` on PostgreSQL), one
    UPDATE for the subscriptions that succeeded, and the ``webhook.delivery.updated`` events in one append.
    Four statements per attempt cost 2.5 ms each on PostgreSQL (tools/bench_webhooks.py)."""
    plans = [_plan(attempt, policy) for attempt in attempts]
    WebhookDelivery.insert_many([
        {"id": new_id(), "webhook_event_id": a.claimed.id, "subscription_id": a.claimed.subscription_id,
         "status_code": a.status_code, "response_body": _cap(a.response_body),
         "response_headers": a.response_headers or None, "request_body": _cap(a.claimed.body), "error": a.error,
         "duration_ms": round(a.duration_ms, 3), "created_at": a.at}
        for a in attempts
    ]).execute()
    if not is_sqlite() and len(attempts) > 1:
        changed = _update_events_bulk(attempts, plans)
    else:
        changed = set()
        for a, (status, next_at, error, _ok, _gone) in zip(attempts, plans, strict=True):
            if (WebhookEvent.update(status=status, attempts_count=a.claimed.attempts_count + 1, last_error=error,
                                    next_attempt_at=next_at, lease_until=None, updated_at=a.at)
                    .where((WebhookEvent.id == a.claimed.id) & (WebhookEvent.status == "pending")
                           & (WebhookEvent.attempts_count == a.claimed.attempts_count)
                           & (WebhookEvent.lease_until == a.claimed.lease_until)).execute()):
                changed.add(a.claimed.id)
    S = WebhookSubscription
    healthy = sorted({a.claimed.subscription_id for a, plan in zip(attempts, plans, strict=True) if plan[3]})
    if healthy:  # a success ends a failing streak (no row is written when none was failing)
        S.update(failing_since=None).where(S.id.in_(healthy) & S.failing_since.is_null(False)).execute()
    for a, (_status, _next, _error, ok, gone) in zip(attempts, plans, strict=True):
        if not ok:
            _subscription_health(a.claimed.subscription_id, gone, a.at, policy)
    events = [
        _status_event(a.claimed.id, a.claimed.tenant_id, a.claimed.project_id, a.claimed.event_type, status,
                      a.claimed.attempts_count + 1, error)
        for a, (status, _next, error, _ok, _gone) in zip(attempts, plans, strict=True) if a.claimed.id in changed
    ]
    if events:
        append(events)
    return [plan[0] if a.claimed.id in changed else None for a, plan in zip(attempts, plans, strict=True)]


def _update_events_bulk(attempts: list[Attempt], plans: list) -> set[str]:
    """PostgreSQL: move every attempted event on in ONE statement; the ids that were still as claimed (still
    pending with the claimed attempt count and this claim's lease: a manual retry clears the lease, a later
    claim replaces it, so a late record of an expired lease changes nothing)."""
    field = WebhookEvent.next_attempt_at
    row = "(%s, %s, %s::int, %s, %s::timestamp, %s::timestamp, %s::int, %s::timestamp)"
    params = []
    for a, (status, next_at, error, _ok, _gone) in zip(attempts, plans, strict=True):
        params += [a.claimed.id, status, a.claimed.attempts_count + 1, error, field.db_value(next_at),
                   field.db_value(a.at), a.claimed.attempts_count, field.db_value(a.claimed.lease_until)]
    sql = ('UPDATE "webhook_event" AS e SET "status" = v.status, "attempts_count" = v.attempts, '  # nosec B608 - only column names from the models and placeholders are interpolated; values are bound
           '"last_error" = v.error, "next_attempt_at" = v.next_at, "lease_until" = NULL, "updated_at" = v.at '
           f'FROM (VALUES {", ".join([row] * len(attempts))}) '
           'AS v(id, status, attempts, error, next_at, at, expected, lease) '
           'WHERE e."id" = v.id AND e."status" = \'pending\' AND e."attempts_count" = v.expected '
           'AND e."lease_until" = v.lease RETURNING e."id"')
    return {event_id for (event_id,) in db.execute_sql(sql, params).fetchall()}


def _subscription_health(sub_id: str, gone: bool, at: datetime, policy: RetryPolicy) -> None:
    """After a failed attempt: 410 disables at once; a failing streak longer than ``disable_after`` disables."""
    S = WebhookSubscription
    if gone:
        S.update(is_active=False, disabled_reason="the endpoint answered 410 Gone", updated_at=at).where(
            (S.id == sub_id) & S.is_active).execute()
        return
    S.update(failing_since=at).where((S.id == sub_id) & S.failing_since.is_null()).execute()
    cutoff = at - timedelta(seconds=policy.disable_after)
    S.update(is_active=False, updated_at=at,
             disabled_reason=f"every attempt failed for {policy.disable_after:g} s").where(
        (S.id == sub_id) & S.is_active & (S.failing_since <= cutoff)).execute()


def _emit_status(row: WebhookEvent) -> None:
    append([_status_event(row.id, row.tenant_id, row.project_id, row.event_type, row.status, row.attempts_count,
                          row.last_error)])


def _status_event(event_id, tenant_id, project_id, event_type, status, attempts, error) -> DomainEvent:
    """The ``webhook.delivery.updated`` envelope of a webhook event's new state."""
    data = {"id": event_id, "eventType": event_type, "status": status, "attemptsCount": attempts,
            "projectId": project_id}
    if error is not None:
        data["lastError"] = error
    return new_event(NEVER_DELIVERED, tenant_id=tenant_id, project_id=project_id,
                     resource_id=f"webhook_event:{event_id}", action="occurred", data=data)


def retry_event(project_id: str, event_id: str) -> WebhookEvent:
    """Queue a delivered or failed event again, due now, with a fresh attempt budget (409 while pending;
    400 when its subscription was deleted). ``webhook-id`` stays the same."""
    with transaction():
        row = get_event(project_id, event_id)
        if row.status == "pending":
            raise DomainError("conflict", "the event is still pending; it is retried on its schedule")
        query = WebhookSubscription.select().where(WebhookSubscription.id == row.subscription_id)
        if not is_sqlite():
            query = query.for_update("FOR SHARE")  # a delete waits, then fails this row again
        sub = query.first()
        if sub is None or sub.deleted_at is not None:
            raise DomainError("invalid", "its subscription was deleted; nothing to deliver to")
        now = utcnow()
        row.status = "pending"
        row.attempts_count = 0
        row.last_error = None
        row.next_attempt_at = now
        row.lease_until = None
        row.updated_at = now
        row.save()
        _emit_status(row)
    return row


# ------------------------------------------------------------------------------------------ the event log API


def get_event(project_id: str, event_id: str) -> WebhookEvent:
    """One WebhookEvent of the project; not_found otherwise."""
    row = WebhookEvent.get_or_none((WebhookEvent.id == event_id) & (WebhookEvent.project_id == project_id))
    if row is None:
        raise DomainError("not_found", f"webhook event {event_id} not found")
    return row


def list_events(project_id: str, status: str | None = None, limit=None, offset=None) -> list[WebhookEvent]:
    """A project's WebhookEvents, newest first; ``limit``/``offset`` read leniently like every list of the API
    (truncated, ``limit`` clamped into [1, 500], default 50)."""
    limit, offset = page_bounds(limit, offset)
    query = WebhookEvent.select().where(WebhookEvent.project_id == project_id)
    if status is not None:
        query = query.where(WebhookEvent.status == status)
    return list(query.order_by(WebhookEvent.created_at.desc(), WebhookEvent.event_seq.desc(),
                               WebhookEvent.id.desc()).limit(limit).offset(offset))


def webhook_event_detail_body(row: WebhookEvent) -> dict:
    """WebhookEventDetail: the event with every delivery attempt, oldest first."""
    return {**webhook_event_body(row), "deliveries": [delivery_body(d) for d in deliveries(row.id)]}


def deliveries(event_id: str) -> list[WebhookDelivery]:
    """The attempts of one WebhookEvent, oldest first."""
    return list(WebhookDelivery.select().where(WebhookDelivery.webhook_event_id == event_id)
                .order_by(WebhookDelivery.created_at, WebhookDelivery.id))


def webhook_event_body(row: WebhookEvent) -> dict:
    """The WebhookEvent schema."""
    body = {
        "id": row.id, "tenantId": row.tenant_id, "projectId": row.project_id, "subscriptionId": row.subscription_id,
        "eventType": row.event_type, "payload": orjson.loads(row.body), "status": row.status,
        "attemptsCount": row.attempts_count, "nextAttemptAt": rfc3339(row.next_attempt_at),
        "createdAt": rfc3339(row.created_at),
    }
    if row.last_error is not None:
        body["lastError"] = row.last_error
    return body


def prune_log(older_than_days: float, *, batch: int = 2000) -> int:
    """Delete delivered and failed webhook events (with their attempts) settled more than ``older_than_days``
    ago, in short transactions; how many events. Pending ones are never deleted."""
    cutoff = utcnow() - timedelta(days=older_than_days)
    total = 0
    while True:
        with transaction():
            ids = [i for (i,) in WebhookEvent.select(WebhookEvent.id)
                   .where(WebhookEvent.status.in_(["delivered", "failed"]) & (WebhookEvent.updated_at < cutoff))
                   .limit(batch).tuples()]
            if ids:
                WebhookDelivery.delete().where(WebhookDelivery.webhook_event_id.in_(ids)).execute()
                total += WebhookEvent.delete().where(  # again: a retry may have re-queued one meanwhile
                    WebhookEvent.id.in_(ids) & WebhookEvent.status.in_(["delivered", "failed"])
                    & (WebhookEvent.updated_at < cutoff)).execute()
        if len(ids) < batch:
            return total


def delivery_body(row: WebhookDelivery) -> dict:
    """The WebhookDelivery schema."""
    body = {"id": row.id, "webhookEventId": row.webhook_event_id, "subscriptionId": row.subscription_id,
            "requestBody": row.request_body, "createdAt": rfc3339(row.created_at)}
    if row.status_code is not None:
        body["statusCode"] = row.status_code
    if row.response_body is not None:
        body["responseBody"] = row.response_body
    if row.response_headers is not None:
        body["responseHeaders"] = row.response_headers
    if row.error is not None:
        body["error"] = row.error
    if row.duration_ms is not None:
        body["durationMs"] = row.duration_ms
    return body
