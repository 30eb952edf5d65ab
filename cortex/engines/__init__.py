"""Background engines and the one registry that ``cortex serve`` and ``cortex worker`` start from.

An engine is anything with ``start()`` and ``stop()``; one that consumes the event log may also have
``events_committed()``, which ``cortex serve`` calls whenever a request of its own process committed events
(so it reads them at once instead of at its next poll). :data:`REGISTRY` lists every engine once, with the
processes it runs in:

| engine | runs in | what it does |
| --- | --- | --- |
| ``live`` | serve | live dispatcher + fan-out: SSE streams are pushed (``cortex.events.fanout``) |
| ``event-retention`` | serve | deletes old events hourly (``cortex.events.retention``) |
| ``idle-sessions`` | serve | stops sessions idle past their timeout (``cortex.engines.idle``) |
| ``debug-audio-cleanup`` | serve | deletes expired debug audio (``cortex.engines.debug_audio``) |
| ``webhooks`` | serve (unless ``CORTEX_WEBHOOK_WORKER=false``), worker | fan-out + delivery (``cortex.engines.webhooks``) |
| ``mail`` | serve, worker | sends the durable mail outbox, retrying (``cortex.engines.mail``); several at once are safe |
| ``sanctions`` | as ``webhooks`` | bot commands for bot-enforced sanctions; announces expiries and scheduled starts (``cortex.engines.sanctions``) |
| ``gathering-expiry`` | serve | expires gatherings and invitations past their time (``cortex.engines.gatherings``) |
| ``plugins`` | as ``webhooks`` | runs every enabled plugin instance on its project's events; annotations, auto-sanctions (``cortex.engines.plugins``) |
| ``functions-runtime`` | serve, runtime (unless ``CORTEX_FUNCTIONS_RUNTIME=false``) | activates projects' functions and supervises their runtime processes, one process per project under a lease (``cortex.engines.functions``) |
| ``function-events`` | as ``webhooks`` | calls published functions' ``on<EventType>`` handlers with their project's events, in order per function, retried (``cortex.engines.function_events``) |

A new engine is one more :class:`EngineSpec` line here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from cortex.engines.debug_audio import DebugAudioCleanupJob
from cortex.engines.function_events import FunctionEventEngine
from cortex.engines.functions import RuntimeSupervisor
from cortex.engines.gatherings import GatheringExpiryJob
from cortex.engines.idle import IdleSessionSweeper
from cortex.engines.mail import MailEngine
from cortex.engines.plugins import PluginEngine
from cortex.engines.sanctions import SanctionEngine
from cortex.engines.webhooks import WebhookEngine
from cortex.events.fanout import LivePipeline
from cortex.events.retention import RetentionJob

log = logging.getLogger("cortex.engines")

SERVE = "serve"
WORKER = "worker"
RUNTIME = "runtime"  # `cortex runtime`: only the functions runtime supervisor


@dataclass(frozen=True)
class EngineSpec:
    """One engine: its name, how to build it from the settings, and whether it runs in a process role."""

    name: str
    build: Callable[[object], object]
    runs_in: Callable[[str, object], bool]


def _serve_only(role: str, _settings) -> bool:
    return role == SERVE


def _webhook_roles(role: str, settings) -> bool:
    return role == WORKER or (role == SERVE and settings.webhook_worker)


def _serve_and_worker(role: str, _settings) -> bool:
    return role in (SERVE, WORKER)


def _runtime_roles(role: str, settings) -> bool:
    return role in (SERVE, RUNTIME) and settings.functions_runtime


#: Every engine, in start order (stopped in reverse).
REGISTRY: tuple[EngineSpec, ...] = (
    EngineSpec("live", LivePipeline.from_settings, _serve_only),
    EngineSpec("event-retention", RetentionJob.from_settings, _serve_only),
    EngineSpec("idle-sessions", IdleSessionSweeper.from_settings, _serve_only),
    EngineSpec("debug-audio-cleanup", DebugAudioCleanupJob.from_settings, _serve_only),
    EngineSpec("webhooks", WebhookEngine.from_settings, _webhook_roles),
    # Every serve and worker process sends mail: each message is leased to one engine (models.mail.claim), so
    # running several is safe, and mail goes out whichever processes run.
    EngineSpec("mail", MailEngine.from_settings, _serve_and_worker),
    # A persistent event-log consumer like the webhook fan-out, so it runs where that runs: two processes on one
    # cursor may send a command twice (bots treat it as once), and the clock announces each transition once.
    EngineSpec("sanctions", SanctionEngine.from_settings, _webhook_roles),
    EngineSpec("gathering-expiry", GatheringExpiryJob.from_settings, _serve_only),
    # A persistent event-log consumer like the webhook fan-out: two processes on one cursor write each annotation
    # once (unique per instance, target and type) and lease each queued job to one of them.
    EngineSpec("plugins", PluginEngine.from_settings, _webhook_roles),
    # Every process that may supervise runtimes runs it; the lease per project decides which one does.
    EngineSpec("functions-runtime", RuntimeSupervisor.from_settings, _runtime_roles),
    # A persistent event-log consumer like the webhook fan-out (a queued call is taken by one process at a time).
    EngineSpec("function-events", FunctionEventEngine.from_settings, _webhook_roles),
)


class Engines:
    """The engines one process started; :meth:`stop` stops them in reverse order."""

    def __init__(self):
        self.started: list[tuple[str, object]] = []

    @property
    def fanout(self):
        """The live fan-out (``cortex serve``), or None."""
        return next((getattr(engine, "fanout", None) for name, engine in self.started if name == "live"), None)

    def get(self, name: str):
        """A started engine by name, or None."""
        return next((engine for started, engine in self.started if started == name), None)

    def stop(self) -> None:
        """Stop every engine, the last started first."""
        while self.started:
            name, engine = self.started.pop()
            try:
                engine.stop()
            except Exception:
                log.exception("engine %s did not stop cleanly", name)


def start_engines(role: str, settings, registry: tuple[EngineSpec, ...] = REGISTRY) -> Engines:
    """Build and start every engine of ``registry`` that runs in ``role`` (``serve`` or ``worker``); the live
    fan-out's wake-ups reach every engine with ``events_committed``."""
    engines = Engines()
    try:
        for spec in registry:
            if spec.runs_in(role, settings):
                engine = spec.build(settings)
                engine.start()
                engines.started.append((spec.name, engine))
                fanout = engines.fanout
                if fanout is not None and hasattr(engine, "events_committed"):
                    fanout.add_waker(engine.events_committed)
    except BaseException:
        engines.stop()
        raise
    return engines
