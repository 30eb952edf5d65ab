"""The mail outbox: every outgoing message is a ``MailMessage`` row, queued in the transaction of the change
that caused it and sent afterwards by the mail engine (``cortex.engines.mail``) — a mail server that is down
never fails a request whose change committed, and a queued message survives restarts.

The flow:

1. ``queue_mail(...)`` inserts a ``queued`` row (recipients, subject, text, optional HTML, extra headers and
   attachments) inside the caller's transaction: it commits with the change or not at all.
2. ``claim(limit, lease=…)`` hands due rows to one engine: it moves their ``next_attempt_at`` to the end of a
   lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several engines take disjoint rows without waiting;
   SQLite's write transaction is exclusive). A leased row is not due for anyone else until the lease ends,
   which only happens when the engine died mid-send — the row is then sent again.
3. ``mark_sent`` / ``mark_failed_attempt`` record the outcome, only if the row still holds this claim's lease
   (the lease end is the claim's token). A failed attempt is retried after ``MailRetryPolicy.delay``: 15 s, then
   doubling up to one hour; a message still unsent ``give_up_after`` (26 h) after it was queued becomes
   ``failed``. A sent message keeps its metadata (recipients, subject, Message-ID, times) but not its body.
4. ``prune(...)`` deletes sent rows after a week and failed ones after 30 days (the table stays bounded).
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

import peewee as pw

from models.base import (
    BaseModel,
    JSONField,
    UTCDateTimeField,
    invalid,
    is_sqlite,
    new_id,
    transaction,
    utcnow,
)

QUEUED = "queued"
SENT = "sent"
FAILED = "failed"
MAX_ERROR = 500  # characters of an attempt's error kept in last_error
MAX_RECIPIENTS = 100


class MailMessage(BaseModel):
    """One outgoing message and its delivery state."""

    kind = pw.CharField(max_length=50, null=True)  # what it is for, e.g. "invitation" (logs, operators)
    project_id = pw.CharField(max_length=36, null=True, index=True)  # the project it concerns, if any
    recipients = JSONField()  # ["Name <user@host>", …]
    subject = pw.TextField()
    text = pw.TextField()  # emptied once sent
    html = pw.TextField(null=True)
    headers = JSONField(null=True)  # extra headers {name: value}
    attachments = JSONField(null=True)  # [{"filename", "contentType", "content": base64}]
    status = pw.CharField(max_length=10, default=QUEUED)  # queued | sent | failed
    attempts = pw.IntegerField(default=0)
    next_attempt_at = UTCDateTimeField(default=utcnow)  # queued: when due (a claim: its lease end); else settled at
    last_error = pw.TextField(null=True)
    sent_at = UTCDateTimeField(null=True)
    message_id = pw.CharField(max_length=255, null=True)  # the Message-ID the server accepted
    updated_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "mail_message"
        indexes = ((("status", "next_attempt_at"), False),)  # the claim (due queued rows) and pruning


MODELS = [MailMessage]


# ------------------------------------------------------------------------------------------ queueing


def _line(value, what: str) -> str:
    if not isinstance(value, str) or "\r" in value or "\n" in value:
        raise invalid(f"mail: {what} must be one line of text")
    return value


def queue_mail(to: str | list[str], subject: str, text: str, *, html: str | None = None,
               headers: dict[str, str] | None = None, attachments: list[dict] | None = None,
               project_id: str | None = None, kind: str | None = None, now: datetime | None = None) -> MailMessage:
    """Queue one message for the mail engine, in the caller's transaction (call it inside the ``transaction()``
    of the change the mail is about). ``attachments``: ``{"filename", "content_type", "content": bytes}`` each
    (``content_type`` may carry parameters, e.g. ``text/calendar; method=REQUEST``). Invalid input is refused
    here rather than failing at every attempt."""
    recipients = [to] if isinstance(to, str) else list(to)
    if not recipients or len(recipients) > MAX_RECIPIENTS or not all("@" in _line(r, "a recipient") for r in recipients):
        raise invalid(f"mail: 1 to {MAX_RECIPIENTS} recipient addresses are needed")
    _line(subject, "the subject")
    for name, value in (headers or {}).items():
        _line(name, "a header name")
        _line(value, f"the header {name}")
    stored = []
    for item in attachments or []:
        content_type = _line(item["content_type"], "an attachment's content type")
        if "/" not in content_type:
            raise invalid(f"mail: {content_type!r} is not a content type")
        stored.append({"filename": _line(item["filename"], "an attachment's file name"), "contentType": content_type,
                       "content": base64.b64encode(bytes(item["content"])).decode("ascii")})
    now = now or utcnow()
    return MailMessage.create(id=new_id(), kind=kind, project_id=project_id, recipients=recipients, subject=subject,
                              text=text, html=html, headers=dict(headers) if headers else None,
                              attachments=stored or None, status=QUEUED, attempts=0, next_attempt_at=now,
                              created_at=now, updated_at=now)


# ------------------------------------------------------------------------------------------ retry policy


@dataclass(frozen=True, slots=True)
class MailRetryPolicy:
    """When a failed message is tried again, and when Cortex gives up on it.

    After the n-th failed attempt the next one waits ``first × factor^(n-1)`` seconds, at most ``cap``, stretched
    or shrunk by up to ``jitter``: 15 s, 30 s, 1 min, 2 min, … 1 h, then hourly. An attempt that fails
    ``give_up_after`` seconds or more after the message was queued makes it ``failed``: it is tried for at
    least that long (26 h: a mail server down for a whole day still gets every message)."""

    first: float = 15.0
    factor: float = 2.0
    cap: float = 3600.0
    give_up_after: float = 26 * 3600.0
    jitter: float = 0.1

    def delay(self, attempts_done: int) -> float:
        """Seconds before the next attempt after ``attempts_done`` (≥ 1) failed ones."""
        base = min(self.cap, self.first * self.factor ** min(max(attempts_done - 1, 0), 64))
        return base * (1 + random.uniform(-self.jitter, self.jitter)) if self.jitter else base  # nosec B311 - spreading retries, not a secret


# ------------------------------------------------------------------------------------------ claiming and recording


@dataclass(slots=True)
class Claimed:
    """A leased message, with everything sending it needs."""

    id: str
    kind: str | None
    project_id: str | None
    recipients: list[str]
    subject: str
    text: str
    html: str | None
    headers: dict
    attachments: list[tuple[str, str, bytes]]  # (file name, content type, content)
    attempts: int  # attempts made before this one
    created_at: datetime
    lease_until: datetime  # this claim's token: a record must still find it in next_attempt_at


def claim(limit: int, *, lease: float, now: datetime | None = None) -> list[Claimed]:
    """Lease up to ``limit`` due queued messages (oldest due first) for ``lease`` seconds: their
    ``next_attempt_at`` moves to the lease end, so no other engine takes them until it passes. PostgreSQL
    locks the picked rows ``FOR UPDATE SKIP LOCKED`` (concurrent engines take disjoint rows, nobody waits);
    SQLite's write transaction is exclusive."""
    if limit <= 0:
        return []
    now = now or utcnow()
    until = now + timedelta(milliseconds=round(lease * 1000))  # millisecond-exact: compared as a token later
    M = MailMessage
    is_due = (M.status == QUEUED) & (M.next_attempt_at <= now)
    # Every write request wakes the engine: a plain index read first, so finding nothing due costs no write
    # transaction (no SQLite write lock, no row locks).
    if not M.select(M.id).where(is_due).exists():
        return []
    with transaction():
        due = M.select(M.id).where(is_due).order_by(M.next_attempt_at, M.id).limit(limit)
        if not is_sqlite():
            due = due.for_update("FOR UPDATE SKIP LOCKED")
        ids = [row_id for (row_id,) in due.tuples()]
        if not ids:
            return []
        M.update(next_attempt_at=until).where(M.id.in_(ids) & (M.status == QUEUED)).execute()
        rows = list(M.select().where(M.id.in_(ids)).order_by(M.created_at, M.id))
    return [Claimed(row.id, row.kind, row.project_id, list(row.recipients), row.subject, row.text, row.html,
                    dict(row.headers or {}),
                    [(a["filename"], a["contentType"], base64.b64decode(a["content"])) for a in row.attachments or []],
                    row.attempts, row.created_at, until)
            for row in rows]


