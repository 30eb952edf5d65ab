"""The runtime provider contract: what the functions supervisor (``cortex.engines``) may ask of whatever runs a
project's Node.js runtime, and the plain values that travel between them.

A provider is stateless towards the supervisor: everything the supervisor needs to find a running runtime again
(after a restart of the server, or from another Cortex process) is in the :class:`RuntimeHandle` it stores in the
database. The supervisor decides *when* (start, stop, restart, upgrade) and holds the per-project lease; the
provider only does *how*, one call at a time for a given project.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "FUNCTION_SLUG",
    "INVOKE_OUTCOMES",
    "RESERVED_ENV_KEYS",
    "TOKEN_HEADER",
    "BuildResult",
    "InstallResult",
    "InvokeResult",
    "Location",
    "ResourcePackage",
    "RuntimeHandle",
    "RuntimeProvider",
    "RuntimeUnavailable",
    "RuntimeUnreachable",
    "RuntimeVersion",
    "env_digest",
    "function_environment",
    "invalid_dependency",
    "invalid_function_spec",
    "valid_slug",
]

TOKEN_HEADER = "X-Cortex-Runtime-Token"  # every request to a runtime carries the handle's token in this header
RESERVED_ENV_KEYS = ("CORTEX_API_URL", "CORTEX_PROJECT_ID")  # set by the runtime itself; not allowed in ``env``
FUNCTION_SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")  # a function's slug (its file name and URL segment)
# InvokeResult.outcome values: the runtime's five, plus "unavailable" (the provider's: no answer from the runtime)
INVOKE_OUTCOMES = ("ok", "timeout", "memory", "error", "not_found", "unavailable")
MAX_FUNCTION_TIMEOUT_MS = 15 * 60 * 1000  # the longest ``timeout`` a function spec may have (runtime v2)


class RuntimeUnreachable(ConnectionError):
    """The project's runtime did not answer a request that needs its answer (:meth:`RuntimeProvider.build`):
    it is not running, still starting, or stuck. Not the function code's fault."""


class RuntimeUnavailable(RuntimeError):
    """The provider cannot run runtimes here: e.g. no ``node`` (or ``npm``) binary was configured or found. Raised
    when a call needs the missing piece, never when the provider is constructed (a server without Node.js still
    starts; only projects that activate functions fail, with this message)."""


@dataclass(frozen=True)
class RuntimeVersion:
    """One published runtime version (OpenAPI ``RuntimeVersion``). Versions are immutable: a change of behaviour
    is a new version, and a project stays pinned to its version until it upgrades."""

    version: str  # "v1", "v2", … (the local provider runs node/runtime-<version>.js)
    node: int  # the Node.js major version the runtime is written for
    released_at: str  # ISO date
    notes: str
    breaking: bool  # upgrading to it may break existing function code

    def body(self) -> dict:
        return {"version": self.version, "node": self.node, "releasedAt": self.released_at,
                "notes": self.notes, "breaking": self.breaking}


@dataclass(frozen=True)
class ResourcePackage:
    """A size a project's runtime can be given (OpenAPI ``ResourcePackage``). What the limits mean is up to the
    provider and documented by its ``resource_packages``."""

    id: int
    name: str
    slug: str
    type: str  # "shared" | "dedicated"
    cpu_limit: float  # cores
    memory_limit_mib: int

    def body(self) -> dict:
        return {"id": self.id, "name": self.name, "slug": self.slug, "type": self.type,
                "cpuLimit": self.cpu_limit, "memoryLimitMiB": self.memory_limit_mib}


@dataclass(frozen=True)
class Location:
    """Where a provider can run a runtime (OpenAPI ``Location``)."""

    city: str
    city_display: str
    continent: str
    country: str
    is_protected: bool = False

    def body(self) -> dict:
        return {"city": self.city, "cityDisplay": self.city_display, "continent": self.continent,
                "country": self.country, "isProtected": self.is_protected}


