"""Plugin instances, the annotations plugins write, and the plugin engine's durable work queue.

The catalogue (what a plugin is, its settings schema and its analysis) is code: ``cortex.lib.plugins``. This
module is what a project installs and what running its plugins leaves behind:

- :class:`PluginInstance` — one per plugin per project (``createInstance``; a second one → 409). Its settings are
  validated against the plugin's ``settingsSchema`` (``cortex.lib.plugins.base.validate_settings``); ``password``
  settings are kept encrypted in ``secrets_encrypted`` (re-encrypted by ``cortex rotate-secrets``) and every
  answer shows them masked (``********``). Deleting an instance keeps its annotations.
- :class:`MessageAnnotation` / :class:`SessionAnnotation` — one per instance, target and type (a unique index:
  the engine's at-least-once delivery writes each once). Each is written with its ``message.annotation.created``
  / ``session.annotation.created`` event (source ``cortex:plugin``) in one transaction.
- :class:`PluginJob` — work the engine could not finish inline: session plugins (they read a whole transcript,
  maybe call an LLM) and retries of failed message plugins, each with its backoff (``schedule_jobs`` /
  ``claim_jobs`` / ``job_done`` / ``job_failed``).
- Auto-sanctions (profanity filter with ``autoSanction``): :func:`record_message_annotations` counts the player's
  profanity annotations of that instance in the window and records at most one sanction while one of that type is
  in force (``_auto_sanction``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

import peewee as pw

from cortex.lib import crypto
from cortex.lib.addresses import NOT_CALLED, refused_literal
from cortex.lib.plugins import CATALOGUE, find
from cortex.lib.plugins.base import MASK, Line, PluginDefinition, SettingsError, validate_settings
from models import sanctions
from models.access import Principal, project_for, visible_project_ids
from models.base import (
    BaseModel,
    DomainError,
    JSONField,
    UTCDateTimeField,
    conflict,
    found,
    insert_new,
    insert_rows,
    invalid,
    is_sqlite,
    locked,
    new_id,
    not_found,
    project_row,
    rfc3339,
    transaction,
    utcnow,
)
from models.events import append, new_event
from models.identity import Project
from models.messages import Message
from models.sessions import Session, get_session

PROFANITY = "profanity-filter"
SUMMARY = "session-summary"
SOURCE = "cortex:plugin"
MAX_BATCH_IDS = 500  # getMessageAnnotationsBatch: message ids per request
TRANSCRIPT_LINES = 2000  # session plugins read at most the last this many transcript lines
MAX_ATTEMPTS = 8  # a job failing this often is given up (logged by the engine)
FIRST_RETRY = 5.0  # seconds before the first retry; doubled per attempt up to MAX_RETRY
MAX_RETRY = 3600.0


class PluginInstance(BaseModel):
    """A plugin installed in a project (one per plugin)."""

    tenant_id = pw.CharField(max_length=36)
    project = pw.ForeignKeyField(Project, on_delete="CASCADE", index=False)
    plugin_id = pw.CharField(max_length=36)
    settings = JSONField()  # every setting but the password ones
    secrets_encrypted = pw.TextField(null=True)  # encrypted JSON object of the password settings
    is_enabled = pw.BooleanField(default=True)
    updated_at = UTCDateTimeField(default=utcnow)

    class Meta:
        indexes = ((("project", "plugin_id"), True),)


class MessageAnnotation(BaseModel):
    """What one plugin instance found in one transcript line."""

    tenant_id = pw.CharField(max_length=36)
    project_id = pw.CharField(max_length=36)
    plugin_instance_id = pw.CharField(max_length=36)  # no foreign key: annotations outlive their instance
    message = pw.ForeignKeyField(Message, on_delete="CASCADE", index=False)
    session_id = pw.CharField(max_length=36)
    external_user_id = pw.TextField(null=True)
    occurred_at = UTCDateTimeField()  # the line's time: the auto-sanction window counts on it
    type = pw.CharField(max_length=32)
    data = JSONField()

    class Meta:
        indexes = (
            (("message", "plugin_instance_id", "type"), True),
            (("plugin_instance_id", "external_user_id", "occurred_at"), False),
        )


class SessionAnnotation(BaseModel):
    """What one plugin instance made of a whole session (its summary, its action items)."""

    tenant_id = pw.CharField(max_length=36)
    project_id = pw.CharField(max_length=36)
    plugin_instance_id = pw.CharField(max_length=36)
    session = pw.ForeignKeyField(Session, on_delete="CASCADE", index=False)
    type = pw.CharField(max_length=32)
    data = JSONField()

    class Meta:
        indexes = ((("session", "plugin_instance_id", "type"), True),)


class PluginJob(BaseModel):
    """One plugin run still to do: a session plugin, or a retry of a failed message plugin."""

    project_id = pw.CharField(max_length=36)
    instance_id = pw.CharField(max_length=36)
    kind = pw.CharField(max_length=16)  # "message" | "session"
    target_id = pw.CharField(max_length=36)  # the message / session id
    attempts = pw.IntegerField(default=0)
    due_at = UTCDateTimeField()
    leased_until = UTCDateTimeField(null=True)
    last_error = pw.TextField(null=True)

    class Meta:
        indexes = ((("instance_id", "kind", "target_id"), True), (("due_at",), False))


MODELS = [PluginInstance, MessageAnnotation, SessionAnnotation, PluginJob]


# ---------------------------------------------------------------- the catalogue


def plugin_of(ref: str) -> PluginDefinition:
    """The catalogue's plugin with this id or slug, or 404."""
    return found(find(ref), f"Plugin {ref}")


