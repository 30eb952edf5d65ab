"""The ``local`` functions runtime provider with a real Node.js: the project's directory and its modes, the runtime
process (health, token, environment delivered and nothing of ours leaked, stop, killed from outside, a handle
loaded by a fresh provider, a reused pid), and npm installs from a loopback registry (success swapped in, failures
leaving the previous install in place, the timeout)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from cortex.integrations.functions import local
from cortex.integrations.functions.local import NODE_DIR, LocalProvider
from cortex.integrations.functions.provider import (
    BuildResult,
    InstallResult,
    InvokeResult,
    RuntimeHandle,
    RuntimeProvider,
    RuntimeUnavailable,
    RuntimeUnreachable,
    env_digest,
    function_environment,
    invalid_function_spec,
    valid_slug,
)
from tests.npm_registry import NpmRegistry

NODE = shutil.which("node")
NPM = shutil.which("npm")
pytestmark = pytest.mark.skipif(NODE is None, reason="needs node")
needs_npm = pytest.mark.skipif(NPM is None, reason="needs npm")

SENTINEL = "CORTEX_PROVIDER_TEST_SENTINEL"
ENV = {"GREETING": "grüß dich \"quoted\"\n\ttabbed \\ slash / ✓", "API_KEY": "s3cr3t-value", "EMPTY": "",
       "10": "integer-like keys sort as strings", "9": "too"}
API_URL = "http://127.0.0.1:8080"


@pytest.fixture
def provider(tmp_path):
    return LocalProvider(tmp_path / "functions")


@pytest.fixture
def project_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def started(provider, project_id, monkeypatch):
    """A running runtime (sentinel variable set in our environment first); stopped afterwards."""
    monkeypatch.setenv(SENTINEL, "must-not-leak")
    provider.prepare(project_id)
    provider.write_config(project_id, {"projectId": project_id, "env": ENV, "apiUrl": API_URL, "version": "v1"})
    handle = provider.start(project_id, "v1", 512)
    yield handle
    provider.stop(handle, timeout=2)


def wait_healthy(provider, handle, seconds=5.0) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        body = provider.health(handle, timeout=1.0)
        if body is not None:
            return body
        time.sleep(0.02)
    raise AssertionError(f"no health answer within {seconds} s")


def wait_until(predicate, seconds=5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def get(port: int, path: str, token: str | None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers={"X-Cortex-Runtime-Token": token} if token is not None else {})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- catalogue and layout ---------------------------------------------------------------------------------


def test_catalogue_and_bodies(provider):
    assert isinstance(provider, RuntimeProvider) and provider.name == "local"
    versions = provider.versions()
    assert [v.version for v in versions] == ["v1", "v2"]  # oldest first: v2 is the latest
    assert versions[0].body() == {"version": "v1", "node": 20, "releasedAt": "2026-12-05",
                                  "notes": versions[0].notes, "breaking": False}
    assert versions[1].body() == {"version": "v2", "node": 20, "releasedAt": "2026-12-05",
                                  "notes": versions[1].notes, "breaking": False}
    assert "worker" in versions[1].notes and "memory" in versions[1].notes
    for version in versions:  # every version's script ships with the package (package data)
        assert (NODE_DIR / f"runtime-{version.version}.js").is_file()
    assert (NODE_DIR / "function-worker-v2.js").is_file()
    packages = {p.slug: p for p in provider.resource_packages()}
    assert packages["local-s1"].body() == {"id": 1, "name": "Local S1", "slug": "local-s1", "type": "shared",
                                           "cpuLimit": 1.0, "memoryLimitMiB": 512}
    assert packages["local-m1"].id == 2 and packages["local-m1"].memory_limit_mib == 1024
    (location,) = provider.locations()
    assert location.body() == {"city": "local", "cityDisplay": f"This host ({socket.gethostname()})",
                               "continent": "local", "country": "local", "isProtected": False}


def test_layout_and_modes(provider, project_id, tmp_path):
    provider.prepare(project_id)
    provider.prepare(project_id)  # idempotent
    directory = tmp_path / "functions" / project_id
    assert mode(directory) == 0o700 and mode(directory / "logs") == 0o700
    provider.write_package(project_id, {"left-pad": "^1.3.0", "@studio/helpers": "next"})
    assert json.loads((directory / "package.json").read_text()) == {
        "name": f"cortex-functions-{project_id}", "private": True, "version": "1.0.0",
        "dependencies": {"@studio/helpers": "next", "left-pad": "^1.3.0"}}
    config = {"projectId": project_id, "env": {"A": "1"}, "apiUrl": API_URL, "version": "v1"}
    provider.write_config(project_id, config)
    assert json.loads((directory / "runtime.json").read_text()) == config
    assert mode(directory / "runtime.json") == 0o600
    provider.write_config(project_id, {**config, "env": {}})  # replaced whole, still 0600, no temp files left
    assert json.loads((directory / "runtime.json").read_text())["env"] == {}
    assert mode(directory / "runtime.json") == 0o600
    assert sorted(p.name for p in directory.iterdir()) == ["logs", "package.json", "runtime.json"]
    with pytest.raises(ValueError):
        provider.write_config(project_id, {"env": {"A": 1}})
    with pytest.raises(ValueError):
        provider.write_package(project_id, {"evil": "file:/etc"})
    provider.remove(project_id)
    assert not directory.exists()
    provider.remove(project_id)  # idempotent


@pytest.mark.parametrize("bad", ["", "..", ".", "../etc", "a/b", "a\\b", ".staging", ".npm-cache", "x" * 65,
                                 "/abs", "a\0b", "ünï", None])
def test_bad_project_ids_are_refused(provider, bad, tmp_path):
    for call in (lambda: provider.prepare(bad), lambda: provider.write_package(bad, {}),
                 lambda: provider.write_config(bad, {}), lambda: provider.start(bad, "v1", 512),
                 lambda: provider.remove(bad)):
        with pytest.raises(ValueError):
            call()
    assert not (tmp_path / "functions").exists() or not any((tmp_path / "functions").iterdir())


def test_unknown_version_and_missing_node(provider, project_id, tmp_path):
    with pytest.raises(ValueError):
        provider.start(project_id, "v999", 512)
    with pytest.raises(ValueError):
        provider.start(project_id, "../runtime-v1", 512)
    missing = LocalProvider(tmp_path / "other", node_binary=str(tmp_path / "no-node"))  # constructing is fine
    with pytest.raises(RuntimeUnavailable, match="CORTEX_NODE_BINARY"):
        missing.start(project_id, "v1", 512)
    with pytest.raises(RuntimeUnavailable):
        missing.install(project_id, {})


def test_handle_round_trip_and_repr():
    handle = RuntimeHandle(pid=12, port=3456, token="secret-token", version="v1", started_at=1.5, project_id="p")
    assert RuntimeHandle.from_json(json.loads(json.dumps(handle.to_json()))) == handle
    assert "secret-token" not in repr(handle)
    old = RuntimeHandle.from_json({"pid": 12, "port": 3456, "token": "t", "version": "v1", "started_at": 1.5})
    assert old.project_id == ""


# --- the runtime process ----------------------------------------------------------------------------------


def test_start_health_token_and_environment(provider, project_id, started):
    began = time.monotonic()
    body = wait_healthy(provider, started)
    assert time.monotonic() - began < 5
    expected_env = function_environment(project_id, API_URL, ENV)
    assert body["status"] == "ok" and body["version"] == "v1" and body["projectId"] == project_id
    assert body["pid"] == started.pid and int(body["node"].split(".")[0]) >= 20
    assert body["envKeys"] == sorted(expected_env) == ["10", "9", "API_KEY", "CORTEX_API_URL", "CORTEX_PROJECT_ID",
                                                       "EMPTY", "GREETING"]
    assert body["envDigest"] == env_digest(expected_env)  # the values arrived, without being echoed
    assert "s3cr3t-value" not in json.dumps(body)
    assert provider.alive(started)

    assert get(started.port, "/health", None)[0] == 401
    assert get(started.port, "/health", "wrong")[0] == 401
    assert get(started.port, "/health", started.token[:-1])[0] == 401
    assert get(started.port, "/nowhere", None)[0] == 401  # the token first, then routing
    assert get(started.port, "/nowhere", started.token) == (404, {"error": "not found"})
    wrong = RuntimeHandle(started.pid, started.port, "wrong-token", "v1", started.started_at, project_id)
    assert provider.health(wrong) is None

    environ = Path(f"/proc/{started.pid}/environ").read_bytes().split(b"\0")
    names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}
    assert names == {"NODE_ENV"}
    assert SENTINEL in os.environ and not names & (set(os.environ) - {"NODE_ENV"})

    config = json.loads((provider.project_dir(project_id) / "runtime.json").read_text())
    assert config["host"] == "127.0.0.1" and config["port"] == started.port and config["token"] == started.token
    assert config["memoryMib"] == 512 and config["env"] == ENV and config["parentPid"] == os.getpid()
    assert "started" in provider.log_path(project_id).read_text()


def test_stop(provider, project_id, started):
    wait_healthy(provider, started)
    began = time.monotonic()
    provider.stop(started)
    assert time.monotonic() - began < 1.5  # SIGTERM: closes and exits at once
    assert not os.path.exists(f"/proc/{started.pid}")  # gone and reaped
    assert not provider.alive(started)
    assert provider.health(started, timeout=0.5) is None
    provider.stop(started)  # again: fine
    log = provider.log_path(project_id).read_text()
    assert "stopping on SIGTERM" in log and "stopped" in log


def test_stop_forces_a_runtime_that_does_not_exit(provider, started):
    wait_healthy(provider, started)
    os.kill(started.pid, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
    began = time.monotonic()
    provider.stop(started, timeout=0.5)
    assert 0.5 <= time.monotonic() - began < 3
    assert not os.path.exists(f"/proc/{started.pid}") and not provider.alive(started)


def test_killed_from_outside(provider, started):
    wait_healthy(provider, started)
    os.kill(started.pid, signal.SIGKILL)
    assert wait_until(lambda: not provider.alive(started))
    assert not os.path.exists(f"/proc/{started.pid}")  # no zombie of ours left
    provider.stop(started)


@pytest.mark.parametrize("kernel_shows_arguments", [True, False])
def test_a_runtime_just_started_is_alive_and_stops(provider, project_id, monkeypatch, kernel_shows_arguments):
    """Right after ``start`` returns, the kernel may not show the new program's arguments yet (``/proc/<pid>/cmdline``
    reads empty for a moment; seen in most starts on a loaded machine): the runtime must still count as alive (not
    as crashed), and a stop must still stop it (not leave it running)."""
    from cortex.integrations.functions import local

    if not kernel_shows_arguments:
        monkeypatch.setattr(local, "_command_line", lambda pid: None)
    provider.prepare(project_id)
    provider.write_config(project_id, {"projectId": project_id, "env": {}, "apiUrl": API_URL, "version": "v1"})
    for _ in range(5):
        handle = provider.start(project_id, "v1", 512)
        try:
            assert provider.alive(handle)
        finally:
            provider.stop(handle, timeout=2)
        assert not os.path.exists(f"/proc/{handle.pid}") and not provider.alive(handle)
        assert handle.pid not in local._children  # collected: no zombie left


def test_handle_in_a_fresh_provider(provider, project_id, started, tmp_path):
    wait_healthy(provider, started)
    stored = json.loads(json.dumps(started.to_json()))
    fresh = LocalProvider(tmp_path / "functions")
    handle = RuntimeHandle.from_json(stored)
    assert fresh.alive(handle)
    assert fresh.health(handle)["pid"] == started.pid
    fresh.stop(handle)
    assert not fresh.alive(handle) and not provider.alive(started)
    assert not os.path.exists(f"/proc/{started.pid}")
    elsewhere = LocalProvider(tmp_path / "elsewhere")  # another functions directory: not its runtime
    assert not elsewhere.alive(handle)


def test_a_reused_pid_is_not_the_runtime(provider, project_id, started):
    wait_healthy(provider, started)
    other = subprocess.Popen(["sleep", "30"])
    try:
        impostor = RuntimeHandle.from_json({**started.to_json(), "pid": other.pid})
        assert not provider.alive(impostor)
        provider.stop(impostor)  # nothing signalled
        assert other.poll() is None
        other_version = RuntimeHandle.from_json({**started.to_json(), "version": "v0"})
        assert not provider.alive(other_version)
        other_project = RuntimeHandle.from_json({**started.to_json(), "project_id": str(uuid.uuid4())})
        assert not provider.alive(other_project)
        assert provider.alive(started)
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_runtime_exits_when_its_parent_dies(provider, project_id, tmp_path, version):
    """Started by a Cortex process that then dies (SIGKILL): the orphaned runtime stops on its own."""
    provider.prepare(project_id)
    provider.write_config(project_id, {"projectId": project_id, "env": {}, "apiUrl": API_URL})
    script = (
        "import json, sys, time\n"
        "from cortex.integrations.functions.local import LocalProvider\n"
        "handle = LocalProvider(sys.argv[1]).start(sys.argv[2], sys.argv[3], 512)\n"
        "print(json.dumps(handle.to_json()), flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "functions"), project_id, version],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        handle = RuntimeHandle.from_json(json.loads(parent.stdout.readline()))
        wait_healthy(provider, handle)
        parent.kill()
        parent.wait()
        assert wait_until(lambda: not provider.alive(handle), 5)
        assert "exit of parent process" in provider.log_path(project_id).read_text()
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()


def test_v2_keeps_the_runtime_contract(provider, project_id, monkeypatch):
    """Runtime v2 answers health like v1 (version "v2"), checks the token, gets nothing of our environment, and
    stops at once on SIGTERM even while a function's worker is stuck in a loop."""
    monkeypatch.setenv(SENTINEL, "must-not-leak")
    provider.write_config(project_id, {"projectId": project_id, "env": ENV, "apiUrl": API_URL, "version": "v2"})
    handle = provider.start(project_id, "v2", 512)
    try:
        body = wait_healthy(provider, handle)
        expected_env = function_environment(project_id, API_URL, ENV)
        assert body["version"] == "v2" and body["projectId"] == project_id and body["functions"] == 0
        assert body["envKeys"] == sorted(expected_env) and body["envDigest"] == env_digest(expected_env)
        assert get(handle.port, "/health", None)[0] == 401 and get(handle.port, "/functions", "wrong")[0] == 401
        assert get(handle.port, "/functions", handle.token) == (200, [])
        environ = Path(f"/proc/{handle.pid}/environ").read_bytes().split(b"\0")
        assert {entry.split(b"=", 1)[0].decode() for entry in environ if entry} == {"NODE_ENV"}
        provider.deploy(project_id, {"slug": "stuck", "functionId": "f", "versionId": "v", "version": 1,
                                     "code": "exports.handler = () => { for (;;) {} };", "entrypoint": "handler",
                                     "timeout": 60000, "memoryMib": 64, "env": {}}, handle)
        stuck = threading.Thread(target=provider.invoke, args=(handle, "stuck", {}, {}), kwargs={"timeout": 5})
        stuck.start()
        time.sleep(0.3)
        began = time.monotonic()
        provider.stop(handle)
        assert time.monotonic() - began < 1.5
        assert not provider.alive(handle)
        stuck.join(5)
    finally:
        provider.stop(handle, timeout=2)


