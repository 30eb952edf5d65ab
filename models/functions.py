"""A project's functions runtime: its settings, its activation, what it should run and what it runs.

One :class:`FunctionRuntime` row per project that touched functions. It holds

- the **settings** clients read and write (``FunctionSettings``): limits (``maxFunctions``, ``maxMemoryPerFunction``
  within the server's ceilings), the shared npm ``dependencies`` and environment variables (every value encrypted
  at rest; secret ones answered as ``***``);
- the **activation** (``activateFunctions``): a step the supervisor walks (``pending → registry → image → config →
  deployment → server → complete``, or ``error`` with ``activationError``); clients poll ``getSettings``;
- the **wanted state** (``desired_state`` running/stopped, ``generation`` bumped by everything that needs a restart:
  restart, upgrade, new env vars, newly installed dependencies; ``pending_dependencies`` to install);
- the **observed state**, written only by the supervisor holding the project's **lease** (``lease_owner`` /
  ``lease_until``, taken and renewed by one conditional UPDATE — :func:`claim` — so two Cortex processes never
  supervise one project): ``runtime_status``, the running process (``runtime_encrypted``: pid, port, token,
  version), ``running_generation``, restarts and their backoff.

Everything here is data and rules; ``cortex.engines.functions`` does the work through a provider
(``cortex.integrations.functions``).
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

import peewee as pw

from cortex.lib import crypto
from cortex.lib.npm import validate_dependencies
from models.base import (
    BaseModel,
    JSONField,
    UTCDateTimeField,
    invalid,
    locked,
    new_id,
    transaction,
    utcnow,
)
from models.identity import Project, profile_body

STEPS = ("pending", "registry", "image", "config", "deployment", "server", "complete")
ACTIVATING = STEPS[:-1]  # an activation is under way
DEFAULT_MAX_FUNCTIONS = 10
DEFAULT_MAX_MEMORY = 512
MAX_ENV_VARS = 100
MAX_ENV_VALUE = 32 * 1024
ENV_KEY = re.compile(r"^[A-Z_][A-Z0-9_]*$")
RESERVED_PREFIX = "CORTEX_"
MASK = "***"
LEASE_SECONDS = 15.0  # a supervisor that stops renewing loses the project after this long


class FunctionRuntime(BaseModel):
    """A project's functions settings and runtime (one row per project)."""

    project = pw.ForeignKeyField(Project, on_delete="CASCADE", unique=True)
    tenant_id = pw.CharField(max_length=36)
    is_activated = pw.BooleanField(default=False)
    activation_step = pw.CharField(max_length=16, null=True)
    activation_error = pw.TextField(null=True)
    resource_package = pw.CharField(max_length=64, null=True)
    location = JSONField(null=True)  # the Location body chosen at activation
    fleet_region = pw.TextField(null=True)  # kept as given (deprecated upstream; the local provider has none)
    max_functions = pw.IntegerField(default=DEFAULT_MAX_FUNCTIONS)
    max_memory_per_function = pw.IntegerField(default=DEFAULT_MAX_MEMORY)
    dependencies = JSONField(default=dict)  # name → spec: what is installed (or will be at activation)
    pending_dependencies = JSONField(null=True)  # name → spec being installed
    dependencies_status = pw.CharField(max_length=16, default="installed")  # installed | installing | failed
    dependencies_error = pw.TextField(null=True)  # npm's output of the last failed install
    env_encrypted = pw.TextField(null=True)  # encrypted JSON list of {key, value, isSecret}
    runtime_version = pw.CharField(max_length=16, null=True)  # pinned version (None: unpinned)
    desired_state = pw.CharField(max_length=16, default="stopped")  # running | stopped
    generation = pw.IntegerField(default=0)  # bumped by every change the runtime must restart for
    runtime_status = pw.CharField(max_length=16, default="stopped")  # running | stopped | starting | stopping
    status_message = pw.TextField(null=True)
    runtime_encrypted = pw.TextField(null=True)  # encrypted JSON RuntimeHandle of the running process
    running_generation = pw.IntegerField(null=True)
    restarts = pw.IntegerField(default=0)  # unplanned restarts in a row (the backoff grows with them)
    next_start_at = UTCDateTimeField(null=True)
    lease_owner = pw.CharField(max_length=128, null=True)
    lease_until = UTCDateTimeField(null=True)
    updated_at = UTCDateTimeField(default=utcnow)


MODELS = [FunctionRuntime]


# ---------------------------------------------------------------- reading


