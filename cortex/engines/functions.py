"""The functions runtime supervisor: every activated project's runtime process, started, watched and stopped.

:class:`RuntimeSupervisor` runs in ``cortex serve`` and ``cortex runtime`` (unless ``CORTEX_FUNCTIONS_RUNTIME=false``)
and looks at every project with functions once a second (:data:`INTERVAL`):

1. **Lease.** It takes or renews the project's lease (``models.functions.claim``: one conditional UPDATE, valid
   :data:`models.functions.LEASE_SECONDS`). Only the lease holder acts on a project, so several Cortex processes
   on one database never run two runtimes for it; a process that loses the lease stops its local process, one
   that stops cleanly releases its leases (another process takes over at its next tick), one that dies is replaced
   once its lease ran out — and its runtime, orphaned, exits on its own (the runtime watches its parent).
2. **Activation** (``activateFunctions`` set step ``pending``): ``registry`` prepares the project's directory,
   ``image`` writes ``package.json`` and installs the dependencies, ``config`` writes the runtime config,
   ``deployment`` starts the runtime process, ``server`` waits for its health check, then ``complete``. Each step
   is recorded before it runs (clients polling ``getSettings`` see it); a failure stops at ``error`` with
   ``activationError`` (the runtime, if started, is stopped); activating again retries from the start.
3. **Dependencies** waiting to be installed (``updateDependencies`` after activation): installed by the provider
   into a staging directory; on success they replace the old ones and the runtime restarts; on failure the old
   ones keep running and npm's output is recorded (``dependenciesStatus`` ``failed``, ``dependenciesError``).
4. **Reconcile** the wanted state: ``stopped`` → stop the process; ``running`` → start it when there is none (after
   a crash: again with a backoff of 1, 2, 4 … 60 s), restart it when its ``generation`` is behind (restart,
   upgrade, env vars, dependencies), health-check it every tick (three misses in a row: restarted).

The provider (``cortex.integrations.functions``) does the work on the machine; this module decides when.
``run_once()`` runs one pass inline (tests).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from datetime import timedelta

from cortex.integrations.functions.local import LocalProvider
from cortex.integrations.functions.provider import RuntimeHandle, RuntimeProvider, RuntimeUnreachable
from cortex.integrations.npm import (
    InvalidPackageName,
    NpmRegistryClient,
    PackageNotFound,
    RegistryUnavailable,
)
from cortex.lib.background import PeriodicJob
from models import function_code as code
from models import functions as store
from models.base import DomainError, own_connection, utcnow
from models.functions import ACTIVATING, FunctionRuntime

log = logging.getLogger("cortex.functions")

INTERVAL = 1.0  # seconds between two passes
RUNTIMES_WITHOUT_FUNCTIONS = ("v1",)  # runtime versions that only answer health checks
HEALTH_WAIT = 15.0  # seconds a started runtime has to answer its health check
HEALTH_MISSES = 3  # failed health checks in a row before a running runtime is restarted
MAX_BACKOFF = 60.0  # seconds: the longest wait before starting a runtime that keeps dying
STABLE_AFTER = 60.0  # seconds a runtime must run before its crash count is forgotten


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RuntimeSupervisor(PeriodicJob):
    """Runs the runtimes of the projects whose lease it holds (see the module doc)."""

    label = "functions runtime supervisor"

    def __init__(self, provider: RuntimeProvider, api_url: str, *, interval: float = INTERVAL,
                 owner: str | None = None, health_wait: float = HEALTH_WAIT):
        super().__init__("cortex-functions-supervisor", interval)
        self.provider = provider
        self.api_url = api_url
        self.owner = owner or _owner()
        self.health_wait = health_wait
        self.handles: dict[str, RuntimeHandle] = {}  # project id → the process this supervisor runs
        self.misses: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings) -> RuntimeSupervisor:
        return cls(LocalProvider.from_settings(settings), settings.public_url)

    # ------------------------------------------------------------------ one pass

    def run_once(self) -> int:
        """Look at every project with functions once; how many this supervisor holds."""
        held = 0
        with own_connection():
            projects = store.supervised()
            for project_id in projects:
                try:
                    held += self.supervise(project_id)
                except Exception:
                    log.exception("functions runtime of project %s: supervision failed; retrying", project_id)
            for project_id in set(self.handles) - set(projects):  # deactivated or deleted since
                self._stop_local(project_id)
        return held

    def supervise(self, project_id: str) -> int:
        if not store.claim(project_id, self.owner):
            if project_id in self.handles:  # another process holds it now: never two runtimes
                log.warning("functions runtime of project %s: lease lost; stopping the local process", project_id)
                self._stop_local(project_id)
            return 0
        row = store.owned_row(project_id, self.owner)
        if row is None:
            return 0
        if row.activation_step in ACTIVATING:
            self.activate(row)
        elif row.is_activated:
            self.reconcile(row)
        return 1

    # ------------------------------------------------------------------ activation

    def activate(self, row: FunctionRuntime) -> bool:
        """Walk the activation steps from ``pending`` to ``complete`` (or ``error``); whether it completed."""
        project_id = row.project_id
        self._stop_local(project_id)  # a retried activation starts from a clean slate
        step = "pending"
        try:
            step = self._step(project_id, "registry")
            self.provider.prepare(project_id)
            step = self._step(project_id, "image")
            dependencies = dict(row.dependencies or {})
            self.provider.write_package(project_id, dependencies)
            result = self.provider.install(project_id, dependencies)
            if not result.ok:
                raise ActivationFailed(f"installing the dependencies failed: {_tail(result.output)}")
            step = self._step(project_id, "config")
            self.provider.write_config(project_id, self._config(row))
            step = self._step(project_id, "deployment")
            handle = self._start(row)
            step = self._step(project_id, "server", runtime_status="starting")
            failure = self._unhealthy(handle)
            if failure:
                raise ActivationFailed(f"{failure} (see {project_id}/logs/runtime.log in the functions directory)")
            store.record(project_id, self.owner, activation_step="complete", is_activated=True,
                         runtime_status="running", status_message=None, handle=handle.to_json(),
                         running_generation=row.generation, restarts=0, next_start_at=None)
            log.info("functions of project %s activated (runtime pid %s)", project_id, handle.pid)
            return True
        except Exception as exc:
            message = str(exc) if isinstance(exc, ActivationFailed) else f"{step}: {type(exc).__name__}: {exc}"
            log.warning("functions activation of project %s failed at %s: %s", project_id, step, message)
            self._stop_local(project_id)
            store.record(project_id, self.owner, activation_step="error", activation_error=message[:4000],
                         runtime_status="stopped", handle=None, running_generation=None)
            return False

    def _step(self, project_id: str, step: str, **changes) -> str:
        store.record(project_id, self.owner, activation_step=step, **changes)
        return step

    # ------------------------------------------------------------------ the running runtime

    def reconcile(self, row: FunctionRuntime) -> None:
        project_id = row.project_id
        if row.dependencies_status == "installing" and row.pending_dependencies is not None:
            self._install(row)
            row = store.owned_row(project_id, self.owner) or row
        handle = self._handle(row)
        if row.desired_state == "stopped":
            if handle is not None:
                store.record(project_id, self.owner, runtime_status="stopping")
                self._stop_local(project_id)
            if row.runtime_status != "stopped" or handle is not None:
                store.record(project_id, self.owner, runtime_status="stopped", status_message=None, handle=None,
                             running_generation=None)
            return
        if handle is not None and not self.provider.alive(handle):
            self._crashed(row, "the runtime process exited")
            return
        if handle is not None and row.running_generation != row.generation:
            store.record(project_id, self.owner, runtime_status="starting", status_message="Runtime is restarting")
            self._stop_local(project_id)
            handle = None
        if handle is not None:
            self._check(row, handle)
            return
        if row.next_start_at is not None and utcnow() < row.next_start_at:
            return  # backing off after a crash
        self.provider.write_config(project_id, self._config(row))
        handle = self._start(row)
        store.record(project_id, self.owner, runtime_status="starting", handle=handle.to_json())
        failure = self._unhealthy(handle)
        if failure is None:
            store.record(project_id, self.owner, runtime_status="running", status_message=None,
                         running_generation=row.generation)
        else:
            self._stop_local(project_id)
            self._crashed(row, failure)

    def _check(self, row: FunctionRuntime, handle: RuntimeHandle) -> None:
        project_id = row.project_id
        if self.provider.health(handle) is None:
            self.misses[project_id] = self.misses.get(project_id, 0) + 1
            if self.misses[project_id] >= HEALTH_MISSES:
                log.warning("functions runtime of project %s failed %d health checks; restarting", project_id,
                            HEALTH_MISSES)
                self._stop_local(project_id)
                self._crashed(row, "the runtime stopped answering its health check")
            return
        self.misses.pop(project_id, None)
        changes = {}
        if row.runtime_status != "running":
            changes.update(runtime_status="running", status_message=None, running_generation=row.generation)
        if row.restarts and time.time() - handle.started_at > STABLE_AFTER:
            changes.update(restarts=0, next_start_at=None)
        if changes:
            store.record(project_id, self.owner, **changes)

    def _crashed(self, row: FunctionRuntime, why: str) -> None:
        self.handles.pop(row.project_id, None)
        restarts = row.restarts + 1
        delay = min(2.0 ** (restarts - 1), MAX_BACKOFF)
        log.warning("functions runtime of project %s: %s; starting it again in %g s", row.project_id, why, delay)
        store.record(row.project_id, self.owner, runtime_status="starting", handle=None, running_generation=None,
                     restarts=restarts, next_start_at=utcnow() + timedelta(seconds=delay),
                     status_message=f"Restarting: {why}")

    def _install(self, row: FunctionRuntime) -> None:
        wanted = dict(row.pending_dependencies)
        result = self.provider.install(row.project_id, wanted)
        if result.ok:
            store.record(row.project_id, self.owner, dependencies=wanted, pending_dependencies=None,
                         dependencies_status="installed", dependencies_error=None,
                         generation=FunctionRuntime.generation + 1)
            log.info("functions of project %s: dependencies installed; restarting the runtime", row.project_id)
        else:
            store.record(row.project_id, self.owner, pending_dependencies=None, dependencies_status="failed",
                         dependencies_error=_tail(result.output))
            log.warning("functions of project %s: installing dependencies failed; the previous ones stay",
                        row.project_id)

    # ------------------------------------------------------------------ helpers

    def _config(self, row: FunctionRuntime) -> dict:
        return {"projectId": row.project_id, "env": store.function_env(row), "apiUrl": self.api_url,
                "version": row.runtime_version or self.latest()}

    def latest(self) -> str:
        return self.provider.versions()[-1].version

    def _deploy_all(self, row: FunctionRuntime) -> None:
        """Write the files of the project's live functions (with the current env vars) and remove stale ones, so
        the runtime about to start loads exactly what is deployed."""
        live = {}
        for function, version in code.live_functions(row.project_id):
            live[function.slug] = code.deploy_spec(function, version, row, self.api_url, package_memory(self.provider, row))
        for slug in set(self.provider.deployed(row.project_id)) - set(live):
            self.provider.undeploy(row.project_id, slug)
        for spec in live.values():
            self.provider.deploy(row.project_id, spec)

    def _start(self, row: FunctionRuntime) -> RuntimeHandle:
        self._deploy_all(row)
        handle = self.provider.start(row.project_id, row.runtime_version or self.latest(), package_memory(self.provider, row))
        self.handles[row.project_id] = handle
        self.misses.pop(row.project_id, None)
        store.record(row.project_id, self.owner, handle=handle.to_json())
        return handle

    def _handle(self, row: FunctionRuntime) -> RuntimeHandle | None:
        """The process this supervisor runs for the project, or the recorded one when it is alive on this host
        (this process took the lease over from one that stopped without stopping it)."""
        handle = self.handles.get(row.project_id)
        if handle is None:
            recorded = store.handle_of(row)
            if recorded is not None:
                candidate = RuntimeHandle.from_json(recorded)
                if self.provider.alive(candidate):
                    handle = self.handles[row.project_id] = candidate
        return handle

    def _unhealthy(self, handle: RuntimeHandle) -> str | None:
        """None once a just-started runtime answers its health check; else why it did not."""
        deadline = time.monotonic() + self.health_wait
        while time.monotonic() < deadline:
            if self.provider.health(handle) is not None:
                return None
            if not self.provider.alive(handle):
                return "the runtime exited before it answered its health check"
            time.sleep(0.05)
        return f"the runtime did not answer its health check within {self.health_wait:g} s"

    def _stop_local(self, project_id: str) -> None:
        handle = self.handles.pop(project_id, None)
        self.misses.pop(project_id, None)
        if handle is not None:
            try:
                self.provider.stop(handle)
            except Exception:
                log.exception("functions runtime of project %s did not stop cleanly", project_id)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop, then every runtime this process runs; record them stopped and release their leases."""
        super().stop(timeout)
        with own_connection():
            for project_id in list(self.handles):
                self._stop_local(project_id)
                store.record(project_id, self.owner, runtime_status="stopped", handle=None,
                             running_generation=None, status_message="Stopped with the Cortex process that ran it")
                store.release(project_id, self.owner)