def plugin_bodies() -> list[dict]:
    """listPlugins: every plugin of the catalogue."""
    return [plugin.body() for plugin in CATALOGUE]


# ---------------------------------------------------------------- instances


def _secrets(row: PluginInstance) -> dict:
    return {} if not row.secrets_encrypted else json.loads(crypto.decrypt(row.secrets_encrypted))


def full_settings(row: PluginInstance) -> dict:
    """An instance's settings with its password settings decrypted (for the engine; never for an answer)."""
    return {**row.settings, **_secrets(row)}


def _split(plugin: PluginDefinition, settings: dict) -> tuple[dict, str | None]:
    secret_keys = set(plugin.secret_keys())
    plain = {key: value for key, value in settings.items() if key not in secret_keys}
    secrets = {key: value for key, value in settings.items() if key in secret_keys}
    return plain, (crypto.encrypt(json.dumps(secrets)) if secrets else None)


def _masked(plugin: PluginDefinition, row: PluginInstance) -> dict:
    shown = dict(row.settings)
    shown.update((key, MASK) for key in _secrets(row) if key in plugin.secret_keys())
    return shown


def instance_body(row: PluginInstance, embed: bool = False) -> dict:
    """PluginInstance (``embed``: PluginInstanceWithPlugin); password settings masked."""
    plugin = find(row.plugin_id)
    body = {
        "id": row.id,
        "tenantId": row.tenant_id,
        "projectId": row.project_id,
        "pluginId": row.plugin_id,
        "settings": _masked(plugin, row) if plugin else dict(row.settings),
        "isEnabled": row.is_enabled,
        "createdAt": rfc3339(row.created_at),
        "updatedAt": rfc3339(row.updated_at),
    }
    if embed and plugin is not None:
        body["plugin"] = plugin.body()
    return body


def _validated(plugin: PluginDefinition, given, current: dict | None = None) -> dict:
    if given is not None and not isinstance(given, dict):
        raise invalid("settings must be an object")
    try:
        settings = validate_settings(plugin, given, current)
    except SettingsError as exc:
        raise invalid(str(exc)) from None
    for key, value in settings.items():  # a URL the server would call: the one outbound policy, at store time
        if isinstance(value, str) and value.lower().startswith(("http://", "https://")):
            refused = refused_literal(value)
            if refused is not None:
                raise invalid(f"settings.{key}: {refused}; {NOT_CALLED}")
    return settings


