"""A project's functions: their draft, frozen versions, deployments on the runtime, logs and event-handler queue.

- :class:`Function` — the draft (``createFunction`` / ``updateFunction``: code, entrypoint, runtime, auth mode, limits,
  env vars encrypted like the project's), a slug unique per project (generated from the name with python-slugify),
  at most the project's ``maxFunctions``.
- :class:`FunctionVersion` — ``publishVersion`` freezes the draft as version N+1 (``building``), the runtime builds it
  (syntax and load check in an isolated worker), it ends ``ready`` (its exported ``on…`` handlers recorded) or
  ``failed`` (``buildError``; the previous live version keeps serving).
- :class:`FunctionDeployment` — which version is live on the runtime (newest row = current): ``running`` after a
  publish or ``deployFunction`` (any ready version: a rollback), ``stopped`` after ``stopDeployment``; invocations
  count on it (``requestCount``, ``lastInvokedAt``).
- :class:`FunctionLog` — ``console.*`` lines of invocations (time, level, request id), newest first.
- :class:`FunctionEventJob` — events a function's ``on<EventType>`` handler must get, per function in log order,
  retried with backoff (the functions engine).

The runtime work (build, deploy, invoke) goes through the provider in ``cortex``; this module holds the rules and
the rows.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

import peewee as pw
from slugify import slugify

from cortex.lib import crypto
from models.base import (
    BaseModel,
    JSONField,
    Prepared,
    UTCDateTimeField,
    conflict,
    insert_new,
    invalid,
    new_id,
    not_found,
    own_connection,
    page_bounds,
    parse_instant,
    project_row,
    rfc3339,
    transaction,
    utcnow,
)
from models.functions import MASK, FunctionRuntime, clean_env, env_vars, runtime_of
from models.identity import Project

RUNTIMES = {"nodejs20": 20, "nodejs22": 22}  # the document's runtimes → the Node.js major they need
AUTH_MODES = ("public", "api_key", "signed")
MIN_TIMEOUT, MAX_TIMEOUT, DEFAULT_TIMEOUT = 1000, 300_000, 30_000
MIN_MEMORY, MAX_MEMORY, DEFAULT_MEMORY = 128, 1024, 256
MAX_CODE = 512 * 1024  # characters of source code
MAX_NAME = 200
MAX_LOG_LINES = 10_000  # kept per function (the oldest go)
SLUG = 63


class Function(BaseModel):
    tenant_id = pw.CharField(max_length=36)
    project = pw.ForeignKeyField(Project, on_delete="CASCADE", index=False)
    name = pw.TextField()
    slug = pw.CharField(max_length=SLUG)
    description = pw.TextField(null=True)
    draft_code = pw.TextField()
    draft_entrypoint = pw.CharField(max_length=128, default="handler")
    runtime = pw.CharField(max_length=16, default="nodejs20")
    auth_mode = pw.CharField(max_length=16, default="api_key")
    timeout = pw.IntegerField(default=DEFAULT_TIMEOUT)
    memory = pw.IntegerField(default=DEFAULT_MEMORY)
    env_encrypted = pw.TextField(null=True)
    published_version_id = pw.CharField(max_length=36, null=True)  # the newest ready version
    updated_at = UTCDateTimeField(default=utcnow)

    class Meta:
        indexes = ((("project", "slug"), True),)


class FunctionVersion(BaseModel):
    function = pw.ForeignKeyField(Function, on_delete="CASCADE", index=False)
    version = pw.IntegerField()
    code = pw.TextField()
    entrypoint = pw.CharField(max_length=128)
    status = pw.CharField(max_length=16, default="building")  # building | ready | failed
    build_logs = pw.TextField(null=True)
    build_error = pw.TextField(null=True)
    handlers = JSONField(default=list)  # exported on… event handlers
    runtime = pw.CharField(max_length=16)
    timeout = pw.IntegerField()
    memory = pw.IntegerField()
    published_by = pw.CharField(max_length=36, null=True)
    changelog = pw.TextField(null=True)

    class Meta:
        indexes = ((("function", "version"), True),)


class FunctionDeployment(BaseModel):
    function = pw.ForeignKeyField(Function, on_delete="CASCADE", index=False)
    version = pw.ForeignKeyField(FunctionVersion, on_delete="CASCADE")
    status = pw.CharField(max_length=16, default="running")  # pending | deploying | running | stopped | failed
    last_error = pw.TextField(null=True)
    request_count = pw.BigIntegerField(default=0)
    last_invoked_at = UTCDateTimeField(null=True)
    updated_at = UTCDateTimeField(default=utcnow)

    class Meta:
        indexes = ((("function", "created_at"), False),)


class FunctionLog(BaseModel):
    function = pw.ForeignKeyField(Function, on_delete="CASCADE", index=False)
    request_id = pw.CharField(max_length=64, null=True)
    level = pw.CharField(max_length=8)
    message = pw.TextField()
    time = UTCDateTimeField()

    class Meta:
        indexes = ((("function", "time"), False),)


class FunctionEventJob(BaseModel):
    function = pw.ForeignKeyField(Function, on_delete="CASCADE", index=False)
    event_seq = pw.BigIntegerField()
    handler = pw.CharField(max_length=64)
    attempts = pw.IntegerField(default=0)
    due_at = UTCDateTimeField()
    leased_until = UTCDateTimeField(null=True)  # a process is calling it (several processes run the engine)
    last_error = pw.TextField(null=True)

    class Meta:
        indexes = ((("function", "event_seq", "handler"), True),)


MODELS = [Function, FunctionVersion, FunctionDeployment, FunctionLog, FunctionEventJob]


# ---------------------------------------------------------------- bodies


def _env(row: Function) -> list[dict]:
    return json.loads(crypto.decrypt(row.env_encrypted)) if row.env_encrypted else []


def current_deployment(function_id: str) -> FunctionDeployment | None:
    invocations.flush()  # this process's counts first
    return (FunctionDeployment.select().where(FunctionDeployment.function == function_id)
            .order_by(FunctionDeployment.created_at.desc(), FunctionDeployment.id.desc()).first())


def deployment_body(row: FunctionDeployment, invoke_url: str | None = None) -> dict:
    body = {"id": row.id, "functionId": row.function_id, "versionId": row.version_id, "status": row.status,
            "requestCount": row.request_count, "createdAt": rfc3339(row.created_at),
            "updatedAt": rfc3339(row.updated_at)}
    if row.last_invoked_at:
        body["lastInvokedAt"] = rfc3339(row.last_invoked_at)
    if row.last_error:
        body["lastError"] = row.last_error
    if invoke_url:
        body["invokeUrl"] = invoke_url
    return body


def function_body(row: Function, deployment: FunctionDeployment | None = None, *, with_deployment=True) -> dict:
    """Function (env secrets masked); ``status`` published while its current deployment runs."""
    if with_deployment and deployment is None:
        deployment = current_deployment(row.id)
    live = deployment is not None and deployment.status == "running"
    body = {
        "id": row.id, "tenantId": row.tenant_id, "projectId": row.project_id, "name": row.name, "slug": row.slug,
        "draftCode": row.draft_code, "draftEntrypoint": row.draft_entrypoint, "runtime": row.runtime,
        "authMode": row.auth_mode, "timeout": row.timeout, "memory": row.memory,
        "envVars": [{"key": i["key"], "value": MASK if i["isSecret"] else i["value"], "isSecret": i["isSecret"]}
                    for i in _env(row)],
        "status": "published" if live else "draft",
        "createdAt": rfc3339(row.created_at), "updatedAt": rfc3339(row.updated_at),
    }
    if row.description is not None:
        body["description"] = row.description
    if row.published_version_id:
        body["publishedVersionId"] = row.published_version_id
    if deployment is not None:
        body["activeDeployment"] = deployment_body(deployment)
    return body


def version_body(row: FunctionVersion) -> dict:
    body = {"id": row.id, "functionId": row.function_id, "version": row.version, "code": row.code,
            "entrypoint": row.entrypoint, "status": row.status, "runtime": row.runtime, "timeout": row.timeout,
            "memory": row.memory, "createdAt": rfc3339(row.created_at)}
    for key, value in (("buildLogs", row.build_logs), ("buildError", row.build_error),
                       ("publishedBy", row.published_by), ("changelog", row.changelog)):
        if value is not None:
            body[key] = value
    return body


# ---------------------------------------------------------------- validation


def _text(body: dict, key: str, limit: int, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise invalid(f"{key} is required")
        return None
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > limit:
        raise invalid(f"{key} must be a{' non-empty' if required else ''} string of at most {limit} characters")
    return value


def _whole_in(body: dict, key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or not low <= value <= high:
        raise invalid(f"{key} must be a whole number from {low} to {high}")
    return int(value)


def _entrypoint(value) -> str:
    if not isinstance(value, str) or not value.isidentifier() or len(value) > 128:
        raise invalid("entrypoint must be a JavaScript identifier (the exported function's name), e.g. handler")
    return value


def _runtime(value, node_major: int | None) -> str:
    if value not in RUNTIMES:
        raise invalid(f"runtime must be one of {', '.join(RUNTIMES)}")
    if node_major is None or node_major < RUNTIMES[value]:
        raise invalid(f"runtime {value} needs Node.js {RUNTIMES[value]}; this server runs Node.js "
                      f"{node_major if node_major is not None else '(none found)'}")
    return value


def _memory(value: int, settings: FunctionRuntime) -> int:
    if value > settings.max_memory_per_function:
        raise invalid(f"memory {value} MB is above the project's maxMemoryPerFunction "
                      f"({settings.max_memory_per_function} MB)")
    return value


def _slug(body: dict, name: str) -> str:
    given = body.get("slug")
    if given is not None:
        if not isinstance(given, str) or slugify(given, max_length=SLUG) != given or not given:
            raise invalid("slug must be lower-case letters, digits and hyphens (at most 63), e.g. process-webhook")
        return given
    slug = slugify(name, max_length=SLUG)
    if not slug:
        raise invalid("name gives no slug (no letters or digits); send a slug")
    return slug


# ---------------------------------------------------------------- operations


def get_function(project: Project, function_id: str, lock: bool = False) -> Function:
    return project_row(Function, project.id, function_id, "Function", lock=lock)


def list_functions(project: Project) -> list[dict]:
    rows = list(Function.select().where(Function.project == project.id).order_by(Function.created_at, Function.id))
    return [function_body(row) for row in rows]


def create_function(project: Project, body: dict, node_major: int | None) -> dict:
    """createFunction (see the module doc): 400 for bad fields or beyond ``maxFunctions``, 409 for a taken slug."""
    name = _text(body, "name", MAX_NAME, required=True).strip()
    code = _text(body, "code", MAX_CODE, required=True)
    slug = _slug(body, name)
    now = utcnow()
    with transaction():
        settings = runtime_of(project, lock=True)  # the project's row: serialises creations (the cap below)
        count = Function.select().where(Function.project == project.id).count()
        if count >= settings.max_functions:
            raise invalid(f"the project has {count} functions, its maxFunctions; delete one or raise maxFunctions")
        if Function.select().where((Function.project == project.id) & (Function.slug == slug)).exists():
            raise conflict(f"the project has a function with the slug {slug!r} already")
        env = clean_env(body.get("envVars") or [], [])
        row = Function(
            id=new_id(), tenant_id=project.tenant_id, project=project.id, name=name, slug=slug,
            description=_text(body, "description", 2000), draft_code=code,
            draft_entrypoint=_entrypoint(body.get("entrypoint", "handler")),
            runtime=_runtime(body.get("runtime", "nodejs20"), node_major),
            auth_mode=body.get("authMode", "api_key"),
            timeout=_whole_in(body, "timeout", MIN_TIMEOUT, MAX_TIMEOUT) or DEFAULT_TIMEOUT,
            memory=_memory(_whole_in(body, "memory", MIN_MEMORY, MAX_MEMORY) or DEFAULT_MEMORY, settings),
            env_encrypted=crypto.encrypt(json.dumps(env)) if env else None, created_at=now, updated_at=now)
        if row.auth_mode not in AUTH_MODES:
            raise invalid(f"authMode must be one of {', '.join(AUTH_MODES)}")
        row.save(force_insert=True)
    return function_body(row, with_deployment=False)


def update_function(project: Project, function_id: str, body: dict, node_major: int | None) -> dict:
    """updateFunction: edits the draft only (the live version keeps serving until a publish)."""
    with transaction():
        row = get_function(project, function_id, lock=True)
        settings = runtime_of(project)
        if body.get("name") is not None:
            row.name = _text(body, "name", MAX_NAME, required=True).strip()
        if "description" in body:
            row.description = _text(body, "description", 2000)
        if body.get("draftCode") is not None:
            row.draft_code = _text(body, "draftCode", MAX_CODE)
        if body.get("draftEntrypoint") is not None:
            row.draft_entrypoint = _entrypoint(body["draftEntrypoint"])
        if body.get("runtime") is not None:
            row.runtime = _runtime(body["runtime"], node_major)
        if body.get("authMode") is not None:
            row.auth_mode = body["authMode"]
        if body.get("timeout") is not None:
            row.timeout = _whole_in(body, "timeout", MIN_TIMEOUT, MAX_TIMEOUT)
        if body.get("memory") is not None:
            row.memory = _memory(_whole_in(body, "memory", MIN_MEMORY, MAX_MEMORY), settings)
        if body.get("envVars") is not None:
            env = clean_env(body["envVars"], _env(row))
            row.env_encrypted = crypto.encrypt(json.dumps(env)) if env else None
        row.updated_at = max(utcnow(), row.updated_at + timedelta(milliseconds=1))
        row.save()
    return function_body(row)


def delete_function(project: Project, function_id: str) -> Function:
    """deleteFunction: the function, its versions, deployments, logs and queued events go (the caller takes it off
    the runtime)."""
    with transaction():
        row = get_function(project, function_id, lock=True)
        row.delete_instance(recursive=False)
    return row


def list_versions(project: Project, function_id: str) -> list[dict]:
    function = get_function(project, function_id)
    rows = FunctionVersion.select().where(FunctionVersion.function == function.id).order_by(
        FunctionVersion.version.desc())
    return [version_body(row) for row in rows]


def new_version(project: Project, function_id: str, published_by: str | None, changelog) -> FunctionVersion:
    """Freeze the draft as version N+1, status ``building`` (committed: clients see it while it builds)."""
    if changelog is not None and (not isinstance(changelog, str) or len(changelog) > 4000):
        raise invalid("changelog must be a string of at most 4000 characters")
    with transaction():
        function = get_function(project, function_id, lock=True)
        if not runtime_of(project).is_activated:
            raise invalid("functions are not activated for this project (activateFunctions first)")
        last = FunctionVersion.select(pw.fn.MAX(FunctionVersion.version)).where(
            FunctionVersion.function == function.id).scalar() or 0
        version = FunctionVersion.create(
            id=new_id(), function=function.id, version=last + 1, code=function.draft_code,
            entrypoint=function.draft_entrypoint, status="building", runtime=function.runtime,
            timeout=function.timeout, memory=function.memory, published_by=published_by, changelog=changelog,
            handlers=[], created_at=utcnow())
    return version


def finish_build(version: FunctionVersion, ok: bool, logs: str, error: str | None, handlers) -> FunctionVersion:
    with transaction():
        version.status = "ready" if ok else "failed"
        version.build_logs, version.build_error = logs or None, (error or None) if not ok else None
        version.handlers = list(handlers) if ok else []
        version.save(only=[FunctionVersion.status, FunctionVersion.build_logs, FunctionVersion.build_error,
                           FunctionVersion.handlers])
    return version


def ready_version(project: Project, function: Function, version_id: str | None) -> FunctionVersion:
    """The version to deploy: ``version_id`` (a ready version of this function: 400 otherwise) or the newest ready
    one (400 when there is none)."""
    query = FunctionVersion.select().where((FunctionVersion.function == function.id)
                                           & (FunctionVersion.status == "ready"))
    if version_id:
        version = query.where(FunctionVersion.id == version_id).first()
        if version is None:
            raise invalid(f"versionId {version_id} is not a ready version of this function")
        return version
    version = query.order_by(FunctionVersion.version.desc()).first()
    if version is None:
        raise invalid("the function has no ready version; publish it first")
    return version


def record_deployment(function: Function, version: FunctionVersion, status: str = "running",
                      error: str | None = None) -> FunctionDeployment:
    """A new current deployment of ``version`` (keeps counting requests from the previous one)."""
    now = utcnow()
    with transaction():
        previous = current_deployment(function.id)
        row = FunctionDeployment.create(
            id=new_id(), function=function.id, version=version.id, status=status, last_error=error,
            request_count=previous.request_count if previous else 0,
            last_invoked_at=previous.last_invoked_at if previous else None, created_at=now, updated_at=now)
        if status == "running":
            Function.update(published_version_id=version.id, updated_at=now).where(
                Function.id == function.id).execute()
    return row


def stop_deployment(project: Project, function_id: str) -> Function:
    """stopDeployment: the current deployment ``stopped`` (400 when nothing runs)."""
    with transaction():
        function = get_function(project, function_id, lock=True)
        deployment = current_deployment(function.id)
        if deployment is None or deployment.status != "running":
            raise invalid("the function is not deployed")
        deployment.status, deployment.updated_at = "stopped", utcnow()
        deployment.save()
    return function


def function_env(project_runtime: FunctionRuntime, function: Function, api_url: str) -> dict[str, str]:
    """What the function sees as process.env: the project's env vars, its own (they win), CORTEX_API_URL,
    CORTEX_PROJECT_ID."""
    env = {item["key"]: item["value"] for item in env_vars(project_runtime)}
    env.update((item["key"], item["value"]) for item in _env(function))
    env.update(CORTEX_API_URL=api_url, CORTEX_PROJECT_ID=function.project_id)
    return env


def deploy_spec(function: Function, version: FunctionVersion, project_runtime: FunctionRuntime, api_url: str,
                memory_cap: int | None = None) -> dict:
    """What the runtime loads for a live function (``functions/<slug>.json``)."""
    memory = min(version.memory, memory_cap) if memory_cap else version.memory
    return {"slug": function.slug, "functionId": function.id, "versionId": version.id, "version": version.version,
            "code": version.code, "entrypoint": version.entrypoint, "timeout": version.timeout,
            "memoryMib": memory, "env": function_env(project_runtime, function, api_url)}


def live_functions(project_id: str) -> list[tuple[Function, FunctionVersion]]:
    """Functions of the project whose current deployment runs, with the deployed version."""
    result = []
    for function in Function.select().where(Function.project == project_id):
        deployment = current_deployment(function.id)
        if deployment is not None and deployment.status == "running":
            result.append((function, FunctionVersion.get_by_id(deployment.version_id)))
    return result


# ---------------------------------------------------------------- invocation


@dataclass(frozen=True)
class Invocation:
    """What an invocation needs to know, read in one query (``invocation``)."""

    project_id: str
    function_id: str
    slug: str
    auth_mode: str
    timeout: int
    deployment_id: str | None
    deployment_status: str | None
    version: int | None
    runtime_status: str | None
    runtime_encrypted: str | None


def _invocation_query(ref, slug):
    latest = (FunctionDeployment.alias("latest").select(pw.SQL('"latest"."id"'))
              .where(pw.SQL('"latest"."function_id"') == Function.id)
              .order_by(pw.SQL('"latest"."created_at" DESC'), pw.SQL('"latest"."id" DESC')).limit(1))
    return (Function.select(Project.id, Function.id, Function.slug, Function.auth_mode, Function.timeout,
                            FunctionDeployment.id, FunctionDeployment.status, FunctionVersion.version,
                            FunctionRuntime.runtime_status, FunctionRuntime.runtime_encrypted)
            .join(Project, on=(Function.project == Project.id))
            .join_from(Function, FunctionDeployment, pw.JOIN.LEFT_OUTER, on=(FunctionDeployment.id == latest))
            .join_from(FunctionDeployment, FunctionVersion, pw.JOIN.LEFT_OUTER,
                       on=(FunctionVersion.id == FunctionDeployment.version))
            .join_from(Function, FunctionRuntime, pw.JOIN.LEFT_OUTER, on=(FunctionRuntime.project == Project.id))
            .where(((Project.id == ref) | (Project.app_id == ref)) & (Function.slug == slug))
            .limit(1))


#: The invocation's project, function, current deployment, its version and the runtime: one compiled query (the
#: invoke path's only read; five Peewee queries cost more than the function's own run).
_INVOCATION = Prepared(_invocation_query)


def invocation(project_ref: str, slug: str) -> Invocation:
    """The function ``slug`` of the project (id or appId) with its current deployment and runtime; 404 for
    either."""
    rows = _INVOCATION.rows(ref=project_ref, slug=slug)
    if not rows:
        raise not_found(f"Function {slug}")
    return Invocation(*rows[0])


class InvocationCounts:
    """Invocation counts and log lines of this process, written together every ``delay`` seconds (one
    transaction for many invocations: a write per invocation was most of the invoke path's cost). Reads of
    deployments and logs flush first, so this process's own answers are never behind; another process's may be
    up to ``delay`` behind, and a crash loses at most that much."""

    def __init__(self, delay: float = 0.5):
        self.delay = delay
        self._lock = threading.Lock()
        self._counts: dict[str, list] = {}  # deployment id → [count, last invoked at]
        self._logs: list[dict] = []
        self._timer = None

    def note(self, deployment_id: str, function_id: str, logs, now: datetime | None = None) -> None:
        now = now or utcnow()
        rows = [_log_row(function_id, line, now) for line in logs or ()]
        with self._lock:
            entry = self._counts.setdefault(deployment_id, [0, now])
            entry[0] += 1
            entry[1] = max(entry[1], now)
            self._logs.extend(rows)
            if self._timer is None:
                self._timer = threading.Timer(self.delay, self._flush_later)
                self._timer.daemon = True
                self._timer.start()

    def _flush_later(self) -> None:
        with own_connection():
            self.flush()

    def flush(self) -> None:
        with self._lock:
            counts, logs, self._counts, self._logs, self._timer = self._counts, self._logs, {}, [], None
        if not counts and not logs:
            return
        with transaction():
            for deployment_id, (count, last) in counts.items():
                FunctionDeployment.update(request_count=FunctionDeployment.request_count + count,
                                          last_invoked_at=last).where(FunctionDeployment.id == deployment_id).execute()
            for start in range(0, len(logs), 500):
                live = {row["function"] for row in logs[start:start + 500]}
                known = {fid for (fid,) in Function.select(Function.id).where(Function.id.in_(sorted(live))).tuples()}
                batch = [row for row in logs[start:start + 500] if row["function"] in known]  # deleted meanwhile
                if batch:
                    FunctionLog.insert_many(batch).execute()


#: The one coalescer of this process.
invocations = InvocationCounts()


def _log_row(function_id: str, line: dict, now: datetime) -> dict:
    return {"id": new_id(), "created_at": now, "function": function_id, "request_id": line.get("requestId"),
            "level": str(line.get("level", "log"))[:8], "message": str(line.get("message", ""))[:8192],
            "time": _time(line.get("time"), now)}


def record_invocation(deployment_id: str, function_id: str, logs, now: datetime | None = None) -> None:
    """Count an invocation on the deployment and keep its log lines (written within InvocationCounts.delay)."""
    invocations.note(deployment_id, function_id, logs, now)


def _time(value, fallback: datetime) -> datetime:
    try:
        return parse_instant(value, "time") if isinstance(value, str) else fallback
    except Exception:
        return fallback


def function_logs(project: Project, function_id: str, limit=None, since=None) -> list[dict]:
    """getFunctionLogs: newest first; ``since`` (ISO 8601 with an offset) keeps lines at or after it."""
    invocations.flush()
    function = get_function(project, function_id)
    limit, _offset = page_bounds(limit, None, default=100, maximum=1000)
    query = FunctionLog.select().where(FunctionLog.function == function.id)
    if since is not None:
        query = query.where(FunctionLog.time >= parse_instant(since, "since"))
    rows = query.order_by(FunctionLog.time.desc(), FunctionLog.created_at.desc()).limit(limit)
    return [{"time": rfc3339(row.time), "level": row.level, "message": row.message, "requestId": row.request_id}
            for row in rows]


def prune_logs(function_id: str) -> None:
    """Keep the newest MAX_LOG_LINES lines of a function."""
    cutoff = (FunctionLog.select(FunctionLog.time).where(FunctionLog.function == function_id)
              .order_by(FunctionLog.time.desc()).offset(MAX_LOG_LINES).limit(1).scalar())
    if cutoff is not None:
        FunctionLog.delete().where((FunctionLog.function == function_id) & (FunctionLog.time <= cutoff)).execute()


# ---------------------------------------------------------------- event handlers (the functions engine)

HANDLER_ATTEMPTS = 4  # the first call and 3 retries


def handler_name(event_type: str) -> str:
    """``on`` + the event type in PascalCase: ``session.created`` → ``onSessionCreated``."""
    parts = [part for chunk in event_type.split(".") for part in chunk.replace("-", "_").split("_") if part]
    return "on" + "".join(part[:1].upper() + part[1:] for part in parts)


def event_handlers(project_ids) -> dict[str, list[tuple[str, frozenset[str], datetime]]]:
    """project id → [(function id, the on… handlers its live version exports, when it went live)]."""
    result: dict[str, list] = {}
    ids = sorted(set(project_ids))
    if not ids:
        return result
    for function in Function.select().where(Function.project.in_(ids)):
        deployment = current_deployment(function.id)
        if deployment is None or deployment.status != "running":
            continue
        version = FunctionVersion.get_or_none(FunctionVersion.id == deployment.version_id)
        handlers = version.handlers if version is not None else []
        if handlers:
            result.setdefault(function.project_id, []).append((function.id, frozenset(handlers),
                                                               deployment.created_at))
    return result


def enqueue_events(jobs: list[tuple[str, int, str]], now: datetime | None = None) -> int:
    """Queue (function id, event seq, handler) calls (each once); how many were new."""
    now = now or utcnow()
    new = 0
    with transaction():
        for function_id, seq, handler in jobs:
            new += insert_new(FunctionEventJob, dict(id=new_id(), created_at=now, function=function_id,
                                                     event_seq=seq, handler=handler, attempts=0, due_at=now))
    return new


def due_heads(now: datetime, busy: set[str], limit: int = 100) -> list[FunctionEventJob]:
    """Per function not in ``busy``: its oldest queued event, when that one is due and not leased by another
    process (later ones wait behind it: in order per function); each returned job is leased to the caller."""
    heads = (FunctionEventJob.select(FunctionEventJob.function, pw.fn.MIN(FunctionEventJob.event_seq).alias("seq"))
             .group_by(FunctionEventJob.function).tuples())
    result = []
    for function_id, seq in heads:
        if function_id in busy:
            continue
        job = (FunctionEventJob.select().where((FunctionEventJob.function == function_id)
                                               & (FunctionEventJob.event_seq == seq))
               .order_by(FunctionEventJob.handler).first())
        if job is None or job.due_at > now or (job.leased_until is not None and job.leased_until > now):
            continue
        lease = now + timedelta(milliseconds=MAX_TIMEOUT) + timedelta(seconds=30)
        claimed = FunctionEventJob.update(leased_until=lease).where(
            (FunctionEventJob.id == job.id) & (FunctionEventJob.leased_until.is_null()
                                               | (FunctionEventJob.leased_until <= now))).execute()
        if claimed:  # this process calls it; another one that read the same head does not
            result.append(job)
            if len(result) >= limit:
                break
    return result


def event_job_done(job: FunctionEventJob) -> None:
    FunctionEventJob.delete().where(FunctionEventJob.id == job.id).execute()


def event_job_failed(job: FunctionEventJob, error: str, now: datetime | None = None) -> bool:
    """A failed call: due again after 1, 2, 4 s; False (and the job dropped) after HANDLER_ATTEMPTS calls."""
    now = now or utcnow()
    attempts = job.attempts + 1
    if attempts >= HANDLER_ATTEMPTS:
        event_job_done(job)
        return False
    FunctionEventJob.update(attempts=attempts, last_error=error[:2000], leased_until=None,
                            due_at=now + timedelta(seconds=2 ** (attempts - 1))).where(
        FunctionEventJob.id == job.id).execute()
    return True


def log_line(function_id: str, level: str, message: str, request_id: str | None = None) -> None:
    """A line of Cortex's own about a function (e.g. an event handler given up) in its logs."""
    now = utcnow()
    FunctionLog.insert(id=new_id(), created_at=now, function=function_id, request_id=request_id, level=level,
                       message=message[:8192], time=now).execute()