def package_info(client: NpmRegistryClient, name: str) -> dict:
    """getNpmPackageInfo through the registry client: 400 for a name npm would refuse, 404 for an unknown
    package, 502 when the registry cannot be read."""
    try:
        return client.package_info(name)
    except InvalidPackageName as exc:
        raise DomainError("invalid", f"packageName: {exc}") from None
    except PackageNotFound:
        raise DomainError("not_found", f"npm package {name} not found in the registry") from None
    except RegistryUnavailable as exc:
        raise DomainError("upstream_failed", f"the npm registry could not be read: {exc}") from None


class ActivationFailed(Exception):
    """An activation step failed (the message is shown as ``activationError``)."""


def _tail(output: str, limit: int = 4000) -> str:
    output = (output or "").strip()
    return output if len(output) <= limit else "…" + output[-limit:]


# ---------------------------------------------------------------- what requests ask of the runtime


def running_handle(provider: RuntimeProvider, project_id: str) -> RuntimeHandle | None:
    """The project's runtime process as its supervisor recorded it, when it is running."""
    row = FunctionRuntime.get_or_none(FunctionRuntime.project == project_id)
    return handle_from(row.runtime_encrypted) if row is not None and row.runtime_status == "running" else None


_handles: dict[str, RuntimeHandle] = {}  # the recorded (encrypted) handle → decrypted; a new start is a new text