def create_instance(project: Project, body: dict) -> dict:
    """createInstance: install a plugin (by id or slug) with validated settings; 404 for an unknown plugin, 409
    when the project has it installed already."""
    ref = body.get("pluginId")
    if not isinstance(ref, str) or not ref.strip():
        raise invalid("pluginId must name a plugin (its id or slug)")
    plugin = plugin_of(ref.strip())
    settings = _validated(plugin, body.get("settings"))
    plain, secrets = _split(plugin, settings)
    now = utcnow()
    row = PluginInstance(id=new_id(), tenant_id=project.tenant_id, project=project.id, plugin_id=plugin.id,
                         settings=plain, secrets_encrypted=secrets, is_enabled=True, created_at=now, updated_at=now)
    with transaction():
        if PluginInstance.select().where((PluginInstance.project == project.id)
                                         & (PluginInstance.plugin_id == plugin.id)).exists():
            raise conflict(f"the plugin {plugin.slug} is installed in this project already; update that instance")
        try:
            with transaction():
                row.save(force_insert=True)
        except pw.IntegrityError:  # a concurrent install of the same plugin won
            raise conflict(f"the plugin {plugin.slug} is installed in this project already") from None
    return instance_body(row)


def get_instance(project: Project, instance_id: str) -> PluginInstance:
    """The project's instance, or 404 (another project's too)."""
    return project_row(PluginInstance, project.id, instance_id, "Plugin instance")


def list_instances(project: Project) -> list[dict]:
    """listInstances: the project's instances (oldest first), each with its plugin."""
    rows = PluginInstance.select().where(PluginInstance.project == project.id).order_by(
        PluginInstance.created_at, PluginInstance.id)
    return [instance_body(row, embed=True) for row in rows]


def update_instance(project: Project, instance_id: str, body: dict) -> dict:
    """updateInstance: merge ``settings`` into the current ones (same validation; ``********`` keeps a password)
    and/or set ``isEnabled``."""
    with transaction():
        row = project_row(PluginInstance, project.id, instance_id, "Plugin instance", lock=True)
        plugin = plugin_of(row.plugin_id)
        if body.get("settings") is not None:
            settings = _validated(plugin, body["settings"], full_settings(row))
            row.settings, row.secrets_encrypted = _split(plugin, settings)
        if body.get("isEnabled") is not None:
            row.is_enabled = bool(body["isEnabled"])
        row.updated_at = max(utcnow(), row.updated_at + timedelta(milliseconds=1))
        row.save()
    return instance_body(row)


def delete_instance(project: Project, instance_id: str) -> dict:
    """deleteInstance: remove the instance and its pending work; its annotations stay."""
    with transaction():
        row = project_row(PluginInstance, project.id, instance_id, "Plugin instance", lock=True)
        PluginJob.delete().where(PluginJob.instance_id == row.id).execute()
        row.delete_instance()
    return {"message": "Plugin instance deleted"}


def enabled_instances(project_ids) -> dict[str, list[PluginInstance]]:
    """project id → its enabled instances (of plugins the catalogue has)."""
    result: dict[str, list[PluginInstance]] = {}
    ids = sorted(set(project_ids))
    if not ids:
        return result
    for row in PluginInstance.select().where(PluginInstance.project.in_(ids) & PluginInstance.is_enabled):
        if find(row.plugin_id) is not None:
            result.setdefault(row.project_id, []).append(row)
    return result


def enabled_instance(project_id: str, slug: str) -> PluginInstance | None:
    """The project's enabled instance of the plugin with this slug, or None."""
    plugin = find(slug)
    if plugin is None:
        return None
    return PluginInstance.get_or_none((PluginInstance.project == project_id) & (PluginInstance.plugin_id == plugin.id)
                                      & PluginInstance.is_enabled)


# ---------------------------------------------------------------- annotations: reading


