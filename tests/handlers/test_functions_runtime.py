"""Functions, part 1, over HTTP with a real Node.js runtime: settings and ceilings, activation step by step (and a
failed one retried), start/stop/restart/upgrade as the operating system sees them, a runtime killed from outside
and brought back, dependencies from a loopback npm registry (and a failing install), env vars masked, encrypted
and delivered, npm package documents."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import pytest

from cortex.engines.functions import RuntimeSupervisor
from cortex.integrations.functions.local import LocalProvider
from cortex.integrations.functions.provider import RuntimeHandle
from models.functions import FunctionRuntime, handle_of
from tests.npm_registry import NpmRegistry

pytestmark = pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                                reason="needs node and npm")

LOCATION = {"locationCity": "local", "locationContinent": "local", "locationCountry": "local"}


def url(member, tail=""):
    return f"/api/projects/{member.project.id}/functions{tail}"


@pytest.fixture
def registry():
    with NpmRegistry() as served:
        served.publish("left-pad", "1.3.0", {"index.js": "module.exports = (s, n) => String(s).padStart(n);"})
        served.publish("left-pad", "1.1.0")
        served.publish("@studio/helpers", "2.0.0-beta.1", tag="next")
        served.publish("@studio/helpers", "1.10.0")
        served.publish("@studio/helpers", "1.9.0", tag="old")
        yield served


@pytest.fixture
def supervisor(app, settings, registry, monkeypatch):
    """The supervisor as `cortex serve` runs it, on this test's functions directory and the loopback registry;
    every runtime it started is stopped afterwards."""
    provider = LocalProvider(settings.data_dir / "functions", npm_registry=registry.url)
    from cortex.http import app as app_module
    monkeypatch.setattr(app_module, "functions_provider", lambda: provider)
    from handlers import functions as function_handlers
    monkeypatch.setattr(function_handlers, "functions_provider", lambda: provider)
    running = RuntimeSupervisor(provider, "http://127.0.0.1:8080", health_wait=15)
    yield running
    running.stop()


def settings_of(client, member):
    response = client.get(url(member, "/settings"), headers=member.headers)
    assert response.status_code == 200
    return response.get_json()


def activate(client, member, **body):
    return client.post(url(member, "/settings/activate"), json={**LOCATION, **body}, headers=member.headers)


def activated(client, member, supervisor):
    assert activate(client, member).status_code == 201
    supervisor.run_once()
    body = settings_of(client, member)
    assert body["isActivated"] is True and body["activationStep"] == "complete", body
    return body


def pid_of(member) -> int:
    return handle_of(FunctionRuntime.get(FunctionRuntime.project == member.project.id))["pid"]


def running(pid: int) -> bool:
    """Is there such a process, and is it a runtime (what `ps` would show)?"""
    try:
        with open(f"/proc/{pid}/cmdline") as file:
            return "runtime" in file.read()
    except OSError:
        return False


def status(client, member):
    return client.get(url(member, "/settings/runtime-status"), headers=member.headers).get_json()


# ---------------------------------------------------------------- settings and the provider's catalogue


def test_settings_defaults_ceilings_and_the_local_catalogue(client, owner, supervisor):
    body = settings_of(client, owner)
    assert body["isActivated"] is False and body["maxFunctions"] == 10 and body["maxMemoryPerFunction"] == 512
    assert body["dependencies"] == [] and body["envVars"] == [] and "activationStep" not in body
    changed = client.put(url(owner, "/settings"), json={"maxFunctions": 20, "maxMemoryPerFunction": 1024},
                         headers=owner.headers)
    assert changed.status_code == 200 and changed.get_json()["maxFunctions"] == 20
    for bad in ({"maxFunctions": 51}, {"maxMemoryPerFunction": 2048}, {"maxFunctions": 0}, {"maxFunctions": 2.5}):
        response = client.put(url(owner, "/settings"), json=bad, headers=owner.headers)
        assert response.status_code == 400, bad
        assert next(iter(bad)) in response.get_json()["detail"]
    assert settings_of(client, owner)["maxMemoryPerFunction"] == 1024
    verified = client.post(url(owner, "/settings/verify-credentials"), headers=owner.headers).get_json()
    assert verified == {"valid": True, "email": owner.user.email}
    packages = client.get(url(owner, "/settings/resource-packages"), headers=owner.headers).get_json()
    assert "local-s1" in [p["slug"] for p in packages]
    locations = client.get(url(owner, "/settings/locations"), headers=owner.headers).get_json()
    assert [(loc["city"], loc["continent"], loc["country"]) for loc in locations] == [("local", "local", "local")]
    versions = client.get(url(owner, "/settings/runtime/versions"), headers=owner.headers).get_json()
    assert versions["versions"][0]["version"] == "v1" and versions["versions"][0]["node"] == 20
    assert versions["current"] is None and versions["latest"] == versions["versions"][-1]["version"]


def test_lifecycle_needs_an_activated_project_and_known_choices(client, owner, supervisor):
    for tail in ("/settings/runtime/start", "/settings/runtime/stop", "/settings/runtime/restart"):
        response = client.post(url(owner, tail), headers=owner.headers)
        assert response.status_code == 400 and "not activated" in response.get_json()["detail"]
    assert client.post(url(owner, "/settings/runtime/upgrade"), json={"version": "v1"},
                       headers=owner.headers).status_code == 400
    assert activate(client, owner, resourcePackage="fleet-s9").status_code == 400
    assert activate(client, owner, locationCity="frankfurt", locationContinent="europe",
                    locationCountry="de").status_code == 400
    row = FunctionRuntime.get_or_none(FunctionRuntime.project == owner.project.id)
    assert row is None or row.activation_step is None


# ---------------------------------------------------------------- activation


def test_activation_walks_every_step_visible_to_a_polling_client(client, owner, supervisor, monkeypatch):
    seen = []
    provider = supervisor.provider

    def watch(name):
        original = getattr(provider, name)

        def wrapped(*args, **kwargs):
            seen.append((name, settings_of(client, owner).get("activationStep")))
            return original(*args, **kwargs)
        monkeypatch.setattr(provider, name, wrapped)

    for name in ("prepare", "write_package", "write_config", "start", "health"):
        watch(name)
    assert activate(client, owner).status_code == 201
    assert settings_of(client, owner)["activationStep"] == "pending"
    again = activate(client, owner)
    assert again.status_code == 400 and "being activated" in again.get_json()["detail"]
    supervisor.run_once()
    steps = list(dict.fromkeys(step for _name, step in seen))  # each step in order, as the client saw it
    assert steps == ["registry", "image", "config", "deployment", "server"], seen
    body = settings_of(client, owner)
    assert body["activationStep"] == "complete" and body["isActivated"] is True
    assert body["resourcePackageSlug"] == "local-s1" and body["locationCity"] == "local"
    pid = pid_of(owner)
    assert running(pid)
    layout = supervisor.provider.project_dir(owner.project.id)
    assert (layout / "package.json").exists() and (layout / "runtime.json").exists()
    state = status(client, owner)
    assert state["status"] == "running" and state["serverCount"] == 1 and state["runtimeVersion"] == "v2"
    assert state["upgradeAvailable"] is False
    assert activate(client, owner).status_code == 400  # complete


def test_a_failed_activation_stops_at_error_and_can_be_retried(client, owner, supervisor, registry):
    response = client.put(url(owner, "/settings/dependencies"),
                          json={"dependencies": [{"name": "no-such-package", "version": "^1.0.0"}]},
                          headers=owner.headers)
    assert response.status_code == 200
    assert activate(client, owner).status_code == 201
    supervisor.run_once()
    body = settings_of(client, owner)
    assert body["activationStep"] == "error" and body["isActivated"] is False
    assert "no-such-package" in body["activationError"] or "404" in body["activationError"]
    assert status(client, owner)["status"] == "stopped"
    client.put(url(owner, "/settings/dependencies"),
               json={"dependencies": [{"name": "left-pad", "version": "^1.1.0"}]}, headers=owner.headers)
    assert activate(client, owner).status_code == 201  # retried
    supervisor.run_once()
    body = settings_of(client, owner)
    assert body["activationStep"] == "complete" and "activationError" not in body
    assert (supervisor.provider.project_dir(owner.project.id) / "node_modules" / "left-pad" / "index.js").exists()


# ---------------------------------------------------------------- lifecycle as the system sees it


def test_stop_start_restart_and_upgrade_change_the_real_process(client, owner, supervisor):
    activated(client, owner, supervisor)
    first = pid_of(owner)
    stopped = client.post(url(owner, "/settings/runtime/stop"), headers=owner.headers)
    assert stopped.status_code == 200 and stopped.get_json()["status"] == "stopping"
    supervisor.run_once()
    assert not running(first) and status(client, owner)["status"] == "stopped"
    assert status(client, owner)["serverCount"] == 0
    started = client.post(url(owner, "/settings/runtime/start"), headers=owner.headers)
    assert started.get_json()["status"] == "starting"
    supervisor.run_once()
    second = pid_of(owner)
    assert second != first and running(second) and status(client, owner)["status"] == "running"
    assert client.post(url(owner, "/settings/runtime/restart"), headers=owner.headers).status_code == 200
    supervisor.run_once()
    third = pid_of(owner)
    assert third != second and running(third) and not running(second)
    unknown = client.post(url(owner, "/settings/runtime/upgrade"), json={"version": "v99"}, headers=owner.headers)
    assert unknown.status_code == 400 and "v99" in unknown.get_json()["detail"]
    pinned = client.post(url(owner, "/settings/runtime/upgrade"), json={"version": "v1"}, headers=owner.headers)
    assert pinned.status_code == 200 and pinned.get_json()["runtimeVersion"] == "v1"  # back to v1 …
    assert pinned.get_json()["upgradeAvailable"] is True
    supervisor.run_once()
    fourth = pid_of(owner)
    assert fourth != third and running(fourth) and status(client, owner)["status"] == "running"
    handle = RuntimeHandle.from_json(handle_of(FunctionRuntime.get(FunctionRuntime.project == owner.project.id)))
    assert supervisor.provider.health(handle)["version"] == "v1"
    upgraded = client.post(url(owner, "/settings/runtime/upgrade"), json={"version": "v2"}, headers=owner.headers)
    assert upgraded.get_json()["runtimeVersion"] == "v2" and upgraded.get_json()["upgradeAvailable"] is False
    supervisor.run_once()  # … and up to v2: a new process on the new runtime file
    fifth = pid_of(owner)
    assert fifth != fourth and not running(fourth) and running(fifth)
    handle = RuntimeHandle.from_json(handle_of(FunctionRuntime.get(FunctionRuntime.project == owner.project.id)))
    assert supervisor.provider.health(handle)["version"] == "v2"


def test_a_runtime_killed_from_outside_is_brought_back(client, owner, supervisor):
    activated(client, owner, supervisor)
    pid = pid_of(owner)
    os.kill(pid, 9)
    deadline = time.monotonic() + 5
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    supervisor.run_once()  # sees it gone: restarting after a backoff of 1 s
    state = status(client, owner)
    assert state["status"] == "starting" and "exited" in state["message"]
    time.sleep(1.1)
    supervisor.run_once()
    revived = pid_of(owner)
    assert revived != pid and running(revived) and status(client, owner)["status"] == "running"


# ---------------------------------------------------------------- dependencies


def test_dependencies_are_validated_installed_and_a_failing_install_keeps_the_old_ones(client, owner, supervisor,
                                                                                       registry):
    bad = [
        [{"name": "Left-Pad", "version": "1.0.0"}],
        [{"name": "left-pad", "version": "git+https://example.com/x.git"}],
        [{"name": "left-pad", "version": "file:../secrets"}],
        [{"name": "left-pad", "version": "^1"}, {"name": "left-pad", "version": "^1"}],
        [{"name": f"pkg-{i}", "version": "^1.0.0"} for i in range(51)],
    ]
    for dependencies in bad:
        response = client.put(url(owner, "/settings/dependencies"), json={"dependencies": dependencies},
                              headers=owner.headers)
        assert response.status_code == 400 and "dependencies" in response.get_json()["detail"]
    activated(client, owner, supervisor)
    before = pid_of(owner)
    response = client.put(url(owner, "/settings/dependencies"),
                          json={"dependencies": [{"name": "left-pad", "version": "^1.1.0"},
                                                 {"name": "@studio/helpers", "version": "next"}]},
                          headers=owner.headers)
    assert response.status_code == 200
    body = response.get_json()
    assert body["settings"]["dependenciesStatus"] == "installing" and body["settings"]["dependencies"] == []
    supervisor.run_once()
    body = settings_of(client, owner)
    assert body["dependenciesStatus"] == "installed"
    assert body["dependencies"] == [{"name": "left-pad", "version": "^1.1.0"},
                                    {"name": "@studio/helpers", "version": "next"}]
    modules = supervisor.provider.project_dir(owner.project.id) / "node_modules"
    assert (modules / "left-pad" / "index.js").exists() and (modules / "@studio" / "helpers").exists()
    supervisor.run_once()  # the runtime restarts on them
    after = pid_of(owner)
    assert after != before and running(after) and not running(before)
    assert json.loads((modules.parent / "package.json").read_text())["dependencies"]["left-pad"] == "^1.1.0"

    client.put(url(owner, "/settings/dependencies"),
               json={"dependencies": [{"name": "vanished-package", "version": "^2.0.0"}]}, headers=owner.headers)
    supervisor.run_once()
    body = settings_of(client, owner)
    assert body["dependenciesStatus"] == "failed" and body["dependenciesError"]
    assert body["dependencies"][0]["name"] == "left-pad"  # the previous ones stay, installed and running
    assert (modules / "left-pad" / "index.js").exists() and running(pid_of(owner))


# ---------------------------------------------------------------- environment


def test_env_vars_are_validated_masked_encrypted_and_delivered(client, owner, supervisor):
    for bad, word in ((["lower"], "key"), (["CORTEX_API_URL"], "reserved"), ([f"K{i}" for i in range(101)], "100"),
                      (["DUP", "DUP"], "twice")):
        response = client.put(url(owner, "/settings/env-vars"),
                              json={"envVars": [{"key": key, "value": "x"} for key in bad]}, headers=owner.headers)
        assert response.status_code == 400 and word in response.get_json()["detail"]
    activated(client, owner, supervisor)
    before = pid_of(owner)
    variables = [{"key": "GAME_MODE", "value": "ranked"}, {"key": "STRIPE_KEY", "value": "sk_live_42", "isSecret": True}]
    response = client.put(url(owner, "/settings/env-vars"), json={"envVars": variables}, headers=owner.headers)
    assert response.status_code == 200
    shown = response.get_json()["settings"]["envVars"]
    assert shown == [{"key": "GAME_MODE", "value": "ranked", "isSecret": False},
                     {"key": "STRIPE_KEY", "value": "***", "isSecret": True}]
    assert "sk_live_42" not in json.dumps(settings_of(client, owner))
    row = FunctionRuntime.get(FunctionRuntime.project == owner.project.id)
    assert "sk_live_42" not in (row.env_encrypted or "") and "ranked" not in (row.env_encrypted or "")
    supervisor.run_once()  # restarts with them
    after = pid_of(owner)
    assert after != before and running(after)
    handle = RuntimeHandle.from_json(handle_of(FunctionRuntime.get(FunctionRuntime.project == owner.project.id)))
    health = supervisor.provider.health(handle)
    expected = {"GAME_MODE": "ranked", "STRIPE_KEY": "sk_live_42", "CORTEX_API_URL": "http://127.0.0.1:8080",
                "CORTEX_PROJECT_ID": owner.project.id}
    assert health["envKeys"] == sorted(expected)
    digest = hashlib.sha256(json.dumps(dict(sorted(expected.items())), separators=(",", ":")).encode()).hexdigest()
    assert health["envDigest"] == digest
    # the mask sent back keeps the secret
    client.put(url(owner, "/settings/env-vars"), json={"envVars": [{"key": "STRIPE_KEY", "value": "***",
                                                                    "isSecret": True}]}, headers=owner.headers)
    from models.functions import function_env
    assert function_env(FunctionRuntime.get(FunctionRuntime.project == owner.project.id)) == {"STRIPE_KEY": "sk_live_42"}


# ---------------------------------------------------------------- npm package documents


def test_npm_package_info_from_the_registry(client, owner, supervisor, registry, app, monkeypatch):
    from dataclasses import replace
    runtime = app.extensions["cortex"]
    runtime.settings = replace(runtime.settings, npm_registry=registry.url)
    runtime.npm = None
    response = client.get(url(owner, "/npm-package/@studio%2Fhelpers"), headers=owner.headers)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["name"] == "@studio/helpers" and body["versions"] == ["2.0.0-beta.1", "1.10.0", "1.9.0"]
    assert body["distTags"]["next"] == "2.0.0-beta.1" and body["distTags"]["old"] == "1.9.0"
    assert client.get(url(owner, "/npm-package/left-pad"), headers=owner.headers).get_json()["versions"] == [
        "1.3.0", "1.1.0"]
    assert client.get(url(owner, "/npm-package/nothing-here"), headers=owner.headers).status_code == 404
    assert client.get(url(owner, "/npm-package/BAD%20NAME"), headers=owner.headers).status_code == 400
    requests = len(registry.requests)
    client.get(url(owner, "/npm-package/left-pad"), headers=owner.headers)
    assert len(registry.requests) == requests  # cached
    registry.fail_with(503)
    runtime.npm = None  # a fresh process: nothing cached
    failed = client.get(url(owner, "/npm-package/left-pad"), headers=owner.headers)
    assert failed.status_code == 502 and failed.mimetype == "application/problem+json"