def test_function_specs_and_slugs():
    good = {"slug": "a-1", "functionId": "f", "versionId": "v", "version": 3, "code": "", "entrypoint": "handler",
            "timeout": 1000, "memoryMib": 128, "env": {"A": "b"}}
    assert invalid_function_spec(good) is None
    for change in ({"slug": "A"}, {"slug": "-a"}, {"slug": "a/b"}, {"slug": "a" * 64}, {"slug": None},
                   {"code": None}, {"entrypoint": ""}, {"timeout": 0}, {"timeout": 1.5}, {"timeout": True},
                   {"timeout": 15 * 60 * 1000 + 1}, {"memoryMib": 4}, {"memoryMib": "64"}, {"env": {"A": 1}},
                   {"env": ["A"]}):
        assert invalid_function_spec({**good, **change}) is not None, change
    assert invalid_function_spec([good]) is not None
    assert valid_slug("a") and valid_slug("0-x") and valid_slug("a" * 63)
    assert not valid_slug("") and not valid_slug("a_b") and not valid_slug("../x") and not valid_slug("a\n")


def test_deploy_files_without_a_runtime(provider, project_id, tmp_path):
    spec = {"slug": "hello", "functionId": "f", "versionId": "v1", "version": 1, "code": "exports.handler = 1;",
            "entrypoint": "handler", "timeout": 1000, "memoryMib": 64, "env": {"SECRET": "s3cr3t"}}
    assert provider.deployed(project_id) == []
    provider.deploy(project_id, spec)
    path = provider.project_dir(project_id) / "functions" / "hello.json"
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert json.loads(path.read_text()) == spec
    provider.deploy(project_id, {**spec, "slug": "other"})
    (path.parent / "not a slug.json").write_text("{}")
    (path.parent / ".hello.json.tmp").write_text("{}")
    assert provider.deployed(project_id) == ["hello", "other"]
    provider.deploy(project_id, {**spec, "version": 2})
    assert json.loads(path.read_text())["version"] == 2  # replaced
    provider.undeploy(project_id, "hello")
    provider.undeploy(project_id, "hello")  # idempotent
    assert provider.deployed(project_id) == ["other"]
    with pytest.raises(ValueError):
        provider.deploy(project_id, {**spec, "slug": "../x"})
    with pytest.raises(ValueError):
        provider.deploy(project_id, {**spec, "timeout": "soon"})
    for bad in ("../x", "A", ""):
        with pytest.raises(ValueError):
            provider.undeploy(project_id, bad)
    with pytest.raises(ValueError):
        provider.deploy("../etc", spec)
    with pytest.raises(ValueError):
        provider.deployed("a/b")
    elsewhere = RuntimeHandle(pid=1, port=1, token="t", version="v2", started_at=0.0, project_id=str(uuid.uuid4()))
    with pytest.raises(ValueError, match="another project"):
        provider.deploy(project_id, spec, elsewhere)
    # a runtime that is not there (or a v1 runtime, which hosts no functions): stored all the same
    gone = RuntimeHandle(pid=1, port=_closed_port(), token="t" * 20, version="v2", started_at=0.0,
                         project_id=project_id)
    provider.deploy(project_id, {**spec, "slug": "stored"}, gone)
    provider.deploy(project_id, {**spec, "slug": "on-v1"}, RuntimeHandle(1, gone.port, "t" * 20, "v1", 0.0, project_id))
    assert provider.deployed(project_id) == ["on-v1", "other", "stored"]
    provider.undeploy(project_id, "stored", gone)
    provider.remove(project_id)
    assert provider.deployed(project_id) == []