def runtime_of(project: Project, lock: bool = False) -> FunctionRuntime:
    """The project's row, created with the defaults on first use."""
    def read():  # a new query each time: a Peewee query keeps its first result
        query = FunctionRuntime.select().where(FunctionRuntime.project == project.id)
        return (locked(query) if lock else query).first()

    row = read()
    if row is None:
        FunctionRuntime.insert(id=new_id(), project=project.id, tenant_id=project.tenant_id, dependencies={},
                               created_at=utcnow(), updated_at=utcnow()).on_conflict_ignore().execute()
        row = read()
    return row


def current(project: Project) -> FunctionRuntime:
    """The project's row for reading: the stored one, or the defaults (not stored: a read writes nothing)."""
    row = FunctionRuntime.get_or_none(FunctionRuntime.project == project.id)
    return row if row is not None else FunctionRuntime(project=project.id, tenant_id=project.tenant_id,
                                                       dependencies={})


def env_vars(row: FunctionRuntime) -> list[dict]:
    """The project's environment variables, decrypted: ``[{key, value, isSecret}]``."""
    return json.loads(crypto.decrypt(row.env_encrypted)) if row.env_encrypted else []


def function_env(row: FunctionRuntime) -> dict[str, str]:
    """What functions get as environment (before CORTEX_API_URL / CORTEX_PROJECT_ID are added)."""
    return {item["key"]: item["value"] for item in env_vars(row)}


def handle_of(row: FunctionRuntime) -> dict | None:
    """The running process as the supervisor recorded it (pid, port, token, version, startedAt), or None."""
    return decrypt_handle(row.runtime_encrypted)


def decrypt_handle(encrypted: str | None) -> dict | None:
    return json.loads(crypto.decrypt(encrypted)) if encrypted else None


def settings_body(row: FunctionRuntime) -> dict:
    """FunctionSettings (secret env values masked)."""
    body = {
        "isActivated": row.is_activated,
        "maxFunctions": row.max_functions,
        "maxMemoryPerFunction": row.max_memory_per_function,
        "dependencies": [{"name": name, "version": spec} for name, spec in (row.dependencies or {}).items()],
        "envVars": [{"key": item["key"], "value": MASK if item["isSecret"] else item["value"],
                     "isSecret": item["isSecret"]} for item in env_vars(row)],
        "dependenciesStatus": row.dependencies_status,
    }
    if row.activation_step:
        body["activationStep"] = row.activation_step
    if row.activation_error:
        body["activationError"] = row.activation_error
    if row.resource_package:
        body["resourcePackageSlug"] = row.resource_package
    if row.location:
        body["locationCity"] = row.location.get("city")
    if row.fleet_region:
        body["fleetRegion"] = row.fleet_region
    if row.pending_dependencies is not None:
        body["pendingDependencies"] = [{"name": n, "version": v} for n, v in row.pending_dependencies.items()]
    if row.dependencies_error:
        body["dependenciesError"] = row.dependencies_error
    return body


def get_settings(project: Project) -> dict:
    return settings_body(current(project))


def verify_credentials(user_id: str | None) -> dict:
    """verifyFleetCredentials: the local provider needs no outside credentials — valid, with the caller's email
    (an API key's: its creator's)."""
    profile = profile_body(user_id)
    return {"valid": True, "email": profile["email"] if profile else ""}


def versions_body(project: Project, versions: list[dict]) -> dict:
    """RuntimeVersionsResponse: the server's versions (oldest first) and the project's pin."""
    row = current(project)
    latest = versions[-1]["version"]
    return {"current": row.runtime_version, "latest": latest, "upgradeAvailable": row.runtime_version != latest,
            "versions": versions}


# ---------------------------------------------------------------- settings, dependencies, env vars