def message_annotation_body(row: MessageAnnotation) -> dict:
    return {"id": row.id, "tenantId": row.tenant_id, "pluginInstanceId": row.plugin_instance_id, "type": row.type,
            "data": row.data, "createdAt": rfc3339(row.created_at), "messageId": row.message_id}


def session_annotation_body(row: SessionAnnotation) -> dict:
    return {"id": row.id, "tenantId": row.tenant_id, "pluginInstanceId": row.plugin_instance_id, "type": row.type,
            "data": row.data, "createdAt": rfc3339(row.created_at), "sessionId": row.session_id}


def session_of(principal: Principal, session_id: str, minimum_role: str | None = None) -> tuple[Project, Session]:
    """A session by id alone, when it belongs to a project the principal may use (else 404)."""
    session = found(Session.get_or_none(Session.id == session_id), f"Session {session_id}")
    try:
        project = project_for(principal, session.project_id, minimum_role)
    except DomainError as exc:
        if exc.kind == "not_found":
            raise not_found(f"Session {session_id}") from None
        raise
    return project, session


def session_annotations(principal: Principal, session_id: str) -> list[dict]:
    """getSessionAnnotations: the annotations of a session the caller can see, oldest first."""
    _project, session = session_of(principal, session_id)
    rows = SessionAnnotation.select().where(SessionAnnotation.session == session.id).order_by(
        SessionAnnotation.created_at, SessionAnnotation.id)
    return [session_annotation_body(row) for row in rows]


def message_annotations(principal: Principal, message_ids) -> dict[str, list[dict]]:
    """getMessageAnnotationsBatch: message id → its annotations (oldest first), for the messages the caller can
    see; other ids are absent. At most MAX_BATCH_IDS ids (400 beyond)."""
    message_ids = message_ids or []
    if len(message_ids) > MAX_BATCH_IDS:
        raise invalid(f"messageIds: at most {MAX_BATCH_IDS} ids per request, not {len(message_ids)}")
    ids = sorted({value for value in message_ids if value})
    projects = sorted(visible_project_ids(principal))
    if not ids or not projects:
        return {}
    result: dict[str, list[dict]] = {
        message_id: [] for (message_id,) in Message.select(Message.id).where(
            Message.id.in_(ids) & Message.project.in_(projects)).tuples()}
    if result:
        rows = MessageAnnotation.select().where(MessageAnnotation.message.in_(sorted(result))).order_by(
            MessageAnnotation.created_at, MessageAnnotation.id)
        for row in rows:
            result[row.message_id].append(message_annotation_body(row))
    return result


# ---------------------------------------------------------------- annotations: writing (the engine)


@dataclass(frozen=True)
class Finding:
    """One message annotation a plugin run produced (not yet written)."""

    instance: PluginInstance
    type: str
    data: dict
    message_id: str
    session_id: str
    participant_id: str | None
    external_user_id: str | None
    occurred_at: datetime


_ANNOTATION_FIELDS = tuple(MessageAnnotation._meta.sorted_fields)


def _insert_annotations(rows: list[MessageAnnotation]) -> set[str]:
    """Insert the annotations the unique index does not have yet; the ids of those inserted. PostgreSQL: one
    multi-row ``INSERT … ON CONFLICT DO NOTHING RETURNING`` (one round trip per batch: measured, a statement per
    row was most of the engine's time under load); SQLite runs in-process, a statement per row costs no round
    trip."""
    if is_sqlite():
        return {row.id for row in rows if insert_new(MessageAnnotation, row.__data__)}
    cursor = insert_rows(MessageAnnotation, _ANNOTATION_FIELDS, rows, 'ON CONFLICT DO NOTHING RETURNING "id"')
    return {row_id for (row_id,) in cursor.fetchall()}


