"""The plugin engine: every enabled plugin instance of a project runs on the project's event stream.

- **Dispatcher** — a persistent :class:`cortex.events.dispatcher.Dispatcher` named ``plugins`` (its cursor in the
  event log's ``EventCursor`` table) reads the log after its cursor:

  - ``message.created`` (user lines): each enabled instance whose plugin subscribes to it (profanity filter,
    sentiment) runs inline on the line's text; what they find is written as ``MessageAnnotation`` rows with their
    ``message.annotation.created`` events — and the auto-sanctions they trigger — in one transaction per batch
    (``models.plugins.record_message_annotations``).
  - ``session.updated`` into an ended status (``stopped`` / ``error``): each enabled instance of a session
    plugin (summary, action items) gets a job in the work queue (``PluginJob``): it reads a whole transcript and
    may call an LLM, so it never holds up the message plugins.

  Only instances that existed when the event was logged run on it (the event's log time ≥ the instance's
  ``createdAt``): installing a plugin does not re-process the past. A disabled instance skips what happens while
  it is disabled.
- **Job runner** — :class:`PluginJobRunner` leases due jobs (one process runs each job; ``FOR UPDATE SKIP
  LOCKED`` on PostgreSQL), runs them and writes their annotations. A plugin that fails — inline or in a job — is
  logged and its run is queued again with a backoff (5 s doubled per attempt, at most an hour; given up after
  ``models.plugins.MAX_ATTEMPTS`` attempts), while the cursor moves on: one failing plugin never blocks the others.

Delivery is **at least once** with idempotent writes: one annotation per instance, target and type (a unique
index), so a batch handled twice (a crash before the cursor moved, or ``serve`` and ``worker`` both running the
consumer) writes nothing twice and emits no event twice. The cursor is saved after each batch, so a restarted
engine resumes where it stopped. ``drain()`` / ``run_jobs()`` run everything inline (tests, benchmarks).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime

from cortex.events.dispatcher import ConsumerEngine, Dispatcher
from cortex.integrations.outbound import Sender
from cortex.lib.background import PeriodicJob
from cortex.lib.plugins import find
from cortex.lib.plugins.action_items import PLUGIN as ACTION_ITEMS
from cortex.lib.plugins.base import PluginDefinition, PluginError, validate_settings
from cortex.lib.plugins.summary import PLUGIN as SUMMARY
from cortex.lib.plugins.summary import render_minutes
from models import plugins as store
from models.base import (
    DomainError,
    as_utc,
    conflict,
    invalid,
    not_found,
    own_connection,
    parse_timestamp,
    utcnow,
)
from models.events import DomainEvent
from models.plugins import Finding, PluginInstance, PluginJob
from models.sessions import ENDED

log = logging.getLogger("cortex.plugins")

CONSUMER = "plugins"  # the event-log cursor of the plugin dispatcher
POLL_INTERVAL = 0.25  # seconds between two looks at the log when nothing wakes the dispatcher
JOB_INTERVAL = 1.0  # seconds between two looks at the work queue when nothing wakes the runner
SUMMARY_SLUG, ACTION_ITEMS_SLUG = SUMMARY.slug, ACTION_ITEMS.slug
MESSAGE_CREATED = "message.created"
SESSION_UPDATED = "session.updated"
#: Types the dispatcher passes over without reading them (none concerns a plugin).
SKIPPED = frozenset({
    "webhook.delivery.updated", "participant.joined", "participant.left", "participant.created",
    "participant.updated", "participant.deleted", "session.created", "session.deleted",
    "message.annotation.created", "session.annotation.created", "sanction.created", "sanction.updated",
    "sanction.revoked", "gathering.created", "gathering.updated", "gathering.started", "gathering.ended",
    "gathering.cancelled", "gathering.member.joined", "gathering.member.ready", "gathering.member.left",
    "gathering.invitation.sent", "gathering.invitation.accepted", "gathering.invitation.declined",
})


class OutboundContext:
    """What session plugins may use: an outbound JSON POST through the one address policy (``Sender``)."""

    MAX_ANSWER = 1_048_576  # bytes of an LLM answer read at most

    def __init__(self, allow_private: bool = False, timeout: float = 60.0, sender: Sender | None = None):
        self.sender = sender or Sender(timeout=timeout, allow_private=allow_private, max_body=self.MAX_ANSWER)

    def post_json(self, url: str, body: dict, headers: dict[str, str], timeout: float) -> dict:
        outcome = self.sender.request("POST", url, json.dumps(body).encode(),
                                      {"Content-Type": "application/json", "Accept": "application/json", **headers})
        if not outcome.ok:
            raise PluginError(f"the provider answered {outcome.status or 'nothing'}: {outcome.error or 'error'}")
        if outcome.truncated:
            raise PluginError("the provider's answer is larger than 1 MiB")
        try:
            answer = json.loads(outcome.body)
        except ValueError:
            raise PluginError("the provider's answer is not JSON") from None
        if not isinstance(answer, dict):
            raise PluginError("the provider's answer is not a JSON object")
        return answer


def _data(event: DomainEvent) -> dict:
    payload = event.payload if isinstance(event.payload, dict) else {}
    data = payload.get("data")
    return data if isinstance(data, dict) else {}


def _ended(event: DomainEvent) -> str | None:
    """The session id when this ``session.updated`` moved the session into an ended status, else None."""
    payload = event.payload if isinstance(event.payload, dict) else {}
    changes = payload.get("changes") if isinstance(payload.get("changes"), dict) else {}
    data = _data(event)
    if data.get("status") in ENDED and "status" in changes and changes["status"] not in ENDED:
        return str(data.get("id")) if data.get("id") is not None else None
    return None


def _when(value, fallback: datetime) -> datetime:
    try:
        return parse_timestamp(value) if isinstance(value, str) else fallback
    except ValueError:
        return fallback


class PluginEngine(ConsumerEngine):
    """The dispatcher and the job runner (see the module doc)."""

    def __init__(self, context: OutboundContext | None = None, *, poll_interval: float = POLL_INTERVAL,
                 job_interval: float = JOB_INTERVAL):
        self.context = context or OutboundContext()
        self.dispatcher = Dispatcher(CONSUMER, self.handle, poll_interval=poll_interval, skip_types=SKIPPED)
        self.runner = self.companion = PluginJobRunner(self, job_interval)
        self._settings: dict[str, tuple[datetime, dict]] = {}  # instance id → (updatedAt, full settings)
        self.failures = 0  # plugin runs that raised (tests read it)

    @classmethod
    def from_settings(cls, settings) -> PluginEngine:
        return cls(OutboundContext(settings.outbound_allow_private, settings.plugin_timeout))

    # ------------------------------------------------------------------ running plugins

    def settings_of(self, instance: PluginInstance) -> dict:
        """The instance's full settings (decrypted once per version of the instance)."""
        cached = self._settings.get(instance.id)
        if cached is None or cached[0] != instance.updated_at:
            if len(self._settings) > 10_000:
                self._settings.clear()
            cached = (instance.updated_at, store.full_settings(instance))
            self._settings[instance.id] = cached
        return cached[1]

    def _on_message(self, plugin: PluginDefinition, instance: PluginInstance, content: str) -> dict | None:
        return plugin.on_message(content, self.settings_of(instance))

    def run_session(self, instance: PluginInstance, session_id: str, replace: bool = False) -> dict | None:
        """Run a session plugin on a session's transcript now and write its annotation (``replace``: instead of
        the instance's previous one). The annotation's body, or None (nothing to annotate, or written already).
        Raises what the plugin raised."""
        plugin = find(instance.plugin_id)
        if plugin is None or plugin.on_session_end is None:
            return None
        lines = store.transcript_lines(session_id)
        data = plugin.on_session_end(lines, self.settings_of(instance), self.context)
        if data is None:
            return None
        return store.record_session_annotation(instance, session_id, plugin.annotation_type, data, replace)

    # ------------------------------------------------------------------ the batch

    def handle(self, events: list[DomainEvent]) -> None:
        """Run the message plugins of a batch inline and queue its session plugins (see the module doc)."""
        wanted = [e for e in events if e.project_id is not None
                  and (e.type == MESSAGE_CREATED or (e.type == SESSION_UPDATED and _ended(e)))]
        if not wanted:
            return
        instances = store.enabled_instances(e.project_id for e in wanted)
        if not instances:
            return
        findings: list[Finding] = []
        retries: list[tuple[PluginInstance, str, str]] = []
        sessions: list[tuple[PluginInstance, str, str]] = []
        for event in wanted:
            logged_at = as_utc(event.timestamp)
            for instance in instances.get(event.project_id, ()):
                if logged_at < instance.created_at:
                    continue  # the instance did not exist yet
                plugin = find(instance.plugin_id)
                if event.type == MESSAGE_CREATED:
                    if MESSAGE_CREATED in plugin.events and plugin.on_message is not None:
                        self._message(plugin, instance, event, findings, retries)
                elif plugin.on_session_end is not None:
                    sessions.append((instance, "session", _ended(event)))
        if findings:
            store.record_message_annotations(findings)
        if retries:
            store.schedule_jobs(retries, due=utcnow(), attempts=0, error="failed inline; retrying")
        if sessions:
            store.schedule_jobs(sessions)
        if retries or sessions:
            self.runner.wake()

    def _message(self, plugin, instance, event, findings, retries) -> None:
        data = _data(event)
        message_id, content = data.get("id"), data.get("content")
        if data.get("type") == "system" or not isinstance(message_id, str) or not isinstance(content, str):
            return
        try:
            result = self._on_message(plugin, instance, content)
        except Exception as exc:
            self.failures += 1
            log.warning("plugin %s (instance %s) failed on message %s: %s; retrying later", plugin.slug,
                        instance.id, message_id, exc)
            retries.append((instance, "message", message_id))
            return
        if result is not None:
            findings.append(Finding(instance, plugin.annotation_type, result, message_id,
                                    str(data.get("sessionId")), data.get("participantId"),
                                    data.get("externalUserId"), _when(data.get("timestamp"), event.timestamp)))

    # ------------------------------------------------------------------ jobs

    def run_job(self, job: PluginJob) -> None:
        """Run one queued job; raises what the plugin raised."""
        instance = store.job_instance(job)
        if instance is None:
            return  # uninstalled or disabled since
        plugin = find(instance.plugin_id)
        if job.kind == "session":
            self.run_session(instance, job.target_id)
            return
        message = store.message_target(job.target_id)
        if message is None or plugin is None or plugin.on_message is None:
            return
        result = self._on_message(plugin, instance, message.content)
        if result is not None:
            store.record_message_annotations([Finding(
                instance, plugin.annotation_type, result, message.id, message.session_id, message.participant_id,
                message.external_user_id, message.timestamp)])

    def run_jobs(self, now: datetime | None = None, limit: int = 20) -> int:
        """Run the jobs due at ``now``; how many ran (succeeded or failed)."""
        ran = 0
        while True:
            jobs = store.claim_jobs(now, limit)
            for job in jobs:
                try:
                    self.run_job(job)
                except Exception as exc:
                    self.failures += 1
                    again = store.job_failed(job, _reason(exc), now)
                    (log.warning if again else log.error)(
                        "plugin job %s (%s %s, instance %s, attempt %d) failed: %s%s", job.id, job.kind,
                        job.target_id, job.instance_id, job.attempts + 1, _reason(exc),
                        "; retrying later" if again else "; given up")
                else:
                    store.job_done(job)
                ran += 1
            if len(jobs) < limit:
                return ran


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"