def test_invoke_and_build_without_a_runtime(provider, project_id):
    gone = RuntimeHandle(pid=1, port=_closed_port(), token="t" * 20, version="v2", started_at=0.0,
                         project_id=project_id)
    result = provider.invoke(gone, "hello", {"a": 1}, {"requestId": "r"}, timeout=2)
    assert isinstance(result, InvokeResult)
    assert result.outcome == "unavailable" and result.result is None and result.logs == ()
    assert "connection refused" in result.error
    with pytest.raises(ValueError):
        provider.invoke(gone, "../health", {}, {})
    with pytest.raises(RuntimeUnreachable):
        provider.build(gone, "exports.handler = () => 1;", "handler", timeout=2)
    with pytest.raises(ValueError):
        provider.build(gone, "x", "")
    assert BuildResult(True, None, "", ()).handlers == ()


def test_node_major(provider, tmp_path):
    assert provider.node_major() == int(subprocess.run([NODE, "--version"], capture_output=True, text=True)
                                        .stdout.strip().lstrip("v").split(".")[0]) >= 20
    assert provider.node_major() == provider.node_major()  # cached
    assert LocalProvider(tmp_path / "x", node_binary=str(tmp_path / "no-node")).node_major() is None


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_log_is_rotated_at_start(provider, project_id):
    provider.prepare(project_id)
    log = provider.log_path(project_id)
    with open(log, "wb") as f:
        f.truncate(local.LOG_CAP + 1)
    provider.write_config(project_id, {"projectId": project_id, "env": {}, "apiUrl": API_URL})
    handle = provider.start(project_id, "v1", 512)
    try:
        wait_healthy(provider, handle)
        assert log.with_name("runtime.log.1").stat().st_size == local.LOG_CAP + 1
        assert log.stat().st_size < 4096 and "started" in log.read_text()
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
    finally:
        provider.stop(handle)


