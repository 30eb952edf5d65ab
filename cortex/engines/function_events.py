"""Event handlers: a published function exporting ``on`` + an event type in PascalCase (``onSessionCreated``,
``onMessageCreated``, ``onGatheringMemberJoined`` …) is called with the event's envelope for every such event of
its project.

- **Dispatcher** — a persistent :class:`cortex.events.dispatcher.Dispatcher` named ``functions`` reads the log
  after its saved cursor; for each event of a project with live functions it queues one ``FunctionEventJob`` per
  function whose live version exports the handler (the version's build recorded its ``on…`` exports). Only events
  logged after the function went live are queued.
- **Runner** — :class:`FunctionEventRunner` takes, per function, its oldest queued event when it is due (later ones
  wait behind it: in order per function) and calls the handler in the project's runtime (``provider.invoke`` with
  ``handler``; within the function's timeout). Each function's call runs in its own greenlet/thread, so a slow or
  failing function never holds up another's events. A failed call (timeout, throw, memory, runtime away) is
  retried 3 times after 1, 2 and 4 s, then given up: logged, and a line in the function's logs.

At least once: the cursor moves after the batch is queued (a crash re-queues: the queue's unique index drops the
copy), and a call that succeeded may be repeated if the process dies before its job is deleted.
"""

from __future__ import annotations

import logging
import threading

from cortex.engines.functions import running_handle
from cortex.events.dispatcher import ConsumerEngine, Dispatcher
from cortex.integrations.functions.local import LocalProvider
from cortex.lib.background import PeriodicJob
from models import function_code as code
from models.base import as_utc, own_connection, utcnow
from models.events import DomainEvent, event_body

log = logging.getLogger("cortex.functions.events")

CONSUMER = "functions"
POLL_INTERVAL = 0.25
RUN_INTERVAL = 0.2
GRACE = 5.0  # seconds beyond the function's own timeout the provider waits


class FunctionEventEngine(ConsumerEngine):
    """The dispatcher and the runner (see the module doc)."""

    def __init__(self, provider, *, poll_interval: float = POLL_INTERVAL, run_interval: float = RUN_INTERVAL):
        self.provider = provider
        self.dispatcher = Dispatcher(CONSUMER, self.handle, poll_interval=poll_interval)
        self.runner = self.companion = FunctionEventRunner(self, run_interval)
        self.busy: set[str] = set()  # functions with a call in flight
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    @classmethod
    def from_settings(cls, settings) -> FunctionEventEngine:
        return cls(LocalProvider.from_settings(settings))

    def handle(self, events: list[DomainEvent]) -> None:
        handlers = code.event_handlers(e.project_id for e in events if e.project_id)
        if not handlers:
            return
        jobs = []
        for event in events:
            name = code.handler_name(event.type)
            for function_id, exported, live_since in handlers.get(event.project_id, ()):
                if name in exported and as_utc(event.timestamp) >= live_since:
                    jobs.append((function_id, event.seq, name))
        if jobs and code.enqueue_events(jobs):
            self.runner.wake()

    def run_due(self, wait: bool = False) -> int:
        """Start the calls that are due (one per function not busy); ``wait``: until they finished (tests)."""
        with own_connection():
            with self._lock:
                heads = code.due_heads(utcnow(), set(self.busy))
                self.busy.update(job.function_id for job in heads)
        started = []
        for job in heads:
            thread = threading.Thread(target=self._call, args=(job,), name=f"cortex-function-event-{job.id}",
                                      daemon=True)
            thread.start()
            started.append(thread)
        if wait:
            for thread in started:
                thread.join()
        return len(heads)

    def _call(self, job: code.FunctionEventJob) -> None:
        try:
            with own_connection():
                self._deliver(job)
        except Exception:
            log.exception("function event job %s failed unexpectedly", job.id)
        finally:
            with self._lock:
                self.busy.discard(job.function_id)
            self.runner.wake()

    def _deliver(self, job: code.FunctionEventJob) -> None:
        function = code.Function.get_or_none(code.Function.id == job.function_id)
        event = DomainEvent.get_or_none(DomainEvent.seq == job.event_seq)
        deployment = code.current_deployment(job.function_id) if function else None
        if function is None or event is None or deployment is None or deployment.status != "running":
            code.event_job_done(job)  # deleted, undeployed, or the event is gone: nothing to deliver
            return
        handle = running_handle(self.provider, function.project_id)
        version = code.FunctionVersion.get_by_id(deployment.version_id)
        if handle is None:
            outcome_name, error, logs = "unavailable", "the project's runtime is not running", ()
        else:
            ctx = {"projectId": function.project_id, "functionId": function.id, "slug": function.slug,
                   "version": version.version, "requestId": event.id}
            outcome = self.provider.invoke(handle, function.slug, event_body(event), ctx, handler=job.handler,
                                           timeout=function.timeout / 1000 + GRACE)
            outcome_name, error, logs = outcome.outcome, outcome.error, outcome.logs
        code.record_invocation(deployment.id, function.id, [dict(line) for line in logs])
        if outcome_name == "ok":
            code.event_job_done(job)
            return
        reason = f"{job.handler} for event {event.id} ({event.type}): {outcome_name}" + (f": {error}" if error else "")
        if code.event_job_failed(job, reason):
            log.warning("function %s: %s; retrying", function.slug, reason)
        else:
            log.error("function %s: %s; given up after %d attempts", function.slug, reason, code.HANDLER_ATTEMPTS)
            code.log_line(function.id, "error", f"Cortex: {reason}; given up after {code.HANDLER_ATTEMPTS} attempts",
                          event.id)


class FunctionEventRunner(PeriodicJob):
    """Starts due event-handler calls every ``interval`` seconds, and at once when woken."""

    label = "function event runner"

    def __init__(self, engine: FunctionEventEngine, interval: float = RUN_INTERVAL):
        super().__init__("cortex-function-events", interval)
        self.engine = engine

    def run_once(self) -> int:
        return self.engine.run_due()