class PluginJobRunner(PeriodicJob):
    """Runs due plugin jobs every ``interval`` seconds, and at once when woken."""

    label = "plugin job runner"

    def __init__(self, engine: PluginEngine, interval: float = JOB_INTERVAL):
        super().__init__("cortex-plugin-jobs", interval)
        self.engine = engine

    def run_once(self) -> int:
        with own_connection():
            return self.engine.run_jobs()


# ---------------------------------------------------------------- what requests ask of plugins


def regenerate_summary(engine: PluginEngine, project, session_id: str) -> dict:
    """regenerateSummary: run the project's session-summary instance on the session now, replacing its previous
    summary (404 session, 409 no enabled instance, 502 when the configured provider failed — the previous summary
    then stays)."""
    session, instance = store.summary_instance(project, session_id)
    try:
        annotation = engine.run_session(instance, session.id, replace=True)
    except PluginError as exc:
        raise DomainError("upstream_failed", f"the summary provider failed: {exc}") from None
    body = {"sessionId": session.id, "pluginInstanceId": instance.id}
    if annotation is None:
        return {**body, "message": "The session has no transcript lines to summarise; nothing was written"}
    return {**body, "message": "Summary regenerated", "annotation": annotation}


def _stored_or_computed(engine: PluginEngine, session_id: str, slug: str, lines) -> dict | None:
    """The session's newest annotation of a session plugin, else the plugin's output computed now (not stored:
    the real one comes when the session ends) with the project's instance settings or the defaults."""
    plugin = find(slug)
    stored = store.latest_session_annotation(session_id, plugin.annotation_type)
    if stored is not None:
        return stored.data
    instance = store.enabled_instance(store.session_project_id(session_id), slug)
    settings = engine.settings_of(instance) if instance is not None else validate_settings(plugin, None)
    try:
        return plugin.on_session_end(lines, settings, engine.context)
    except PluginError as exc:
        log.warning("minutes: %s could not run on session %s: %s", slug, session_id, exc)
        return None


