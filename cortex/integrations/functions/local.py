"""The ``local`` runtime provider: each project's Node.js runtime is a child process on this host.

Layout under ``functions_dir`` (``CORTEX_FUNCTIONS_DIR``, default ``<data dir>/functions``)::

    <functions_dir>/                   0700
        .npm-home/ .npm-cache/         npm's HOME and package cache (shared by all projects)
        .npmrc-user .npmrc-global      npm's user and global config: empty, so nothing of the host's npm
                                       setup (proxies, registry tokens) applies
        <project_id>/                  0700, the runtime's working directory
            package.json               the installed dependency set ({"name": "cortex-functions-<id>", …})
            package-lock.json          what npm resolved (when it wrote one)
            node_modules/
            runtime.json               0600: the runtime's config (env values and the token: secrets)
            functions/<slug>.json      0600: a deployed function (code, limits and its whole environment),
                                       loaded by runtime v2+ at start and pushed to it by ``deploy``
            logs/runtime.log           the process's stdout + stderr, appended; runtime.log.1 is the previous
                                       10 MiB (rotated at start, and by health checks while it runs)
            .staging/                  the install in progress (``install``), swapped in on success

The runtime (``node/runtime-<version>.js``) runs as ``node runtime-vN.js <dir>/runtime.json`` in its own session
(process group) with the project directory as working directory and an environment holding only
``NODE_ENV=production``: functions never see the server's environment. It listens on a free loopback port with a
fresh token per start, and exits on its own when the Cortex process that started it is gone (``parentPid``).
The process is recognised again — also by another provider object or process, from a handle stored in the
database — by its command line (``/proc/<pid>/cmdline`` on Linux, ``ps`` elsewhere), so a reused pid is never
taken for the runtime, and never signalled.

Nothing here waits for a runtime to come up or decides about restarts: that is the supervisor's job.

Functions (runtime v2): ``build`` / ``deploy`` / ``undeploy`` / ``invoke`` talk to the running runtime over
loopback HTTP through one pooled :class:`~cortex.integrations.outbound.Sender` per timeout (keep-alive: an
invocation costs one request on a warm connection, one JSON encode and one decode here).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess  # nosec B404 - node and npm are run with argument lists, never through a shell
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cortex.integrations.functions.provider import (
    TOKEN_HEADER,
    BuildResult,
    InstallResult,
    InvokeResult,
    Location,
    ResourcePackage,
    RuntimeHandle,
    RuntimeUnavailable,
    RuntimeUnreachable,
    RuntimeVersion,
    invalid_dependency,
    invalid_function_spec,
    valid_slug,
)
from cortex.integrations.outbound import Sender

__all__ = ["LocalProvider", "NODE_DIR"]

NODE_DIR = Path(__file__).resolve().with_name("node")  # runtime-vN.js files (package data)
DEFAULT_REGISTRY = "https://registry.npmjs.org/"
LOG_CAP = 10 * 1024 * 1024  # bytes of logs/runtime.log before it is rotated to runtime.log.1
OUTPUT_CAP = 16 * 1024  # bytes of npm's output kept in an InstallResult
STOP_POLL = 0.02  # seconds between checks while waiting for a runtime to exit
BUILD_LIMIT_MS = 5000  # the longest a runtime spends checking a build (its own limit)
DEPLOY_TIMEOUT = 5.0  # seconds for PUT/DELETE /functions/<slug>
INVOKE_MAX_BODY = 16 * 1024 * 1024  # bytes of an invoke answer (the runtime caps results at 6 MiB + logs)
INVOKE_MAX_REQUEST = 6 * 1024 * 1024  # bytes of {event, ctx, handler} as JSON (the runtime's limit too)
INVOKE_CONNECTIONS = 64  # kept-alive connections per runtime (concurrent invocations beyond open extra ones)
MAX_SENDERS = 16  # pooled Senders kept per kind (one per distinct timeout)

log = logging.getLogger(__name__)
_TOO_LARGE = f"the invocation (event and ctx as JSON) is larger than {INVOKE_MAX_REQUEST // 1048576} MiB"

_PROJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")  # UUIDs and the like: no dots, no separators
_SWAPPED = ("package.json", "package-lock.json", "node_modules")  # what a successful install replaces
_LINUX_PROC = Path("/proc/self/stat").exists()

# Runtimes this Python process started (pid → Popen), shared by every LocalProvider so that whichever object
# sees a child exit reaps it (no zombies), including a handle loaded from the database into a fresh provider.
_children: dict[int, subprocess.Popen] = {}
_children_lock = threading.Lock()
_WITHOUT_FUNCTIONS = frozenset({"v1"})  # runtime versions that host no functions: nothing is pushed to them


class LocalProvider:
    """Runs project runtimes as child processes of this server (see the module documentation)."""

    name = "local"

    def __init__(
        self,
        functions_dir: str | Path,
        node_binary: str | None = None,
        npm_registry: str = DEFAULT_REGISTRY,
        npm_binary: str | None = None,
        health_sender: Sender | None = None,
        *,
        npm_fetch_retries: int | None = None,
    ) -> None:
        """``node_binary``: ``CORTEX_NODE_BINARY`` when set, else ``node`` on ``PATH``. ``npm_binary``: else the
        ``npm`` next to the node binary, else ``npm`` on ``PATH``. Neither is looked at before it is needed: a
        missing one raises :class:`RuntimeUnavailable` from the call that needs it. ``health_sender``: the
        outbound client for health checks (default: one ``Sender(allow_private=True)`` per timeout).
        ``npm_fetch_retries``: how often npm retries a failed registry request (None: npm's default, 2 retries
        after 10 and 60 s)."""
        self.functions_dir = Path(os.path.abspath(functions_dir))
        self._node_setting = node_binary
        self._npm_setting = npm_binary
        self.npm_registry = npm_registry
        self._health_sender = health_sender
        self.npm_fetch_retries = npm_fetch_retries
        self._senders: dict[tuple[float, int, int], Sender] = {}
        self._senders_lock = threading.Lock()
        self._node_major: int | None = None

    # --- catalogue ----------------------------------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings) -> LocalProvider:
        """The provider ``settings`` configure (``CORTEX_FUNCTIONS_DIR``, ``CORTEX_NODE_BINARY``,
        ``CORTEX_NPM_REGISTRY``): the one way the server builds it."""
        return cls(settings.functions_dir or settings.data_dir / "functions", settings.node_binary,
                   settings.npm_registry)

    def versions(self) -> tuple[RuntimeVersion, ...]:
        """Oldest first; ``vN`` runs ``node/runtime-vN.js``."""
        return (
            RuntimeVersion(
                "v1", 20, "2026-12-05",
                "First runtime: a Node.js 20 HTTP server on loopback with a token-checked health endpoint and "
                "the project's environment.",
                False,
            ),
            RuntimeVersion(
                "v2", 20, "2026-12-05",
                "Hosts the project's functions: each runs in worker threads (up to 4 per function, kept warm) "
                "with its own environment, a time limit (the worker is terminated) and a memory limit (V8 heap), "
                "console output captured per invocation, build checks in an isolated worker, and on<Event> "
                "handlers for Cortex events.",
                False,
            ),
        )

    def resource_packages(self) -> tuple[ResourcePackage, ...]:
        """What the limits mean here: ``memory_limit_mib`` is the V8 heap limit each function's worker thread
        gets (``resourceLimits.maxOldGenerationSizeMb`` of Node's ``Worker``; handed to the runtime as
        ``memoryMib``), not a limit on the whole process. ``cpu_limit`` 1.0 means one thread per function worker;
        workers of all projects share this host's cores (``shared``), nothing reserves or caps CPU time."""
        return (
            ResourcePackage(1, "Local S1", "local-s1", "shared", 1.0, 512),
            ResourcePackage(2, "Local M1", "local-m1", "shared", 1.0, 1024),
        )

    def locations(self) -> tuple[Location, ...]:
        """This host."""
        return (Location("local", f"This host ({socket.gethostname()})", "local", "local", False),)

    # --- the project's directory --------------------------------------------------------------------------

    def project_dir(self, project_id: str) -> Path:
        """``<functions_dir>/<project_id>`` (``ValueError`` for an id that is not UUID-like)."""
        if not isinstance(project_id, str) or not _PROJECT_ID.match(project_id):
            raise ValueError(f"invalid project id {project_id!r}")
        return self.functions_dir / project_id

    def config_path(self, project_id: str) -> Path:
        return self.project_dir(project_id) / "runtime.json"

    def log_path(self, project_id: str) -> Path:
        """The runtime's log (stdout + stderr), for whoever wants to show it."""
        return self.project_dir(project_id) / "logs" / "runtime.log"

    def prepare(self, project_id: str) -> None:
        directory = self.project_dir(project_id)
        _make_dir(self.functions_dir)
        _make_dir(directory)
        _make_dir(directory / "logs")

    def write_package(self, project_id: str, dependencies: dict[str, str]) -> None:
        """Write ``package.json`` (``ValueError`` for a dependency that is not a registry package and range)."""
        problem = _dependencies_problem(dependencies)
        if problem:
            raise ValueError(problem)
        self.prepare(project_id)
        _write_json(self.project_dir(project_id) / "package.json", _package(project_id, dependencies), 0o644)

    def write_config(self, project_id: str, config: dict) -> None:
        """Write ``runtime.json`` atomically, mode 0600. ``config`` must be a JSON object; ``env`` (if given) maps
        names to strings (``ValueError`` otherwise)."""
        if not isinstance(config, Mapping):
            raise ValueError("the runtime config must be an object")
        env = config.get("env", {})
        if not isinstance(env, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise ValueError("config env must map names to string values")
        self.prepare(project_id)
        _write_json(self.config_path(project_id), dict(config), 0o600)

    def remove(self, project_id: str) -> None:
        directory = self.project_dir(project_id)
        if directory.is_symlink():
            directory.unlink()
        elif directory.exists():
            shutil.rmtree(directory)

    # --- npm ----------------------------------------------------------------------------------------------

    def install(self, project_id: str, dependencies: dict[str, str], timeout: float = 300.0) -> InstallResult:
        """``npm install`` of exactly ``dependencies`` in ``.staging/``, swapped in on success (see the contract).

        Invalid dependencies (anything but a registry package name with a version range or tag: no ``file:``,
        git, URL or alias specs) answer ``ok=False`` without running npm. A second install of the same project
        while one runs answers ``ok=False`` at once."""
        problem = _dependencies_problem(dependencies)
        if problem:
            return InstallResult(False, problem)
        npm = self._npm_binary()
        node = self._node_binary()
        self.prepare(project_id)
        directory = self.project_dir(project_id)
        with _exclusive(directory / ".install.lock") as locked:
            if not locked:
                return InstallResult(False, "another install of this project is running")
            for leftover in directory.glob(".old-*"):  # an earlier install interrupted mid-swap
                shutil.rmtree(leftover, ignore_errors=True)
            staging = directory / ".staging"
            _remove(staging)
            _make_dir(staging)
            try:
                _write_json(staging / "package.json", _package(project_id, dependencies), 0o644)
                ok, output = self._run_npm(npm, node, staging, timeout)
                if ok:
                    _swap_in(staging, directory)
            finally:
                _remove(staging)
            return InstallResult(ok, output)

    def _run_npm(self, npm: str, node: str, cwd: Path, timeout: float) -> tuple[bool, str]:
        home, cache = self.functions_dir / ".npm-home", self.functions_dir / ".npm-cache"
        _make_dir(home)
        _make_dir(cache)
        user_rc, global_rc = self.functions_dir / ".npmrc-user", self.functions_dir / ".npmrc-global"
        for rc in (user_rc, global_rc):  # empty (npm refuses one file for both)
            _write_atomic(rc, b"", 0o600)
        search = [os.path.dirname(node), os.path.dirname(npm), "/usr/local/bin", "/usr/bin", "/bin"]
        env = {
            "PATH": os.pathsep.join(dict.fromkeys(search)),
            "HOME": str(home),
            "npm_config_cache": str(cache),
            "npm_config_userconfig": str(user_rc),
            "npm_config_globalconfig": str(global_rc),
        }
        command = [npm, "install", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund",
                   "--no-update-notifier", "--registry", self.npm_registry]
        if self.npm_fetch_retries is not None:
            command.append(f"--fetch-retries={int(self.npm_fetch_retries)}")
        timed_out = False
        with tempfile.TemporaryFile(dir=cwd.parent) as out:
            process = subprocess.Popen(  # nosec B603 - fixed argument list, no shell
                command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _signal_group(process.pid, signal.SIGKILL)
                code = process.wait()
            except BaseException:  # interrupted (KeyboardInterrupt, a killed greenlet): leave nothing running
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
                raise
            _kill_group_leftovers(process.pid)
            size = out.seek(0, os.SEEK_END)
            out.seek(max(0, size - OUTPUT_CAP))
            output = out.read().decode("utf-8", errors="replace")
        if timed_out:
            return False, _tail(output + f"\nnpm install timed out after {timeout:g} s")
        if code != 0:
            return False, _tail(output + f"\nnpm install failed (exit status {code})")
        return True, _tail(output)

    # --- processes ----------------------------------------------------------------------------------------

    def start(self, project_id: str, version: str, memory_mib: int) -> RuntimeHandle:
        script = NODE_DIR / f"runtime-{version}.js"
        if version not in {v.version for v in self.versions()} or not script.is_file():
            raise ValueError(f"unknown runtime version {version!r}")
        if isinstance(memory_mib, float) and memory_mib.is_integer():
            memory_mib = int(memory_mib)
        if isinstance(memory_mib, bool) or not isinstance(memory_mib, int) or memory_mib <= 0:
            raise ValueError(f"invalid memory limit {memory_mib!r}")
        node = self._node_binary()
        self.prepare(project_id)
        _reap_all()
        config_path = self.config_path(project_id)
        try:
            config = json.loads(config_path.read_text())
        except FileNotFoundError:
            config = {}
        if not isinstance(config, dict):
            config = {}
        port = _free_port()
        token = secrets.token_urlsafe(32)
        config.update({"projectId": project_id, "version": version, "host": "127.0.0.1", "port": port,
                       "token": token, "memoryMib": memory_mib, "parentPid": os.getpid()})
        config.setdefault("env", {})
        _write_json(config_path, config, 0o600)
        log = self._open_log(project_id)
        try:
            process = subprocess.Popen(  # nosec B603 - fixed argument list, no shell
                [node, str(script), str(config_path)],
                cwd=self.project_dir(project_id),
                env={"NODE_ENV": "production"},  # nothing of the server's environment (its secrets)
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
            )
        finally:
            os.close(log)
        with _children_lock:
            _children[process.pid] = process
        return RuntimeHandle(pid=process.pid, port=port, token=token, version=version, started_at=time.time(),
                             project_id=project_id)

    def health(self, handle: RuntimeHandle, timeout: float = 2.0) -> dict | None:
        """``GET /health`` of the runtime; also keeps its log under the cap while it runs."""
        try:
            if handle.project_id:
                self._cap_log(handle.project_id)
            outcome = self._sender(timeout).request(
                "GET", f"http://127.0.0.1:{int(handle.port)}/health", None,
                {TOKEN_HEADER: handle.token, "Accept": "application/json", "Connection": "close"},
            )
            if outcome.status != 200:
                return None
            data = json.loads(outcome.body)
        except Exception:  # never raises: a broken answer is no answer
            return None
        return data if isinstance(data, dict) else None

    def alive(self, handle: RuntimeHandle) -> bool:
        try:
            _reap(handle.pid)
            if self._is_runtime(handle):
                return True
            _collect_if_exiting(handle.pid)
            return False
        except Exception:
            return False

    def stop(self, handle: RuntimeHandle, timeout: float = 10.0) -> None:
        """SIGTERM to the runtime's process group, SIGKILL after ``timeout`` seconds; then any process left in
        the group is killed too. Signals only a process recognised as the handle's runtime."""
        pid = handle.pid
        _reap(pid)
        if not self._is_runtime(handle):
            _collect_if_exiting(pid)
            return
        _signal_group(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout):
            _signal_group(pid, signal.SIGKILL)
            _wait_gone(pid, 5.0)
        _kill_group_leftovers(pid)
        _reap(pid, wait=1.0)

    # --- functions (runtime v2) ---------------------------------------------------------------------------

    def node_major(self) -> int | None:
        """``node --version``'s major number (cached once found); None without a working node binary."""
        if self._node_major is not None:
            return self._node_major
        try:
            node = self._node_binary()
            result = subprocess.run([node, "--version"],  # nosec B603 - fixed argument list, no shell
                                    capture_output=True, text=True, timeout=10, env={}, stdin=subprocess.DEVNULL)
            found = re.match(r"v?(\d+)\.", result.stdout.strip())
        except (RuntimeUnavailable, OSError, subprocess.SubprocessError):
            return None
        if result.returncode != 0 or not found:
            return None
        self._node_major = int(found.group(1))
        return self._node_major

    def functions_path(self, project_id: str) -> Path:
        """``<project dir>/functions``: one ``<slug>.json`` per deployed function."""
        return self.project_dir(project_id) / "functions"

    def build(self, handle: RuntimeHandle, code: str, entrypoint: str, timeout: float = 10.0) -> BuildResult:
        """``POST /build`` to the runtime; its own limit is 5 s (less when ``timeout`` is shorter)."""
        if not isinstance(code, str):
            raise ValueError("code must be a string")
        if not isinstance(entrypoint, str) or not entrypoint:
            raise ValueError("entrypoint must be a non-empty string")
        limit_ms = max(100, min(BUILD_LIMIT_MS, int(timeout * 1000) - 500))
        body = json.dumps({"code": code, "entrypoint": entrypoint, "timeoutMs": limit_ms}).encode("ascii")
        outcome = self._sender(timeout, INVOKE_MAX_BODY).request(
            "POST", f"http://127.0.0.1:{int(handle.port)}/build", body, self._headers(handle))
        if outcome.status != 200 or outcome.truncated:
            raise RuntimeUnreachable(f"the functions runtime did not check the code: {outcome.error or 'no answer'}")
        try:
            data = json.loads(outcome.body)
            return BuildResult(ok=data["ok"] is True, error=data.get("error"), logs=str(data.get("logs") or ""),
                               handlers=tuple(str(name) for name in data.get("handlers") or ()))
        except (ValueError, TypeError, KeyError, AttributeError):
            raise RuntimeUnreachable("the functions runtime's answer to a build check is not valid") from None

    def deploy(self, project_id: str, spec: dict, handle: RuntimeHandle | None = None) -> None:
        """Write ``functions/<slug>.json`` atomically (0600), then ``PUT /functions/<slug>`` to the running
        runtime of ``handle`` (skipped for a runtime version that hosts no functions; no answer is fine)."""
        problem = invalid_function_spec(spec)
        if problem:
            raise ValueError(problem)
        self._check_handle(project_id, handle)
        directory = self.functions_path(project_id)
        self.prepare(project_id)
        _make_dir(directory)
        data = json.dumps(dict(spec), separators=(",", ":")).encode("ascii")  # \u escapes: lone surrogates too
        _write_atomic(directory / f"{spec['slug']}.json", data, 0o600)
        if handle is None or handle.version in _WITHOUT_FUNCTIONS:
            return
        outcome = self._sender(DEPLOY_TIMEOUT).request(
            "PUT", f"http://127.0.0.1:{int(handle.port)}/functions/{spec['slug']}", data, self._headers(handle))
        if outcome.status == 400:  # the runtime refused the spec; checked above, so a bug somewhere
            raise ValueError(f"the runtime refused function {spec['slug']}: {_runtime_error(outcome.body)}")
        if outcome.status != 204:
            log.info("function %s of project %s stored; the runtime did not load it now (%s): it will at its "
                     "next start", spec["slug"], project_id, outcome.error)

    def undeploy(self, project_id: str, slug: str, handle: RuntimeHandle | None = None) -> None:
        """Delete ``functions/<slug>.json`` (if there) and ``DELETE /functions/<slug>`` in the running runtime."""
        if not valid_slug(slug):
            raise ValueError(f"invalid function slug {slug!r}")
        self._check_handle(project_id, handle)
        with contextlib.suppress(FileNotFoundError):
            (self.functions_path(project_id) / f"{slug}.json").unlink()
        if handle is None or handle.version in _WITHOUT_FUNCTIONS:
            return
        outcome = self._sender(DEPLOY_TIMEOUT).request(
            "DELETE", f"http://127.0.0.1:{int(handle.port)}/functions/{slug}", None, self._headers(handle))
        if outcome.status not in (204, 404):
            log.info("function %s of project %s removed; the runtime did not unload it now (%s)", slug,
                     project_id, outcome.error)

    def deployed(self, project_id: str) -> list[str]:
        directory = self.functions_path(project_id)
        try:
            names = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(name[:-5] for name in names if name.endswith(".json") and valid_slug(name[:-5]))

    def invoke(self, handle: RuntimeHandle, slug: str, event: dict, ctx: dict, handler: str | None = None,
               timeout: float = 330.0) -> InvokeResult:
        """``POST /invoke/<slug>`` on a kept-alive connection of the provider's pool."""
        if not valid_slug(slug):
            raise ValueError(f"invalid function slug {slug!r}")
        body = json.dumps({"event": event, "ctx": ctx, "handler": handler},
                          separators=(",", ":")).encode("ascii")  # \u escapes: any str (lone surrogates) goes
        if len(body) > INVOKE_MAX_REQUEST:
            return InvokeResult("error", None, _TOO_LARGE, (), 0.0)
        outcome = self._sender(timeout, INVOKE_MAX_BODY, INVOKE_CONNECTIONS).request(
            "POST", f"http://127.0.0.1:{int(handle.port)}/invoke/{slug}", body,
            {TOKEN_HEADER: handle.token, "Content-Type": "application/json"})
        if outcome.status == 413:
            return InvokeResult("error", None, _TOO_LARGE, (), outcome.duration_ms)
        if outcome.status != 200:
            return InvokeResult("unavailable", None, f"the functions runtime did not answer: {outcome.error}", (),
                                outcome.duration_ms)
        try:
            if outcome.truncated:
                raise ValueError("truncated")
            data = json.loads(outcome.body)
            return InvokeResult(str(data["outcome"]), data["result"], data["error"], tuple(data["logs"]),
                                float(data["durationMs"]))
        except (ValueError, TypeError, KeyError):
            return InvokeResult("unavailable", None, "the functions runtime's answer is not valid", (),
                                outcome.duration_ms)

    # --- internals ----------------------------------------------------------------------------------------

    @staticmethod
    def _headers(handle: RuntimeHandle) -> dict[str, str]:
        return {TOKEN_HEADER: handle.token, "Accept": "application/json", "Content-Type": "application/json"}

    def _check_handle(self, project_id: str, handle: RuntimeHandle | None) -> None:
        self.project_dir(project_id)  # ValueError for a bad id
        if handle is not None and handle.project_id and handle.project_id != project_id:
            raise ValueError("the runtime handle belongs to another project")

    def _is_runtime(self, handle: RuntimeHandle) -> bool:
        """Whether ``handle.pid`` is a live (not zombie) ``node runtime-<version>.js <project's runtime.json>``.

        A process this one started is judged by its ``Popen``: the arguments it was given and whether it has
        exited. Its ``/proc/<pid>/cmdline`` reads empty for a while after ``Popen`` returns (the kernel sets the
        new program's arguments up after closing the descriptors that told ``Popen`` the exec succeeded), and a
        runtime just started must not look dead then."""
        with _children_lock:
            process = _children.get(handle.pid)
        if process is not None:
            if process.poll() is not None or not _running(handle.pid):
                return False
            argv = [os.fspath(arg) for arg in process.args]
        elif handle.pid <= 0 or not _running(handle.pid):
            return False
        else:
            argv = _command_line(handle.pid)
        if argv is None or len(argv) < 3:
            return False
        if os.path.basename(argv[-2]) != f"runtime-{handle.version}.js":
            return False
        if handle.project_id:
            try:
                return argv[-1] == str(self.config_path(handle.project_id))
            except ValueError:  # not a project id: not one of ours
                return False
        config = Path(argv[-1])  # a handle stored without its project: any project's config under our dir
        return config.name == "runtime.json" and config.parent.parent == self.functions_dir

    def _open_log(self, project_id: str) -> int:
        """logs/runtime.log opened for appending (rotated first when over the cap)."""
        path = self.log_path(project_id)
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size > LOG_CAP:
                os.replace(path, path.with_name(path.name + ".1"))
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _cap_log(self, project_id: str) -> None:
        """While the runtime runs, keep its log under the cap: copy it to runtime.log.1 and empty it in place (the
        runtime appends with O_APPEND, so it simply goes on at the new end; lines written in between are lost)."""
        try:
            path = self.log_path(project_id)
            if path.stat().st_size <= LOG_CAP:
                return
            shutil.copyfile(path, path.with_name(path.name + ".1"))
            os.truncate(path, 0)
        except (OSError, ValueError):
            pass

    def _sender(self, timeout: float, max_body: int = 65536, connections: int = 10) -> Sender:
        """The pooled Sender for this timeout and size (``health_sender`` for health checks when given)."""
        if self._health_sender is not None and max_body == 65536 and connections == 10:
            return self._health_sender
        key = (float(timeout), max_body, connections)
        sender = self._senders.get(key)  # the hot path: no lock once it exists
        if sender is not None:
            return sender
        with self._senders_lock:
            sender = self._senders.get(key)
            if sender is None:
                if len(self._senders) >= MAX_SENDERS:  # many distinct timeouts: drop the oldest pool
                    self._senders.pop(next(iter(self._senders))).close()
                sender = self._senders[key] = Sender(allow_private=True, timeout=timeout, max_body=max_body,
                                                     connections_per_host=connections)
            return sender

    def _node_binary(self) -> str:
        if self._node_setting:
            return _executable(self._node_setting, "the Node.js binary (CORTEX_NODE_BINARY)")
        found = shutil.which("node")
        if not found:
            raise RuntimeUnavailable("Node.js is not installed: no `node` on PATH (install Node.js 20+ or set "
                                     "CORTEX_NODE_BINARY)")
        return os.path.abspath(found)

    def _npm_binary(self) -> str:
        if self._npm_setting:
            return _executable(self._npm_setting, "the npm binary")
        beside = Path(self._node_binary()).with_name("npm")
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
        found = shutil.which("npm")
        if not found:
            raise RuntimeUnavailable("npm is not installed: none next to the Node.js binary nor on PATH")
        return os.path.abspath(found)


# --- helpers ----------------------------------------------------------------------------------------------


def _runtime_error(body: str) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, TypeError, KeyError):
        return body[:200]


def _executable(setting: str, what: str) -> str:
    path = setting if os.sep in setting else shutil.which(setting)
    if not path or not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise RuntimeUnavailable(f"{what} {setting!r} does not exist or is not executable")
    return os.path.abspath(path)


def _dependencies_problem(dependencies: Any) -> str | None:
    if not isinstance(dependencies, Mapping):
        return "dependencies must map package names to version ranges"
    for name, version in dependencies.items():
        problem = invalid_dependency(name, version)
        if problem:
            return problem
    return None


def _package(project_id: str, dependencies: Mapping[str, str]) -> dict:
    return {"name": f"cortex-functions-{project_id.lower()}", "private": True, "version": "1.0.0",
            "dependencies": dict(sorted(dependencies.items()))}


def _make_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) if missing and make sure it is 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_json(path: Path, value: Any, mode: int) -> None:
    _write_atomic(path, (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8"), mode)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _swap_in(staging: Path, directory: Path) -> None:
    """Move the project's current install aside, staging's in, then delete the old one; on an error put the old
    one back."""
    aside = directory / f".old-{secrets.token_hex(4)}"
    aside.mkdir(mode=0o700)
    moved: list[str] = []
    placed: list[str] = []
    try:
        for name in _SWAPPED:
            if os.path.lexists(directory / name):
                os.rename(directory / name, aside / name)
                moved.append(name)
        for name in _SWAPPED:
            if os.path.lexists(staging / name):
                os.rename(staging / name, directory / name)
                placed.append(name)
    except BaseException:
        for name in placed:
            with contextlib.suppress(OSError):
                os.rename(directory / name, staging / name)
        for name in moved:
            with contextlib.suppress(OSError):
                os.rename(aside / name, directory / name)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[bool]:
    """A non-blocking exclusive lock on ``path`` (across processes); yields whether it was obtained."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def _tail(text: str) -> str:
    data = text.encode("utf-8")
    if len(data) <= OUTPUT_CAP:
        return text
    return data[-OUTPUT_CAP:].decode("utf-8", errors="ignore")


def _free_port() -> int:
    """A port free on loopback right now. Another program could take it before the runtime binds it; the runtime
    then exits ("cannot listen") and the supervisor's health checks see it down and restart it on a new port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reap(pid: int, wait: float = 0.0) -> None:
    """Collect the exit status of a runtime this process started, once it has exited (no zombie stays). ``wait``:
    seconds to wait for it, for a process known to be exiting — the kernel lets a multi-threaded process be
    collected only once all its threads are gone, a moment after its main thread shows as a zombie."""
    with _children_lock:
        process = _children.get(pid)
    if process is None:
        return
    if process.poll() is None and wait > 0:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
    if process.returncode is not None:
        with _children_lock:
            _children.pop(pid, None)


def _reap_all() -> None:
    """Collect every runtime this process started that has exited, asked about or not."""
    with _children_lock:
        pids = list(_children)
    for pid in pids:
        _reap(pid)


def _collect_if_exiting(pid: int) -> None:
    """``pid`` was just found not to be the runtime: if it is a runtime this process started, it is exiting (its
    command line is gone once its memory is released, a moment before it turns zombie): wait for it briefly."""
    with _children_lock:
        ours = pid in _children
    if ours and (not _running(pid) or _command_line(pid) is None):
        _reap(pid, wait=1.0)


PF_EXITING = 0x4  # the kernel's per-task flag of a process that has begun to exit (/proc/<pid>/stat, field 9)


def _running(pid: int) -> bool:
    """The process exists, is not a zombie and has not begun to exit."""
    if _LINUX_PROC:
        try:
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            return False
        fields = stat[stat.rfind(b")") + 2:].split()  # the command name in parentheses may hold anything
        if not fields or fields[0] in (b"Z", b"X", b"x"):
            return False
        return len(fields) < 7 or not int(fields[6]) & PF_EXITING
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _command_line(pid: int) -> list[str] | None:
    if _LINUX_PROC:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if not raw:
            return None
        return [os.fsdecode(part) for part in raw.rstrip(b"\0").split(b"\0")]
    ps = shutil.which("ps")  # no /proc (macOS, BSD): ps prints the arguments space-joined
    if ps is None:
        return None
    try:
        result = subprocess.run([ps, "-ww", "-o", "args=", "-p", str(pid)],  # nosec B603 - no shell
                                capture_output=True, text=True, timeout=5, env={"PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.SubprocessError):
        return None
    line = result.stdout.strip()
    if result.returncode != 0 or not line:
        return None
    node, _, rest = line.partition(" ")
    script, _, config = rest.partition(" ")  # paths with spaces: the config path is everything after the script
    return [node, script, config] if config else None


def _signal_group(pid: int, sig: int) -> None:
    """Signal the runtime's process group (it leads its own session), or only the process if it does not."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _group_members(pgid: int) -> list[int]:
    if not _LINUX_PROC:
        return []
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 2 and fields[0] not in (b"Z", b"X") and fields[2] == str(pgid).encode():
            members.append(int(entry.name))
    return members


def _kill_group_leftovers(pgid: int) -> None:
    """Kill what is left of a process group whose leader has exited (anything it spawned). The group id cannot
    have been reused while members exist, so only its own processes are hit."""
    if _group_members(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        _reap(pid)
        if not _running(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(STOP_POLL)