def _whole(value, field: str, low: int, high: int, ceiling_variable: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise invalid(f"{field} must be a whole number")
    if not low <= value <= high:
        raise invalid(f"{field} must be between {low} and {high} (this server's ceiling, {ceiling_variable})")
    return int(value)


def update_settings(project: Project, body: dict, max_functions: int, max_memory: int) -> dict:
    """updateSettings: ``maxFunctions`` (1 … ``max_functions``), ``maxMemoryPerFunction`` (128 … ``max_memory``
    MB), ``fleetRegion`` (kept; the local provider has no regions). Beyond a ceiling → 400."""
    with transaction():
        row = runtime_of(project, lock=True)
        if body.get("maxFunctions") is not None:
            row.max_functions = _whole(body["maxFunctions"], "maxFunctions", 1, max_functions,
                                       "CORTEX_FUNCTIONS_MAX_FUNCTIONS")
        if body.get("maxMemoryPerFunction") is not None:
            row.max_memory_per_function = _whole(body["maxMemoryPerFunction"], "maxMemoryPerFunction", 128,
                                                 max_memory, "CORTEX_FUNCTIONS_MAX_MEMORY_MB")
        if body.get("fleetRegion") is not None:
            region = body["fleetRegion"].strip()
            if len(region) > 64:
                raise invalid("fleetRegion must be at most 64 characters")
            row.fleet_region = region or None
        row.updated_at = utcnow()
        row.save()
    return settings_body(row)


def update_dependencies(project: Project, items: list) -> dict:
    """updateDependencies: validated (npm names, semver ranges or dist-tags, at most 50). Before activation they
    are stored and installed by the activation; afterwards they are installed by the supervisor (status
    ``installing``) and the runtime restarts on success; a failed install keeps the previous ones
    (``dependenciesStatus`` ``failed``, ``dependenciesError``: npm's output)."""
    try:
        wanted = validate_dependencies(items)
    except ValueError as exc:
        raise invalid(str(exc)) from None
    with transaction():
        row = runtime_of(project, lock=True)
        if row.is_activated:
            row.pending_dependencies = wanted
            row.dependencies_status = "installing"
        else:
            row.dependencies, row.pending_dependencies, row.dependencies_status = wanted, None, "installed"
        row.dependencies_error = None
        row.updated_at = utcnow()
        row.save()
    return settings_body(row)


def clean_env(items: list, previous: list[dict]) -> list[dict]:
    if len(items) > MAX_ENV_VARS:
        raise invalid(f"envVars: at most {MAX_ENV_VARS} variables, not {len(items)}")
    before = {item["key"]: item for item in previous}
    seen, result = set(), []
    for index, item in enumerate(items):
        key, value, secret = item.get("key"), item.get("value"), bool(item.get("isSecret", False))
        where = f"envVars[{index}]"
        if not isinstance(key, str) or not ENV_KEY.match(key):
            raise invalid(f"{where}.key must match ^[A-Z_][A-Z0-9_]*$ (upper-case letters, digits, _)")
        if key.startswith(RESERVED_PREFIX):
            raise invalid(f"{where}.key: the {RESERVED_PREFIX} prefix is reserved for what Cortex gives functions")
        if key in seen:
            raise invalid(f"{where}.key: {key} is given twice")
        seen.add(key)
        if not isinstance(value, str) or len(value) > MAX_ENV_VALUE or "\x00" in value:
            raise invalid(f"{where}.value must be a string of at most {MAX_ENV_VALUE} characters")
        if secret and value == MASK and before.get(key, {}).get("isSecret"):
            value = before[key]["value"]  # the mask sent back keeps the stored secret
        result.append({"key": key, "value": value, "isSecret": secret})
    return result


def update_env_vars(project: Project, items: list) -> dict:
    """updateEnvVars: replaces the list (keys ``^[A-Z_][A-Z0-9_]*$``, ``CORTEX_`` reserved, at most 100; a secret
    sent back as ``***`` keeps its value); encrypted at rest; the runtime restarts with them."""
    with transaction():
        row = runtime_of(project, lock=True)
        clean = clean_env(items, env_vars(row))
        row.env_encrypted = crypto.encrypt(json.dumps(clean)) if clean else None
        if row.is_activated:
            row.generation += 1
        row.updated_at = utcnow()
        row.save()
    return settings_body(row)


# ---------------------------------------------------------------- activation and lifecycle (requests)


def activate(project: Project, body: dict, packages: dict[str, dict], locations: list[dict],
             latest_version: str) -> None:
    """activateFunctions: validate the package and location and queue the activation (step ``pending``). 400 while
    an activation runs or once it completed; one that failed (``error``) may be started again."""
    slug = body.get("resourcePackage") or "local-s1"
    if slug not in packages:
        raise invalid(f"resourcePackage {slug!r} is not offered here; choose one of {', '.join(packages)}")
    wanted = (body.get("locationCity"), body.get("locationContinent"), body.get("locationCountry"))
    location = next((loc for loc in locations if (loc["city"], loc["continent"], loc["country"]) == wanted), None)
    if location is None:
        offered = "; ".join(f"{loc['city']}/{loc['continent']}/{loc['country']}" for loc in locations)
        raise invalid(f"location {'/'.join(map(str, wanted))} is not offered here; choose {offered}")
    with transaction():
        row = runtime_of(project, lock=True)
        if row.activation_step in ACTIVATING:
            raise invalid(f"functions are being activated (step {row.activation_step}); poll getSettings")
        if row.is_activated:
            raise invalid("functions are activated already")
        row.activation_step, row.activation_error = "pending", None
        row.resource_package, row.location = slug, location
        row.runtime_version = row.runtime_version or latest_version
        row.desired_state = "running"
        row.updated_at = utcnow()
        row.save()


def _activated(project: Project) -> FunctionRuntime:
    row = runtime_of(project, lock=True)
    if not row.is_activated:
        raise invalid("functions are not activated for this project (activateFunctions first)")
    return row


def status_body(row: FunctionRuntime, latest: str) -> dict:
    """RuntimeStatusResponse from what the supervisor observed."""
    status = row.runtime_status if row.is_activated else "stopped"
    body = {"status": status, "serverCount": 1 if status == "running" else 0,
            "message": row.status_message or _MESSAGES.get(status, status),
            "runtimeVersion": row.runtime_version, "latestVersion": latest,
            "upgradeAvailable": row.runtime_version != latest}
    return body


_MESSAGES = {"running": "Runtime is running", "stopped": "Runtime is stopped", "starting": "Runtime is starting",
             "stopping": "Runtime is stopping"}


def runtime_status(project: Project, latest: str) -> dict:
    return status_body(current(project), latest)


def set_desired(project: Project, state: str, restart: bool = False) -> dict:
    """start / stop / restart: record what the supervisor must bring about; StartRuntimeResponse-like body."""
    with transaction():
        row = _activated(project)
        row.desired_state = state
        if restart:
            row.generation += 1
        if state == "running" and row.runtime_status != "running":
            row.runtime_status, row.status_message = "starting", None
        elif state == "running" and restart:
            row.runtime_status, row.status_message = "starting", "Runtime is restarting"
        elif state == "stopped" and row.runtime_status != "stopped":
            row.runtime_status, row.status_message = "stopping", None
        row.restarts, row.next_start_at = 0, None
        row.updated_at = utcnow()
        row.save()
    verb = {"running": "restarting" if restart else "starting", "stopped": "stopping"}[state]
    return {"message": f"Runtime {verb}", "status": row.runtime_status}


def upgrade(project: Project, version: str, known: list[str], latest: str) -> dict:
    """upgradeRuntime: pin a known version (400 otherwise) and restart on it."""
    if version not in known:
        raise invalid(f"version {version!r} is not a runtime version of this server ({', '.join(known)})")
    with transaction():
        row = _activated(project)
        row.runtime_version = version
        row.generation += 1
        row.desired_state = "running"
        row.runtime_status, row.status_message = "starting", f"Restarting on runtime {version}"
        row.updated_at = utcnow()
        row.save()
    return status_body(row, latest)


# ---------------------------------------------------------------- the supervisor's side


def supervised(now: datetime | None = None) -> list[str]:
    """Project ids a supervisor must look at: activations under way, activated projects."""
    query = FunctionRuntime.select(FunctionRuntime.project).where(
        FunctionRuntime.is_activated | FunctionRuntime.activation_step.in_(list(ACTIVATING)))
    return [project_id for (project_id,) in query.tuples()]


def claim(project_id: str, owner: str, now: datetime | None = None, seconds: float = LEASE_SECONDS) -> bool:
    """Take or renew the project's lease for ``owner`` (one conditional UPDATE: exactly one process wins)."""
    now = now or utcnow()
    with transaction():
        won = (FunctionRuntime.update(lease_owner=owner, lease_until=now + timedelta(seconds=seconds))
               .where((FunctionRuntime.project == project_id)
                      & ((FunctionRuntime.lease_owner == owner) | FunctionRuntime.lease_owner.is_null()
                         | (FunctionRuntime.lease_until < now)))
               .execute())
    return bool(won)


def release(project_id: str, owner: str) -> None:
    with transaction():
        FunctionRuntime.update(lease_owner=None, lease_until=None).where(
            (FunctionRuntime.project == project_id) & (FunctionRuntime.lease_owner == owner)).execute()


def owned_row(project_id: str, owner: str) -> FunctionRuntime | None:
    """The row, when ``owner`` holds its lease."""
    return FunctionRuntime.get_or_none((FunctionRuntime.project == project_id)
                                       & (FunctionRuntime.lease_owner == owner))


def record(project_id: str, owner: str, **changes) -> bool:
    """Write observed state (only while holding the lease); ``handle`` is encrypted. Whether it was written."""
    if "handle" in changes:
        handle = changes.pop("handle")
        changes["runtime_encrypted"] = crypto.encrypt(json.dumps(handle)) if handle else None
    changes["updated_at"] = utcnow()
    with transaction():
        return bool(FunctionRuntime.update(**changes).where(
            (FunctionRuntime.project == project_id) & (FunctionRuntime.lease_owner == owner)).execute())