def record_message_annotations(findings: list[Finding], now: datetime | None = None) -> tuple[int, list[str]]:
    """Write the findings (each once: an existing annotation of the same instance, message and type is kept) with
    their ``message.annotation.created`` events, and the auto-sanctions they trigger, in one transaction.
    (annotations written, ids of sanctions created). A finding whose message is gone is dropped."""
    now = now or utcnow()
    if not findings:
        return 0, []
    sanctions_made = []
    with transaction():
        live = {message_id for (message_id,) in Message.select(Message.id).where(
            Message.id.in_(sorted({f.message_id for f in findings}))).tuples()}
        rows: dict[tuple[str, str, str], tuple[MessageAnnotation, Finding]] = {}
        for finding in findings:
            key = (finding.message_id, finding.instance.id, finding.type)
            if finding.message_id in live and key not in rows:
                rows[key] = (MessageAnnotation(
                    id=new_id(), created_at=now, tenant_id=finding.instance.tenant_id,
                    project_id=finding.instance.project_id, plugin_instance_id=finding.instance.id,
                    message=finding.message_id, session_id=finding.session_id,
                    external_user_id=finding.external_user_id, occurred_at=finding.occurred_at, type=finding.type,
                    data=finding.data), finding)
        inserted = _insert_annotations([row for row, _finding in rows.values()]) if rows else set()
        events = []
        profane: dict[tuple[str, str], Finding] = {}  # (instance, player) → a finding that may trigger a sanction
        for row, finding in rows.values():
            if row.id not in inserted:
                continue
            data = {"annotationId": row.id, "messageId": finding.message_id, "type": finding.type,
                    "content": finding.data}
            if finding.participant_id:
                data["participantId"] = finding.participant_id
            if finding.external_user_id:
                data["externalUserId"] = finding.external_user_id
            events.append(new_event("message.annotation.created", tenant_id=finding.instance.tenant_id,
                                    project_id=finding.instance.project_id,
                                    resource_id=f"session:{finding.session_id}", action="created", data=data,
                                    source=SOURCE))
            if finding.type == "profanity" and finding.external_user_id and finding.instance.settings.get(
                    "autoSanction"):
                profane[(finding.instance.id, finding.external_user_id)] = finding
        # Sanctions first: appending takes the event-log lock (PostgreSQL), held until the commit.
        for finding in profane.values():
            sanction_id = _auto_sanction(finding, now)
            if sanction_id:
                sanctions_made.append(sanction_id)
        if events:
            append(events)
    return len(events), sanctions_made


def _auto_sanction(finding: Finding, now: datetime) -> str | None:
    """With ``autoSanction`` on: when the player has ``threshold`` profanity annotations of this instance within
    ``windowMinutes`` (counted on the lines' times, after the instance's previous auto-sanction of the player),
    record one sanction — unless one of ``sanctionType`` is in force for them already. Its id, or None."""
    user, threshold = finding.external_user_id, int(finding.instance.settings.get("threshold", 3))
    query = (MessageAnnotation.select(MessageAnnotation.message, MessageAnnotation.occurred_at)
             .where((MessageAnnotation.plugin_instance_id == finding.instance.id)
                    & (MessageAnnotation.external_user_id == user) & (MessageAnnotation.type == "profanity")))
    window_start = finding.occurred_at - timedelta(minutes=float(finding.instance.settings.get("windowMinutes", 60)))
    if query.where(MessageAnnotation.occurred_at >= window_start).count() < threshold:
        return None  # the cheap question first: most profane lines are far from a threshold
    # Decide under the instance's row lock (PostgreSQL), with its current settings: one decision at a time.
    instance = locked(PluginInstance.select().where(PluginInstance.id == finding.instance.id)).first()
    if instance is None or not instance.is_enabled:
        return None
    settings = instance.settings
    if not settings.get("autoSanction"):
        return None
    threshold, window = int(settings.get("threshold", 3)), float(settings.get("windowMinutes", 60))
    kind, duration = settings.get("sanctionType", "mute"), float(settings.get("durationMinutes", 60))
    if sanctions.in_force(instance.project_id, user, [kind], now):
        return None
    previous = _last_auto_sanction(instance, user)
    if previous is not None:  # the lines that triggered the previous sanction are spent
        query = query.where(MessageAnnotation.created_at > previous)
    rows = list(query.order_by(MessageAnnotation.occurred_at.desc(), MessageAnnotation.id.desc())
                .limit(threshold).tuples())
    # The newest `threshold` profane lines, all within `window` of the newest one.
    if len(rows) < threshold or rows[-1][1] < rows[0][1] - timedelta(minutes=window):
        return None
    message_ids = [message_id for message_id, _at in reversed(rows)]
    project = Project.get_by_id(instance.project_id)
    body = {"type": kind, "externalUserId": user,
            "reason": f"Automatic: {threshold} profane messages within {window:g} minutes (profanity filter)",
            "metadata": {"triggeredBy": PROFANITY, "pluginInstanceId": instance.id, "messageIds": message_ids}}
    if duration > 0:
        body["endAt"] = rfc3339(now + timedelta(minutes=duration))
    return sanctions.create_sanction(project, None, body)["id"]