def minutes(engine: PluginEngine, session) -> tuple[str, str]:
    """The ``generate-minutes`` action: (Markdown document, file name) with title, date, participants, the
    summary, the action items and the transcript."""
    lines = store.transcript_lines(session.id)
    summary = _stored_or_computed(engine, session.id, SUMMARY_SLUG, lines)
    items = _stored_or_computed(engine, session.id, ACTION_ITEMS_SLUG, lines)
    participants = list(dict.fromkeys(line.sender_name for line in lines))
    document = render_minutes(session.title or f"Session {session.id}", session.created_at, participants,
                              summary.get("summary") if summary else None, items.get("items") if items else None,
                              lines)
    return document, f"minutes-{session.id}.md"


#: The actions plugins offer (``Action`` in their definition), by (plugin slug, action id): what runs them.
ACTIONS = {(SUMMARY_SLUG, "generate-minutes"): minutes}


def run_action(engine: PluginEngine, principal, slug: str, endpoint_path: str, method: str, body: dict):
    """``{method} /api/plugins/{slug}/{endpointPath}`` with ``{"sessionId": …}``: the action's result.
    404: no such plugin or action, or a session the caller cannot see; 409: the plugin is not enabled in the
    session's project."""
    plugin = store.plugin_of(slug)
    action = next((a for a in plugin.actions if a.endpoint_path == endpoint_path and a.method == method), None)
    if action is None or (plugin.slug, action.id) not in ACTIONS:
        raise not_found(f"Action {method} {endpoint_path} of plugin {plugin.slug}")
    session_id = body.get("sessionId") if isinstance(body, dict) else None
    if not isinstance(session_id, str) or not session_id:
        raise invalid("sessionId is required: the session the action runs on")
    _project, session = store.session_of(principal, session_id)
    if store.enabled_instance(session.project_id, plugin.slug) is None:
        raise conflict(f"the plugin {plugin.slug} is not enabled in the session's project")
    return ACTIONS[(plugin.slug, action.id)](engine, session)