def test_a_port_taken_makes_the_runtime_exit(provider, project_id, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setattr(local, "_free_port", lambda: taken.getsockname()[1])
        provider.write_config(project_id, {"projectId": project_id, "env": {}, "apiUrl": API_URL})
        handle = provider.start(project_id, "v1", 512)
        assert wait_until(lambda: not provider.alive(handle))
    assert "cannot listen" in provider.log_path(project_id).read_text()


# --- npm installs -----------------------------------------------------------------------------------------


@pytest.fixture
def registry():
    with NpmRegistry() as served:
        served.publish("cortex-left", "1.0.0", {"index.js": "module.exports = 'left 1.0.0';"})
        served.publish("cortex-left", "1.1.0", {"index.js": "module.exports = 'left 1.1.0';"})
        served.publish("@cortex/right", "2.0.0", {"index.js": "module.exports = require('cortex-left') + ' + right';"},
                       dependencies={"cortex-left": "^1.0.0"})
        yield served


@pytest.fixture
def npm_provider(tmp_path, registry):
    return LocalProvider(tmp_path / "functions", npm_registry=registry.url, npm_fetch_retries=0)


def require(directory: Path, name: str) -> str:
    result = subprocess.run([NODE, "-e", f"process.stdout.write(require({json.dumps(name)}))"], cwd=directory,
                            capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stderr
    return result.stdout


@needs_npm
def test_install_empty(provider, project_id):
    result = provider.install(project_id, {})
    assert result.ok, result.output
    directory = provider.project_dir(project_id)
    assert json.loads((directory / "package.json").read_text())["dependencies"] == {}
    assert not (directory / ".staging").exists() and not list(directory.glob(".old-*"))


@needs_npm
def test_install_from_a_registry_then_failures_keep_the_previous(npm_provider, registry, project_id):
    provider = npm_provider
    directory = provider.project_dir(project_id)
    result = provider.install(project_id, {"@cortex/right": "^2.0.0", "cortex-left": "~1.0.0"})
    assert isinstance(result, InstallResult) and result.ok, result.output
    assert require(directory, "@cortex/right") == "left 1.0.0 + right"
    assert require(directory, "cortex-left") == "left 1.0.0"
    package = (directory / "package.json").read_text()
    assert json.loads(package)["dependencies"] == {"@cortex/right": "^2.0.0", "cortex-left": "~1.0.0"}
    assert not (directory / ".staging").exists() and not list(directory.glob(".old-*"))
    assert any(path.startswith("/cortex-left/-/") for path in registry.requests)

    unknown = provider.install(project_id, {"cortex-left": "^1.0.0", "no-such-package": "^1.0.0"})
    assert not unknown.ok
    assert "no-such-package" in unknown.output and "404" in unknown.output and len(unknown.output) <= 16384
    assert (directory / "package.json").read_text() == package
    assert require(directory, "@cortex/right") == "left 1.0.0 + right"
    assert not (directory / ".staging").exists()

    registry.fail_with(500)
    broken = provider.install(project_id, {"cortex-fresh": "^3.0.0"})  # nothing cached: npm must ask
    assert not broken.ok and "500" in broken.output, broken.output
    assert (directory / "package.json").read_text() == package
    assert require(directory, "cortex-left") == "left 1.0.0"
    registry.fail_with(None)

    invalid = provider.install(project_id, {"cortex-left": "file:/etc"})  # never reaches npm
    assert not invalid.ok and "file:/etc" in invalid.output
    assert require(directory, "cortex-left") == "left 1.0.0"

    updated = provider.install(project_id, {"cortex-left": "^1.0.0"})  # a new set replaces the old as a whole
    assert updated.ok, updated.output
    assert require(directory, "cortex-left") == "left 1.1.0"
    assert not (directory / "node_modules" / "@cortex").exists()

    emptied = provider.install(project_id, {})
    assert emptied.ok, emptied.output
    assert not (directory / "node_modules" / "cortex-left").exists()


@needs_npm
def test_install_environment_is_minimal(npm_provider, project_id, monkeypatch):
    """npm runs with our minimal environment: a host proxy or npm token would break the loopback install."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("npm_config_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    result = npm_provider.install(project_id, {"cortex-left": "1.0.0"})
    assert result.ok, result.output


@needs_npm
def test_install_timeout_kills_npm(tmp_path, project_id):
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        provider = LocalProvider(tmp_path / "functions", npm_registry=f"http://127.0.0.1:{silent.getsockname()[1]}/")
        began = time.monotonic()
        result = provider.install(project_id, {"cortex-slow": "^1.0.0"}, timeout=3)
        assert time.monotonic() - began < 15
    assert not result.ok and result.output.endswith("timed out after 3 s")
    directory = provider.project_dir(project_id)
    assert not (directory / ".staging").exists() and not (directory / "package.json").exists()
    assert working_in(directory) == []  # npm's whole process group was killed


def working_in(directory: Path) -> list[int]:
    """Processes whose working directory is ``directory`` or below it."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")).is_relative_to(directory):
                found.append(int(entry.name))
        except OSError:
            pass
    return found