def _last_auto_sanction(instance: PluginInstance, user: str) -> datetime | None:
    """When this instance last sanctioned the player (its annotations before then are spent), or None."""
    Sanction = sanctions.Sanction
    rows = (Sanction.select(Sanction.created_at, Sanction.metadata)
            .where((Sanction.project_id == instance.project_id) & (Sanction.external_user_id == user)
                   & Sanction.created_by_user_id.is_null())
            .order_by(Sanction.created_at.desc()).limit(50))
    for row in rows:
        meta = row.metadata if isinstance(row.metadata, dict) else {}
        if meta.get("triggeredBy") == PROFANITY and meta.get("pluginInstanceId") == instance.id:
            return row.created_at
    return None


def record_session_annotation(instance: PluginInstance, session_id: str, type_: str, data: dict,
                              replace: bool = False) -> dict | None:
    """Write a session annotation with its ``session.annotation.created`` event (``replace``: the instance's
    previous one of this type goes first — regenerating a summary). Its body; None when it existed already (and
    ``replace`` is off) or the session is gone."""
    now = utcnow()
    with transaction():
        if not Session.select().where(Session.id == session_id).exists():
            return None
        if replace:
            SessionAnnotation.delete().where((SessionAnnotation.session == session_id)
                                             & (SessionAnnotation.plugin_instance_id == instance.id)
                                             & (SessionAnnotation.type == type_)).execute()
        row_id = new_id()
        values = dict(id=row_id, created_at=now, tenant_id=instance.tenant_id, project_id=instance.project_id,
                      plugin_instance_id=instance.id, session=session_id, type=type_, data=data)
        if not insert_new(SessionAnnotation, values):
            return None
        append([new_event("session.annotation.created", tenant_id=instance.tenant_id,
                          project_id=instance.project_id, resource_id=f"session:{session_id}", action="created",
                          data={"annotationId": row_id, "sessionId": session_id, "type": type_, "content": data},
                          source=SOURCE)])
    return session_annotation_body(SessionAnnotation(**values))


def latest_session_annotation(session_id: str, type_: str) -> SessionAnnotation | None:
    """The newest annotation of this type on the session (any instance), or None."""
    return (SessionAnnotation.select().where((SessionAnnotation.session == session_id)
                                             & (SessionAnnotation.type == type_))
            .order_by(SessionAnnotation.created_at.desc()).first())


def session_project_id(session_id: str) -> str | None:
    return Session.select(Session.project).where(Session.id == session_id).scalar()


def transcript_lines(session_id: str, limit: int = TRANSCRIPT_LINES) -> list[Line]:
    """The session's last ``limit`` user lines, in transcript order (what session plugins read)."""
    rows = list(Message.select(Message.id, Message.external_user_id, Message.sender_name, Message.content,
                               Message.timestamp)
                .where((Message.session == session_id) & (Message.type == "user"))
                .order_by(Message.timestamp.desc(), Message.event_seq.desc()).limit(limit))
    return [Line(row.id, row.external_user_id, row.sender_name, row.content, row.timestamp) for row in reversed(rows)]


# ---------------------------------------------------------------- the work queue