def handle_from(encrypted: str | None) -> RuntimeHandle | None:
    """The runtime handle of a ``runtime_encrypted`` value (decrypted once per value: the invoke path's hot read)."""
    if not encrypted:
        return None
    handle = _handles.get(encrypted)
    if handle is None:
        recorded = store.decrypt_handle(encrypted)
        if recorded is None:
            return None
        if len(_handles) > 1000:
            _handles.clear()
        handle = _handles[encrypted] = RuntimeHandle.from_json(recorded)
    return handle


def package_memory(provider: RuntimeProvider, row: FunctionRuntime) -> int:
    """The heap limit (MiB) of the project's resource package: the runtime's, and every function's cap."""
    package = next((p for p in provider.resource_packages() if p.slug == row.resource_package), None)
    return package.memory_limit_mib if package else row.max_memory_per_function


def deploy_live(provider: RuntimeProvider, project, function, version, api_url: str) -> None:
    """Put ``version`` of ``function`` on the project's runtime (its file, and the running process at once)."""
    row = store.runtime_of(project)
    spec = code.deploy_spec(function, version, row, api_url, package_memory(provider, row))
    provider.deploy(project.id, spec, running_handle(provider, project.id))


def publish(provider: RuntimeProvider, project, function_id: str, user_id: str | None, changelog,
            api_url: str) -> dict:
    """publishVersion: freeze the draft as version N+1, build it in the runtime (syntax and load check in an
    isolated worker); a ready version goes live at once, a failed one leaves the previous live version serving."""
    version = code.new_version(project, function_id, user_id, changelog)
    function = code.get_function(project, function_id)
    handle = running_handle(provider, project.id)
    result_ok, logs, handlers = False, "", ()
    if handle is None:
        error = "the functions runtime is not running; start it and publish again"
    elif handle.version in RUNTIMES_WITHOUT_FUNCTIONS:
        error = f"runtime {handle.version} does not host functions; upgradeRuntime to {provider.versions()[-1].version}"
    else:
        try:
            built = provider.build(handle, version.code, version.entrypoint)
            result_ok, logs, error, handlers = built.ok, built.logs, built.error, built.handlers
        except RuntimeUnreachable as exc:
            error = str(exc)
    version = code.finish_build(version, result_ok, logs, error, handlers)
    if version.status == "ready":
        deploy_live(provider, project, function, version, api_url)
        code.record_deployment(function, version)
        message = f"Version {version.version} published successfully"
    else:
        message = f"Version {version.version} failed to build: {version.build_error}"
    return {"version": code.version_body(version), "message": message}


