"""The mail engine: sends the durable outbox (``models.mail``) through the one ``Mailer``.

Features queue a message in the transaction of their change (``models.mail.queue_mail``); this engine sends it
afterwards, so a mail server that is down or slow never fails, nor holds up, a request whose change committed.

- One loop claims due messages in batches of ``batch`` (a lease: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL),
  then sends them one by one outside any database transaction, with its connection back in the pool, and
  records each outcome (``mark_sent`` / ``mark_failed_attempt``). A failing message is retried on its own
  schedule (15 s, then doubling up to hourly, for 26 h: ``models.mail.MailRetryPolicy``) and never holds up
  the others: each attempt is bounded by the mailer's timeout (``CORTEX_SMTP_URL``'s ``timeout``, 10 s).
- It runs in ``cortex serve`` and in ``cortex worker``; any number of engines may run against one database —
  the lease hands each message to one of them. An engine that dies mid-send leaves its lease to run out; the
  message is then sent again (at least once).
- A write request of its own process wakes it at once (``events_committed``, as the webhook fan-out);
  otherwise it looks for due messages every ``poll_interval`` seconds (5). It prunes sent messages after a
  week and failed ones after 30 days, hourly.

``drain()`` sends everything due inline: tests and scripts use it instead of the background loop.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

from cortex.integrations.mail import Mailer, MailError
from cortex.lib import metrics
from cortex.lib.background import Background, Worker, pause
from models.base import own_connection, utcnow
from models.mail import (
    FAILED,
    Claimed,
    MailRetryPolicy,
    claim,
    mark_failed_attempt,
    mark_sent,
    prune,
    release,
)

log = logging.getLogger("cortex.mail")

POLL_INTERVAL = 5.0  # seconds between two looks for due messages when nothing wakes the engine
CLAIM_BATCH = 10  # messages claimed at once
PRUNE_INTERVAL = 3600.0  # seconds between two prunes of settled messages
SENT_RETENTION_DAYS = 7.0
FAILED_RETENTION_DAYS = 30.0


class MailEngine(Background):
    """Sends queued mail in the background (see the module doc; ``stop`` lets the message being sent finish and
    gives claimed ones not yet attempted back); ``run_once``/``drain`` inline."""

    def __init__(self, mailer: Mailer, *, policy: MailRetryPolicy | None = None, poll_interval: float = POLL_INTERVAL,
                 batch: int = CLAIM_BATCH, lease: float | None = None, prune_interval: float = PRUNE_INTERVAL,
                 sent_retention_days: float = SENT_RETENTION_DAYS,
                 failed_retention_days: float = FAILED_RETENTION_DAYS):
        self.mailer = mailer
        self.policy = policy or MailRetryPolicy()
        self.poll_interval = poll_interval
        self.batch = batch
        # A claim covers its whole batch, sent one after the other: each attempt may take a few timeouts
        # (connect, greeting, TLS, login, data), so a live engine never outlasts its lease.
        self.lease = lease if lease is not None else max(300.0, batch * 6 * mailer.timeout + 60.0)
        self.prune_interval = prune_interval
        self.sent_retention_days = sent_retention_days
        self.failed_retention_days = failed_retention_days
        self.sent = 0  # messages this engine handed to the server (tests, benchmarks read it)
        self._wake = threading.Event()
        self._worker = Worker("cortex-mail", self.run_forever)

    @classmethod
    def from_settings(cls, settings) -> MailEngine:
        """The engine sending through the mailer ``CORTEX_SMTP_URL`` / ``CORTEX_MAIL_FROM`` configure (the outbox
        directory under the data dir without a server)."""
        return cls(Mailer.from_settings(settings.smtp_url, settings.mail_from, settings.data_dir))

    def events_committed(self) -> None:
        """A write request of this process committed (``LiveFanout.nudge``): it may have queued mail, look now."""
        self._wake.set()

    wake = events_committed

    # ------------------------------------------------------------------ one message

    def send_one(self, claimed: Claimed, now: datetime | None = None) -> str | None:
        """One attempt to send a claimed message, recorded; its new status (None: another engine holds it now).
        Never raises for the mail server's failures."""
        permanent = False
        try:
            message_id = self.mailer.send(claimed.recipients, claimed.subject, claimed.text, html=claimed.html,
                                          headers=claimed.headers, attachments=claimed.attachments,
                                          message_id=self.mailer.message_id_for(claimed.id))
            error = None
        except (MailError, OSError) as exc:  # the server (or the outbox directory) did not take it: retry
            error = str(exc) if isinstance(exc, MailError) else f"{type(exc).__name__}: {exc}"
        except ValueError as exc:  # the message itself cannot be composed: no attempt will ever succeed
            error, permanent = f"invalid message: {exc}", True
        except Exception as exc:  # a bug, not the server: retried like a failure, logged with its traceback
            log.exception("mail %s: sending failed unexpectedly", claimed.id)
            error = f"internal error: {type(exc).__name__}"
        at = now or utcnow()
        with own_connection():
            if error is None:
                self.sent += 1
                metrics.count(metrics.MAIL_SENT, "sent")
                return "sent" if mark_sent(claimed, message_id, at) else None
            status = mark_failed_attempt(claimed, error, self.policy, at, permanent=permanent)
        metrics.count(metrics.MAIL_SENT, "failed" if status == FAILED else "retry")
        attempts = claimed.attempts + 1
        if status == FAILED:
            hours = (at - claimed.created_at).total_seconds() / 3600
            log.error("mail %s (%s, queued %.1f h ago) given up after %d attempts: %s", claimed.id,
                      claimed.kind or "mail", hours, attempts, error)
        elif status is not None:
            log.warning("mail %s (%s) not sent (attempt %d), retried later: %s", claimed.id, claimed.kind or "mail",
                        attempts, error)
        return status

    # ------------------------------------------------------------------ inline (tests, scripts)

    def run_once(self, now: datetime | None = None, stop_event: threading.Event | None = None) -> int:
        """Claim one batch of due messages and attempt each; how many were attempted."""
        with own_connection():
            batch = claim(self.batch, lease=self.lease, now=now)
        for index, claimed in enumerate(batch):
            if stop_event is not None and stop_event.is_set():
                with own_connection():
                    release(batch[index:])
                return index
            self.send_one(claimed, now)
        return len(batch)

    def drain(self, now: datetime | None = None, max_rounds: int = 1000) -> int:
        """Attempt every message due at ``now`` (default: the current time) until none is; attempts made. A
        message that fails is due again only later, so this ends."""
        made = 0
        for _ in range(max_rounds):
            attempted = self.run_once(now)
            made += attempted
            if attempted == 0:
                break
        return made

    def prune(self, now: datetime | None = None) -> int:
        """Delete settled messages past their retention; how many."""
        with own_connection():
            deleted = prune(self.sent_retention_days, self.failed_retention_days, now=now)
        if deleted:
            log.info("mail outbox: deleted %d settled messages", deleted)
        return deleted

    # ------------------------------------------------------------------ background

    def run_forever(self, stop_event: threading.Event) -> None:
        """Send due mail until stopped: at once after a wake-up, else every ``poll_interval``; prune hourly."""
        failures = 0
        next_prune = time.monotonic()
        while not stop_event.is_set():
            self._wake.clear()
            try:
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + self.prune_interval
                    self.prune()
                attempted = self.run_once(stop_event=stop_event)
            except Exception:  # the database is unreachable: try again, backing off
                failures += 1
                log.exception("mail engine: claiming or recording failed (%d in a row); retrying", failures)
                pause(stop_event, min(0.5 * 2**failures, 30.0))
                continue
            failures = 0
            if attempted >= self.batch:
                time.sleep(0)  # more may be due: go on (yielding to other greenlets)
                continue
            pause(stop_event, self.poll_interval, self._wake)
