"""The webhook engine: fan-out from the event log and the delivery worker (one per process).

- **Fan-out**: a persistent :class:`cortex.events.dispatcher.Dispatcher` named ``webhooks`` reads the log after its
  cursor and queues one ``WebhookEvent`` per event and matching subscription (``models.webhooks.fan_out``,
  idempotent). Its cursor moves only after the rows committed, so a crash in between queues them again
  (ignored duplicates), never loses them. It polls every ``CORTEX_WEBHOOK_POLL_INTERVAL`` and is woken at
  once by writes of its own process (``LiveFanout.add_waker`` in ``cortex serve``).
- **Delivery**: one loop claims due rows (a lease, ``FOR UPDATE SKIP LOCKED`` on PostgreSQL) while slots are
  free — at most ``CORTEX_WEBHOOK_CONCURRENCY`` attempts in flight per process and
  ``CORTEX_WEBHOOK_SUBSCRIPTION_CONCURRENCY`` per subscription, so a hanging endpoint holds only its own
  slots — and runs each attempt in a pool (greenlets under gevent, threads otherwise). An attempt signs the
  stored body (Standard Webhooks), POSTs it with ``cortex.integrations.outbound.Sender`` (SSRF checks on the resolved
  address, no redirects, hard timeout) and records the outcome through group commit
  (``models.events.GroupCommit``: the attempts finishing together share one transaction).

``drain()`` runs fan-out and every due delivery inline until nothing is due: tests and scripts use it
instead of the background loop.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from cortex.events.dispatcher import Dispatcher
from cortex.events.listener import CommitListener
from cortex.integrations.outbound import Sender
from cortex.lib import metrics
from cortex.lib.background import PeriodicJob, Worker, gevent_patched, pause
from cortex.lib.webhook_signing import sign, signing_key
from models.base import own_connection, utcnow
from models.events import GroupCommit
from models.webhooks import (
    NEVER_DELIVERED,
    Attempt,
    Claimed,
    RetryPolicy,
    any_active,
    claim,
    fan_out,
    finish_deleted,
    prune_log,
    record,
    record_many,
)

log = logging.getLogger("cortex.webhooks")
# Two subscriptions on one host share its keep-alive pool; a connection beyond the pool size is closed after
# use, which urllib3 reports as a warning per request. Expected here, not a problem.
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)

CONSUMER = "webhooks"  # the event-log cursor of the fan-out
IDLE_POLL = 0.5  # seconds between two looks for due retries when nothing wakes the delivery loop
CLAIM_BATCH = 100  # rows claimed per query at most
CLAIM_COALESCE = 0.005  # seconds to wait after a wake-up while attempts are in flight (see run_forever)
LEASE_MARGIN = 5.0  # a lease lasts twice the attempt timeout plus this (claim → send → record)


class WebhookEngine:
    """Fan-out dispatcher + delivery loop of one process (see the module doc)."""

    def __init__(self, *, policy: RetryPolicy | None = None, sender: Sender | None = None, timeout: float = 15.0,
                 allow_private: bool = False, concurrency: int = 100, per_subscription: int = 10,
                 poll_interval: float = 0.05, log_retention_days: float = 30.0):
        self.policy = policy or RetryPolicy()
        self.timeout = timeout
        self.sender = sender or Sender(timeout=timeout, allow_private=allow_private,
                                       connections_per_host=per_subscription)
        self.concurrency = concurrency
        self.per_subscription = per_subscription
        self.lease = 2 * timeout + LEASE_MARGIN
        # With no active subscription anywhere, new events are passed over reading only their seqs.
        self.dispatcher = Dispatcher(CONSUMER, self._fan_out, poll_interval=poll_interval, interested=any_active,
                                     skip_types=frozenset({NEVER_DELIVERED}))
        # Attempts finishing together are recorded in one transaction with a few multi-row statements.
        self.recorder = GroupCommit(write_many=lambda attempts: record_many(attempts, self.policy),
                                    write_one=lambda attempt: record(attempt, self.policy))
        self.in_flight: collections.Counter = collections.Counter()  # subscription id → attempts running
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._worker = Worker("cortex-webhook-delivery", self.run_forever)
        self._pool = None
        self.retention = WebhookLogRetentionJob(log_retention_days)
        # PostgreSQL: events committed by other processes wake the fan-out at once (no poll wait).
        self.listener = CommitListener(self.dispatcher.wake)
        self.delivered = 0  # attempts recorded by this engine (benchmarks read it)

    @classmethod
    def from_settings(cls, settings) -> WebhookEngine:
        """The engine configured by the ``CORTEX_WEBHOOK_*`` settings."""
        return cls(
            policy=RetryPolicy(schedule=tuple(settings.webhook_retry_schedule),
                               disable_after=settings.webhook_disable_after),
            timeout=settings.webhook_timeout, allow_private=settings.outbound_allow_private,
            concurrency=settings.webhook_concurrency, per_subscription=settings.webhook_subscription_concurrency,
            poll_interval=settings.webhook_poll_interval, log_retention_days=settings.webhook_log_retention_days,
        )

    # ------------------------------------------------------------------ fan-out

    def _fan_out(self, events) -> None:
        if fan_out(events):
            self.wake()

    def wake(self) -> None:
        """Look for due deliveries now."""
        self._wake.set()

    def events_committed(self) -> None:
        """This process committed events (``LiveFanout.nudge``): fan them out now, not at the next poll."""
        self.dispatcher.wake()

    # ------------------------------------------------------------------ one attempt

    def attempt(self, claimed: Claimed) -> Attempt:
        """Sign and POST one claimed event; the outcome (never raises for the endpoint's failures)."""
        timestamp = int(time.time())
        body = claimed.body.encode()
        headers = dict(claimed.headers)
        headers.update({
            "Content-Type": "application/json",
            "webhook-id": claimed.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(signing_key(claimed.secret), claimed.id, timestamp, body),
        })
        outcome = self.sender.post(claimed.url, body, headers)
        return Attempt(claimed=claimed, status_code=outcome.status, response_body=outcome.body,
                       response_headers=outcome.headers, error=outcome.error, duration_ms=outcome.duration_ms,
                       retry_after=outcome.retry_after, at=utcnow())

    def deliver(self, claimed: Claimed) -> str | None:
        """One attempt, recorded; the event's new status."""
        try:
            result = self.attempt(claimed)
        except Exception as exc:  # a bug, not the endpoint: record it as a failed attempt all the same
            log.exception("webhook attempt %s failed unexpectedly", claimed.id)
            result = Attempt(claimed=claimed, status_code=None, response_body="", response_headers={},
                             error=f"internal error: {type(exc).__name__}", duration_ms=0.0, retry_after=None,
                             at=utcnow())
        status = self.recorder.run(result)
        self.delivered += 1
        metrics.count(metrics.WEBHOOK_DELIVERIES, _outcome(result, status))
        return status

    # ------------------------------------------------------------------ inline (tests, scripts)

    def drain(self, *, max_rounds: int = 1000) -> int:
        """Fan out new events and deliver everything due, inline, until nothing is due; attempts made."""
        made = 0
        with own_connection():
            for _ in range(max_rounds):
                while self.dispatcher.run_once():
                    pass
                batch = claim(CLAIM_BATCH, lease=self.lease, per_subscription=CLAIM_BATCH)
                if not batch:
                    return made
                for claimed in batch:
                    self.deliver(claimed)
                    made += 1
        return made

    # ------------------------------------------------------------------ background

    def _run_claimed(self, claimed: Claimed) -> None:
        try:
            self.deliver(claimed)
        except Exception:  # recording failed (database down): the lease runs out and the row is due again
            log.exception("webhook attempt %s could not be recorded; it is retried when its lease ends",
                          claimed.id)
        finally:
            with self._lock:
                self.in_flight[claimed.subscription_id] -= 1
                if self.in_flight[claimed.subscription_id] <= 0:
                    del self.in_flight[claimed.subscription_id]
            self._wake.set()

    def claim_and_start(self) -> int:
        """Claim what free slots allow and start those attempts; how many started. ``claim`` keeps to each
        subscription's free slots in the snapshot; counts only fall meanwhile (attempts finishing), so the
        batch always fits."""
        with self._lock:
            busy = dict(self.in_flight)
        free = self.concurrency - sum(busy.values())
        if free <= 0:
            return 0
        with own_connection():
            batch = claim(min(free, CLAIM_BATCH), lease=self.lease, per_subscription=self.per_subscription,
                          busy=busy)
        with self._lock:
            for claimed in batch:
                self.in_flight[claimed.subscription_id] += 1
        for claimed in batch:
            self._pool.submit(self._run_claimed, claimed)
        return len(batch)

    def run_forever(self, stop_event: threading.Event) -> None:
        """Claim and start attempts until stopped; waits for a wake-up (new rows, a finished attempt) or
        ``IDLE_POLL`` when nothing can start."""
        failures = 0
        while not stop_event.is_set():
            self._wake.clear()
            try:
                started = self.claim_and_start()
            except Exception:
                failures += 1
                log.exception("webhook delivery: claiming failed (attempt %d); retrying", failures)
                pause(stop_event, min(0.5 * 2**failures, 30.0))
                continue
            failures = 0
            if started:
                time.sleep(0)  # more may be due: go on, letting the attempts start
                continue
            pause(stop_event, IDLE_POLL, self._wake)
            if self._wake.is_set() and self.in_flight:
                # Woken (often by one finished attempt) while others run: let a few more finish, so one claim
                # fills several slots instead of one claim per delivery.
                pause(stop_event, CLAIM_COALESCE)

    def start(self) -> None:
        """Start the fan-out dispatcher and the delivery loop in the background."""
        if self._pool is None:
            self._pool = _Pool(self.concurrency)
        self.dispatcher.start()
        self._worker.start()
        self.retention.start()
        self.listener.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; wait up to ``timeout`` for attempts in flight (their leases cover the rest)."""
        self.listener.stop(timeout)
        self.retention.stop(timeout)
        self.dispatcher.stop(timeout)
        self._worker.stop(timeout)
        if self._pool is not None:
            self._pool.shutdown(timeout)
            self._pool = None
        self.sender.close()


def _outcome(attempt: Attempt, status: str | None) -> str:
    """cortex_webhook_deliveries_total's outcome of a recorded attempt: delivered, failed (given up) or retry."""
    if attempt.error is None and attempt.status_code is not None and 200 <= attempt.status_code < 300:
        return "delivered"
    return "failed" if status == "failed" else "retry"


class WebhookLogRetentionJob(PeriodicJob):
    """Deletes settled webhook events and their attempts older than ``CORTEX_WEBHOOK_LOG_RETENTION_DAYS``,
    hourly (run by every webhook engine; concurrent runs delete disjoint or already-deleted rows), and fails
    the pending events a deleted subscription left behind when its delete was interrupted."""

    label = "webhook log retention"

    def __init__(self, retention_days: float = 30.0, interval: float = 3600.0):
        super().__init__("cortex-webhook-log-retention", interval)
        self.retention_days = retention_days

    def run_once(self) -> int:
        """Prune once; the number of webhook events deleted."""
        with own_connection():
            finished = finish_deleted()
            deleted = prune_log(self.retention_days)
        if finished:
            log.info("webhook log retention: failed %d pending events of deleted subscriptions", finished)
        if deleted:
            log.info("webhook log retention: deleted %d webhook events older than %s days", deleted,
                     self.retention_days)
        return deleted


class _Pool:
    """At most ``size`` tasks at once: a gevent pool when gevent patched the process, else threads."""

    def __init__(self, size: int):
        self._gevent = gevent_patched()
        if self._gevent:
            from gevent.pool import Pool

            self._pool = Pool(size)
        else:
            self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="cortex-webhook")

    def submit(self, function, *args) -> None:
        if self._gevent:
            self._pool.spawn(function, *args)
        else:
            self._pool.submit(function, *args)

    def shutdown(self, timeout: float) -> None:
        if self._gevent:
            self._pool.join(timeout=timeout)
            self._pool.kill(block=True, timeout=1)
        else:
            self._pool.shutdown(wait=True, cancel_futures=True)