def deploy(provider: RuntimeProvider, project, function_id: str, version_id: str | None, api_url: str) -> dict:
    """deployFunction: (re)deploy the newest ready version, or ``version_id`` (a rollback)."""
    function = code.get_function(project, function_id)
    version = code.ready_version(project, function, version_id)
    deploy_live(provider, project, function, version, api_url)
    deployment = code.record_deployment(function, version)
    invoke_url = invoke_url_of(api_url, project.id, function.slug)
    return {"deployment": code.deployment_body(deployment, invoke_url), "invokeUrl": invoke_url,
            "message": f"Version {version.version} deployed"}


def stop(provider: RuntimeProvider, project, function_id: str) -> dict:
    """stopDeployment: off the runtime until the next deploy or publish (invoke → 503)."""
    function = code.stop_deployment(project, function_id)
    provider.undeploy(project.id, function.slug, running_handle(provider, project.id))
    return {"message": "Function stopped successfully"}


def delete(provider: RuntimeProvider, project, function_id: str) -> dict:
    """deleteFunction: the rows go (versions, deployments, logs, queued events), and the runtime unloads it."""
    function = code.delete_function(project, function_id)
    provider.undeploy(project.id, function.slug, running_handle(provider, project.id))
    return {"message": "Function deleted successfully"}


def invoke_url_of(api_url: str, project_id: str, slug: str) -> str:
    return f"{api_url}/invoke/{project_id}/{slug}"