@dataclass
class RuntimeHandle:
    """A started runtime, as the supervisor stores it (``to_json``) and loads it again (``from_json``), possibly in
    another process: enough to health-check, recognise and stop it without the object that started it.

    ``token`` is a secret (it authorises every request to the runtime): store it like one and never log it.
    ``project_id`` lets the provider recognise the process as *this project's* runtime (a pid can be reused); it
    is optional only so that a handle stored without it still loads.
    """

    pid: int
    port: int
    token: str
    version: str
    started_at: float  # time.time() when start() spawned it
    project_id: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RuntimeHandle:
        return cls(pid=int(data["pid"]), port=int(data["port"]), token=str(data["token"]),
                   version=str(data["version"]), started_at=float(data["started_at"]),
                   project_id=str(data.get("project_id") or ""))

    def __repr__(self) -> str:  # keep the token out of logs and tracebacks
        return (f"RuntimeHandle(pid={self.pid}, port={self.port}, token='***', version={self.version!r}, "
                f"started_at={self.started_at!r}, project_id={self.project_id!r})")


@dataclass(frozen=True)
class InstallResult:
    """The outcome of :meth:`RuntimeProvider.install`."""

    ok: bool
    output: str  # npm's combined stdout + stderr (the last 16 KiB at most), plus a note on timeout


@dataclass(frozen=True)
class BuildResult:
    """The outcome of :meth:`RuntimeProvider.build`: whether the code compiles and loads as a CommonJS module
    and exports ``entrypoint`` as a function."""

    ok: bool
    error: str | None  # why not: "SyntaxError: <message> (line N)", "the module threw while loading: …",
    #                    "the module does not export a function named …", "loading the module took longer …"
    logs: str  # what the module printed while loading (one line per console call, capped at 64 KiB)
    handlers: tuple[str, ...]  # exported functions named like event handlers (/^on[A-Z][A-Za-z0-9]*$/), sorted


@dataclass(frozen=True)
class InvokeResult:
    """The outcome of :meth:`RuntimeProvider.invoke`.

    ``outcome`` (one of :data:`INVOKE_OUTCOMES`):

    * ``ok``: ``result`` is ``{"statusCode": int, "headers": {name: str | [str]}, "body": …}``; ``body`` is what
      the function returned as its body: a str stays a str, an object/array/number/bool/None is a JSON value
      (serialising it is the caller's business).
    * ``error``: the function threw (``error`` is the message only, never the stack), its module failed to
      load, it does not export the handler, or its response was invalid (statusCode, headers, not JSON, > 6 MiB);
      also: the invocation itself (``event`` and ``ctx`` as JSON) is larger than 6 MiB, or the function's
      worker ended before it answered (``process.exit``, an uncaught exception in a timer).
    * ``timeout``: it ran (or waited for a free worker) past its ``timeout``; its worker was terminated.
    * ``memory``: its worker exceeded the function's memory limit and was ended.
    * ``not_found``: no function with that slug is loaded in the runtime.
    * ``unavailable``: the runtime did not answer (not running, refused, timed out, a broken answer).

    ``logs``: the invocation's console lines, ``{"time": ISO, "level": "log|info|warn|error|debug", "message",
    "requestId"}`` (at most 200 lines / 64 KiB; a last ``warn`` line says how many were dropped), also for
    failed invocations. ``duration_ms``: as measured by the runtime from the request's arrival to the answer
    (waiting for a worker included); for ``unavailable``, the provider's own time spent.
    """

    outcome: str
    result: dict | None
    error: str | None
    logs: tuple[dict, ...]
    duration_ms: float


def valid_slug(slug: object) -> bool:
    """Whether ``slug`` is a function slug: ``^[a-z0-9][a-z0-9-]{0,62}$``."""
    return isinstance(slug, str) and FUNCTION_SLUG.match(slug) is not None