def schedule_jobs(jobs: list[tuple[PluginInstance, str, str]], due: datetime | None = None,
                  attempts: int = 0, error: str | None = None) -> int:
    """Queue (instance, kind, target id) runs due at ``due`` (default now); one per instance, kind and target
    (an existing one is kept). How many were new."""
    due = due or utcnow()
    new = 0
    with transaction():
        for instance, kind, target in jobs:
            new += insert_new(PluginJob, dict(id=new_id(), created_at=utcnow(), project_id=instance.project_id,
                                                  instance_id=instance.id, kind=kind, target_id=target,
                                                  attempts=attempts, due_at=due, last_error=error))
    return new


def claim_jobs(now: datetime | None = None, limit: int = 20, lease: float = 300.0) -> list[PluginJob]:
    """Lease up to ``limit`` due jobs for ``lease`` seconds (another process never runs a leased one)."""
    now = now or utcnow()
    until = now + timedelta(seconds=lease)
    claimed = []
    with transaction():
        due = PluginJob.select(PluginJob.id).where(
            (PluginJob.due_at <= now) & (PluginJob.leased_until.is_null() | (PluginJob.leased_until <= now))
        ).order_by(PluginJob.due_at).limit(limit)
        if not is_sqlite():
            due = due.for_update("FOR UPDATE SKIP LOCKED")
        ids = [row.id for row in due]
        if ids:
            PluginJob.update(leased_until=until).where(PluginJob.id.in_(ids)).execute()
            claimed = list(PluginJob.select().where(PluginJob.id.in_(ids)).order_by(PluginJob.due_at))
    return claimed


def job_done(job: PluginJob) -> None:
    PluginJob.delete().where(PluginJob.id == job.id).execute()


def job_failed(job: PluginJob, error: str, now: datetime | None = None) -> bool:
    """Record a failed run: due again after a backoff (FIRST_RETRY doubled per attempt, at most MAX_RETRY);
    False when it has failed MAX_ATTEMPTS times and is given up (deleted)."""
    now = now or utcnow()
    attempts = job.attempts + 1
    if attempts >= MAX_ATTEMPTS:
        job_done(job)
        return False
    delay = min(FIRST_RETRY * 2 ** (attempts - 1), MAX_RETRY)
    PluginJob.update(attempts=attempts, due_at=now + timedelta(seconds=delay), leased_until=None,
                     last_error=error[:2000]).where(PluginJob.id == job.id).execute()
    return True


def job_instance(job: PluginJob) -> PluginInstance | None:
    """The enabled instance a job runs for (None: deleted or disabled since — the job is dropped)."""
    return PluginInstance.get_or_none((PluginInstance.id == job.instance_id) & PluginInstance.is_enabled)


def message_target(message_id: str) -> Message | None:
    return Message.get_or_none(Message.id == message_id)


# ---------------------------------------------------------------- session actions


def session_actions(project: Project, session_id: str) -> dict:
    """SessionActionsResponse: per enabled instance whose plugin has actions, a PluginActionGroup."""
    session = get_session(project, session_id)
    groups = []
    rows = PluginInstance.select().where((PluginInstance.project == project.id) & PluginInstance.is_enabled).order_by(
        PluginInstance.created_at, PluginInstance.id)
    for row in rows:
        plugin = find(row.plugin_id)
        if plugin is None or not plugin.actions:
            continue
        group = {"pluginSlug": plugin.slug, "pluginName": plugin.name, "instanceId": row.id,
                 "actions": [action.body() for action in plugin.actions]}
        if plugin.icon:
            group["pluginIcon"] = plugin.icon
        groups.append(group)
    return {"sessionId": session.id, "plugins": groups}


def summary_instance(project: Project, session_id: str) -> tuple[Session, PluginInstance]:
    """The session (404) and the project's enabled session-summary instance (409 without one)."""
    session = get_session(project, session_id)
    instance = enabled_instance(project.id, SUMMARY)
    if instance is None:
        raise conflict("no summary plugin enabled for this project; install and enable the session-summary plugin")
    return session, instance