def _still_claimed(claimed: Claimed):
    M = MailMessage
    return ((M.id == claimed.id) & (M.status == QUEUED) & (M.attempts == claimed.attempts)
            & (M.next_attempt_at == claimed.lease_until))


def mark_sent(claimed: Claimed, message_id: str, at: datetime | None = None) -> bool:
    """The server took the message: ``sent``, its body dropped (recipients, subject and Message-ID stay). False
    when the row no longer holds this claim (its lease ran out and another engine took it)."""
    at = at or utcnow()
    with transaction():
        return bool(MailMessage.update(
            status=SENT, attempts=claimed.attempts + 1, sent_at=at, message_id=message_id[:255], last_error=None,
            next_attempt_at=at, updated_at=at, text="", html=None, attachments=None,
        ).where(_still_claimed(claimed)).execute())


def mark_failed_attempt(claimed: Claimed, error: str, policy: MailRetryPolicy, at: datetime | None = None,
                        *, permanent: bool = False) -> str | None:
    """An attempt failed with ``error`` (short, no secrets: kept in ``last_error``): the message is due again
    after the policy's delay, or ``failed`` when ``permanent`` (it can never be sent as it is) or when
    ``give_up_after`` has passed since it was queued. Its new status, or None when the row no longer holds
    this claim."""
    at = at or utcnow()
    attempts = claimed.attempts + 1
    if permanent or (at - claimed.created_at).total_seconds() >= policy.give_up_after:
        status, next_at = FAILED, at
    else:
        status, next_at = QUEUED, at + timedelta(seconds=policy.delay(attempts))
    with transaction():
        changed = MailMessage.update(
            status=status, attempts=attempts, last_error=error[:MAX_ERROR], next_attempt_at=next_at, updated_at=at,
        ).where(_still_claimed(claimed)).execute()
    return status if changed else None


def release(claimed: list[Claimed]) -> None:
    """Give leased messages back unattempted (the engine is stopping): due again at once."""
    now = utcnow()
    with transaction():
        for item in claimed:
            MailMessage.update(next_attempt_at=now).where(_still_claimed(item)).execute()


def prune(sent_days: float = 7.0, failed_days: float = 30.0, *, now: datetime | None = None,
          batch: int = 1000) -> int:
    """Delete sent messages settled more than ``sent_days`` ago and failed ones after ``failed_days``, in short
    transactions; how many. Queued messages are never deleted."""
    now = now or utcnow()
    M = MailMessage
    total = 0
    for status, days in ((SENT, sent_days), (FAILED, failed_days)):
        old = (M.status == status) & (M.next_attempt_at < now - timedelta(days=days))
        while True:
            with transaction():
                ids = [i for (i,) in M.select(M.id).where(old).limit(batch).tuples()]
                if ids:
                    total += M.delete().where(M.id.in_(ids) & old).execute()
            if len(ids) < batch:
                break
    return total


def queued_count() -> int:
    """Messages waiting to be sent (health, tests)."""
    return MailMessage.select().where(MailMessage.status == QUEUED).count()