def invalid_function_spec(spec: object) -> str | None:
    """Why ``spec`` cannot be deployed (:meth:`RuntimeProvider.deploy`), or None when it can. A spec is
    ``{"slug", "functionId", "versionId", "version", "code", "entrypoint", "timeout" (ms, 1..900000),
    "memoryMib" (>= 8), "env" (name → str: the function's whole environment)}``."""
    if not isinstance(spec, Mapping):
        return "a function spec must be an object"
    if not valid_slug(spec.get("slug")):
        return f"invalid function slug {spec.get('slug')!r}"
    if not isinstance(spec.get("code"), str):
        return "code must be a string"
    entrypoint = spec.get("entrypoint")
    if not isinstance(entrypoint, str) or not entrypoint:
        return "entrypoint must be a non-empty string"
    timeout = spec.get("timeout")
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= MAX_FUNCTION_TIMEOUT_MS:
        return f"timeout must be a whole number of milliseconds from 1 to {MAX_FUNCTION_TIMEOUT_MS}"
    memory = spec.get("memoryMib")
    if isinstance(memory, bool) or not isinstance(memory, int) or memory < 8:
        return "memoryMib must be a whole number of MiB, 8 or more"
    env = spec.get("env", {})
    if not isinstance(env, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        return "env must map names to string values"
    return None


# npm package names (lower case, optionally scoped) and registry version specs: semver ranges ("^1.2.0",
# ">=1 <2", "1.x || 2.x") and dist-tags ("latest"). No ":" or "/": file:, link:, git, URL, GitHub and npm: alias
# specs would let a tenant's install read the host's files or fetch from anywhere.
_PACKAGE_NAME = re.compile(r"(?:@[a-z0-9~-][a-z0-9._~-]*/)?[a-z0-9~-][a-z0-9._~-]*\Z")
_VERSION_SPEC = re.compile(r"[0-9A-Za-z.^~<>=|*+ -]{1,256}\Z")


def invalid_dependency(name: object, version: object) -> str | None:
    """Why ``name``/``version`` cannot be a project dependency, or None when it can: a registry package name
    (at most 214 characters) and a version range or dist-tag. Providers refuse the rest; the API can use this to
    refuse it upstream with the same message."""
    if not isinstance(name, str) or len(name) > 214 or not _PACKAGE_NAME.match(name):
        return f"invalid npm package name {name!r}"
    if not isinstance(version, str) or not version.strip() or not _VERSION_SPEC.match(version):
        return f"dependency {name!r}: version {version!r} is not a version range or tag of the registry"
    return None


def function_environment(project_id: str, api_url: str, env: Mapping[str, str]) -> dict[str, str]:
    """The environment a project's functions get: ``env`` plus ``CORTEX_API_URL`` and ``CORTEX_PROJECT_ID`` (which
    win over same-named keys; the API refuses such keys upstream anyway). The runtime builds exactly this."""
    return {**env, "CORTEX_API_URL": api_url, "CORTEX_PROJECT_ID": project_id}


def env_digest(environment: Mapping[str, str]) -> str:
    """The digest a runtime's ``GET /health`` reports as ``envDigest`` for its function environment: SHA-256 (hex)
    of the compact JSON with keys sorted — JavaScript's ``JSON.stringify`` of the key-sorted object. Comparing it
    with the digest of the environment the supervisor meant to deliver proves the runtime has the right values
    without the runtime ever echoing them."""
    text = json.dumps(dict(environment), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@runtime_checkable
class RuntimeProvider(Protocol):
    """Runs one Node.js runtime per activated project. The written contract between the supervisor and every
    provider (``local`` now; Fleet or Kubernetes later).

    Rules for every method:

    * ``project_id`` is the project's id (a UUID); a provider refuses anything else with ``ValueError`` before it
      touches a path or a remote resource.
    * Calls for one project come from one supervisor at a time (it holds the project's lease); calls for
      different projects may run concurrently.
    * Methods that need the runtime's toolchain raise :class:`RuntimeUnavailable` when it is missing. Other
      failures of the outside world raise ``OSError`` (or a provider's own subclass of ``RuntimeError``), except
      where a method says it answers with a value instead (``install``, ``health``, ``alive``).
    """

    name: str  # the provider's name, e.g. "local"

    def versions(self) -> tuple[RuntimeVersion, ...]:
        """The runtime versions this provider can start, oldest first; the last one is the latest."""
        ...

    def resource_packages(self) -> tuple[ResourcePackage, ...]:
        """The sizes a project may choose at activation."""
        ...

    def locations(self) -> tuple[Location, ...]:
        """Where runtimes can run."""
        ...

    def prepare(self, project_id: str) -> None:
        """Create whatever the project's runtime needs to exist before anything else (idempotent)."""
        ...

    def write_package(self, project_id: str, dependencies: dict[str, str]) -> None:
        """Record the project's npm dependencies (name → version range) without installing them."""
        ...

    def install(self, project_id: str, dependencies: dict[str, str], timeout: float = 300.0) -> InstallResult:
        """Install exactly ``dependencies`` (an empty dict is valid) and make them the project's installed set.

        Never raises for npm's failures: ``ok=False`` with npm's output (the last 16 KiB) — a registry error,
        an unknown package, or the timeout. On failure the previously installed set stays in place untouched;
        on success it is replaced as a whole. A running runtime keeps what it has already loaded.
        """
        ...

    def write_config(self, project_id: str, config: dict) -> None:
        """Write the configuration the next :meth:`start` hands to the runtime, replacing the previous one.

        Keys: ``projectId``, ``env`` (function environment variables, name → string value; no ``CORTEX_`` keys),
        ``apiUrl`` (functions' ``CORTEX_API_URL``), ``version``. Holds secrets: stored readable only by the
        server's user. A running runtime does not see the change until it is restarted.
        """
        ...

    def start(self, project_id: str, version: str, memory_mib: int) -> RuntimeHandle:
        """Start the project's runtime of ``version`` (``ValueError`` if not one of :meth:`versions`) with the last
        written config, and return its handle at once — without waiting until it answers (poll :meth:`health`).

        Each start gets a new port and a new token. ``memory_mib`` is the resource package's memory limit. The
        runtime gets nothing of the server's own environment. Starting while an earlier runtime of the project is
        still running is the caller's mistake: stop the old handle first.
        """
        ...

    def health(self, handle: RuntimeHandle, timeout: float = 2.0) -> dict | None:
        """The runtime's ``GET /health`` answer (see ``node/runtime-v1.js``), or None when it does not answer
        with 200 within ``timeout`` seconds. Never raises."""
        ...

    def alive(self, handle: RuntimeHandle) -> bool:
        """Whether the handle's runtime still exists (the process is that runtime, not a reused pid). Works for
        a handle loaded from the database in another process. Never raises."""
        ...

    def stop(self, handle: RuntimeHandle, timeout: float = 10.0) -> None:
        """Stop the runtime: ask it to exit, force it after ``timeout`` seconds. Idempotent: a runtime that is
        already gone (or a handle whose pid now belongs to something else) is fine and nothing is signalled."""
        ...

    def remove(self, project_id: str) -> None:
        """Delete everything :meth:`prepare`, :meth:`install` and :meth:`write_config` created (idempotent).
        Stop the runtime first."""
        ...

    # --- functions (runtime v2 and later) -------------------------------------------------------------------

    def node_major(self) -> int | None:
        """The major version of the Node.js that runs the runtimes (e.g. 20), or None when there is none (or it
        does not run). Cached once found. Never raises."""
        ...

    def build(self, handle: RuntimeHandle, code: str, entrypoint: str, timeout: float = 10.0) -> BuildResult:
        """Check ``code`` in the running runtime of ``handle``: compile it as a CommonJS module, evaluate it (in a
        fresh isolated worker: no environment, a small heap, ended after at most 5 s) and check that
        ``exports[entrypoint]`` is a function. Code that does not pass is an answer (``ok=False``), not an
        exception. ``ValueError`` for a ``code``/``entrypoint`` that is not a (non-empty) string;
        :class:`RuntimeUnreachable` when the runtime does not answer within ``timeout`` seconds."""
        ...

    def deploy(self, project_id: str, spec: dict, handle: RuntimeHandle | None = None) -> None:
        """Store the function ``spec`` (see :func:`invalid_function_spec`; ``ValueError`` if invalid) so that the
        project's runtime loads it at every start, replacing the function's previous version. With the
        ``handle`` of a running runtime, also load it there now: its workers of the previous version finish
        their invocation and exit. A runtime that cannot be reached is not an error (it loads the stored spec
        when it starts). The spec holds the function's environment: stored readable only by the server's user."""
        ...

    def undeploy(self, project_id: str, slug: str, handle: RuntimeHandle | None = None) -> None:
        """Forget the function (idempotent) and, with a ``handle``, unload it from the running runtime (its
        running invocations are answered ``error``, waiting ones ``not_found``). ``ValueError`` for an invalid
        slug."""
        ...

    def deployed(self, project_id: str) -> list[str]:
        """The slugs of the project's stored functions, sorted."""
        ...

    def invoke(self, handle: RuntimeHandle, slug: str, event: dict, ctx: dict, handler: str | None = None,
               timeout: float = 330.0) -> InvokeResult:
        """Run ``exports[handler or entrypoint](event, ctx)`` of the function ``slug`` in the runtime of
        ``handle`` and wait for its outcome (see :class:`InvokeResult`). ``event`` and ``ctx`` must be JSON
        values; ``ctx["requestId"]`` tags the log lines. Never raises for the runtime's or the function's
        failures (those are outcomes; ``unavailable`` when no answer came within ``timeout`` seconds — keep it
        above the function's own timeout); ``ValueError`` for an invalid slug. The hot path: one pooled
        keep-alive connection per concurrent call, one JSON encode and decode."""
        ...
